-- Refund one user's reservations nobody settled before their deadline (a crashed gateway,
-- or a settlement still on its way: a gateway retrying, the token service's journal).
-- Every key is the user's and declared, hash-tagged `{user}`: one slot, Cluster-safe.
-- KEYS[1] the user's pending set, KEYS[2] today's quota counter, KEYS[3] yesterday's,
-- KEYS[4..] the reservations the caller found past their deadline (each checked again here:
-- a settlement or an extension may have come meanwhile).
-- ARGV[1] now (unix ms), ARGV[2] how long (s) a refunded reservation's tombstone lives.
-- A refunded reservation stays as a tombstone (`state` swept, its day and tokens kept),
-- so a settlement arriving later still charges its usage to that day, once.
-- Returns {refunded, the earliest deadline still pending or -1 when none}.
local now = tonumber(ARGV[1])
local refunded = 0
for i = 4, #KEYS do
  local reservation = KEYS[i]
  local deadline = redis.call('ZSCORE', KEYS[1], reservation)
  if deadline and tonumber(deadline) <= now then
    local fields = redis.call('HMGET', reservation, 'quota', 'tokens', 'state')
    local quota = fields[1]
    if quota and fields[3] ~= 'swept' then
      if quota == KEYS[2] or quota == KEYS[3] then
        redis.call('INCRBY', quota, -tonumber(fields[2]))
      end
      redis.call('HSET', reservation, 'state', 'swept')
      redis.call('EXPIRE', reservation, ARGV[2])
      refunded = refunded + 1
    end
    redis.call('ZREM', KEYS[1], reservation)
  end
end
local earliest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #earliest == 0 then
  return {refunded, -1}
end
return {refunded, tonumber(earliest[2])}
