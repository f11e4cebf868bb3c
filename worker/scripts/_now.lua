-- Shared prelude (prepended to every script): the Redis server's clock in milliseconds, so that
-- deadlines, leases and rate limits agree across worker containers whatever their clocks say.
local __t = redis.call('TIME')
local now = tonumber(__t[1]) * 1000 + math.floor(tonumber(__t[2]) / 1000)
