-- Reserve ARGV[1] tokens of today's quota, atomically, under a reservation id.
-- Every key is the user's and declared, hash-tagged `{user}`: one slot, Cluster-safe.
-- KEYS[1] quota counter of the day, KEYS[2] the reservation, KEYS[3] the user's pending set.
-- ARGV: tokens, the user's daily limit, counter ttl (s), reservation deadline (unix ms),
-- the model, the prompt's part of the tokens by our tokenizer (for calibration).
-- The limit is kept with the reservation, so a settlement reports against the same one.
-- Returns {granted (0/1), used after, tokens held by this call}. The caller lists the
-- user among those the sweeper visits in the same round trip, after this script.
local tokens = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if redis.call('EXISTS', KEYS[2]) == 1 then
  -- A replayed reserve (client retry): already granted, nothing more to take. Or a
  -- reserve arriving after its own settlement (its answer was lost and the caller
  -- settled it to 0), or after the sweeper: it takes nothing either.
  return {1, used, 0}
end
if used + tokens > limit then
  return {0, used, 0}
end
used = redis.call('INCRBY', KEYS[1], tokens)
if redis.call('TTL', KEYS[1]) == -1 then
  -- The expiry is set once, when the day's counter is created.
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
redis.call('HSET', KEYS[2], 'quota', KEYS[1], 'tokens', tokens, 'limit', limit,
  'model', ARGV[5], 'prompt', ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[4], KEYS[2])
return {1, used, tokens}
