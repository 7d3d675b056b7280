"""Erasure: DELETE a memory, a session, a whole vectorstore. Receipts, nothing of the erased data
left anywhere (queue sets included), nothing else touched (other sessions' memories, other
vectorstores such as `user10` next to `user1`), and a processor racing the erasure is fenced out."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import redis

from memproc import keys, retention
from memproc.dal import queue
from memproc.dal.connection import get_store
from memproc.processor import build_processor
from memproc.settings import get_settings
from tests.api_client import call, mem_path
from tests.memory_helpers import (
    commit_payload,
    drain,
    everything,
    memory_records,
    snapshot,
    store,
    stored_memories,
)

U1 = keys.VectorstoreKeys("user1")
TEA = "user: I prefer green tea over coffee.\nuser: I live in Porto.\n"


def delete(path: str, vs: str = "user1", **query: Any) -> Any:
    return call("DELETE", mem_path(vs, path), query=query)


@dataclass
class Scene:
    processed: str
    dead: str
    claim: queue.Claim  # a worker holds this one
    queued: str
    shared_memory: str  # from s-1, merged with s-2
    other_raw: str  # s-2's
    bystander: str  # s-3, queued


@pytest.fixture
def scene(fake_llm: Any, r: redis.Redis) -> Scene:
    processed = store("user1", TEA, "s-1")["raw_memory_id"]
    store("user10", TEA, "s-1")  # the same session id in a vectorstore whose name extends ours
    store("user", TEA, "s-1")  # ...and in one whose name is our prefix
    drain()
    other_raw = store(
        "user1", "user: I prefer green tea over coffee.\nuser: I adopted a cat named Miso.", "s-2"
    )["raw_memory_id"]
    drain()
    dead = store("user1", TEA + "user: I play chess.\n", "s-1")["raw_memory_id"]
    fake_llm.fail_next("400", count=1)
    assert drain().dead == 1
    store("user1", TEA + "user: I swim on Sundays.\n", "s-1")
    claim = queue.claim(get_store(), get_settings(), 1).items[0]
    queued = store("user1", TEA + "user: I bake bread.\n", "s-1")["raw_memory_id"]
    bystander = store("user1", "user: I collect vinyl records.", "s-3")["raw_memory_id"]
    store("user10", "user: I collect vinyl records.", "s-9")
    shared = next(mid for mid, a in memory_records("user1").items() if len(a["source_sessions"]) == 2)
    return Scene(processed, dead, claim, queued, shared, other_raw, bystander)


def keys_mentioning(r: redis.Redis, text: str) -> list[str]:
    return sorted(k for k in r.scan_iter(count=1000) if text in k)


def test_erasing_a_session(scene: Scene, r: redis.Redis) -> None:
    others = {vs: snapshot(r, vs) for vs in ("user10", "user")}
    s2_summary = json.loads(r.get(U1.session_summary("s-2")))
    s2_memories = r.smembers(U1.session_memories("s-2"))
    before = memory_records("user1")
    only_s1 = {mid for mid, a in before.items() if a["source_sessions"] == ["s-1"]}
    vcard = stored_memories(r, "user1")

    res = delete("/session/s-1")
    assert res.status == 200, res.body
    b = res.body
    assert b["success"] is True and b["erased"] == "session" and b["id"] == "s-1" and b["complete"] is True
    assert b["removed"] == {
        "raw_memories": 4,
        "queue_entries": 3,
        "dedupe_keys": 4,
        "memories": len(only_s1),
        "memories_updated": 1,
        "references_updated": 0,
        "transcripts_purged": 0,
        "sessions": 1,
        "summaries": 1,
    }

    assert [k for k in keys_mentioning(r, "s-1") if not k.startswith(("{user10}", "{user}"))] == []
    for rid in (scene.processed, scene.dead, scene.claim.raw_id, scene.queued):
        assert not r.exists(U1.raw(rid))
        assert all(
            r.zscore(z, U1.raw(rid)) is None for z in (keys.RAW_MEMORY_QUEUE, keys.INFLIGHT, keys.DEAD)
        )
        assert all(r.zscore(z, rid) is None for z in (U1.pending, U1.inflight, U1.dead, U1.raw_index))
    after = memory_records("user1")
    assert stored_memories(r, "user1") == vcard - len(only_s1) and not only_s1 & set(after)
    assert r.zcard(U1.memory_index) == len(after)
    shared = after[scene.shared_memory]
    assert shared["source_sessions"] == ["s-2"] and shared["session_id"] == "s-2"
    assert shared["source_raw_ids"] == [scene.other_raw] and shared["raw_memory_id"] == scene.other_raw
    assert {mid: a for mid, a in after.items() if mid != scene.shared_memory} == {
        mid: a for mid, a in before.items() if mid not in only_s1 and mid != scene.shared_memory
    }
    assert json.loads(r.get(U1.session_summary("s-2"))) == s2_summary
    assert r.smembers(U1.session_memories("s-2")) == s2_memories
    assert {vs: snapshot(r, vs) for vs in ("user10", "user")} == others
    # Reads agree; the other session's queued item is still served.
    assert call("GET", mem_path("user1", "/session/s-1")).status == 404
    assert call("GET", mem_path("user1", "/hierarchy"), query={"session_id": "s-1"}).body["total_count"] == 0
    assert r.zscore(U1.pending, scene.bystander) is not None
    assert drain().processed == 2  # s-3 and user10's s-9
    assert delete("/session/s-1").status == 404


def test_a_worker_holding_an_erased_item_is_fenced_out(scene: Scene, r: redis.Redis) -> None:
    assert delete("/session/s-1").status == 200
    state = snapshot(r, "user1")
    payload, vectors = commit_payload()
    assert queue.commit(get_store(), scene.claim, payload, vectors).outcome == "stale"
    assert queue.fail(get_store(), get_settings(), scene.claim, "late", retryable=True)[0] == "stale"
    assert snapshot(r, "user1") == state
    assert [k for k in keys_mentioning(r, "s-1") if k.startswith("{user1}")] == []


def test_an_erasure_during_processing_leaves_nothing_behind(fake_llm: Any, r: redis.Redis) -> None:
    store("user1", "user: I keep bees on my roof.", "s-keep")
    drain()
    state = snapshot(r, "user1")
    store("user1", TEA, "s-1")
    processor = build_processor(get_settings())
    extract = processor.provider.extract

    def erase_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # The worker has claimed and loaded the session; the user erases it while the LLM runs.
        assert delete("/session/s-1").status == 200
        return extract(*args, **kwargs)

    processor.provider.extract = erase_meanwhile  # type: ignore[method-assign]
    report = processor.drain()
    assert report.stale == 1 and report.processed == 0
    after = snapshot(r, "user1")
    changed = {k for k in set(state) | set(after) if state.get(k) != after.get(k)}
    # As if s-1 had never been stored: only the lifetime "received" counter and the time the
    # vectorstore last received something moved. No memory, summary or index entry came back.
    assert changed == {"{user1}:counters", "global vectorstores"}


def test_erasing_one_memory(scene: Scene, r: redis.Redis) -> None:
    others = {vs: snapshot(r, vs) for vs in ("user10", "user")}
    before = memory_records("user1")
    mid = scene.shared_memory
    res = delete(f"/memories/{mid}")
    assert res.status == 200, res.body
    assert res.body["erased"] == "memory" and res.body["id"] == mid
    assert res.body["removed"]["memories"] == 1 and res.body["removed"]["references_updated"] == 4
    after = memory_records("user1")
    assert mid not in after and after == {k: v for k, v in before.items() if k != mid}
    assert r.zscore(U1.memory_index, mid) is None
    for sid in ("s-1", "s-2"):
        assert mid not in r.smembers(U1.session_memories(sid))
        summary = json.loads(r.get(U1.session_summary(sid)))
        assert mid not in summary["memory_ids"] and summary["memory_count"] == len(summary["memory_ids"])
        assert r.ttl(U1.session_summary(sid)) > 364 * 86400  # the TTL is kept
    for rid in (scene.processed, scene.other_raw):
        assert mid not in json.loads(r.hget(U1.raw(rid), "memory_ids"))
        assert r.ttl(U1.raw(rid)) > 29 * 86400
    assert {vs: snapshot(r, vs) for vs in ("user10", "user")} == others
    assert delete(f"/memories/{mid}").status == 404


def test_erasing_a_vectorstore(scene: Scene, r: redis.Redis) -> None:
    others = {vs: snapshot(r, vs) for vs in ("user10", "user")}
    memories = stored_memories(r, "user1")
    res = delete("")
    assert res.status == 200, res.body
    b = res.body
    assert b["erased"] == "vectorstore" and b["id"] == "user1" and b["complete"] is True
    assert b["removed"]["raw_memories"] == 6 and b["removed"]["queue_entries"] == 4
    assert b["removed"]["memories"] == memories and b["removed"]["sessions"] == 2
    assert snapshot(r, "user1") == {
        f"global {z}": []
        for z in ("RAW_MEMORY_QUEUE", "{RAW_MEMORY_QUEUE}:inflight", "{RAW_MEMORY_QUEUE}:dead")
    } | {"global ready": None, "global vectorstores": None}
    assert {vs: snapshot(r, vs) for vs in ("user10", "user")} == others
    # The worker that held an item commits into nothing.
    payload, vectors = commit_payload()
    assert queue.commit(get_store(), scene.claim, payload, vectors).outcome == "stale"
    assert not r.exists("user1") and keys_mentioning(r, "{user1}") == []
    assert delete("").status == 404
    assert call("GET", mem_path("user1", "/stats")).error_code == "unknown_vectorstore"  # it is gone


def test_a_huge_vectorstore_is_erased_in_bounded_steps(scene: Scene, r: redis.Redis) -> None:
    others = snapshot(r, "user10")
    first = retention.erase_vectorstore(get_store(), "user1", batch=1, budget_seconds=0)
    assert first.complete is False and first.removed.raw_memories == 1
    res = delete("")  # the API finishes the job
    assert res.status == 200 and res.body["complete"] is True
    assert res.body["removed"]["raw_memories"] == 5
    assert keys_mentioning(r, "{user1}") == [] and not r.exists("user1")
    assert snapshot(r, "user10") == others


def test_encoded_session_ids_are_erased(fake_llm: Any, r: redis.Redis) -> None:
    sid = "a:b@c+d=e"
    store("user1", TEA, sid)
    drain()
    res = call("DELETE", mem_path("user1", f"/session/{quote(sid, safe='')}"))
    assert res.status == 200 and res.body["id"] == sid
    assert keys_mentioning(r, sid) == []


@pytest.mark.parametrize(
    ("path", "vs", "query", "status", "code"),
    [
        ("/memories/not-a-memory", "user1", {}, 400, "invalid_memory_id"),
        ("/memories/" + "0" * 32 + "-x", "user1", {}, 400, "invalid_memory_id"),
        ("/memories/" + "0" * 32 + "-0", "user1", {}, 404, "memory_not_found"),
        ("/session/bad%20id", "user1", {}, 400, "invalid_session_id"),
        ("/session/nobody", "user1", {}, 404, "session_not_found"),
        ("/session/s-1", "user1", {"cascade": "true"}, 400, "unknown_query_parameter"),
        ("/session/s-1", "a:b", {}, 400, "invalid_vectorstore_name"),
        ("", "nobody", {}, 404, "unknown_vectorstore"),
        ("", "user1", {"force": "1"}, 400, "unknown_query_parameter"),
        ("", "RAW_MEMORY_QUEUE", {}, 400, "invalid_vectorstore_name"),
        ("", "{user1}", {}, 400, "invalid_vectorstore_name"),
    ],
)
def test_bad_or_unknown_targets_change_nothing(
    scene: Scene, r: redis.Redis, path: str, vs: str, query: dict[str, str], status: int, code: str
) -> None:
    before = everything(r)
    res = delete(path, vs, **query)
    assert res.status == status, res.body
    assert res.error_code == code and res.body["error"]["message"]
    assert everything(r) == before


def test_each_erasure_is_one_atomic_call(scene: Scene, redis_server: Any) -> None:
    with redis_server.requests() as seen:
        assert delete(f"/memories/{scene.shared_memory}").status == 200
        assert delete("/session/s-1").status == 200
        assert delete("").status == 200
    assert seen == ["FCALL", "FCALL", "FCALL"]


# Erasing a session undoes what it stated, and only that (read back through the API).
BANK, BARCLAYS = "The user works at a bank.", "The user works at Barclays."
LISBON, BERLIN = "The user lives in Lisbon.", "The user lives in Berlin."
VEGGIE = "The user is vegetarian."


def _scripted(fake_llm: Any, answers: dict[str, tuple[list[str], list[dict[str, Any]]]]) -> None:
    """The model's answer by the session's first user line: new memories and operations on the
    shown memories, named by their text (the fake gives the shown (id, text) pairs)."""

    def answer(transcript: str, shown: list[tuple[str, str]]) -> dict[str, Any] | None:
        for marker, (adds, ops) in answers.items():
            if marker in transcript:
                ids = {text: sid for sid, text in shown}
                return {
                    "memories": [
                        {"text": t, "memory_type": "fact", "confidence": 0.9, "tags": []} for t in adds
                    ],
                    "operations": [
                        {"op": o["op"], "id": ids[o["of"]], "text": o.get("text"),
                         "memory_type": "fact" if o.get("text") else None,
                         "confidence": 0.9 if o.get("text") else None, "tags": []}
                        for o in ops
                    ],
                    "summary": f"The user talked about {marker}.",
                    "topics": [],
                }  # fmt: skip
        return None

    fake_llm.reconciliation_for = answer


def _memories(vs: str = "user1") -> dict[str, dict[str, Any]]:
    res = call("GET", mem_path(vs, "/hierarchy"), query={"memory_type": "discrete", "limit": "100"})
    assert res.status == 200, res.body
    return {m["text"]: m for m in res.body["discrete_memories"]}


def _sessions(fake_llm: Any, *steps: tuple[str, str]) -> None:
    """Each session on its own day (January 10, 11, ...), processed before the next is stored."""
    for day, (sid, transcript) in enumerate(steps, start=10):
        store("user1", transcript, sid, metadata={"session_timestamp": f"2026-01-{day}T09:00:00Z"})
        assert drain().processed == 1


@pytest.fixture
def updated(fake_llm: Any) -> None:
    """s-a says it works at a bank; s-b refines that to Barclays (an update of the same memory)."""
    _scripted(
        fake_llm,
        {
            "bank": ([BANK], []),
            "Barclays": ([], [{"op": "update", "of": BANK, "text": BARCLAYS}]),
        },
    )
    _sessions(fake_llm, ("s-a", "user: I work at a bank."), ("s-b", "user: It is Barclays, actually."))
    memory = _memories()[BARCLAYS]
    assert [(h["op"], h["text"], h["stated_by"], h["session_id"]) for h in memory["history"]] == [
        ("update", BANK, ["s-a"], "s-b")
    ]


def test_erasing_the_updating_session_restores_the_text_it_replaced(updated: None, r: redis.Redis) -> None:
    assert delete("/session/s-b").status == 200
    memories = _memories()
    assert list(memories) == [BANK]
    assert (memories[BANK]["status"], memories[BANK]["source_sessions"], memories[BANK]["history"]) == (
        "current",
        ["s-a"],
        [],
    )
    # ...with the vector of that text (its own words find it at similarity 1, Barclays' would not),
    # and nothing of s-b's is left.
    res = call("GET", mem_path("user1", "/search"), query={"q": BANK, "k": "1"})
    assert [(m["text"], round(m["similarity"], 2)) for m in res.body["results"]] == [(BANK, 1.0)]
    assert keys_mentioning(r, "Barclays") == []
    assert r.hlen(U1.memory_versions) == 0


def test_erasing_the_session_an_update_replaced_removes_its_statement(updated: None, r: redis.Redis) -> None:
    assert delete("/session/s-a").status == 200
    memory = _memories()[BARCLAYS]
    assert (memory["source_sessions"], memory["history"]) == (["s-b"], [])
    assert keys_mentioning(r, "at a bank") == []
    assert r.hlen(U1.memory_versions) == 0


def test_an_update_moves_the_memory_in_time(updated: None) -> None:
    """The memory now holds what s-b said on January 11: the hierarchy orders and filters it by
    that time, as search does, with or without a session filter."""
    assert _memories()[BARCLAYS]["valid_from"].startswith("2026-01-11T09:00:00")
    for query in ({}, {"session_id": "s-a"}, {"session_id": "s-b"}):
        found = {}
        for start, end in (("2026-01-11", "2026-01-11"), ("2026-01-10", "2026-01-10")):
            res = call(
                "GET",
                mem_path("user1", "/hierarchy"),
                query={"memory_type": "discrete", "start_date": start, "end_date": end, **query},
            )
            assert res.status == 200, res.body
            found[start] = [m["text"] for m in res.body["discrete_memories"]]
        assert found == {"2026-01-11": [BARCLAYS], "2026-01-10": []}, query


def test_erasing_a_superseding_session_makes_the_old_fact_current_again(fake_llm: Any) -> None:
    _scripted(
        fake_llm,
        {
            "Lisbon": ([LISBON], []),
            "Berlin": ([], [{"op": "supersede", "of": LISBON, "text": BERLIN}]),
        },
    )
    _sessions(fake_llm, ("s-a", "user: I live in Lisbon."), ("s-b", "user: I moved to Berlin."))
    assert _memories()[LISBON]["status"] == "superseded"
    assert delete("/session/s-b").status == 200
    memories = _memories()
    assert list(memories) == [LISBON]
    assert (memories[LISBON]["status"], memories[LISBON]["superseded_by"], memories[LISBON]["valid_to"]) == (
        "current",
        None,
        None,
    )


def test_erasing_a_retracting_session_withdraws_the_withdrawal(fake_llm: Any) -> None:
    _scripted(
        fake_llm,
        {"vegetarian": ([VEGGIE], []), "meat": ([], [{"op": "retract", "of": VEGGIE}])},
    )
    _sessions(fake_llm, ("s-a", "user: I am vegetarian."), ("s-b", "user: I never said that, I eat meat."))
    assert _memories()[VEGGIE]["status"] == "retracted"
    assert delete("/session/s-b").status == 200
    memory = _memories()[VEGGIE]
    assert (memory["status"], memory["valid_to"], memory["source_sessions"], memory["history"]) == (
        "current",
        None,
        ["s-a"],
        [],
    )
