-- Record a new job unless one with this id exists (the id is the idempotency key).
-- KEYS: job hash, schedule zset, secret key
-- ARGV: job_id, grace_ms, deadline_ms (relative), secret ('' for none), field/value pairs...
-- Returns {created (1|0), state}.
local existing = redis.call('HGET', KEYS[1], 'state')
if existing then
  return {0, existing}
end
local deadline = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'queued', 'seq', 0, 'polls', 0, 'errors', 0, 'lease', 0,
  'submitted_ms', now, 'deadline_ms', deadline, 'updated_ms', now, unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4], 'PX', tonumber(ARGV[3]) + 60000)
end
return {1, 'queued'}
