-- Count one failed login in the current window, which starts at the first failure.
-- KEYS[1] the counter (of an account or of an address). ARGV[1] window (s).
-- Returns the failures counted in the window so far.
local failures = redis.call('INCR', KEYS[1])
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return failures
