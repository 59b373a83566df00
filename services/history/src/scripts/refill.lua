-- Replace the cached list with what was read from MySQL, unless a save or a delete
-- happened since the read began (the version moved, or is gone): then the read may be
-- stale and is dropped.
-- KEYS[1] list, KEYS[2] version. ARGV: version seen before the read, ttl, messages newest first.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if #ARGV > 2 then
  redis.call('RPUSH', KEYS[1], unpack(ARGV, 3))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
