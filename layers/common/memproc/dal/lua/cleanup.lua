-- Retention and index maintenance. Cleanup never deletes anything but processed raw memories and
-- index entries whose record is gone; queued, in-flight and dead items are only ever put back
-- where they belong.

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
  queued = {k.pending, QUEUE, 'next_attempt_at', 'requeued'},
  -- Back in flight with its lease: a live worker may still commit, and once the lease passes the
  -- reaper re-queues it (or buries it after its last attempt) as for any expired lease.
  processing = {k.inflight, INFLIGHT, 'lease_deadline', 'restored_in_flight'},
  error = {k.dead, DEAD, 'dead_at', 'restored_dead'},
}

-- A parked item (queued behind an earlier submission of its session) whose session queue no
-- longer starts with a live submission: the one in front was lost or left without moving the
-- line on. Let the line move (which re-queues the first waiting item).
local function stuck_line(vs, id, dry)
  local sid = redis.call('HGET', k.queued_sessions(vs), id)
  if not sid then return nil end
  local first = redis.call('ZRANGE', k.session_queue(vs, sid), 0, 0)[1]
  if not first or first == id then return nil end
  local status = redis.call('HGET', k.raw(vs, first), 'status')
  if status == 'queued' or status == 'processing' then return nil end
  if not dry then leave_line(vs, first, sid) end
  return 'unparked'
end

local function reconcile(vs, id, status, now, dry)
  local home = HOMES[status]
  if not home then return nil end
  local key = k.raw(vs, id)
  local mine = redis.call('ZSCORE', home[1](vs), id)
  local global = redis.call('ZSCORE', home[2], key)
  if status == 'queued' and tonumber(mine or '0') == PARKED then return stuck_line(vs, id, dry) end
  if mine and global then return nil end
  if not dry then
    local at = tonumber(mine or global or redis.call('HGET', key, home[3]) or '') or now
    if status == 'queued' then
      local sid = redis.call('HGET', k.queued_sessions(vs), id)
      local first = sid and redis.call('ZRANGE', k.session_queue(vs, sid), 0, 0)[1]
      if first and first ~= id then park(vs, id) else enqueue_at(vs, id, at) end
    else
      redis.call('ZADD', home[2], at, key)
      redis.call('ZADD', home[1](vs), at, id)
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
--  memories: a rolling walk over memory_index (entries whose memory is gone; memories missing
--    from their category listing are listed again).
-- Cursors live in {vs}:cleanup; a dry run reads them but writes nothing.
-- ARGV: vs, retention seconds, limit, dry (1/0), backend.  Returns a JSON receipt.
-- Flagged allow-oom: on a store at maxmemory it must still run to free memory (it deletes before
-- it writes its cursors). See: https://redis.io/docs/latest/develop/programmability/functions-intro/
redis.register_function{function_name = 'cleanup___VERSION__', flags = {'allow-oom', 'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local vs, retention, n, dry, b = argv[1], tonumber(argv[2]), tonumber(argv[3]), argv[4] == '1', argv[5]
  local state = k.cleanup(vs)
  local now = now_s()
  local cutoff = now - retention
  local deleted = {}
  local trimmed = {raw_index = 0, session_index = 0, session_raws = 0, memory_index = 0}
  local repaired = {requeued = 0, restored_in_flight = 0, restored_dead = 0, ready = 0, unparked = 0,
    category_indexed = 0}
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

  examined.retention, done.retention = pass(state, 'retention', k.raw_index(vs), cutoff, n, dry,
    function(id, score)
      seen[id] = true
      local key = k.raw(vs, id)
      local h = redis.call('HMGET', key, 'status', 'session_id', 'created_at', 'redriven_at')
      if not h[1] then
        trim('raw_index', k.raw_index(vs), id)
      elseif h[1] == 'processed' and retained_until(h[3] or score, h[4], 0) < cutoff
          and not queued_anywhere(vs, id) then
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

  examined.reconcile, done.reconcile = pass(state, 'reconcile', k.raw_index(vs), '+inf', n, dry,
    function(id)
      if seen[id] then return end
      local status = redis.call('HGET', k.raw(vs, id), 'status')
      if not status then trim('raw_index', k.raw_index(vs), id) else repair(id, status) end
    end)

  examined.sessions, done.sessions = pass(state, 'sessions', k.session_index(vs), '+inf', n, dry,
    function(sid)
      local rkey = k.session_raws(vs, sid)
      for _, id in ipairs(redis.call('ZRANGE', rkey, 0, 99)) do
        if redis.call('EXISTS', k.raw(vs, id)) == 0 then trim('session_raws', rkey, id) end
      end
      -- A session stays indexed while its summary or any of its (permanent) memories exists, so
      -- erasing the vectorstore finds every session's keys at any age.
      if redis.call('EXISTS', k.session_summary(vs, sid), k.session_memories(vs, sid)) == 0 then
        trim('session_index', k.session_index(vs), sid)
      end
    end)

  examined.memories, done.memories = pass(state, 'memories', k.memory_index(vs), '+inf', n, dry,
    function(mid, score)
      local attrs = mem.get(b, vs, mid)
      if not attrs then
        trim('memory_index', k.memory_index(vs), mid)
        for _, key in ipairs(mem.category_keys(vs)) do
          if not dry then redis.call('ZREM', key, mid) end
        end
      elseif CATEGORY[attrs.memory_type]
          and not redis.call('ZSCORE', k.category_index(vs, attrs.memory_type), mid) then
        -- Written before category listings existed (or the listing lost it): listed again.
        repaired.category_indexed = repaired.category_indexed + 1
        if not dry then redis.call('ZADD', k.category_index(vs, attrs.memory_type), score, mid) end
      end
    end)

  -- A vectorstore with waiting items must be in the ready set, or no claim ever serves it (items
  -- parked behind their session's in-flight one get a turn when that one is done).
  local head = redis.call('ZRANGE', k.pending(vs), 0, 0, 'WITHSCORES')
  if #head > 0 and tonumber(head[2]) ~= PARKED and not redis.call('ZSCORE', READY, vs) then
    repaired.ready = 1
    if not dry then redis.call('ZADD', READY, head[2], vs) end
  end
  return cjson.encode({now = now, cutoff = cutoff, deleted = deleted, trimmed = trimmed,
    reconciled = repaired, examined = examined, complete = done, live_kept = kept_live})
end}
