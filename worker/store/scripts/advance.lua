-- Record a step that did not end the job and schedule its next attempt: the next poll after a progress
-- answer or a successful start, or a retry after a transient failure. The next Dramatiq message, captured by
-- `CekuraBroker.outbox()`, is written here too, due `message_delay_ms` from now on the server's clock, so
-- recording and scheduling are one atomic step. Neither the step nor the message is ever due past the job's
-- deadline. Publishes a progress event when the Cekura status or stage
-- changed and progress events are on; like the result event, it carries the job span's `traceparent` (and the
-- producer's `tracestate`) when the job has trace context.
-- KEYS: job hash, schedule zset, progress stream, Dramatiq message hash, Dramatiq delayed zset
-- ARGV: phase ('start'|'poll'), seq, new_seq, next_state, delay_ms, grace_ms, job_id, progress_maxlen (0 = off),
--       redis_message_id ('' for none), message_delay_ms, message data, field/value pairs...
-- Returns {'ok', changed (1|0)} | {'finished', session_id} | {'stale'} | {'gone'} | {'corrupt'}
-- (`ok` with changed 0 also for the same start step run a second time: see `start_step`)
-- #include _now.lua
local job_key, schedule_key, progress_stream, messages_key, delayed_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local phase, seq, new_seq, next_state = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local delay_ms, grace_ms, job_id, progress_maxlen = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
local redis_message_id, message_delay_ms, message_data = ARGV[9], tonumber(ARGV[10]), ARGV[11]
local FIELDS_FROM = 12

local f = hash_fields(job_key, 'state', 'seq', 'cekura_status', 'current_stage', 'session_id', 'deadline_ms',
  'question', 'start_step')
if not f then return {'corrupt'} end
local state = f[1]
if not state then return {'gone'} end
-- The same start step run again (redis-py re-sends a script whose reply it lost, maybe after the first poll ran) was
-- applied already: say so, rather than `stale`, which would read as another worker having started the job.
if phase == 'start' and redis_message_id ~= '' and f[8] == redis_message_id then return {'ok', 0} end
if state == 'finished' then return {'finished', f[5] or ''} end
-- A step counts only for the attempt it belongs to (`seq`): a late or replayed one of an earlier attempt is stale.
if f[2] ~= seq then return {'stale'} end
if phase == 'poll' then
  if state ~= 'polling' then return {'stale'} end
elseif state ~= 'starting' then
  return {'stale'}
end
-- The deadline bounds every re-send: nothing is scheduled past it (a job due at its deadline times out then).
local deadline = tonumber(f[6])
if deadline then
  delay_ms = math.max(1, math.min(delay_ms, deadline - now))
  message_delay_ms = math.max(1, math.min(message_delay_ms, deadline - now))
end
local due = now + delay_ms
redis.call('HSET', job_key, 'state', next_state, 'seq', new_seq, 'lease', 0, 'next_poll_ms', due, 'updated_ms', now,
  unpack(ARGV, FIELDS_FROM))
if phase == 'start' then redis.call('HSET', job_key, 'start_step', redis_message_id) end
redis.call('ZADD', schedule_key, due_score(due + grace_ms, deadline), job_id)
if redis_message_id ~= '' then
  redis.call('HSET', messages_key, redis_message_id, message_data)
  redis.call('ZADD', delayed_key, now + message_delay_ms, redis_message_id)
end
local n = redis.call('HMGET', job_key, 'cekura_status', 'current_stage', 'question')
local changed = 0
if n[1] ~= f[3] or n[2] ~= f[4] or (next_state == 'waiting' and n[3] ~= f[7]) then changed = 1 end
if changed == 1 and progress_maxlen > 0 and n[1] then
  local p = redis.call('HMGET', job_key, 'kind', 'progress_id', 'polls', 'traceparent', 'tracestate')
  local event = {'job_id', job_id, 'kind', p[1], 'cekura_status', n[1] or '', 'current_stage', n[2] or '',
    'progress_id', p[2] or '', 'polls', p[3] or '0', 'state', next_state}
  if next_state == 'waiting' then
    table.insert(event, 'question')
    table.insert(event, n[3] or '')
  end
  if p[4] and p[4] ~= '' then
    table.insert(event, 'traceparent')
    table.insert(event, p[4])
    if p[5] and p[5] ~= '' then
      table.insert(event, 'tracestate')
      table.insert(event, p[5])
    end
  end
  redis.call('XADD', progress_stream, 'MAXLEN', '~', progress_maxlen, '*', unpack(event))
end
return {'ok', changed}
