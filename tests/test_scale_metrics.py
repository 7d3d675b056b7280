"""Metrics for scale: a claim carries its item's queue wait, a drain reports the waits' p50/p95,
the heartbeat and processing_status report the backlog's age and the live processors, and a
processor invocation publishes all of it as EMF metrics."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from memproc import keys
from memproc.dal import queue
from memproc.dal.connection import get_store
from memproc.fanout import FanOut
from memproc.observability import drain_metrics
from memproc.processor import DrainReport, build_processor, percentile
from memproc.settings import get_settings, load_settings
from memproc_local.events import LambdaContext
from tests.api_client import call, mem_path
from tests.memory_helpers import drain, process_queue_handler, store

CHAT = "user: I live in Porto.\nuser: I prefer green tea over coffee.\n"
TICK = {"source": "memproc.schedule", "detail-type": "Scheduled Event", "detail": {"task": "process_queue"}}
MS = 0.001  # the queue reports seconds rounded to the millisecond


def server_time(r: redis.Redis) -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


def submitted_ago(r: redis.Redis, vs: str, raw_id: str, seconds: float) -> float:
    """Backdate a submission; returns the server time it was done at."""
    now = server_time(r)
    r.hset(keys.VectorstoreKeys(vs).raw(raw_id), "created_at", f"{now - seconds:.6f}")
    return now


def eligible_since(r: redis.Redis, vs: str, raw_id: str, at: float) -> None:
    """What waiting since `at` looks like in the queue: its score in both queue sets."""
    vk = keys.VectorstoreKeys(vs)
    r.zadd(keys.RAW_MEMORY_QUEUE, {vk.raw(raw_id): at})
    r.zadd(vk.pending, {raw_id: at})


# -- queue wait ----------------------------------------------------------------------------------------


def test_a_claim_carries_the_seconds_since_submission_in_server_time(env: Any, r: redis.Redis) -> None:
    raw_id = store("user1", CHAT, "s-1")["raw_memory_id"]
    before = submitted_ago(r, "user1", raw_id, 100)
    item = queue.claim(get_store(), get_settings(), 1).items[0]
    assert 100 <= item.waited <= 100 + (server_time(r) - before) + MS


def test_a_redriven_item_waits_from_its_redrive(fake_llm: Any, r: redis.Redis) -> None:
    raw_id = store("user1", CHAT, "s-1")["raw_memory_id"]
    fake_llm.fail_next("400", count=1)
    assert drain().dead == 1
    submitted_ago(r, "user1", raw_id, 3600)  # submitted an hour ago, dead since
    redriven = server_time(r)
    assert queue.redrive(get_store(), "user1", raw_id)[0] == "queued"
    item = queue.claim(get_store(), get_settings(), 1).items[0]
    assert 0 <= item.waited <= server_time(r) - redriven + MS


def test_a_drain_reports_its_sessions_queue_wait_as_p50_and_p95(env: Any, r: redis.Redis) -> None:
    ages = {"a": 10.0, "b": 20.0, "c": 300.0}
    started = min(
        submitted_ago(r, vs, store(vs, CHAT, "s-1")["raw_memory_id"], age) for vs, age in ages.items()
    )
    report = drain()
    elapsed = server_time(r) - started
    assert report.processed == 3
    # submitted -> processed: at least its age, at most its age and the time this test took
    for wait, age in zip(sorted(report.waits), sorted(ages.values()), strict=True):
        assert age <= wait <= age + elapsed + MS
    assert report.wait_p50 == round(sorted(report.waits)[1], 3)  # nearest rank: the 2nd of 3
    assert report.wait_p95 == round(max(report.waits), 3)
    summary = report.summary()
    assert "waits" not in summary and summary["queue_wait_p95_seconds"] == report.wait_p95


def test_percentiles_are_observed_values() -> None:
    assert percentile([], 0.5) is None
    assert percentile([4.0], 0.95) == 4.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95)) == (50.0, 95.0)


# -- backlog age and live processors -------------------------------------------------------------------


def test_backlog_age_is_how_long_the_oldest_eligible_item_has_waited(env: Any, r: redis.Redis) -> None:
    settings = get_settings()
    quiet = queue.heartbeat(get_store(), settings, "test")
    assert (quiet.backlog, quiet.backlog_age) == (0, 0.0)
    old = store("a", CHAT, "s-1")["raw_memory_id"]
    store("b", CHAT, "s-1")
    store("b", CHAT + "user: I also swim.\n", "s-1")  # parked behind the one before: not eligible
    later = store("c", CHAT, "s-1")["raw_memory_id"]
    now = server_time(r)
    eligible_since(r, "a", old, now - 500)
    eligible_since(r, "c", later, now + 60)  # a retry due in a minute: not eligible yet
    beat = queue.heartbeat(get_store(), settings, "test")
    assert beat.backlog == 2 and beat.vectorstores == 3
    assert 500 <= beat.backlog_age <= 500 + (server_time(r) - now) + MS
    status = call("GET", mem_path("b", "/processing_status")).body
    assert 500 <= status["backlog_age_seconds"] <= 500 + (server_time(r) - now) + MS


def test_live_processors_are_counted_until_they_leave_or_their_registration_runs_out(
    env: Any, r: redis.Redis
) -> None:
    settings, s = get_settings(), get_store()
    stored = call("POST", mem_path("user1", "/store_raw"), json_body={"session_data": "user: I swim.\n"})
    assert stored.status == 202  # processing_status answers for vectorstores that exist
    assert queue.heartbeat(s, settings, "test", processor="p1", ttl=60).processors == 1
    assert queue.heartbeat(s, settings, "test", processor="p2", ttl=60).processors == 2
    assert call("GET", mem_path("user1", "/processing_status")).body["processors_running"] == 2
    r.zadd(keys.PROCESSORS, {"p2": server_time(r) - 1})  # p2 died a second past its registration
    assert queue.heartbeat(s, settings, "test").processors == 1
    assert call("GET", mem_path("user1", "/processing_status")).body["processors_running"] == 1
    assert queue.heartbeat(s, settings, "test", processor="p1").processors == 0  # p1 is done


def test_a_drain_counts_as_a_live_processor_while_it_runs(env: Any, r: redis.Redis) -> None:
    store("user1", CHAT, "s-1")
    store("user2", CHAT, "s-1")
    seen: list[int] = []
    report = build_processor(load_settings()).drain(progress=lambda _: seen.append(r.zcard(keys.PROCESSORS)))
    assert report.processed == 2 and report.processors_running == 1
    assert seen and set(seen) == {1}
    assert r.zcard(keys.PROCESSORS) == 0


# -- EMF metrics ----------------------------------------------------------------------------------------


def emf(out: str) -> dict[str, float]:
    """The metric values in a captured stdout's EMF documents."""
    values: dict[str, float] = {}
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            doc = json.loads(line)
            for directive in doc["_aws"]["CloudWatchMetrics"]:
                assert directive["Namespace"] == "Memproc" and directive["Dimensions"] == [["service"]]
                for metric in directive["Metrics"]:
                    value = doc[metric["Name"]]
                    if isinstance(value, list):  # one value per invocation, sometimes as a list
                        (value,) = value
                    values[metric["Name"]] = value
    return values


def test_a_processor_invocation_publishes_the_scale_metrics(
    env: pytest.MonkeyPatch, fake_llm: Any, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    handler = process_queue_handler(env)
    first = store("user1", CHAT, "s-1")["raw_memory_id"]
    store("user2", CHAT, "s-1")
    submitted_ago(r, "user1", first, 120)
    eligible_since(r, "user1", first, server_time(r) - 120)
    capsys.readouterr()
    summary = handler(TICK, LambdaContext("ProcessQueueFunction", timeout_seconds=120))
    published = emf(capsys.readouterr().out)
    # No event bus here: no Events* metrics; the waits, as sessions were processed.
    expected = {name for name, _, v in drain_metrics(DrainReport(), FanOut()) if v is not None}
    assert set(published) == expected | {"QueueWaitP50Seconds", "QueueWaitP95Seconds"}
    assert published["SessionsProcessed"] == 2 == summary["processed"]
    assert published["QueueBacklog"] == 2 and published["ProcessorsRunning"] == 1
    assert published["BacklogAgeSeconds"] >= 120
    assert published["QueueWaitP95Seconds"] >= 120 > published["QueueWaitP50Seconds"]
    assert published["FanOutInvocations"] == published["FanOutFailures"] == 0  # MAX_PROCESSORS=1 here
    assert published["RateLimitWaits"] == published["RateLimitWaitSeconds"] == published["LLMThrottled"] == 0


def test_nothing_processed_publishes_no_wait_percentiles() -> None:
    names = {name for name, _, value in drain_metrics(DrainReport(), FanOut()) if value is not None}
    assert "QueueWaitP50Seconds" not in names and "BacklogAgeSeconds" in names


@pytest.mark.one_backend
def test_the_rate_limiters_waits_and_the_providers_429s_are_published(
    env: pytest.MonkeyPatch, fake_llm: Any, r: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # One chat request per 1 s window: of two sessions' requests one waits for the limiter; the
    # provider also refuses one (429), which the SDK retries.
    for name, value in {
        "POWERTOOLS_METRICS_DISABLED": "false",
        "LLM_REQUESTS_PER_MINUTE": "1",
        "LLM_RATE_WINDOW_SECONDS": "1",
        "LLM_RATE_MARGIN_SECONDS": "0",
    }.items():
        env.setenv(name, value)
    handler = process_queue_handler(env)
    store("user1", CHAT, "s-1")
    store("user2", CHAT, "s-1")
    fake_llm.fail_next("429", path="chat", retry_after_ms=1)
    capsys.readouterr()
    summary = handler(TICK, LambdaContext("ProcessQueueFunction", timeout_seconds=120))
    published = emf(capsys.readouterr().out)
    assert summary["processed"] == 2 and summary["dead"] == 0
    assert published["RateLimitWaits"] == summary["rate_limit_waits"] >= 1
    assert published["RateLimitWaitSeconds"] == summary["rate_limit_wait_seconds"] > 0
    assert published["LLMThrottled"] == summary["llm_throttled"] == 1
