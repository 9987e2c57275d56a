-- Token bucket, atomic in Redis. One hash per key: tokens (float) and ts (ms).
-- KEYS[1] bucket key
-- ARGV[1] capacity   ARGV[2] initial tokens   ARGV[3] refill rate (tokens per second)
-- Returns {allowed (0/1), tokens left (floor), ms until the next token}
-- Time comes from the Redis server, so every gateway agrees on it.
local capacity = tonumber(ARGV[1])
local initial = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = initial
  ts = now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate / 1000)
end

local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end

local wait_ms = 0
if tokens < capacity then
  local frac = tokens - math.floor(tokens)
  wait_ms = math.ceil((1 - frac) * 1000 / rate)
end

redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
-- Once full again the state carries no information: let it expire then.
local ttl = math.ceil((capacity - tokens) * 1000 / rate) + 1000
redis.call('PEXPIRE', KEYS[1], ttl)
return {allowed, math.floor(tokens), wait_ms}
