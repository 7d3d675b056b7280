"""Section 3, queries: hierarchy, session, stats and search latency (in-process handler calls) with
10k / 100k / 1M keys of other vectorstores loaded, and search with 1k vs many memories."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Callable
from typing import Any

from bench.common import (
    CITIES,
    FOODS,
    HOBBIES,
    JOBS,
    NAMES,
    PET_NAMES,
    PETS,
    RELATIVES,
    Config,
    FakeLLM,
    SectionResult,
    Target,
    app_commands,
    commandstats,
    configure_env,
    corpus,
    fresh_redis,
    make_chat,
    ms,
    say,
    summarize,
    table,
)
from bench.process import enqueue, timed_processor
from tests.round_trips import RoundTrips

DIMENSIONS = 128
VS = "bench-user"
KEYSPACES = (10_000, 100_000, 1_000_000)
SESSIONS_PER_FILLER = 10
KEYS_PER_FILLER = 5 * SESSIONS_PER_FILLER + 7  # see FILLER_LUA

# Other tenants, written the way memproc writes them: per session a processed raw hash (with its
# expiry), dedupe key, session_raws, session_summary and session_memories (2 memories); per
# vectorstore the raw/session/memory indexes, config, counters, daily stats and the vector set.
FILLER_LUA = """
local v0, v1, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local S, day = tonumber(ARGV[4]), ARGV[5]
local pool = cjson.decode(ARGV[6])
local nt, ns, nm, nb = #pool.transcripts, #pool.summaries, #pool.memories, #ARGV - 6
for v = v0, v1 - 1 do
  local vs = string.format('tenant%07d', v)
  local t = '{' .. vs .. '}'
  for s = 1, S do
    local rid = string.format('%016x%016x', v, s)
    local sid = 'sess-' .. s
    local created = now - (S - s) * 7200 - (v % 1000) * 60
    local stamp = string.format('%.6f', created)
    local transcript = pool.transcripts[(v * S + s) % nt + 1]
    local raw = t .. ':raw_memory:' .. rid
    local mids = {rid .. '-0', rid .. '-1'}
    redis.call('HSET', raw, 'raw_memory_id', rid, 'session_id', sid, 'session_data', transcript,
      'session_data_encoding', 'utf-8', 'metadata', '{"source":"app"}', 'vectorstore_name', vs,
      'created_at', stamp, 'status', 'processed', 'processing_attempts', 1, 'dedupe_digest', rid .. rid,
      'session_length', #transcript, 'processed_at', string.format('%.6f', created + 4),
      'memories_created', 2, 'memories_merged', 0, 'memory_ids', cjson.encode(mids), 'tokens_in', 1700,
      'tokens_out', 600, 'processing_ms', 300, 'extraction_mode', 'full')
    redis.call('EXPIREAT', raw, math.floor(created + 30 * 86400))
    redis.call('SET', t .. ':dedupe:' .. rid .. rid, rid, 'EXAT', math.floor(created + 30 * 86400))
    redis.call('ZADD', t .. ':raw_index', created, rid)
    redis.call('ZADD', t .. ':session_raws:' .. sid, created, rid)
    redis.call('EXPIRE', t .. ':session_raws:' .. sid, 365 * 86400)
    local summary = {session_id = sid, vectorstore_name = vs, summary = pool.summaries[(v + s) % ns + 1],
      topics = {'travel', 'food'}, memory_ids = mids, memory_count = 2, raw_memory_ids = {rid},
      created_at = created, updated_at = created, processed_length = #transcript,
      processed_sha256 = rid .. rid, tokens_in = 1700, tokens_out = 600}
    redis.call('SET', t .. ':session_summary:' .. sid, cjson.encode(summary), 'EX', 365 * 86400)
    redis.call('SADD', t .. ':session_memories:' .. sid, mids[1], mids[2])
    redis.call('EXPIRE', t .. ':session_memories:' .. sid, 365 * 86400)
    redis.call('ZADD', t .. ':session_index', created, sid)
    for m = 1, nb > 0 and 2 or 0 do  -- no vectors: the caller writes the memories (bench.backends)
      local attrs = {text = pool.memories[(v * 7 + s * 2 + m) % nm + 1], memory_type = 'fact',
        confidence = 0.6,
        session_id = sid, raw_memory_id = rid, created_at = created, updated_at = created,
        source_sessions = {sid}, source_raw_ids = {rid}, merge_count = 0, tags = {'travel'}}
      local blob = ARGV[6 + (v + s * 2 + m) % nb + 1]
      redis.call('VADD', vs, 'FP32', blob, mids[m], 'SETATTR', cjson.encode(attrs))
      redis.call('ZADD', t .. ':memory_index', created, mids[m])
    end
  end
  redis.call('HSET', t .. ':config', 'embedding_model', 'text-embedding-3-small', 'dimensions', 128,
    'created_at', string.format('%.6f', now))
  redis.call('HSET', t .. ':counters', 'received', S, 'processed', S)
  local st = t .. ':processing_stats:' .. day
  redis.call('HSET', st, 'processed_count', S, 'memories_created', 2 * S, 'tokens_in', 1700 * S,
    'tokens_out', 600 * S, 'processing_ms', 300 * S)
  redis.call('EXPIRE', st, 90 * 86400)
  redis.call('ZADD', 'memproc:vectorstores', now, vs)
end
return redis.call('DBSIZE')
"""

# More memories for the queried vectorstore, in sessions of 10, as the commit writes them.
GROW_LUA = """
local vs, now = ARGV[1], tonumber(ARGV[2])
local t = '{' .. vs .. '}'
local sessions = cjson.decode(ARGV[3])
local b = 3
for _, s in ipairs(sessions) do
  local raw = t .. ':raw_memory:' .. s.rid
  local stamp = string.format('%.6f', s.created)
  local mids = {}
  for i, m in ipairs(s.memories) do
    mids[i] = m.id
    if #ARGV > 3 then  -- no vectors: the caller writes the memories (bench.backends)
      b = b + 1
      redis.call('VADD', vs, 'FP32', ARGV[b], m.id, 'SETATTR', m.attrs)
      redis.call('ZADD', t .. ':memory_index', s.created, m.id)
    end
  end
  redis.call('HSET', raw, 'raw_memory_id', s.rid, 'session_id', s.sid, 'session_data', s.transcript,
    'session_data_encoding', 'utf-8', 'metadata', '{"source":"app"}', 'vectorstore_name', vs,
    'created_at', stamp, 'status', 'processed', 'processing_attempts', 1, 'dedupe_digest', s.rid .. s.rid,
    'session_length', #s.transcript, 'processed_at', stamp, 'memories_created', #mids, 'memories_merged', 0,
    'memory_ids', cjson.encode(mids), 'tokens_in', 1700, 'tokens_out', 600, 'processing_ms', 300,
    'extraction_mode', 'full')
  redis.call('EXPIREAT', raw, math.floor(s.created + 30 * 86400))
  redis.call('ZADD', t .. ':raw_index', s.created, s.rid)
  redis.call('ZADD', t .. ':session_raws:' .. s.sid, s.created, s.rid)
  redis.call('EXPIRE', t .. ':session_raws:' .. s.sid, 365 * 86400)
  redis.call('SET', t .. ':session_summary:' .. s.sid, s.summary, 'EX', 365 * 86400)
  redis.call('SADD', t .. ':session_memories:' .. s.sid, unpack(mids))
  redis.call('EXPIRE', t .. ':session_memories:' .. s.sid, 365 * 86400)
  redis.call('ZADD', t .. ':session_index', s.created, s.sid)
  redis.call('HINCRBY', t .. ':counters', 'received', 1)
  redis.call('HINCRBY', t .. ':counters', 'processed', 1)
end
return redis.call('ZCARD', t .. ':memory_index')
"""

VERBS = ("likes", "lives in", "works as a", "visited", "prefers", "is learning", "has a", "plans to visit")


def memory_text(rng: random.Random, sentences: list[str]) -> str:
    """A memory as the extraction would phrase it, with varied vocabulary."""
    what = rng.choice((CITIES, FOODS, HOBBIES, JOBS, PETS, NAMES, PET_NAMES, RELATIVES))
    tail = rng.choice(sentences)[: rng.randint(30, 90)]
    return f"The user {rng.choice(VERBS)} {rng.choice(what)} ({rng.choice(what)}); {tail}"


def unit_vectors(texts: list[str], seed: int) -> list[bytes]:
    """Embeddings for bulk-loaded memories: the fake LLM's embedding of the text (so query
    embeddings are in the same space) plus low-rank noise, like clustered real embeddings; FP32."""
    import numpy as np

    from tests.fake_openai import embedding

    rng = np.random.default_rng(seed)
    h = np.array([embedding(t, DIMENSIONS) for t in texts], dtype=np.float32)
    low = rng.standard_normal((len(texts), 16)) @ rng.standard_normal((16, DIMENSIONS))
    low /= np.linalg.norm(low, axis=1, keepdims=True)
    v = h + 0.7 * low.astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return [row.astype("<f4").tobytes() for row in v]


def load_filler(client: Any, script: Any, v0: int, v1: int, pool: str, blobs: list[bytes]) -> int:
    """Other tenants v0..v1-1, 400 per Lua call (about 23k keys, ~0.2 s of Redis time each)."""
    now = time.time()
    day = dt.datetime.now(dt.UTC).date().isoformat()
    size = 0
    for start in range(v0, v1, 400):
        size = int(
            script(
                args=[start, min(start + 400, v1), now, SESSIONS_PER_FILLER, day, pool, *blobs], client=client
            )
        )
    return size


MemoryRow = tuple[str, float, str, bytes]  # id, memory-index score, attributes JSON, FP32 vector


def grow(
    client: Any,
    script: Any,
    target: int,
    seed: int,
    sentences: list[str],
    chats: list[str],
    write_memories: Callable[[list[MemoryRow]], Any] | None = None,
) -> int:
    """Bulk-add memories to the queried vectorstore (sessions of 10) until it holds ``target``: in a
    vector set by the script, or by ``write_memories`` (either backend, bench.backends)."""
    rng = random.Random(seed)
    size = int(client.zcard("{" + VS + "}:memory_index"))
    batch = 0
    while size < target:
        n_sessions = min(100, (target - size + 9) // 10)
        sessions, texts = [], []
        now = time.time()
        for j in range(n_sessions):
            rid = f"{seed:08x}{batch:012x}{j:012x}"
            sid = f"bulk{seed}-{batch}-{j}"
            created = now - rng.uniform(0, 30 * 86400)
            memories = []
            for m in range(10):
                text = memory_text(rng, sentences)
                texts.append(text)
                attrs = {
                    "text": text,
                    "memory_type": rng.choice(("fact", "preference", "event", "insight")),
                    "confidence": 0.6,
                    "session_id": sid,
                    "raw_memory_id": rid,
                    "created_at": created,
                    "updated_at": created,
                    "source_sessions": [sid],
                    "source_raw_ids": [rid],
                    "merge_count": 0,
                    "tags": ["bench"],
                    "status": "current",  # as the commit writes it: search's current-only filter reads it
                    "valid_from": created,
                    "observed_at": created,
                }
                memories.append({"id": f"{rid}-{m}", "attrs": json.dumps(attrs)})
            summary = {
                "session_id": sid,
                "vectorstore_name": VS,
                "summary": texts[-1],
                "topics": ["bench"],
                "memory_ids": [m["id"] for m in memories],
                "memory_count": 10,
                "raw_memory_ids": [rid],
                "created_at": created,
                "updated_at": created,
                "processed_length": 2000,
                "processed_sha256": rid * 2,
                "tokens_in": 1700,
                "tokens_out": 600,
            }
            sessions.append(
                {
                    "rid": rid,
                    "sid": sid,
                    "created": created,
                    "memories": memories,
                    "summary": json.dumps(summary),
                    "transcript": chats[j % len(chats)],
                }
            )
        blobs = unit_vectors(texts, seed + batch)
        if write_memories is None:
            size = int(script(args=[VS, now, json.dumps(sessions), *blobs], client=client))
        else:
            script(args=[VS, now, json.dumps(sessions)], client=client)
            memories = [(m["id"], s["created"], m["attrs"]) for s in sessions for m in s["memories"]]
            write_memories([(*m, blob) for m, blob in zip(memories, blobs, strict=True)])
            size = int(client.zcard("{" + VS + "}:memory_index"))
        batch += 1
    return size


# --------------------------------------------------------------------------------------------


def _endpoints(rng: random.Random, session_ids: list[str], queries: list[str]) -> dict[str, Any]:
    """name -> () -> (path, query) for one call."""
    from tests.api_client import mem_path

    return {
        "hierarchy": lambda: (mem_path(VS, "/hierarchy"), None),
        "session": lambda: (mem_path(VS, f"/session/{rng.choice(session_ids)}"), None),
        "stats": lambda: (mem_path(VS, "/stats"), None),
        "search": lambda: (mem_path(VS, "/search"), {"q": rng.choice(queries), "k": 10}),
        "search+filter": lambda: (
            mem_path(VS, "/search"),
            {"q": rng.choice(queries), "k": 10, "category": "preference"},
        ),
    }


def measure(
    cfg: Config,
    admin: Any,
    trips: RoundTrips,
    calls: int,
    rng: random.Random,
    session_ids: list[str],
    queries: list[str],
    keep_samples: bool = False,
) -> dict[str, Any]:
    """Latency (pooled over repeats), round trips and Redis commands per call, per endpoint."""
    from tests.api_client import call

    out: dict[str, Any] = {}
    for name, make in _endpoints(rng, session_ids, queries).items():
        for _ in range(30):  # warm: handler module, pools, the provider's HTTP connection
            path, query = make()
            res = call("GET", path, query=query)
        if res.status != 200:
            out[name] = {"status": res.status, "error": str(res.body)[:300]}
            continue
        samples: list[float] = []
        per_repeat: list[float] = []
        errors = 0
        for _ in range(cfg.repeats):
            lat = []
            for _ in range(calls):
                path, query = make()
                t0 = time.perf_counter()
                res = call("GET", path, query=query)
                lat.append(time.perf_counter() - t0)
                errors += res.status != 200
            samples += lat
            per_repeat.append(summarize(lat)["p50"])
        trips.reset()
        before = commandstats(admin)
        probe = 20
        for _ in range(probe):
            path, query = make()
            call("GET", path, query=query)
        cmds = app_commands(before, commandstats(admin))
        out[name] = {
            "status": 200,
            **({"samples": samples} if keep_samples else {}),  # to pool runs (bench.backends)
            "latency": summarize(samples),
            "p50_runs": [min(per_repeat), max(per_repeat)],
            "errors": errors,
            "round_trips": trips.count / probe,
            "commands": sum(cmds.values()) / probe,
            "commands_by_name": {k: round(v / probe, 2) for k, v in sorted(cmds.items())},
            "result_items": _items(res.body),
        }
    return out


def _items(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    for key in ("results", "memories"):
        if isinstance(body.get(key), list):
            return len(body[key])
    if "total_count" in body:
        return int(body["total_count"])
    return None


def run(cfg: Config) -> SectionResult:
    started = time.monotonic()
    big = cfg.pick(100_000, 100_000)
    calls = cfg.pick(100, 400)
    data: dict[str, Any] = {
        "dimensions": DIMENSIONS,
        "calls_per_repeat": calls,
        "repeats": cfg.repeats,
        "big_memories": big,
        "stages": {},
    }
    rng = random.Random(cfg.seed)
    sentences = corpus()
    with fresh_redis() as server, FakeLLM() as fake:
        configure_env(
            server.url, fake.base_url, EMBEDDING_DIMENSIONS=str(DIMENSIONS), LLM_TIMEOUT_SECONDS="30"
        )
        from memproc.dal.connection import get_store
        from memproc.settings import get_settings

        settings = get_settings()
        admin = server.client()
        binary = server.client(decode=False)
        trips = RoundTrips()
        trips.instrument(get_store().r)
        trips.instrument(get_store().rb)

        # The queried vectorstore: 100 sessions through the real pipeline (store, claim, extract with the
        # fake LLM over HTTP, embed, commit; similar memories merge), then bulk-loaded sessions of 10
        # memories up to 1,000 memories.
        chats = [make_chat(rng, rng.randint(1500, 4000)) for _ in range(100)]
        proc = timed_processor(settings)
        enqueue(get_store(), settings, chats, len(chats), "s", vectorstore=VS)
        proc.drain(concurrency=8, batch_size=8)
        session_ids = list(admin.zrange("{" + VS + "}:session_index", 0, -1))
        piped = int(admin.execute_command("VCARD", VS))
        grow(binary, binary.register_script(GROW_LUA), 1000, cfg.seed + 1, sentences, chats)
        data["queried"] = {
            "sessions": len(session_ids),
            "pipeline_memories": piped,
            "memories": int(admin.execute_command("VCARD", VS)),
        }
        own_keys = int(admin.dbsize())
        say(
            f"queries: {VS!r}: {len(session_ids)} sessions through the pipeline ({piped} memories), "
            f"{data['queried']['memories']:,} memories after bulk load ({own_keys} keys)"
        )
        queries = [memory_text(rng, sentences)[:60] for _ in range(50)]

        filler_pool = json.dumps(
            {
                "transcripts": [make_chat(rng, rng.randint(800, 1800)) for _ in range(24)],
                "summaries": [" ".join(rng.sample(sentences, 3)) for _ in range(24)],
                "memories": [memory_text(rng, sentences) for _ in range(200)],
            }
        )
        blobs = unit_vectors([memory_text(rng, sentences) for _ in range(64)], cfg.seed)
        filler = binary.register_script(FILLER_LUA)
        loaded_vs = 0
        for target in KEYSPACES:
            want_vs = -(-target // KEYS_PER_FILLER)
            t0 = time.monotonic()
            load_filler(binary, filler, loaded_vs, want_vs, filler_pool, blobs)
            loaded_vs = want_vs
            other = int(admin.dbsize()) - own_keys
            say(
                f"  keyspace: {other:,} keys of {loaded_vs:,} other vectorstores loaded in "
                f"{time.monotonic() - t0:.1f} s; measuring"
            )
            stage = measure(cfg, admin, trips, calls, rng, session_ids, queries)
            data["stages"][str(target)] = {
                "other_keys": other,
                "other_vectorstores": loaded_vs,
                "memories": int(admin.execute_command("VCARD", VS)),
                "used_memory": int(admin.info("memory")["used_memory"]),
                "endpoints": stage,
            }
            _say_stage(stage)

        t0 = time.monotonic()
        size = grow(binary, binary.register_script(GROW_LUA), big, cfg.seed, sentences, chats)
        say(f"  queried vectorstore grown to {size:,} memories in {time.monotonic() - t0:.1f} s; measuring")
        stage = measure(cfg, admin, trips, calls, rng, session_ids, queries)
        data["stages"]["big"] = {
            "other_keys": data["stages"][str(KEYSPACES[-1])]["other_keys"],
            "other_vectorstores": loaded_vs,
            "memories": size,
            "used_memory": int(admin.info("memory")["used_memory"]),
            "endpoints": stage,
        }
        _say_stage(stage)

    return _result(cfg, data, started)


def _say_stage(stage: dict[str, Any]) -> None:
    say(
        "    "
        + "  ".join(
            f"{name} {ms(e['latency']['p50'])} ms"
            if e.get("status") == 200
            else f"{name} HTTP {e.get('status')}"
            for name, e in stage.items()
        )
    )


def _result(cfg: Config, data: dict[str, Any], started: float) -> SectionResult:
    stages = data["stages"]
    small, large = stages[str(KEYSPACES[0])]["endpoints"], stages[str(KEYSPACES[-1])]["endpoints"]
    ratios = {}
    for name, e in small.items():
        if e.get("status") == 200 and large.get(name, {}).get("status") == 200:
            ratios[name] = large[name]["latency"]["p50"] / e["latency"]["p50"]
    data["ratio_1m_10k"] = ratios
    worst = max(ratios.items(), key=lambda kv: kv[1]) if ratios else None
    broken = [n for n, e in large.items() if e.get("status") != 200]
    met = bool(ratios) and not broken and worst is not None and worst[1] <= 1.5
    targets = [
        Target(
            "query latency at 1M keys vs 10k keys (p50, every endpoint)",
            "<= 1.5x",
            ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()) if ratios else "not measured",
            met if ratios else None,
            (f"endpoints not answering 200: {', '.join(broken)}" if broken else "")
            + (f"worst: {worst[0]} {worst[1]:.2f}x" if worst and worst[1] > 1.5 else ""),
        )
    ]
    plots = [_plot(cfg, data)] if ratios else []
    return SectionResult(
        "query",
        "3. Queries vs keyspace size",
        _markdown(data),
        data,
        plots,
        targets,
        time.monotonic() - started,
    )


def _markdown(data: dict[str, Any]) -> str:
    stages = data["stages"]
    headers = ["endpoint"]
    order = [str(k) for k in KEYSPACES] + ["big"]
    for key in order:
        s = stages[key]
        headers.append(f"{s['other_keys']:,} other keys, {s['memories']:,} memories: p50 / p95 / p99 ms")
    rows = []
    names = list(stages[order[0]]["endpoints"])
    for name in names:
        row = [name]
        for key in order:
            e = stages[key]["endpoints"].get(name, {})
            if e.get("status") != 200:
                row.append(f"HTTP {e.get('status')}")
                continue
            lat = e["latency"]
            row.append(f"{ms(lat['p50'])} / {ms(lat['p95'])} / {ms(lat['p99'])}")
        rows.append(row)
    cost_rows = []
    for name in names:
        e1, eb = stages[order[-2]]["endpoints"].get(name, {}), stages["big"]["endpoints"].get(name, {})
        if e1.get("status") != 200:
            continue
        cost_rows.append(
            [
                name,
                f"{e1['round_trips']:.1f}",
                f"{e1['commands']:.1f}",
                ", ".join(f"{k} {v:g}" for k, v in e1["commands_by_name"].items()),
                f"{eb.get('round_trips', 0):.1f}",
                f"{eb.get('commands', 0):.1f}",
                f"{data['ratio_1m_10k'].get(name, float('nan')):.2f}x",
            ]
        )
    q = data["queried"]
    return "\n".join(
        [
            f"The queried vectorstore `{VS}` first gets {q['sessions']} sessions through the real pipeline "
            "(store, claim, extraction and embeddings from the fake LLM over HTTP, commit; similar memories "
            f"merge, leaving {q['pipeline_memories']}), then bulk-loaded sessions of 10 memories up to "
            f"{q['memories']:,} memories. Other tenants are bulk-loaded by a Lua script in chunks, in "
            f"memproc's own layout ({KEYS_PER_FILLER} keys per tenant: {SESSIONS_PER_FILLER} processed raw "
            "hashes with expiry, dedupe keys, session summaries, session memory sets and raw indexes; "
            "raw/session/memory indexes, config, counters, daily stats and a vector set of 20 memories) up "
            "to 10k, 100k and 1M keys; the endpoints are measured after each step. Finally the queried "
            f"vectorstore is grown the same way to {data['big_memories']:,} memories"
            + (
                " (FULL: 100,000; this run keeps fewer because building a 100k-element HNSW graph takes "
                "over a minute here)"
                if data["big_memories"] < 100_000
                else ""
            )
            + f". Embeddings have **{DIMENSIONS} dimensions** (`EMBEDDING_DIMENSIONS={DIMENSIONS}`) to keep "
            "loading fast; the bulk-loaded vectors are the fake LLM's hashing embeddings of the memory texts "
            "plus low-rank noise (like clustered real embeddings), inserted by `VADD` with its defaults, as "
            "the commit does, so search queries (embedded by the fake LLM) land in the same space. Calls go "
            "through `tests.api_client.call` (the real query handler with an API Gateway event); search "
            "includes the query's embeddings call to the fake LLM over HTTP (0 ms latency). "
            f"{data['calls_per_repeat']} calls per endpoint and repeat, {data['repeats']} repeats, pooled. "
            "search+filter adds `category=preference` (a vector-set FILTER matching about a quarter of "
            "the bulk-loaded memories).",
            "",
            table(headers, rows),
            "",
            "Redis work per call (20 calls, at 1M keys with ~1k memories, then with the grown "
            "vectorstore): round "
            "trips counted in the client, commands from INFO commandstats (those inside Lua included):",
            "",
            table(
                [
                    "endpoint",
                    "round trips",
                    "commands",
                    "commands by name",
                    "round trips (big vs)",
                    "commands (big vs)",
                    "p50 1M / 10k",
                ],
                cost_rows,
            ),
            "",
            "Memory in Redis after each step: "
            + ", ".join(
                f"{stages[k]['other_keys']:,} keys: {stages[k]['used_memory'] / 2**20:,.0f} MiB"
                for k in order
            )
            + ".",
        ]
    )


def _plot(cfg: Config, data: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = data["stages"]
    xs_keys = [str(k) for k in KEYSPACES]
    xs = [stages[k]["other_keys"] for k in xs_keys]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, name in enumerate(stages[xs_keys[0]]["endpoints"]):
        es = [stages[k]["endpoints"].get(name, {}) for k in xs_keys]
        if any(e.get("status") != 200 for e in es):
            continue
        color = f"C{i}"
        ax.plot(xs, [e["latency"]["p50"] * 1000 for e in es], marker="o", color=color, label=f"{name} p50")
        ax.plot(xs, [e["latency"]["p99"] * 1000 for e in es], linestyle=":", color=color, alpha=0.6)
        big = stages["big"]["endpoints"].get(name, {})
        if big.get("status") == 200:
            ax.plot(
                [stages["big"]["other_keys"]],
                [big["latency"]["p50"] * 1000],
                marker="*",
                markersize=12,
                color=color,
                linestyle="none",
            )
    ax.plot(
        [],
        [],
        marker="*",
        linestyle="none",
        color="grey",
        label=f"p50 with {data['big_memories']:,} memories in the queried vectorstore",
    )
    ax.set_xscale("log")
    ax.set_xlabel("keys of other vectorstores in Redis (log scale)")
    ax.set_ylabel("latency, ms (p50 solid, p99 dotted)")
    ax.set_title("Query latency vs keyspace size (in-process handler calls)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = cfg.out / "query_latency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name
