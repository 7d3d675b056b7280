-- Moving a vectorstore's memories to the other memory-index backend (`memproc migrate`): records
-- read as one backend stores them and written as the other stores them, through mem.raw and
-- mem.put_json, so each backend's layout stays in memories.lua. Everything else of a vectorstore
-- is the same in both backends and is copied key by key (dal/migration.py).

-- ARGV: vs, backend, memory ids. Returns per id {json, FP32 vector}, or {false, false} when gone.
-- Read-only (FCALL_RO): the source is never written, and may be a replica.
redis.register_function{function_name = 'export_memories___VERSION__', flags = {'no-writes'},
  callback = function(keys, argv)
  local vs, b = argv[1], argv[2]
  local out = {}
  for i = 3, #argv do
    local text, blob = mem.raw(b, vs, argv[i])
    out[#out + 1] = {text or false, blob or false}
  end
  return out
end}

-- ARGV: vs, backend, dimensions, then per memory: id, index score, json, FP32 vector. Writes each
-- record and its entries in the memory index and its type's category listing (mem.index, at the
-- memory-index score); a record written before (an interrupted run) is overwritten, never
-- duplicated: the id is the key. Refuses the whole batch before writing when a vector has
-- the wrong size or a record is not a JSON object.
redis.register_function{function_name = 'import_memories___VERSION__', flags = {'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local vs, b, dims = argv[1], argv[2], tonumber(argv[3])
  if b ~= 'vectorset' and b ~= 'search' then return redis.error_reply('ERR import names no memory backend') end
  local rows = {}
  for i = 4, #argv, 4 do
    local id, score, json, blob = argv[i], argv[i + 1], argv[i + 2], argv[i + 3]
    if not blob or #blob ~= 4 * dims then
      return redis.error_reply('ERR import: memory ' .. tostring(id) .. ' has no vector of ' .. dims .. ' dimensions')
    end
    local ok, attrs = pcall(cjson.decode, json or '')
    if not ok or type(attrs) ~= 'table' then
      return redis.error_reply('ERR import: memory ' .. tostring(id) .. ' is not a JSON object')
    end
    rows[#rows + 1] = {id, score, json, attrs, blob}
  end
  for _, row in ipairs(rows) do
    mem.put_json(b, vs, row[1], row[3], row[4], row[5])
    mem.index(vs, row[1], row[4].memory_type, row[2])
  end
  return #rows
end}
