"""The queue protocol from Python: enqueue, claim, commit, fail, redrive, heartbeat, status.

Every operation is one call of the Lua library (memproc.lua), so each is atomic and costs one
round trip; all times are Redis server time.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from memproc import keys
from memproc.connection import fcall, fcall_ro
from memproc.errors import InvalidInput, PayloadTooLarge, Unavailable
from memproc.models import (
    ProcessingStatus,
    RetentionPolicy,
    StoreRawRequest,
    StoreRawResponse,
    VectorstoreQueue,
)
from memproc.settings import Settings

ENCODING_ZLIB = "zlib"
ENCODING_UTF8 = "utf-8"


def iso(epoch: float | str | None) -> str | None:
    """Epoch seconds (as stored in Redis) to ISO 8601 UTC."""
    if epoch in (None, ""):
        return None
    return datetime.fromtimestamp(float(epoch), UTC).isoformat().replace("+00:00", "Z")


def encode_transcript(text: str, settings: Settings) -> tuple[bytes, str]:
    """Store long transcripts zlib-compressed when that saves space; reads are transparent."""
    data = text.encode()
    if len(data) >= settings.compress_min_bytes:
        packed = zlib.compress(data, 6)
        if len(packed) < len(data):
            return packed, ENCODING_ZLIB
    return data, ENCODING_UTF8


def decode_transcript(data: bytes, encoding: str) -> str:
    return (zlib.decompress(data) if encoding == ENCODING_ZLIB else data).decode()


def require_vectorstore(name: str) -> keys.VectorstoreKeys:
    problem = keys.vectorstore_problem(name)
    if problem:
        raise InvalidInput(problem, code="invalid_vectorstore_name")
    return keys.VectorstoreKeys(name)


def require_session_id(session_id: str) -> str:
    if not keys.SESSION_ID_RE.fullmatch(session_id):
        raise InvalidInput("session_id must match ^[A-Za-z0-9._:@+=-]{1,256}$", code="invalid_session_id")
    return session_id


def require_raw_id(raw_id: str) -> str:
    if not keys.RAW_ID_RE.fullmatch(raw_id):
        raise InvalidInput("raw_memory_id must be 32 lowercase hex characters", code="invalid_raw_memory_id")
    return raw_id


def estimated_seconds(position: int, rate: str, idle: str, interval: str, settings: Settings) -> float:
    """When the item should be processed: the wait for the next scheduled run (none while the
    processor is draining, half an interval on average otherwise) plus the position over the
    processor's measured rate (sessions/s; the configured default before the first measurement)."""
    per_second = float(rate) if rate else settings.default_rate_per_second
    period = float(interval) if interval else float(settings.processing_interval_seconds)
    draining = idle != "" and float(idle) < 2.0
    wait = 0.0 if draining or position == 0 else period / 2
    return round(wait + position / max(per_second, 1e-6), 2)


def submit(
    r: redis.Redis, settings: Settings, vectorstore: str, request: StoreRawRequest
) -> StoreRawResponse:
    """store_raw: validate, then one round trip (dedupe, admission, store, enqueue, position)."""
    vk = require_vectorstore(vectorstore)
    session_id = require_session_id(request.session_id) if request.session_id else uuid.uuid4().hex
    metadata = json.dumps(request.metadata or {}, separators=(",", ":"), ensure_ascii=False)
    if len(metadata.encode()) > settings.max_metadata_bytes:
        raise PayloadTooLarge(
            f"metadata is larger than {settings.max_metadata_bytes} bytes", code="metadata_too_large"
        )
    digest = hashlib.sha256(f"{session_id}\0{request.session_data}".encode()).hexdigest()
    data, encoding = encode_transcript(request.session_data, settings)
    raw_id = uuid.uuid4().hex
    outcome, raw_id, created, pending_rank, queue_size, rate, status, active, idle, interval = fcall(
        r,
        "enqueue",
        [vk.raw(raw_id), vk.dedupe(digest)],
        [
            vectorstore,
            raw_id,
            session_id,
            data,
            encoding,
            metadata,
            settings.max_queue_size,
            settings.max_pending_per_vectorstore,
            digest,
            len(request.session_data),
        ],
    )
    if outcome in ("queue_full", "vectorstore_full"):
        # Suggest coming back when about 1% of the queue has drained.
        retry_after = max(
            1, int(estimated_seconds(max(1, int(queue_size) // 100), rate, idle, interval, settings))
        )
        which = "the processing queue" if outcome == "queue_full" else f"vectorstore {vectorstore!r}'s queue"
        raise Unavailable(
            f"{which} is full ({queue_size} items waiting); retry later",
            code=outcome,
            headers={"Retry-After": str(retry_after)},
        )
    # Round-robin: an item at rank k in its vectorstore waits for at most k items of each other
    # active vectorstore.
    position = min(int(queue_size), int(pending_rank) * max(int(active), 1)) if int(pending_rank) else 0
    return StoreRawResponse(
        raw_memory_id=raw_id,
        session_id=session_id,
        vectorstore_name=vectorstore,
        status=status,
        duplicate=outcome == "duplicate",
        queued_at=iso(created) or "",
        queue_position=position,
        queue_size=int(queue_size),
        estimated_processing_time=estimated_seconds(position, rate, idle, interval, settings),
    )


@dataclass(frozen=True)
class Claim:
    vectorstore: str
    raw_id: str
    token: str
    session_id: str

    @property
    def attempt(self) -> int:
        return int(self.token)


@dataclass(frozen=True)
class ClaimBatch:
    items: list[Claim]
    reaped: int
    buried: int


def claim(r: redis.Redis, settings: Settings, limit: int, reap_limit: int = 100) -> ClaimBatch:
    items, reaped, buried = fcall(
        r, "claim", [], [limit, settings.lease_seconds, settings.max_attempts, reap_limit]
    )
    return ClaimBatch(
        [Claim(_s(vs), _s(rid), _s(tok), _s(sid)) for vs, rid, tok, sid in items], int(reaped), int(buried)
    )


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class CommitResult:
    outcome: str  # ok | stale | mismatch
    created: int = 0
    merged: int = 0
    memory_ids: tuple[str, ...] = ()
    detail: str = ""


def commit(r: redis.Redis, item: Claim, payload: dict[str, Any], vectors: list[bytes]) -> CommitResult:
    res = fcall(
        r,
        "commit",
        [],
        [item.vectorstore, item.raw_id, item.token, json.dumps(payload, ensure_ascii=False), *vectors],
    )
    outcome = _s(res[0])
    if outcome == "ok":
        return CommitResult("ok", int(res[1]), int(res[2]), tuple(_s(m) for m in res[3]))
    if outcome == "mismatch":
        return CommitResult(
            "mismatch",
            detail=f"vectorstore uses embedding model {_s(res[1])!r} with {_s(res[2])} dimensions",
        )
    return CommitResult(outcome)


def fail(
    r: redis.Redis,
    settings: Settings,
    item: Claim,
    error: str,
    *,
    retryable: bool,
    min_delay: float = 0.0,
) -> tuple[str, float]:
    """Back to the queue with exponential backoff and jitter, or into the dead set."""
    res = fcall(
        r,
        "fail",
        [],
        [
            item.vectorstore,
            item.raw_id,
            item.token,
            error[:2000],
            1 if retryable else 0,
            settings.max_attempts,
            settings.retry_base_seconds,
            settings.retry_max_seconds,
            random.random(),
            min_delay,
        ],
    )
    return _s(res[0]), float(res[1]) if len(res) > 1 else 0.0


def redrive(r: redis.Redis, vectorstore: str, raw_id: str) -> tuple[str, str]:
    outcome, detail = fcall(r, "redrive", [], [vectorstore, raw_id])
    return _s(outcome), _s(detail)


def heartbeat(
    r: redis.Redis,
    settings: Settings,
    version: str,
    *,
    rate: float | None = None,
    weight: float = 1.0,
    starting: bool = False,
) -> None:
    """Stamp background_processor:status; a measured rate is blended in with `weight`."""
    fcall(
        r,
        "heartbeat",
        [],
        [
            settings.processing_interval_seconds,
            version,
            f"{rate:.4f}" if rate is not None else "",
            f"{weight:.4f}",
            "1" if starting else "",
        ],
    )


def processing_status(r: redis.Redis, settings: Settings, vectorstore: str) -> ProcessingStatus:
    require_vectorstore(vectorstore)
    (
        now,
        queue_size,
        status_flat,
        today,
        last_processed,
        pending,
        inflight,
        dead,
        oldest,
        all_inflight,
        all_dead,
    ) = fcall_ro(r, "status", [], [vectorstore])
    status = dict(zip(status_flat[::2], status_flat[1::2], strict=True))
    now_f = float(now)
    beat = status.get("last_heartbeat")
    interval = int(status.get("interval_seconds") or settings.processing_interval_seconds)
    # A scheduled processor beats at least once an interval; allow one missed beat.
    running = beat is not None and now_f - float(beat) <= 2 * interval + 5
    rate = status.get("rate_per_second")
    return ProcessingStatus(
        vectorstore_name=vectorstore,
        processor_running=running,
        last_heartbeat=iso(beat),
        queue_size=int(queue_size),
        in_flight=int(all_inflight),
        dead_letters=int(all_dead),
        processed_today=int(today),
        last_processed_at=iso(last_processed or status.get("last_processed_at")),
        processing_interval_seconds=interval,
        processing_rate_per_second=float(rate) if rate else None,
        retention_policy=RetentionPolicy(
            raw_memory_days=settings.raw_retention_days, session_days=settings.session_retention_days
        ),
        vectorstore=VectorstoreQueue(
            pending=int(pending),
            in_flight=int(inflight),
            dead=int(dead),
            oldest_pending_age_seconds=round(max(0.0, now_f - float(oldest)), 3) if oldest else None,
        ),
    )
