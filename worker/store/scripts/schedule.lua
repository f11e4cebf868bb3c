-- Store a Dramatiq message sent outside an atomic step: its data in the queue's message hash, and its id
-- either on the queue itself (no delay) or in the queue's sorted set scored by when it is due on the server's
-- clock (`fetch.lua` moves it onto the queue then). Unlike Dramatiq's own enqueue, it records no heartbeat:
-- producers are not workers.
-- KEYS: namespace
-- ARGV: queue_name, redis_message_id, delay_ms (0 = now), message data
-- #include _now.lua
local namespace = KEYS[1]
local queue_name, redis_message_id, delay_ms, message_data = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local queue = namespace .. ':' .. queue_name
redis.call('HSET', queue .. '.msgs', redis_message_id, message_data)
if delay_ms > 0 then
  redis.call('ZADD', queue .. '.ZQ', now + delay_ms, redis_message_id)
else
  redis.call('RPUSH', queue, redis_message_id)
end
return now
