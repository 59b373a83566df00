-- Reserve ARGV[1] tokens of today's quota, atomically, under a reservation id.
-- KEYS[1] quota counter of the day, KEYS[2] the reservation, KEYS[3] pending set.
-- ARGV: tokens, the user's daily limit, counter ttl (s), reservation deadline (unix ms).
-- The limit is kept with the reservation, so a settlement reports against the same one.
-- Returns {granted (0/1), used after}.
local tokens = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if redis.call('EXISTS', KEYS[2]) == 1 then
  -- A replayed reserve (client retry): already granted, nothing more to take.
  return {1, used}
end
if used + tokens > limit then
  return {0, used}
end
used = redis.call('INCRBY', KEYS[1], tokens)
if redis.call('TTL', KEYS[1]) == -1 then
  -- The expiry is set once, when the day's counter is created.
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
redis.call('HSET', KEYS[2], 'quota', KEYS[1], 'tokens', tokens, 'limit', limit)
redis.call('ZADD', KEYS[3], ARGV[4], KEYS[2])
return {1, used}
