-- Settle a reservation to the real usage, exactly once.
-- Every key is the user's and declared, hash-tagged `{user}`: one slot, Cluster-safe.
-- KEYS[1] the reservation, KEYS[2] the user's pending set, KEYS[3] today's quota counter,
-- KEYS[4] yesterday's (a reservation made before midnight is settled against its own day).
-- ARGV[1] actual tokens used (0 refunds the whole reservation), ARGV[2] how long (s) the
-- marker of an unknown reservation lives, ARGV[3] a counter's ttl (s).
--
-- The reservation is one of: open (held: `quota`, `tokens`, ...); swept (`state` swept:
-- the sweeper refunded it, and a settlement arriving late charges the usage in full);
-- settled (`state` settled and nothing else: a marker); or unknown. Settling an unknown
-- one leaves the marker, so that a reserve whose answer was lost, still on its way,
-- takes nothing when it lands after this settlement.
-- Returns {settled (0/1), today's used after, the limit kept with the reservation or
-- -1 when unknown, the reservation's model, its prompt estimate, 1 when it had been swept}.
local quota = redis.call('HGET', KEYS[1], 'quota')
if not quota then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('HSET', KEYS[1], 'state', 'settled')
    redis.call('EXPIRE', KEYS[1], ARGV[2])
  end
  return {0, tonumber(redis.call('GET', KEYS[3]) or '0'), -1, '', 0, 0}
end
local fields = redis.call('HMGET', KEYS[1], 'tokens', 'limit', 'model', 'prompt', 'state')
local reserved = tonumber(fields[1])
local limit = tonumber(fields[2] or '-1')
local swept = 0
local charge = tonumber(ARGV[1]) - reserved
if fields[5] == 'swept' then
  -- Refunded already: the usage is charged in full.
  swept = 1
  charge = tonumber(ARGV[1])
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
-- A counter of an older day no longer limits anyone: nothing to correct there.
if quota == KEYS[3] or quota == KEYS[4] then
  redis.call('INCRBY', quota, charge)
  if redis.call('TTL', quota) == -1 then
    redis.call('EXPIRE', quota, ARGV[3])
  end
end
return {1, tonumber(redis.call('GET', KEYS[3]) or '0'), limit, fields[3] or '',
  tonumber(fields[4] or '0'), swept}
