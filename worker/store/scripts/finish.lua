-- End a job: write its outcome and publish its one result event in the same atomic step, so a crash can
-- neither lose the event nor publish it twice. A job that already finished is left alone. `finished_at` is
-- taken from the server's clock.
-- With a remote cancel given (a cancel request), a job that was polling (or waiting for an answer) a kind listed in
-- `cancel_kinds` with a Cekura session or progress id also gets its `cancel_remote` message written here, so the cancel can't be recorded while the
-- call that stops the operation at Cekura is lost.
-- KEYS: job hash, schedule zset, results stream, secret key, Dramatiq message hash, Dramatiq queue list
-- ARGV: job_id, expect ('start'|'poll'|'any'), seq, results_maxlen, ttl_s,
--       cancel_kinds (space-separated kinds that cancel at Cekura, a kind with '+' also while it looks for its lost
--       start; '' = no remote cancel), queue_name,
--       cancel actor name, message_id, redis_message_id, field/value pairs...
-- The event carries the job span's `traceparent` (and the producer's `tracestate`) when the job has trace context.
-- Returns {'ok', entry_id, prior_state, session_id, kind, duration_ms, remote_cancel (1|0), now, submitted_ms,
--       polls before, updated_ms before, traceparent, trace_parent, tracestate, trace_link, trace_polls_ms,
--       cekura_status} | {'done', status} | {'stale'} | {'gone'} | {'corrupt'}
--       (from `now` on: what the job's spans are made of, `JobStore.finish`)
-- #include _now.lua
local job_key, schedule_key, results_stream, secret_key, messages_key, queue_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local job_id, expect, seq, results_maxlen, ttl_s = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local cancel_kinds, queue_name, cancel_actor, message_id, redis_message_id = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local FIELDS_FROM = 11

-- Nothing is written unless the event can be: a stray key where the results stream should be makes XADD fail,
-- and Redis keeps what a script wrote before its error, so the job would be finished with no event, for good.
local stream_type = redis.call('TYPE', results_stream)['ok']
if stream_type ~= 'stream' and stream_type ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. results_stream .. ' is not a stream: the job is left unfinished')
end
local f = hash_fields(job_key, 'state', 'seq', 'status', 'polls', 'updated_ms')
if not f then return {'corrupt'} end
local state = f[1]
if not state then return {'gone'} end
if state == 'finished' then return {'done', f[3] or ''} end
if expect == 'poll' and ((state ~= 'polling' and state ~= 'waiting') or f[2] ~= seq) then return {'stale'} end
if expect == 'start' and state ~= 'starting' then return {'stale'} end
redis.call('HSET', job_key, 'state', 'finished', 'lease', 0, 'updated_ms', now, 'finished_at', iso(now),
  unpack(ARGV, FIELDS_FROM))
local e = redis.call('HMGET', job_key, 'kind', 'status', 'cekura_status', 'progress_id', 'result', 'error', 'polls',
  'submitted_at', 'finished_at', 'metadata', 'session_id', 'submitted_ms', 'traceparent', 'trace_parent', 'tracestate',
  'trace_link', 'trace_polls_ms')
-- Trace context only where the job has one: an event without it has exactly the fields every event has.
local trace = {}
if e[13] and e[13] ~= '' then
  trace = {'traceparent', e[13]}
  if e[15] and e[15] ~= '' then trace = {'traceparent', e[13], 'tracestate', e[15]} end
end
local id = redis.call('XADD', results_stream, 'MAXLEN', '~', results_maxlen, '*',
  'job_id', job_id, 'kind', e[1] or '', 'status', e[2] or '', 'cekura_status', e[3] or '',
  'progress_id', e[4] or '', 'result', e[5] or '', 'error', e[6] or '', 'polls', e[7] or '0',
  'submitted_at', e[8] or '', 'finished_at', e[9] or '', 'metadata', e[10] or '{}', unpack(trace))
redis.call('ZREM', schedule_key, job_id)
redis.call('DEL', secret_key)
redis.call('EXPIRE', job_key, ttl_s)

local kind, session_id, progress_id = e[1] or '', e[11] or '', e[4] or ''
local remote_cancel = 0
-- A kind listed with a '+' also finds its operation by its tag: a job of it that ended while still looking for its
-- lost start (polling, no progress id yet) gets the message with no id, and `cancel_remote` looks the run up.
local listed = cancel_kinds ~= '' and string.find(' ' .. cancel_kinds .. ' ', ' ' .. kind .. ' ', 1, true)
local looking = cancel_kinds ~= '' and state == 'polling' and progress_id == '' and not tonumber(session_id)
  and string.find(' ' .. cancel_kinds .. ' ', ' ' .. kind .. '+ ', 1, true)
if (listed and (state == 'polling' or state == 'waiting') and (tonumber(session_id) or progress_id ~= '')) or looking then
  local message = cjson.encode({
    queue_name = queue_name, actor_name = cancel_actor,
    args = {job_id, kind, tonumber(session_id) or cjson.null, progress_id},
    kwargs = {}, options = {redis_message_id = redis_message_id}, message_id = message_id, message_timestamp = now,
  })
  redis.call('HSET', messages_key, redis_message_id, message)
  redis.call('RPUSH', queue_key, redis_message_id)
  remote_cancel = 1
end
return {'ok', id, state, session_id, kind, now - (tonumber(e[12]) or now), remote_cancel, now, e[12] or '',
  f[4] or '0', f[5] or '0', e[13] or '', e[14] or '', e[15] or '', e[16] or '', e[17] or '', e[3] or ''}
