-- Dramatiq fetch for CekuraBroker: first move delayed messages that are due from the queue's sorted set
-- (`<queue>.ZQ`, scored by eta) onto the queue itself, then pop up to `prefetch` messages as Dramatiq's own
-- dispatch.lua does (ack set per worker, heartbeat). Moving inside one script is what keeps a delayed
-- message from being duplicated or lost on its way to the queue.
-- Acks buffered by the consumer ride along: each is removed from the worker's ack set and its data deleted.
-- KEYS: namespace
-- ARGV: queue_name, worker_id, timestamp (ms, the client's, as Dramatiq's heartbeats use), prefetch, promote_limit,
--       redis message ids to ack...
-- Returns {next_due_ms or -1, message data...}
local ns = KEYS[1]
local queue = ns .. ':' .. ARGV[1]
local messages = queue .. '.msgs'
local delayed = queue .. '.ZQ'
local acks = ns .. ':__acks__.' .. ARGV[2] .. '.' .. ARGV[1]
redis.call('ZADD', ns .. ':__heartbeats__', ARGV[3], ARGV[2])

for i = 6, #ARGV do
  if redis.call('SREM', acks, ARGV[i]) > 0 then
    redis.call('HDEL', messages, ARGV[i])
  end
end

local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
if #due > 0 then
  redis.call('ZREM', delayed, unpack(due))
  redis.call('RPUSH', queue, unpack(due))
end

local head = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
local out = {head[2] or '-1'}
local ids = redis.call('LPOP', queue, tonumber(ARGV[4]))
if ids then
  redis.call('SADD', acks, unpack(ids))
  local data = redis.call('HMGET', messages, unpack(ids))
  for i = 1, #data do
    if data[i] then table.insert(out, data[i]) end
  end
end
return out
