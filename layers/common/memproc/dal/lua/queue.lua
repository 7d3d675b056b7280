-- The queue protocol: enqueue, claim, renew, fail, redrive, heartbeat, status (commit: commit.lua).
-- Every function touches global keys and per-vectorstore keys, so on a cluster (MemoryDB is always
-- one) each is flagged allow-cross-slot-keys: memproc needs a single shard. See:
-- https://valkey.io/topics/lua-api/ (Script flags)

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
-- max queue, max pending per vs, dedupe digest, session length, and the embedding model and
-- dimension the processor will use: a vectorstore whose memories were embedded otherwise is
-- refused here ('embedding_mismatch', with its model and dimension), since every session of it
-- would only be dead-lettered later.
redis.register_function{function_name = 'enqueue___VERSION__', flags = {'allow-cross-slot-keys'},
  callback = function(keys, argv)
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
  local cfg = redis.call('HMGET', k.config(vs), 'embedding_model', 'dimensions')
  if cfg[2] and (cfg[1] ~= argv[11] or tonumber(cfg[2]) ~= tonumber(argv[12])) then
    return {'embedding_mismatch', '', '', 0, qsize, rate, cfg[1] or '', 0, idle, interval, cfg[2]}
  end
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
end}

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
-- the processor's heartbeat. A vectorstore with `per_vs` items in flight gets no more: its
-- sessions are reconciled against each other's memories, so they are decided one after another.
-- Each item comes with what the processor reads first (its processing input): the raw hash's
-- transcript (as stored: it may be compressed), its encoding, created_at and metadata, the
-- session's summary, and the vectorstore's memory state (mem.state, read once per vectorstore:
-- nothing here changes it). The claim stops taking items once those inputs pass `budget` bytes
-- (always taking one), so its reply stays bounded whatever the transcripts' size.
-- ARGV: max items, lease seconds, max attempts, max leases to reap, per_vs, budget.
-- Returns {{vs, id, token, session id, attempt, seconds since submission (or redrive),
-- transcript, encoding, created_at, metadata, summary, then mem.state's four}...}, reaped,
-- buried, lost, the items it dead-lettered {{vs, id, session id, error, attempts}...} (for the
-- SessionFailed events), and 1 when the budget ended it (more may be eligible), else 0.
redis.register_function{function_name = 'claim___VERSION__', flags = {'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local now = now_s()
  local n, lease, max_attempts = tonumber(argv[1]), tonumber(argv[2]), tonumber(argv[3])
  local per_vs, budget = tonumber(argv[5]), tonumber(argv[6])
  redis.call('HSET', STATUS, 'last_heartbeat', string.format('%.6f', now))
  local reaped, buried, lost_count = 0, 0, 0
  local dead = {}
  local function buried_item(vs, id)
    local h = redis.call('HMGET', k.raw(vs, id), 'session_id', 'last_error', 'processing_attempts')
    dead[#dead + 1] = {vs, id, h[1] or '', h[2] or '', tonumber(h[3] or '0') or 0}
  end
  for _, key in ipairs(redis.call('ZRANGE', INFLIGHT, '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(argv[4]))) do
    local vs, id = split_raw(key)
    if vs then
      release(vs, id)
      local h = redis.call('HMGET', key, 'status', 'processing_attempts')
      if h[1] == 'processing' then
        if tonumber(h[2] or '0') >= max_attempts then
          bury(vs, id, now, 'lease expired on the last attempt (the worker died or timed out)')
          buried_item(vs, id)
          buried = buried + 1
        else
          redis.call('HSET', key, 'status', 'queued', 'last_error', 'lease expired (the worker died or timed out)')
          redis.call('HDEL', key, 'lease_deadline')
          enqueue_at(vs, id, now)
          reaped = reaped + 1
        end
      elseif not h[1] then
        lost(vs, id, now)
        buried_item(vs, id)
        lost_count = lost_count + 1
      end
    else
      redis.call('ZREM', INFLIGHT, key)
    end
  end

  local claimed, states, bytes, full = {}, {}, 0, 0
  -- Vectorstores at their in-flight limit keep their turn, so they may head the ready set: look
  -- past as many of them as there can be (each holds at least one in-flight item).
  local vss = redis.call('ZRANGE', READY, '-inf', now, 'BYSCORE', 'LIMIT', 0, n + redis.call('ZCARD', INFLIGHT))
  local open, served = {}, {}
  for i = 1, #vss do open[i] = true end
  local progress = true
  while #claimed < n and progress and full == 0 do
    progress = false
    for i, vs in ipairs(vss) do
      if #claimed >= n or full == 1 then break end
      if open[i] then
        local head = redis.call('ZRANGE', k.pending(vs), 0, 0, 'WITHSCORES')
        if #head == 0 or tonumber(head[2]) > now or redis.call('ZCARD', k.inflight(vs)) >= per_vs then
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
            local h = redis.call('HMGET', key, 'session_id', 'created_at', 'redriven_at',
              'session_data', 'session_data_encoding', 'metadata')
            local since = math.max(tonumber(h[2]) or now, tonumber(h[3]) or 0)
            local summary = h[1] and redis.call('GET', k.session_summary(vs, h[1]))
            local state = states[vs] or mem.state(vs)
            states[vs] = state
            claimed[#claimed + 1] = {vs, id, token, h[1], attempt, string.format('%.3f', now - since),
              h[4], h[5], h[2], h[6], summary, state[1], state[2], state[3], state[4]}
            served[i] = true
            bytes = bytes + #(h[4] or '') + #(h[6] or '') + #(summary or '')
            if bytes >= budget then full = 1 end
          else
            lost(vs, id, now)
            buried_item(vs, id)
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
  return {claimed, reaped, buried, lost_count, dead, full}
end}

-- Extend the leases a live worker still holds, so long work is never reaped and paid for twice.
-- ARGV: lease seconds, then (vs, raw id, token) per item.  Returns the raw ids no longer held.
redis.register_function{function_name = 'renew___VERSION__', flags = {'allow-cross-slot-keys'},
  callback = function(keys, argv)
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
end}

-- A failed attempt: back to the queue with backoff, or to the dead set (a move, never a drop).
-- A rate-limited try (ARGV 11 = '0') is no attempt: its count is given back, it is never
-- dead-lettered, and it waits exactly the minimum delay the limit asks (backoff without one).
-- ARGV: vs, raw id, token, error text, retryable (1/0), max attempts, base s, max s,
-- jitter in [0,1), minimum delay s (e.g. a 429's Retry-After), counts as an attempt (1/0).
redis.register_function{function_name = 'fail___VERSION__', flags = {'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local vs, id, token = argv[1], argv[2], argv[3]
  local h = fenced(vs, id, token)
  if not h then return {'stale'} end
  local now = now_s()
  release(vs, id)
  local attempts = tonumber(h[6])
  local err = argv[4]
  local limited = argv[11] == '0'
  if limited then
    attempts = math.max(0, attempts - 1)
    redis.call('HSET', k.raw(vs, id), 'processing_attempts', attempts)
  end
  if argv[5] == '1' and (limited or attempts < tonumber(argv[6])) then
    local delay = math.min(tonumber(argv[8]), tonumber(argv[7]) * 2 ^ math.max(0, attempts - 1))
    delay = delay * (0.5 + 0.5 * tonumber(argv[9]))
    delay = math.max(delay, tonumber(argv[10]))
    if limited and tonumber(argv[10]) > 0 then delay = tonumber(argv[10]) end
    local due = now + delay
    redis.call('HSET', k.raw(vs, id), 'status', 'queued', 'last_error', err,
      'next_attempt_at', string.format('%.6f', due))
    redis.call('HDEL', k.raw(vs, id), 'lease_deadline')
    enqueue_at(vs, id, due)
    if limited then
      bump(vs, now, {rate_limited_count = 1})
    else
      bump(vs, now, {error_count = 1})
      redis.call('HINCRBY', STATUS, 'error_count', 1)
    end
    return {'retry', string.format('%.3f', delay)}
  end
  bury(vs, id, now, err)
  return {'dead', '0'}
end}

-- Redrive a dead item: back to the queue with a fresh attempt budget, behind any submission of
-- its session still waiting (a redrive is a resubmission).  ARGV: vs, raw id.
redis.register_function{function_name = 'redrive___VERSION__', flags = {'allow-cross-slot-keys'},
  callback = function(keys, argv)
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
end}

-- How long the oldest eligible item has been eligible (0: none is): O(log N), since the queue is
-- scored by eligibility (parked items sit at +inf, retries at their retry time). For the heartbeat
-- (fan-out, the BacklogAgeSeconds metric); memproc.dal.queue.backlog_age is the same rule for reads.
local function backlog_age(now)
  local head = redis.call('ZRANGE', QUEUE, 0, 0, 'WITHSCORES')
  local age = 0
  if head[2] and head[2] ~= 'inf' and tonumber(head[2]) <= now then age = now - tonumber(head[2]) end
  return string.format('%.3f', age)
end

-- The processor's heartbeat, stamped with server time.  ARGV: interval s, version, measured
-- rate/s (empty: none), weight of the new measurement in [0,1], starting (1/empty), processor
-- id (empty: none), seconds it stays registered (0: it is done and leaves).
-- Returns now, the maxmemory-policy, then what fan-out decides by: items eligible, the oldest
-- one's wait, vectorstores waiting, live processors, the measured rate ('' before the first).
redis.register_function{function_name = 'heartbeat___VERSION__', flags = {'allow-cross-slot-keys'},
  callback = function(keys, argv)
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
  -- Each drain registers until a deadline it renews; one that died drops out at it.
  local pid, ttl = argv[6] or '', tonumber(argv[7] or '') or 0
  redis.call('ZREMRANGEBYSCORE', PROCESSORS, '-inf', t)
  if pid ~= '' then
    if ttl > 0 then redis.call('ZADD', PROCESSORS, t + ttl, pid) else redis.call('ZREM', PROCESSORS, pid) end
  end
  return {now, eviction_policy(t), redis.call('ZCOUNT', QUEUE, '-inf', t), backlog_age(t),
    redis.call('ZCARD', READY), redis.call('ZCARD', PROCESSORS), redis.call('HGET', STATUS, 'rate_per_second') or ''}
end}

-- Everything processing_status shows, read at one server time.  ARGV: vs.
redis.register_function{function_name = 'status___VERSION__', flags = {'no-writes', 'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local now = now_s()
  local vs = argv[1]
  local oldest = redis.call('ZRANGE', k.pending(vs), 0, 0, 'WITHSCORES')
  -- Every waiting item is parked behind a session's in-flight one: it has waited since submission.
  if oldest[2] == 'inf' then oldest[2] = redis.call('HGET', k.raw(vs, oldest[1]), 'created_at') end
  local today = redis.call('HMGET', STATS_PREFIX .. ymd(now), 'processed_count', 'last_processed_at')
  local policy = string.match(redis.call('INFO', 'memory'), 'maxmemory_policy:([%w%-]+)') or 'unknown'
  -- The head of the whole queue, raw: memproc.dal.queue.backlog_age judges it for processing_status
  -- and GET /api/health alike (the health probe reads it without this library).
  local head = redis.call('ZRANGE', QUEUE, 0, 0, 'WITHSCORES')
  return {string.format('%.6f', now), redis.call('ZCARD', QUEUE), redis.call('HGETALL', STATUS),
    today[1] or '0', today[2] or '', redis.call('ZCARD', k.pending(vs)),
    redis.call('ZCARD', k.inflight(vs)), redis.call('ZCARD', k.dead(vs)), oldest[2] or '',
    redis.call('ZCARD', INFLIGHT), redis.call('ZCARD', DEAD), policy, head[2] or '',
    redis.call('ZCOUNT', PROCESSORS, string.format('(%.6f', now), '+inf')}
end}
