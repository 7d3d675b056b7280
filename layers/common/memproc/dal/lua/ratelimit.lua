-- The shared LLM rate limiter: one sliding log of bookings per limited model, which every
-- processor books each of its LLM requests in before sending it. Exact for every window: in any
-- `window` seconds, (t - window, t], the bookings never exceed the request limit, nor their tokens
-- the token limit (tokens as estimated at booking, then corrected to what the answer used).
-- Bookings are made in time order: a request that cannot go now is booked at the first moment it
-- may (when enough older bookings have left the window), and its caller sleeps until then. So the
-- invariant holds by induction (every booking sees all earlier ones), waiting callers are served
-- first come first served, and nobody polls. Requests are also paced (GCRA, one per window /
-- limit, a tenth of the limit ahead at most): the limit is spread over the window rather than
-- spent in bursts (a provider may enforce a minute's limit over shorter periods, and a burst of
-- wake-ups delays its last requests), a request that came late may catch up, and a backlog still
-- gets the whole limit per window.
-- KEYS (one hash slot, so no cross-slot flag): the log (zset id -> booked time) and its tokens
-- (hash id -> tokens, plus RL_TOTAL, their sum).

local RL_TOTAL = '#total'
local RL_TAT = '#tat'  -- the pacing's theoretical arrival time
local RL_BATCH = 256
local RL_SLICES = 10  -- pacing lets a tenth of the limit go at once

-- Forget bookings that left every window still to come (booked at or before `before`).
local function rl_trim(log, held, before)
  while true do
    local old = redis.call('ZRANGE', log, '-inf', before, 'BYSCORE', 'LIMIT', 0, RL_BATCH)
    if #old == 0 then return end
    local freed = 0
    for _, n in ipairs(redis.call('HMGET', held, unpack(old))) do freed = freed + (tonumber(n) or 0) end
    redis.call('HDEL', held, unpack(old))
    redis.call('HINCRBY', held, RL_TOTAL, -freed)
    redis.call('ZREM', log, unpack(old))
  end
end

-- The earliest time >= `at` when `excess` tokens of the oldest bookings have left the window.
local function rl_tokens_free_at(log, held, excess, window, at)
  local rank = 0
  while excess > 0 do
    local batch = redis.call('ZRANGE', log, rank, rank + RL_BATCH - 1, 'WITHSCORES')
    if #batch == 0 then break end
    local ids = {}
    for i = 1, #batch, 2 do ids[#ids + 1] = batch[i] end
    for i, n in ipairs(redis.call('HMGET', held, unpack(ids))) do
      excess = excess - (tonumber(n) or 0)
      if excess <= 0 then return math.max(at, tonumber(batch[2 * i]) + window) end
    end
    rank = rank + RL_BATCH
  end
  -- The sum disagrees with the bookings (never by design): wait for them all to leave.
  local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  if #last > 0 then at = math.max(at, tonumber(last[2]) + window) end
  return at
end

-- Book one request: now, or at the first moment the limits allow, if that is within max wait.
-- ARGV: booking id, request limit (0: none), token limit (0: none), estimated tokens, window s,
-- max wait s.  Returns {1, wait s} (booked at now + wait), or {0, wait s}: not booked, since the
-- wait would be longer than max wait (the caller's time budget).  A request estimated above the
-- token limit is booked as the whole limit: it waits for an empty window instead of forever.
redis.register_function{function_name = 'ratelimit_reserve___VERSION__', callback = function(keys, argv)
  local log, held = keys[1], keys[2]
  local id = argv[1]
  local max_requests, max_tokens = tonumber(argv[2]), tonumber(argv[3])
  local cost, window, max_wait = tonumber(argv[4]), tonumber(argv[5]), tonumber(argv[6])
  local now = now_s()
  rl_trim(log, held, now - window)
  local at = now
  local last = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  if #last > 0 then at = math.max(at, tonumber(last[2])) end  -- bookings stay in time order
  local interval, tat = 0, nil
  if max_requests > 0 then
    interval = window / max_requests
    tat = tonumber(redis.call('HGET', held, RL_TAT) or '')
    local ahead = (math.ceil(max_requests / RL_SLICES) - 1) * interval
    if tat then at = math.max(at, tat - ahead) end
  end
  local n = redis.call('ZCARD', log)
  if max_requests > 0 and n >= max_requests then
    -- The booking max_requests places back must leave the window first.
    local e = redis.call('ZRANGE', log, n - max_requests, n - max_requests, 'WITHSCORES')
    at = math.max(at, tonumber(e[2]) + window)
  end
  if max_tokens > 0 then
    cost = math.min(cost, max_tokens)
    local excess = (tonumber(redis.call('HGET', held, RL_TOTAL)) or 0) + cost - max_tokens
    if excess > 0 then at = rl_tokens_free_at(log, held, excess, window, at) end
  end
  local wait = at - now
  if wait > max_wait then return {0, string.format('%.6f', wait)} end
  redis.call('ZADD', log, at, id)
  if interval > 0 then
    redis.call('HSET', held, RL_TAT, string.format('%.6f', math.max(tat or at, at) + interval))
  end
  redis.call('HSET', held, id, cost)
  redis.call('HINCRBY', held, RL_TOTAL, cost)
  -- Both keys outlive their last booking's window, so an idle limiter leaves nothing behind.
  local ttl = math.ceil(wait + window) + 1
  redis.call('EXPIRE', log, ttl)
  redis.call('EXPIRE', held, ttl)
  return {1, string.format('%.6f', wait)}
end}

-- Correct a booking to the tokens its answer used, or cancel it (a request never sent).
-- ARGV: booking id, tokens used (-1: cancel).  Returns 1, or 0 when the booking has already left
-- the window (nothing to correct).
redis.register_function{function_name = 'ratelimit_settle___VERSION__', callback = function(keys, argv)
  local log, held, id, used = keys[1], keys[2], argv[1], tonumber(argv[2])
  local booked = tonumber(redis.call('HGET', held, id) or '')
  if not booked then return 0 end
  if used < 0 then
    local at = redis.call('ZSCORE', log, id)
    redis.call('ZREM', log, id)
    redis.call('HDEL', held, id)
    redis.call('HINCRBY', held, RL_TOTAL, -booked)
    -- The latest booking gives its place in the pacing back too.
    if at and redis.call('HEXISTS', held, RL_TAT) == 1
        and #redis.call('ZRANGE', log, at, '+inf', 'BYSCORE', 'LIMIT', 0, 1) == 0 then
      redis.call('HSET', held, RL_TAT, at)
    end
  else
    redis.call('HSET', held, id, used)
    redis.call('HINCRBY', held, RL_TOTAL, used - booked)
  end
  return 1
end}
