-- Dramatiq fetch for CekuraBroker: first move delayed messages that are due from the queue's sorted set
-- (`<queue>.ZQ`, scored by eta) onto the queue itself, then pop up to `prefetch` messages as Dramatiq's own
-- dispatch.lua does (ack set per worker, heartbeat). Moving inside one script is what keeps a delayed
-- message from being duplicated or lost on its way to the queue.
-- Acks buffered by the consumer ride along: each is removed from the worker's ack set and its data deleted.
-- With claims on (a claiming actor named), each popped message of that actor also claims its job here
-- (_claim.lua, owner = the message's Redis id), which saves the worker a round trip per poll. The fleet-wide
-- rate limit is not applied here: with it on, the broker doesn't ask for claims.
-- KEYS: namespace, schedule zset, rate-limit key, cooldown key
-- ARGV: queue_name, worker_id, timestamp (ms, the client's, as Dramatiq's heartbeats use), prefetch, promote_limit,
--       claiming actor ('' = no claims), job key prefix, lease_ms, grace_ms, redis message ids to ack...
-- Returns {next_due_ms or -1, message data, claim reply or nil, message data, claim reply or nil, ...}
local ns = KEYS[1]
local queue = ns .. ':' .. ARGV[1]
local messages = queue .. '.msgs'
local delayed = queue .. '.ZQ'
local acks = ns .. ':__acks__.' .. ARGV[2] .. '.' .. ARGV[1]
local claimer = ARGV[6]
redis.call('ZADD', ns .. ':__heartbeats__', ARGV[3], ARGV[2])

for i = 10, #ARGV do
  if redis.call('SREM', acks, ARGV[i]) > 0 then
    redis.call('HDEL', messages, ARGV[i])
  end
end

local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
if #due > 0 then
  redis.call('ZREM', delayed, unpack(due))
  redis.call('RPUSH', queue, unpack(due))
end

local function claimed(id, data)
  if claimer == '' then return false end
  local ok, message = pcall(cjson.decode, data)
  if not ok or type(message) ~= 'table' or message.actor_name ~= claimer then return false end
  local args = message.args
  if type(args) ~= 'table' or type(args[1]) ~= 'string' or type(args[2]) ~= 'number' then return false end
  return claim(ARGV[7] .. args[1], KEYS[2], KEYS[3], KEYS[4], 'poll', string.format('%d', args[2]), ARGV[8], ARGV[9],
    args[1], 0, 1, '1', id)
end

local head = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
local out = {head[2] or '-1'}
local ids = redis.call('LPOP', queue, tonumber(ARGV[4]))
if ids then
  redis.call('SADD', acks, unpack(ids))
  local data = redis.call('HMGET', messages, unpack(ids))
  for i = 1, #data do
    if data[i] then
      out[#out + 1] = data[i]
      out[#out + 1] = claimed(ids[i], data[i])
    end
  end
end
return out
