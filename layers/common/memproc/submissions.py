"""Work into the queue: store_raw's submissions and the redrive of a dead letter.

A submission costs one Redis round trip (the library's `enqueue` dedupes, checks admission, stores
and queues it). Re-posting the same transcript for the same session is answered with the first
submission's id, so a client may retry a store_raw whose answer it never got.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid

from memproc.dal import queue
from memproc.dal.connection import Store
from memproc.errors import Conflict, NotFound, PayloadTooLarge, Unavailable
from memproc.schemas.requests import StoreRawRequest
from memproc.schemas.submissions import RetryResponse, StoreRawResponse
from memproc.settings import Settings
from memproc.timeutil import iso
from memproc.transcript import encode_transcript
from memproc.validation import require_raw_id, require_session_id, require_vectorstore
from memproc.vectorstores import require_known


def estimated_seconds(position: int, rate: str, idle: str, interval: str, settings: Settings) -> float:
    """When the item should be processed: the wait for the next scheduled run (none while the
    processor is draining, half an interval on average otherwise) plus the position over the
    processor's measured rate (sessions/s; the configured default before the first measurement)."""
    per_second = float(rate) if rate else settings.default_rate_per_second
    period = float(interval) if interval else float(settings.processing_interval_seconds)
    draining = idle != "" and float(idle) < 2.0
    wait = 0.0 if draining or position == 0 else period / 2
    return round(wait + position / max(per_second, 1e-6), 2)


def describe_wait(seconds: float) -> str:
    """An estimate as people say it: "under a second", "about 4 seconds", then ranges ("2-5
    minutes", "1-2 hours", "1-2 days") from the estimate to twice it, because past a minute the
    schedule and the measured rate make it a rough figure."""
    n = math.floor(seconds + 0.5)  # half up
    if n < 1:
        return "under a second"
    if n < 60:
        return f"about {n} second{'s' if n != 1 else ''}"
    for unit, size in (("minutes", 60), ("hours", 3600), ("days", 86_400)):
        low = max(1, math.floor(seconds / size))
        high = max(low + 1, math.ceil(2 * seconds / size))
        if unit == "days" or high <= {"minutes": 60, "hours": 24}[unit]:
            return f"{low}-{high} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def submit(store: Store, settings: Settings, vectorstore: str, request: StoreRawRequest) -> StoreRawResponse:
    """store_raw: validate, then one round trip (dedupe, admission, store, enqueue, position)."""
    require_vectorstore(vectorstore)
    # Absent: generated. Given (even empty): checked, so a client's bug is not silently renamed.
    given = request.session_id
    session_id = uuid.uuid4().hex if given is None else require_session_id(given)
    metadata = json.dumps(request.metadata or {}, separators=(",", ":"), ensure_ascii=False)
    if len(metadata.encode()) > settings.max_metadata_bytes:
        raise PayloadTooLarge(
            f"metadata is larger than {settings.max_metadata_bytes} bytes", code="metadata_too_large"
        )
    data, encoding = encode_transcript(request.session_data, settings)
    done = queue.enqueue(
        store,
        settings,
        queue.Submission(
            vectorstore=vectorstore,
            raw_id=uuid.uuid4().hex,
            session_id=session_id,
            data=data,
            encoding=encoding,
            metadata_json=metadata,
            digest=hashlib.sha256(f"{session_id}\0{request.session_data}".encode()).hexdigest(),
            length=len(request.session_data),
        ),
    )
    if done.outcome == "store_evicting":
        # An evicting store can delete an accepted session before it is processed: refuse new work
        # until the operator sets noeviction (memproc rechecks the policy every minute).
        raise Unavailable(
            f"the memory store's maxmemory-policy is {done.status!r}, which can evict queued sessions; "
            "set it to noeviction",
            code="store_evicting",
            headers={"Retry-After": "60"},
        )
    if done.outcome == "embedding_mismatch":
        model, dimensions = settings.embeddings
        raise Conflict(
            f"vectorstore {vectorstore!r} holds memories embedded with {done.status!r} ({done.dimensions} "
            f"dimensions), but this deployment embeds with {model!r} ({dimensions} dimensions), so its "
            f"sessions could not be processed. Re-embed its memories with `memproc reembed {vectorstore}` "
            "(or set EMBEDDING_MODEL / EMBEDDING_DIMENSIONS, and the OpenAI key, back to match)",
            code="embedding_mismatch",
            details={
                "vectorstore": {"embedding_model": done.status, "dimensions": int(done.dimensions or 0)},
                "deployment": {"embedding_model": model, "dimensions": dimensions},
            },
        )
    if done.outcome in ("queue_full", "vectorstore_full"):
        # Suggest coming back when about 1% of the queue has drained.
        backlog = max(1, done.queue_size // 100)
        retry_after = max(1, int(estimated_seconds(backlog, done.rate, done.idle, done.interval, settings)))
        which = (
            "the processing queue" if done.outcome == "queue_full" else f"vectorstore {vectorstore!r}'s queue"
        )
        raise Unavailable(
            f"{which} is full ({done.queue_size} items waiting); retry later",
            code=done.outcome,
            headers={"Retry-After": str(retry_after)},
        )
    # Round-robin: an item at rank k in its vectorstore waits for at most k items of each other
    # active vectorstore.
    position = (
        min(done.queue_size, done.pending_rank * max(done.active_vectorstores, 1)) if done.pending_rank else 0
    )
    seconds = estimated_seconds(position, done.rate, done.idle, done.interval, settings)
    return StoreRawResponse(
        raw_memory_id=done.raw_id,
        session_id=session_id,
        vectorstore_name=vectorstore,
        status=done.status,
        duplicate=done.outcome == "duplicate",
        queued_at=iso(done.created_at) or "",
        queue_position=position,
        queue_size=done.queue_size,
        estimated_processing_time=describe_wait(seconds),
        estimated_processing_seconds=seconds,
    )


def retry_dead_letter(store: Store, vectorstore: str, raw_id: str) -> RetryResponse:
    """Redrive one dead-lettered submission with a fresh attempt budget."""
    vk = require_vectorstore(vectorstore)
    require_raw_id(raw_id)
    outcome, detail = queue.redrive(store, vectorstore, raw_id)
    if outcome == "queued":
        return RetryResponse(vectorstore_name=vectorstore, raw_memory_id=raw_id, pending=int(detail))
    if outcome == "lost":
        raise Conflict(
            f"raw memory {raw_id!r} was lost before it was processed (evicted, or deleted outside memproc); "
            "there is nothing left to retry: submit the session again",
            code="record_lost",
        )
    if not detail:
        require_known(store, vk)
        raise NotFound(
            f"no raw memory {raw_id!r} in vectorstore {vectorstore!r}", code="raw_memory_not_found"
        )
    raise Conflict(
        f"raw memory {raw_id!r} is {detail}, not dead-lettered; only dead letters can be retried",
        code="not_dead",
        details={"status": detail},
    )
