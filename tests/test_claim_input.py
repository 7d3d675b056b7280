"""A claim hands out each item's processing input (transcript, metadata, the session's summary, the
vectorstore's memory state), read atomically with it, so a worker starts without a read of its own.

What that read holds can be older than the item's run (an item claimed ahead waits for a worker):
these tests show it is still decided right, or fenced out, when other work lands meanwhile."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis

from memproc import keys
from memproc.dal import queue, reads
from memproc.dal.connection import get_store
from memproc.dal.reads import ProcessingInput
from memproc.processor import build_processor
from memproc.settings import get_settings, load_settings
from tests.api_client import call, mem_path
from tests.memory_helpers import drain, memory_records, snapshot, store

TEA = "user: I prefer green tea over coffee.\n"


def read_input(item: queue.Claim) -> ProcessingInput:
    """The item's input read now with plain commands, as a worker read it before claims carried it."""
    rb = get_store().rb
    vk = keys.VectorstoreKeys(item.vectorstore)
    raw = rb.hmget(vk.raw(item.raw_id), ["session_data", "session_data_encoding", "created_at", "metadata"])
    summary = rb.get(vk.session_summary(item.session_id))
    state = reads.memory_state(get_store(), item.vectorstore)
    return ProcessingInput.from_reply(
        item.session_id,
        *raw,
        summary,
        state.seq,
        state.memories,
        state.embedding_model or "",
        state.dimensions or "",
    )


def test_each_claimed_item_carries_its_input_as_a_read_would_find_it(fake_llm: Any, r: redis.Redis) -> None:
    store("user1", TEA, "s-1")
    drain()  # s-1 has a summary, user1 memories
    store("user1", TEA + "user: I live in Porto.\n", "s-1", {"session_timestamp": "2026-03-10T12:00:00Z"})
    big = "".join(f"user: I keep notebook {i} on shelf {i % 7}.\n" for i in range(400))  # stored compressed
    store("user2", big, "s-2", {"source": "import", "tags": ["a"]})
    store("user3", "user: ünïcödé ✓ and emoji 🍵.", "s-3")
    user2 = keys.VectorstoreKeys("user2")
    assert r.hget(user2.raw(r.zrange(user2.raw_index, 0, 0)[0]), "session_data_encoding") == "zlib"

    items = queue.claim(get_store(), get_settings(), 10).items
    assert sorted(c.vectorstore for c in items) == ["user1", "user2", "user3"]
    for item in items:
        claimed, now = item.input(), read_input(item)
        assert claimed == now and claimed.transcript
    by_vs = {c.vectorstore: c.input() for c in items}
    assert by_vs["user2"].transcript == big and by_vs["user2"].metadata == {"source": "import", "tags": ["a"]}
    assert by_vs["user3"].transcript == "user: ünïcödé ✓ and emoji 🍵." and by_vs["user3"].summary is None
    first = by_vs["user1"]
    assert first.summary is not None and first.summary.processed_length == len(TEA)
    assert first.state.memories == len(memory_records("user1")) > 0 and first.state.seq > 0
    processor = build_processor(get_settings())
    work = processor.plan(next(c for c in items if c.vectorstore == "user1"), first)
    assert (work.mode, work.text) == ("delta", "user: I live in Porto.\n")


def test_an_item_claimed_ahead_is_decided_against_memories_committed_meanwhile(
    fake_llm: Any, r: redis.Redis
) -> None:
    # Two sessions of one (empty) vectorstore claimed together (VECTORSTORE_CONCURRENCY 2): both
    # inputs say "no memories". The first commits a memory before the second runs on its input.
    settings = load_settings(vectorstore_concurrency=2)
    store("user1", TEA, "s-1")
    store("user1", TEA + "user: I live in Porto.\n", "s-2")
    first, second = sorted(queue.claim(get_store(settings), settings, 2).items, key=lambda c: c.session_id)
    assert first.input().state.memories == second.input().state.memories == 0
    shown: list[list[str]] = []
    fake_llm.reconciliation_for = lambda transcript, memories: shown.append([t for _, t in memories])
    processor = build_processor(settings)
    assert processor.process(first).result == "processed"
    tea = next(iter(memory_records("user1")))
    assert processor.process(second).result == "processed"
    # Its first decision (blind: no memory was shown) met the new seq at commit (moved); it was
    # decided again, shown the first session's memory, and confirmed it instead of adding it twice.
    assert shown[1:] == [[], [memory_records("user1")[tea]["text"]]]
    memories = memory_records("user1")
    assert sorted(memories[tea]["source_sessions"]) == ["s-1", "s-2"]
    assert [m["text"] for m in memories.values()].count(memories[tea]["text"]) == 1


def test_a_worker_whose_claim_was_taken_over_commits_nothing(fake_llm: Any, r: redis.Redis) -> None:
    # A worker's item waits (claimed ahead, or the worker froze) past its lease; another processor
    # reclaims it, commits it, and commits the session's next, longer version. The first worker's
    # input (no summary yet: a full extraction) is out of date: its commit is fenced out.
    store("user1", TEA, "s-1")
    settings = get_settings()
    late = queue.claim(get_store(), settings, 1).items[0]
    assert late.input().summary is None
    r.zadd(keys.INFLIGHT, {keys.VectorstoreKeys("user1").raw(late.raw_id): 0})  # its lease ran out
    assert drain().processed == 1
    store("user1", TEA + "user: I live in Porto.\n", "s-1")
    assert drain().processed == 1
    before = snapshot(r, "user1")
    summary = json.loads(r.get(keys.VectorstoreKeys("user1").session_summary("s-1")))
    assert summary["processed_length"] > len(TEA)
    assert build_processor(settings).process(late).result == "stale"
    assert snapshot(r, "user1") == before


def test_an_item_erased_after_its_claim_ends_stale_and_writes_nothing(fake_llm: Any, r: redis.Redis) -> None:
    store("user1", "user: I keep bees on my roof.", "s-keep")
    drain()
    state = snapshot(r, "user1")
    store("user1", TEA, "s-1")
    item = queue.claim(get_store(), get_settings(), 1).items[0]
    assert item.input().transcript == TEA  # the claim read it before the erasure
    assert call("DELETE", mem_path("user1", "/session/s-1")).status == 200
    assert build_processor(get_settings()).process(item).result == "stale"
    after = snapshot(r, "user1")
    changed = {k for k in set(state) | set(after) if state.get(k) != after.get(k)}
    assert changed == {"{user1}:counters", "global vectorstores"}  # as if s-1 had never been stored


def stored_size(r: redis.Redis, vs: str) -> int:
    """What a claim counts of an item against its budget: the transcript as stored, the metadata
    and the session's summary (none here)."""
    vk = keys.VectorstoreKeys(vs)
    (raw_id,) = r.zrange(vk.raw_index, 0, 0)
    return sum(r.hstrlen(vk.raw(raw_id), f) for f in ("session_data", "metadata"))


def test_a_claim_stops_at_its_reply_budget(
    queue_fake_llm: Any, qr: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On every queue engine: the budget bounds the reply whatever the transcripts' size."""
    texts = {vs: f"user: I keep notebook {i} of shelf {vs}.\n" * 20 for i, vs in enumerate("abc")}
    for vs, text in texts.items():
        store(vs, text, f"s-{vs}")
    monkeypatch.setattr(queue, "CLAIM_INPUT_BYTES", stored_size(qr, "a") + stored_size(qr, "b"))
    settings = get_settings()
    batch = queue.claim(get_store(), settings, 3)
    assert [c.vectorstore for c in batch.items] == ["a", "b"] and batch.more  # b reached the budget
    rest = queue.claim(get_store(), settings, 3)
    assert [c.vectorstore for c in rest.items] == ["c"] and not rest.more
    assert [c.input().transcript for c in batch.items + rest.items] == list(texts.values())
    monkeypatch.setattr(queue, "CLAIM_INPUT_BYTES", 1)
    store("d", "user: one item alone is over this budget.", "s-d")
    alone = queue.claim(get_store(), settings, 3)
    assert [c.vectorstore for c in alone.items] == ["d"] and alone.more  # still claimed
    assert queue.claim(get_store(), settings, 3) == queue.ClaimBatch([], 0, 0)


def test_after_a_claim_cut_short_by_its_budget_the_drain_claims_again_at_once(
    queue_fake_llm: Any, qr: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One item per claim, each saying there may be more: the drain must claim the next at once,
    # not once an item is done (a's extraction waits until c's has arrived).
    monkeypatch.setattr(queue, "CLAIM_INPUT_BYTES", 1)
    c_asked = threading.Event()
    waited: list[bool] = []
    nothing = queue_fake_llm.extraction_for

    def responder(transcript: str) -> dict[str, Any]:
        if "shelf a" in transcript:
            waited.append(c_asked.wait(timeout=10))
        elif "shelf c" in transcript:
            c_asked.set()
        return dict(nothing(transcript))

    queue_fake_llm.extraction_for = responder
    for vs in "abc":
        store(vs, f"user: I keep a notebook on shelf {vs}.", f"s-{vs}")
    assert drain(concurrency=3, batch_size=3, llm_timeout_seconds=30).processed == 3
    assert waited == [True]
