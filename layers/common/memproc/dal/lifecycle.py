"""Retention and erasure calls: each one atomic library call, bounded in the work it does.

Cleanup only ever deletes processed raw memories and index entries whose record is gone; an
erasure that races a processor fences it out (its commit finds the raw hash gone and writes
nothing). No SCAN anywhere: the scheduled run walks `memproc:vectorstores`.
"""

from __future__ import annotations

import json
from typing import Any

from memproc.dal.connection import Store
from memproc.dal.functions import fcall
from memproc.keys import CLEANUP_SCHEDULE, VECTORSTORES


def cleanup(
    store: Store, vectorstore: str, retention_seconds: int, limit: int, dry_run: bool
) -> dict[str, Any]:
    """One bounded cleanup step (see `cleanup` in cleanup.lua); the receipt as the library gives it."""
    result: dict[str, Any] = json.loads(
        fcall(
            store.r,
            "cleanup",
            [],
            [vectorstore, retention_seconds, limit, 1 if dry_run else 0, store.index.name],
        )
    )
    return result


def erase_memory(
    store: Store, vectorstore: str, memory_id: str, *, purge_sources: bool = False
) -> tuple[int, int, int] | None:
    """(sessions updated, raw records updated, transcripts purged), or None when there is no such memory."""
    res = fcall(
        store.r, "erase_memory", [], [vectorstore, memory_id, store.index.name, 1 if purge_sources else 0]
    )
    return None if res[0] == "not_found" else (int(res[1]), int(res[2]), int(res[3]))


def erase_session(store: Store, vectorstore: str, session_id: str) -> dict[str, Any] | None:
    """What was removed, or None when there is no such session."""
    res = fcall(store.r, "erase_session", [], [vectorstore, session_id, store.index.name])
    return None if res == "not_found" else dict(json.loads(res))


def erase_vectorstore_step(
    store: Store, vectorstore: str, batch: int, stats_days: int
) -> dict[str, Any] | None:
    """One bounded step of erasing a vectorstore (with `complete`), or None when nothing of it exists."""
    res = fcall(store.r, "erase_vectorstore", [], [vectorstore, batch, stats_days, store.index.name])
    return None if res == "not_found" else dict(json.loads(res))


def vectorstores_after(store: Store, cursor: str | None, count: int) -> list[tuple[str, float]]:
    """The next `count` vectorstores by score (the time each last received a session)."""
    rows: list[tuple[Any, Any]] = store.r.zrange(  # type: ignore[assignment]
        VECTORSTORES,
        f"({cursor}" if cursor else "-inf",
        "+inf",
        byscore=True,
        offset=0,
        num=count,
        withscores=True,
    )
    return [(str(name), float(score)) for name, score in rows]


def schedule_cursor(store: Store) -> str | None:
    saved = store.r.hget(CLEANUP_SCHEDULE, "vectorstore_score")
    return str(saved) if saved else None


def save_schedule_cursor(store: Store, cursor: str | None) -> None:
    if cursor is None:
        store.r.hdel(CLEANUP_SCHEDULE, "vectorstore_score")
    else:
        store.r.hset(CLEANUP_SCHEDULE, "vectorstore_score", cursor)
