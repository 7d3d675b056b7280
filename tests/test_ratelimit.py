"""The shared LLM rate limit: the Redis-side limiter against real Redis."""

from __future__ import annotations

import pytest
import redis

from memproc import keys
from memproc.dal import ratelimit
from memproc.dal.connection import get_store
from memproc.dal.ratelimit import Limits
from tests.fake_openai import max_in_window

SCOPE = "chat:test-model"


def booked(r: redis.Redis, scope: str = SCOPE) -> dict[str, float]:
    log, _ = keys.rate_limit(scope)
    return dict(r.zrange(log, 0, -1, withscores=True))


def held(r: redis.Redis, scope: str = SCOPE) -> dict[str, int]:
    _, tokens = keys.rate_limit(scope)
    return {k: int(v) for k, v in r.hgetall(tokens).items()}


def redis_now(r: redis.Redis) -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


# --- the limiter in Redis -----------------------------------------------------------------------


def test_requests_past_the_limit_are_booked_when_the_oldest_leaves_the_window(r: redis.Redis) -> None:
    limits = Limits(requests=3, tokens=0, window=10.0)
    first = [ratelimit.reserve(get_store(), SCOPE, f"b{i}", 1, limits) for i in range(3)]
    assert all(b.booked and b.wait == 0 for b in first)
    late = ratelimit.reserve(get_store(), SCOPE, "b3", 1, limits)
    assert late.booked and 0 < late.wait <= 10.0
    times = booked(r)
    assert times["b3"] == pytest.approx(times["b0"] + 10.0, abs=1e-6)  # when b0 leaves the window
    assert late.wait == pytest.approx(times["b3"] - redis_now(r), abs=0.5)


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
    ratelimit.reserve(s, SCOPE, "b", 10, limits)
    assert ratelimit.cancel(s, SCOPE, "b")
    assert ratelimit.reserve(s, SCOPE, "c", 20, limits).wait == 0  # b's request and tokens are free
    assert held(r) == {"a": 30, "c": 20, "#total": 50}
    assert not ratelimit.settle(s, SCOPE, "b", 5)  # nothing left to correct


def test_bookings_that_left_the_window_are_forgotten_and_the_keys_expire(r: redis.Redis) -> None:
    s, limits = get_store(), Limits(requests=2, tokens=100, window=10.0)
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


# --- the queue ----------------------------------------------------------------------------------


def test_a_rate_limited_try_gives_its_attempt_back_and_is_never_dead_lettered(
    env: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    from memproc import submissions
    from memproc.dal import queue
    from memproc.schemas.requests import StoreRawRequest
    from memproc.settings import load_settings

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
