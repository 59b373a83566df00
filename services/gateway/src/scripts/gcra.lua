-- GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): one
-- request of one subject, checked and counted atomically, whatever other gateways do.
-- KEYS[1] the subject's bucket (hash-tagged by subject, so Cluster-safe): the theoretical
-- arrival time (TAT, unix µs) of its next request at the steady pace.
-- ARGV[1] emission interval (µs between requests at the steady pace), ARGV[2] burst.
-- The clock is Redis's own, so gateways with skewed clocks agree.
-- Returns {allowed (0/1), remaining now, µs until the burst is whole again, µs to wait}.
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if allow_at > now then
  return {0, 0, tat - now, allow_at - now}
end
-- The key lives exactly as long as it matters: once the burst is whole it is gone.
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((now - allow_at) / interval), new_tat - now, 0}
