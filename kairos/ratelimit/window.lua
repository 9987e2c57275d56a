-- Fixed window and sliding-window counter, atomic in Redis, one round trip per decision.
-- The arithmetic is limits' (and MemoryWindow's); the clock is the Redis server's, so
-- every gateway agrees on window boundaries.
-- KEYS[1] key base   ARGV[1] limit   ARGV[2] window (seconds)   ARGV[3] "fw" or "sw"
-- Returns {allowed (0/1), remaining, seconds until reset (string: Lua floats would be truncated)}
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

if ARGV[3] == 'fw' then
  -- The window starts at a key's first hit (as limits' fixed window).
  local count = redis.call('INCR', KEYS[1])
  local ttl = -1
  if count > 1 then
    ttl = redis.call('PTTL', KEYS[1])
  end
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], window * 1000)
    ttl = window * 1000
  end
  local allowed = 0
  if count <= limit then allowed = 1 end
  return {allowed, math.max(0, limit - count), tostring(ttl / 1000)}
end

local index = math.floor(now / window)
local current_key = KEYS[1] .. ':' .. index
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (index - 1)) or '0')
local current = tonumber(redis.call('GET', current_key) or '0')
local elapsed = (now / window) % 1
local previous_ttl = 0
if previous > 0 then previous_ttl = (1 - elapsed) * window end
local carried = previous * previous_ttl / window
local allowed = 0
if math.floor(carried + current) + 1 <= limit then
  current = redis.call('INCR', current_key)
  if current == 1 then redis.call('EXPIRE', current_key, 2 * window) end
  allowed = 1
end
local remaining = math.max(0, limit - math.floor(carried + current))
local reset = -1
if previous > 0 then reset = previous_ttl % (window / previous) end
if current > 0 then
  local r = ((1 - elapsed) * window + window) % window
  if reset < 0 or r < reset then reset = r end
end
if reset < 0 then reset = 0 end
return {allowed, remaining, tostring(reset)}
