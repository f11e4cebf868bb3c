-- End a job: write its outcome and publish its one result event in the same atomic step, so a crash can
-- neither lose the event nor publish it twice. A job that already finished is left alone.
-- KEYS: job hash, schedule zset, results stream, secret key
-- ARGV: job_id, expect ('start'|'poll'|'any'), seq, results_maxlen, ttl_s, field/value pairs...
-- Returns {'ok', entry_id, prior_state, session_id, kind} | {'done', status} | {'stale'} | {'gone'}
local f = redis.call('HMGET', KEYS[1], 'state', 'seq', 'status')
local state = f[1]
if not state then return {'gone'} end
if state == 'finished' then return {'done', f[3] or ''} end
if ARGV[2] == 'poll' and (state ~= 'polling' or f[2] ~= ARGV[3]) then return {'stale'} end
if ARGV[2] == 'start' and state ~= 'starting' then return {'stale'} end
redis.call('HSET', KEYS[1], 'state', 'finished', 'lease', 0, 'updated_ms', now, unpack(ARGV, 6))
local e = redis.call('HMGET', KEYS[1], 'kind', 'status', 'cekura_status', 'progress_id', 'result', 'error', 'polls',
  'submitted_at', 'finished_at', 'metadata', 'session_id')
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
  'job_id', ARGV[1], 'kind', e[1] or '', 'status', e[2] or '', 'cekura_status', e[3] or '',
  'progress_id', e[4] or '', 'result', e[5] or '', 'error', e[6] or '', 'polls', e[7] or '0',
  'submitted_at', e[8] or '', 'finished_at', e[9] or '', 'metadata', e[10] or '{}')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[4])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return {'ok', id, state, e[11] or '', e[1] or ''}
