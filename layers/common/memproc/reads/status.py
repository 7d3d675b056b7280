"""Where work stands: the processor and queue (processing_status) and one submission (raw/{id})."""

from __future__ import annotations

from memproc.dal import queue, reads
from memproc.dal.connection import Store
from memproc.errors import NotFound
from memproc.mappers import raw_view
from memproc.schemas.responses import ProcessingStatus, RawMemoryResponse, RetentionPolicy, VectorstoreQueue
from memproc.settings import Settings
from memproc.timeutil import iso
from memproc.validation import require_raw_id, require_vectorstore
from memproc.vectorstores import require_known


def degraded(eviction_policy: str) -> list[str]:
    """Reasons the store may lose accepted work."""
    if eviction_policy == "noeviction":
        return []
    return [
        f"maxmemory-policy is {eviction_policy!r}: the store may evict queued sessions (store_raw refuses "
        "new ones); set it to noeviction"
    ]


def processing_status(store: Store, settings: Settings, vectorstore: str) -> ProcessingStatus:
    vk = require_vectorstore(vectorstore)
    s = queue.status(store, vectorstore)
    if not (s.pending or s.in_flight or s.dead):
        require_known(store, vk)
    beat = s.processor.get("last_heartbeat")
    interval = int(s.processor.get("interval_seconds") or settings.processing_interval_seconds)
    # A scheduled processor beats at least once an interval; allow one missed beat.
    running = beat is not None and s.now - float(beat) <= 2 * interval + 5
    rate = s.processor.get("rate_per_second")
    return ProcessingStatus(
        vectorstore_name=vectorstore,
        processor_running=running,
        last_heartbeat=iso(beat),
        queue_size=s.queue_size,
        in_flight=s.all_in_flight,
        dead_letters=s.all_dead,
        processed_today=s.processed_today,
        last_processed_at=iso(s.last_processed_at or s.processor.get("last_processed_at")),
        processing_interval_seconds=interval,
        processing_rate_per_second=float(rate) if rate else None,
        processors_running=s.processors,
        backlog_age_seconds=round(s.backlog_age, 3),
        retention_policy=RetentionPolicy(
            raw_memory_days=settings.raw_retention_days, session_days=settings.session_retention_days
        ),
        eviction_policy=s.eviction_policy,
        degraded=degraded(s.eviction_policy),
        vectorstore=VectorstoreQueue(
            pending=s.pending,
            in_flight=s.in_flight,
            dead=s.dead,
            oldest_pending_age_seconds=(
                round(max(0.0, s.now - s.oldest_pending), 3) if s.oldest_pending is not None else None
            ),
        ),
    )


def raw_status(
    store: Store, vectorstore: str, raw_id: str, *, include_transcript: bool = False
) -> RawMemoryResponse:
    """One submission's state in one round trip; its transcript (decoded from zlib when stored
    compressed) only when asked, and only while it is retained."""
    vk = require_vectorstore(vectorstore)
    found = reads.records(store, vk, raw_ids=[require_raw_id(raw_id)], transcripts=include_transcript)
    if not found.raws:
        require_known(store, vk)
        raise NotFound(
            f"no raw memory {raw_id!r} in vectorstore {vectorstore!r}", code="raw_memory_not_found"
        )
    return RawMemoryResponse(
        vectorstore_name=vectorstore,
        **raw_view(found.raws[0]).model_dump(),
        session_data=found.transcripts.get(raw_id),
    )
