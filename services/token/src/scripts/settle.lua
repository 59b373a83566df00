-- Settle a reservation to the real usage, exactly once.
-- Every key is the user's and declared, hash-tagged `{user}`: one slot, Cluster-safe.
-- KEYS[1] the reservation, KEYS[2] the user's pending set, KEYS[3] today's quota counter,
-- KEYS[4] yesterday's (a reservation made before midnight is settled against its own day).
-- ARGV[1] actual tokens used (0 refunds the whole reservation).
-- Returns {settled (0/1), today's used after, the limit kept with the reservation or
-- -1 when unknown (already settled, or reserved before limits were kept)}.
local quota = redis.call('HGET', KEYS[1], 'quota')
local settled = 0
local limit = -1
if quota then
  limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or '-1')
  local reserved = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], KEYS[1])
  -- A counter of an older day no longer limits anyone: nothing to correct there.
  if quota == KEYS[3] or quota == KEYS[4] then
    redis.call('INCRBY', quota, tonumber(ARGV[1]) - reserved)
  end
  settled = 1
end
return {settled, tonumber(redis.call('GET', KEYS[3]) or '0'), limit}
