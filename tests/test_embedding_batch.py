"""The embeddings batcher: the real openai client against the fake server, which counts requests.

A request is held at the fake (``embedding_for`` waits on an event) while other callers queue, so
the tests know which callers share a request without timing anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from memproc.dal.connection import get_store
from memproc.dal.memory_index import MemoryFilter
from memproc.embedding_batch import EmbeddingBatcher
from memproc.llm import LLMError, OpenAIProvider, PermanentLLMError, Usage
from memproc.reconcile import fp32
from tests.fake_openai import FakeOpenAI, embedding
from tests.memory_helpers import drain, memory_records, store

pytestmark = pytest.mark.timeout(30)

DIMS = 64
WAIT = 10.0  # seconds a test waits for a condition before failing


@pytest.fixture
def provider(provider_factory: Callable[..., OpenAIProvider]) -> OpenAIProvider:
    return provider_factory(embedding_dimensions=DIMS, llm_timeout_seconds=10.0, llm_max_retries=0)


def hold_first(fake: FakeOpenAI, gate: str, refuse: str = "") -> tuple[threading.Event, threading.Event]:
    """The fake holds the request embedding `gate` until released (and has no vector for `refuse`)."""
    held, release = threading.Event(), threading.Event()

    def embedding_for(text: str) -> list[float] | None:
        if text == gate:
            held.set()
            assert release.wait(WAIT)
        return None if text == refuse else embedding(text, DIMS)

    fake.embedding_for = embedding_for
    return held, release


def coalesced(
    batcher: EmbeddingBatcher, fake: FakeOpenAI, groups: list[list[str]], refuse: str = ""
) -> list[Future[tuple[list[Any], Usage]]]:
    """`groups` embedded by concurrent callers, all but the first queued behind its held request."""
    held, release = hold_first(fake, groups[0][0], refuse)
    pool = ThreadPoolExecutor(len(groups))
    futures = [pool.submit(batcher.embed, groups[0])]
    assert held.wait(WAIT)
    for queued, group in enumerate(groups[1:], 1):  # one at a time: they queue in this order
        futures.append(pool.submit(batcher.embed, group))
        assert batcher.wait_for_waiting(queued, WAIT)
    release.set()
    pool.shutdown(wait=True)
    return futures


def test_callers_waiting_share_one_request_and_get_their_own_vectors(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    groups = [["the first caller"]]
    groups += [[f"caller {i} likes tea", f"caller {i} has {i} cats"] for i in range(6)]
    futures = coalesced(EmbeddingBatcher(provider.embed), fake, groups)
    # The held request, then one for the six callers that queued behind it.
    assert fake.embedding_calls == 2
    assert [len(q.body["input"]) for q in fake.requests] == [1, 12]
    usages = []
    for group, future in zip(groups, futures, strict=True):
        vectors, usage = future.result()
        assert len(vectors) == len(group)
        for vector, text in zip(vectors, group, strict=True):
            assert list(vector) == pytest.approx(embedding(text, DIMS), abs=1e-6)
        usages.append(usage)
    # Each caller is charged its share of the call's tokens, and the shares add up to the call's.
    assert sum(u.tokens_in for u in usages) == fake.tokens_in
    assert usages[0].tokens_in == len(groups[0][0]) // 4  # alone in its call: the call's own usage
    assert all(u.tokens_in > 0 for u in usages)


def test_a_refused_input_fails_only_its_caller(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A permanent error dead-letters a session: a shared request refused for one caller's input is
    sent again caller by caller, so the others get their vectors."""
    groups = [["the first caller"], ["a fine text"], ["a text the server refuses"], ["another fine text"]]
    futures = coalesced(EmbeddingBatcher(provider.embed), fake, groups, refuse="a text the server refuses")
    # The held request, the shared one that was refused, then one per caller it carried.
    assert [len(q.body["input"]) for q in fake.requests] == [1, 3, 1, 1, 1]
    assert len(futures[0].result()[0]) == 1  # its own request succeeded
    error = futures[2].exception()
    assert isinstance(error, PermanentLLMError) and "HTTP 400" in str(error)
    for i in (1, 3):
        vectors, _ = futures[i].result()
        assert list(vectors[0]) == pytest.approx(embedding(groups[i][0], DIMS), abs=1e-6)


def test_a_provider_failure_fails_every_caller_it_carried(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    """A retryable error is the provider's: every session it carried is retried later, at once."""
    groups = [["the first caller"], ["a fine text"], ["another fine text"]]
    held, release = hold_first(fake, groups[0][0])
    batcher = EmbeddingBatcher(provider.embed)
    pool = ThreadPoolExecutor(len(groups))
    first = pool.submit(batcher.embed, groups[0])
    assert held.wait(WAIT)
    fake.fail_next("500", path="embeddings")  # the next request (the shared one) is answered 500
    rest = [pool.submit(batcher.embed, g) for g in groups[1:]]
    assert batcher.wait_for_waiting(2, WAIT)
    release.set()
    pool.shutdown(wait=True)
    assert len(first.result()[0]) == 1
    errors = [f.exception() for f in rest]
    assert all(isinstance(e, LLMError) and e.retryable for e in errors) and errors[0] is errors[1]
    assert len(fake.requests) == 2
    fake.embedding_for = None  # the next caller is not held by the failure
    vectors, _ = EmbeddingBatcher(provider.embed).embed(["later"])
    assert len(vectors) == 1


def test_requests_are_capped_by_inputs_and_characters(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    batcher = EmbeddingBatcher(provider.embed, max_inputs=3, max_chars=10_000)
    c, d = "c" * 6_000, "d" * 6_000
    groups = [["first"], ["a1", "a2"], ["b1"], [c], [d]]
    futures = coalesced(batcher, fake, groups)
    # a and b make 3 inputs (c would be a 4th); c and d would make 12,000 characters. (The held
    # request was slow: the three may go out together, in any order.)
    inputs = [q.body["input"] for q in fake.requests]
    assert inputs[0] == ["first"] and sorted(inputs[1:]) == sorted([["a1", "a2", "b1"], [c], [d]])
    assert all(len(f.result()[0]) == len(g) for f, g in zip(futures, groups, strict=True))


def test_a_lone_caller_is_sent_at_once(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    vectors, usage = EmbeddingBatcher(provider.embed).embed(["alone", "together"])
    assert fake.embedding_calls == 1 and len(vectors) == 2 and usage.tokens_in == fake.tokens_in
    assert EmbeddingBatcher(provider.embed).embed([]) == ([], Usage())


def test_after_a_slow_answer_requests_go_out_together_and_the_rest_coalesce(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    batcher = EmbeddingBatcher(provider.embed, max_in_flight=3, slow_seconds=0.0)  # every answer is slow
    batcher.embed(["first"])
    entered = {f"held {i}": threading.Event() for i in range(3)}
    release = threading.Event()

    def embedding_for(text: str) -> list[float] | None:
        if text in entered:
            entered[text].set()
            assert release.wait(WAIT)
        return embedding(text, DIMS)

    fake.embedding_for = embedding_for
    pool = ThreadPoolExecutor(5)
    held = [pool.submit(batcher.embed, [text]) for text in entered]
    assert all(event.wait(WAIT) for event in entered.values())  # three requests out at once
    queued = [pool.submit(batcher.embed, [f"queued {i}"]) for i in range(2)]
    assert batcher.wait_for_waiting(2, WAIT)  # every slot is taken: these two wait
    release.set()
    pool.shutdown(wait=True)
    inputs = [q.body["input"] for q in fake.requests]
    assert inputs[0] == ["first"] and sorted(inputs[1:4]) == [["held 0"], ["held 1"], ["held 2"]]
    assert sorted(inputs[4]) == ["queued 0", "queued 1"] and len(inputs) == 5
    for future, text in zip(held + queued, [*entered, "queued 0", "queued 1"], strict=True):
        assert list(future.result()[0][0]) == pytest.approx(embedding(text, DIMS), abs=1e-6)


def test_after_fast_answers_one_request_is_out_at_a_time(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    batcher = EmbeddingBatcher(provider.embed, max_in_flight=3, slow_seconds=float("inf"))
    batcher.embed(["warm"])
    coalesced(batcher, fake, [["first"], ["a"], ["b"]])  # a and b wait behind the held request
    assert [q.body["input"] for q in fake.requests] == [["warm"], ["first"], ["a", "b"]]


@pytest.mark.one_backend  # the batcher is above the memory index
def test_concurrent_sessions_make_fewer_embeddings_requests(fake_llm: Any, r: Any) -> None:
    n = 8
    for i in range(n):  # a memory in each vectorstore, so every session below also looks up
        store(f"vs{i}", f"user: I keep a garden in town {i}.", f"a-{i}")
    assert drain(concurrency=1).processed == n
    for i in range(n):
        store(f"vs{i}", f"user: I grow {i} kinds of tomato on balcony {i}.", f"b-{i}")
    before = fake_llm.embedding_calls
    fake_llm.latency = 0.05  # requests overlap, as with a real model
    report = drain(concurrency=n, batch_size=n)
    assert report.processed == n
    # Unbatched: a lookup and a final call per session, 2n.
    assert fake_llm.embedding_calls - before < 2 * n
    # Each memory's vector is its own text's: the fake's embedding of its text finds it first.
    index = get_store().index
    for i in range(n):
        memories = memory_records(f"vs{i}")
        assert len(memories) >= 2
        for mid, attrs in memories.items():
            (hit,) = index.nearest(f"vs{i}", [fp32(embedding(attrs["text"], DIMS))], 1, MemoryFilter())
            assert hit[0][0] == mid and hit[0][1] > 0.99
