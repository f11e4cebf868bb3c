-- Shared by claim.lua and fetch.lua: take the right to make the next Cekura call for a job. The message must
-- be current (start: the job is queued or its start lease expired; poll: same seq and no live lease held by
-- another message), the deadline not passed, and the fleet-wide rate limit must allow a call now. Over the
-- limit, a slot is reserved and the caller re-sends its message after `wait` ms with `reserved` set, so
-- waiting costs no retry budget and keeps its turn.
-- The deadline bounds everything: a job past it is `expired` even while another message holds its lease (the
-- call in flight is then ignored), no wait goes past it, and no rate slot is reserved for a job that could
-- only use it after its deadline (it waits for the deadline instead, and times out then).
-- `owner` names the message taking the lease (its Redis message id, or '' when unknown): the same message
-- delivered again (requeued by a graceful stop, or after its worker died) may take the lease back; a
-- duplicate copy may not.
-- Needs _now.lua (`now`, `due_score`, `hash_fields`), included before it by the script that includes this.
-- Returns {'ok', now, fields...} | {'wait', ms, reason, reserved (1|0), ms left before the deadline} | {'expired'}
--       | {'stale'} | {'gone'}
--       | {'corrupt'} (the job's key holds something other than a job record)
local function claim(job_key, schedule_key, rate_key, cooldown_key, phase, seq, lease_ms, grace_ms, job_id, rate,
                     burst, reserved, owner)
  local f = hash_fields(job_key, 'state', 'seq', 'lease', 'deadline_ms', 'lease_owner')
  if not f then return {'corrupt'} end
  local state = f[1]
  if not state then return {'gone'} end
  if state == 'finished' then return {'stale'} end
  local lease = tonumber(f[3]) or 0
  local deadline = tonumber(f[4]) or 0
  if phase == 'start' then
    if state ~= 'queued' and state ~= 'starting' then return {'stale'} end
    if now >= deadline then return {'expired'} end
    if state == 'starting' and lease > now then return {'stale'} end
  else
    if (state ~= 'polling' and state ~= 'waiting') or f[2] ~= seq then return {'stale'} end
    if now >= deadline then return {'expired'} end
    if lease > now and (owner == '' or f[5] ~= owner) then return {'stale'} end
    -- A job waiting for a person's answer is polled again only once an answer arrived (answer.lua).
    local answer = redis.call('HGET', job_key, 'answer')
    if state == 'waiting' and (not answer or answer == '') then return {'stale'} end
  end

  local grace = tonumber(grace_ms)
  local cooldown = tonumber(redis.call('GET', cooldown_key) or '0')
  if cooldown > now then
    local wait = math.min(cooldown, deadline) - now
    redis.call('ZADD', schedule_key, due_score(now + wait + grace, deadline), job_id)
    return {'wait', wait, 'cooldown', 0, deadline - now}
  end
  rate = tonumber(rate)
  if rate > 0 and reserved ~= '1' then
    -- GCRA: `tat` is when the bucket is next empty; each call pushes it one interval further.
    local interval = 1000 / rate
    local tolerance = interval * (tonumber(burst) - 1)
    local tat = math.max(tonumber(redis.call('GET', rate_key) or '0'), now)
    local wait = math.ceil(tat - tolerance - now)
    if wait > 0 and now + wait >= deadline then
      redis.call('ZADD', schedule_key, due_score(deadline + grace, deadline), job_id)
      return {'wait', deadline - now, 'rate_limit', 0, deadline - now}
    end
    redis.call('SET', rate_key, tostring(tat + interval), 'PX', math.ceil(tat + interval - now + 60000))
    if wait > 0 then
      redis.call('ZADD', schedule_key, due_score(now + wait + grace, deadline), job_id)
      return {'wait', wait, 'rate_limit', 1, deadline - now}
    end
  end

  -- A start claim gets a fencing token, `start_claim`, which `mark_start.lua` checks so that an attempt whose step
  -- another attempt took over can no longer mark the start as its own. The server's time in it keeps it unique
  -- even when the record loses writes (a restart, a failover) or is made anew for a reused job id.
  if phase == 'start' then
    redis.call('HSET', job_key, 'start_claim', now .. ':' .. redis.call('HINCRBY', job_key, 'start_claims', 1))
  end
  -- Read before the lease is written: `start_sent` (`answer_sent`) must say whether an earlier attempt may have
  -- sent the start (the answer).
  local out = redis.call('HMGET', job_key, 'seq', 'kind', 'params', 'progress_id', 'session_id', 'polls', 'errors',
    'deadline_ms', 'cekura_status', 'current_stage', 'submitted_ms', 'started_ms', 'updated_ms', 'answer',
    'start_sent', 'answer_sent', 'start_claim', 'traceparent', 'tracestate')
  local lease_until = now + tonumber(lease_ms)
  redis.call('HSET', job_key, 'state', phase == 'start' and 'starting' or 'polling', 'lease', lease_until,
    'lease_owner', owner)
  -- A poll claimed to deliver an answer records that it may send it (a start records it just before its call,
  -- `JobStore.mark_start_sent`, so a claim whose reply was lost never reads as a start that may have been sent).
  if phase ~= 'start' and out[14] and out[14] ~= '' then
    redis.call('HSET', job_key, 'answer_sent', '1')
  end
  redis.call('ZADD', schedule_key, due_score(lease_until + grace, deadline), job_id)
  table.insert(out, 1, now)
  table.insert(out, 1, 'ok')
  return out
end
