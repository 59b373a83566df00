-- After messages are committed to MySQL: bump the user's cache version (so a refill
-- that read MySQL before the commit is discarded), and append to the cached list if
-- there is one. A missing list stays missing: the next read refills it whole.
-- KEYS[1] list (newest first), KEYS[2] version. ARGV: ttl, size, messages oldest first.
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 3, #ARGV do
    redis.call('LPUSH', KEYS[1], ARGV[i])
  end
  redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 1
