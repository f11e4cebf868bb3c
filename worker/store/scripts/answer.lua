-- Record a person's answer to a job that waits for one (its Cekura operation asked a question), and write the
-- poll message that delivers it, in one atomic step: the answer can't be recorded while its message is lost.
-- Only the first answer to a question is taken; the poll sends it to Cekura and then polls on.
-- KEYS: job hash, schedule zset, Dramatiq message hash, Dramatiq queue list
-- An answer that could not reach Cekura before the deadline (less than `min_ms` left: a consumer's idle wake and
-- one call) is refused as too late rather than taken and then dropped.
-- ARGV: answer, grace_ms, job_id, queue_name, poll actor name, message_id, redis_message_id, min_ms
-- Returns {'ok'} | {'gone'} | {'corrupt'} | {'finished', status} | {'not_waiting', state} | {'answered'}
--       | {'expired'} | {'too_late', ms left}
-- #include _now.lua
local job_key, schedule_key, messages_key, queue_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local answer, grace_ms, job_id, queue_name = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local poll_actor, message_id, redis_message_id, min_ms = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])

local f = hash_fields(job_key, 'state', 'seq', 'status', 'answer', 'deadline_ms')
if not f then return {'corrupt'} end
local state = f[1]
if not state then return {'gone'} end
if state == 'finished' then return {'finished', f[3] or ''} end
if state ~= 'waiting' then return {'not_waiting', state} end
if f[4] and f[4] ~= '' then return {'answered'} end
local deadline = tonumber(f[5]) or 0
if now >= deadline then return {'expired'} end
if deadline - now < min_ms then return {'too_late', deadline - now} end
redis.call('HSET', job_key, 'answer', answer, 'answered_ms', now)
local message = cjson.encode({
  queue_name = queue_name, actor_name = poll_actor, args = {job_id, tonumber(f[2])},
  kwargs = {}, options = {redis_message_id = redis_message_id}, message_id = message_id, message_timestamp = now,
})
redis.call('HSET', messages_key, redis_message_id, message)
redis.call('RPUSH', queue_key, redis_message_id)
redis.call('ZADD', schedule_key, due_score(now + grace_ms, deadline), job_id)
return {'ok'}
