"""POST /store_raw: the happy path, dedupe, round trips, and every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis

from memproc import keys
from memproc.submissions import describe_wait
from tests.api_client import call, mem_path
from tests.redis_server import ROOT, RedisServer

# store_raw writes the queue and raw records only: the memory-index backend does not matter.
pytestmark = pytest.mark.one_backend

SESSION = "user: I moved to Lisbon last month and I love cycling.\nassistant: Lovely!"


def store(vs: str, body: dict, **kw: object):
    return call("POST", mem_path(vs, "/store_raw"), json_body=body, **kw)


def test_store_raw_queues_the_session(env, r: redis.Redis) -> None:
    res = store("user123", {"session_data": SESSION, "session_id": "s-1", "metadata": {"app": "chat"}})
    assert res.status == 202
    b = res.body
    assert b["success"] is True and b["duplicate"] is False
    assert b["session_id"] == "s-1" and b["status"] == "queued"
    assert b["queue_position"] == 1 and b["queue_size"] == 1
    assert b["queued_at"].endswith("Z")
    raw_key = f"{{user123}}:raw_memory:{b['raw_memory_id']}"
    assert r.zscore("RAW_MEMORY_QUEUE", raw_key) is not None
    h = r.hgetall(raw_key)
    assert (
        h["session_data"] == SESSION
        and h["status"] == "queued"
        and json.loads(h["metadata"]) == {"app": "chat"}
    )
    assert r.zcard("{user123}:raw_index") == 1


def test_session_id_is_generated_when_absent(env) -> None:
    a = store("user123", {"session_data": "user: hi"}).body
    b = store("user123", {"session_data": "user: hello"}).body
    assert len(a["session_id"]) == 32 and a["session_id"] != b["session_id"]


def test_repost_is_deduplicated(env, r: redis.Redis) -> None:
    first = store("user123", {"session_data": SESSION, "session_id": "s-1"}).body
    again = store("user123", {"session_data": SESSION, "session_id": "s-1"})
    assert again.status == 202
    assert again.body["duplicate"] is True and again.body["raw_memory_id"] == first["raw_memory_id"]
    assert r.zcard("RAW_MEMORY_QUEUE") == 1
    # A different session or vectorstore with the same text is a new submission.
    assert store("user123", {"session_data": SESSION, "session_id": "s-2"}).body["duplicate"] is False
    assert store("user1234", {"session_data": SESSION, "session_id": "s-1"}).body["duplicate"] is False
    assert r.zcard("RAW_MEMORY_QUEUE") == 3


def test_store_raw_is_one_round_trip(env, redis_server: RedisServer) -> None:
    store("warm-up", {"session_data": "user: warm"})  # connects and loads the Lua library once
    with redis_server.requests() as seen:
        res = store("user123", {"session_data": SESSION, "session_id": "s-1"})
    assert res.status == 202
    assert seen == ["FCALL"]
    with redis_server.requests() as seen:
        assert store("user123", {"session_data": SESSION, "session_id": "s-1"}).body["duplicate"]
    assert seen == ["FCALL"]


def test_store_raw_function_does_not_import_openai() -> None:
    code = (
        "import sys, runpy; sys.path.insert(0, 'functions/store_raw'); "
        "runpy.run_path('functions/store_raw/app.py'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('openai', 'httpx', 'memproc')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    loaded = out.stdout.strip()
    assert "memproc.dal.queue" in loaded
    assert "openai" not in loaded and "memproc.llm" not in loaded


def test_estimate_uses_the_measured_rate(env, r: redis.Redis) -> None:
    # A processor draining right now (fresh heartbeat): position over the measured rate.
    r.hset(keys.PROCESSOR_STATUS, mapping={"rate_per_second": "4", "last_heartbeat": r.time()[0]})
    for i in range(7):
        res = store("user123", {"session_data": f"user: message {i}"})
    assert res.body["queue_position"] == 7
    assert res.body["estimated_processing_seconds"] == pytest.approx(7 / 4, abs=0.01)
    assert res.body["estimated_processing_time"] == "about 2 seconds"
    r.hset(keys.PROCESSOR_STATUS, mapping={"rate_per_second": "0.5", "last_heartbeat": r.time()[0]})
    res = store("user123", {"session_data": "user: one more"})
    assert res.body["estimated_processing_seconds"] == pytest.approx(8 / 0.5, abs=0.01)


def test_estimate_adds_the_wait_for_the_next_scheduled_run(env, r: redis.Redis) -> None:
    r.hset(
        keys.PROCESSOR_STATUS,
        mapping={"rate_per_second": "2", "last_heartbeat": int(r.time()[0]) - 40, "interval_seconds": "60"},
    )
    res = store("user123", {"session_data": "user: hello"})
    assert res.body["estimated_processing_seconds"] == pytest.approx(30 + 1 / 2, abs=0.01)
    assert res.body["estimated_processing_time"] == "about 31 seconds"  # 30.5, half up


@pytest.mark.parametrize(
    ("seconds", "wording"),
    [
        (0, "under a second"),
        (0.49, "under a second"),
        (0.5, "about 1 second"),
        (1.4, "about 1 second"),
        (3.5, "about 4 seconds"),
        (59.4, "about 59 seconds"),
        (59.5, "1-2 minutes"),
        (60, "1-2 minutes"),
        (150, "2-5 minutes"),
        (1799, "29-60 minutes"),
        (1800, "30-60 minutes"),
        (1801, "1-2 hours"),
        (3600, "1-2 hours"),
        (5 * 3600, "5-10 hours"),
        (12 * 3600, "12-24 hours"),
        (13 * 3600, "1-2 days"),
        (3 * 86_400, "3-6 days"),
    ],
)
def test_the_estimate_reads_as_the_specification_shows_it(seconds: float, wording: str) -> None:
    assert describe_wait(seconds) == wording


def test_position_reflects_round_robin_across_vectorstores(env) -> None:
    for i in range(5):
        store("busy", {"session_data": f"user: flood {i}"})
    res = store("quiet", {"session_data": "user: hello"})
    # First in its own vectorstore, so only one item of each active vectorstore comes before it.
    assert res.body["queue_position"] == 2 and res.body["queue_size"] == 6


BAD_NAMES = ["*", "a:b", "{x}", "..", ".", "a b", "RAW_MEMORY_QUEUE", "x" * 129, "ä", "a%2Fb", "x" * 10_240]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_vectorstore_names_are_refused(env, r: redis.Redis, name: str) -> None:
    res = store(name, {"session_data": SESSION})
    assert res.status == 400, res.body
    assert res.error_code == "invalid_vectorstore_name"
    assert r.dbsize() == 0


def test_empty_vectorstore_name_has_no_route(env, r: redis.Redis) -> None:
    with pytest.raises(AssertionError, match="no route"):
        store("", {"session_data": SESSION})


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"session_data": ""}, 422, "validation_error"),
        ({"session_data": "   \n"}, 422, "validation_error"),
        ({"session_data": 42}, 422, "validation_error"),
        ({"session_data": ["user: hi"]}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ({"session_data": "user: hi", "metadata": [1, 2]}, 422, "validation_error"),
        ({"session_data": "user: hi", "metadata": "x"}, 422, "validation_error"),
        ({"session_data": "user: hi", "metadata": {"big": "x" * 17_000}}, 413, "metadata_too_large"),
        ({"session_data": "user: hi", "session_id": "bad id with spaces"}, 400, "invalid_session_id"),
        ({"session_data": "user: hi", "session_id": 7}, 422, "validation_error"),
        ({"session_data": "user: hi", "unexpected": 1}, 422, "validation_error"),
    ],
)
def test_bad_bodies_are_refused(env, r: redis.Redis, body: dict, status: int, code: str) -> None:
    res = store("user123", body)
    assert res.status == status, res.body
    assert res.error_code == code
    assert res.body["error"]["message"]
    assert r.dbsize() == 0


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "malformed_json"),  # not JSON at all
        (b"", 422, "validation_error"),  # no body: the required object is missing
        (b"[]", 422, "validation_error"),  # JSON, but not an object
        (b"null", 422, "validation_error"),
        (b'"text"', 422, "validation_error"),
    ],
)
def test_malformed_json_is_refused(env, r: redis.Redis, raw: bytes, status: int, code: str) -> None:
    res = store("user123", {}, raw_body=raw)
    assert res.status == status, res.body
    assert res.error_code == code
    assert r.dbsize() == 0


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain"])
def test_a_body_that_is_not_json_is_415(env, r: redis.Redis, content_type: str) -> None:
    res = store("user123", {"session_data": "user: hi"}, headers={"content-type": content_type})
    assert res.status == 415 and res.error_code == "unsupported_media_type"
    assert r.dbsize() == 0


def test_json_with_a_charset_is_accepted(env) -> None:
    res = store(
        "user123", {"session_data": "user: hi"}, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert res.status == 202


def test_body_over_the_limit_is_413(env, r: redis.Redis) -> None:
    res = store("user123", {"session_data": "x" * (1_048_576 + 10)})
    assert res.status == 413 and res.error_code == "payload_too_large"
    assert r.dbsize() == 0


def test_body_limit_is_configurable(env, r: redis.Redis) -> None:
    env.setenv("MAX_BODY_BYTES", "2048")
    from memproc.settings import get_settings

    get_settings.cache_clear()
    assert store("user123", {"session_data": "x" * 3000}).status == 413
    assert store("user123", {"session_data": "x" * 1000}).status == 202


def test_full_queue_is_503_with_retry_after(env, r: redis.Redis) -> None:
    env.setenv("MAX_QUEUE_SIZE", "2")
    from memproc.settings import get_settings

    get_settings.cache_clear()
    assert store("user123", {"session_data": "user: a"}).status == 202
    assert store("user123", {"session_data": "user: b"}).status == 202
    before = r.dbsize()
    res = store("user123", {"session_data": "user: c"})
    assert res.status == 503 and res.error_code == "queue_full"
    assert int(res.headers["Retry-After"]) >= 1
    assert r.dbsize() == before and r.zcard("RAW_MEMORY_QUEUE") == 2


def test_full_vectorstore_queue_is_503(env, r: redis.Redis) -> None:
    env.setenv("MAX_PENDING_PER_VECTORSTORE", "1")
    from memproc.settings import get_settings

    get_settings.cache_clear()
    assert store("user123", {"session_data": "user: a"}).status == 202
    res = store("user123", {"session_data": "user: b"})
    assert res.status == 503 and res.error_code == "vectorstore_full"
    assert store("other", {"session_data": "user: b"}).status == 202


def test_long_transcripts_are_stored_compressed_and_read_back_whole(env, redis_server: RedisServer) -> None:
    text = "\n".join(f"user: message number {i} about my garden and my cat" for i in range(400))
    res = store("user123", {"session_data": text}).body
    h = redis_server.client(decode=False).hgetall(f"{{user123}}:raw_memory:{res['raw_memory_id']}".encode())
    assert h[b"session_data_encoding"] == b"zlib"
    assert len(h[b"session_data"]) * 2 < len(text)
    from memproc.transcript import decode_transcript

    assert decode_transcript(h[b"session_data"], "zlib") == text
