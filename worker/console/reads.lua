-- The console's reads, each bounded in bytes whatever the records and events hold: a value comes back as its
-- first `limit` bytes and its whole length, so a 10 MB result costs a page the bytes it shows, not 10 MB.
-- Only read, never written. ARGV[1] names the read:
--
-- 'jobs' ARGV: 'jobs', job key prefix, secret key prefix, secret limit, n, job id 1..n, (field, limit) pairs...
--   Per job id {type, secret, value, length, ...}: `type` the job key's type (only a 'hash' has values), `secret`
--   its stored secrets (false when none, or longer than the limit), and for each field its value cut to its
--   limit and its length in bytes (false and -1 when the field is missing).
-- 'schedule' KEYS: the schedule; ARGV: 'schedule', job key prefix, secret key prefix, secret limit, count,
--   longest id, (field, limit) pairs...
--   {members in all, {job id, type, secret, value, length, ...}...} for the `count` members due soonest (a member
--   longer than `longest id` is left out: no job has such an id).
-- 'entries' KEYS: a stream; ARGV: 'entries', 'fwd'|'rev', from, to, count, budget, rows, match field, match
--   value, (field, limit) pairs...
--   {scanned, last id, ended (1|0), bytes, {id, value, length, ...}...}: reads at most `count` entries from
--   `from` towards `to` (XRANGE or XREVRANGE order), keeps those whose `match field` equals `match value` (every
--   one when the field is ''), and stops once `rows` are kept (0: no limit) or their values reach `budget` bytes.
--   `ended` says the range has no more entries.

local mode = ARGV[1]

-- Entries each XRANGE call brings into the script at once: a few, so a stream of large entries costs the server
-- little memory at a time.
local BATCH = 16

local function field_pairs(from)
  local names, limits = {}, {}
  for i = from, #ARGV, 2 do
    names[#names + 1] = ARGV[i]
    limits[#limits + 1] = tonumber(ARGV[i + 1])
  end
  return names, limits
end

-- Appends each value cut to its limit and its length to `row`; returns the bytes appended.
local function put_values(row, values, names, limits)
  local used = 0
  for j = 1, #names do
    local v = values[j]
    if v then
      local part = string.sub(v, 1, limits[j])
      row[#row + 1] = part
      row[#row + 1] = #v
      used = used + #part
    else
      row[#row + 1] = false
      row[#row + 1] = -1
    end
  end
  return used
end

local function job_row(row, job_key, secret_key, secret_limit, names, limits)
  local kind = redis.call('TYPE', job_key)['ok']
  row[#row + 1] = kind
  local secret = false
  if redis.call('TYPE', secret_key)['ok'] == 'string' then
    local value = redis.call('GET', secret_key)
    if #value <= secret_limit then secret = value end
  end
  row[#row + 1] = secret
  if kind == 'hash' and #names > 0 then
    put_values(row, redis.call('HMGET', job_key, unpack(names)), names, limits)
  end
  return row
end

if mode == 'jobs' then
  local job_prefix, secret_prefix, secret_limit, n = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
  local names, limits = field_pairs(6 + n)
  local out = {}
  for i = 1, n do
    local id = ARGV[5 + i]
    out[i] = job_row({}, job_prefix .. id, secret_prefix .. id, secret_limit, names, limits)
  end
  return out
end

if mode == 'schedule' then
  local job_prefix, secret_prefix, secret_limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
  local count, longest = tonumber(ARGV[5]), tonumber(ARGV[6])
  local names, limits = field_pairs(7)
  local out = {redis.call('ZCARD', KEYS[1])}
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, count - 1)) do
    if #id <= longest then
      out[#out + 1] = job_row({id}, job_prefix .. id, secret_prefix .. id, secret_limit, names, limits)
    end
  end
  return out
end

if mode == 'entries' then
  local stream, reverse, from, to = KEYS[1], ARGV[2] == 'rev', ARGV[3], ARGV[4]
  local count, budget, rows = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local match_field, match_value = ARGV[8], ARGV[9]
  local names, limits = field_pairs(10)
  local index = {}
  for j, name in ipairs(names) do index[name] = j end
  local out, scanned, used, last, ended = {}, 0, 0, '', 0
  local full = false
  while scanned < count and not full do
    if from == (reverse and '(0-0' or '(18446744073709551615-18446744073709551615') then
      ended = 1  -- nothing lies beyond the first or the last id a stream can hold
      break
    end
    local n = math.min(BATCH, count - scanned)
    local batch
    if reverse then
      batch = redis.call('XREVRANGE', stream, from, to, 'COUNT', n)
    else
      batch = redis.call('XRANGE', stream, from, to, 'COUNT', n)
    end
    for k, entry in ipairs(batch) do
      scanned = scanned + 1
      last = entry[1]
      local kv, values = entry[2], {}
      local wanted = match_field == ''
      for i = 1, #kv, 2 do
        local name = kv[i]
        if name == match_field and kv[i + 1] == match_value then wanted = true end
        local j = index[name]
        if j and values[j] == nil then values[j] = kv[i + 1] end
      end
      if wanted then
        local row = {last}
        used = used + #last + put_values(row, values, names, limits)
        out[#out + 1] = row
        full = used >= budget or (rows > 0 and #out >= rows)
        if full and k < #batch then break end
      end
    end
    if #batch < n and (not full or last == batch[#batch][1]) then
      ended = 1
      break
    end
    from = '(' .. last
  end
  return {scanned, last, ended, used, out}
end

return redis.error_reply('ERR reads.lua: unknown read ' .. tostring(mode))
