"""GET /hierarchy: the three levels newest first, filters, cursor pagination, round trips, and bad
input (a clear 400, nothing changed)."""

from __future__ import annotations

import base64
import json
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
from tests.memory_helpers import commit_payload, drain, everything, memory_records, store, stored_memories
from tests.redis_server import RedisServer

CHAT = "user: I prefer green tea over coffee.\nuser: I live in Porto.\n"


def _cursor(positions: dict[str, Any]) -> str:
    """A hand-made cursor, as a client could forge one."""
    body = json.dumps({"v": 1, "f": "0" * 16, "p": positions}).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def hierarchy(vs: str = "user1", **query: Any) -> Any:
    return call("GET", mem_path(vs, "/hierarchy"), query=query)


def walk(vs: str = "user1", **query: Any) -> tuple[dict[str, list[str]], int]:
    """Follow next_cursor to the end: every id of each group, in order, and the page count."""
    seen: dict[str, list[str]] = {"discrete": [], "summary": [], "raw": []}
    cursor, pages = None, 0
    while True:
        res = hierarchy(vs, **query, **({"cursor": cursor} if cursor else {}))
        assert res.status == 200, res.body
        pages += 1
        b = res.body
        seen["discrete"] += [m["memory_id"] for m in b["discrete_memories"]]
        seen["summary"] += [s["session_id"] for s in b["session_summaries"]]
        seen["raw"] += [x["raw_memory_id"] for x in b["raw_memories"]]
        assert all(
            len(b[g]) <= query.get("limit", 50)
            for g in ("discrete_memories", "session_summaries", "raw_memories")
        )
        cursor = b["next_cursor"]
        if not cursor:
            return seen, pages
        assert pages < 100


def test_the_hierarchy_has_memories_summaries_and_raw_submissions(fake_llm: Any, r: redis.Redis) -> None:
    first = store("user1", CHAT, "s-1", {"app": "chat"})
    second = store("user1", "user: I adopted a cat named Miso.", "s-2")
    drain()
    queued = store("user1", "user: I play the cello.", "s-3")

    res = hierarchy()
    assert res.status == 200, res.body
    b = res.body
    assert b["success"] is True and b["vectorstore_name"] == "user1"
    assert b["filters"] == {
        "session_id": None,
        "memory_type": "all",
        "category": None,
        "start_date": None,
        "end_date": None,
        "limit": 50,
    }
    assert len(b["discrete_memories"]) == stored_memories(r, "user1") >= 3
    m = next(m for m in b["discrete_memories"] if "green tea" in m["text"])
    assert m["memory_type"] == "preference" and m["session_id"] == "s-1" and m["source_sessions"] == ["s-1"]
    assert m["raw_memory_id"] == first["raw_memory_id"] and m["created_at"].endswith("Z")
    # Newest first in every group.
    created = [m["created_at"] for m in b["discrete_memories"]]
    assert created == sorted(created, reverse=True)
    assert {s["session_id"] for s in b["session_summaries"]} == {"s-1", "s-2"}
    updated = [s["updated_at"] for s in b["session_summaries"]]
    assert updated == sorted(updated, reverse=True)
    s1 = next(s for s in b["session_summaries"] if s["session_id"] == "s-1")
    assert s1["summary"] and s1["memory_count"] == len(s1["memory_ids"]) == 2
    assert s1["raw_memory_ids"] == [first["raw_memory_id"]] and s1["expires_at"]
    assert [x["raw_memory_id"] for x in b["raw_memories"]] == [
        queued["raw_memory_id"],
        second["raw_memory_id"],
        first["raw_memory_id"],
    ]
    assert [x["status"] for x in b["raw_memories"]] == ["queued", "processed", "processed"]
    raw = b["raw_memories"][2]
    assert raw["session_length"] == len(CHAT) and raw["metadata"] == {"app": "chat"}
    assert raw["memories_created"] == 2 and raw["tokens_in"] > 0 and raw["expires_at"]
    assert all("session_data" not in x for x in b["raw_memories"])  # never the transcript
    assert b["counts"] == {"discrete": len(b["discrete_memories"]), "summary": 2, "raw": 3}
    assert b["total_count"] == sum(b["counts"].values())
    assert b["next_cursor"] is None


@pytest.mark.parametrize("level", ["discrete", "summary", "raw"])
def test_memory_type_selects_one_level(fake_llm: Any, level: str) -> None:
    store("user1", CHAT, "s-1")
    drain()
    b = hierarchy(memory_type=level).body
    got = {
        g: len(b[k])
        for g, k in (
            ("discrete", "discrete_memories"),
            ("summary", "session_summaries"),
            ("raw", "raw_memories"),
        )
    }
    assert got[level] > 0 and all(n == 0 for g, n in got.items() if g != level)
    assert b["filters"]["memory_type"] == level


def test_session_filter_returns_that_session_including_memories_merged_into_others(fake_llm: Any) -> None:
    store("user1", "user: I prefer green tea over coffee.", "s-1")
    store("user1", "user: I live in Lisbon and I collect stamps.", "s-2")
    drain()
    repeat = store("user1", "user: I prefer green tea over coffee.\nassistant: noted", "s-3")
    drain()
    b = hierarchy(session_id="s-3").body
    assert b["filters"]["session_id"] == "s-3"
    # s-3's memory merged into s-1's: it lists both sessions and shows up for s-3.
    assert b["discrete_memories"] and all("s-3" in m["source_sessions"] for m in b["discrete_memories"])
    assert [s["session_id"] for s in b["session_summaries"]] == ["s-3"]
    assert [x["raw_memory_id"] for x in b["raw_memories"]] == [repeat["raw_memory_id"]]
    other = hierarchy(session_id="s-2").body
    assert all("s-2" in m["source_sessions"] for m in other["discrete_memories"])
    assert not {m["memory_id"] for m in other["discrete_memories"]} & {
        m["memory_id"] for m in b["discrete_memories"]
    }
    assert hierarchy(session_id="nobody").body["total_count"] == 0


def test_date_range_filters_every_level(fake_llm: Any, r: redis.Redis) -> None:
    store("user1", CHAT, "s-1")
    drain()
    now = datetime.fromtimestamp(r.time()[0], UTC)
    everything_now = hierarchy(
        start_date=(now - timedelta(hours=1)).isoformat(), end_date=now.date().isoformat()
    )
    assert everything_now.status == 200 and everything_now.body["counts"] == {
        "discrete": 2,
        "summary": 1,
        "raw": 1,
    }
    # A naive date-time is UTC; a bare end date includes the whole day.
    assert everything_now.body["filters"]["end_date"].startswith(f"{now.date().isoformat()}T23:59:59")
    naive = (now - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert hierarchy(start_date=naive).body["total_count"] == 4
    assert hierarchy(start_date=(now + timedelta(days=1)).isoformat()).body["total_count"] == 0
    assert (
        hierarchy(end_date=(now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S+02:00")).body["total_count"]
        == 0
    )
    assert (
        hierarchy(session_id="s-1", start_date=(now + timedelta(hours=1)).isoformat()).body["total_count"]
        == 0
    )


def test_the_cursor_walks_every_item_exactly_once(fake_llm: Any, r: redis.Redis) -> None:
    for i, text in enumerate(sessions(7, seed=3)):
        store("user1", text, f"s-{i}")
    drain()
    for i, text in enumerate(sessions(3, seed=4)):
        store("user1", text, f"q-{i}")  # still queued
    vk = keys.VectorstoreKeys("user1")
    everything_, _ = walk(limit=1000)
    assert len(everything_["discrete"]) == r.zcard(vk.memory_index) == stored_memories(r, "user1")
    assert len(everything_["summary"]) == 7 and len(everything_["raw"]) == 10
    # Memories of one session share a timestamp: pages of 1 and 3 step over ties correctly.
    longest = max(len(v) for v in everything_.values())
    for limit in (1, 3):
        paged, pages = walk(limit=limit)
        assert paged == everything_
        assert pages == -(-longest // limit)  # no empty last page
    paged, _ = walk(limit=2, memory_type="raw")
    assert paged["raw"] == everything_["raw"] and paged["discrete"] == []


def test_the_cursor_walks_one_session(fake_llm: Any) -> None:
    base = "user: I keep a lantern juniper notebook.\n"
    ids = []
    plants = ["kelp", "iris", "onyx", "dune", "yarrow"]
    for i in range(5):  # a growing session re-posted: five submissions
        base += f"user: My neighbour number {i} is called {'ABCDE'[i]}lex and grows {plants[i]}.\n"
        ids.append(store("user1", base, "s-1")["raw_memory_id"])
        drain()
    full, _ = walk(session_id="s-1")
    paged, _ = walk(session_id="s-1", limit=2)
    assert paged == full and full["raw"] == ids[::-1] and full["summary"] == ["s-1"]
    assert len(full["discrete"]) == len(set(full["discrete"])) >= 5


def cleanup_then_totals() -> dict[str, int]:
    assert call("POST", mem_path("user1", "/cleanup")).status == 200
    return dict(hierarchy().body["totals"])


def test_expired_records_are_skipped_and_not_counted(fake_llm: Any, r: redis.Redis) -> None:
    a = store("user1", CHAT, "s-1")
    store("user1", "user: I adopted a cat named Miso.", "s-2")
    drain()
    vk = keys.VectorstoreKeys("user1")
    r.delete(vk.raw(a["raw_memory_id"]), vk.session_summary("s-1"))  # as their TTL would
    b = hierarchy().body
    assert a["raw_memory_id"] not in [x["raw_memory_id"] for x in b["raw_memories"]]
    assert [s["session_id"] for s in b["session_summaries"]] == ["s-2"]
    assert b["counts"]["raw"] == 1 and b["counts"]["summary"] == 1
    # total_count counts index entries: an expired transcript counts until cleanup trims it; a session
    # whose summary expired stays indexed while its (permanent) memories exist.
    assert b["totals"]["raw"] == 2 and b["totals"]["summary"] == 2
    assert b["total_count"] == sum(b["totals"].values())
    assert cleanup_then_totals() == {**b["totals"], "raw": 1}
    # Still walkable page by page past the expired entries.
    paged, _ = walk(limit=1)
    assert paged["summary"] == ["s-2"] and len(paged["raw"]) == 1


def test_an_unknown_vectorstore_is_a_404(env: Any, r: redis.Redis) -> None:
    res = hierarchy("nobody")
    assert res.status == 404 and res.error_code == "unknown_vectorstore"
    assert r.dbsize() == 0


def test_round_trips_do_not_grow_with_the_data(
    fake_llm: Any, redis_server: RedisServer, backend: str
) -> None:
    for i, text in enumerate(sessions(4, seed=5)):
        store("user1", text, f"a-{i}")
    drain()
    hierarchy(limit=3)  # connect
    with redis_server.requests() as small:
        assert hierarchy(limit=3).body["counts"] == {"discrete": 3, "summary": 3, "raw": 3}
    for i, text in enumerate(sessions(30, seed=6)):
        store("user1", text, f"b-{i}")
        store("other", text, f"b-{i}")
    drain()
    with redis_server.requests() as large:
        assert hierarchy(limit=3).body["counts"] == {"discrete": 3, "summary": 3, "raw": 3}
    assert small == large
    # Two pipelined round trips: three index ranges with their counts, then the records of the page
    # (a memory's is its vector set element's attributes, or the `attrs` field of its hash).
    memory_reads = {"vectorset": ["VGETATTR"] * 3, "search": ["HGET"] * 3}
    expected = (
        ["ZRANGE"] * 3
        + ["ZCOUNT"] * 3
        + memory_reads[backend]
        + ["GET", "EXPIRETIME"] * 3
        + ["HMGET", "EXPIRETIME"] * 3
    )
    assert small == expected
    with redis_server.requests() as by_session:
        assert hierarchy(session_id="b-7", limit=3).status == 200
    assert by_session[:4] == ["SMEMBERS", "GET", "EXPIRETIME", "ZRANGE"]
    assert not {"SCAN", "KEYS"} & set(small + large + by_session)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"memory_type": "bogus"}, "invalid_memory_type"),
        ({"memory_type": ""}, "invalid_memory_type"),
        ({"start_date": "yesterday"}, "invalid_start_date"),
        ({"end_date": "2026-13-01"}, "invalid_end_date"),
        ({"start_date": ""}, "invalid_start_date"),
        ({"start_date": "2026-03-02", "end_date": "2026-03-01"}, "invalid_date_range"),
        (
            {"start_date": "2026-03-01T12:00:00+00:00", "end_date": "2026-03-01T13:00:00+02:00"},
            "invalid_date_range",
        ),
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "1001"}, "invalid_limit"),
        ({"limit": "ten"}, "invalid_limit"),
        ({"limit": "-5"}, "invalid_limit"),
        ({"session_id": "bad id"}, "invalid_session_id"),
        ({"session_id": "x" * 257}, "invalid_session_id"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"cursor": "eyJ2IjoxfQ"}, "invalid_cursor"),
        ({"cursor": _cursor({"raw": ["nan", "x", 1]})}, "invalid_cursor"),
        ({"cursor": _cursor({"raw": ["1.5", "x", 10**9]})}, "invalid_cursor"),
        ({"cursor": _cursor({"raw": ["1.5", "x", -1]})}, "invalid_cursor"),
        ({"cursor": _cursor({"everything": None})}, "invalid_cursor"),
        ({"sesion_id": "s-1"}, "unknown_query_parameter"),
    ],
)
def test_bad_input_is_a_clear_400_and_changes_nothing(
    fake_llm: Any, r: redis.Redis, query: dict[str, str], code: str
) -> None:
    store("user1", CHAT, "s-1")
    drain()
    before = everything(r)
    res = hierarchy(**query)
    assert res.status == 400, res.body
    assert res.error_code == code and res.body["success"] is False and res.body["error"]["message"]
    assert everything(r) == before


def test_a_cursor_only_fits_the_filters_it_came_from(fake_llm: Any) -> None:
    for i, text in enumerate(sessions(3, seed=8)):
        store("user1", text, f"s-{i}")
    drain()
    cursor = hierarchy(limit=1).body["next_cursor"]
    assert cursor
    res = hierarchy(limit=1, memory_type="raw", cursor=cursor)
    assert (
        res.status == 400 and res.error_code == "invalid_cursor" and "filters" in res.body["error"]["message"]
    )
    assert hierarchy(limit=2, cursor=cursor).status == 200  # the page size may change


@pytest.mark.parametrize("name", ["*", "a:b", "{x}", "RAW_MEMORY_QUEUE", "x" * 129])
def test_bad_vectorstore_names_are_refused(env: Any, r: redis.Redis, name: str) -> None:
    res = hierarchy(name)
    assert res.status == 400 and res.error_code == "invalid_vectorstore_name"
    assert r.dbsize() == 0


# -- total_count and category ------------------------------------------------------------------------

TYPED = [
    "user: I prefer green tea over coffee.\nuser: I live in Porto.\n",
    "user: I adopted a cat named Miso.\nuser: I love hiking in the mountains.\n",
    "user: My goal is to run a marathon next year.\nuser: I work as a nurse.\n",
]


def test_totals_count_every_matching_item_whatever_the_page(fake_llm: Any, r: redis.Redis) -> None:
    for i, text in enumerate(TYPED + sessions(3, seed=9)):
        store("user1", text, f"s-{i}")
    store("user10", TYPED[0], "s-0")  # a name sharing the prefix is not counted
    drain()
    for query in (
        {},
        {"memory_type": "discrete"},
        {"session_id": "s-1"},
        {"category": "preference"},
        {"category": "fact", "session_id": "s-0"},
        {"start_date": "2000-01-01", "end_date": "2000-12-31"},
    ):
        everything_, _ = walk(limit=1, **query)
        first = hierarchy(limit=1, **query).body
        expected = {g: len(ids) for g, ids in everything_.items()}
        groups = {"discrete": ("discrete",)}.get(
            str(query.get("memory_type")), ("discrete", "summary", "raw")
        )
        assert first["totals"] == {g: (expected[g] if g in groups else 0) for g in expected}, query
        assert first["total_count"] == sum(first["totals"].values())
        # The same on every page.
        second = (
            hierarchy(limit=1, cursor=first["next_cursor"], **query).body if first["next_cursor"] else first
        )
        assert second["totals"] == first["totals"] and second["total_count"] == first["total_count"]


def test_category_narrows_discrete_memories_only(fake_llm: Any, r: redis.Redis) -> None:
    for i, text in enumerate(TYPED):
        store("user1", text, f"s-{i}")
    drain()
    everything_ = hierarchy(memory_type="discrete").body["discrete_memories"]
    by_type: dict[str, set[str]] = {}
    for m in everything_:
        by_type.setdefault(m["memory_type"], set()).add(m["memory_id"])
    assert len(by_type) >= 2, by_type
    for category, ids in by_type.items():
        paged, _ = walk(limit=1, memory_type="discrete", category=category)
        assert set(paged["discrete"]) == ids and len(paged["discrete"]) == len(ids)
        b = hierarchy(category=category).body
        assert b["filters"]["category"] == category and b["totals"]["discrete"] == len(ids)
        assert len(b["session_summaries"]) == 3  # summaries and raw submissions are not filtered


def test_a_changed_category_and_an_erased_memory_leave_their_listing(fake_llm: Any, r: redis.Redis) -> None:
    store("user1", TYPED[0], "s-0")
    drain()
    vk = keys.VectorstoreKeys("user1")
    m = hierarchy(category="preference").body["discrete_memories"][0]
    score = r.zscore(vk.category_index("preference"), m["memory_id"])
    assert score is not None and score == r.zscore(vk.memory_index, m["memory_id"])
    # A later session updates it and the update changes its type.
    store("user1", "user: Actually my goal is to drink only oolong.", "s-1")
    item = queue.claim(get_store(), get_settings(), 1).items[0]
    payload, vectors = commit_payload(int(r.hget(vk.config, "dimensions") or 64))
    attrs = memory_records("user1")[m["memory_id"]]
    update = {"op": "update", "target": m["memory_id"], "seq": attrs["seq"], "text": "The user wants oolong."}
    payload.update(
        ops=[
            {**update, "memory_type": "goal", "confidence": 0.9, "tags": [], "vector": 0, "prior_vector": 1}
        ],
        seen_seq=int(r.hget(vk.config, "memory_seq") or 0),
        embedding_model=r.hget(vk.config, "embedding_model"),
    )
    assert queue.commit(get_store(), item, payload, vectors * 2).outcome == "ok"
    # It moves to its new category's listing, at the time of the session that said it now.
    assert r.zscore(vk.category_index("preference"), m["memory_id"]) is None
    assert r.zscore(vk.category_index("goal"), m["memory_id"]) == payload["valid_from"] != score
    assert r.zscore(vk.memory_index, m["memory_id"]) == payload["valid_from"]
    assert [x["memory_id"] for x in hierarchy(category="goal").body["discrete_memories"]] == [m["memory_id"]]
    assert call("DELETE", mem_path("user1", f"/memories/{m['memory_id']}")).status == 200
    assert r.zscore(vk.category_index("goal"), m["memory_id"]) is None
    assert hierarchy(category="goal").body["totals"]["discrete"] == 0
    assert call("DELETE", mem_path("user1")).status == 200
    assert not any(r.exists(vk.category_index(c)) for c in ("fact", "preference", "event", "goal"))


def test_cleanup_lists_memories_written_before_category_listings(fake_llm: Any, r: redis.Redis) -> None:
    store("user1", TYPED[0], "s-0")
    drain()
    vk = keys.VectorstoreKeys("user1")
    before = {c: r.zrange(vk.category_index(c), 0, -1, withscores=True) for c in ("fact", "preference")}
    assert sum(len(v) for v in before.values()) == r.zcard(vk.memory_index) >= 2
    r.delete(*(vk.category_index(c) for c in before))  # as a vectorstore written by an older memproc
    dry = call("POST", mem_path("user1", "/cleanup"), query={"dry_run": "true"}).body
    assert dry["reconciled"]["category_indexed"] == r.zcard(vk.memory_index)
    assert not r.exists(vk.category_index("fact"))
    assert call("POST", mem_path("user1", "/cleanup")).body["reconciled"]["category_indexed"] >= 2
    assert {c: r.zrange(vk.category_index(c), 0, -1, withscores=True) for c in before} == before


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"category": "discrete"}, "invalid_category"),
        ({"category": "Fact"}, "invalid_category"),
        ({"category": "fact", "memory_type": "summary"}, "invalid_category"),
        ({"category": "fact", "memory_type": "raw"}, "invalid_category"),
    ],
)
def test_a_bad_category_is_400(env: Any, r: redis.Redis, query: dict[str, str], code: str) -> None:
    store("user1", TYPED[0], "s-0")
    before = everything(r)
    res = hierarchy(**query)
    assert res.status == 400 and res.error_code == code, res.body
    assert everything(r) == before
