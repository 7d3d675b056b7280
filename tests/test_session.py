"""GET /session/{session_id}: the complete picture of one session, its transcript on request,
percent-encoded ids, 404 for unknown sessions and 400 for bad input."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
import redis

from memproc import keys
from memproc.dal import queue
from memproc.dal.connection import get_store
from memproc.settings import get_settings
from tests.api_client import call, mem_path
from tests.memory_helpers import drain, everything, store
from tests.redis_server import RedisServer

CHAT = "user: I prefer green tea over coffee.\nuser: I live in Porto.\n"


def session(sid: str, vs: str = "user1", **query: Any) -> Any:
    return call("GET", mem_path(vs, f"/session/{quote(sid, safe='')}"), query=query)


def test_session_details(fake_llm: Any, r: redis.Redis) -> None:
    first = store("user1", CHAT, "s-1", {"channel": "web"})
    drain()
    longer = CHAT + "user: My brother Tomas lives in Madrid.\n"
    second = store("user1", longer, "s-1")
    drain()
    store("user1", "user: unrelated", "s-2")

    res = session("s-1")
    assert res.status == 200, res.body
    b = res.body
    assert b["success"] is True and b["session_id"] == "s-1" and b["status"] == "processed"
    summary = b["summary"]
    assert summary["summary"] and summary["raw_memory_ids"] == [
        first["raw_memory_id"],
        second["raw_memory_id"],
    ]
    assert summary["processed_length"] == len(longer) and summary["expires_at"]
    vk = keys.VectorstoreKeys("user1")
    assert {m["memory_id"] for m in b["memories"]} == r.smembers(vk.session_memories("s-1"))
    assert b["memory_count"] == len(b["memories"]) >= 3
    tea = next(m for m in b["memories"] if "green tea" in m["text"])
    assert tea["memory_type"] == "preference" and tea["source_sessions"] == ["s-1"]
    assert tea["created_at"] and tea["updated_at"]
    assert [x["raw_memory_id"] for x in b["raw_memories"]] == [
        second["raw_memory_id"],
        first["raw_memory_id"],
    ]
    assert b["raw_memory_count"] == 2
    newest = b["raw_memories"][0]
    assert newest["status"] == "processed" and newest["extraction_mode"] == "delta"
    assert newest["memories_created"] >= 1 and newest["tokens_in"] > 0 and newest["processing_ms"] is not None
    assert b["raw_memories"][1]["metadata"] == {"channel": "web"}
    assert all(x["session_data"] is None for x in b["raw_memories"])  # only on request
    usage = b["token_usage"]
    assert usage["tokens_in"] == sum(x["tokens_in"] for x in b["raw_memories"]) == summary["tokens_in"]
    assert usage["total_tokens"] == usage["tokens_in"] + usage["tokens_out"]


def test_the_transcript_is_included_on_request_even_when_compressed(fake_llm: Any, r: redis.Redis) -> None:
    short = store("user1", CHAT, "s-1")
    long_text = "\n".join(f"user: note {i} about my garden, my cat and the weather" for i in range(300))
    long = store("user1", long_text, "s-1")
    assert r.hget(keys.VectorstoreKeys("user1").raw(long["raw_memory_id"]), "session_data_encoding") == "zlib"
    b = session("s-1", include_transcript="true").body
    texts = {x["raw_memory_id"]: x["session_data"] for x in b["raw_memories"]}
    assert texts == {short["raw_memory_id"]: CHAT, long["raw_memory_id"]: long_text}
    assert session("s-1", include_transcript="false").body["raw_memories"][0]["session_data"] is None


def test_a_session_still_in_the_queue_is_pending(env: Any) -> None:
    res = store("user1", CHAT, "s-1")
    b = session("s-1").body
    assert b["status"] == "pending" and b["summary"] is None and b["memories"] == []
    assert [x["status"] for x in b["raw_memories"]] == ["queued"]
    assert b["raw_memories"][0]["raw_memory_id"] == res["raw_memory_id"]


def test_a_dead_lettered_session_says_error(fake_llm: Any) -> None:
    store("user1", CHAT, "s-1")
    fake_llm.fail_next("400", count=1)
    assert drain().dead == 1
    b = session("s-1").body
    assert b["status"] == "error" and "400" in b["raw_memories"][0]["last_error"]
    assert b["raw_memories"][0]["dead_at"]


def test_an_in_flight_session_is_pending(env: Any, r: redis.Redis) -> None:
    store("user1", CHAT, "s-1")
    queue.claim(get_store(), get_settings(), 1)
    b = session("s-1").body
    assert b["status"] == "pending" and b["raw_memories"][0]["status"] == "processing"


@pytest.mark.parametrize("sid", ["a:b@c+d=e", "user.42_x", "A-Z=09"])
def test_session_ids_arrive_percent_encoded_and_are_decoded(fake_llm: Any, sid: str) -> None:
    store("user1", CHAT, sid)
    drain()
    res = session(sid)  # quote(sid, safe="") encodes : @ + =
    assert res.status == 200, res.body
    assert res.body["session_id"] == sid and res.body["summary"]["session_id"] == sid


def test_unknown_session_is_404(fake_llm: Any, r: redis.Redis) -> None:
    store("user1", CHAT, "s-1")
    drain()
    before = everything(r)
    for vs, sid, code in (
        ("user1", "s-2", "session_not_found"),
        ("user10", "s-1", "unknown_vectorstore"),
        ("user", "s-1", "unknown_vectorstore"),
    ):
        res = session(sid, vs)
        assert res.status == 404 and res.error_code == code, (vs, sid)
        assert (sid if code == "session_not_found" else vs) in res.body["error"]["message"]
    assert everything(r) == before


@pytest.mark.parametrize(
    ("sid", "query", "code"),
    [
        ("bad id", {}, "invalid_session_id"),
        ("s/1", {}, "invalid_session_id"),
        ("x" * 257, {}, "invalid_session_id"),
        ("s-1", {"include_transcript": "perhaps"}, "invalid_include_transcript"),
        ("s-1", {"transcript": "true"}, "unknown_query_parameter"),
    ],
)
def test_bad_input_is_400_and_changes_nothing(
    fake_llm: Any, r: redis.Redis, sid: str, query: dict[str, str], code: str
) -> None:
    store("user1", CHAT, "s-1")
    drain()
    before = everything(r)
    res = session(sid, **query)
    assert res.status == 400, res.body
    assert res.error_code == code and res.body["error"]["message"]
    assert everything(r) == before


def test_two_round_trips(fake_llm: Any, redis_server: RedisServer, backend: str) -> None:
    store("user1", CHAT, "s-1")
    drain()
    session("s-1")
    with redis_server.requests() as seen:
        assert session("s-1", include_transcript="true").status == 200
    index = ["GET", "EXPIRETIME", "SMEMBERS", "ZREVRANGE", "ZCARD"]
    expected = {
        "vectorset": index + ["VGETATTR"] * 2 + ["HMGET", "EXPIRETIME"],
        "search": index + ["HGET"] * 2 + ["HMGET", "EXPIRETIME"],
    }
    assert seen == expected[backend]
