-- The user's latest conversation and its newest cached messages, in one round trip.
-- KEYS[1] the pointer `history:{user}:latest`. ARGV[1] the conversation lists' key up to
-- the conversation id (`history:{user}#`), ARGV[2] how many messages.
-- The list's key comes from the pointer, so it cannot be declared; it carries the same
-- `{user}` hash tag as KEYS[1], so it is in the same slot and a Redis Cluster serves it.
-- Returns false without a pointer, else {conversation id, the messages (none on a miss)}.
local id = redis.call('GET', KEYS[1])
if not id then
  return false
end
return {id, redis.call('LRANGE', ARGV[1] .. id, 0, tonumber(ARGV[2]) - 1)}
