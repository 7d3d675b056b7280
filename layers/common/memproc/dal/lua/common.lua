-- Helpers every part of the library shares (one chunk with the generated key builders above).

local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end

-- Days since the epoch to YYYY-MM-DD (Howard Hinnant's civil_from_days).
local function ymd(epoch)
  local z = math.floor(epoch / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02d', y, m, d)
end

local STATS_TTL = 90 * 86400

-- Add counters to today's global and per-vectorstore daily stats.
local function bump(vs, now, counters)
  local day = ymd(now)
  for _, key in ipairs({STATS_PREFIX .. day, k.daily_stats(vs, day)}) do
    for field, by in pairs(counters) do
      if by ~= 0 then redis.call('HINCRBY', key, field, by) end
    end
    redis.call('EXPIRE', key, STATS_TTL)
  end
end

-- Put an item (back) in the queue, eligible at `due`.
local function enqueue_at(vs, id, due)
  redis.call('ZADD', QUEUE, due, k.raw(vs, id))
  redis.call('ZADD', k.pending(vs), due, id)
  redis.call('ZADD', READY, 'LT', due, vs)
end

-- A session's submissions are processed one at a time, in submission order: each waits in its
-- session queue, and only the first is eligible. The others are "parked": queued, counted in
-- RAW_MEMORY_QUEUE and the vectorstore's pending set, but at score +inf, so no claim takes them.
local PARKED = 1 / 0  -- +inf (the math library is not available while a library loads)

-- Add an item to its session queue; true when it must wait behind an earlier submission.
local function line_up(vs, id, sid, at)
  redis.call('ZADD', k.session_queue(vs, sid), at, id)
  redis.call('HSET', k.queued_sessions(vs), id, sid)
  return redis.call('ZRANGE', k.session_queue(vs, sid), 0, 0)[1] ~= id
end

local function park(vs, id)
  redis.call('ZADD', QUEUE, PARKED, k.raw(vs, id))
  redis.call('ZADD', k.pending(vs), PARKED, id)
end

-- Take an item out of its session queue; returns the session id (nil: it was in none).
local function drop_from_line(vs, id, sid)
  sid = sid or redis.call('HGET', k.queued_sessions(vs), id)
  redis.call('HDEL', k.queued_sessions(vs), id)
  if sid then redis.call('ZREM', k.session_queue(vs, sid), id) end
  return sid
end

-- The item is done (processed, dead or lost): the next one of its session becomes eligible, at
-- the time it would have been (its retry time, else when it was submitted).
local function leave_line(vs, id, sid)
  sid = drop_from_line(vs, id, sid)
  if not sid then return end
  local nxt = redis.call('ZRANGE', k.session_queue(vs, sid), 0, 0)[1]
  if not nxt or tonumber(redis.call('ZSCORE', k.pending(vs), nxt) or '0') ~= PARKED then return end
  local h = redis.call('HMGET', k.raw(vs, nxt), 'status', 'next_attempt_at', 'created_at')
  if h[1] == 'queued' then enqueue_at(vs, nxt, tonumber(h[2] or h[3]) or now_s()) end
end

local function release(vs, id)
  redis.call('ZREM', INFLIGHT, k.raw(vs, id))
  redis.call('ZREM', k.inflight(vs), id)
end

-- Dead-letter an item (a move, never a drop): terminal until redriven.
local function bury(vs, id, now, err)
  local key = k.raw(vs, id)
  redis.call('HSET', key, 'status', 'error', 'last_error', err, 'dead_at', string.format('%.6f', now))
  redis.call('HDEL', key, 'lease_deadline', 'next_attempt_at')
  redis.call('ZADD', DEAD, now, key)
  redis.call('ZADD', k.dead(vs), now, id)
  bump(vs, now, {error_count = 1, dead_count = 1})
  redis.call('HINCRBY', STATUS, 'error_count', 1)
  leave_line(vs, id, redis.call('HGET', key, 'session_id'))
end

-- When a processed transcript expires: retention counts from submission, or from the last
-- redrive (a redrive is a resubmission, so a late one is not deleted the moment it is processed).
local function retained_until(created_at, redriven_at, retention)
  return math.floor(math.max(tonumber(created_at) or 0, tonumber(redriven_at) or 0) + retention)
end

-- Is this worker still the owner of the item?  Its token must be the item's current fencing
-- token, which every claim increments and nothing ever resets.  Returns the raw hash fields.
local function fenced(vs, id, token)
  local h = redis.call('HMGET', k.raw(vs, id), 'status', 'lease_token', 'session_id',
    'created_at', 'dedupe_digest', 'processing_attempts', 'redriven_at')
  if h[1] ~= 'processing' or h[2] ~= token then return nil end
  return h
end

local function contains(list, value)
  for _, v in ipairs(list) do if v == value then return true end end
  return false
end

local function as_list(v)
  if type(v) ~= 'table' then return {} end
  return v
end

local function without(list, value)
  local out = {}
  for _, v in ipairs(as_list(list)) do if v ~= value then out[#out + 1] = v end end
  return out
end

-- Decoded JSON object text, or {} for anything else (absent, invalid, not an object).
local function json_object(text)
  if type(text) ~= 'string' then return {} end
  local ok, v = pcall(cjson.decode, text)
  if ok and type(v) == 'table' then return v end
  return {}
end

local function json_list(text)
  if not text or text == '' then return {} end
  local ok, v = pcall(cjson.decode, text)
  if not ok then return {} end
  return as_list(v)
end

-- Is the raw memory in any queue, in-flight or dead set (per-vectorstore or global)?
local function queued_anywhere(vs, id)
  local key = k.raw(vs, id)
  return redis.call('ZSCORE', k.pending(vs), id) or redis.call('ZSCORE', k.inflight(vs), id)
    or redis.call('ZSCORE', k.dead(vs), id) or redis.call('ZSCORE', QUEUE, key)
    or redis.call('ZSCORE', INFLIGHT, key) or redis.call('ZSCORE', DEAD, key)
end

-- Take a raw memory out of every queue set; true when it was in one.
local function dequeue(vs, id)
  local key = k.raw(vs, id)
  local n = redis.call('ZREM', QUEUE, key) + redis.call('ZREM', INFLIGHT, key) + redis.call('ZREM', DEAD, key)
    + redis.call('ZREM', k.pending(vs), id) + redis.call('ZREM', k.inflight(vs), id)
    + redis.call('ZREM', k.dead(vs), id)
  return n > 0
end

-- Delete one raw memory with its dedupe key and index entries.  `counts` accumulates what went.
-- Returns the raw hash's memory ids (JSON-decoded) so callers can follow them.
local function purge_raw(vs, id, sid, counts)
  local key = k.raw(vs, id)
  local h = redis.call('HMGET', key, 'session_id', 'dedupe_digest', 'memory_ids')
  if h[2] then
    local dk = k.dedupe(vs, h[2])
    if redis.call('GET', dk) == id then
      redis.call('DEL', dk)
      counts.dedupe_keys = counts.dedupe_keys + 1
    end
  end
  if dequeue(vs, id) then counts.queue_entries = counts.queue_entries + 1 end
  counts.raw_memories = counts.raw_memories + redis.call('DEL', key)
  redis.call('ZREM', k.raw_index(vs), id)
  local owner = h[1] or sid
  if owner then redis.call('ZREM', k.session_raws(vs, owner), id) end
  -- Only erasure purges unfinished work, and it erases the whole session: the line need not move.
  drop_from_line(vs, id, owner)
  return json_list(h[3]), h[1]
end
