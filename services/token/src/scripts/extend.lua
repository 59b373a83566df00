-- Move an open reservation's deadline, so the sweeper leaves a long call alone.
-- Both keys are the user's, hash-tagged `{user}`: one slot, Cluster-safe.
-- KEYS[1] the reservation, KEYS[2] the user's pending set; ARGV[1] the new deadline (unix ms).
-- Returns 1 when extended, 0 when the reservation is no longer open (settled or swept).
-- The user's place on `reservations:due` is left as it is: earlier than needed, the
-- sweeper visits, finds nothing due and lists the user again at the earliest deadline.
if redis.call('ZSCORE', KEYS[2], KEYS[1]) == false then
  return 0
end
redis.call('ZADD', KEYS[2], 'XX', ARGV[1], KEYS[1])
return 1
