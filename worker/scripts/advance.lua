-- Record a step that did not end the job and schedule its next attempt: the next poll after a progress
-- answer or a successful start, or a retry after a transient failure. The next Dramatiq message, captured by
-- `CekuraBroker.outbox()`, is written here too, so recording and scheduling are one atomic step. Publishes a
-- progress event when the Cekura status or stage changed and progress events are on.
-- KEYS: job hash, schedule zset, progress stream, Dramatiq message hash, Dramatiq delayed zset, job secret key
-- ARGV: phase ('start'|'poll'), seq, new_seq, next_state, delay_ms, grace_ms, job_id, progress_maxlen (0 = off),
--       redis_message_id ('' for none), eta_ms, message data, field/value pairs...
-- Returns {'ok', changed (1|0)} | {'finished', session_id} | {'stale'} | {'gone'}
local f = redis.call('HMGET', KEYS[1], 'state', 'seq', 'cekura_status', 'current_stage', 'session_id')
local state = f[1]
if not state then return {'gone'} end
if state == 'finished' then return {'finished', f[5] or ''} end
if ARGV[1] == 'poll' then
  if state ~= 'polling' or f[2] ~= ARGV[2] then return {'stale'} end
elseif state ~= 'starting' then
  return {'stale'}
end
local due = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'seq', ARGV[3], 'lease', 0, 'next_poll_ms', due, 'updated_ms', now,
  unpack(ARGV, 12))
redis.call('ZADD', KEYS[2], due + tonumber(ARGV[6]), ARGV[7])
if ARGV[1] == 'start' and ARGV[4] == 'polling' then
  redis.call('DEL', KEYS[6])  -- the start call has used the job's secrets: they go now, not at the end
end
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[9], ARGV[11])
  redis.call('ZADD', KEYS[5], ARGV[10], ARGV[9])
end
local n = redis.call('HMGET', KEYS[1], 'cekura_status', 'current_stage')
local changed = 0
if n[1] ~= f[3] or n[2] ~= f[4] then changed = 1 end
local maxlen = tonumber(ARGV[8])
if changed == 1 and maxlen > 0 and n[1] then
  local p = redis.call('HMGET', KEYS[1], 'kind', 'progress_id', 'polls')
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*', 'job_id', ARGV[7], 'kind', p[1],
    'cekura_status', n[1] or '', 'current_stage', n[2] or '', 'progress_id', p[2] or '', 'polls', p[3] or '0')
end
return {'ok', changed}
