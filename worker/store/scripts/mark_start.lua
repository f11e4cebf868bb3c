-- Record, just before a start call that must not be repeated, that it may reach Cekura; fenced by the claim.
-- The mark is set only while this attempt's claim is still the job's latest start claim (`start_claim`, a token
-- every start claim writes anew) and its lease has not run out, and only once: an attempt paused past its lease,
-- whose step another attempt took over, finds the claim no longer its own and makes no call.
-- With `undo`, take this attempt's own mark back (it could not be replicated, and no call was made).
-- KEYS: job hash
-- ARGV: start_claim (the token this attempt's claim read: its fence), 'mark' | 'undo'
-- Returns 'ok' (marked by this attempt, or a replay of this attempt's own mark whose reply was lost)
--       | 'lost' (another attempt holds the start, the job moved on, or this claim's lease ran out)
--       | 'sent' (an earlier attempt marked it: its call may have reached Cekura) | 'gone' | 'corrupt'
-- #include _now.lua
local job_key, token = KEYS[1], ARGV[1]
local f = hash_fields(job_key, 'state', 'lease', 'start_claim', 'start_sent', 'start_marked_by')
if not f then return 'corrupt' end
if not f[1] then return 'gone' end
if ARGV[2] == 'undo' then
  if f[5] ~= token then return 'lost' end
  redis.call('HDEL', job_key, 'start_sent', 'start_marked_by')
  return 'ok'
end
if f[1] ~= 'starting' or f[3] ~= token or (tonumber(f[2]) or 0) <= now then return 'lost' end
if f[4] == '1' then
  if f[5] == token then return 'ok' end
  return 'sent'
end
redis.call('HSET', job_key, 'start_sent', '1', 'start_marked_by', token)
return 'ok'
