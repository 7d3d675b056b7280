#!lua name=memproc___VERSION__
-- The queue protocol and every multi-key write, as one Redis function library.
-- Function names carry the library's content hash (__VERSION__), so a deploy with changed Lua
-- loads its own library and never calls an older one. All times come from Redis' TIME.

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
local QUEUE, INFLIGHT, DEAD, READY = 'RAW_MEMORY_QUEUE', '{RAW_MEMORY_QUEUE}:inflight',
  '{RAW_MEMORY_QUEUE}:dead', '{RAW_MEMORY_QUEUE}:ready'
local STATUS = 'background_processor:status'

local function tag(vs) return '{' .. vs .. '}' end
local function rawkey(vs, id) return tag(vs) .. ':raw_memory:' .. id end
local function split(key) return string.match(key, '^{(.-)}:raw_memory:(.+)$') end

-- Add counters to today's global and per-vectorstore daily stats.
local function bump(vs, now, counters)
  local day = ymd(now)
  for _, key in ipairs({'processing_stats:' .. day, tag(vs) .. ':processing_stats:' .. day}) do
    for field, by in pairs(counters) do
      if by ~= 0 then redis.call('HINCRBY', key, field, by) end
    end
    redis.call('EXPIRE', key, STATS_TTL)
  end
end

-- Put an item (back) in the queue, eligible at `due`.
local function enqueue_at(vs, id, due)
  redis.call('ZADD', QUEUE, due, rawkey(vs, id))
  redis.call('ZADD', tag(vs) .. ':pending', due, id)
  redis.call('ZADD', READY, 'LT', due, vs)
end

local function release(vs, id)
  redis.call('ZREM', INFLIGHT, rawkey(vs, id))
  redis.call('ZREM', tag(vs) .. ':inflight', id)
end

local function bury(vs, id, now, err)
  local key = rawkey(vs, id)
  redis.call('HSET', key, 'status', 'error', 'last_error', err, 'dead_at', string.format('%.6f', now))
  redis.call('HDEL', key, 'lease_deadline', 'next_attempt_at')
  redis.call('ZADD', DEAD, now, key)
  redis.call('ZADD', tag(vs) .. ':dead', now, id)
  bump(vs, now, {error_count = 1, dead_count = 1})
  redis.call('HINCRBY', STATUS, 'error_count', 1)
end

-- store_raw: dedupe, admission check, raw hash, queues, indexes and position in one call.
-- KEYS: raw hash, dedupe key.  ARGV: vs, raw id, session id, data, encoding, metadata json,
-- max queue, max pending per vs, dedupe digest, session length.
redis.register_function('enqueue___VERSION__', function(keys, argv)
  local now = now_s()
  local vs, id, sid = argv[1], argv[2], argv[3]
  local t = tag(vs)
  -- The processor's measured rate and whether it is draining now, for the time estimate.
  local p = redis.call('HMGET', STATUS, 'rate_per_second', 'last_heartbeat', 'interval_seconds')
  local rate = p[1] or ''
  local idle = p[2] and string.format('%.3f', now - tonumber(p[2])) or ''
  local interval = p[3] or ''
  local existing = redis.call('GET', keys[2])
  if existing then
    local e = redis.call('HMGET', rawkey(vs, existing), 'status', 'created_at')
    if e[1] then
      local pos = 0
      if e[1] == 'queued' then
        local rank = redis.call('ZRANK', t .. ':pending', existing)
        if rank then pos = rank + 1 end
      end
      return {'duplicate', existing, e[2], pos, redis.call('ZCARD', QUEUE), rate, e[1],
              redis.call('ZCARD', READY), idle, interval}
    end
  end
  local qsize = redis.call('ZCARD', QUEUE)
  if qsize >= tonumber(argv[7]) then return {'queue_full', '', '', 0, qsize, rate, '', 0, idle, interval} end
  local pending = redis.call('ZCARD', t .. ':pending')
  if pending >= tonumber(argv[8]) then
    return {'vectorstore_full', '', '', 0, qsize, rate, '', 0, idle, interval}
  end
  local created = string.format('%.6f', now)
  redis.call('HSET', keys[1], 'raw_memory_id', id, 'session_id', sid, 'session_data', argv[4],
    'session_data_encoding', argv[5], 'metadata', argv[6], 'vectorstore_name', vs,
    'created_at', created, 'status', 'queued', 'processing_attempts', 0,
    'dedupe_digest', argv[9], 'session_length', argv[10])
  enqueue_at(vs, id, now)
  redis.call('SET', keys[2], id)
  redis.call('ZADD', t .. ':raw_index', now, id)
  redis.call('ZADD', t .. ':session_raws:' .. sid, now, id)
  redis.call('ZADD', 'memproc:vectorstores', now, vs)
  redis.call('HINCRBY', t .. ':counters', 'received', 1)
  return {'queued', id, created, pending + 1, qsize + 1, rate, 'queued', redis.call('ZCARD', READY),
          idle, interval}
end)

-- Claim up to N items round-robin across vectorstores, after re-queueing expired leases.
-- The attempt is counted at claim; the attempt number is the lease token that fences the
-- worker's later writes. Claiming is also the processor's heartbeat.
-- ARGV: max items, lease seconds, max attempts, max leases to reap.
redis.register_function('claim___VERSION__', function(keys, argv)
  local now = now_s()
  local n, lease, max_attempts = tonumber(argv[1]), tonumber(argv[2]), tonumber(argv[3])
  redis.call('HSET', STATUS, 'last_heartbeat', string.format('%.6f', now))
  local reaped, buried = 0, 0
  for _, key in ipairs(redis.call('ZRANGE', INFLIGHT, '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(argv[4]))) do
    local vs, id = split(key)
    if vs then
      release(vs, id)
      local h = redis.call('HMGET', key, 'status', 'processing_attempts')
      if h[1] == 'processing' then
        if tonumber(h[2] or '0') >= max_attempts then
          bury(vs, id, now, 'lease expired on the last attempt (the worker died or timed out)')
          buried = buried + 1
        else
          redis.call('HSET', key, 'status', 'queued', 'last_error', 'lease expired (the worker died or timed out)')
          redis.call('HDEL', key, 'lease_deadline')
          enqueue_at(vs, id, now)
          reaped = reaped + 1
        end
      end
    else
      redis.call('ZREM', INFLIGHT, key)
    end
  end

  local claimed = {}
  local vss = redis.call('ZRANGE', READY, '-inf', now, 'BYSCORE', 'LIMIT', 0, n)
  local open, served = {}, {}
  for i = 1, #vss do open[i] = true end
  local progress = true
  while #claimed < n and progress do
    progress = false
    for i, vs in ipairs(vss) do
      if #claimed >= n then break end
      if open[i] then
        local head = redis.call('ZRANGE', tag(vs) .. ':pending', 0, 0, 'WITHSCORES')
        if #head == 0 or tonumber(head[2]) > now then
          open[i] = false
        else
          local id = head[1]
          local key = rawkey(vs, id)
          redis.call('ZREM', tag(vs) .. ':pending', id)
          redis.call('ZREM', QUEUE, key)
          if redis.call('EXISTS', key) == 1 then
            local attempt = redis.call('HINCRBY', key, 'processing_attempts', 1)
            local deadline = now + lease
            redis.call('HSET', key, 'status', 'processing', 'claimed_at', string.format('%.6f', now),
              'lease_deadline', string.format('%.6f', deadline))
            redis.call('HDEL', key, 'next_attempt_at')
            redis.call('ZADD', INFLIGHT, deadline, key)
            redis.call('ZADD', tag(vs) .. ':inflight', deadline, id)
            claimed[#claimed + 1] = {vs, id, attempt, redis.call('HGET', key, 'session_id')}
            served[i] = true
          end
          progress = true
        end
      end
    end
  end
  -- Next turns: served vectorstores go behind every one already waiting; idle ones wait for
  -- their next eligible item; empty ones leave.
  local back = 0
  for i, vs in ipairs(vss) do
    local head = redis.call('ZRANGE', tag(vs) .. ':pending', 0, 0, 'WITHSCORES')
    if #head == 0 then
      redis.call('ZREM', READY, vs)
    else
      local due = tonumber(head[2])
      if served[i] then
        back = back + 1
        due = math.max(due, now + back * 1e-6)
      end
      redis.call('ZADD', READY, due, vs)
    end
  end
  return {claimed, reaped, buried}
end)

-- Is this worker still the owner of the item?  Returns the raw hash fields or nil.
local function fenced(vs, id, token)
  local h = redis.call('HMGET', rawkey(vs, id), 'status', 'processing_attempts', 'session_id',
    'created_at', 'dedupe_digest')
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

-- Commit one processed item atomically: memories (merge near-duplicates), summary,
-- cross-references, indexes, raw status, stats and ack. A stale token writes nothing.
-- ARGV: vs, raw id, token, payload json, then one FP32 vector blob per memory.
redis.register_function('commit___VERSION__', function(keys, argv)
  local vs, id, token = argv[1], argv[2], argv[3]
  local h = fenced(vs, id, token)
  if not h then return {'stale'} end
  local now = now_s()
  local p = cjson.decode(argv[4])
  local t = tag(vs)
  local sid = h[3]

  local cfg = redis.call('HMGET', t .. ':config', 'embedding_model', 'dimensions')
  if #p.memories > 0 then
    if cfg[2] and (tonumber(cfg[2]) ~= tonumber(p.dimensions) or cfg[1] ~= p.embedding_model) then
      return {'mismatch', cfg[1], cfg[2]}
    end
    if not cfg[2] then
      redis.call('HSET', t .. ':config', 'embedding_model', p.embedding_model, 'dimensions', p.dimensions,
        'created_at', string.format('%.6f', now))
    end
  end

  local memids, created, merged = {}, 0, 0
  for i, m in ipairs(p.memories) do
    local blob = argv[4 + i]
    local target = nil
    if redis.call('VCARD', vs) > 0 then
      local nn = redis.call('VSIM', vs, 'FP32', blob, 'COUNT', 1, 'WITHSCORES')
      if nn[1] and (2 * tonumber(nn[2]) - 1) >= tonumber(p.threshold) then target = nn[1] end
    end
    if target then
      local attrs = cjson.decode(redis.call('VGETATTR', vs, target) or '{}')
      attrs.source_sessions = as_list(attrs.source_sessions)
      attrs.source_raw_ids = as_list(attrs.source_raw_ids)
      if not contains(attrs.source_sessions, sid) then table.insert(attrs.source_sessions, sid) end
      if not contains(attrs.source_raw_ids, id) then table.insert(attrs.source_raw_ids, id) end
      attrs.updated_at = now
      attrs.merge_count = (tonumber(attrs.merge_count) or 0) + 1
      redis.call('VSETATTR', vs, target, cjson.encode(attrs))
      if not contains(memids, target) then memids[#memids + 1] = target end
      merged = merged + 1
    else
      local mid = id .. '-' .. (i - 1)
      local attrs = {text = m.text, memory_type = m.memory_type, confidence = m.confidence,
        session_id = sid, raw_memory_id = id, created_at = now, updated_at = now,
        source_sessions = {sid}, source_raw_ids = {id}, merge_count = 0}
      if #m.tags > 0 then attrs.tags = m.tags end
      redis.call('VADD', vs, 'FP32', blob, mid, 'SETATTR', cjson.encode(attrs))
      redis.call('ZADD', t .. ':memory_index', now, mid)
      memids[#memids + 1] = mid
      created = created + 1
    end
  end

  local skey = t .. ':session_summary:' .. sid
  local prev = redis.call('GET', skey)
  local s = prev and cjson.decode(prev) or {}
  local all = as_list(s.memory_ids)
  for _, mid in ipairs(memids) do if not contains(all, mid) then all[#all + 1] = mid end end
  local raws = as_list(s.raw_memory_ids)
  if not contains(raws, id) then raws[#raws + 1] = id end
  s.session_id = sid
  s.vectorstore_name = vs
  if p.summary ~= '' then s.summary = p.summary end
  if #p.topics > 0 then s.topics = p.topics end
  s.memory_ids = all
  s.memory_count = #all
  s.raw_memory_ids = raws
  s.created_at = s.created_at or now
  s.updated_at = now
  if tonumber(p.processed_length) >= (tonumber(s.processed_length) or 0) then
    s.processed_length = tonumber(p.processed_length)
    s.processed_sha256 = p.processed_sha256
  end
  s.tokens_in = (tonumber(s.tokens_in) or 0) + p.tokens_in
  s.tokens_out = (tonumber(s.tokens_out) or 0) + p.tokens_out
  local sttl = tonumber(p.session_retention)
  redis.call('SET', skey, cjson.encode(s), 'EX', sttl)
  local mkey = t .. ':session_memories:' .. sid
  if #memids > 0 then redis.call('SADD', mkey, unpack(memids)) end
  redis.call('EXPIRE', mkey, sttl)
  redis.call('EXPIRE', t .. ':session_raws:' .. sid, sttl)
  redis.call('ZADD', t .. ':session_index', now, sid)

  local key = rawkey(vs, id)
  redis.call('HSET', key, 'status', 'processed', 'processed_at', string.format('%.6f', now),
    'memories_created', created, 'memories_merged', merged, 'memory_ids', cjson.encode(memids),
    'tokens_in', p.tokens_in, 'tokens_out', p.tokens_out, 'processing_ms', p.processing_ms,
    'extraction_mode', p.mode)
  redis.call('HDEL', key, 'lease_deadline')
  local expires = math.floor(tonumber(h[4]) + tonumber(p.raw_retention))
  redis.call('EXPIREAT', key, expires)
  if h[5] then redis.call('EXPIREAT', t .. ':dedupe:' .. h[5], expires) end
  release(vs, id)
  bump(vs, now, {processed_count = 1, memories_created = created, memories_merged = merged,
    tokens_in = p.tokens_in, tokens_out = p.tokens_out, processing_ms = p.processing_ms})
  local stamp = string.format('%.6f', now)
  for _, k in ipairs({'processing_stats:' .. ymd(now), t .. ':processing_stats:' .. ymd(now)}) do
    redis.call('HSET', k, 'last_processed_at', stamp)
  end
  redis.call('HINCRBY', STATUS, 'processed_count', 1)
  redis.call('HSET', STATUS, 'last_processed_at', stamp)
  redis.call('HINCRBY', t .. ':counters', 'processed', 1)
  return {'ok', created, merged, memids}
end)

-- A failed attempt: back to the queue with backoff, or to the dead set (a move, never a drop).
-- ARGV: vs, raw id, token, error text, retryable (1/0), max attempts, base s, max s,
-- jitter in [0,1), minimum delay s (e.g. a 429's Retry-After).
redis.register_function('fail___VERSION__', function(keys, argv)
  local vs, id, token = argv[1], argv[2], argv[3]
  local h = fenced(vs, id, token)
  if not h then return {'stale'} end
  local now = now_s()
  release(vs, id)
  local attempts = tonumber(h[2])
  local err = argv[4]
  if argv[5] == '1' and attempts < tonumber(argv[6]) then
    local delay = math.min(tonumber(argv[8]), tonumber(argv[7]) * 2 ^ (attempts - 1))
    delay = delay * (0.5 + 0.5 * tonumber(argv[9]))
    delay = math.max(delay, tonumber(argv[10]))
    local due = now + delay
    redis.call('HSET', rawkey(vs, id), 'status', 'queued', 'last_error', err,
      'next_attempt_at', string.format('%.6f', due))
    redis.call('HDEL', rawkey(vs, id), 'lease_deadline')
    enqueue_at(vs, id, due)
    bump(vs, now, {error_count = 1})
    redis.call('HINCRBY', STATUS, 'error_count', 1)
    return {'retry', string.format('%.3f', delay)}
  end
  bury(vs, id, now, err)
  return {'dead', '0'}
end)

-- Redrive a dead item: back to the queue with a fresh attempt budget.  ARGV: vs, raw id.
redis.register_function('redrive___VERSION__', function(keys, argv)
  local vs, id = argv[1], argv[2]
  local key = rawkey(vs, id)
  if not redis.call('ZSCORE', tag(vs) .. ':dead', id) then
    return {'not_dead', redis.call('HGET', key, 'status') or ''}
  end
  local now = now_s()
  redis.call('ZREM', DEAD, key)
  redis.call('ZREM', tag(vs) .. ':dead', id)
  redis.call('HSET', key, 'status', 'queued', 'processing_attempts', 0)
  redis.call('HDEL', key, 'dead_at')
  redis.call('HINCRBY', key, 'redrive_count', 1)
  enqueue_at(vs, id, now)
  return {'queued', redis.call('ZCARD', tag(vs) .. ':pending')}
end)

-- The processor's heartbeat, stamped with server time.  ARGV: interval s, version, measured
-- rate/s (empty: none), weight of the new measurement in [0,1], starting (1/empty).
redis.register_function('heartbeat___VERSION__', function(keys, argv)
  local now = string.format('%.6f', now_s())
  redis.call('HSET', STATUS, 'last_heartbeat', now, 'interval_seconds', argv[1], 'version', argv[2])
  if argv[3] ~= '' then
    -- Blend with the previous measurement so one small drain cannot swing the estimate.
    local rate, w = tonumber(argv[3]), tonumber(argv[4])
    local prev = tonumber(redis.call('HGET', STATUS, 'rate_per_second') or '')
    if prev then rate = prev * (1 - w) + rate * w end
    redis.call('HSET', STATUS, 'rate_per_second', string.format('%.4f', rate))
  end
  if argv[5] ~= '' then redis.call('HSET', STATUS, 'start_time', now) end
  return now
end)

-- Everything processing_status shows, read at one server time.  ARGV: vs.
redis.register_function{function_name = 'status___VERSION__', flags = {'no-writes'},
  callback = function(keys, argv)
  local now = now_s()
  local t = tag(argv[1])
  local oldest = redis.call('ZRANGE', t .. ':pending', 0, 0, 'WITHSCORES')
  local today = redis.call('HMGET', 'processing_stats:' .. ymd(now), 'processed_count', 'last_processed_at')
  return {string.format('%.6f', now), redis.call('ZCARD', QUEUE), redis.call('HGETALL', STATUS),
    today[1] or '0', today[2] or '', redis.call('ZCARD', t .. ':pending'),
    redis.call('ZCARD', t .. ':inflight'), redis.call('ZCARD', t .. ':dead'), oldest[2] or '',
    redis.call('ZCARD', INFLIGHT), redis.call('ZCARD', DEAD)}
end}
