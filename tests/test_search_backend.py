"""The Query-Engine memory index itself (Redis Stack's RediSearch here; valkey-search on ElastiCache
and MemoryDB): when its index is created, and what a query does while the engine is still building
it. Each test pins a defect found when the whole suite first ran on this backend."""

from __future__ import annotations

import json
import random
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from memproc import keys
from memproc.dal import connection
from memproc.dal.connection import get_store
from memproc.dal.memory_index import IndexUnavailable, MemoryFilter
from memproc.dal.memory_index.search import SearchIndex, index_ready, missing_index, tag_value
from memproc.settings import get_settings
from tests.api_client import call, mem_path
from tests.memory_helpers import drain, store
from tests.redis_server import RedisServer

INDEX = keys.search_index(64)
CHAT = "user: I prefer green tea over coffee.\nuser: I live in Porto.\n"
MORE = "user: I adopted a cat named Miso.\nuser: I want to learn the cello.\n"


def info(r: redis.Redis) -> dict[str, Any]:
    reply = r.execute_command("FT.INFO", INDEX)
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))


def new_process() -> None:
    """What another Lambda process sees: new clients, and nothing it learnt about the index."""
    connection._store.cache_clear()


def test_the_index_exists_before_the_first_memory_is_written_and_is_created_once(
    search_env: RedisServer, search_fake_llm: Any
) -> None:
    r = search_env.client()
    r.config_resetstat()
    store("user1", CHAT, "s-1")
    assert drain().processed == 1
    assert r.execute_command("FT._LIST") == [INDEX]
    memories = r.zcard(keys.VectorstoreKeys("user1").memory_index)
    assert memories > 0 and int(info(r)["num_docs"]) == memories  # every memory indexed as written
    new_process()  # a second processor: it asks FT.INFO first and creates nothing
    store("user1", MORE, "s-2")
    assert drain().processed == 1
    seen = search_env.commands_seen()
    assert seen["FT.CREATE"] == 1 and seen["FT.INFO"] >= 2
    assert int(info(r)["num_docs"]) == r.zcard(keys.VectorstoreKeys("user1").memory_index) > memories


def test_a_process_whose_first_call_is_a_search_makes_sure_the_index_exists(
    search_env: RedisServer, search_fake_llm: Any
) -> None:
    """The query function never commits: its first search must find the index there, creating it
    over the memories already stored (here: after it was dropped) and waiting for that scan."""
    r = search_env.client()
    store("user1", CHAT, "s-1")
    drain()
    r.execute_command("FT.DROPINDEX", INDEX)  # the hashes stay
    new_process()
    res = call("GET", mem_path("user1", "/search"), query={"q": "green tea"})
    assert res.status == 200, res.body
    assert res.body["count"] == r.zcard(keys.VectorstoreKeys("user1").memory_index) > 0
    assert r.execute_command("FT._LIST") == [INDEX]


def test_an_index_dropped_under_a_warm_process_is_made_again_by_its_next_query(
    search_env: RedisServer, search_fake_llm: Any
) -> None:
    r = search_env.client()
    store("user1", CHAT, "s-1")
    drain()
    assert call("GET", mem_path("user1", "/search"), query={"q": "tea"}).status == 200
    r.execute_command("FT.DROPINDEX", INDEX)  # the process still believes it exists
    res = call("GET", mem_path("user1", "/search"), query={"q": "green tea"})
    assert res.status == 200, res.body
    assert res.body["count"] == r.zcard(keys.VectorstoreKeys("user1").memory_index) > 0


def test_every_engines_word_for_a_missing_index_is_recognised(stack_server: RedisServer) -> None:
    """A warm process re-creates a dropped index only if it recognises the error: RediSearch's own
    replies (asked here), and valkey-search's wording (ElastiCache, MemoryDB; from its docs)."""
    r = stack_server.client()
    for command in (("FT.INFO", "nope"), ("FT.SEARCH", "nope", "*")):
        with pytest.raises(redis.ResponseError) as raised:
            r.execute_command(*command)
        assert missing_index(raised.value), raised.value
    assert missing_index(redis.ResponseError("Index with name 'memproc_idx_64' not found"))
    assert not missing_index(redis.ResponseError("Error parsing vector similarity query"))


def test_a_warm_process_asks_ft_info_again_only_once_its_trust_in_the_index_lapses(
    search_env: RedisServer, search_fake_llm: Any
) -> None:
    """FT.INFO costs several KNN queries' worth, so a process trusts a "fully built" answer for
    READY_SECONDS; past that, it asks again within the query's own round trip."""
    r = search_env.client()
    store("user1", CHAT, "s-1")
    drain()
    assert call("GET", mem_path("user1", "/search"), query={"q": "tea"}).status == 200
    r.config_resetstat()
    assert call("GET", mem_path("user1", "/search"), query={"q": "tea"}).status == 200
    assert search_env.commands_seen().get("FT.INFO", 0) == 0
    index = get_store().index
    assert isinstance(index, SearchIndex)
    index._ready_until = 0.0  # as READY_SECONDS later: the next query asks, the one after trusts again
    assert call("GET", mem_path("user1", "/search"), query={"q": "tea"}).status == 200
    assert call("GET", mem_path("user1", "/search"), query={"q": "tea"}).status == 200
    seen = search_env.commands_seen()
    assert seen["FT.INFO"] == 1 and seen["FT.SEARCH"] == 3


def slowly_indexed_memories(r: redis.Redis, vs: str, n: int, *, create: bool = True) -> None:
    """`n` memories stored as memproc stores them, then (`create`) memproc's index created over them
    by hand, with HNSW parameters that make the engine's scan of them take seconds, not milliseconds."""
    vk = keys.VectorstoreKeys(vs)
    rng = random.Random(3)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        mid = f"{i:032x}-0"
        attrs = {"text": f"memory {i}", "memory_type": "fact", "status": "current", "source_sessions": ["s"]}
        pipe.hset(
            vk.memory(mid),
            mapping={
                "attrs": json.dumps(attrs), "vs": vs, "status": "current", "memory_type": "fact",
                "sessions": "s", "valid_from": 1_700_000_000,
                "vec": struct.pack("<64f", *[rng.uniform(-1, 1) for _ in range(64)]),
            },
        )  # fmt: skip
        pipe.zadd(vk.memory_index, {mid: 1_700_000_000})
    pipe.hset(vk.config, mapping={"embedding_model": get_settings().embedding_model, "dimensions": 64})
    pipe.execute()
    if not create:
        return
    r.execute_command(
        "FT.CREATE", INDEX, "ON", "HASH", "PREFIX", "1", keys.MEMORY_PREFIX, "SCHEMA",
        "vs", "TAG", "CASESENSITIVE", "status", "TAG", "memory_type", "TAG",
        "sessions", "TAG", "SEPARATOR", ",", "CASESENSITIVE", "valid_from", "NUMERIC",
        "vec", "VECTOR", "HNSW", "10", "TYPE", "FLOAT32", "DIM", "64", "DISTANCE_METRIC", "COSINE",
        "M", "64", "EF_CONSTRUCTION", "2000",
    )  # fmt: skip


def still_indexing(r: redis.Redis) -> bool:
    return str(info(r)["indexing"]) == "1"


def test_a_search_while_the_engine_builds_the_index_is_unavailable_not_partial(
    search_env: RedisServer, search_fake_llm: Any
) -> None:
    """The engines answer queries while they build an index, from what they scanned so far (here:
    none of the memories). The scan is monotonic, so one seen running before and after the request
    ran throughout it."""
    r = search_env.client()
    slowly_indexed_memories(r, "big", 4000)  # ~5 s of scan on an idle machine, longer when busy
    try:
        assert still_indexing(r)
        res = call("GET", mem_path("big", "/search"), query={"q": "memory"})
        assert still_indexing(r)
        assert res.status == 503, res.body
        assert res.error_code == "index_unavailable" and int(res.headers["Retry-After"]) > 0
        assert "being built" in res.body["error"]["message"]
        with pytest.raises(IndexUnavailable):  # the processor's lookups alike
            get_store().index.nearest("big", [struct.pack("<64f", *([0.1] * 64))], 8, MemoryFilter())
        raw_id = store("big", CHAT, "s-2")["raw_memory_id"]  # deciding blind would add duplicates
        report = drain()
        assert still_indexing(r)
        assert (report.processed, report.retried) == (0, 1)
        # No attempt spent: a rebuild that outlasts every attempt's backoff must not dead-letter it.
        raw = r.hmget(keys.VectorstoreKeys("big").raw(raw_id), "status", "processing_attempts")
        assert raw == ["queued", "0"], raw
        assert r.zcard(keys.VectorstoreKeys("big").memory_index) == 4000
    finally:
        r.flushall()  # stops the engine's scan, which would slow the next tests for seconds


def test_an_index_another_process_creates_first_is_awaited_like_ones_own(
    search_env: RedisServer, search_fake_llm: Any
) -> None:
    """FT.INFO finds no index, another processor creates it (over memories: its scan takes a while)
    before this one's FT.CREATE: "exists" means the scan has just begun, and is waited for the same
    bounded way as after creating it, so the first lookups do not answer IndexUnavailable."""
    r = search_env.client()

    class CreatedMeanwhile(SearchIndex):
        raced = False

        def _info(self) -> Any:
            if not self.raced:
                self.raced = True
                slowly_indexed_memories(r, "big", 400)  # the other processor's FT.CREATE
                return None
            return super()._info()

    index = CreatedMeanwhile(r, 64)
    try:
        index.ensure(64)
        assert index.raced and not still_indexing(r)
        assert index.nearest("big", [struct.pack("<64f", *([0.1] * 64))], 8, MemoryFilter())[0]
    finally:
        r.flushall()


def test_worker_threads_wait_for_the_one_creating_the_index(
    search_env: RedisServer, search_fake_llm: Any
) -> None:
    """Two workers of one processor meet a missing index: the second waits while the first creates
    it and awaits its scan, instead of finding it half built and failing its session."""
    r = search_env.client()
    slowly_indexed_memories(r, "big", 2000, create=False)
    scanning = threading.Event()
    seen: list[bool] = []

    class Index(SearchIndex):
        def _await_scan(self) -> None:
            scanning.set()  # the first worker created the index; its scan runs now
            super()._await_scan()

    index = Index(r, 64)

    def second() -> None:
        scanning.wait()
        index.ensure(64)
        seen.append(still_indexing(r))

    worker = threading.Thread(target=second)
    worker.start()
    try:
        index.ensure(64)
        worker.join()
        assert seen == [False]
    finally:
        r.flushall()


def _mid_backfill(client: redis.Redis, name: str) -> tuple[Any, Any]:
    """FT.INFO's reply right after FT.CREATE over existing hashes, inside one MULTI (the engine's scan
    cannot run before EXEC), and once the scan is done (FT.INFO asked until it says so)."""
    prefix = f"{name}:"
    client.hset(f"{prefix}1", mapping={"t": "a"})
    pipe = client.pipeline(transaction=True)
    pipe.execute_command("FT.CREATE", name, "ON", "HASH", "PREFIX", "1", prefix, "SCHEMA", "t", "TAG")
    pipe.execute_command("FT.INFO", name)
    during = pipe.execute()[1]
    after = client.execute_command("FT.INFO", name)
    while not index_ready(after):  # bounded by the engine's scan of one hash
        after = client.execute_command("FT.INFO", name)
    return during, after


def flat(pairs: dict[str, str]) -> list[str]:
    return [x for kv in pairs.items() for x in kv]


# FT.INFO fields of the managed engines (valkey-search's reply, MemoryDB's), flat as they send them.
VALKEY_SEARCH = {
    "index_name": "i",
    "num_docs": "3",
    "backfill_in_progress": "1",
    "state": "backfill_in_progress",
}
VALKEY_READY = {"index_name": "i", "num_docs": "3", "backfill_in_progress": "0", "state": "ready"}
MEMORYDB = {"index_name": "i", "index_status": "BACKFILLING", "num_docs": "3"}
MEMORYDB_READY = {"index_name": "i", "index_status": "AVAILABLE", "num_docs": "3"}


@pytest.mark.parametrize("protocol", [2, 3])
def test_index_ready_reads_each_engines_report_of_its_scan(stack_server: RedisServer, protocol: int) -> None:
    client = redis.Redis.from_url(stack_server.url, decode_responses=True, protocol=protocol)
    name = f"memproc-probe-{protocol}"
    try:
        during, after = _mid_backfill(client, name)
    finally:
        client.execute_command("FT.DROPINDEX", name, "DD")
    assert isinstance(during, dict if protocol == 3 else list)
    assert not index_ready(during) and index_ready(after)
    readers: list[Callable[[dict[str, str]], Any]] = [flat, dict]  # RESP2 list, RESP3 map
    for shape in readers:
        assert not index_ready(shape(VALKEY_SEARCH)) and index_ready(shape(VALKEY_READY))
        assert not index_ready(shape(MEMORYDB)) and index_ready(shape(MEMORYDB_READY))


# Every character class SESSION_ID_RE admits, alone and mixed, and the vectorstore-name alphabet.
TAG_VALUES = ["_", "__", "a_b", "-", "...", "x.y:z@w+q=r", "s-1", "A:b", "user1", "é", "a b", "{x}", "a,b"]


def test_tag_value_matches_exactly_the_value_it_escapes(stack_server: RedisServer) -> None:
    r = stack_server.client()
    name = "memproc-tags"
    r.execute_command(
        "FT.CREATE", name, "ON", "HASH", "PREFIX", "1", f"{name}:",
        "SCHEMA", "t", "TAG", "SEPARATOR", "|", "CASESENSITIVE",
    )  # fmt: skip
    try:
        for i, v in enumerate(TAG_VALUES):
            r.hset(f"{name}:{i}", "t", v)
        while not index_ready(r.execute_command("FT.INFO", name)):  # bounded by the scan of 13 hashes
            pass
        for i, v in enumerate(TAG_VALUES):
            reply = r.execute_command(
                "FT.SEARCH", name, f"@t:{{{tag_value(v)}}}", "NOCONTENT", "DIALECT", "2"
            )
            ids = [x["id"] for x in reply["results"]] if isinstance(reply, dict) else reply[1:]
            assert ids == [f"{name}:{i}"], v
    finally:
        r.execute_command("FT.DROPINDEX", name, "DD")
