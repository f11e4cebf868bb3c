-- Hold every worker's Cekura calls until now + ms (after a 429), unless a later hold is already set.
-- KEYS: cooldown key
-- ARGV: ms
-- Returns the hold's end in ms.
-- #include _now.lua
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current >= until_ms then return current end
redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1]) + 1000)
return until_ms
