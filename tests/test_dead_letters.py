"""GET /dead_letters and POST /raw/{id}/retry: what died and why, and redriving it."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from memproc import keys
from tests.api_client import call, mem_path
from tests.memory_helpers import drain, everything, store

# Dead letters are queue records: the memory-index backend does not matter.
pytestmark = pytest.mark.one_backend

U1 = keys.VectorstoreKeys("user1")


def dead_letters(vs: str = "user1", **query: Any) -> Any:
    return call("GET", mem_path(vs, "/dead_letters"), query=query)


def retry(raw_id: str, vs: str = "user1", **query: Any) -> Any:
    return call("POST", mem_path(vs, f"/raw/{raw_id}/retry"), query=query)


@pytest.fixture
def dead(fake_llm: Any) -> list[str]:
    """Two dead-lettered submissions (oldest first) and a processed one in user1."""
    ids = []
    for text in ("user: I play the cello.", "user: I speak Finnish."):
        ids.append(store("user1", text, "s-1")["raw_memory_id"])
        fake_llm.fail_next("400", count=1)
        assert drain().dead == 1
    store("user1", "user: I like jazz.", "s-2")
    store("user10", "user: I like jazz.", "s-2")
    assert drain().processed == 2
    return ids


def test_dead_letters_newest_first_with_why(dead: list[str], r: redis.Redis) -> None:
    res = dead_letters()
    assert res.status == 200, res.body
    b = res.body
    assert b["total"] == 2 and [x["raw_memory_id"] for x in b["dead_letters"]] == dead[::-1]
    item = b["dead_letters"][0]
    assert item["status"] == "error" and item["session_id"] == "s-1"
    assert "HTTP 400" in item["last_error"] and item["processing_attempts"] == 1
    assert item["dead_at"].endswith("Z") and item["created_at"] and item["session_length"] > 0
    assert "session_data" not in item
    page = dead_letters(limit="1").body
    assert page["total"] == 2 and [x["raw_memory_id"] for x in page["dead_letters"]] == [dead[1]]
    assert dead_letters("user10").body == {
        "success": True,
        "vectorstore_name": "user10",
        "total": 0,
        "dead_letters": [],
    }


def test_retry_redrives_a_dead_letter(dead: list[str], r: redis.Redis) -> None:
    res = retry(dead[0])
    assert res.status == 200, res.body
    assert res.body == {
        "success": True,
        "vectorstore_name": "user1",
        "raw_memory_id": dead[0],
        "status": "queued",
        "pending": 1,
    }
    h = r.hgetall(U1.raw(dead[0]))
    assert h["status"] == "queued" and h["processing_attempts"] == "0" and h["redrive_count"] == "1"
    assert r.zscore(U1.dead, dead[0]) is None and r.zscore(keys.DEAD, U1.raw(dead[0])) is None
    assert r.zscore(U1.pending, dead[0]) is not None
    assert [x["raw_memory_id"] for x in dead_letters().body["dead_letters"]] == [dead[1]]
    assert drain().processed == 1
    assert r.hget(U1.raw(dead[0]), "status") == "processed"


def test_retry_of_a_live_submission_is_409(dead: list[str], r: redis.Redis) -> None:
    processed = r.zrange(U1.raw_index, -1, -1)[0]
    queued = store("user1", "user: new", "s-3")["raw_memory_id"]
    before = everything(r)
    for raw_id, status in ((processed, "processed"), (queued, "queued")):
        res = retry(raw_id)
        assert res.status == 409 and res.error_code == "not_dead"
        assert res.body["error"]["details"] == {"status": status} and status in res.body["error"]["message"]
    assert everything(r) == before


@pytest.mark.parametrize(
    ("raw_id", "vs", "query", "status", "code"),
    [
        ("0" * 32, "user1", {}, 404, "raw_memory_not_found"),
        ("XYZ", "user1", {}, 400, "invalid_raw_memory_id"),
        ("0" * 31, "user1", {}, 400, "invalid_raw_memory_id"),
        ("DEAD", "user10", {}, 404, "raw_memory_not_found"),  # another vectorstore's dead letter
        ("DEAD", "a:b", {}, 400, "invalid_vectorstore_name"),
        ("DEAD", "user1", {"now": "1"}, 400, "unknown_query_parameter"),
    ],
)
def test_bad_retries_change_nothing(
    dead: list[str], r: redis.Redis, raw_id: str, vs: str, query: dict[str, str], status: int, code: str
) -> None:
    before = everything(r)
    res = retry(dead[0] if raw_id == "DEAD" else raw_id, vs, **query)
    assert res.status == status, res.body
    assert res.error_code == code
    assert everything(r) == before


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "1001"}, "invalid_limit"),
        ({"limit": "x"}, "invalid_limit"),
        ({"offset": "2"}, "unknown_query_parameter"),
    ],
)
def test_bad_listing_parameters(dead: list[str], r: redis.Redis, query: dict[str, str], code: str) -> None:
    before = everything(r)
    res = dead_letters(**query)
    assert res.status == 400 and res.error_code == code
    assert everything(r) == before
