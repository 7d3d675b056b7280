"""Retention cleanup: only processed raw transcripts past the retention are deleted; queued,
in-flight and dead items, memories, summaries and other vectorstores (`user1` vs `user10`) are
never touched; indexes are trimmed, lost queue entries reconciled, work is bounded per call and
the schedule covers every vectorstore without SCAN."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from memproc import keys, retention
from memproc.dal import queue
from memproc.dal.connection import get_store
from memproc.settings import get_settings
from memproc_local.cli import main as cli_main
from memproc_local.events import LambdaContext
from memproc_local.handlers import load_handler
from memproc_local.routing import Route
from tests.api_client import call, mem_path
from tests.chats import sessions
from tests.memory_helpers import (
    drain,
    drop_memory_record,
    everything,
    memory_records,
    snapshot,
    store,
    stored_memories,
)
from tests.redis_server import ROOT, RedisServer

DAY = 86_400
SCHEDULE_EVENT = {
    "source": "memproc.schedule",
    "detail-type": "Scheduled Event",
    "detail": {"task": "cleanup"},
}
U1 = keys.VectorstoreKeys("user1")


def cleanup(vs: str = "user1", **query: Any) -> Any:
    return call("POST", mem_path(vs, "/cleanup"), query=query)


def backdate(r: redis.Redis, vs: str, raw_id: str, days: float) -> None:
    """Make a submission look `days` older (its hash, the raw index and its session's index)."""
    vk = keys.VectorstoreKeys(vs)
    created = float(r.hget(vk.raw(raw_id), "created_at")) - days * DAY
    r.hset(vk.raw(raw_id), "created_at", f"{created:.6f}")
    r.zadd(vk.raw_index, {raw_id: created})
    r.zadd(vk.session_raws(r.hget(vk.raw(raw_id), "session_id")), {raw_id: created})


@dataclass
class Scene:
    old: str  # processed, 40 days old
    new: str  # processed today
    queued: str  # queued, 40 days old
    flight: str  # claimed by a worker, 40 days old
    dead: str  # dead-lettered, 40 days old
    other_old: str  # user10: processed, 40 days old

    @property
    def live(self) -> list[str]:
        return [self.queued, self.flight, self.dead]


@pytest.fixture
def scene(fake_llm: Any, r: redis.Redis) -> Scene:
    texts = sessions(8, seed=31)
    old = store("user1", texts[0], "s-old")["raw_memory_id"]
    new = store("user1", texts[1], "s-new")["raw_memory_id"]
    other_old = store("user10", texts[0], "s-old")["raw_memory_id"]
    assert drain().processed == 3
    dead = store("user1", texts[2], "s-dead")["raw_memory_id"]
    fake_llm.fail_next("400", count=1)
    assert drain().dead == 1
    flight = store("user1", texts[3], "s-flight")["raw_memory_id"]
    assert [c.raw_id for c in queue.claim(get_store(), get_settings(), 1).items] == [flight]
    queued = store("user1", texts[4], "s-queued")["raw_memory_id"]
    store("user10", texts[5], "s-queued")
    for raw_id in (old, queued, flight, dead):
        backdate(r, "user1", raw_id, 40)
    backdate(r, "user10", other_old, 40)
    return Scene(old, new, queued, flight, dead, other_old)


def live_state(r: redis.Redis, s: Scene) -> dict[str, Any]:
    """The live items' hashes and queue memberships, exactly."""
    out: dict[str, Any] = {}
    for rid in [*s.live, s.new]:
        out[rid] = (r.hgetall(U1.raw(rid)), r.pexpiretime(U1.raw(rid)))
    for z in (keys.RAW_MEMORY_QUEUE, keys.INFLIGHT, keys.DEAD, U1.pending, U1.inflight, U1.dead, keys.READY):
        out[z] = r.zrange(z, 0, -1, withscores=True)
    return out


def test_only_old_processed_transcripts_are_deleted(scene: Scene, r: redis.Redis) -> None:
    other = snapshot(r, "user10")
    live = live_state(r, scene)
    memories = memory_records("user1")
    digest = r.hget(U1.raw(scene.old), "dedupe_digest")
    summary = r.get(U1.session_summary("s-old"))

    res = cleanup(retention_days="30")
    assert res.status == 200, res.body
    b = res.body
    assert b["deleted_raw_memories"] == [scene.old] and b["deleted_count"] == 1
    assert b["dry_run"] is False and b["retention_days"] == 30 and b["complete"] is True
    assert b["live_kept"] == 3 and b["reconciled"]["total"] == 0 and b["trimmed_index_entries"]["total"] == 0
    assert not r.exists(U1.raw(scene.old), U1.dedupe(digest))
    assert r.zscore(U1.raw_index, scene.old) is None and r.zscore(U1.session_raws("s-old"), scene.old) is None
    # Memories and the summary are not transcripts: they stay.
    assert memory_records("user1") == memories and r.get(U1.session_summary("s-old")) == summary
    assert live_state(r, scene) == live
    assert snapshot(r, "user10") == other
    # Nothing left to do; the live items are still served by the queue.
    again = cleanup(retention_days="30").body
    assert again["deleted_raw_memories"] == [] and again["live_kept"] == 3
    # the queued ones of both (the in-flight one keeps its lease, so its vectorstore needs a second slot)
    assert drain(vectorstore_concurrency=2).processed == 2


def test_the_retention_decides_what_is_old(scene: Scene, r: redis.Redis) -> None:
    assert cleanup(retention_days="41").body["deleted_raw_memories"] == []
    assert cleanup(retention_days="1").body["deleted_raw_memories"] == [scene.old]
    assert r.exists(U1.raw(scene.new))
    # Default: RAW_RETENTION_DAYS (30).
    assert cleanup().body["retention_days"] == 30


def test_a_dry_run_lists_without_deleting(scene: Scene, r: redis.Redis) -> None:
    before = everything(r)
    res = cleanup(retention_days="30", dry_run="true")
    assert res.status == 200 and res.body["dry_run"] is True
    assert res.body["deleted_raw_memories"] == [scene.old]
    assert everything(r) == before


def test_index_entries_of_vanished_records_are_trimmed(scene: Scene, r: redis.Redis) -> None:
    other = snapshot(r, "user10")
    # What TTLs (and a stray delete of a memory, and an erased memory set) would leave behind.
    r.delete(U1.raw(scene.old), U1.session_summary("s-new"), U1.raw(scene.new))
    r.delete(U1.session_memories("s-new"))
    gone = next(iter(r.smembers(U1.session_memories("s-old"))))
    drop_memory_record(r, "user1", gone)
    b = cleanup().body
    assert b["deleted_raw_memories"] == []
    assert b["trimmed_index_entries"] == {
        "raw_index": 2,
        "session_index": 1,
        "session_raws": 2,
        "memory_index": 1,
        "total": 6,
    }
    assert r.zscore(U1.raw_index, scene.old) is None and r.zscore(U1.raw_index, scene.new) is None
    assert r.zscore(U1.session_index, "s-new") is None and r.zscore(U1.session_index, "s-old") is not None
    assert r.zscore(U1.memory_index, gone) is None and r.zcard(U1.memory_index) == stored_memories(r, "user1")
    assert not r.exists(U1.session_raws("s-new")) and r.zcard(U1.session_raws("s-old")) == 0
    assert all(r.zscore(U1.raw_index, rid) is not None for rid in scene.live)
    assert snapshot(r, "user10") == other
    assert cleanup().body["trimmed_index_entries"]["total"] == 0


def test_a_session_whose_summary_expired_stays_indexed_while_its_memories_live(
    scene: Scene, r: redis.Redis
) -> None:
    r.delete(U1.session_summary("s-new"))  # the summary's retention ran out; memories are permanent
    assert r.scard(U1.session_memories("s-new")) > 0
    assert cleanup().body["trimmed_index_entries"]["session_index"] == 0
    assert r.zscore(U1.session_index, "s-new") is not None  # so erasing the vectorstore finds it


def test_records_the_queue_lost_are_reconciled(scene: Scene, r: redis.Redis) -> None:
    other = snapshot(r, "user10")
    lease = float(r.hget(U1.raw(scene.flight), "lease_deadline"))
    dead_at = r.zscore(U1.dead, scene.dead)
    r.zrem(keys.RAW_MEMORY_QUEUE, U1.raw(scene.queued))
    r.zrem(U1.pending, scene.queued)
    r.zrem(keys.INFLIGHT, U1.raw(scene.flight))
    r.zrem(U1.dead, scene.dead)
    r.zrem(keys.DEAD, U1.raw(scene.dead))
    r.zrem(keys.READY, "user1")

    dry = cleanup(dry_run="true").body["reconciled"]
    assert dry == {
        "requeued": 1,
        "restored_in_flight": 1,
        "restored_dead": 1,
        "ready": 0,
        "category_indexed": 0,
        "total": 3,
    }
    b = cleanup().body
    assert b["reconciled"]["total"] == 3 and b["deleted_raw_memories"] == [scene.old]
    assert r.zscore(U1.pending, scene.queued) == r.zscore(keys.RAW_MEMORY_QUEUE, U1.raw(scene.queued))
    # Both of its queue entries were lost, so it is due now (a retry's next_attempt_at would win).
    assert r.zscore(U1.pending, scene.queued) == pytest.approx(float(r.time()[0]), abs=5)
    assert r.zscore(keys.READY, "user1") is not None
    assert r.zscore(keys.INFLIGHT, U1.raw(scene.flight)) == pytest.approx(lease)
    assert r.zscore(U1.dead, scene.dead) == pytest.approx(dead_at, abs=1)
    assert r.zscore(keys.DEAD, U1.raw(scene.dead)) is not None
    assert r.hget(U1.raw(scene.flight), "status") == "processing"  # the worker may still commit
    assert snapshot(r, "user10") == other
    # The re-queued item is processed (and user10's queued one); user1 needs a second slot, as the
    # restored in-flight item keeps its lease.
    assert drain(vectorstore_concurrency=2).processed == 2
    assert cleanup().body["reconciled"]["total"] == 0


def test_a_vectorstore_missing_from_the_ready_set_gets_its_turn_back(scene: Scene, r: redis.Redis) -> None:
    r.zrem(keys.READY, "user1")
    assert cleanup().body["reconciled"]["ready"] == 1
    assert r.zscore(keys.READY, "user1") == r.zrange(U1.pending, 0, 0, withscores=True)[0][1]


def test_work_is_bounded_per_call_and_resumes(fake_llm: Any, r: redis.Redis) -> None:
    texts = sessions(5, seed=32)
    dead = [store("user1", t, f"d-{i}")["raw_memory_id"] for i, t in enumerate(texts[:3])]
    fake_llm.fail_next("400", count=3)
    assert drain().dead == 3
    done = [store("user1", t, f"p-{i}")["raw_memory_id"] for i, t in enumerate(texts[3:])]
    assert drain().processed == 2
    for rid in dead:
        backdate(r, "user1", rid, 50)  # the oldest entries are live: a scan must step past them
    for rid in done:
        backdate(r, "user1", rid, 40)
    receipts = []
    while True:
        b = cleanup(limit="2").body
        receipts.append(b)
        assert b["examined"]["retention"] <= 2
        if b["complete"]:
            break
        assert len(receipts) < 10
    assert sorted(x for b in receipts for x in b["deleted_raw_memories"]) == sorted(done)
    assert [b["complete"] for b in receipts] == [False] * (len(receipts) - 1) + [True]
    assert all(r.hget(U1.raw(rid), "status") == "error" for rid in dead)
    assert r.zcard(U1.dead) == 3


def test_the_schedule_covers_every_vectorstore(
    scene: Scene, r: redis.Redis, redis_server: RedisServer
) -> None:
    live = live_state(r, scene)
    handler = load_handler(
        Route("", "", "CleanupFunction", Path("functions/cleanup"), "app.lambda_handler"), ROOT
    )
    with redis_server.requests() as seen:
        report = handler(SCHEDULE_EVENT, LambdaContext("CleanupFunction", timeout_seconds=900))
    assert report["cycle_complete"] is True and report["vectorstores"] == 2
    assert report["deleted_raw_memories"] == 2 and report["dry_run"] is False
    assert not r.exists(U1.raw(scene.old), keys.VectorstoreKeys("user10").raw(scene.other_old))
    assert live_state(r, scene) == live
    assert not {"SCAN", "KEYS"} & set(seen)
    assert set(seen) <= {"HGET", "ZRANGE", "FCALL", "HSET", "HDEL"}


def test_a_schedule_cut_short_resumes_where_it_stopped(scene: Scene, r: redis.Redis) -> None:
    budget = iter([100.0, 100.0])  # the run, the first vectorstore; then time is up
    first = retention.run_scheduled(get_store(), get_settings(), remaining_seconds=lambda: next(budget, 0.0))
    assert first.cycle_complete is False and first.vectorstores == 1
    assert not r.exists(U1.raw(scene.old))
    assert r.exists(keys.VectorstoreKeys("user10").raw(scene.other_old))
    assert r.hget(keys.CLEANUP_SCHEDULE, "vectorstore_score")
    second = retention.run_scheduled(get_store(), get_settings(), remaining_seconds=lambda: 100.0)
    assert second.cycle_complete is True and second.vectorstores == 1 and second.deleted_raw_memories == 1
    assert not r.exists(keys.VectorstoreKeys("user10").raw(scene.other_old))
    assert r.hget(keys.CLEANUP_SCHEDULE, "vectorstore_score") is None


def test_cli_cleanup(scene: Scene, r: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    before = everything(r)
    assert cli_main(["cleanup", "--vectorstore", "user1", "--retention-days", "30", "--dry-run"]) == 0
    receipt = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert receipt["dry_run"] is True and receipt["deleted_raw_memories"] == [scene.old]
    assert cli_main(["cleanup", "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["dry_run"] is True and report["deleted_raw_memories"] == 2
    assert everything(r) == before
    assert cli_main(["cleanup", "--vectorstore", "a:b"]) == 2
    assert cli_main(["cleanup"]) == 0
    assert not r.exists(U1.raw(scene.old))


@pytest.mark.parametrize(
    ("vs", "query", "code"),
    [
        ("user1", {"retention_days": "0"}, "invalid_retention_days"),
        ("user1", {"retention_days": "3651"}, "invalid_retention_days"),
        ("user1", {"retention_days": "thirty"}, "invalid_retention_days"),
        ("user1", {"retention_days": "1.5"}, "invalid_retention_days"),
        ("user1", {"dry_run": "maybe"}, "invalid_dry_run"),
        ("user1", {"limit": "0"}, "invalid_limit"),
        ("user1", {"retention": "1"}, "unknown_query_parameter"),
        ("a:b", {}, "invalid_vectorstore_name"),
        ("RAW_MEMORY_QUEUE", {}, "invalid_vectorstore_name"),
    ],
)
def test_bad_input_is_400_and_changes_nothing(
    scene: Scene, r: redis.Redis, vs: str, query: dict[str, str], code: str
) -> None:
    before = everything(r)
    res = cleanup(vs, **query)
    assert res.status == 400, res.body
    assert res.error_code == code and res.body["error"]["message"]
    assert everything(r) == before


def test_cleanup_is_one_call(scene: Scene, redis_server: RedisServer) -> None:
    cleanup(dry_run="true")
    with redis_server.requests() as seen:
        assert cleanup().status == 200
    assert seen == ["FCALL"]


def test_the_schedule_skips_names_memproc_never_wrote(scene: Scene, r: redis.Redis) -> None:
    r.zadd(keys.VECTORSTORES, {"not a name": 0, "{x}": 1})
    report = retention.run_scheduled(get_store(), get_settings())
    assert report.cycle_complete is True and report.vectorstores == 2
    assert not r.exists("{not a name}:cleanup", "{{x}}:cleanup")


def test_cleaning_an_unknown_vectorstore_writes_nothing(scene: Scene, r: redis.Redis) -> None:
    before = everything(r)
    res = cleanup("nobody")
    assert res.status == 404 and res.error_code == "unknown_vectorstore"
    assert everything(r) == before
