-- Claim a job for its next Cekura call (see _claim.lua), for a message the fetch did not claim already.
-- KEYS: job hash, schedule zset, rate-limit key, cooldown key
-- ARGV: phase ('start'|'poll'), seq, lease_ms, grace_ms, job_id, rate (per s, 0 = off), burst, reserved ('1'|'0'),
--       owner (the message's Redis id, or '')
-- #include _now.lua
-- #include _claim.lua
local phase, seq, lease_ms, grace_ms, job_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local rate, burst, reserved, owner = ARGV[6], ARGV[7], ARGV[8], ARGV[9] or ''
return claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], phase, seq, lease_ms, grace_ms, job_id, rate, burst, reserved, owner)
