-- One sample of a model's calibration: the provider's prompt tokens over our count.
-- KEYS[1] the model's calibration (a hash; alone in its script, so Cluster-safe).
-- ARGV: the observed ratio, the weight of a lower sample, the cap, the hash's ttl (s).
-- The ratio rises to a higher sample at once and sinks towards lower ones slowly: it
-- tracks the most the provider has recently counted, so reservations rarely fall short.
-- Returns the ratio now stored.
local observed = tonumber(ARGV[1])
local weight = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local old = tonumber(redis.call('HGET', KEYS[1], 'ratio') or '0')
local ratio = observed
if old > 0 and observed < old then
  ratio = old + (observed - old) * weight
end
ratio = string.format('%.4f', math.max(1, math.min(cap, ratio)))
redis.call('HSET', KEYS[1], 'ratio', ratio)
redis.call('HINCRBY', KEYS[1], 'samples', 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
return ratio
