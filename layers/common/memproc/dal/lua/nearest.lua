-- Nearest neighbours in a vector set, from inside the library (the Query Engine's KNN stays a
-- pipeline, see memory_index/search.py): several VSIM in one read-only call, where a pipeline cost
-- the processor one command to pack and one reply to parse and convert per query vector.
-- See: https://redis.io/docs/latest/develop/data-types/vector-sets/ (VSIM)

-- Every vector's VSIM ... COUNT count WITHSCORES [FILTER filter] on `vs`, vectors being argv[first..]:
-- a list of flat {id, score, ...} replies, best first, scores as VSIM gives them.
local function vsim_each(vs, count, filter, argv, first)
  local query = {'VSIM', vs, 'FP32', '', 'COUNT', count, 'WITHSCORES'}
  if filter ~= '' then query[8], query[9] = 'FILTER', filter end
  local out = {}
  for i = first, #argv do
    query[4] = argv[i]
    out[#out + 1] = redis.call(unpack(query))
  end
  return out
end

-- ARGV: vs, count per vector, FILTER expression ('' for none), then the FP32 vectors.
redis.register_function{function_name = 'nearest___VERSION__', flags = {'no-writes', 'allow-cross-slot-keys'},
  callback = function(keys, argv)
  return vsim_each(argv[1], argv[2], argv[3], argv, 4)
end}

-- The memories a session may be about: the vectorstore's memory state, every query vector's VSIM,
-- each memory's best similarity, the best `limit` memories and their attributes, in one call.
-- It ranks as memory_index/base.py `rank` does for the Query Engine: best similarity first, a tie
-- in the order the memories first appeared (query vector by query vector, best hit first).
-- ARGV: vs, count per vector, limit, FILTER expression ('' for none), then the FP32 vectors.
-- Returns mem.state's four, the number of distinct memories found and {id, score, attributes, ...}.
-- Vectors of another dimension than
-- the vectorstore's run no VSIM: the caller sees the mismatch in the state.
redis.register_function{function_name = 'related___VERSION__', flags = {'no-writes', 'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local vs, limit = argv[1], tonumber(argv[3])
  local state = mem.state(vs)
  local dims = tonumber(state[4])
  if state[2] == 0 or #argv < 5 or (dims and #argv[5] ~= 4 * dims) then
    state[5], state[6] = 0, {}
    return state
  end
  local best, raw, first, ids = {}, {}, {}, {}
  for _, flat in ipairs(vsim_each(vs, argv[2], argv[4], argv, 5)) do
    for j = 1, #flat, 2 do
      local id, sim = flat[j], 2 * tonumber(flat[j + 1]) - 1  -- the cosine, as vectorset.py computes it
      if not best[id] then
        ids[#ids + 1] = id
        first[id], best[id], raw[id] = #ids, sim, flat[j + 1]
      elseif sim > best[id] then
        best[id], raw[id] = sim, flat[j + 1]
      end
    end
  end
  table.sort(ids, function(a, b)
    if best[a] ~= best[b] then return best[a] > best[b] end
    return first[a] < first[b]
  end)
  local out = {}
  for i = 1, math.min(limit, #ids) do
    local attrs = redis.call('VGETATTR', vs, ids[i])
    if attrs then
      out[#out + 1] = ids[i]
      out[#out + 1] = raw[ids[i]]
      out[#out + 1] = attrs
    end
  end
  state[5], state[6] = #ids, out
  return state
end}
