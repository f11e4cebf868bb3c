-- A webhook said a job's Cekura operation ended: make the job's next poll due now. The poll is an ordinary poll
-- message for the job's current step (`seq`): it claims the job like any other, and the poll already scheduled
-- for that step later finds the step taken and does nothing. So a forged, stale or duplicated webhook costs at
-- most one progress call, and the job ends only on what that call reads.
-- KEYS: job hash, Dramatiq message hash, Dramatiq queue list
-- ARGV: job_id, queue_name, poll actor name, message_id, redis_message_id, progress_id (the webhook's result id)
-- Returns {'ok'} | {'gone'} | {'corrupt'} | {'finished'} | {'not_polling', state} | {'other', progress_id}
--       | {'busy'} (a poll holds the job now: it reads Cekura's answer anyway)
--       | {'backoff'} (its last call failed and it waits to retry: a webhook must not spend its error budget)
-- #include _now.lua
local job_key, messages_key, queue_key = KEYS[1], KEYS[2], KEYS[3]
local job_id, queue_name, poll_actor, message_id, redis_message_id, progress_id =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

local f = hash_fields(job_key, 'state', 'seq', 'progress_id', 'lease', 'deadline_ms', 'errors')
if not f then return {'corrupt'} end
local state = f[1]
if not state then return {'gone'} end
if state == 'finished' then return {'finished'} end
if state ~= 'polling' then return {'not_polling', state} end
if f[3] ~= progress_id then return {'other', f[3] or ''} end
if (tonumber(f[4]) or 0) > now then return {'busy'} end
if now >= (tonumber(f[5]) or 0) then return {'finished'} end -- past its deadline: it times out on its own
if (tonumber(f[6]) or 0) > 0 then return {'backoff'} end
local message = cjson.encode({
  queue_name = queue_name, actor_name = poll_actor, args = {job_id, tonumber(f[2])},
  kwargs = {}, options = {redis_message_id = redis_message_id}, message_id = message_id, message_timestamp = now,
})
redis.call('HSET', messages_key, redis_message_id, message)
redis.call('RPUSH', queue_key, redis_message_id)
return {'ok'}
