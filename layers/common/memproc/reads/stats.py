"""GET stats: counts, storage and the last 7 days' processing figures from one read-only call.

Every figure is O(1) or O(days): cardinalities of the indexes, counters, MEMORY USAGE of a fixed
set of keys, and estimates for raw memories and summaries from a few newest samples.
"""

from __future__ import annotations

from typing import Any

from memproc.dal import reads
from memproc.dal.connection import Store
from memproc.schemas.responses import (
    DailyStats,
    EmbeddingConfig,
    RawStatusCounts,
    StatsCounts,
    StatsResponse,
    StorageStats,
)
from memproc.timeutil import iso
from memproc.validation import require_vectorstore
from memproc.vectorstores import require_known

STATS_DAYS = 7
STATS_SAMPLES = 5


def _list(value: Any) -> list[Any]:
    """A list as Lua's cjson writes it (an empty one as {})."""
    return value if isinstance(value, list) else []


def _pairs(flat: Any) -> dict[str, str]:
    """HGETALL as Lua returns it (a flat list)."""
    items = _list(flat)
    return dict(zip(items[::2], items[1::2], strict=False))


def _day(date: str, h: dict[str, str]) -> DailyStats:
    processed, dead = int(h.get("processed_count", 0)), int(h.get("dead_count", 0))
    ms = int(h.get("processing_ms", 0))
    return DailyStats(
        date=date,
        processed=processed,
        errors=int(h.get("error_count", 0)),
        dead=dead,
        lost=int(h.get("lost_count", 0)),
        memories_created=int(h.get("memories_created", 0)),
        memories_merged=int(h.get("memories_merged", 0)),
        tokens_in=int(h.get("tokens_in", 0)),
        tokens_out=int(h.get("tokens_out", 0)),
        mean_processing_ms=round(ms / processed, 1) if processed else None,
        extraction_success_rate=round(processed / (processed + dead), 4) if processed + dead else None,
        last_processed_at=iso(h.get("last_processed_at")),
    )


def _estimate(sample: Any, count: int) -> int:
    total, n = [*_list(sample), 0, 0][:2]
    return int(total / n * count) if n else 0


def stats(store: Store, vectorstore: str) -> StatsResponse:
    vk = require_vectorstore(vectorstore)
    s = reads.stats(store, vectorstore, STATS_DAYS, STATS_SAMPLES)
    pending, in_flight, dead, indexed = (
        int(s["pending"]),
        int(s["in_flight"]),
        int(s["dead"]),
        int(s["raw_index"]),
    )
    counters, config = _pairs(s["counters"]), _pairs(s["config"])
    if not counters and not config and not indexed:  # store_raw counts every submission it takes
        require_known(store, vk)
    days = [(d, _pairs(h)) for d, h in _list(s["daily"])]
    daily = [_day(d, h) for d, h in days]
    totals: dict[str, str] = {}
    for _, h in days:
        for name, value in h.items():
            if name != "last_processed_at":
                totals[name] = str(int(totals.get(name, 0)) + int(value))
    last = max((d.last_processed_at for d in daily if d.last_processed_at), default=None)
    week = _day(f"{daily[0].date}..{daily[-1].date}", totals).model_copy(update={"last_processed_at": last})
    sessions = int(s["sessions"])
    storage = {
        "vector_set_bytes": int(s["vector_set_bytes"]),
        "index_bytes": sum(int(v) for v in (s["index_bytes"] or {}).values()),
        "raw_memories_bytes": _estimate(s["raw_sample"], indexed),
        "session_summaries_bytes": _estimate(s["summary_sample"], sessions),
    }
    dims = config.get("dimensions")
    return StatsResponse(
        vectorstore_name=vk.name,
        generated_at=iso(s["now"]) or "",
        counts=StatsCounts(
            memories=int(s["memories"]),
            sessions=sessions,
            raw_memories=RawStatusCounts(
                queued=pending,
                processing=in_flight,
                error=dead,
                processed=max(0, indexed - pending - in_flight - dead),
                indexed=indexed,
            ),
            received_total=int(counters.get("received", 0)),
            processed_total=int(counters.get("processed", 0)),
        ),
        storage=StorageStats(**storage, total_bytes=sum(storage.values())),
        daily=daily,
        last_7_days=week,
        embedding=EmbeddingConfig(model=config.get("embedding_model"), dimensions=int(dims) if dims else None)
        if config
        else None,
    )
