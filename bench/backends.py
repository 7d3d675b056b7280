"""Section 7, both memory-index backends side by side: `vectorset` on Redis 8 and `search` on Redis
Stack 7.4's Query Engine (RediSearch, the FT.* commands ElastiCache and MemoryDB for Valkey offer).

Per backend, on a fresh server of its engine: store_raw (the handler in-process, one client),
processing (the real processor, fake LLM 200 ms, concurrency 16), and the query endpoints with
other tenants' keys loaded (10k, then 100k quick / 1M FULL) and with the queried vectorstore grown
from ~1k memories to 20k quick / 100k FULL. Memories are written by the library's
`import_memories` (the writer `memproc migrate` uses), so both backends get the same records; on
the search backend every tenant's memories share the deployment's one index, as in production.
Both servers run at once for the queries and are measured in turn, one repeat each, so a shared
machine's changing load falls on both alike; store_raw and processing run one backend after the other.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

from bench import query
from bench.common import (
    Config,
    FakeLLM,
    SectionResult,
    Target,
    configure_env,
    corpus,
    make_chat,
    ms,
    num,
    say,
    summarize,
    table,
)
from bench.process import session_pool, steady_rate, timed_processor
from tests.redis_server import RedisServer
from tests.round_trips import RoundTrips

BACKENDS = {"vectorset": "redis8", "search": "stack"}
ENGINE_NAMES = {"vectorset": "Redis 8 vector set", "search": "Redis Stack 7.4 Query Engine"}
CONCURRENCY = 16
LLM_LATENCY = 0.2
PROCESS_DIMENSIONS = 1536


def _use(server: RedisServer, backend: str, fake: FakeLLM, dimensions: int) -> Any:
    """Point memproc at the server with the backend; the search index created as a deployment does."""
    configure_env(
        server.url,
        fake.base_url,
        EMBEDDING_DIMENSIONS=str(dimensions),
        LLM_TIMEOUT_SECONDS="30",
        VECTOR_BACKEND=backend,
        REDIS_SOCKET_TIMEOUT_SECONDS="120",
    )
    from memproc.dal.connection import get_store

    store = get_store()
    store.index.ensure(dimensions)
    return store


def _store_raw(cfg: Config, calls: int) -> dict[str, Any]:
    """store_raw through the real handler in this process, one client."""
    from tests.api_client import call, mem_path

    rng = random.Random(cfg.seed)
    bodies = [make_chat(rng, rng.randint(1000, 4000)) for _ in range(64)]
    for i in range(30):  # warm: handler import, pools
        call("POST", mem_path("warm", "/store_raw"), json_body={"session_data": bodies[i % 64] + str(i)})
    samples: list[float] = []
    for rep in range(cfg.repeats):
        for i in range(calls):
            body = {"session_data": bodies[i % 64], "session_id": f"r{rep}-{i}"}
            t0 = time.perf_counter()
            res = call("POST", mem_path(f"vs{i % 8}", "/store_raw"), json_body=body)
            samples.append(time.perf_counter() - t0)
            assert res.status == 202, res.body
    return summarize(samples)


def _processing(cfg: Config, store: Any, fake: FakeLLM, n: int) -> dict[str, Any]:
    """Throughput of the real processor at CONCURRENCY; each repeat into new vectorstores."""
    from memproc import submissions
    from memproc.schemas.requests import StoreRawRequest
    from memproc.settings import get_settings

    settings = get_settings()
    fake.configure(LLM_LATENCY, 0.0)
    proc = timed_processor(settings)
    trips = RoundTrips()
    trips.instrument(store.r)
    trips.instrument(store.rb)
    chats = session_pool(cfg.seed)
    meta = {"source": "bench", "session_timestamp": "2026-03-10T12:00:00Z"}
    reps = []
    for rep in range(cfg.repeats):
        for i in range(n):
            request = StoreRawRequest(
                session_data=chats[i % len(chats)], session_id=f"p{rep}-{i}", metadata=meta
            )
            submissions.submit(store, settings, f"p{rep}-user{i % 64:02d}", request)
        proc.finished.clear()
        trips.reset()
        t0 = time.monotonic()
        report = proc.drain(concurrency=CONCURRENCY, batch_size=CONCURRENCY)
        wall = time.monotonic() - t0
        reps.append(
            {
                "processed": report.processed,
                "failed": report.retried + report.dead + report.stale,
                "throughput": report.processed / wall,
                "steady": steady_rate(proc.finished),
                "round_trips": trips.count / max(report.processed, 1),
            }
        )
    fake.configure(0.0, 0.0)
    ideal = CONCURRENCY / LLM_LATENCY
    best = sorted(x["throughput"] for x in reps)[len(reps) // 2]
    return {"reps": reps, "throughput": best, "ideal": ideal, "sessions_per_run": n}


def _import(store: Any, backend: str, vectorstore: str, rows: list[query.MemoryRow], dims: int) -> None:
    from memproc.dal import migration

    for start in range(0, len(rows), 500):
        migration.import_memories(store, vectorstore, backend, dims, rows[start : start + 500])


def _tenant_memories(store: Any, backend: str, v0: int, v1: int, seed: int) -> int:
    """The memories FILLER_LUA leaves to the caller: 2 per session, 10 sessions per tenant, with
    distinct clustered vectors (a shared index must not be filled with copies of a few vectors)."""
    import numpy as np

    rng = np.random.default_rng(seed + v0)
    basis = rng.standard_normal((16, query.DIMENSIONS)).astype(np.float32)
    now = time.time()
    written = 0
    for v in range(v0, v1):
        vs = f"tenant{v:07d}"
        n = 2 * query.SESSIONS_PER_FILLER
        vecs = rng.standard_normal((n, 16)).astype(np.float32) @ basis
        vecs += 0.5 * rng.standard_normal((n, query.DIMENSIONS)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        rows = []
        for s in range(1, query.SESSIONS_PER_FILLER + 1):
            rid, sid = f"{v:016x}{s:016x}", f"sess-{s}"
            created = now - (query.SESSIONS_PER_FILLER - s) * 7200 - (v % 1000) * 60
            for m in range(2):
                attrs = {"text": f"tenant memory {v}-{s}-{m}", "memory_type": "fact", "confidence": 0.6,
                         "session_id": sid, "raw_memory_id": rid, "created_at": created,
                         "updated_at": created, "source_sessions": [sid], "source_raw_ids": [rid],
                         "merge_count": 0, "status": "current", "valid_from": created}  # fmt: skip
                vec = vecs[2 * (s - 1) + m].astype("<f4").tobytes()
                rows.append((f"{rid}-{m}", created, json.dumps(attrs), vec))
        _import(store, backend, vs, rows, query.DIMENSIONS)
        written += len(rows)
    return written


@dataclass
class Side:
    """One backend's server during the query measurements (both run at once, measured in turn)."""

    backend: str
    server: RedisServer
    seed: int
    trips: RoundTrips = field(default_factory=RoundTrips)
    session_ids: list[str] = field(default_factory=list)
    other_vectorstores: int = 0
    own_keys: int = 0

    def use(self, fake: FakeLLM) -> Any:
        """memproc pointed at this side (fresh clients, counted by its RoundTrips)."""
        store = _use(self.server, self.backend, fake, query.DIMENSIONS)
        self.trips.instrument(store.r)
        self.trips.instrument(store.rb)
        return store


def _prepare(cfg: Config, side: Side, fake: FakeLLM, sentences: list[str], chats: list[str]) -> None:
    """The queried vectorstore: 100 sessions through the real pipeline, then bulk-loaded to ~1k."""
    from bench.process import enqueue
    from memproc.settings import get_settings

    store = side.use(fake)
    settings = get_settings()
    enqueue(store, settings, chats, len(chats), "s", vectorstore=query.VS)
    timed_processor(settings).drain(concurrency=8, batch_size=8)
    admin = side.server.client()
    side.session_ids = list(admin.zrange("{" + query.VS + "}:session_index", 0, -1))
    _grow(cfg, side, store, 1000, cfg.seed + 1, sentences, chats)
    side.own_keys = int(admin.dbsize())


def _grow(
    cfg: Config, side: Side, store: Any, target: int, seed: int, sentences: list[str], chats: list[str]
) -> int:
    binary = side.server.client(decode=False)

    def write(rows: list[query.MemoryRow]) -> None:
        _import(store, side.backend, query.VS, rows, query.DIMENSIONS)

    return query.grow(binary, binary.register_script(query.GROW_LUA), target, seed, sentences, chats, write)


def _load_other(side: Side, store: Any, upto: int, pool: str, seed: int) -> None:
    binary = side.server.client(decode=False)
    t0 = time.monotonic()
    query.load_filler(
        binary, binary.register_script(query.FILLER_LUA), side.other_vectorstores, upto, pool, []
    )
    foreign = _tenant_memories(store, side.backend, side.other_vectorstores, upto, seed)
    side.other_vectorstores = upto
    say(f"  {side.backend}: {_other_keys(side):,} keys of {upto:,} other vectorstores "
        f"({foreign:,} more memories) in {time.monotonic() - t0:.0f} s")  # fmt: skip


def _other_keys(side: Side) -> int:
    return int(side.server.client().dbsize()) - side.own_keys


def _measure_both(
    cfg: Config, sides: list[Side], fake: FakeLLM, calls: int, queries: list[str]
) -> dict[str, Any]:
    """Every endpoint on both sides, one repeat each in turn (order alternating), samples pooled:
    on a shared machine the load moves, and this way it moves under both alike."""
    one = replace(cfg, repeats=1)
    runs: dict[str, list[dict[str, Any]]] = {side.backend: [] for side in sides}
    rngs = {side.backend: random.Random(cfg.seed) for side in sides}  # the same calls on both sides
    for rep in range(cfg.repeats):
        for side in sides if rep % 2 == 0 else sides[::-1]:
            side.use(fake)
            admin = side.server.client()
            runs[side.backend].append(
                query.measure(
                    one, admin, side.trips, calls, rngs[side.backend], side.session_ids, queries, True
                )
            )
    out: dict[str, Any] = {}
    for side in sides:
        endpoints = dict(runs[side.backend][-1])
        for name, last in endpoints.items():
            if last.get("status") != 200:
                continue
            pooled = [x for run in runs[side.backend] for x in run[name].get("samples", [])]
            endpoints[name] = {
                **{k: v for k, v in last.items() if k != "samples"},
                "latency": summarize(pooled),
            }
        memories = int(side.server.client().zcard("{" + query.VS + "}:memory_index"))
        out[side.backend] = {"other_keys": _other_keys(side), "memories": memories, "endpoints": endpoints}
        say(f"    {side.backend}:")
        query._say_stage(endpoints)
    return out


def _queries(cfg: Config, fake: FakeLLM) -> dict[str, Any]:
    """The query endpoints on both backends at each size, measured interleaved."""
    rng = random.Random(cfg.seed)
    sentences = corpus()
    chats = [make_chat(rng, rng.randint(1500, 4000)) for _ in range(100)]
    queries = [query.memory_text(rng, sentences)[:60] for _ in range(50)]
    pool = json.dumps(
        {
            "transcripts": [make_chat(rng, rng.randint(800, 1800)) for _ in range(24)],
            "summaries": [" ".join(rng.sample(sentences, 3)) for _ in range(24)],
            "memories": ["unused"],
        }
    )
    sides = [Side(b, RedisServer(engine=e), cfg.seed) for b, e in BACKENDS.items()]
    calls = cfg.pick(100, 300)
    stages: dict[str, dict[str, Any]] = {}
    try:
        for side in sides:
            _prepare(cfg, side, fake, sentences, chats)
        for keys in cfg.pick((10_000, 100_000), (10_000, 1_000_000)):
            for side in sides:
                _load_other(side, side.use(fake), -(-keys // query.KEYS_PER_FILLER), pool, cfg.seed)
            say(f"  measuring with {keys:,} keys of other vectorstores")
            stages[str(keys)] = _measure_both(cfg, sides, fake, calls, queries)
        big = cfg.pick(20_000, 100_000)  # quick: HNSW inserts run at ~1-2k/s here
        for side in sides:
            t0 = time.monotonic()
            size = _grow(cfg, side, side.use(fake), big, cfg.seed, sentences, chats)
            took = time.monotonic() - t0
            say(f"  {side.backend}: queried vectorstore grown to {size:,} memories in {took:.0f} s")
        stages["big"] = _measure_both(cfg, sides, fake, calls, queries)
        used = {side.backend: int(side.server.client().info("memory")["used_memory"]) for side in sides}
    finally:
        for side in sides:
            side.server.stop()
    return {
        side.backend: {
            "stages": {name: stage[side.backend] for name, stage in stages.items()},
            "big_memories": stages["big"][side.backend]["memories"],
            "other_vectorstores": side.other_vectorstores,
            "used_memory": used[side.backend],
        }
        for side in sides
    }


def run(cfg: Config) -> SectionResult:
    started = time.monotonic()
    data: dict[str, Any] = {"backends": {}, "repeats": cfg.repeats}
    store_raw_calls = cfg.pick(300, 1000)
    sessions = cfg.pick(160, 400)
    with FakeLLM() as fake:
        for backend, engine in BACKENDS.items():
            server = RedisServer(engine=engine)
            try:
                say(f"backends: {backend} on {engine} {server.version}")
                store = _use(server, backend, fake, PROCESS_DIMENSIONS)
                raw = _store_raw(cfg, store_raw_calls)
                say(f"  {backend}: store_raw p50 {ms(raw['p50'])} ms, p95 {ms(raw['p95'])} ms")
                proc = _processing(cfg, store, fake, sessions)
                say(f"  {backend}: processing {num(proc['throughput'])} sessions/s at c={CONCURRENCY} "
                    f"(ideal {num(proc['ideal'])}/s)")  # fmt: skip
                data["backends"][backend] = {
                    "engine": f"{engine} {server.version}",
                    "store_raw": raw,
                    "processing": proc,
                }
            finally:
                server.stop()
        say("backends: queries, both backends at once")
        for backend, queries in _queries(cfg, fake).items():
            data["backends"][backend]["queries"] = queries
    return _result(cfg, data, started)


def _p50(data: dict[str, Any], backend: str, stage: str, endpoint: str) -> float:
    e = data["backends"][backend]["queries"]["stages"][stage]["endpoints"].get(endpoint, {})
    return float(e["latency"]["p50"]) if e.get("status") == 200 else float("nan")


def _result(cfg: Config, data: dict[str, Any], started: float) -> SectionResult:
    targets = []
    ratios = {name: _p50(data, "search", "big", name) / _p50(data, "vectorset", "big", name)
              for name in ("search", "search+filter")}  # fmt: skip
    data["search_ratio_big"] = ratios
    size = data["backends"]["search"]["queries"]["big_memories"]
    faster = [f"{k}: search backend {1 / v:.1f}x faster" for k, v in ratios.items() if v < 1]
    targets.append(
        Target(
            f"search p50 at {size:,} memories, search backend vs vectorset backend",
            "search <= 2x vectorset",
            ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()),
            all(v <= 2 for v in ratios.values()),
            "; ".join(
                faster + ([] if size >= 100_000 else [f"quick run: {size:,} memories (FULL=1: 100,000)"])
            ),
            issue=10,
        )
    )
    return SectionResult(
        "backends", "7. Both backends side by side", _markdown(cfg, data), data, [], targets,
        time.monotonic() - started,
    )  # fmt: skip


def _markdown(cfg: Config, data: dict[str, Any]) -> str:
    b = data["backends"]
    names = list(b)
    head = ["", *[f"{n} ({b[n]['engine']})" for n in names]]
    rows = [
        ["store_raw p50 / p95 ms (in-process handler, 1 client)",
         *[f"{ms(b[n]['store_raw']['p50'])} / {ms(b[n]['store_raw']['p95'])}" for n in names]],
        [f"processing sessions/s at c={CONCURRENCY}, LLM {LLM_LATENCY * 1000:.0f} ms "
         f"(ideal {CONCURRENCY / LLM_LATENCY:.0f})", *[num(b[n]["processing"]["throughput"]) for n in names]],
        ["Redis round trips per processed session",
         *[f"{b[n]['processing']['reps'][-1]['round_trips']:.2f}" for n in names]],
    ]  # fmt: skip
    stages = list(b[names[0]]["queries"]["stages"])
    endpoints = list(b[names[0]]["queries"]["stages"][stages[0]]["endpoints"])
    qrows = []
    for st in stages:
        s0 = b[names[0]]["queries"]["stages"][st]
        where = "grown" if st == "big" else f"{int(st):,} keys of other vectorstores"
        label = f"{where}, {s0['memories']:,} memories"
        for e in endpoints:
            cells = []
            for n in names:
                lat = b[n]["queries"]["stages"][st]["endpoints"].get(e, {})
                cells.append(f"{ms(lat['latency']['p50'])} / {ms(lat['latency']['p95'])}"
                             if lat.get("status") == 200 else f"HTTP {lat.get('status')}")  # fmt: skip
            qrows.append([label, e, *cells])
    ratio = ", ".join(f"{k} {v:.2f}x" for k, v in data["search_ratio_big"].items())
    return "\n".join(
        [
            __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
            "",
            table(head, rows),
            "",
            f"Query latency, p50 / p95 ms ({cfg.repeats} repeats pooled; 128 dimensions; search includes the "
            "query's embeddings call to the fake LLM; search+filter adds category=preference). Other "
            "vectorstores are loaded in memproc's layout (bench.query's FILLER_LUA, 20 memories each); on "
            "the search backend their memories are hashes in the one shared index, so the store holds more "
            "keys ("
            + ", ".join(f"{n}: {b[n]['queries']['stages'][stages[-2]]['other_keys']:,}" for n in names)
            + " at the last step) and the queried vectorstore's KNN pre-filters on its TAG among them all:",
            "",
            table(["stage", "endpoint", *[f"{n} p50 / p95" for n in names]], qrows),
            "",
            f"Search p50 with the grown vectorstore, search backend / vectorset backend: {ratio}. Memory in "
            "Redis at the end: "
            + ", ".join(f"{n} {b[n]['queries']['used_memory'] / 2**20:,.0f} MiB" for n in names)
            + ".",
        ]
    )
