-- Commit one processed item atomically: the memory operations the extraction decided, the
-- session summary, cross-references, indexes, raw status, stats and the ack.
--
-- Operations refer to memories the worker was shown, each with the `seq` it saw; a memory changed
-- since (another session updated, superseded or retracted it) makes the commit a 'conflict', and
-- any change to the vectorstore's memories since `seen_seq` makes it 'moved' (the worker checks
-- whether the change concerns it and commits again), so two sessions of one vectorstore never both
-- add the same fact or lose each other's update. A stale token writes nothing, and everything is
-- decoded and checked before the first write.
-- ARGV: vs, raw id, token, payload json, then the FP32 vector blobs the operations name by their
-- 0-based position (`op.vector`).

local OPS = {add = true, confirm = true, update = true, supersede = true, retract = true}
local NEEDS_TARGET = {confirm = true, update = true, supersede = true, retract = true}
local NEEDS_VECTOR = {add = true, update = true, supersede = true}

local function check_payload(p, nblobs)
  for _, name in ipairs({'tokens_in', 'tokens_out', 'processed_length', 'raw_retention', 'session_retention',
      'dimensions', 'processing_ms', 'seen_seq', 'valid_from', 'history_limit'}) do
    if type(p[name]) ~= 'number' then return 'needs number ' .. name end
  end
  if p.backend ~= 'vectorset' and p.backend ~= 'search' then return 'names no memory backend' end
  local vectors = 0
  for i, op in ipairs(as_list(p.ops)) do
    if type(op) ~= 'table' or not OPS[op.op] then return 'operation ' .. i .. ' is unknown' end
    if NEEDS_TARGET[op.op] and (type(op.target) ~= 'string' or type(op.seq) ~= 'number') then
      return 'operation ' .. i .. ' has no target'
    end
    if (NEEDS_VECTOR[op.op] or op.op == 'confirm') and type(op.text) ~= 'string' then
      return 'operation ' .. i .. ' has no text'
    end
    -- An update also carries the vector of the text it replaces, so erasing the updating
    -- session can put that text back (see erase_session).
    for _, field in ipairs(op.op == 'update' and {'vector', 'prior_vector'} or NEEDS_VECTOR[op.op] and {'vector'} or {}) do
      local blob = type(op[field]) == 'number' and nblobs[op[field]] or nil
      if not blob or #blob ~= 4 * p.dimensions then
        return 'operation ' .. i .. ' has no ' .. field .. ' of ' .. p.dimensions .. ' dimensions'
      end
      vectors = vectors + 1
    end
  end
  local nblob = 0
  for _ in pairs(nblobs) do nblob = nblob + 1 end
  if nblob ~= vectors then return 'has ' .. nblob .. ' vectors for ' .. vectors .. ' new, changed or replaced texts' end
  return nil
end

-- Append to a memory's bounded history; an entry that falls off takes its stored vector with it.
local function remember(vs, attrs, entry, limit)
  local history = as_list(attrs.history)
  history[#history + 1] = entry
  while #history > limit do
    local gone = table.remove(history, 1)
    if type(gone) == 'table' and type(gone.version) == 'string' then
      redis.call('HDEL', k.memory_versions(vs), gone.version)
    end
  end
  attrs.history = history
end

local function add_source(attrs, sid, id)
  attrs.source_sessions = as_list(attrs.source_sessions)
  attrs.source_raw_ids = as_list(attrs.source_raw_ids)
  if not contains(attrs.source_sessions, sid) then table.insert(attrs.source_sessions, sid) end
  if not contains(attrs.source_raw_ids, id) then table.insert(attrs.source_raw_ids, id) end
end

redis.register_function{function_name = 'commit___VERSION__', flags = {'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local vs, id, token = argv[1], argv[2], argv[3]
  local h = fenced(vs, id, token)
  if not h then return {'stale'} end
  local now = now_s()
  local ok, p = pcall(cjson.decode, argv[4])
  if not ok or type(p) ~= 'table' then return redis.error_reply('ERR commit payload is not a JSON object') end
  local blobs = {}
  for i = 5, #argv do blobs[i - 5] = argv[i] end  -- 0-based, as the worker numbers them
  local problem = check_payload(p, blobs)
  if problem then return redis.error_reply('ERR commit payload ' .. problem) end
  local b, ops, topics = p.backend, as_list(p.ops), as_list(p.topics)
  local sid = h[3]

  -- Reads and checks: the operations' targets as the worker saw them, the vectorstore's state.
  local cfg = redis.call('HMGET', k.config(vs), 'embedding_model', 'dimensions', 'memory_seq', 'backend')
  local seq = tonumber(cfg[3]) or 0
  local writes = false
  for _, op in ipairs(ops) do
    if NEEDS_VECTOR[op.op] then writes = true end
  end
  if writes and cfg[2] and (tonumber(cfg[2]) ~= p.dimensions or cfg[1] ~= p.embedding_model) then
    return {'mismatch', cfg[1], cfg[2]}
  end
  if #ops > 0 and cfg[4] and cfg[4] ~= b then return {'mismatch', 'backend ' .. cfg[4], cfg[2] or ''} end
  local targets = {}
  for _, op in ipairs(ops) do
    if NEEDS_TARGET[op.op] then
      local attrs = targets[op.target] or mem.get(b, vs, op.target)
      if not attrs or (tonumber(attrs.seq) or 0) ~= op.seq or (attrs.status or 'current') ~= 'current' then
        return {'conflict', op.target}
      end
      targets[op.target] = attrs
    end
  end
  if #ops > 0 and seq ~= p.seen_seq then return {'moved', seq} end
  local s = json_object(redis.call('GET', k.session_summary(vs, sid)))

  -- Every check passed: write.
  local newseq = seq
  if #ops > 0 then
    newseq = redis.call('HINCRBY', k.config(vs), 'memory_seq', 1)
    if not cfg[2] and writes then
      redis.call('HSET', k.config(vs), 'embedding_model', p.embedding_model, 'dimensions', p.dimensions,
        'backend', b, 'created_at', string.format('%.6f', now))
    end
  end
  local limit = p.history_limit
  local memids, counts = {}, {created = 0, merged = 0, updated = 0, superseded = 0, retracted = 0}
  local function touched(mid) if not contains(memids, mid) then memids[#memids + 1] = mid end end
  local function new_memory(i, op)
    local mid = id .. '-' .. (i - 1)
    local attrs = {text = op.text, memory_type = op.memory_type, confidence = op.confidence,
      session_id = sid, raw_memory_id = id, created_at = now, updated_at = now, observed_at = now,
      valid_from = p.valid_from, status = 'current', source_sessions = {sid}, source_raw_ids = {id},
      text_sources = {sid}, merge_count = 0, seq = newseq, history = {}}
    if #as_list(op.tags) > 0 then attrs.tags = op.tags end
    return mid, attrs
  end
  for i, op in ipairs(ops) do
    local entry = {op = op.op, session_id = sid, raw_memory_id = id, at = now, valid_from = p.valid_from}
    if op.op == 'add' then
      local mid, attrs = new_memory(i, op)
      mem.put(b, vs, mid, attrs, blobs[op.vector])
      mem.index(vs, mid, op.memory_type, p.valid_from)
      touched(mid)
      counts.created = counts.created + 1
    elseif op.op == 'supersede' then
      local mid, attrs = new_memory(i, op)
      attrs.supersedes = op.target
      mem.put(b, vs, mid, attrs, blobs[op.vector])
      mem.index(vs, mid, op.memory_type, p.valid_from)
      local old = targets[op.target]
      old.status, old.valid_to, old.superseded_by = 'superseded', p.valid_from, mid
      old.updated_at, old.seq = now, newseq
      mem.put(b, vs, op.target, old, nil)
      touched(mid)
      touched(op.target)
      counts.created, counts.superseded = counts.created + 1, counts.superseded + 1
    else
      local attrs = targets[op.target]
      add_source(attrs, sid, id)
      attrs.updated_at, attrs.observed_at, attrs.seq = now, now, newseq
      local blob = nil
      if op.op == 'confirm' then
        attrs.merge_count = (tonumber(attrs.merge_count) or 0) + 1
        attrs.text_sources = as_list(attrs.text_sources)
        if not contains(attrs.text_sources, sid) then table.insert(attrs.text_sources, sid) end
        if op.text ~= attrs.text then entry.text = op.text; remember(vs, attrs, entry, limit) end
        counts.merged = counts.merged + 1
      elseif op.op == 'update' then
        -- The replaced text stays the statement of the sessions that made it (`stated_by`), with
        -- its vector and time, so erasing this session restores it and erasing those removes it.
        entry.text, entry.was_valid_from, entry.was_memory_type = attrs.text, attrs.valid_from, attrs.memory_type
        entry.stated_by = as_list(attrs.text_sources)
        if #entry.stated_by == 0 then entry.stated_by = {attrs.session_id} end
        entry.version = op.target .. ':' .. newseq
        redis.call('HSET', k.memory_versions(vs), entry.version, blobs[op.prior_vector])
        remember(vs, attrs, entry, limit)
        attrs.text, attrs.valid_from, attrs.text_sources = op.text, p.valid_from, {sid}
        if op.memory_type then
          mem.recategorize(vs, op.target, attrs.memory_type, op.memory_type)
          attrs.memory_type = op.memory_type
        end
        mem.index(vs, op.target, attrs.memory_type, p.valid_from)  -- now said at this session's time
        if op.confidence then attrs.confidence = op.confidence end
        if #as_list(op.tags) > 0 then attrs.tags = op.tags end
        blob = blobs[op.vector]
        counts.updated = counts.updated + 1
      else  -- retract: the user withdrew it; kept, no longer current
        if type(op.text) == 'string' then entry.text = op.text end
        remember(vs, attrs, entry, limit)
        attrs.status, attrs.valid_to, attrs.retracted_by = 'retracted', p.valid_from, sid
        counts.retracted = counts.retracted + 1
      end
      mem.put(b, vs, op.target, attrs, blob)
      touched(op.target)
    end
  end

  local all = as_list(s.memory_ids)
  for _, mid in ipairs(memids) do if not contains(all, mid) then all[#all + 1] = mid end end
  local raws = as_list(s.raw_memory_ids)
  if not contains(raws, id) then raws[#raws + 1] = id end
  s.session_id, s.vectorstore_name = sid, vs
  -- The session's state never moves backwards: only a submission at least as long as the one
  -- already processed sets the summary and the processed prefix.
  if p.processed_length >= (tonumber(s.processed_length) or 0) then
    if type(p.summary) == 'string' and p.summary ~= '' then s.summary = p.summary end
    if #topics > 0 then s.topics = topics end
    s.processed_length, s.processed_sha256, s.processed_raw_id = p.processed_length, p.processed_sha256, id
  end
  s.memory_ids, s.memory_count, s.raw_memory_ids = all, #all, raws
  s.created_at = s.created_at or now
  s.updated_at = now
  s.tokens_in = (tonumber(s.tokens_in) or 0) + p.tokens_in
  s.tokens_out = (tonumber(s.tokens_out) or 0) + p.tokens_out
  local sttl = p.session_retention
  redis.call('SET', k.session_summary(vs, sid), cjson.encode(s), 'EX', sttl)
  -- A session's memory ids live as long as the memories (permanent), so erasing the session
  -- finds them at any age.
  local mkey = k.session_memories(vs, sid)
  if #memids > 0 then redis.call('SADD', mkey, unpack(memids)) end
  redis.call('PERSIST', mkey)
  redis.call('EXPIRE', k.session_raws(vs, sid), sttl)
  redis.call('ZADD', k.session_index(vs), now, sid)

  local key = k.raw(vs, id)
  redis.call('HSET', key, 'status', 'processed', 'processed_at', string.format('%.6f', now),
    'memories_created', counts.created, 'memories_merged', counts.merged, 'memories_updated', counts.updated,
    'memories_superseded', counts.superseded, 'memories_retracted', counts.retracted,
    'memory_ids', cjson.encode(memids), 'tokens_in', p.tokens_in, 'tokens_out', p.tokens_out,
    'processing_ms', p.processing_ms, 'extraction_mode', p.mode)
  redis.call('HDEL', key, 'lease_deadline', 'last_error')
  local expires = retained_until(h[4], h[7], p.raw_retention)
  redis.call('EXPIREAT', key, expires)
  if h[5] then redis.call('EXPIREAT', k.dedupe(vs, h[5]), expires) end
  release(vs, id)
  leave_line(vs, id, sid)
  bump(vs, now, {processed_count = 1, memories_created = counts.created, memories_merged = counts.merged,
    memories_updated = counts.updated, memories_superseded = counts.superseded,
    memories_retracted = counts.retracted, tokens_in = p.tokens_in, tokens_out = p.tokens_out,
    processing_ms = p.processing_ms})
  local stamp = string.format('%.6f', now)
  for _, stats_key in ipairs({STATS_PREFIX .. ymd(now), k.daily_stats(vs, ymd(now))}) do
    redis.call('HSET', stats_key, 'last_processed_at', stamp)
  end
  redis.call('HINCRBY', STATUS, 'processed_count', 1)
  redis.call('HSET', STATUS, 'last_processed_at', stamp)
  redis.call('HINCRBY', k.counters(vs), 'processed', 1)
  return {'ok', counts.created, counts.merged, memids, counts.updated, counts.superseded, counts.retracted}
end}
