"""The shared LLM rate limit: the Redis-side limiter (real Redis), the AIMD gate, and processors
that keep within a limit together, the real openai client talking to a fake server that enforces
the limit itself and records when each request arrived."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis

from memproc import keys, submissions
from memproc.dal import queue, ratelimit
from memproc.dal.connection import get_store
from memproc.dal.ratelimit import Limits
from memproc.llm import RateLimitedLLMError
from memproc.llm.gate import AIMD, Budget, Gate, chat_scope, within
from memproc.llm.gated_http import _MAX_TOKENS_RE, OUTPUT_TOKENS, estimate_tokens, used_tokens
from memproc.processor import build_processor
from memproc.schemas.requests import StoreRawRequest
from memproc.settings import get_settings, load_settings
from tests.chats import sessions
from tests.fake_openai import max_in_window
from tests.memory_helpers import store
from tests.redis_server import RedisServer
from tests.test_processor_crash import run_processor

# The limiter and its gate never touch the memory index: one backend is enough.
pytestmark = pytest.mark.one_backend

SCOPE = "chat:test-model"
CHAT = "user: I live in Porto and I prefer green tea.\n"


def booked(r: redis.Redis, scope: str = SCOPE) -> dict[str, float]:
    log, _ = keys.rate_limit(scope)
    return dict(r.zrange(log, 0, -1, withscores=True))


def held(r: redis.Redis, scope: str = SCOPE) -> dict[str, int]:
    """Tokens per booking and their #total (without the pacing's #tat)."""
    _, tokens = keys.rate_limit(scope)
    return {k: int(v) for k, v in r.hgetall(tokens).items() if k != "#tat"}


def redis_now(r: redis.Redis) -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


def drain_until_done(processor: Any, r: redis.Redis, rounds: int = 5) -> list[Any]:
    """Drain, and again once the queue's next item is due (what the next schedule tick does)."""
    reports = [processor.drain()]
    for _ in range(rounds - 1):
        head = r.zrange(keys.RAW_MEMORY_QUEUE, 0, 0, withscores=True)
        if not head:
            break
        threading.Event().wait(max(0.0, head[0][1] - redis_now(r)))
        reports.append(processor.drain())
    return reports


# --- the limiter in Redis -----------------------------------------------------------------------


def test_requests_are_spread_over_the_window_and_wait_for_the_oldest_to_leave(r: redis.Redis) -> None:
    limits = Limits(requests=4, tokens=0, window=10.0)
    waits = [ratelimit.reserve(get_store(), SCOPE, f"b{i}", 1, limits).wait for i in range(6)]
    times = booked(r)
    assert waits[0] == 0
    for i in range(1, 4):  # paced: one per window / limit
        assert times[f"b{i}"] == pytest.approx(times[f"b{i - 1}"] + 2.5, abs=1e-6)
    # The window holds 4: the fifth goes when the first has left it, the sixth when the second has.
    assert times["b4"] == pytest.approx(times["b0"] + 10.0, abs=1e-6)
    assert times["b5"] == pytest.approx(times["b1"] + 10.0, abs=1e-6)
    assert waits[5] == pytest.approx(times["b5"] - redis_now(r), abs=0.5)


def test_a_tenth_of_the_limit_may_go_at_once_then_one_per_interval(r: redis.Redis) -> None:
    limits = Limits(requests=20, tokens=0, window=10.0)  # one per 0.5 s, two at once
    waits = [ratelimit.reserve(get_store(), SCOPE, f"b{i}", 1, limits).wait for i in range(4)]
    times = booked(r)
    assert waits[:2] == [0.0, 0.0]
    assert times["b2"] == pytest.approx(times["b0"] + 0.5, abs=1e-6)
    assert times["b3"] == pytest.approx(times["b2"] + 0.5, abs=1e-6)


def test_a_wait_past_the_budget_books_nothing_and_says_how_long(r: redis.Redis) -> None:
    limits = Limits(requests=1, tokens=0, window=30.0)
    assert ratelimit.reserve(get_store(), SCOPE, "b0", 1, limits).booked
    refused = ratelimit.reserve(get_store(), SCOPE, "b1", 1, limits, max_wait=5.0)
    assert not refused.booked and 25.0 < refused.wait <= 30.0
    assert list(booked(r)) == ["b0"]


def test_tokens_are_booked_then_corrected_to_what_the_answer_used(r: redis.Redis) -> None:
    s, limits = get_store(), Limits(requests=0, tokens=100, window=10.0)
    assert ratelimit.reserve(s, SCOPE, "a", 60, limits).wait == 0
    assert ratelimit.settle(s, SCOPE, "a", 20)  # the answer used 20 of the 60 booked
    assert ratelimit.reserve(s, SCOPE, "b", 70, limits).wait == 0  # 20 + 70 fit
    assert held(r) == {"a": 20, "b": 70, "#total": 90}
    c = ratelimit.reserve(s, SCOPE, "c", 20, limits)  # 110 > 100: once "a" (20) has left
    times = booked(r)
    assert c.booked and times["c"] == pytest.approx(times["a"] + 10.0, abs=1e-6)
    # Bookings stay in time order: a small request does not jump ahead of one that waits.
    assert ratelimit.reserve(s, SCOPE, "d", 1, limits).booked and booked(r)["d"] >= times["c"]
    # A request larger than the whole limit waits for an empty window instead of forever.
    assert ratelimit.reserve(s, SCOPE, "e", 500, limits).booked and held(r)["e"] == 100


def test_a_cancelled_booking_gives_its_place_back(r: redis.Redis) -> None:
    s, limits = get_store(), Limits(requests=2, tokens=50, window=10.0)
    ratelimit.reserve(s, SCOPE, "a", 30, limits)
    ratelimit.reserve(s, SCOPE, "b", 10, limits)  # paced: 5 s after a
    place = booked(r)["b"]
    assert ratelimit.cancel(s, SCOPE, "b")
    ratelimit.reserve(s, SCOPE, "c", 20, limits)  # b's place and tokens (a + 20 = the 50 allowed)
    assert booked(r)["c"] == pytest.approx(place, abs=1e-6)
    assert held(r) == {"a": 30, "c": 20, "#total": 50}
    assert not ratelimit.settle(s, SCOPE, "b", 5)  # nothing left to correct


def test_bookings_that_left_the_window_are_forgotten_and_the_keys_expire(r: redis.Redis) -> None:
    s, limits = get_store(), Limits(requests=0, tokens=100, window=10.0)
    log, tokens = keys.rate_limit(SCOPE)
    ratelimit.reserve(s, SCOPE, "old", 90, limits)
    r.zadd(log, {"old": float(r.time()[0]) - 11})  # booked 11 s ago: out of every window to come
    assert ratelimit.reserve(s, SCOPE, "new", 90, limits).wait == 0
    assert held(r) == {"new": 90, "#total": 90} and list(booked(r)) == ["new"]
    assert 0 < r.ttl(log) <= 12 and 0 < r.ttl(tokens) <= 12


def test_a_burst_of_bookings_keeps_every_window_within_both_limits(r: redis.Redis) -> None:
    """Forty requests at once from many callers: the schedule they are booked on never puts more
    than the limits in any window."""
    import random

    rng = random.Random(7)
    s, limits = get_store(), Limits(requests=5, tokens=400, window=2.0)
    costs = {f"b{i:02d}": rng.randint(10, 150) for i in range(40)}
    for booking_id, cost in costs.items():
        assert ratelimit.reserve(s, SCOPE, booking_id, cost, limits).booked
    times = booked(r)
    assert max_in_window(list(times.values()), limits.window) == limits.requests  # full, never over
    for t in times.values():
        in_window = [b for b, at in times.items() if t - limits.window < at <= t]
        assert sum(costs[b] for b in in_window) <= limits.tokens
    assert len(times) == 40 and max(times.values()) - min(times.values()) < 40 * limits.window


# --- AIMD ---------------------------------------------------------------------------------------


def test_a_429_halves_the_in_flight_limit_once_for_the_requests_then_in_flight() -> None:
    gate, budget = AIMD("chat:m", step=3), Budget()
    generations = [gate.acquire(budget) for _ in range(8)]
    assert gate.limit is None and gate.in_flight == 8
    gate.release(generations[0], "throttled")
    assert gate.limit == 4  # half of the 8 that were in flight
    for g in generations[1:5]:
        gate.release(g, "throttled")  # in flight before the decrease: no further halving
    assert gate.limit == 4 and gate.in_flight == 3
    g = gate.acquire(budget)
    gate.release(g, "throttled")  # a request admitted under the new limit halves it again
    assert gate.limit == 2


def test_successes_grow_the_limit_back_one_at_a_time_until_unlimited() -> None:
    gate, budget = AIMD("chat:m", step=2), Budget()
    generations = [gate.acquire(budget) for _ in range(4)]
    gate.release(generations[0], "throttled")
    assert gate.limit == 2  # half of the 4 in flight
    gate.release(generations[1], "ok")
    assert gate.limit == 2
    gate.release(generations[2], "ok")
    assert gate.limit == 3  # +1 per 2 successes
    gate.release(generations[3], "ok")
    gate.release(gate.acquire(budget), "ok")
    assert gate.limit is None  # back at the most it ever had in flight (4): unlimited again


def test_a_full_gate_gives_up_when_the_budget_is_spent() -> None:
    gate = AIMD("chat:m")
    generations = [gate.acquire(Budget()) for _ in range(2)]
    gate.release(generations[0], "throttled")
    assert gate.limit == 1 and gate.in_flight == 1
    spent = Budget(remaining=lambda: 3.0, reserve=5.0)
    with pytest.raises(RateLimitedLLMError):
        gate.acquire(spent)
    stopped = threading.Event()
    stopped.set()
    halted = Budget(stop=stopped)
    with pytest.raises(RateLimitedLLMError):
        gate.acquire(halted)
    assert spent.stats.deferred == halted.stats.deferred == 1  # each item sent back is counted


# --- the queue ----------------------------------------------------------------------------------


def test_a_rate_limited_try_gives_its_attempt_back_and_is_never_dead_lettered(
    env: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    settings = load_settings(max_attempts=1, retry_base_seconds=0, retry_max_seconds=0)
    req = StoreRawRequest(session_data="user: I like tea.", session_id="s-1")
    raw_id = submissions.submit(get_store(), settings, "user1", req).raw_memory_id
    key = keys.VectorstoreKeys("user1").raw(raw_id)
    for _ in range(3):  # more rate-limited tries than MAX_ATTEMPTS allows attempts
        (item,) = queue.claim(get_store(), settings, 1).items
        assert item.attempt == 1
        outcome, _ = queue.fail(get_store(), settings, item, "429", retryable=True, counts_attempt=False)
        assert outcome == "retry" and r.hget(key, "processing_attempts") == "0"
    # With the limit's wait it waits exactly that, not the (here 30 s) backoff of an error.
    backoff = load_settings(max_attempts=1, retry_base_seconds=30, retry_max_seconds=30)
    (item,) = queue.claim(get_store(), backoff, 1).items
    outcome, delay = queue.fail(
        get_store(), backoff, item, "429", retryable=True, min_delay=2.5, counts_attempt=False
    )
    assert (outcome, delay) == ("retry", 2.5) and r.hget(key, "status") == "queued"
    assert r.hget(key, "processing_attempts") == "0"


# --- the gate around the real openai client -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "max_tokens"),
    [
        (b'{"a_b": "max_tokens: 5 and \\"max_x\\"", "max_tokens": 12, "max_completion_tokens": 9}', 12),
        (b'{"max_completion_tokens" :\n 9, "max_tokens": 12}', 9),
        (b'{"max_tokens": "12", "_max_tokens": 3}', None),
        (b'_"max_tokens":7', 7),
    ],
)
def test_a_chat_booking_takes_the_first_max_tokens_of_the_body(body: bytes, max_tokens: int | None) -> None:
    expected = _MAX_TOKENS_RE.search(body)
    assert (int(expected.group(1)) if expected else None) == max_tokens  # what the pattern finds
    tokens = -(-len(body) // 4) + (max_tokens if max_tokens is not None else OUTPUT_TOKENS)
    assert estimate_tokens("chat", body) == tokens


def test_estimates_and_usage_read_from_the_request_and_the_answer() -> None:
    assert estimate_tokens("embeddings", b"x" * 401) == 101
    assert estimate_tokens("chat", b"x" * 400) == 100 + OUTPUT_TOKENS
    assert estimate_tokens("chat", b'{"max_completion_tokens": 300, "m": 1}') == 10 + 300
    answer = b'{"data": [{"embedding": "AAAA"}], "usage": {"prompt_tokens": 7, "total_tokens": 7}}'
    assert used_tokens(answer) == 7
    assert used_tokens(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}') == 7
    assert used_tokens(b'{"data": []}') is None


def test_every_request_is_booked_and_corrected_to_the_usage_the_provider_reported(
    fake_llm: Any, r: redis.Redis
) -> None:
    settings = load_settings(llm_tokens_per_minute=10_000_000, embedding_tokens_per_minute=10_000_000)
    for i in range(3):
        store("user1", CHAT + f"user: My locker number is {i}.\n", f"s-{i}")
    fake_llm.reset()
    report = build_processor(settings).drain()
    assert report.processed == 3 and report.rate_limit_waits == 0
    chat, emb = chat_scope(settings.llm_model), f"embeddings:{settings.embedding_model}"
    assert len(booked(r, chat)) == fake_llm.chat_calls == 3
    assert len(booked(r, emb)) == fake_llm.embedding_calls
    # Each booking now holds what its answer's usage said (prompt + completion tokens).
    assert held(r, chat)["#total"] + held(r, emb)["#total"] == fake_llm.tokens_in + fake_llm.tokens_out


def test_a_wait_past_the_time_budget_sends_the_item_back_without_spending_an_attempt(
    fake_llm: Any, r: redis.Redis
) -> None:
    settings = load_settings(llm_requests_per_minute=1, max_attempts=1, llm_timeout_seconds=2)
    res = store("user1", CHAT, "s-1")
    scope = chat_scope(settings.llm_model)
    ratelimit.reserve(get_store(), scope, "other", 1, Limits(1, 0, 60.0))  # another processor's
    fake_llm.reset()
    report = build_processor(settings).drain(remaining_seconds=lambda: 30.0)
    assert report.rate_limit_deferred == 1 and report.retried == 1 and report.dead == 0
    assert fake_llm.chat_calls == 0  # nothing was sent past the limit
    raw = r.hgetall(keys.VectorstoreKeys("user1").raw(res["raw_memory_id"]))
    assert raw["status"] == "queued" and raw["processing_attempts"] == "0"
    assert "shared rate limit" in raw["last_error"]
    due = float(raw["next_attempt_at"]) - redis_now(r)
    assert 59 < due <= 61  # when the other's request leaves the window (60 s + the 1 s margin)
    assert list(booked(r, scope)) == ["other"]


def test_a_stopped_drain_gives_its_booking_back(fake_llm: Any, r: redis.Redis) -> None:
    settings = load_settings(llm_requests_per_minute=1)
    g = Gate.from_settings(get_store(), settings)
    scope = chat_scope(settings.llm_model)
    ratelimit.reserve(get_store(), scope, "other", 1, Limits(1, 0, 60.0))
    budget = Budget(stop=threading.Event())
    budget.stop.set()
    with pytest.raises(RateLimitedLLMError) as info, within(budget), g.request(scope, 10):
        raise AssertionError("a stopped drain sends nothing")
    assert info.value.retry_after is not None and info.value.retry_after > 55
    assert list(booked(r, scope)) == ["other"]  # the booking it made was given back
    assert budget.stats.deferred == 1


def test_a_429_costs_no_attempt_and_is_counted(fake_llm: Any, r: redis.Redis) -> None:
    res = store("user1", CHAT, "s-1")
    fake_llm.fail_next("429", path="chat", retry_after_ms=1)
    reports = drain_until_done(build_processor(load_settings(max_attempts=1, llm_max_retries=0)), r)
    assert sum(x.llm_throttled for x in reports) == 1 and sum(x.retried for x in reports) == 1
    assert sum(x.processed for x in reports) == 1 and sum(x.dead for x in reports) == 0
    raw = r.hgetall(keys.VectorstoreKeys("user1").raw(res["raw_memory_id"]))
    assert raw["status"] == "processed" and raw["processing_attempts"] == "1"


# --- processors together ------------------------------------------------------------------------


def submit(n: int, vectorstores: int) -> list[tuple[str, str]]:
    settings = get_settings()
    out = []
    for i, text in enumerate(sessions(n, seed=13)):
        vs = f"rl{i % vectorstores:02d}"
        req = StoreRawRequest(session_data=text, session_id=f"s-{i}")
        out.append((vs, submissions.submit(get_store(), settings, vs, req).raw_memory_id))
    return out


def test_four_processors_together_never_exceed_the_limit(
    fake_llm: Any, r: redis.Redis, redis_server: RedisServer, env: pytest.MonkeyPatch
) -> None:
    """Four `memproc process` processes share the limit; the fake server, which enforces the same
    limit, counts the requests of every window it saw, and never needs to refuse one. (The
    margin is generous for a one-second window: on a busy 2-core machine a process may wait that
    long for a CPU between its booking and its request.)"""
    window, chat_limit, embedding_limit = 1.0, 4, 6
    for name, value in {
        "LLM_REQUESTS_PER_MINUTE": chat_limit,
        "EMBEDDING_REQUESTS_PER_MINUTE": embedding_limit,
        "LLM_RATE_WINDOW_SECONDS": window,
        "LLM_RATE_MARGIN_SECONDS": 0.5,
        "LLM_TIMEOUT_SECONDS": 10,
    }.items():
        env.setenv(name, str(value))
    items = submit(12, vectorstores=6)
    fake_llm.latency = 0.05
    fake_llm.limit_rate(chat_limit, window, path="chat")
    fake_llm.limit_rate(embedding_limit, window, path="embeddings")
    fake_llm.reset()
    workers = [run_processor(redis_server, fake_llm, "--concurrency", "3") for _ in range(4)]
    reports = []
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))

    arrivals = fake_llm.arrivals
    chat = [a.at for a in arrivals if a.endpoint == "chat"]
    embeddings = [a.at for a in arrivals if a.endpoint == "embeddings"]
    assert len(chat) == 12
    assert max_in_window(chat, window) <= chat_limit
    assert max_in_window(embeddings, window) <= embedding_limit
    assert fake_llm.throttled == 0  # the limiter alone kept them within it
    assert sum(rep["processed"] for rep in reports) == 12
    assert sum(rep["dead"] + rep["retried"] for rep in reports) == 0
    assert sum(rep["rate_limit_waits"] for rep in reports) > 0  # the limit did bind
    for vs, raw_id in items:
        assert r.hget(keys.VectorstoreKeys(vs).raw(raw_id), "status") == "processed"
    for key in (keys.RAW_MEMORY_QUEUE, keys.INFLIGHT, keys.DEAD):
        assert r.zcard(key) == 0
