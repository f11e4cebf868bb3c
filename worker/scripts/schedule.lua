-- Store a delayed Dramatiq message: its data in the queue's message hash, its id in the queue's sorted set
-- scored by eta (ms). `fetch.lua` moves it onto the queue once it is due.
-- KEYS: namespace
-- ARGV: queue_name, redis_message_id, eta_ms, message data
local queue = KEYS[1] .. ':' .. ARGV[1]
redis.call('HSET', queue .. '.msgs', ARGV[2], ARGV[4])
redis.call('ZADD', queue .. '.ZQ', ARGV[3], ARGV[2])
return 1
