-- Records saved messages in the cache: after their MySQL commit, or as the outbox
-- takes them (then ARGV[1] is the outbox entry, added to the user's stream first, in
-- the same step). For each (list, version) pair of keys (the user's recent messages,
-- and their conversation's): bump the version (so a refill that read MySQL before the
-- commit is discarded), and append to the list if there is one. A missing list stays
-- missing: the next read refills it whole. The conversation becomes the user's latest,
-- what a chat naming none goes to while MySQL cannot say.
-- A save already queued under its request id (a retry) changes nothing: returns 0.
-- KEYS: outbox stream, its request ids, latest, list, version, list, version...
-- ARGV: outbox entry or '', request id or '', ttl, size, conversation id or '',
--       messages oldest first.
local ttl, size = ARGV[3], tonumber(ARGV[4])
if ARGV[1] ~= '' then
  if ARGV[2] ~= '' and redis.call('SADD', KEYS[2], ARGV[2]) == 0 then
    return 0
  end
  redis.call('XADD', KEYS[1], '*', 'save', ARGV[1])
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[3], ARGV[5], 'EX', ttl)
end
for k = 4, #KEYS, 2 do
  redis.call('INCR', KEYS[k + 1])
  redis.call('EXPIRE', KEYS[k + 1], ttl)
  if redis.call('EXISTS', KEYS[k]) == 1 then
    for i = 6, #ARGV do
      redis.call('LPUSH', KEYS[k], ARGV[i])
    end
    redis.call('LTRIM', KEYS[k], 0, size - 1)
    redis.call('EXPIRE', KEYS[k], ttl)
  end
end
return 1
