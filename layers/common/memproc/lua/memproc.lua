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
  -- A processed session's raw list expires with the session; a live submission keeps it alive.
  redis.call('PERSIST', t .. ':session_raws:' .. sid)
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

-- ---------------------------------------------------------------------------------------------
-- Retrieval, retention and erasure
-- ---------------------------------------------------------------------------------------------
-- Erasure runs here so it is atomic: a processor still holding a lease on an erased raw memory
-- is fenced out by `commit`/`fail` (the raw hash is gone, so they return 'stale' and write
-- nothing). Cleanup never deletes anything but processed raw memories and index entries whose
-- record is gone; queued, in-flight and dead items are only ever put back where they belong.

local VECTORSTORES = 'memproc:vectorstores'

local function without(list, value)
  local out = {}
  for _, v in ipairs(as_list(list)) do if v ~= value then out[#out + 1] = v end end
  return out
end

local function json_list(text)
  if not text or text == '' then return {} end
  local ok, v = pcall(cjson.decode, text)
  if not ok then return {} end
  return as_list(v)
end

-- Is the raw memory in any queue, in-flight or dead set (per-vectorstore or global)?
local function queued_anywhere(vs, id)
  local t, key = tag(vs), rawkey(vs, id)
  return redis.call('ZSCORE', t .. ':pending', id) or redis.call('ZSCORE', t .. ':inflight', id)
    or redis.call('ZSCORE', t .. ':dead', id) or redis.call('ZSCORE', QUEUE, key)
    or redis.call('ZSCORE', INFLIGHT, key) or redis.call('ZSCORE', DEAD, key)
end

-- Take a raw memory out of every queue set; true when it was in one.
local function dequeue(vs, id)
  local t, key = tag(vs), rawkey(vs, id)
  local n = redis.call('ZREM', QUEUE, key) + redis.call('ZREM', INFLIGHT, key) + redis.call('ZREM', DEAD, key)
    + redis.call('ZREM', t .. ':pending', id) + redis.call('ZREM', t .. ':inflight', id)
    + redis.call('ZREM', t .. ':dead', id)
  return n > 0
end

-- Delete one raw memory with its dedupe key and index entries.  `counts` accumulates what went.
-- Returns the raw hash's memory ids (JSON-decoded) so callers can follow them.
local function purge_raw(vs, id, sid, counts)
  local t, key = tag(vs), rawkey(vs, id)
  local h = redis.call('HMGET', key, 'session_id', 'dedupe_digest', 'memory_ids')
  if h[2] then
    local dk = t .. ':dedupe:' .. h[2]
    if redis.call('GET', dk) == id then
      redis.call('DEL', dk)
      counts.dedupe_keys = counts.dedupe_keys + 1
    end
  end
  if dequeue(vs, id) then counts.queue_entries = counts.queue_entries + 1 end
  counts.raw_memories = counts.raw_memories + redis.call('DEL', key)
  redis.call('ZREM', t .. ':raw_index', id)
  local owner = h[1] or sid
  if owner then redis.call('ZREM', t .. ':session_raws:' .. owner, id) end
  return json_list(h[3]), h[1]
end

-- Drop memory id `mid` from a session's cross-references (memory set and summary), keeping TTLs.
local function unlink_session_memory(vs, sid, mid)
  local t = tag(vs)
  redis.call('SREM', t .. ':session_memories:' .. sid, mid)
  local skey = t .. ':session_summary:' .. sid
  local text = redis.call('GET', skey)
  if not text then return end
  local s = cjson.decode(text)
  local before = #as_list(s.memory_ids)
  s.memory_ids = without(s.memory_ids, mid)
  if #s.memory_ids ~= before then
    s.memory_count = #s.memory_ids
    redis.call('SET', skey, cjson.encode(s), 'KEEPTTL')
  end
end

local function unlink_raw_memory(vs, rid, mid)
  local key = rawkey(vs, rid)
  local list = json_list(redis.call('HGET', key, 'memory_ids'))
  local kept = without(list, mid)
  if #kept ~= #list then redis.call('HSET', key, 'memory_ids', cjson.encode(kept)) end
end

-- DELETE one memory: the vector set element, its index entry and every reference to it.
-- ARGV: vs, memory id.  Returns {'not_found'} or {'ok', sessions updated, raws updated}.
redis.register_function('erase_memory___VERSION__', function(keys, argv)
  local vs, mid = argv[1], argv[2]
  if redis.call('VISMEMBER', vs, mid) == 0 then return {'not_found'} end
  local attrs = cjson.decode(redis.call('VGETATTR', vs, mid) or '{}')
  local sessions = as_list(attrs.source_sessions)
  if type(attrs.session_id) == 'string' and not contains(sessions, attrs.session_id) then
    sessions[#sessions + 1] = attrs.session_id
  end
  local raws = as_list(attrs.source_raw_ids)
  if type(attrs.raw_memory_id) == 'string' and not contains(raws, attrs.raw_memory_id) then
    raws[#raws + 1] = attrs.raw_memory_id
  end
  for _, sid in ipairs(sessions) do unlink_session_memory(vs, sid, mid) end
  for _, rid in ipairs(raws) do unlink_raw_memory(vs, rid, mid) end
  redis.call('VREM', vs, mid)
  redis.call('ZREM', tag(vs) .. ':memory_index', mid)
  return {'ok', #sessions, #raws}
end)

-- DELETE one session: its raw memories (wherever they are in the queue), summary, memory set,
-- raw index, dedupe keys and index entries; memories that came only from it are removed, shared
-- ones lose it as a source.  ARGV: vs, session id.  Returns a JSON receipt or 'not_found'.
redis.register_function('erase_session___VERSION__', function(keys, argv)
  local vs, sid = argv[1], argv[2]
  local t = tag(vs)
  local skey, mkey, rkey = t .. ':session_summary:' .. sid, t .. ':session_memories:' .. sid,
    t .. ':session_raws:' .. sid
  local text = redis.call('GET', skey)
  local s = text and cjson.decode(text) or {}
  local raw_ids, is_raw = {}, {}
  local function add_raw(id)
    if type(id) == 'string' and not is_raw[id] then is_raw[id] = true; raw_ids[#raw_ids + 1] = id end
  end
  for _, id in ipairs(redis.call('ZRANGE', rkey, 0, -1)) do add_raw(id) end
  for _, id in ipairs(as_list(s.raw_memory_ids)) do add_raw(id) end
  local mids, is_mid = {}, {}
  local function add_mid(id)
    if type(id) == 'string' and not is_mid[id] then is_mid[id] = true; mids[#mids + 1] = id end
  end
  for _, id in ipairs(redis.call('SMEMBERS', mkey)) do add_mid(id) end
  for _, id in ipairs(as_list(s.memory_ids)) do add_mid(id) end
  local indexed = redis.call('ZSCORE', t .. ':session_index', sid)
  if not text and not indexed and #raw_ids == 0 and #mids == 0 then return 'not_found' end

  local now = now_s()
  local counts = {raw_memories = 0, queue_entries = 0, dedupe_keys = 0, memories = 0,
    memories_updated = 0, sessions = 0, summaries = 0}
  for _, id in ipairs(raw_ids) do
    local owner = redis.call('HGET', rawkey(vs, id), 'session_id')
    if owner == false or owner == sid then  -- never touch another session's record
      local produced = purge_raw(vs, id, sid, counts)
      for _, mid in ipairs(produced) do add_mid(mid) end
    end
  end
  for _, mid in ipairs(mids) do
    local a = redis.call('VGETATTR', vs, mid)
    if a then
      local attrs = cjson.decode(a)
      local sources = as_list(attrs.source_sessions)
      if contains(sources, sid) or attrs.session_id == sid then
        sources = without(sources, sid)
        if #sources == 0 then
          redis.call('VREM', vs, mid)
          redis.call('ZREM', t .. ':memory_index', mid)
          counts.memories = counts.memories + 1
        else
          local kept = {}
          for _, rid in ipairs(as_list(attrs.source_raw_ids)) do
            if not is_raw[rid] then kept[#kept + 1] = rid end
          end
          attrs.source_sessions = sources
          attrs.source_raw_ids = kept
          if attrs.session_id == sid then attrs.session_id = sources[1] end
          if is_raw[attrs.raw_memory_id] then attrs.raw_memory_id = kept[1] or '' end
          attrs.merge_count = math.max(0, (tonumber(attrs.merge_count) or 0) - 1)
          attrs.updated_at = now
          redis.call('VSETATTR', vs, mid, cjson.encode(attrs))
          counts.memories_updated = counts.memories_updated + 1
        end
      end
    end
  end
  counts.summaries = redis.call('DEL', skey)
  redis.call('DEL', mkey, rkey)
  counts.sessions = 1
  redis.call('ZREM', t .. ':session_index', sid)
  if redis.call('ZCARD', t .. ':pending') == 0 then redis.call('ZREM', READY, vs) end
  return cjson.encode(counts)
end)

-- DELETE a whole vectorstore, in bounded steps: each call removes up to `batch` raw memories
-- and `batch` sessions; the call that finds the indexes empty removes the vector set and the
-- remaining per-vectorstore keys.  ARGV: vs, batch, stats days to delete.
-- Returns a JSON receipt with `complete`, or 'not_found' when nothing of it exists.
redis.register_function('erase_vectorstore___VERSION__', function(keys, argv)
  local vs, batch, days = argv[1], tonumber(argv[2]), tonumber(argv[3])
  local t = tag(vs)
  local ranked = {t .. ':raw_index', t .. ':pending', t .. ':inflight', t .. ':dead', t .. ':session_index'}
  local known = redis.call('ZSCORE', VECTORSTORES, vs) or redis.call('EXISTS', vs, t .. ':config',
    t .. ':counters', t .. ':memory_index', unpack(ranked)) > 0
  if not known then return 'not_found' end
  local counts = {raw_memories = 0, queue_entries = 0, dedupe_keys = 0, memories = 0,
    memories_updated = 0, sessions = 0, summaries = 0, complete = false}
  local function drop_session(sid)
    counts.summaries = counts.summaries + redis.call('DEL', t .. ':session_summary:' .. sid)
    redis.call('DEL', t .. ':session_memories:' .. sid, t .. ':session_raws:' .. sid)
    if redis.call('ZREM', t .. ':session_index', sid) == 1 then counts.sessions = counts.sessions + 1 end
  end
  local budget = batch
  for i = 1, 4 do  -- raw ids from the index, then any the queue sets hold that the index lost
    if budget <= 0 then break end
    for _, id in ipairs(redis.call('ZRANGE', ranked[i], 0, budget - 1)) do
      local _, owner = purge_raw(vs, id, nil, counts)
      if owner then drop_session(owner) end
      redis.call('ZREM', ranked[i], id)
      budget = budget - 1
    end
  end
  for _, sid in ipairs(redis.call('ZRANGE', t .. ':session_index', 0, batch - 1)) do drop_session(sid) end
  for _, k in ipairs(ranked) do
    if redis.call('EXISTS', k) == 1 then return cjson.encode(counts) end
  end
  counts.memories = redis.call('VCARD', vs)
  redis.call('UNLINK', vs, t .. ':memory_index', t .. ':config', t .. ':counters', t .. ':cleanup')
  local now = now_s()
  for d = 0, days do redis.call('DEL', t .. ':processing_stats:' .. ymd(now - d * 86400)) end
  redis.call('ZREM', VECTORSTORES, vs)
  redis.call('ZREM', READY, vs)
  counts.complete = true
  return cjson.encode(counts)
end)

-- Up to n members of zset `key` after a cursor (member `id` at score `s`, nil: from the start),
-- ascending, with scores <= hi.  Resumes by rank while the cursor member exists, else by score.
-- Returns the {member, score} rows and whether the scan reached its end.
local function scan_after(key, s, id, hi, n)
  local rows
  local rank = id and redis.call('ZRANK', key, id)
  if rank then
    rows = redis.call('ZRANGE', key, rank + 1, rank + n, 'WITHSCORES')
  else
    rows = redis.call('ZRANGE', key, s and ('(' .. s) or '-inf', hi, 'BYSCORE', 'LIMIT', 0, n, 'WITHSCORES')
  end
  local out, limit = {}, tonumber(hi)
  for i = 1, #rows, 2 do
    if tonumber(rows[i + 1]) > limit then return out, true end
    out[#out + 1] = {rows[i], rows[i + 1]}
  end
  return out, #out < n
end

-- Run one bounded pass over an index from the cursor saved in the cleanup state hash.
local function pass(state, name, key, hi, n, dry, visit)
  local c = redis.call('HMGET', state, name .. '_score', name .. '_id')
  local s, id = c[1] or nil, c[2] or nil
  if s and tonumber(s) > tonumber(hi) then s, id = nil, nil end  -- a cursor past this run's end
  local rows, done = scan_after(key, s, id, hi, n)
  for _, row in ipairs(rows) do visit(row[1], tonumber(row[2])) end
  if not dry then
    if done then
      redis.call('HDEL', state, name .. '_score', name .. '_id')
    elseif #rows > 0 then
      redis.call('HSET', state, name .. '_score', rows[#rows][2], name .. '_id', rows[#rows][1])
    end
  end
  return #rows, done
end

-- Put a live raw memory back where its status says it belongs, when the queue lost it.
-- Returns the kind of repair made (or that would be made, when dry), or nil.
-- Where each live status belongs: the vectorstore's zset, the global one, the hash field that
-- remembers the score, and the name of the repair.
local HOMES = {
  queued = {':pending', QUEUE, 'next_attempt_at', 'requeued'},
  -- Back in flight with its lease: a live worker may still commit, and once the lease passes the
  -- reaper re-queues it (or buries it after its last attempt) as for any expired lease.
  processing = {':inflight', INFLIGHT, 'lease_deadline', 'restored_in_flight'},
  error = {':dead', DEAD, 'dead_at', 'restored_dead'},
}

local function reconcile(vs, id, status, now, dry)
  local home = HOMES[status]
  if not home then return nil end
  local t, key = tag(vs), rawkey(vs, id)
  local mine = redis.call('ZSCORE', t .. home[1], id)
  local global = redis.call('ZSCORE', home[2], key)
  if mine and global then return nil end
  if not dry then
    local at = tonumber(mine or global or redis.call('HGET', key, home[3]) or '') or now
    if status == 'queued' then
      enqueue_at(vs, id, at)  -- also gives its vectorstore a turn
    else
      redis.call('ZADD', home[2], at, key)
      redis.call('ZADD', t .. home[1], at, id)
    end
  end
  return home[4]
end

-- Retention and index maintenance for one vectorstore, bounded by `limit` entries per pass:
--  retention: raw_index from the oldest end up to the cutoff; processed raw memories older than
--    the retention are deleted (with their dedupe key and index entries), entries whose record
--    is gone are trimmed, live ones are reconciled and kept;
--  reconcile: a rolling walk over the whole raw_index (queue repairs, stale entries);
--  sessions: a rolling walk over session_index (expired summaries, stale session_raws entries);
--  memories: a rolling walk over memory_index (entries whose vector set element is gone).
-- Cursors live in {vs}:cleanup; a dry run reads them but writes nothing.
-- ARGV: vs, retention seconds, limit, dry (1/0).  Returns a JSON receipt.
redis.register_function('cleanup___VERSION__', function(keys, argv)
  local vs, retention, n, dry = argv[1], tonumber(argv[2]), tonumber(argv[3]), argv[4] == '1'
  local t = tag(vs)
  local state = t .. ':cleanup'
  local now = now_s()
  local cutoff = now - retention
  local deleted = {}
  local trimmed = {raw_index = 0, session_index = 0, session_raws = 0, memory_index = 0}
  local repaired = {requeued = 0, restored_in_flight = 0, restored_dead = 0, ready = 0}
  local examined = {}
  local done = {}
  local seen = {}
  local kept_live = 0

  local function trim(index, key, member)
    trimmed[index] = trimmed[index] + 1
    if not dry then redis.call('ZREM', key, member) end
  end
  local function repair(id, status)
    local kind = reconcile(vs, id, status, now, dry)
    if kind then repaired[kind] = repaired[kind] + 1 end
  end

  examined.retention, done.retention = pass(state, 'retention', t .. ':raw_index', cutoff, n, dry,
    function(id, score)
      seen[id] = true
      local key = rawkey(vs, id)
      local h = redis.call('HMGET', key, 'status', 'session_id', 'created_at')
      if not h[1] then
        trim('raw_index', t .. ':raw_index', id)
      elseif h[1] == 'processed' and (tonumber(h[3]) or score) < cutoff and not queued_anywhere(vs, id) then
        deleted[#deleted + 1] = id
        if not dry then
          local counts = {raw_memories = 0, queue_entries = 0, dedupe_keys = 0}
          purge_raw(vs, id, h[2], counts)
        end
      else
        kept_live = kept_live + (h[1] == 'processed' and 0 or 1)
        repair(id, h[1])
      end
    end)

  examined.reconcile, done.reconcile = pass(state, 'reconcile', t .. ':raw_index', '+inf', n, dry,
    function(id)
      if seen[id] then return end
      local status = redis.call('HGET', rawkey(vs, id), 'status')
      if not status then trim('raw_index', t .. ':raw_index', id) else repair(id, status) end
    end)

  examined.sessions, done.sessions = pass(state, 'sessions', t .. ':session_index', '+inf', n, dry,
    function(sid)
      local rkey = t .. ':session_raws:' .. sid
      for _, id in ipairs(redis.call('ZRANGE', rkey, 0, 99)) do
        if redis.call('EXISTS', rawkey(vs, id)) == 0 then trim('session_raws', rkey, id) end
      end
      if redis.call('EXISTS', t .. ':session_summary:' .. sid) == 0 then
        trim('session_index', t .. ':session_index', sid)
      end
    end)

  examined.memories, done.memories = pass(state, 'memories', t .. ':memory_index', '+inf', n, dry,
    function(mid)
      if redis.call('VISMEMBER', vs, mid) == 0 then trim('memory_index', t .. ':memory_index', mid) end
    end)

  -- A vectorstore with waiting items must be in the ready set, or no claim ever serves it.
  local head = redis.call('ZRANGE', t .. ':pending', 0, 0, 'WITHSCORES')
  if #head > 0 and not redis.call('ZSCORE', READY, vs) then
    repaired.ready = 1
    if not dry then redis.call('ZADD', READY, head[2], vs) end
  end
  return cjson.encode({now = now, cutoff = cutoff, deleted = deleted, trimmed = trimmed,
    reconciled = repaired, examined = examined, complete = done, live_kept = kept_live})
end)

-- Everything GET /stats shows, read at one server time.  ARGV: vs, days, samples.
-- Storage of raw memories and summaries is estimated from the newest `samples` of each.
redis.register_function{function_name = 'stats___VERSION__', flags = {'no-writes'},
  callback = function(keys, argv)
  local vs, days, samples = argv[1], tonumber(argv[2]), tonumber(argv[3])
  local t = tag(vs)
  local now = now_s()
  local function usage(key) return tonumber(redis.call('MEMORY', 'USAGE', key) or 0) or 0 end
  local function sample(index, keyof)
    local total, n = 0, 0
    for _, m in ipairs(redis.call('ZRANGE', index, 0, samples - 1, 'REV')) do
      local bytes = redis.call('MEMORY', 'USAGE', keyof(m))
      if bytes then total, n = total + bytes, n + 1 end
    end
    return {total, n}
  end
  local index_bytes = {}
  for _, name in ipairs({'raw_index', 'session_index', 'memory_index', 'pending', 'inflight', 'dead',
      'config', 'counters', 'cleanup'}) do
    index_bytes[name] = usage(t .. ':' .. name)
  end
  local daily = {}
  for d = days - 1, 0, -1 do
    local day = ymd(now - d * 86400)
    daily[#daily + 1] = {day, redis.call('HGETALL', t .. ':processing_stats:' .. day)}
  end
  return cjson.encode({
    now = string.format('%.6f', now),
    memories = redis.call('VCARD', vs),
    memory_index = redis.call('ZCARD', t .. ':memory_index'),
    sessions = redis.call('ZCARD', t .. ':session_index'),
    raw_index = redis.call('ZCARD', t .. ':raw_index'),
    pending = redis.call('ZCARD', t .. ':pending'),
    in_flight = redis.call('ZCARD', t .. ':inflight'),
    dead = redis.call('ZCARD', t .. ':dead'),
    counters = redis.call('HGETALL', t .. ':counters'),
    config = redis.call('HGETALL', t .. ':config'),
    vector_set_bytes = usage(vs),
    index_bytes = index_bytes,
    raw_sample = sample(t .. ':raw_index', function(id) return rawkey(vs, id) end),
    summary_sample = sample(t .. ':session_index', function(sid) return t .. ':session_summary:' .. sid end),
    daily = daily,
  })
end}
