-- Shared by claim.lua and fetch.lua: take the right to make the next Cekura call for a job. The message must
-- be current (start: the job is queued or its start lease expired; poll: same seq and no live lease held by
-- another message), the deadline not passed, and the fleet-wide rate limit must allow a call now. Over the
-- limit, a slot is reserved and the caller re-sends its message after `wait` ms with `reserved` set, so
-- waiting costs no retry budget and keeps its turn.
-- `owner` names the message taking the lease (its Redis message id, or '' when unknown): the same message
-- delivered again (requeued by a graceful stop, or after its worker died) may take the lease back; a
-- duplicate copy may not.
-- Returns {'ok', now, fields...} | {'wait', ms, reason} | {'expired'} | {'stale'} | {'gone'}
local function claim(job_key, schedule_key, rate_key, cooldown_key, phase, seq, lease_ms, grace_ms, job_id, rate,
                     burst, reserved, owner)
  local f = redis.call('HMGET', job_key, 'state', 'seq', 'lease', 'deadline_ms', 'lease_owner')
  local state = f[1]
  if not state then return {'gone'} end
  if state == 'finished' then return {'stale'} end
  local lease = tonumber(f[3]) or 0
  if phase == 'start' then
    if not (state == 'queued' or (state == 'starting' and lease <= now)) then return {'stale'} end
  elseif state ~= 'polling' or f[2] ~= seq or (lease > now and (owner == '' or f[5] ~= owner)) then
    return {'stale'}
  end
  if now >= tonumber(f[4]) then return {'expired'} end

  local grace = tonumber(grace_ms)
  local cooldown = tonumber(redis.call('GET', cooldown_key) or '0')
  if cooldown > now then
    redis.call('ZADD', schedule_key, cooldown + grace, job_id)
    return {'wait', cooldown - now, 'cooldown'}
  end
  rate = tonumber(rate)
  if rate > 0 and reserved ~= '1' then
    -- GCRA: `tat` is when the bucket is next empty; each call pushes it one interval further.
    local interval = 1000 / rate
    local tolerance = interval * (tonumber(burst) - 1)
    local tat = math.max(tonumber(redis.call('GET', rate_key) or '0'), now)
    redis.call('SET', rate_key, tostring(tat + interval), 'PX', math.ceil(tat + interval - now + 60000))
    local wait = math.ceil(tat - tolerance - now)
    if wait > 0 then
      redis.call('ZADD', schedule_key, now + wait + grace, job_id)
      return {'wait', wait, 'rate_limit'}
    end
  end

  local lease_until = now + tonumber(lease_ms)
  redis.call('HSET', job_key, 'state', phase == 'start' and 'starting' or 'polling', 'lease', lease_until,
    'lease_owner', owner)
  redis.call('ZADD', schedule_key, lease_until + grace, job_id)
  local out = redis.call('HMGET', job_key, 'seq', 'kind', 'params', 'progress_id', 'session_id', 'polls', 'errors',
    'deadline_ms', 'cekura_status', 'current_stage', 'submitted_ms')
  table.insert(out, 1, now)
  table.insert(out, 1, 'ok')
  return out
end
