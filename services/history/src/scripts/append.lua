-- After messages are committed to MySQL, for each (list, version) pair of keys (the
-- user's recent messages, and their conversation's): bump the version (so a refill
-- that read MySQL before the commit is discarded), and append to the list if there is
-- one. A missing list stays missing: the next read refills it whole.
-- KEYS: list, version, list, version... ARGV: ttl, size, messages oldest first.
for k = 1, #KEYS, 2 do
  redis.call('INCR', KEYS[k + 1])
  redis.call('EXPIRE', KEYS[k + 1], ARGV[1])
  if redis.call('EXISTS', KEYS[k]) == 1 then
    for i = 3, #ARGV do
      redis.call('LPUSH', KEYS[k], ARGV[i])
    end
    redis.call('LTRIM', KEYS[k], 0, tonumber(ARGV[2]) - 1)
    redis.call('EXPIRE', KEYS[k], ARGV[1])
  end
end
return 1
