-- Add one finished job to its kind's duration histogram (learned polling, worker/cekura/durations.py): the job's
-- unit weight, already shared out over buckets by the caller, is added to fields `b<i>`; `weight` is the sum,
-- `jobs` counts every job ever recorded, `updated_ms` is when. Bounded and following change: when `weight`
-- passes `window`, every bucket and `weight` are halved, and a bucket left under `negligible` is dropped.
-- KEYS: the kind's histogram hash
-- ARGV: window, negligible, bucket field/weight pairs...
-- Returns the histogram's weight after the update (a string: a float).
-- #include _now.lua
local histogram_key = KEYS[1]
local window, negligible = tonumber(ARGV[1]), tonumber(ARGV[2])
local PAIRS_FROM = 3

local added = 0
for i = PAIRS_FROM, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', histogram_key, ARGV[i], ARGV[i + 1])
  added = added + tonumber(ARGV[i + 1])
end
local weight = tonumber(redis.call('HINCRBYFLOAT', histogram_key, 'weight', string.format('%.17g', added)))
redis.call('HINCRBY', histogram_key, 'jobs', 1)
redis.call('HSET', histogram_key, 'updated_ms', now)
if weight > window then
  local fields = redis.call('HGETALL', histogram_key)
  for i = 1, #fields, 2 do
    local name = fields[i]
    if string.sub(name, 1, 1) == 'b' then
      local half = tonumber(fields[i + 1]) / 2
      if half < negligible then
        redis.call('HDEL', histogram_key, name)
      else
        redis.call('HSET', histogram_key, name, string.format('%.17g', half))
      end
    end
  end
  weight = weight / 2
  redis.call('HSET', histogram_key, 'weight', string.format('%.17g', weight))
end
return string.format('%.17g', weight)
