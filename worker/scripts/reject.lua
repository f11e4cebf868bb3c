-- Publish one `rejected` result event for a bad request, once per request-stream entry (a redelivered
-- entry finds its marker and publishes nothing).
-- KEYS: results stream, marker key
-- ARGV: results_maxlen, marker_ttl_s, field/value pairs...
-- Returns the entry id, or false when this entry was already rejected.
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[2])) then return false end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
