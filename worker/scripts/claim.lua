-- Take the right to make the next Cekura call for a job: the message must be current (start: the job is
-- queued or its start lease expired; poll: same seq and no live lease), the deadline not passed, and the
-- fleet-wide rate limit must allow a call now. Over the limit, a slot is reserved and the caller re-sends
-- its message after `wait` ms with `reserved` set, so waiting costs no retry budget and keeps its turn.
-- KEYS: job hash, schedule zset, rate-limit key, cooldown key
-- ARGV: phase ('start'|'poll'), seq, lease_ms, grace_ms, job_id, rate (per s, 0 = off), burst, reserved ('1'|'0')
-- Returns {'ok', now, fields...} | {'wait', ms, reason} | {'expired'} | {'stale'} | {'gone'}
local f = redis.call('HMGET', KEYS[1], 'state', 'seq', 'lease', 'deadline_ms')
local state = f[1]
if not state then return {'gone'} end
if state == 'finished' then return {'stale'} end
local lease = tonumber(f[3]) or 0
if ARGV[1] == 'start' then
  if not (state == 'queued' or (state == 'starting' and lease <= now)) then return {'stale'} end
elseif state ~= 'polling' or f[2] ~= ARGV[2] or lease > now then
  return {'stale'}
end
if now >= tonumber(f[4]) then return {'expired'} end

local grace = tonumber(ARGV[4])
local cooldown = tonumber(redis.call('GET', KEYS[4]) or '0')
if cooldown > now then
  redis.call('ZADD', KEYS[2], cooldown + grace, ARGV[5])
  return {'wait', cooldown - now, 'cooldown'}
end
local rate = tonumber(ARGV[6])
if rate > 0 and ARGV[8] ~= '1' then
  -- GCRA: `tat` is when the bucket is next empty; each call pushes it one interval further.
  local interval = 1000 / rate
  local tolerance = interval * (tonumber(ARGV[7]) - 1)
  local tat = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now)
  redis.call('SET', KEYS[3], tostring(tat + interval), 'PX', math.ceil(tat + interval - now + 60000))
  local wait = math.ceil(tat - tolerance - now)
  if wait > 0 then
    redis.call('ZADD', KEYS[2], now + wait + grace, ARGV[5])
    return {'wait', wait, 'rate_limit'}
  end
end

local lease_until = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'state', ARGV[1] == 'start' and 'starting' or 'polling', 'lease', lease_until)
redis.call('ZADD', KEYS[2], lease_until + grace, ARGV[5])
local out = redis.call('HMGET', KEYS[1], 'seq', 'kind', 'params', 'progress_id', 'session_id', 'polls', 'errors',
  'deadline_ms', 'cekura_status', 'current_stage', 'submitted_ms')
table.insert(out, 1, now)
table.insert(out, 1, 'ok')
return out
