-- Erasure of one memory, one session or a whole vectorstore.
-- Erasure runs here so it is atomic: a processor still holding a lease on an erased raw memory
-- is fenced out by `commit`/`fail` (the raw hash is gone, so they return 'stale' and write
-- nothing). Every erasure is flagged allow-oom and deletes before it rewrites references, so an
-- operator can free memory and honour an erasure request on a store at maxmemory.
-- See: https://redis.io/docs/latest/develop/programmability/functions-intro/#function-flags

-- Drop memory id `mid` from a session's cross-references (memory set and summary), keeping TTLs.
-- The summary's prose may state the erased fact: it is cleared and the summary marked redacted.
local function unlink_session_memory(vs, sid, mid, now)
  redis.call('SREM', k.session_memories(vs, sid), mid)
  local skey = k.session_summary(vs, sid)
  local text = redis.call('GET', skey)
  if not text then return end
  local s = json_object(text)
  s.memory_ids = without(s.memory_ids, mid)
  s.memory_count = #s.memory_ids
  s.summary, s.topics, s.redacted_at = nil, {}, now
  redis.call('SET', skey, cjson.encode(s), 'KEEPTTL')
end

local function unlink_raw_memory(vs, rid, mid)
  local key = k.raw(vs, rid)
  local list = json_list(redis.call('HGET', key, 'memory_ids'))
  local kept = without(list, mid)
  if #kept ~= #list then redis.call('HSET', key, 'memory_ids', cjson.encode(kept)) end
end

-- The sessions whose statement a history entry records: the text an update replaced names them;
-- a restatement or a withdrawal is its own session's.
local function stated_by(entry)
  if type(entry.stated_by) == 'table' then return as_list(entry.stated_by) end
  return {entry.session_id}
end

-- The stored vectors of texts a memory's updates replaced go with the memory.
local function drop_versions(vs, history)
  for _, entry in ipairs(as_list(history)) do
    if type(entry) == 'table' and type(entry.version) == 'string' then
      redis.call('HDEL', k.memory_versions(vs), entry.version)
    end
  end
end

-- DELETE one memory: the memory (its history with it), its index entry and every reference to it;
-- summaries of its sessions lose their prose; with purge_sources, the transcripts it came from go.
-- ARGV: vs, memory id, backend, purge sources (1/0).
-- Returns {'not_found'} or {'ok', sessions updated, raws updated, transcripts purged}.
redis.register_function{function_name = 'erase_memory___VERSION__', flags = {'allow-oom', 'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local vs, mid, b, purge = argv[1], argv[2], argv[3], argv[4] == '1'
  local attrs = mem.get(b, vs, mid)
  if not attrs then return {'not_found'} end
  local now = now_s()
  mem.del(b, vs, mid)
  mem.unindex(vs, mid, attrs.memory_type)
  drop_versions(vs, attrs.history)
  -- A memory it superseded stays superseded (that was true), but no longer points at it.
  if type(attrs.supersedes) == 'string' then
    local old = mem.get(b, vs, attrs.supersedes)
    if old and old.superseded_by == mid then old.superseded_by = nil; mem.put(b, vs, attrs.supersedes, old, nil) end
  end
  local sessions = as_list(attrs.source_sessions)
  if type(attrs.session_id) == 'string' and not contains(sessions, attrs.session_id) then
    sessions[#sessions + 1] = attrs.session_id
  end
  local raws = as_list(attrs.source_raw_ids)
  if type(attrs.raw_memory_id) == 'string' and not contains(raws, attrs.raw_memory_id) then
    raws[#raws + 1] = attrs.raw_memory_id
  end
  for _, sid in ipairs(sessions) do unlink_session_memory(vs, sid, mid, now) end
  local purged = 0
  for _, rid in ipairs(raws) do
    if purge and redis.call('HGET', k.raw(vs, rid), 'status') == 'processed' then
      local counts = {raw_memories = 0, queue_entries = 0, dedupe_keys = 0}
      purge_raw(vs, rid, nil, counts)
      purged = purged + counts.raw_memories
    else
      unlink_raw_memory(vs, rid, mid)
    end
  end
  return {'ok', #sessions, #raws, purged}
end}

-- DELETE one session: its raw memories (wherever they are in the queue), summary, memory set,
-- raw index, dedupe keys and index entries, and what it stated in memories (below).
-- ARGV: vs, session id, backend.
-- Returns a JSON receipt or 'not_found'.
redis.register_function{function_name = 'erase_session___VERSION__', flags = {'allow-oom', 'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local vs, sid, b = argv[1], argv[2], argv[3]
  local skey, mkey, rkey = k.session_summary(vs, sid), k.session_memories(vs, sid),
    k.session_raws(vs, sid)
  local text = redis.call('GET', skey)
  local s = json_object(text)
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
  local indexed = redis.call('ZSCORE', k.session_index(vs), sid)
  if not text and not indexed and #raw_ids == 0 and #mids == 0 then return 'not_found' end

  local now = now_s()
  local counts = {raw_memories = 0, queue_entries = 0, dedupe_keys = 0, memories = 0,
    memories_updated = 0, sessions = 0, summaries = 0}
  for _, id in ipairs(raw_ids) do
    local owner = redis.call('HGET', k.raw(vs, id), 'session_id')
    if owner == false or owner == sid then  -- never touch another session's record
      local produced = purge_raw(vs, id, sid, counts)
      for _, mid in ipairs(produced) do add_mid(mid) end
    end
  end
  counts.summaries = redis.call('DEL', skey)
  redis.call('DEL', mkey, rkey, k.session_queue(vs, sid))
  counts.sessions = 1
  redis.call('ZREM', k.session_index(vs), sid)
  -- What the session stated is undone: memories only it stated go (one it superseded holds
  -- again), an update it made gives way to the text it replaced (with that text's vector), a
  -- withdrawal it made is withdrawn, and its statements leave every history.
  local versions, seq = k.memory_versions(vs), nil
  local function next_seq()
    seq = seq or redis.call('HINCRBY', k.config(vs), 'memory_seq', 1)
    return seq
  end
  for _, mid in ipairs(mids) do
    local attrs = mem.get(b, vs, mid)
    if attrs then
      local sources = as_list(attrs.source_sessions)
      if contains(sources, sid) or attrs.session_id == sid then
        sources = without(sources, sid)
        local history = {}
        for _, entry in ipairs(as_list(attrs.history)) do
          if type(entry) == 'table' then
            local by = without(stated_by(entry), sid)
            if #by == 0 then
              if type(entry.version) == 'string' then redis.call('HDEL', versions, entry.version) end
            else
              if type(entry.stated_by) == 'table' then entry.stated_by = by end
              if entry.session_id == sid then entry.session_id = nil end
              history[#history + 1] = entry
            end
          end
        end
        attrs.history = history
        local text_by = attrs.text_sources and without(attrs.text_sources, sid)
        local blob = nil
        if text_by and #text_by == 0 then
          for i = #history, 1, -1 do
            local entry = history[i]
            blob = entry.op == 'update' and type(entry.version) == 'string' and redis.call('HGET', versions, entry.version)
            if blob then
              attrs.text, attrs.text_sources = entry.text, entry.stated_by
              attrs.valid_from = entry.was_valid_from or attrs.valid_from
              if type(entry.was_memory_type) == 'string' then
                mem.recategorize(vs, mid, attrs.memory_type, entry.was_memory_type)
                attrs.memory_type = entry.was_memory_type
              end
              table.remove(history, i)
              redis.call('HDEL', versions, entry.version)
              break
            end
          end
        end
        if #sources == 0 or (text_by and #text_by == 0 and not blob) then
          mem.del(b, vs, mid)
          mem.unindex(vs, mid, attrs.memory_type)
          drop_versions(vs, history)
          if type(attrs.supersedes) == 'string' then
            local old = mem.get(b, vs, attrs.supersedes)
            if old and old.superseded_by == mid and old.status == 'superseded' then
              old.status, old.valid_to, old.superseded_by, old.seq = 'current', nil, nil, next_seq()
              mem.put(b, vs, attrs.supersedes, old, nil)
            end
          end
          counts.memories = counts.memories + 1
        else
          if blob then
            attrs.seq = next_seq()
            mem.index(vs, mid, attrs.memory_type, attrs.valid_from or 0)
          elseif text_by then
            attrs.text_sources = text_by
          end
          if attrs.status == 'retracted' and attrs.retracted_by == sid then
            attrs.status, attrs.valid_to, attrs.retracted_by, attrs.seq = 'current', nil, nil, next_seq()
          end
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
          mem.put(b, vs, mid, attrs, blob or nil)
          counts.memories_updated = counts.memories_updated + 1
        end
      end
    end
  end
  if redis.call('ZCARD', k.pending(vs)) == 0 then redis.call('ZREM', READY, vs) end
  return cjson.encode(counts)
end}

-- DELETE a whole vectorstore, in bounded steps: each call removes up to `batch` raw memories
-- and `batch` sessions; the call that finds the indexes empty removes the vector set and the
-- remaining per-vectorstore keys (memories one hash each on the Query Engine, `batch` per call).
-- ARGV: vs, batch, stats days to delete, backend.
-- Returns a JSON receipt with `complete`, or 'not_found' when nothing of it exists.
redis.register_function{function_name = 'erase_vectorstore___VERSION__', flags = {'allow-oom', 'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local vs, batch, days, b = argv[1], tonumber(argv[2]), tonumber(argv[3]), argv[4]
  local ranked = {k.raw_index(vs), k.pending(vs), k.inflight(vs), k.dead(vs), k.session_index(vs)}
  local known = redis.call('ZSCORE', VECTORSTORES, vs) or redis.call('EXISTS', vs, k.config(vs),
    k.counters(vs), k.memory_index(vs), unpack(ranked)) > 0
  if not known then return 'not_found' end
  local counts = {raw_memories = 0, queue_entries = 0, dedupe_keys = 0, memories = 0,
    memories_updated = 0, sessions = 0, summaries = 0, complete = false}
  local function drop_session(sid)
    counts.summaries = counts.summaries + redis.call('DEL', k.session_summary(vs, sid))
    redis.call('DEL', k.session_memories(vs, sid), k.session_raws(vs, sid), k.session_queue(vs, sid))
    if redis.call('ZREM', k.session_index(vs), sid) == 1 then counts.sessions = counts.sessions + 1 end
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
  for _, sid in ipairs(redis.call('ZRANGE', k.session_index(vs), 0, batch - 1)) do drop_session(sid) end
  if b == 'search' then
    for _, mid in ipairs(redis.call('ZRANGE', k.memory_index(vs), 0, batch - 1)) do
      counts.memories = counts.memories + mem.del(b, vs, mid)
      redis.call('ZREM', k.memory_index(vs), mid)
    end
    ranked[#ranked + 1] = k.memory_index(vs)
  end
  for _, key in ipairs(ranked) do
    if redis.call('EXISTS', key) == 1 then return cjson.encode(counts) end
  end
  if b ~= 'search' then counts.memories = redis.call('ZCARD', k.memory_index(vs)) end
  redis.call('UNLINK', vs, k.memory_index(vs), k.memory_versions(vs), k.config(vs), k.counters(vs),
    k.cleanup(vs), k.queued_sessions(vs), k.reembed(vs), k.reembed_todo(vs), k.migration(vs),
    unpack(mem.category_keys(vs)))
  local now = now_s()
  for d = 0, days do redis.call('DEL', k.daily_stats(vs, ymd(now - d * 86400))) end
  redis.call('ZREM', VECTORSTORES, vs)
  redis.call('ZREM', READY, vs)
  counts.complete = true
  return cjson.encode(counts)
end}
