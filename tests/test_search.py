"""GET /search: semantic search with FILTERs built from typed values, pending_sessions, the
embedding-mismatch guard, round trips and bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from memproc import keys
from memproc import settings as settings_module
from memproc.dal.memory_index.vectorset import vsim_filter
from memproc.reads.search import memory_filter
from memproc.schemas.requests import SearchQuery
from tests.api_client import call, mem_path
from tests.chats import sessions
from tests.memory_helpers import drain, everything, store
from tests.redis_server import RedisServer


def search(vs: str = "user1", **query: Any) -> Any:
    return call("GET", mem_path(vs, "/search"), query=query)


@pytest.fixture
def memories(fake_llm: Any) -> Any:
    store("user1", "user: I prefer green tea over coffee.\nuser: I live in Porto.", "s-1")
    store("user1", "user: I adopted a cat named Miso.\nuser: I want to learn the cello.", "s-2")
    drain()
    return fake_llm


def test_search_finds_the_closest_memories(memories: Any) -> None:
    res = search(q="green tea")
    assert res.status == 200, res.body
    b = res.body
    assert b["success"] is True and b["query"] == "green tea" and b["k"] == 10
    top = b["results"][0]
    assert "green tea" in top["text"] and top["memory_type"] == "preference" and top["session_id"] == "s-1"
    assert top["source_sessions"] == ["s-1"] and "tea" in top["tags"] and top["created_at"].endswith("Z")
    assert top["similarity"] == pytest.approx(2 * top["score"] - 1, abs=1e-5)
    sims = [x["similarity"] for x in b["results"]]
    assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
    assert b["count"] == len(b["results"]) == 4
    assert b["pending_sessions"] == 0 and b["session_pending"] is None and b["note"] is None
    assert len(search(q="green tea", k="2").body["results"]) == 2


def test_filters_apply_inside_redis(memories: Any, r: redis.Redis) -> None:
    by_type = search(q="green tea", category="fact").body
    assert by_type["results"] and all(x["memory_type"] == "fact" for x in by_type["results"])
    assert by_type["filters"]["category"] == "fact"
    by_session = search(q="green tea", session_id="s-2").body["results"]
    assert by_session and all(x["session_id"] == "s-2" for x in by_session)
    now = datetime.fromtimestamp(r.time()[0], UTC)
    assert len(search(q="tea", start_date=(now - timedelta(hours=1)).isoformat()).body["results"]) == 4
    assert search(q="tea", start_date=(now + timedelta(hours=1)).isoformat()).body["results"] == []
    assert search(q="tea", end_date=(now - timedelta(days=1)).date().isoformat()).body["results"] == []
    none = search(q="tea", category="goal", session_id="s-1").body
    assert none["results"] == [] and none["note"] is None


def test_a_session_filter_matches_memories_merged_from_that_session(memories: Any) -> None:
    store("user1", "user: I prefer green tea over coffee.\nassistant: noted", "s-3")
    drain()
    hits = search(q="green tea", session_id="s-3").body["results"]
    assert hits and "green tea" in hits[0]["text"]
    assert hits[0]["session_id"] == "s-1" and set(hits[0]["source_sessions"]) == {"s-1", "s-3"}


def test_before_any_memory_exists_the_result_is_empty_and_explained(fake_llm: Any, r: redis.Redis) -> None:
    calls = fake_llm.embedding_calls
    res = search(q="green tea")
    assert res.status == 404 and res.error_code == "unknown_vectorstore"  # never written
    store("user1", "user: I prefer green tea.", "s-1")
    b = search(q="green tea", session_id="s-1").body
    assert b["results"] == [] and b["pending_sessions"] == 1 and b["session_pending"] is True
    assert "queued" in b["note"]
    assert fake_llm.embedding_calls == calls  # nothing to search: no embedding call either
    drain()
    b = search(q="green tea", session_id="s-1").body
    assert b["results"] and b["session_pending"] is False and b["pending_sessions"] == 0


def test_pending_sessions_counts_queued_work_of_this_vectorstore(memories: Any) -> None:
    store("user1", "user: I like jazz.", "s-9")
    store("user10", "user: other store", "x")
    b = search(q="jazz").body
    assert b["pending_sessions"] == 1 and b["results"]
    assert search(q="jazz", session_id="s-1").body["session_pending"] is False
    assert search(q="jazz", session_id="s-9").body["session_pending"] is True


def test_a_different_embedding_configuration_is_409(memories: Any, r: redis.Redis, env: Any) -> None:
    env.setenv("EMBEDDING_DIMENSIONS", "32")
    settings_module.get_settings.cache_clear()
    before = everything(r)
    calls = memories.embedding_calls
    res = search(q="green tea")
    assert res.status == 409 and res.error_code == "embedding_mismatch"
    assert "64" in res.body["error"]["message"] and "32" in res.body["error"]["message"]
    assert memories.embedding_calls == calls and everything(r) == before


def test_an_embedding_outage_is_503(memories: Any, env: Any) -> None:
    env.setenv("LLM_MAX_RETRIES", "0")
    settings_module.get_settings.cache_clear()
    memories.fail_next("500", count=1)
    res = search(q="green tea")
    assert res.status == 503 and res.error_code == "embedding_unavailable"


def test_the_filter_is_built_from_typed_values_only() -> None:
    q = SearchQuery(
        q='x" or 1 == 1',
        session_id="s-1",
        category="fact",
        start_date="2026-03-01",
        end_date="2026-03-01T12:00:00+02:00",
    )
    # Current memories only, and dates are the statement's own time (valid_from), as typed numbers.
    assert vsim_filter(memory_filter(q)) == (
        '.status == "current" and .memory_type == "fact" and "s-1" in .source_sessions '
        "and .valid_from >= 1772323200.000000 and .valid_from <= 1772359200.000000"
    )
    assert vsim_filter(memory_filter(SearchQuery(q="anything"))) == '.status == "current"'
    assert vsim_filter(memory_filter(SearchQuery(q="anything", include_superseded=True))) is None


def test_round_trips_do_not_grow_with_the_data(
    memories: Any, redis_server: RedisServer, backend: str
) -> None:
    search(q="tea", k="3")
    with redis_server.requests() as small:
        assert len(search(q="tea", k="3", session_id="s-1").body["results"]) == 2
    for i, text in enumerate(sessions(30, seed=21)):
        store("user1", text, f"g-{i}")
        store("user2", text, f"g-{i}")
    drain()
    with redis_server.requests() as large:
        assert len(search(q="tea", k="3", session_id="s-1").body["results"]) == 2
    # The vectorstore's state (pipelined; ZCARD of the memory index counts memories in either
    # engine), the nearest-neighbour query with its filter (VSIM ... FILTER, or a hybrid FT.SEARCH),
    # the records of the hits (pipelined).
    state = ["HMGET", "ZCARD", "ZCARD", "ZCARD"]
    expected = {
        "vectorset": [*state, "ZINTERCARD", "ZINTERCARD", "VSIM", "VGETATTR", "VGETATTR"],
        "search": [*state, "ZINTERCARD", "ZINTERCARD", "FT.SEARCH", "HGET", "HGET"],
    }
    assert small == large == expected[backend]
    with redis_server.requests() as unfiltered:
        assert len(search(q="tea", k="3").body["results"]) == 3
    expected = {
        "vectorset": [*state, "VSIM", "VGETATTR", "VGETATTR", "VGETATTR"],
        "search": [*state, "FT.SEARCH", "HGET", "HGET", "HGET"],
    }
    assert unfiltered == expected[backend]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({}, "invalid_q"),
        ({"q": ""}, "invalid_q"),
        ({"q": "   "}, "invalid_q"),
        ({"q": "x" * 2001}, "invalid_q"),
        ({"q": "tea", "k": "0"}, "invalid_k"),
        ({"q": "tea", "k": "101"}, "invalid_k"),
        ({"q": "tea", "k": "many"}, "invalid_k"),
        ({"q": "tea", "category": "discrete"}, "invalid_category"),
        ({"q": "tea", "category": 'fact" or 1'}, "invalid_category"),
        ({"q": "tea", "memory_type": "fact"}, "renamed_parameter"),  # the category filter's old name
        ({"q": "tea", "session_id": 's-1" or .x == 1'}, "invalid_session_id"),
        ({"q": "tea", "session_id": "s 1"}, "invalid_session_id"),
        ({"q": "tea", "start_date": "last week"}, "invalid_start_date"),
        ({"q": "tea", "start_date": "2026-03-02", "end_date": "2026-03-01"}, "invalid_date_range"),
        ({"q": "tea", "filter": ".x == 1"}, "unknown_query_parameter"),
    ],
)
def test_bad_input_is_400_and_changes_nothing(
    memories: Any, r: redis.Redis, query: dict[str, str], code: str
) -> None:
    before = everything(r)
    calls = memories.embedding_calls
    res = search(**query)
    assert res.status == 400, res.body
    assert res.error_code == code and res.body["error"]["message"]
    assert everything(r) == before and memories.embedding_calls == calls


def test_bad_vectorstore_name(env: Any, r: redis.Redis) -> None:
    res = search("a:b", q="tea")
    assert res.status == 400 and res.error_code == "invalid_vectorstore_name" and r.dbsize() == 0


def test_keys_of_other_vectorstores_are_not_searched(memories: Any) -> None:
    store("user10", "user: I prefer green tea over coffee.", "x-1")
    drain()
    assert all(x["session_id"] in ("s-1", "s-2") for x in search(q="green tea").body["results"])
    assert keys.VectorstoreKeys("user10").vectorset == "user10"
