-- Read request-stream entries for the intake without sending it any `request` over the size limit: per entry,
-- its `request` field only when it is at most max_bytes long (else only its length), and the names of any other
-- fields, never their values. A burst of oversized entries then costs the worker their ids, not their bytes.
-- Entries are taken one at a time (COUNT 1), so the script holds about one entry's copy at once, not a batch.
-- With mode 'new', the next entries for this consumer (XREADGROUP '>', without BLOCK: the caller blocks); with
-- 'claim', entries pending longer than min_idle_ms, scanning from `start` (XAUTOCLAIM).
-- KEYS: request stream
-- ARGV: mode ('new'|'claim'), group, consumer, count, max_bytes, min_idle_ms, start
-- Returns {cursor, entries}; cursor is where a 'claim' goes on ('0-0' when the scan is done, and for 'new').
--   Each entry is {id, request | false, request_len (-1 when absent), {other field names of at most
--   MAX_NAME_BYTES, at most MAX_NAMES of them}, number of other fields}, or {id} for one deleted while pending.
local stream = KEYS[1]
local mode, group, consumer, count, max_bytes, min_idle_ms, start =
  ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local MAX_NAMES, MAX_NAME_BYTES = 10, 64

local function describe(id, fields)
  if not fields then return {id} end
  local request, size, names, others = false, -1, {}, 0
  for i = 1, #fields, 2 do
    local name, value = fields[i], fields[i + 1]
    if name == 'request' and size == -1 then
      size = #value
      if size <= max_bytes then request = value end
    else
      others = others + 1
      if #names < MAX_NAMES and #name <= MAX_NAME_BYTES then table.insert(names, name) end
    end
  end
  return {id, request, size, names, others}
end

local cursor, out = '0-0', {}
if mode == 'claim' then
  cursor = start
  for _ = 1, count do
    local reply = redis.call('XAUTOCLAIM', stream, group, consumer, min_idle_ms, cursor, 'COUNT', 1)
    cursor = reply[1]
    for _, entry in ipairs(reply[2]) do table.insert(out, describe(entry[1], entry[2])) end
    if cursor == '0-0' then break end
  end
else
  for _ = 1, count do
    local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', 1, 'STREAMS', stream, '>')
    if not reply then break end
    local entry = reply[1][2][1]
    table.insert(out, describe(entry[1], entry[2]))
  end
end
return {cursor, out}
