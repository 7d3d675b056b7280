"""Retention cleanup and erasure: the data lifecycle of the memory hierarchy.

Every change is one call of the function library, so each step is atomic with respect to the queue
protocol: cleanup only ever deletes processed raw memories and index entries whose record is gone
(queued, in-flight and dead items are never touched, only put back where they belong), and an
erasure that races a processor fences it out (its `commit` finds the raw hash gone and writes
nothing). Work per call is bounded; callers loop while time remains. No SCAN anywhere: the
scheduled run walks `memproc:vectorstores`, each vectorstore walks its own indexes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from memproc import vectorstores
from memproc.dal import lifecycle
from memproc.dal.connection import Store
from memproc.errors import NotFound
from memproc.keys import VectorstoreKeys
from memproc.schemas.requests import CleanupQuery
from memproc.schemas.retention import (
    CleanupReceipt,
    ErasureCounts,
    ErasureReceipt,
    ReconcileCounts,
    ScheduledCleanupReport,
    TrimCounts,
)
from memproc.settings import Settings
from memproc.timeutil import iso
from memproc.validation import require_memory_id, require_session_id, require_vectorstore, vectorstore_problem
from memproc.vectorstores import require_known

SCHEDULE_BATCH = 100
# Stop starting new calls when less than this remains of the invocation.
TIME_MARGIN_SECONDS = 30.0
# Per-vectorstore daily stats expire after 90 days (memproc.lua STATS_TTL); erasure deletes them all.
STATS_DAYS = 90
ERASE_BATCH = 500
# An API-triggered erasure must answer within API Gateway's 29 s; a partial one says so.
ERASE_BUDGET_SECONDS = 20.0


def cleanup(store: Store, settings: Settings, vectorstore: str, q: CleanupQuery) -> CleanupReceipt:
    """One bounded cleanup step for one vectorstore (one Lua call; see `cleanup` in memproc.lua).

    Deletes processed raw memories created before now - retention_days, trims index entries whose
    record is gone and reconciles records the queue lost. `complete` is false while older entries
    remain beyond this call's `limit`.
    """
    receipt = _cleanup(store, settings, vectorstore, q)[0]
    if not any(receipt.examined.values()) and not receipt.live_kept:  # nothing there: does it exist?
        require_known(store, VectorstoreKeys(vectorstore))
    return receipt


def _cleanup(
    store: Store, settings: Settings, vectorstore: str, q: CleanupQuery
) -> tuple[CleanupReceipt, set[str]]:
    """The receipt, and which of the Lua passes reached the end of their index in this call."""
    require_vectorstore(vectorstore)
    days = q.retention_days or settings.raw_retention_days
    res = lifecycle.cleanup(store, vectorstore, days * 86_400, q.limit, q.dry_run)
    deleted = [str(x) for x in res["deleted"]] if isinstance(res["deleted"], list) else []
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
    store: Store,
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
        receipt, done = _cleanup(store, settings, vectorstore, q)
        report.calls += 1
        report.deleted_raw_memories += receipt.deleted_count
        report.trimmed_index_entries += receipt.trimmed_index_entries.total
        report.reconciled += receipt.reconciled.total
        pending -= done
        if not pending or q.dry_run:  # a dry run writes no cursor: one look is all it can take
            return True
    return False


def run_scheduled(
    store: Store,
    settings: Settings,
    *,
    remaining_seconds: Callable[[], float] | None = None,
    dry_run: bool = False,
    limit: int = 1000,
) -> ScheduledCleanupReport:
    """The retention schedule: every vectorstore in `memproc:vectorstores`, in batches, resuming
    from the position the last (time-limited) run reached. A vectorstore that receives a session
    moves behind the cursor and is visited again: every vectorstore is visited at least once per
    cycle."""
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
    cursor = None if dry_run else lifecycle.schedule_cursor(store)
    out_of_time = False
    while not out_of_time and time_left() > TIME_MARGIN_SECONDS:
        batch = lifecycle.vectorstores_after(store, cursor, SCHEDULE_BATCH)
        for name, score in batch:
            # A name memproc would refuse was never written by it: not ours to touch.
            if not vectorstore_problem(name):
                if not _cleanup_vectorstore(store, settings, name, q, time_left, report):
                    out_of_time = True  # the next run resumes with this vectorstore
                    break
                report.vectorstores += 1
            cursor = repr(score)
            if not dry_run:
                lifecycle.save_schedule_cursor(store, cursor)
        if not out_of_time and len(batch) < SCHEDULE_BATCH:
            report.cycle_complete = True
            if not dry_run:
                lifecycle.save_schedule_cursor(store, None)
            break
    report.seconds = round(time.monotonic() - started, 3)
    return report


# -- erasure -------------------------------------------------------------------------------------


def _counts(receipt: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in receipt.items() if k in ErasureCounts.model_fields}


def erase_memory(
    store: Store, vectorstore: str, memory_id: str, *, purge_sources: bool = False
) -> ErasureReceipt:
    """Remove one memory and every reference to it (session sets, raw records), clear the prose of
    the summaries that may state it, and with `purge_sources` delete the transcripts it came from."""
    vk = require_vectorstore(vectorstore)
    require_memory_id(memory_id)
    res = lifecycle.erase_memory(store, vectorstore, memory_id, purge_sources=purge_sources)
    if res is None:
        require_known(store, vk)
        raise NotFound(f"no memory {memory_id!r} in vectorstore {vectorstore!r}", code="memory_not_found")
    return ErasureReceipt(
        vectorstore_name=vectorstore,
        erased="memory",
        id=memory_id,
        removed=ErasureCounts(memories=1, references_updated=res[0] + res[1], transcripts_purged=res[2]),
    )


def erase_session(store: Store, vectorstore: str, session_id: str) -> ErasureReceipt:
    """Remove a session: its raw memories wherever they are in the queue, summary, memory set,
    index entries, dedupe keys and the memories only it produced; shared memories lose it as a
    source. One atomic call."""
    vk = require_vectorstore(vectorstore)
    require_session_id(session_id)
    res = lifecycle.erase_session(store, vectorstore, session_id)
    if res is None:
        require_known(store, vk)
        raise NotFound(f"no session {session_id!r} in vectorstore {vectorstore!r}", code="session_not_found")
    return ErasureReceipt(
        vectorstore_name=vectorstore, erased="session", id=session_id, removed=ErasureCounts(**_counts(res))
    )


def erase_vectorstore(
    store: Store,
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
        res = lifecycle.erase_vectorstore_step(store, vectorstore, batch, STATS_DAYS)
        if res is None:
            if first:
                raise vectorstores.unknown(vectorstore)
            complete = True  # finished meanwhile by a concurrent erasure
            break
        first = False
        for k, v in _counts(res).items():
            setattr(total, k, getattr(total, k) + int(v))
        complete = bool(res["complete"])
        if complete or time.monotonic() > deadline:
            break
    return ErasureReceipt(
        vectorstore_name=vectorstore, erased="vectorstore", id=vectorstore, removed=total, complete=complete
    )
