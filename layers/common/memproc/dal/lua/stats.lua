-- Everything GET /stats shows, read at one server time.  ARGV: vs, days, samples, backend.
-- Storage of raw memories and summaries is estimated from the newest `samples` of each.
redis.register_function{function_name = 'stats___VERSION__', flags = {'no-writes', 'allow-cross-slot-keys'},
  callback = function(keys, argv)
  local vs, days, samples, b = argv[1], tonumber(argv[2]), tonumber(argv[3]), argv[4]
  local now = now_s()
  local function usage(key) return tonumber(redis.call('MEMORY', 'USAGE', key) or 0) or 0 end
  local function sample(index, keyof)
    local total, n = 0, 0
    for _, m in ipairs(redis.call('ZRANGE', index, 0, samples - 1, 'REV')) do
      local bytes = redis.call('MEMORY', 'USAGE', keyof(m))
      if bytes then total, n = total + bytes, n + 1 end
    end
    return {total, n}
  end
  local index_bytes = {}
  for _, name in ipairs({'raw_index', 'session_index', 'memory_index', 'pending', 'inflight', 'dead',
      'config', 'counters', 'cleanup'}) do
    index_bytes[name] = usage(k[name](vs))
  end
  local daily = {}
  for d = days - 1, 0, -1 do
    local day = ymd(now - d * 86400)
    daily[#daily + 1] = {day, redis.call('HGETALL', k.daily_stats(vs, day))}
  end
  return cjson.encode({
    now = string.format('%.6f', now),
    memories = redis.call('ZCARD', k.memory_index(vs)),
    memory_index = redis.call('ZCARD', k.memory_index(vs)),
    sessions = redis.call('ZCARD', k.session_index(vs)),
    raw_index = redis.call('ZCARD', k.raw_index(vs)),
    pending = redis.call('ZCARD', k.pending(vs)),
    in_flight = redis.call('ZCARD', k.inflight(vs)),
    dead = redis.call('ZCARD', k.dead(vs)),
    counters = redis.call('HGETALL', k.counters(vs)),
    config = redis.call('HGETALL', k.config(vs)),
    vector_set_bytes = mem.bytes(b, vs, samples),
    index_bytes = index_bytes,
    raw_sample = sample(k.raw_index(vs), function(id) return k.raw(vs, id) end),
    summary_sample = sample(k.session_index(vs), function(sid) return k.session_summary(vs, sid) end),
    daily = daily,
  })
end}
