"""Where work stands: the service's health (GET /api/health), the processor and queue
(processing_status, with the same health facts) and one submission (raw/{id})."""

from __future__ import annotations

from memproc.dal import queue, reads
from memproc.dal.connection import Store
from memproc.dal.functions import LIBRARY_VERSION
from memproc.errors import NotFound
from memproc.mappers import raw_view
from memproc.schemas.responses import (
    HealthChecks,
    HealthResponse,
    ProcessingStatus,
    RawMemoryResponse,
    RetentionPolicy,
    VectorstoreQueue,
)
from memproc.settings import Settings
from memproc.timeutil import iso
from memproc.validation import require_raw_id, require_vectorstore
from memproc.vectorstores import require_known

# The queue counts as falling behind when its head has been due this many processing intervals.
QUEUE_LAG_INTERVALS = 3


def checks(settings: Settings, facts: queue.QueueStatus | queue.HealthProbe) -> HealthChecks:
    """The health facts, from whichever read gathered them (the status function or the probe)."""
    beat = facts.processor.get("last_heartbeat")
    interval = int(facts.processor.get("interval_seconds") or settings.processing_interval_seconds)
    age = round(max(0.0, facts.now - float(beat)), 3) if beat else None
    return HealthChecks(
        library=f"memproc_{LIBRARY_VERSION}",
        library_loaded=facts.library_loaded,
        eviction_policy=facts.eviction_policy,
        # A scheduled processor beats at least once an interval; allow one missed beat.
        processor_running=age is not None and age <= 2 * interval + 5,
        last_heartbeat_age_seconds=age,
        processing_interval_seconds=interval,
        queue_size=facts.queue_size,
        processors_running=facts.processors,
        backlog_age_seconds=facts.backlog_age,
        max_backlog_age_seconds=QUEUE_LAG_INTERVALS * interval,
    )


def problems(c: HealthChecks) -> list[str]:
    """Why the service is not healthy: first what may lose accepted work, then what stops it."""
    reasons = []
    if c.eviction_policy != "noeviction":
        reasons.append(
            f"maxmemory-policy is {c.eviction_policy!r}: the store may evict queued sessions (store_raw "
            "refuses new ones); set it to noeviction"
        )
    if not c.library_loaded:
        reasons.append(
            f"the store has no function library {c.library} (the next call loads it; a store that lost "
            "it was flushed or restarted without its data)"
        )
    if c.last_heartbeat_age_seconds is None:
        reasons.append("the queue processor has never reported a heartbeat to this store")
    elif not c.processor_running:
        reasons.append(
            f"the queue processor's last heartbeat was {c.last_heartbeat_age_seconds:.0f} s ago; it runs "
            f"every {c.processing_interval_seconds} s"
        )
    if c.backlog_age_seconds > c.max_backlog_age_seconds:
        reasons.append(
            f"the oldest queued session has been waiting {c.backlog_age_seconds:.0f} s (more than "
            f"{c.max_backlog_age_seconds} s): processing is falling behind"
        )
    return reasons


def health(store: Store, settings: Settings) -> tuple[HealthResponse, dict[str, str]]:
    """GET /api/health in one round trip: the response and its headers (Retry-After when degraded:
    the processor's next run may change the verdict)."""
    c = checks(settings, queue.health_probe(store))
    reasons = problems(c)
    response = HealthResponse(
        success=not reasons, status="degraded" if reasons else "ok", reasons=reasons, checks=c
    )
    return response, ({"Retry-After": str(c.processing_interval_seconds)} if reasons else {})


def processing_status(store: Store, settings: Settings, vectorstore: str) -> ProcessingStatus:
    vk = require_vectorstore(vectorstore)
    s = queue.status(store, vectorstore)
    if not (s.pending or s.in_flight or s.dead):
        require_known(store, vk)
    c = checks(settings, s)
    rate = s.processor.get("rate_per_second")
    return ProcessingStatus(
        vectorstore_name=vectorstore,
        processor_running=c.processor_running,
        last_heartbeat=iso(s.processor.get("last_heartbeat")),
        queue_size=s.queue_size,
        in_flight=s.all_in_flight,
        dead_letters=s.all_dead,
        processed_today=s.processed_today,
        last_processed_at=iso(s.last_processed_at or s.processor.get("last_processed_at")),
        processing_interval_seconds=c.processing_interval_seconds,
        processing_rate_per_second=float(rate) if rate else None,
        processors_running=c.processors_running,
        backlog_age_seconds=c.backlog_age_seconds,
        retention_policy=RetentionPolicy(
            raw_memory_days=settings.raw_retention_days, session_days=settings.session_retention_days
        ),
        eviction_policy=c.eviction_policy,
        last_heartbeat_age_seconds=c.last_heartbeat_age_seconds,
        degraded=problems(c),
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
