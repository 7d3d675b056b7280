"""The ways found to lose, duplicate or corrupt work in the queue protocol, each pinned by a test
that failed before its fix (issue "Integrity", defects 1-7 and 10). Those that need no memory index
run on every queue engine (`queue_server`: Redis 8, Valkey 9, both as one-node clusters), the others
on both memory-index backends."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from memproc import keys
from memproc.dal import queue
from memproc.dal.connection import get_store
from memproc.llm.chunking import chunk_transcript
from memproc.processor import build_processor
from memproc.settings import get_settings, load_settings
from tests.api_client import call, mem_path
from tests.memory_helpers import commit_payload, drain, everything, memory_records, store

U1 = keys.VectorstoreKeys("user1")
CHAT = "user: I live in Porto.\nuser: I prefer green tea over coffee.\n"
LONGER = CHAT + "user: My brother Tomas visits next week.\n"


def expire_leases(r: redis.Redis) -> None:
    """What LEASE_SECONDS passing would do: every lease runs out."""
    for key in r.zrange(keys.INFLIGHT, 0, -1):
        r.zadd(keys.INFLIGHT, {key: 0})


# -- 1. fencing tokens -------------------------------------------------------------------------


def test_a_redrive_never_reissues_a_fencing_token(qr: redis.Redis) -> None:
    raw_id = store("user1", CHAT, "s-1")["raw_memory_id"]
    settings = load_settings(max_attempts=1)
    stale = queue.claim(get_store(), settings, 1).items[0]
    expire_leases(qr)  # the worker froze past its lease...
    assert queue.claim(get_store(), settings, 1).buried == 1  # ...on its last attempt: dead
    assert queue.redrive(get_store(), "user1", raw_id)[0] == "queued"
    fresh = queue.claim(get_store(), settings, 1).items[0]
    assert fresh.attempt == stale.attempt == 1  # the redrive gave a fresh attempt budget
    assert fresh.token != stale.token  # but never the same fencing token
    payload, vectors = commit_payload()
    assert queue.commit(get_store(), stale, payload, vectors).outcome == "stale"
    assert queue.commit(get_store(), fresh, payload, vectors).outcome == "ok"


# -- 2. a session's submissions, one at a time and in order ----------------------------------------


def test_a_sessions_submissions_are_claimed_one_at_a_time_in_submission_order(qr: redis.Redis) -> None:
    first = store("user1", CHAT, "s-1")["raw_memory_id"]
    second = store("user1", LONGER, "s-1")["raw_memory_id"]
    other = store("user1", "user: I collect stamps.", "s-2")["raw_memory_id"]
    assert qr.zcard(keys.RAW_MEMORY_QUEUE) == 3  # the one waiting behind its session still counts
    # Sessions of one vectorstore may run in parallel here: the order within a session is the point.
    settings = load_settings(retry_base_seconds=60, retry_max_seconds=60, vectorstore_concurrency=10)
    batch = queue.claim(get_store(), settings, 10)
    assert sorted(c.raw_id for c in batch.items) == sorted([first, other])  # second waits for first
    held = next(c for c in batch.items if c.raw_id == first)
    # The first fails and backs off: the second still waits, even though it is eligible by time.
    assert queue.fail(get_store(), settings, held, "HTTP 500", retryable=True)[0] == "retry"
    assert queue.claim(get_store(), settings, 10).items == []
    qr.zadd(keys.RAW_MEMORY_QUEUE, {U1.raw(first): 0})
    qr.zadd(U1.pending, {first: 0})
    qr.zadd(keys.READY, {"user1": 0})  # its backoff is over
    again = queue.claim(get_store(), settings, 10).items
    assert [c.raw_id for c in again] == [first]
    payload, vectors = commit_payload()
    assert queue.commit(get_store(), again[0], payload, vectors).outcome == "ok"
    assert [c.raw_id for c in queue.claim(get_store(), settings, 10).items] == [second]


def test_a_longer_repost_waits_for_the_first_and_costs_only_its_delta(fake_llm: Any, r: redis.Redis) -> None:
    first = store("user1", CHAT, "s-1")["raw_memory_id"]
    second = store("user1", LONGER, "s-1")["raw_memory_id"]
    report = drain(concurrency=8, batch_size=8)  # both in one drain, as in the defect
    assert report.processed == 2
    assert r.hget(U1.raw(first), "extraction_mode") == "full"
    assert r.hget(U1.raw(second), "extraction_mode") == "delta"
    summary = json.loads(r.get(U1.session_summary("s-1")))
    assert summary["processed_length"] == len(LONGER) and summary["raw_memory_ids"] == [first, second]
    texts = [m["text"] for m in memory_records("user1").values()]
    assert len(texts) == len(set(texts))  # nothing extracted twice


def test_a_late_redrive_of_an_earlier_version_neither_reextracts_nor_rolls_the_summary_back(
    fake_llm: Any, r: redis.Redis
) -> None:
    first = store("user1", CHAT, "s-1")["raw_memory_id"]
    fake_llm.fail_next("400", count=1)
    assert drain().dead == 1
    second = store("user1", LONGER, "s-1")["raw_memory_id"]
    assert drain().processed == 1
    before = json.loads(r.get(U1.session_summary("s-1")))
    memories = memory_records("user1")
    chats = fake_llm.chat_calls
    assert queue.redrive(get_store(), "user1", first)[0] == "queued"
    assert drain().processed == 1
    assert fake_llm.chat_calls == chats  # the longer transcript already covered it
    assert r.hget(U1.raw(first), "extraction_mode") == "covered"
    after = json.loads(r.get(U1.session_summary("s-1")))
    assert after["summary"] == before["summary"] and after["processed_length"] == len(LONGER)
    assert after["processed_raw_id"] == second
    assert memory_records("user1") == memories


# -- 3. an evicting store ----------------------------------------------------------------------------


@pytest.fixture
def evicting(qr: redis.Redis) -> Iterator[None]:
    qr.config_set("maxmemory-policy", "allkeys-lru")
    yield
    qr.config_set("maxmemory-policy", "noeviction")


@pytest.mark.one_backend
def test_a_queue_entry_whose_record_was_evicted_becomes_a_visible_dead_letter(
    fake_llm: Any, r: redis.Redis
) -> None:
    lost = store("user1", CHAT, "s-1")["raw_memory_id"]
    after = store("user1", LONGER, "s-1")["raw_memory_id"]  # waits behind the lost one
    r.delete(U1.raw(lost))  # what eviction does
    report = drain()
    assert report.lost == 1 and report.processed == 1  # the session's next submission went on
    letters = call("GET", mem_path("user1", "/dead_letters")).body["dead_letters"]
    assert [d["raw_memory_id"] for d in letters] == [lost]
    assert letters[0]["status"] == "error" and letters[0]["last_error"].startswith("record lost")
    assert r.hget(U1.raw(after), "status") == "processed"
    day = call("GET", mem_path("user1", "/stats")).body["daily"][-1]
    assert day["lost"] == 1 and day["dead"] == 1
    retry = call("POST", mem_path("user1", f"/raw/{lost}/retry"))
    assert retry.status == 409 and retry.error_code == "record_lost"


def test_an_evicting_store_refuses_new_sessions_and_says_why(evicting: None, qr: redis.Redis) -> None:
    qr.config_set("maxmemory-policy", "noeviction")
    store("user10", CHAT, "s-1")  # written while the store was safe
    qr.config_set("maxmemory-policy", "allkeys-lru")
    qr.hdel(keys.PROCESSOR_STATUS, "policy_checked_at")  # the policy is rechecked at most once a minute
    res = call("POST", mem_path("user1", "/store_raw"), json_body={"session_data": CHAT})
    assert res.status == 503 and res.error_code == "store_evicting"
    assert "allkeys-lru" in res.body["error"]["message"] and res.headers["Retry-After"]
    assert qr.zcard(keys.RAW_MEMORY_QUEUE) == 1 and not qr.exists(U1.raw_index)
    refused = call("GET", mem_path("user1", "/processing_status"))
    assert refused.status == 404 and refused.error_code == "unknown_vectorstore"  # it was never written
    status = call("GET", mem_path("user10", "/processing_status")).body
    assert status["eviction_policy"] == "allkeys-lru"
    assert status["degraded"] and "noeviction" in status["degraded"][0]


def test_the_processor_warns_at_start_about_an_evicting_store(
    evicting: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="memproc.processor"):
        drain()
    assert any("maxmemory-policy is 'allkeys-lru'" in r.getMessage() for r in caplog.records)


# -- 4. erasure at any age ---------------------------------------------------------------------------


def test_erasing_a_session_a_year_later_still_removes_its_memories(fake_llm: Any, r: redis.Redis) -> None:
    store("user1", CHAT, "s-1")
    drain()
    assert memory_records("user1")
    # A year passes: every key with a retention is gone; memories are permanent.
    for key in [k for k in r.scan_iter(match="{user1}:*") if r.ttl(k) > 0]:
        r.delete(key)
    res = call("DELETE", mem_path("user1", "/session/s-1"))
    assert res.status == 200, res.body
    assert res.body["removed"]["memories"] > 0
    assert memory_records("user1") == {} and r.zcard(U1.memory_index) == 0


# -- 5. erasure and cleanup on a full store ------------------------------------------------------------


@pytest.fixture
def full(fake_llm: Any, r: redis.Redis) -> Iterator[None]:
    store("user1", CHAT, "s-1")
    store("user1", "user: I play the cello.", "s-2")
    drain()
    r.config_set("maxmemory", 1)  # every write that may grow memory is now refused (noeviction)
    yield
    r.config_set("maxmemory", 0)


def test_a_full_store_still_serves_cleanup_and_erasure(full: None, r: redis.Redis) -> None:
    res = call("POST", mem_path("user1", "/store_raw"), json_body={"session_data": "user: one more"})
    assert res.status == 503 and res.error_code == "store_full" and res.headers["Retry-After"]
    for method, path, query in [
        ("POST", "/cleanup", {"dry_run": "true"}),
        ("POST", "/cleanup", {}),
        ("DELETE", "/session/s-2", {}),
        ("DELETE", "", {}),
    ]:
        res = call(method, mem_path("user1", path), query=query)
        assert res.status == 200, (method, path, res.body)
    assert memory_records("user1") == {}


# -- 6. a late redrive keeps its transcript for a retention period -------------------------------------


def test_a_redrive_after_the_retention_window_is_not_deleted_when_processed(
    fake_llm: Any, r: redis.Redis
) -> None:
    raw_id = store("user1", CHAT, "s-1")["raw_memory_id"]
    fake_llm.fail_next("400", count=1)
    assert drain().dead == 1
    r.hset(U1.raw(raw_id), "created_at", f"{time.time() - 40 * 86400:.6f}")  # it died 40 days ago
    assert queue.redrive(get_store(), "user1", raw_id)[0] == "queued"
    assert drain().processed == 1
    ttl = r.ttl(U1.raw(raw_id))
    assert 29 * 86400 < ttl <= 30 * 86400  # retention counts from the redrive
    assert call("POST", mem_path("user1", "/cleanup")).body["deleted_raw_memories"] == []
    assert r.exists(U1.raw(raw_id))


# -- 7. commit checks everything before it writes anything ----------------------------------------------


@pytest.mark.parametrize(
    "spoil",
    [
        lambda p, v: (p, v + v),  # one vector too many
        lambda p, v: ({**p, "tokens_in": "many"}, v),  # a field the commit adds up
        lambda p, v: (p, [v[0][:-4]]),  # a vector of the wrong size
    ],
)
def test_a_commit_that_fails_validation_writes_nothing(qr: redis.Redis, spoil: Any) -> None:
    store("user1", CHAT, "s-1")
    item = queue.claim(get_store(), get_settings(), 1).items[0]
    before = everything(qr)
    payload, vectors = spoil(*commit_payload())
    with pytest.raises(redis.ResponseError, match="commit"):
        queue.commit(get_store(), item, payload, vectors)
    assert everything(qr) == before


# -- 10. leases: short, renewed while the worker lives ----------------------------------------------------


def test_renewal_extends_only_the_leases_a_worker_still_holds(qr: redis.Redis) -> None:
    store("user1", CHAT, "s-1")
    store("user1", "user: I collect stamps.", "s-2")
    settings = load_settings(vectorstore_concurrency=2)
    held, lost = queue.claim(get_store(), settings, 2).items
    qr.zadd(keys.INFLIGHT, {U1.raw(lost.raw_id): 0})
    retaken = queue.claim(get_store(), settings, 1).items[0]  # reaps the expired lease and retakes it
    assert retaken.raw_id == lost.raw_id
    before = qr.zscore(keys.INFLIGHT, U1.raw(held.raw_id))
    gone = queue.renew(get_store(), settings, [held, lost])
    assert gone == {lost.raw_id}
    assert qr.zscore(keys.INFLIGHT, U1.raw(held.raw_id)) >= before
    assert qr.zscore(keys.INFLIGHT, U1.raw(lost.raw_id)) == pytest.approx(
        float(qr.hget(U1.raw(lost.raw_id), "lease_deadline"))
    )  # the new holder's lease, untouched


@pytest.mark.one_backend
def test_a_worker_renews_the_lease_of_an_item_that_outlives_a_third_of_it(
    fake_llm: Any, r: redis.Redis
) -> None:
    raw_id = store("user1", CHAT, "s-1")["raw_memory_id"]
    fake_llm.latency = 2.2  # each LLM call outlives a third of the 5 s lease
    report = drain(lease_seconds=5, llm_timeout_seconds=10)
    assert report.processed == 1 and report.renewed >= 1
    assert r.hget(U1.raw(raw_id), "processing_attempts") == "1"


@pytest.mark.one_backend
def test_a_long_transcript_outlives_its_lease_yet_is_claimed_and_paid_for_once(
    fake_llm: Any, r: redis.Redis
) -> None:
    """A live worker's lease is renewed between (and during) a long transcript's chunks, so a rival
    processor never reaps it; a dead worker's lease runs out and the rival reaps that item."""
    settings = load_settings(lease_seconds=5, llm_chunk_chars=1000, llm_timeout_seconds=10)
    # A worker that died holding a claim: nothing renews it.
    dead = store("dead", CHAT, "s-1")["raw_memory_id"]
    abandoned = queue.claim(get_store(), settings, 1).items[0]
    dead_deadline = float(r.hget(keys.VectorstoreKeys("dead").raw(dead), "lease_deadline"))
    text = "".join(
        f"user: On day {i} I ran {i % 9 + 3} km of marathon training by the river.\n" for i in range(130)
    )
    chunks = len(chunk_transcript(text, settings.llm_chunk_chars))
    fake_llm.latency, fake_llm.embedding_latency = 0.7, 0.0
    assert chunks * fake_llm.latency > settings.lease_seconds + 1  # the premise: longer than a lease
    long = store("long", text, "s-1")["raw_memory_id"]
    long_key = keys.VectorstoreKeys("long").raw(long)

    rival: list[tuple[float, queue.ClaimBatch]] = []  # a rival processor's claim after each chunk
    held_since: list[float] = []

    def after_each_chunk(transcript: str) -> None:
        if not held_since:
            held_since.append(float(r.hget(long_key, "claimed_at")))
        batch = queue.claim(get_store(), settings, 1)
        seconds, micros = r.time()
        rival.append((seconds + micros / 1e6, batch))
        return None  # the fake's usual extraction

    fake_llm.extraction_for = after_each_chunk
    fake_llm.reset()
    report = build_processor(settings).drain(concurrency=1, batch_size=1, max_items=1)

    assert report.processed == 1 and report.reaped == 0 and report.renewed >= 1
    assert len(rival) == chunks and rival[-1][0] > held_since[0] + settings.lease_seconds  # held past it
    # The live worker's item: claimed once, its chunks sent to the LLM once each.
    h = r.hgetall(long_key)
    assert h["status"] == "processed" and h["processing_attempts"] == "1"
    assert all(c.raw_id != long for _, batch in rival for c in batch.items)
    marathon_calls = sum(
        1
        for q in fake_llm.requests
        if q.path.endswith("/chat/completions") and "marathon" in json.dumps(q.body)
    )
    assert marathon_calls == chunks
    # The dead worker's item: left alone until its lease ran out, then reaped and claimed again
    # (by the rival, which abandons it in turn).
    assert all(not batch.items and not batch.reaped for at, batch in rival if at < dead_deadline)
    reaped = next(batch for _, batch in rival if batch.reaped)
    assert [(c.raw_id, c.attempt) for c in reaped.items] == [(dead, abandoned.attempt + 1)]
    assert reaped.items[0].token != abandoned.token
