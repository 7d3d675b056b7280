-- The memory index from inside the library: one record shape (JSON attributes), two engines.
--  'vectorset': a Redis 8 vector set at the bare vectorstore name; the attributes are the record,
--    and vector-set FILTERs read them.
--  'search': one hash per memory, memproc:mem:{<vs>}:<id>, indexed by ONE Query-Engine index for
--    the deployment: the record as `attrs`, the vector as `vec`, and the fields queries filter on
--    (vs, status, memory_type, sessions, valid_from). Writes are plain HSETs the engine indexes.
-- Reads for search (KNN) never run here: module commands inside scripts are not something to rely
-- on across engines, so candidates are looked up before the commit (see memory_index/search.py).

local mem = {}

function mem.get(b, vs, id)
  local text
  if b == 'search' then text = redis.call('HGET', k.mem(vs, id), 'attrs') else text = redis.call('VGETATTR', vs, id) end
  if not text then return nil end
  return json_object(text)
end

-- Write a record; `blob` (FP32 vector) is needed for a new memory or a changed text, else nil.
function mem.put(b, vs, id, attrs, blob)
  mem.put_json(b, vs, id, cjson.encode(attrs), attrs, blob)
end

-- Write a record given as JSON text (`attrs` is that text decoded, for the fields search filters
-- on): a migrated record is stored byte for byte as the other backend held it.
function mem.put_json(b, vs, id, json, attrs, blob)
  if b == 'search' then
    local sessions = table.concat(as_list(attrs.source_sessions), ',')
    local fields = {'attrs', json, 'vs', vs, 'status', attrs.status or 'current',
      'memory_type', attrs.memory_type or '', 'sessions', sessions, 'valid_from', attrs.valid_from or 0}
    if blob then fields[#fields + 1] = 'vec'; fields[#fields + 1] = blob end
    redis.call('HSET', k.mem(vs, id), unpack(fields))
  elseif blob then
    redis.call('VADD', vs, 'FP32', blob, id, 'SETATTR', json)
  else
    redis.call('VSETATTR', vs, id, json)
  end
end

-- A record as stored: its JSON text and its vector as FP32 bytes (nil, nil when it is gone). A
-- vector set hands back its (quantised) vector as numbers, packed here the way VADD takes them.
function mem.raw(b, vs, id)
  if b == 'search' then
    local h = redis.call('HMGET', k.mem(vs, id), 'attrs', 'vec')
    if not h[1] then return nil, nil end
    return h[1], h[2] or nil
  end
  local text = redis.call('VGETATTR', vs, id)
  if not text then return nil, nil end
  local v = redis.call('VEMB', vs, id)
  if type(v) ~= 'table' or #v == 0 then return text, nil end
  return text, struct.pack('<' .. string.rep('f', #v), unpack(v))
end

-- What reconciliation decides against (memory_index/base.py MemoryState): the vectorstore's memory
-- sequence, how many memories it has, and what embeds them ('' for a config field not set).
function mem.state(vs)
  local cfg = redis.call('HMGET', k.config(vs), 'memory_seq', 'embedding_model', 'dimensions')
  return {cfg[1] or '', redis.call('ZCARD', k.memory_index(vs)), cfg[2] or '', cfg[3] or ''}
end

function mem.del(b, vs, id)
  if b == 'search' then return redis.call('DEL', k.mem(vs, id)) end
  return redis.call('VREM', vs, id)
end

function mem.exists(b, vs, id)
  if b == 'search' then return redis.call('EXISTS', k.mem(vs, id)) == 1 end
  return redis.call('VISMEMBER', vs, id) == 1
end

-- The listings beside the engine: memory_index (every memory, score = when it was said) and, per
-- memory type, category_index:<type> with the same scores, so the hierarchy can page and count
-- one category by index range (ZRANGE / ZCOUNT) as it does all of them.
-- CATEGORIES and CATEGORY (the same as a set) come with the generated key builders.
function mem.index(vs, id, memory_type, score)
  redis.call('ZADD', k.memory_index(vs), score, id)
  if CATEGORY[memory_type] then redis.call('ZADD', k.category_index(vs, memory_type), score, id) end
end

function mem.unindex(vs, id, memory_type)
  redis.call('ZREM', k.memory_index(vs), id)
  if CATEGORY[memory_type] then redis.call('ZREM', k.category_index(vs, memory_type), id) end
end

-- A memory whose type changed moves to its new category's listing, at the same score.
function mem.recategorize(vs, id, old_type, new_type)
  if old_type == new_type then return end
  local score = redis.call('ZSCORE', k.memory_index(vs), id)
  if CATEGORY[old_type] then redis.call('ZREM', k.category_index(vs, old_type), id) end
  if score and CATEGORY[new_type] then redis.call('ZADD', k.category_index(vs, new_type), score, id) end
end

-- Every category listing's key (erasing a vectorstore unlinks them all).
function mem.category_keys(vs)
  local out = {}
  for i, c in ipairs(CATEGORIES) do out[i] = k.category_index(vs, c) end
  return out
end

-- MEMORY USAGE of the engine's storage: the vector set, or the first `samples` hashes scaled up.
function mem.bytes(b, vs, samples)
  if b ~= 'search' then return tonumber(redis.call('MEMORY', 'USAGE', vs) or 0) or 0 end
  local ids = redis.call('ZRANGE', k.memory_index(vs), 0, samples - 1, 'REV')
  if #ids == 0 then return 0 end
  local total = 0
  for _, id in ipairs(ids) do total = total + (tonumber(redis.call('MEMORY', 'USAGE', k.mem(vs, id)) or 0) or 0) end
  return math.floor(total / #ids * redis.call('ZCARD', k.memory_index(vs)))
end
