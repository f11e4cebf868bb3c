-- Publish one `rejected` result event for a bad request, once per request-stream entry (a redelivered
-- entry finds its marker and publishes nothing). The event's `submitted_at` and `finished_at` are filled in
-- here from the server's clock, like every time the scripts record (the caller leaves them empty, in place).
-- KEYS: results stream, marker key
-- ARGV: results_maxlen, marker_ttl_s, field/value pairs...
-- Returns the entry id, or false when this entry was already rejected.
-- #include _now.lua
local results_stream, marker_key = KEYS[1], KEYS[2]
local results_maxlen, marker_ttl_s = ARGV[1], tonumber(ARGV[2])
local FIELDS_FROM = 3

if redis.call('EXISTS', marker_key) == 1 then return false end
local fields = {}
for i = FIELDS_FROM, #ARGV, 2 do
  local name, value = ARGV[i], ARGV[i + 1]
  if name == 'submitted_at' or name == 'finished_at' then value = iso(now) end
  table.insert(fields, name)
  table.insert(fields, value)
end
-- The marker is set only once the event is written: a failed XADD (a stray key at the stream, say) leaves the
-- entry to be rejected again on its next delivery rather than acknowledged with no event.
local id = redis.call('XADD', results_stream, 'MAXLEN', '~', results_maxlen, '*', unpack(fields))
redis.call('SET', marker_key, '1', 'EX', marker_ttl_s)
return id
