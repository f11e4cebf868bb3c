-- Dramatiq fetch for CekuraBroker: first move delayed messages that are due from the queue's sorted set
-- (`<queue>.ZQ`, scored by when they are due on the server's clock) onto the queue itself, then pop up to
-- `prefetch` messages as Dramatiq's own dispatch.lua does (ack set per worker, heartbeat). Moving inside one
-- script is what keeps a delayed message from being duplicated or lost on its way to the queue.
-- The heartbeat is the server's time too, so that workers whose clocks disagree never take each other for dead.
-- Acks buffered by the consumer ride along: each is removed from the worker's ack set and its data deleted.
-- With claims on (a claiming actor named), each popped message of that actor also claims its job here
-- (_claim.lua, owner = the message's Redis id), which saves the worker a round trip per poll. The fleet-wide
-- rate limit is not applied here: with it on, the broker doesn't ask for claims.
-- KEYS: namespace, schedule zset, rate-limit key, cooldown key
-- ARGV: queue_name, worker_id, prefetch, promote_limit, claiming actor ('' = no claims), job key prefix, lease_ms,
--       grace_ms, redis message ids to ack...
-- Returns {now, ms until the next delayed message is due or -1, message data, claim reply or false, ...}
-- #include _now.lua
-- #include _claim.lua
local namespace, schedule_key, rate_key, cooldown_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queue_name, worker_id, prefetch, promote_limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local claimer, job_prefix, lease_ms, grace_ms = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local ACKS_FROM = 9

local queue = namespace .. ':' .. queue_name
local messages = queue .. '.msgs'
local delayed = queue .. '.ZQ'
local acks = namespace .. ':__acks__.' .. worker_id .. '.' .. queue_name
redis.call('ZADD', namespace .. ':__heartbeats__', now, worker_id)

for i = ACKS_FROM, #ARGV do
  if redis.call('SREM', acks, ARGV[i]) > 0 then
    redis.call('HDEL', messages, ARGV[i])
  end
end

local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, promote_limit)
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
  return claim(job_prefix .. args[1], schedule_key, rate_key, cooldown_key, 'poll', string.format('%d', args[2]),
    lease_ms, grace_ms, args[1], 0, 1, '1', id)
end

local head = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
local out = {now, head[2] and math.max(0, tonumber(head[2]) - now) or -1}
local ids = redis.call('LPOP', queue, prefetch)
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
