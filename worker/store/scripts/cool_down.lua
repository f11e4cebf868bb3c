-- Hold every worker's Cekura calls until now + ms (after a 429), unless a later hold is already set.
-- KEYS: cooldown key
-- ARGV: ms
-- Returns the hold's end in ms.
-- #include _now.lua
local cooldown_key = KEYS[1]
local hold_ms = tonumber(ARGV[1])

local until_ms = now + hold_ms
local current = tonumber(redis.call('GET', cooldown_key) or '0')
if current >= until_ms then return current end
redis.call('SET', cooldown_key, until_ms, 'PX', hold_ms + 1000)
return until_ms
