-- Give a job that has no trace context the one a tracing worker made for it (a job submitted by a producer that
-- doesn't trace, run by a worker that does): set only while the job runs and has none, so two attempts at the
-- same step agree on one job span. A finished job gets none: its span was due when it ended.
-- KEYS: job hash
-- ARGV: traceparent
-- Returns the job's traceparent after this step: the given one, the one it had, or '' (gone, finished, corrupt).
-- #include _now.lua
local job_key = KEYS[1]
local traceparent = ARGV[1]

local f = hash_fields(job_key, 'state', 'traceparent')
if not f or not f[1] or f[1] == 'finished' then return '' end
if f[2] and f[2] ~= '' then return f[2] end
redis.call('HSET', job_key, 'traceparent', traceparent)
return traceparent
