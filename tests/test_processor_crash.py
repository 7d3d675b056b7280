"""Processors killed with SIGKILL at every stage, and several processors at once: every item is
processed exactly once (no lost item, no duplicated memory, attempt counts right)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest
import redis

from memproc import keys, submissions
from memproc.dal.connection import get_store
from memproc.schemas.requests import StoreRawRequest
from memproc.settings import get_settings
from tests.chats import sessions
from tests.memory_helpers import memory_records
from tests.redis_server import ROOT, RedisServer


def submit_all(r: redis.Redis, texts: list[str], vs: str = "crash") -> list[str]:
    settings = get_settings()
    return [
        submissions.submit(
            get_store(), settings, vs, StoreRawRequest(session_data=t, session_id=f"s-{i}")
        ).raw_memory_id
        for i, t in enumerate(texts)
    ]


def run_processor(
    redis_server: RedisServer, fake: Any, *args: str, crash_at: str = ""
) -> subprocess.Popen[str]:
    """`memproc process --run-once` in its own process, or the test-only crashing processor."""
    env = {
        **os.environ,
        "REDIS_URL": redis_server.url,
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": fake.base_url,
        "EMBEDDING_DIMENSIONS": "64",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    command = (
        ["tests.crashing_processor", crash_at] if crash_at else ["memproc_local.cli", "process", "--run-once"]
    )
    return subprocess.Popen(
        [sys.executable, "-m", *command, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def expire_all_leases(r: redis.Redis) -> int:
    """The dead worker's leases run out (what the clock would do after LEASE_SECONDS)."""
    leased = r.zrange("{RAW_MEMORY_QUEUE}:inflight", 0, -1)
    for key in leased:
        r.zadd("{RAW_MEMORY_QUEUE}:inflight", {key: 0})
    return len(leased)


def assert_exactly_once(r: redis.Redis, vs: str, raw_ids: list[str]) -> dict[str, int]:
    vk = keys.VectorstoreKeys(vs)
    attempts: dict[str, int] = {}
    created_total = 0
    mems = memory_records(vs)
    per_raw = Counter(m["raw_memory_id"] for m in mems.values())
    for raw_id in raw_ids:
        h = r.hgetall(vk.raw(raw_id))
        assert h["status"] == "processed", (raw_id, h.get("status"), h.get("last_error"))
        created = int(h["memories_created"])
        created_total += created
        assert per_raw[raw_id] == created  # this session's memories were written once
        ids = [m for m in mems if mems[m]["raw_memory_id"] == raw_id]
        assert sorted(int(m.rsplit("-", 1)[1]) for m in ids) == sorted(
            set(int(m.rsplit("-", 1)[1]) for m in ids)
        )
        summary = json.loads(r.get(vk.session_summary(h["session_id"])))
        assert summary["raw_memory_ids"] == [raw_id]
        assert len(summary["memory_ids"]) == len(set(summary["memory_ids"]))
        attempts[raw_id] = int(h["processing_attempts"])
    assert len(mems) == created_total
    assert r.zcard("RAW_MEMORY_QUEUE") == 0 and r.zcard("{RAW_MEMORY_QUEUE}:inflight") == 0
    day = r.keys("processing_stats:*")[0]
    assert int(r.hget(day, "processed_count")) == len(raw_ids)  # no session counted twice
    return attempts


def crash_and_recover(stage: str, fake_llm: Any, r: redis.Redis, redis_server: RedisServer) -> None:
    """Five sessions; a processor SIGKILLed at `stage` of the first; a survivor processes them all
    exactly once."""
    raw_ids = submit_all(r, sessions(5))
    crashed = run_processor(redis_server, fake_llm, crash_at=stage)
    _, err = crashed.communicate(timeout=120)
    assert crashed.returncode == -signal.SIGKILL, err

    statuses = Counter(r.hget(keys.VectorstoreKeys("crash").raw(i), "status") for i in raw_ids)
    if stage in ("after_claim", "after_llm"):
        assert statuses == {"processing": 1, "queued": 4}
    else:  # mid_commit: Redis ran the commit whole; the worker died before it heard so
        assert statuses == {"processed": 1, "queued": 4}
    expire_all_leases(r)

    survivor = run_processor(redis_server, fake_llm, "--concurrency", "2")
    _, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err
    attempts = assert_exactly_once(r, "crash", raw_ids)
    first = raw_ids[0]
    others = [attempts[i] for i in raw_ids[1:]]
    assert others == [1, 1, 1, 1]
    if stage in ("after_claim", "after_llm"):
        assert attempts[first] == 2  # claimed twice: the attempt counts at claim
    else:
        assert attempts[first] == 1


@pytest.mark.one_backend  # nothing reached the memory index when it died: the lease brings it back
@pytest.mark.parametrize("stage", ["after_claim", "after_llm"])
def test_sigkill_before_the_commit_loses_nothing_and_duplicates_nothing(
    stage: str, fake_llm: Any, r: redis.Redis, redis_server: RedisServer
) -> None:
    crash_and_recover(stage, fake_llm, r, redis_server)


@pytest.mark.parametrize("stage", ["mid_commit", "after_commit"])
def test_sigkill_in_or_after_the_commit_loses_nothing_and_duplicates_nothing(
    stage: str, fake_llm: Any, r: redis.Redis, redis_server: RedisServer
) -> None:
    crash_and_recover(stage, fake_llm, r, redis_server)


def test_four_processors_over_500_sessions_write_each_session_once(
    fake_llm: Any, r: redis.Redis, redis_server: RedisServer
) -> None:
    raw_ids = submit_all(r, sessions(500, seed=2), vs="busy")
    procs = [
        run_processor(redis_server, fake_llm, "--concurrency", "4", "--batch-size", "8") for _ in range(4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [e for _, e in outputs]
    processed = [json.loads(out.strip().splitlines()[-1])["processed"] for out, _ in outputs]
    assert sum(processed) == 500
    attempts = assert_exactly_once(r, "busy", raw_ids)
    assert set(attempts.values()) == {1}
