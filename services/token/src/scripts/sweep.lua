-- Refund reservations nobody settled before their deadline (a crashed gateway).
-- KEYS[1] pending set. ARGV: now (unix ms), batch size. Returns how many were refunded.
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local refunded = 0
for _, reservation in ipairs(expired) do
  local quota = redis.call('HGET', reservation, 'quota')
  if quota then
    redis.call('INCRBY', quota, -tonumber(redis.call('HGET', reservation, 'tokens')))
    redis.call('DEL', reservation)
    refunded = refunded + 1
  end
  redis.call('ZREM', KEYS[1], reservation)
end
return refunded
