-- Erasure of one memory, one session or a whole vectorstore.
-- Erasure runs here so it is atomic: a processor still holding a lease on an erased raw memory
-- is fenced out by `commit`/`fail` (the raw hash is gone, so they return 'stale' and write
-- nothing). Every erasure is flagged allow-oom and deletes before it rewrites references, so an
-- operator can free memory and honour an erasure request on a store at maxmemory.
-- See: https://redis.io/docs/latest/develop/programmability/functions-intro/#function-flags

-- Drop memory id `mid` from a session's cross-references (memory set and summary), keeping TTLs.
local function unlink_session_memory(vs, sid, mid)
  redis.call('SREM', k.session_memories(vs, sid), mid)
  local skey = k.session_summary(vs, sid)
  local text = redis.call('GET', skey)
  if not text then return end
  local s = json_object(text)
  local before = #as_list(s.memory_ids)
  s.memory_ids = without(s.memory_ids, mid)
  if #s.memory_ids ~= before then
    s.memory_count = #s.memory_ids
    redis.call('SET', skey, cjson.encode(s), 'KEEPTTL')
  end
end

local function unlink_raw_memory(vs, rid, mid)
  local key = k.raw(vs, rid)
  local list = json_list(redis.call('HGET', key, 'memory_ids'))
  local kept = without(list, mid)
  if #kept ~= #list then redis.call('HSET', key, 'memory_ids', cjson.encode(kept)) end
end

-- DELETE one memory: the vector set element, its index entry and every reference to it.
-- ARGV: vs, memory id.  Returns {'not_found'} or {'ok', sessions updated, raws updated}.
redis.register_function{function_name = 'erase_memory___VERSION__', flags = {'allow-oom'},
  callback = function(keys, argv)
  local vs, mid = argv[1], argv[2]
  if redis.call('VISMEMBER', vs, mid) == 0 then return {'not_found'} end
  local attrs = json_object(redis.call('VGETATTR', vs, mid))
  redis.call('VREM', vs, mid)
  redis.call('ZREM', k.memory_index(vs), mid)
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
  return {'ok', #sessions, #raws}
end}

-- DELETE one session: its raw memories (wherever they are in the queue), summary, memory set,
-- raw index, dedupe keys and index entries; memories that came only from it are removed, shared
-- ones lose it as a source.  ARGV: vs, session id.  Returns a JSON receipt or 'not_found'.
redis.register_function{function_name = 'erase_session___VERSION__', flags = {'allow-oom'},
  callback = function(keys, argv)
  local vs, sid = argv[1], argv[2]
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
  for _, mid in ipairs(mids) do
    local a = redis.call('VGETATTR', vs, mid)
    if a then
      local attrs = json_object(a)
      local sources = as_list(attrs.source_sessions)
      if contains(sources, sid) or attrs.session_id == sid then
        sources = without(sources, sid)
        if #sources == 0 then
          redis.call('VREM', vs, mid)
          redis.call('ZREM', k.memory_index(vs), mid)
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
  if redis.call('ZCARD', k.pending(vs)) == 0 then redis.call('ZREM', READY, vs) end
  return cjson.encode(counts)
end}

-- DELETE a whole vectorstore, in bounded steps: each call removes up to `batch` raw memories
-- and `batch` sessions; the call that finds the indexes empty removes the vector set and the
-- remaining per-vectorstore keys.  ARGV: vs, batch, stats days to delete.
-- Returns a JSON receipt with `complete`, or 'not_found' when nothing of it exists.
redis.register_function{function_name = 'erase_vectorstore___VERSION__', flags = {'allow-oom'},
  callback = function(keys, argv)
  local vs, batch, days = argv[1], tonumber(argv[2]), tonumber(argv[3])
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
  for _, key in ipairs(ranked) do
    if redis.call('EXISTS', key) == 1 then return cjson.encode(counts) end
  end
  counts.memories = redis.call('VCARD', vs)
  redis.call('UNLINK', vs, k.memory_index(vs), k.config(vs), k.counters(vs), k.cleanup(vs),
    k.queued_sessions(vs))
  local now = now_s()
  for d = 0, days do redis.call('DEL', k.daily_stats(vs, ymd(now - d * 86400))) end
  redis.call('ZREM', VECTORSTORES, vs)
  redis.call('ZREM', READY, vs)
  counts.complete = true
  return cjson.encode(counts)
end}
