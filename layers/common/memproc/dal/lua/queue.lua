-- The queue protocol: enqueue, claim, renew, commit, fail, redrive, heartbeat, status.

-- Eviction policies that may delete a queued raw record (a lost session). Anything but
-- noeviction is refused for new work; the policy is read from INFO at most once a minute.
local function eviction_policy(now)
  local seen = redis.call('HMGET', STATUS, 'maxmemory_policy', 'policy_checked_at')
  if seen[1] and now - (tonumber(seen[2]) or 0) < 60 then return seen[1] end
  local policy = string.match(redis.call('INFO', 'memory'), 'maxmemory_policy:([%w%-]+)') or 'unknown'
  redis.call('HSET', STATUS, 'maxmemory_policy', policy, 'policy_checked_at', string.format('%.6f', now))
  return policy
end

-- store_raw: dedupe, admission check, raw hash, queues, indexes and position in one call.
-- KEYS: raw hash, dedupe key.  ARGV: vs, raw id, session id, data, encoding, metadata json,
-- max queue, max pending per vs, dedupe digest, session length.
redis.register_function('enqueue___VERSION__', function(keys, argv)
  local now = now_s()
  local vs, id, sid = argv[1], argv[2], argv[3]
  -- The processor's measured rate and whether it is draining now, for the time estimate.
  local p = redis.call('HMGET', STATUS, 'rate_per_second', 'last_heartbeat', 'interval_seconds')
  local rate = p[1] or ''
  local idle = p[2] and string.format('%.3f', now - tonumber(p[2])) or ''
  local interval = p[3] or ''
  local existing = redis.call('GET', keys[2])
  if existing then
    local e = redis.call('HMGET', k.raw(vs, existing), 'status', 'created_at')
    if e[1] then
      local pos = 0
      if e[1] == 'queued' then
        local rank = redis.call('ZRANK', k.pending(vs), existing)
        if rank then pos = rank + 1 end
      end
      return {'duplicate', existing, e[2], pos, redis.call('ZCARD', QUEUE), rate, e[1],
              redis.call('ZCARD', READY), idle, interval}
    end
  end
  local qsize = redis.call('ZCARD', QUEUE)
  local policy = eviction_policy(now)
  if policy ~= 'noeviction' then
    return {'store_evicting', '', '', 0, qsize, rate, policy, 0, idle, interval}
  end
  if qsize >= tonumber(argv[7]) then return {'queue_full', '', '', 0, qsize, rate, '', 0, idle, interval} end
  local pending = redis.call('ZCARD', k.pending(vs))
  if pending >= tonumber(argv[8]) then
    return {'vectorstore_full', '', '', 0, qsize, rate, '', 0, idle, interval}
  end
  local created = string.format('%.6f', now)
  redis.call('HSET', keys[1], 'raw_memory_id', id, 'session_id', sid, 'session_data', argv[4],
    'session_data_encoding', argv[5], 'metadata', argv[6], 'vectorstore_name', vs,
    'created_at', created, 'status', 'queued', 'processing_attempts', 0,
    'dedupe_digest', argv[9], 'session_length', argv[10])
  if line_up(vs, id, sid, now) then park(vs, id) else enqueue_at(vs, id, now) end
  redis.call('SET', keys[2], id)
  redis.call('ZADD', k.raw_index(vs), now, id)
  redis.call('ZADD', k.session_raws(vs, sid), now, id)
  -- A processed session's raw list expires with the session; a live submission keeps it alive.
  redis.call('PERSIST', k.session_raws(vs, sid))
  redis.call('ZADD', VECTORSTORES, now, vs)
  redis.call('HINCRBY', k.counters(vs), 'received', 1)
  local rank = redis.call('ZRANK', k.pending(vs), id)
  return {'queued', id, created, rank + 1, qsize + 1, rate, 'queued', redis.call('ZCARD', READY),
          idle, interval}
end)

-- A queue entry whose raw record is gone (evicted, or deleted outside memproc): never a silent
-- skip. A minimal record says so and the entry becomes a visible dead letter.
local function lost(vs, id, now)
  local key = k.raw(vs, id)
  local sid = redis.call('HGET', k.queued_sessions(vs), id)
  redis.call('HSET', key, 'raw_memory_id', id, 'vectorstore_name', vs, 'status', 'error',
    'created_at', string.format('%.6f', now), 'processing_attempts', 0, 'session_length', 0,
    'record_lost', 1,
    'last_error', 'record lost: the raw record was evicted or deleted outside memproc before it was processed')
  if sid then redis.call('HSET', key, 'session_id', sid) end
  redis.call('ZADD', k.raw_index(vs), now, id)
  bump(vs, now, {lost_count = 1})
  redis.call('HINCRBY', k.counters(vs), 'lost', 1)
  bury(vs, id, now, redis.call('HGET', key, 'last_error'))
end

-- Claim up to N items round-robin across vectorstores, after re-queueing expired leases.
-- The attempt is counted at claim. Each claim also increments the item's fencing token (never
-- reset, not even by a redrive), which the worker's later calls must present. Claiming is also
-- the processor's heartbeat.  ARGV: max items, lease seconds, max attempts, max leases to reap.
-- Returns {{vs, id, token, session id, attempt}...}, reaped, buried, lost.
redis.register_function('claim___VERSION__', function(keys, argv)
  local now = now_s()
  local n, lease, max_attempts = tonumber(argv[1]), tonumber(argv[2]), tonumber(argv[3])
  redis.call('HSET', STATUS, 'last_heartbeat', string.format('%.6f', now))
  local reaped, buried, lost_count = 0, 0, 0
  for _, key in ipairs(redis.call('ZRANGE', INFLIGHT, '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(argv[4]))) do
    local vs, id = split_raw(key)
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
      elseif not h[1] then
        lost(vs, id, now)
        lost_count = lost_count + 1
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
        local head = redis.call('ZRANGE', k.pending(vs), 0, 0, 'WITHSCORES')
        if #head == 0 or tonumber(head[2]) > now then
          open[i] = false
        else
          local id = head[1]
          local key = k.raw(vs, id)
          redis.call('ZREM', k.pending(vs), id)
          redis.call('ZREM', QUEUE, key)
          if redis.call('EXISTS', key) == 1 then
            local attempt = redis.call('HINCRBY', key, 'processing_attempts', 1)
            local token = redis.call('HINCRBY', key, 'lease_token', 1)
            local deadline = now + lease
            redis.call('HSET', key, 'status', 'processing', 'claimed_at', string.format('%.6f', now),
              'lease_deadline', string.format('%.6f', deadline))
            redis.call('HDEL', key, 'next_attempt_at')
            redis.call('ZADD', INFLIGHT, deadline, key)
            redis.call('ZADD', k.inflight(vs), deadline, id)
            claimed[#claimed + 1] = {vs, id, token, redis.call('HGET', key, 'session_id'), attempt}
            served[i] = true
          else
            lost(vs, id, now)
            lost_count = lost_count + 1
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
    local head = redis.call('ZRANGE', k.pending(vs), 0, 0, 'WITHSCORES')
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
  return {claimed, reaped, buried, lost_count}
end)

-- Extend the leases a live worker still holds, so long work is never reaped and paid for twice.
-- ARGV: lease seconds, then (vs, raw id, token) per item.  Returns the raw ids no longer held.
redis.register_function('renew___VERSION__', function(keys, argv)
  local deadline = now_s() + tonumber(argv[1])
  local gone = {}
  for i = 2, #argv, 3 do
    local vs, id, token = argv[i], argv[i + 1], argv[i + 2]
    if fenced(vs, id, token) then
      local key = k.raw(vs, id)
      redis.call('HSET', key, 'lease_deadline', string.format('%.6f', deadline))
      redis.call('ZADD', INFLIGHT, 'XX', deadline, key)
      redis.call('ZADD', k.inflight(vs), 'XX', deadline, id)
    else
      gone[#gone + 1] = id
    end
  end
  return gone
end)

-- Commit one processed item atomically: memories (merge near-duplicates), summary,
-- cross-references, indexes, raw status, stats and ack. A stale token writes nothing, and
-- everything is decoded and checked before the first write.
-- ARGV: vs, raw id, token, payload json, then one FP32 vector blob per memory.
redis.register_function('commit___VERSION__', function(keys, argv)
  local vs, id, token = argv[1], argv[2], argv[3]
  local h = fenced(vs, id, token)
  if not h then return {'stale'} end
  local now = now_s()
  local ok, p = pcall(cjson.decode, argv[4])
  if not ok or type(p) ~= 'table' then return redis.error_reply('ERR commit payload is not a JSON object') end
  local memories, topics = as_list(p.memories), as_list(p.topics)
  if #argv - 4 ~= #memories then
    return redis.error_reply('ERR commit has ' .. #memories .. ' memories but ' .. (#argv - 4) .. ' vectors')
  end
  for _, name in ipairs({'tokens_in', 'tokens_out', 'processed_length', 'raw_retention', 'session_retention',
      'threshold', 'dimensions', 'processing_ms'}) do
    if type(p[name]) ~= 'number' then return redis.error_reply('ERR commit payload needs number ' .. name) end
  end
  for i, m in ipairs(memories) do
    if type(m) ~= 'table' or type(m.text) ~= 'string' or #argv[4 + i] ~= 4 * p.dimensions then
      return redis.error_reply('ERR commit memory ' .. i .. ' has no text or a vector of the wrong size')
    end
  end
  local sid = h[3]
  local skey = k.session_summary(vs, sid)
  local prev = redis.call('GET', skey)
  local s = json_object(prev)
  local cfg = redis.call('HMGET', k.config(vs), 'embedding_model', 'dimensions')
  if #memories > 0 and cfg[2] and (tonumber(cfg[2]) ~= p.dimensions or cfg[1] ~= p.embedding_model) then
    return {'mismatch', cfg[1], cfg[2]}
  end

  -- Every check passed: write.
  if #memories > 0 and not cfg[2] then
    redis.call('HSET', k.config(vs), 'embedding_model', p.embedding_model, 'dimensions', p.dimensions,
      'created_at', string.format('%.6f', now))
  end
  local memids, created, merged = {}, 0, 0
  for i, m in ipairs(memories) do
    local blob = argv[4 + i]
    local target = nil
    if redis.call('VCARD', vs) > 0 then
      local nn = redis.call('VSIM', vs, 'FP32', blob, 'COUNT', 1, 'WITHSCORES')
      if nn[1] and (2 * tonumber(nn[2]) - 1) >= p.threshold then target = nn[1] end
    end
    if target then
      local attrs = json_object(redis.call('VGETATTR', vs, target))
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
      if #as_list(m.tags) > 0 then attrs.tags = m.tags end
      redis.call('VADD', vs, 'FP32', blob, mid, 'SETATTR', cjson.encode(attrs))
      redis.call('ZADD', k.memory_index(vs), now, mid)
      memids[#memids + 1] = mid
      created = created + 1
    end
  end

  local all = as_list(s.memory_ids)
  for _, mid in ipairs(memids) do if not contains(all, mid) then all[#all + 1] = mid end end
  local raws = as_list(s.raw_memory_ids)
  if not contains(raws, id) then raws[#raws + 1] = id end
  s.session_id = sid
  s.vectorstore_name = vs
  -- The session's state never moves backwards: only a submission at least as long as the one
  -- already processed sets the summary and the processed prefix.
  if p.processed_length >= (tonumber(s.processed_length) or 0) then
    if p.summary ~= '' then s.summary = p.summary end
    if #topics > 0 then s.topics = topics end
    s.processed_length = p.processed_length
    s.processed_sha256 = p.processed_sha256
    s.processed_raw_id = id
  end
  s.memory_ids = all
  s.memory_count = #all
  s.raw_memory_ids = raws
  s.created_at = s.created_at or now
  s.updated_at = now
  s.tokens_in = (tonumber(s.tokens_in) or 0) + p.tokens_in
  s.tokens_out = (tonumber(s.tokens_out) or 0) + p.tokens_out
  local sttl = p.session_retention
  redis.call('SET', skey, cjson.encode(s), 'EX', sttl)
  -- A session's memory ids live as long as the memories (permanent), so erasing the session
  -- finds them at any age.
  local mkey = k.session_memories(vs, sid)
  if #memids > 0 then redis.call('SADD', mkey, unpack(memids)) end
  redis.call('PERSIST', mkey)
  redis.call('EXPIRE', k.session_raws(vs, sid), sttl)
  redis.call('ZADD', k.session_index(vs), now, sid)

  local key = k.raw(vs, id)
  redis.call('HSET', key, 'status', 'processed', 'processed_at', string.format('%.6f', now),
    'memories_created', created, 'memories_merged', merged, 'memory_ids', cjson.encode(memids),
    'tokens_in', p.tokens_in, 'tokens_out', p.tokens_out, 'processing_ms', p.processing_ms,
    'extraction_mode', p.mode)
  redis.call('HDEL', key, 'lease_deadline', 'last_error')
  local expires = retained_until(h[4], h[7], p.raw_retention)
  redis.call('EXPIREAT', key, expires)
  if h[5] then redis.call('EXPIREAT', k.dedupe(vs, h[5]), expires) end
  release(vs, id)
  leave_line(vs, id, sid)
  bump(vs, now, {processed_count = 1, memories_created = created, memories_merged = merged,
    tokens_in = p.tokens_in, tokens_out = p.tokens_out, processing_ms = p.processing_ms})
  local stamp = string.format('%.6f', now)
  for _, stats_key in ipairs({STATS_PREFIX .. ymd(now), k.daily_stats(vs, ymd(now))}) do
    redis.call('HSET', stats_key, 'last_processed_at', stamp)
  end
  redis.call('HINCRBY', STATUS, 'processed_count', 1)
  redis.call('HSET', STATUS, 'last_processed_at', stamp)
  redis.call('HINCRBY', k.counters(vs), 'processed', 1)
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
  local attempts = tonumber(h[6])
  local err = argv[4]
  if argv[5] == '1' and attempts < tonumber(argv[6]) then
    local delay = math.min(tonumber(argv[8]), tonumber(argv[7]) * 2 ^ (attempts - 1))
    delay = delay * (0.5 + 0.5 * tonumber(argv[9]))
    delay = math.max(delay, tonumber(argv[10]))
    local due = now + delay
    redis.call('HSET', k.raw(vs, id), 'status', 'queued', 'last_error', err,
      'next_attempt_at', string.format('%.6f', due))
    redis.call('HDEL', k.raw(vs, id), 'lease_deadline')
    enqueue_at(vs, id, due)
    bump(vs, now, {error_count = 1})
    redis.call('HINCRBY', STATUS, 'error_count', 1)
    return {'retry', string.format('%.3f', delay)}
  end
  bury(vs, id, now, err)
  return {'dead', '0'}
end)

-- Redrive a dead item: back to the queue with a fresh attempt budget, behind any submission of
-- its session still waiting (a redrive is a resubmission).  ARGV: vs, raw id.
redis.register_function('redrive___VERSION__', function(keys, argv)
  local vs, id = argv[1], argv[2]
  local key = k.raw(vs, id)
  if not redis.call('ZSCORE', k.dead(vs), id) then
    return {'not_dead', redis.call('HGET', key, 'status') or ''}
  end
  local h = redis.call('HMGET', key, 'session_id', 'record_lost')
  if h[2] or not h[1] then return {'lost', ''} end  -- the record was lost: nothing left to process
  local sid = h[1]
  local now = now_s()
  redis.call('ZREM', DEAD, key)
  redis.call('ZREM', k.dead(vs), id)
  redis.call('HSET', key, 'status', 'queued', 'processing_attempts', 0,
    'redriven_at', string.format('%.6f', now))
  redis.call('HDEL', key, 'dead_at')
  redis.call('HINCRBY', key, 'redrive_count', 1)
  if line_up(vs, id, sid, now) then park(vs, id) else enqueue_at(vs, id, now) end
  return {'queued', redis.call('ZCARD', k.pending(vs))}
end)

-- The processor's heartbeat, stamped with server time.  ARGV: interval s, version, measured
-- rate/s (empty: none), weight of the new measurement in [0,1], starting (1/empty).
redis.register_function('heartbeat___VERSION__', function(keys, argv)
  local t = now_s()
  local now = string.format('%.6f', t)
  redis.call('HSET', STATUS, 'last_heartbeat', now, 'interval_seconds', argv[1], 'version', argv[2])
  if argv[3] ~= '' then
    -- Blend with the previous measurement so one small drain cannot swing the estimate.
    local rate, w = tonumber(argv[3]), tonumber(argv[4])
    local prev = tonumber(redis.call('HGET', STATUS, 'rate_per_second') or '')
    if prev then rate = prev * (1 - w) + rate * w end
    redis.call('HSET', STATUS, 'rate_per_second', string.format('%.4f', rate))
  end
  if argv[5] ~= '' then redis.call('HSET', STATUS, 'start_time', now) end
  return {now, eviction_policy(t)}
end)

-- Everything processing_status shows, read at one server time.  ARGV: vs.
redis.register_function{function_name = 'status___VERSION__', flags = {'no-writes'},
  callback = function(keys, argv)
  local now = now_s()
  local vs = argv[1]
  local oldest = redis.call('ZRANGE', k.pending(vs), 0, 0, 'WITHSCORES')
  -- Every waiting item is parked behind a session's in-flight one: it has waited since submission.
  if oldest[2] == 'inf' then oldest[2] = redis.call('HGET', k.raw(vs, oldest[1]), 'created_at') end
  local today = redis.call('HMGET', STATS_PREFIX .. ymd(now), 'processed_count', 'last_processed_at')
  local policy = string.match(redis.call('INFO', 'memory'), 'maxmemory_policy:([%w%-]+)') or 'unknown'
  return {string.format('%.6f', now), redis.call('ZCARD', QUEUE), redis.call('HGETALL', STATUS),
    today[1] or '0', today[2] or '', redis.call('ZCARD', k.pending(vs)),
    redis.call('ZCARD', k.inflight(vs)), redis.call('ZCARD', k.dead(vs)), oldest[2] or '',
    redis.call('ZCARD', INFLIGHT), redis.call('ZCARD', DEAD), policy}
end}
