-- Take up to `limit` active jobs whose next step is overdue and push their due time `bump_ms` ahead, so
-- that exactly one reconciler re-sends each. Finished or vanished jobs are dropped from the schedule.
-- KEYS: schedule zset
-- ARGV: limit, bump_ms, job key prefix
-- Returns a flat list: job_id, state, seq, ...
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  local f = redis.call('HMGET', ARGV[3] .. id, 'state', 'seq')
  if not f[1] or f[1] == 'finished' then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, f[1])
    table.insert(out, f[2] or '0')
  end
end
return out
