-- Take up to `limit` active jobs whose next step is overdue and push their due time ahead (by `bump_ms`, but
-- not past a job's deadline), so that exactly one reconciler re-sends each. Finished or vanished jobs are
-- dropped from the schedule; an entry whose key holds something other than a job record is dropped too and
-- returned apart, so that one odd key never stops the pass.
-- KEYS: schedule zset
-- ARGV: limit, bump_ms, job key prefix
-- Returns {{job_id, state, seq, ...}, {skipped job_id, ...}}
-- #include _now.lua
local schedule_key = KEYS[1]
local limit, bump_ms, job_prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]

local ids = redis.call('ZRANGEBYSCORE', schedule_key, '-inf', now, 'LIMIT', 0, limit)
local out, skipped = {}, {}
for _, id in ipairs(ids) do
  local f = hash_fields(job_prefix .. id, 'state', 'seq', 'deadline_ms')
  if not f then
    redis.call('ZREM', schedule_key, id)
    table.insert(skipped, id)
  elseif not f[1] or f[1] == 'finished' then
    redis.call('ZREM', schedule_key, id)
  else
    local deadline = tonumber(f[3]) or now
    local next_due = now + bump_ms
    if deadline > now then next_due = due_score(next_due, deadline) end
    redis.call('ZADD', schedule_key, next_due, id)
    table.insert(out, id)
    table.insert(out, f[1])
    table.insert(out, f[2] or '0')
  end
end
return {out, skipped}
