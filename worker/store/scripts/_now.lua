-- Shared prelude (prepended to every script that keeps time): the Redis server's clock in milliseconds, so
-- that deadlines, leases, due times, heartbeats and rate limits agree across worker containers whatever their
-- own clocks say. Also the helpers every such script may use.
local __t = redis.call('TIME')
local now = tonumber(__t[1]) * 1000 + math.floor(tonumber(__t[2]) / 1000)

-- How long past a job's deadline its schedule entry may lie: the messages that time a job out are sent for
-- the deadline itself, and the reconciler steps in this much later if they are lost.
local DEADLINE_SLACK_MS = 1000

-- The schedule score for a step due (plus grace) at `t`: never later than just past the job's deadline.
local function due_score(t, deadline)
  if deadline then return math.min(t, deadline + DEADLINE_SLACK_MS) end
  return t
end

-- `HMGET key fields...`, or nil when `key` holds something other than a hash (another program's key, say):
-- logged to the Redis log and skipped, so one odd key never aborts a script that serves the whole fleet.
local function hash_fields(key, ...)
  local reply = redis.pcall('HMGET', key, ...)
  if type(reply) == 'table' and reply.err then
    redis.log(redis.LOG_WARNING, 'cekura-worker: skipped ' .. key .. ': ' .. reply.err)
    return nil
  end
  return reply
end

-- An epoch time in ms as ISO 8601 UTC with milliseconds (2026-11-23T12:00:00.123Z), on the server's clock.
-- Days to a civil date after Howard Hinnant's `civil_from_days`.
local function iso(ms)
  local s = math.floor(ms / 1000)
  local days = math.floor(s / 86400)
  local rem = s - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d, math.floor(rem / 3600),
    math.floor((rem % 3600) / 60), rem % 60, ms % 1000)
end
