-- The version a refill must still find when it writes: created (a random number) when
-- missing, so that a list deleted meanwhile, its version with it, is never refilled
-- from a read made before the delete.
-- KEYS[1] version. ARGV[1] a fresh random number, ARGV[2] ttl.
local current = redis.call('GET', KEYS[1])
if current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
