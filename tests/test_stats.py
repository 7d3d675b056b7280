"""GET /stats: counts per level, storage, the last 7 days' processing figures; one round trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from memproc import keys
from memproc.dal import queue
from memproc.dal.connection import get_store
from memproc.settings import get_settings
from tests.api_client import call, mem_path
from tests.chats import sessions
from tests.memory_helpers import drain, everything, store, stored_memories
from tests.redis_server import RedisServer


def stats(vs: str = "user1", **query: Any) -> Any:
    return call("GET", mem_path(vs, "/stats"), query=query)


def test_counts_storage_and_daily_figures(fake_llm: Any, r: redis.Redis) -> None:
    texts = sessions(5, seed=11)
    for i, text in enumerate(texts[:3]):
        store("user1", text, f"s-{i}")
    drain()
    store("user1", texts[3], "dead")
    fake_llm.fail_next("400", count=1)
    assert drain().dead == 1
    store("user1", texts[4], "flight")
    queue.claim(get_store(), get_settings(), 1)
    store("user1", "user: I play the cello.", "waiting")
    store("user10", "user: other vectorstore", "o-1")  # a name sharing the prefix is not counted

    res = stats()
    assert res.status == 200, res.body
    b = res.body
    c = b["counts"]
    assert c["memories"] == stored_memories(r, "user1") > 0
    assert c["sessions"] == 3
    assert c["raw_memories"] == {"queued": 1, "processing": 1, "error": 1, "processed": 3, "indexed": 6}
    assert c["received_total"] == 6 and c["processed_total"] == 3

    s = b["storage"]
    assert s["approximate"] is True and s["vector_set_bytes"] > 0 and s["index_bytes"] > 0
    assert s["raw_memories_bytes"] > 0 and s["session_summaries_bytes"] > 0
    assert (
        s["total_bytes"]
        == s["vector_set_bytes"] + s["index_bytes"] + s["raw_memories_bytes"] + s["session_summaries_bytes"]
    )

    today = datetime.fromtimestamp(r.time()[0], UTC).date()
    assert [d["date"] for d in b["daily"]] == [(today - timedelta(days=6 - i)).isoformat() for i in range(7)]
    day = b["daily"][-1]
    vk = keys.VectorstoreKeys("user1")
    raw_stats = r.hgetall(vk.daily_stats(today.isoformat()))
    assert day["processed"] == 3 and day["dead"] == 1 and day["errors"] == 1
    assert day["memories_created"] == c["memories"] and day["memories_merged"] == 0
    assert day["tokens_in"] == int(raw_stats["tokens_in"]) > 0 and day["tokens_out"] > 0
    assert day["mean_processing_ms"] == pytest.approx(int(raw_stats["processing_ms"]) / 3, abs=0.1)
    assert day["extraction_success_rate"] == 0.75
    assert day["last_processed_at"].endswith("Z")
    assert all(d["processed"] == 0 and d["extraction_success_rate"] is None for d in b["daily"][:-1])
    week = b["last_7_days"]
    assert week["processed"] == 3 and week["dead"] == 1 and week["extraction_success_rate"] == 0.75
    assert week["date"] == f"{b['daily'][0]['date']}..{today.isoformat()}"
    assert b["embedding"] == {"model": "text-embedding-3-small", "dimensions": 64}


def test_an_unknown_vectorstore_is_a_404(env: Any, r: redis.Redis) -> None:
    res = stats("nobody")
    assert res.status == 404 and res.error_code == "unknown_vectorstore"
    assert r.dbsize() == 0


def test_a_vectorstore_with_only_queued_work_has_stats(env: Any, r: redis.Redis) -> None:
    store("user1", "user: I cycle to work.", "s-1")
    b = stats().body
    assert b["counts"]["memories"] == 0 and b["counts"]["raw_memories"]["queued"] == 1
    assert b["embedding"] is None and len(b["daily"]) == 7


def test_one_round_trip_whatever_the_size(fake_llm: Any, redis_server: RedisServer) -> None:
    store("user1", "user: I warm up.", "w")
    drain()
    stats()
    with redis_server.requests() as small:
        stats()
    for i, text in enumerate(sessions(20, seed=12)):
        store("user1", text, f"s-{i}")
    drain()
    with redis_server.requests() as large:
        stats()
    assert small == large == ["FCALL_RO"]


@pytest.mark.parametrize(
    ("vs", "query", "code"),
    [
        ("a:b", {}, "invalid_vectorstore_name"),
        ("RAW_MEMORY_QUEUE", {}, "invalid_vectorstore_name"),
        ("user1", {"days": "30"}, "unknown_query_parameter"),
    ],
)
def test_bad_input_is_400_and_changes_nothing(
    env: Any, r: redis.Redis, vs: str, query: dict[str, str], code: str
) -> None:
    store("user1", "user: hello", "s-1")
    before = everything(r)
    res = stats(vs, **query)
    assert res.status == 400 and res.error_code == code
    assert everything(r) == before
