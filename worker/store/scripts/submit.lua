-- Record a new job unless one with this id exists (the id is the idempotency key). `submitted_at` is taken
-- from the server's clock, like every time the scripts record.
-- KEYS: job hash, schedule zset, secret key
-- ARGV: job_id, grace_ms, deadline_ms (relative), secret ('' for none), field/value pairs...
-- Returns {created (1|0), state}; state is 'corrupt' when the job's key holds something other than a job record.
-- #include _now.lua
local job_key, schedule_key, secret_key = KEYS[1], KEYS[2], KEYS[3]
local job_id, grace_ms, deadline_in_ms, secret = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local FIELDS_FROM = 5

local existing = hash_fields(job_key, 'state')
if not existing then return {0, 'corrupt'} end
if existing[1] then return {0, existing[1]} end
local deadline = now + deadline_in_ms
redis.call('HSET', job_key, 'state', 'queued', 'seq', 0, 'polls', 0, 'errors', 0, 'lease', 0,
  'submitted_ms', now, 'submitted_at', iso(now), 'deadline_ms', deadline, 'updated_ms', now, unpack(ARGV, FIELDS_FROM))
redis.call('ZADD', schedule_key, due_score(now + grace_ms, deadline), job_id)
if secret ~= '' then
  redis.call('SET', secret_key, secret, 'PX', deadline_in_ms + 60000)
end
return {1, 'queued'}
