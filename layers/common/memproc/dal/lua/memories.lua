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

function mem.del(b, vs, id)
  if b == 'search' then return redis.call('DEL', k.mem(vs, id)) end
  return redis.call('VREM', vs, id)
end

function mem.exists(b, vs, id)
  if b == 'search' then return redis.call('EXISTS', k.mem(vs, id)) == 1 end
  return redis.call('VISMEMBER', vs, id) == 1
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
