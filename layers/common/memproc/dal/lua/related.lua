-- Reconciliation's lookup (memory_index/vectorset.py `related`): the attributes of the memories
-- ranked best, after their VSIMs. Those stay plain commands, never in here: the vector-set module
-- runs a VSIM sent as a command on its worker threads, but one called from a script, a function
-- or MULTI on the main thread, stalling every other client for as long as the search takes.
-- VGETATTR is O(1): a call of thirty blocks nobody, and costs the processor one command to pack
-- and one reply to parse where a pipeline cost one per memory.
-- See: https://redis.io/docs/latest/develop/data-types/vector-sets/ (VSIM, VGETATTR)

-- ARGV: vs, then the element ids.  Returns each one's attributes JSON (nil where it is gone: false
-- in Lua, as a nil would end the array).
redis.register_function{function_name = 'attributes___VERSION__', flags = {'no-writes', 'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local vs, out = argv[1], {}
  for i = 2, #argv do out[i - 1] = redis.call('VGETATTR', vs, argv[i]) or false end
  return out
end}
