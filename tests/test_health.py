"""GET /api/health against real Redis: each check passing and failing, one round trip whatever the
queue holds, a 503 from a store that is down, and processing_status showing the same facts."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from memproc import keys
from memproc import settings as settings_module
from memproc.dal.connection import get_store
from memproc.dal.functions import LIBRARY_VERSION
from tests.api_client import ApiResponse, call, mem_path
from tests.memory_helpers import drain, store
from tests.redis_server import free_port
from tests.round_trips import RoundTrips

LIBRARY = f"memproc_{LIBRARY_VERSION}"


def health() -> ApiResponse:
    return call("GET", "/api/health")


def status() -> dict[str, Any]:
    res = call("GET", mem_path("user1", "/processing_status"))
    assert res.status == 200, res.body
    return dict(res.body)


@pytest.fixture
def healthy(fake_llm: Any) -> None:
    """A store the processor has just visited: library loaded, heartbeat fresh, queue empty, and
    vectorstore user1 written (processing_status of one never written is 404)."""
    store("user1", "user: I drink coffee.", "s-visited")
    drain()


def test_a_visited_store_is_healthy(healthy: None) -> None:
    res = health()
    assert res.status == 200 and "Retry-After" not in res.headers
    assert res.body["success"] is True and res.body["status"] == "ok" and res.body["reasons"] == []
    checks = res.body["checks"]
    assert checks["library"] == LIBRARY and checks["library_loaded"] is True
    assert checks["eviction_policy"] == "noeviction"
    assert checks["processor_running"] is True and checks["last_heartbeat_age_seconds"] < 60
    assert checks["queue_size"] == 0 and checks["backlog_age_seconds"] == 0


def test_a_store_no_processor_ever_visited_is_degraded(env: Any) -> None:
    res = health()
    assert res.status == 503 and res.body["status"] == "degraded" and res.body["success"] is False
    assert res.headers["Retry-After"] == str(res.body["checks"]["processing_interval_seconds"])
    assert any("never reported a heartbeat" in reason for reason in res.body["reasons"])


def test_a_silent_processor_is_degraded(healthy: None, r: redis.Redis) -> None:
    interval = health().body["checks"]["processing_interval_seconds"]
    r.hset(keys.PROCESSOR_STATUS, "last_heartbeat", f"{time.time() - 3 * interval - 60:.6f}")
    res = health()
    assert res.status == 503
    assert res.body["checks"]["processor_running"] is False
    assert any(f"runs every {interval} s" in reason for reason in res.body["reasons"])


def test_an_evicting_store_is_degraded_and_says_why_first(healthy: None, r: redis.Redis) -> None:
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        res = health()
        assert res.status == 503 and res.body["checks"]["eviction_policy"] == "allkeys-lru"
        assert "noeviction" in res.body["reasons"][0]  # what can lose accepted work comes first
        assert status()["degraded"] == res.body["reasons"]  # one judgement, two routes
    finally:
        r.config_set("maxmemory-policy", "noeviction")


def test_a_store_without_the_library_is_degraded_and_health_does_not_load_it(
    healthy: None, r: redis.Redis
) -> None:
    r.function_flush()
    res = health()
    assert res.status == 503 and res.body["checks"]["library_loaded"] is False
    assert any(LIBRARY in reason for reason in res.body["reasons"])
    assert r.function_list(library=LIBRARY) == []  # health only reads
    assert status()["processor_running"] is True  # any library call loads it again
    assert health().status == 200


def test_a_queue_falling_behind_is_degraded(healthy: None, r: redis.Redis) -> None:
    raw_id = store("user1", "user: I like tea.", "s-1")["raw_memory_id"]
    res = health()
    assert res.status == 200 and res.body["checks"]["queue_size"] == 1
    assert res.body["checks"]["backlog_age_seconds"] < 5
    limit = res.body["checks"]["max_backlog_age_seconds"]
    r.zadd(keys.RAW_MEMORY_QUEUE, {keys.VectorstoreKeys("user1").raw(raw_id): time.time() - limit - 30})
    res = health()
    assert res.status == 503 and res.body["checks"]["backlog_age_seconds"] > limit
    assert any("falling behind" in reason for reason in res.body["reasons"])
    # processing_status shows the same facts and the same verdict.
    s = status()
    assert s["backlog_age_seconds"] == pytest.approx(res.body["checks"]["backlog_age_seconds"], abs=2)
    for fact in ("processors_running", "eviction_policy", "processor_running", "processing_interval_seconds"):
        assert s[fact] == res.body["checks"][fact], fact
    assert s["last_heartbeat_age_seconds"] is not None and s["degraded"] == res.body["reasons"]


def test_items_parked_behind_their_session_are_not_due(healthy: None, r: redis.Redis) -> None:
    raw_id = store("user1", "user: I like tea.", "s-1")["raw_memory_id"]
    r.zadd(keys.RAW_MEMORY_QUEUE, {keys.VectorstoreKeys("user1").raw(raw_id): float("inf")})
    checks = health().body["checks"]
    assert checks["queue_size"] == 1 and checks["backlog_age_seconds"] == 0


def test_health_is_one_round_trip_whatever_the_queue_holds(healthy: None) -> None:
    trips = RoundTrips()
    health()  # connected
    trips.instrument(get_store().r)
    trips.instrument(get_store().rb)
    counts = []
    for n in (0, 50):
        for i in range(n):
            store("user1", f"user: fact number {i}.", f"s-{i}")
        trips.reset()
        assert health().status == 200
        counts.append(dict(trips.kinds))
    assert counts[0] == counts[1] == {"PIPELINE[7]": 1}


def test_health_on_a_store_that_is_down_is_a_503(env: pytest.MonkeyPatch) -> None:
    env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    settings_module.get_settings.cache_clear()
    res = health()
    assert res.status == 503 and res.error_code == "store_unavailable"
    assert res.headers["Retry-After"] and res.body["success"] is False


def test_health_takes_no_parameters(healthy: None) -> None:
    res = call("GET", "/api/health", query={"verbose": "1"})
    assert res.status == 400 and res.error_code == "unknown_query_parameter"
