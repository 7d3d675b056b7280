"""Retention cleanup and erasure: the data lifecycle of the memory hierarchy.

Every change is one call of the Lua library, so each step is atomic with respect to the queue
protocol: cleanup only ever deletes processed raw memories and index entries whose record is gone
(queued, in-flight and dead items are never touched, only put back where they belong), and an
erasure that races a processor fences it out (its `commit` finds the raw hash gone and writes
nothing). Work per call is bounded; callers loop while time remains. No SCAN anywhere: the
scheduled run walks `memproc:vectorstores`, each vectorstore walks its own indexes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis

from memproc import keys
from memproc.connection import fcall
from memproc.errors import InvalidInput, NotFound
from memproc.models import (
    CleanupQuery,
    CleanupReceipt,
    ErasureCounts,
    ErasureReceipt,
    ReconcileCounts,
    ScheduledCleanupReport,
    TrimCounts,
)
from memproc.queue import iso, require_session_id, require_vectorstore
from memproc.settings import Settings
from memproc.store import json_list

# The scheduled run's place in memproc:vectorstores (a score), so a run cut short by its time
# budget resumes where it stopped instead of starting over.
SCHEDULE_STATE = "memproc:cleanup"
SCHEDULE_BATCH = 100
# Stop starting new calls when less than this remains of the invocation.
TIME_MARGIN_SECONDS = 30.0
# Per-vectorstore daily stats expire after 90 days (memproc.lua STATS_TTL); erasure deletes them all.
STATS_DAYS = 90
ERASE_BATCH = 500
# An API-triggered erasure must answer within API Gateway's 29 s; a partial one says so.
ERASE_BUDGET_SECONDS = 20.0


def cleanup(r: redis.Redis, settings: Settings, vectorstore: str, q: CleanupQuery) -> CleanupReceipt:
    """One bounded cleanup step for one vectorstore (one Lua call; see `cleanup` in memproc.lua).

    Deletes processed raw memories created before now - retention_days, trims index entries whose
    record is gone and reconciles records the queue lost. `complete` is false while older entries
    remain beyond this call's `limit`.
    """
    return _cleanup(r, settings, vectorstore, q)[0]


def _cleanup(
    r: redis.Redis, settings: Settings, vectorstore: str, q: CleanupQuery
) -> tuple[CleanupReceipt, set[str]]:
    """The receipt, and which of the Lua passes reached the end of their index in this call."""
    require_vectorstore(vectorstore)
    days = q.retention_days or settings.raw_retention_days
    res = json.loads(fcall(r, "cleanup", [], [vectorstore, days * 86_400, q.limit, 1 if q.dry_run else 0]))
    deleted = [str(x) for x in json_list(res["deleted"])]
    trimmed = {k: int(v) for k, v in res["trimmed"].items()}
    repaired = {k: int(v) for k, v in res["reconciled"].items()}
    receipt = CleanupReceipt(
        vectorstore_name=vectorstore,
        dry_run=q.dry_run,
        retention_days=days,
        cutoff=iso(res["cutoff"]) or "",
        deleted_raw_memories=deleted,
        deleted_count=len(deleted),
        trimmed_index_entries=TrimCounts(**trimmed, total=sum(trimmed.values())),
        reconciled=ReconcileCounts(**repaired, total=sum(repaired.values())),
        live_kept=int(res["live_kept"]),
        examined={k: int(v) for k, v in res["examined"].items()},
        complete=bool(res["complete"]["retention"]),
    )
    return receipt, {name for name, done in res["complete"].items() if done}


def _cleanup_vectorstore(
    r: redis.Redis,
    settings: Settings,
    vectorstore: str,
    q: CleanupQuery,
    time_left: Callable[[], float],
    report: ScheduledCleanupReport,
) -> bool:
    """Cleanup calls for one vectorstore until each pass has reached the end of its index (the
    rolling ones resume from their saved cursor, so two runs cover every entry) or time runs
    short; True when it finished."""
    pending = {"retention", "reconcile", "sessions", "memories"}
    while time_left() > TIME_MARGIN_SECONDS:
        receipt, done = _cleanup(r, settings, vectorstore, q)
        report.calls += 1
        report.deleted_raw_memories += receipt.deleted_count
        report.trimmed_index_entries += receipt.trimmed_index_entries.total
        report.reconciled += receipt.reconciled.total
        pending -= done
        if not pending or q.dry_run:  # a dry run writes no cursor: one look is all it can take
            return True
    return False


def _vectorstores_after(r: redis.Redis, cursor: str | None) -> list[tuple[str, float]]:
    """The next batch of memproc:vectorstores by score (the time each last received a session).
    A vectorstore that receives a session moves behind the cursor and is visited again: every
    vectorstore is visited at least once per cycle."""
    rows: list[tuple[Any, Any]] = r.zrange(  # type: ignore[assignment]
        keys.VECTORSTORES,
        f"({cursor}" if cursor else "-inf",
        "+inf",
        byscore=True,
        offset=0,
        num=SCHEDULE_BATCH,
        withscores=True,
    )
    return [(str(name), float(score)) for name, score in rows]


def run_scheduled(
    r: redis.Redis,
    settings: Settings,
    *,
    remaining_seconds: Callable[[], float] | None = None,
    dry_run: bool = False,
    limit: int = 1000,
) -> ScheduledCleanupReport:
    """The retention schedule: every vectorstore in `memproc:vectorstores`, in batches, resuming
    from the position the last (time-limited) run reached."""
    started = time.monotonic()
    time_left = remaining_seconds or (lambda: float("inf"))
    # Built without validation: the API's bounds guard request input, not the configured retention.
    q = CleanupQuery.model_construct(retention_days=settings.raw_retention_days, dry_run=dry_run, limit=limit)
    report = ScheduledCleanupReport(
        dry_run=dry_run,
        vectorstores=0,
        calls=0,
        deleted_raw_memories=0,
        trimmed_index_entries=0,
        reconciled=0,
        cycle_complete=False,
        seconds=0.0,
    )
    saved = None if dry_run else r.hget(SCHEDULE_STATE, "vectorstore_score")
    cursor: str | None = str(saved) if saved else None
    out_of_time = False
    while not out_of_time and time_left() > TIME_MARGIN_SECONDS:
        batch = _vectorstores_after(r, cursor)
        for name, score in batch:
            # A name memproc would refuse was never written by it: not ours to touch.
            if not keys.vectorstore_problem(name):
                if not _cleanup_vectorstore(r, settings, name, q, time_left, report):
                    out_of_time = True  # the next run resumes with this vectorstore
                    break
                report.vectorstores += 1
            cursor = repr(score)
            if not dry_run:
                r.hset(SCHEDULE_STATE, "vectorstore_score", cursor)
        if not out_of_time and len(batch) < SCHEDULE_BATCH:
            report.cycle_complete = True
            if not dry_run:
                r.hdel(SCHEDULE_STATE, "vectorstore_score")
            break
    report.seconds = round(time.monotonic() - started, 3)
    return report


# -- erasure -------------------------------------------------------------------------------------


def _counts(payload: str) -> dict[str, Any]:
    return {k: v for k, v in json.loads(payload).items() if k in ErasureCounts.model_fields}


def erase_memory(r: redis.Redis, vectorstore: str, memory_id: str) -> ErasureReceipt:
    """Remove one memory and every reference to it (session sets and summaries, raw records)."""
    require_vectorstore(vectorstore)
    if not keys.MEMORY_ID_RE.fullmatch(memory_id):
        raise InvalidInput("memory_id must look like <32 hex>-<position>", code="invalid_memory_id")
    res = fcall(r, "erase_memory", [], [vectorstore, memory_id])
    if res[0] == "not_found":
        raise NotFound(f"no memory {memory_id!r} in vectorstore {vectorstore!r}", code="memory_not_found")
    return ErasureReceipt(
        vectorstore_name=vectorstore,
        erased="memory",
        id=memory_id,
        removed=ErasureCounts(memories=1, references_updated=int(res[1]) + int(res[2])),
    )


def erase_session(r: redis.Redis, vectorstore: str, session_id: str) -> ErasureReceipt:
    """Remove a session: its raw memories wherever they are in the queue, summary, memory set,
    index entries, dedupe keys and the memories only it produced; shared memories lose it as a
    source. One atomic call."""
    require_vectorstore(vectorstore)
    require_session_id(session_id)
    res = fcall(r, "erase_session", [], [vectorstore, session_id])
    if res == "not_found":
        raise NotFound(f"no session {session_id!r} in vectorstore {vectorstore!r}", code="session_not_found")
    return ErasureReceipt(
        vectorstore_name=vectorstore, erased="session", id=session_id, removed=ErasureCounts(**_counts(res))
    )


def erase_vectorstore(
    r: redis.Redis,
    vectorstore: str,
    *,
    batch: int = ERASE_BATCH,
    budget_seconds: float = ERASE_BUDGET_SECONDS,
) -> ErasureReceipt:
    """Remove everything of a vectorstore, walking its indexes in bounded atomic steps.

    Each step removes up to `batch` raw memories and sessions; the step that finds the indexes
    empty drops the vector set and the remaining keys. A vectorstore too large for the time
    budget comes back with complete=false and is finished by calling again.
    """
    require_vectorstore(vectorstore)
    deadline = time.monotonic() + budget_seconds
    total = ErasureCounts()
    first = True
    while True:
        res = fcall(r, "erase_vectorstore", [], [vectorstore, batch, STATS_DAYS])
        if res == "not_found":
            if first:
                raise NotFound(f"no vectorstore {vectorstore!r}", code="vectorstore_not_found")
            complete = True  # finished meanwhile by a concurrent erasure
            break
        first = False
        for k, v in _counts(res).items():
            setattr(total, k, getattr(total, k) + int(v))
        complete = bool(json.loads(res)["complete"])
        if complete or time.monotonic() > deadline:
            break
    return ErasureReceipt(
        vectorstore_name=vectorstore, erased="vectorstore", id=vectorstore, removed=total, complete=complete
    )
