"""The queue protocol's calls: enqueue, claim, commit, fail, redrive, heartbeat and status.

Each is one call of the function library, so each is atomic and costs one round trip; all times
are Redis server time.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any

from memproc.dal.connection import Store
from memproc.dal.functions import LIBRARY_VERSION, fcall
from memproc.keys import PROCESSOR_STATUS, RAW_MEMORY_QUEUE, VectorstoreKeys
from memproc.settings import Settings


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(frozen=True)
class Submission:
    """One store_raw, ready for the queue: ids, the encoded transcript and its dedupe digest."""

    vectorstore: str
    raw_id: str
    session_id: str
    data: bytes
    encoding: str
    metadata_json: str
    digest: str
    length: int


@dataclass(frozen=True)
class Enqueued:
    """What `enqueue` answers: the outcome and what the time estimate needs."""

    outcome: str  # queued | duplicate | queue_full | vectorstore_full | store_evicting
    raw_id: str
    created_at: str
    pending_rank: int  # 1-based position among the vectorstore's pending items (0: not waiting)
    queue_size: int
    status: str
    active_vectorstores: int
    rate: str  # the processor's measured sessions/s ('' before the first measurement)
    idle: str  # seconds since the last heartbeat ('' before the first)
    interval: str  # the processor's schedule interval ('' before the first heartbeat)


def enqueue(store: Store, settings: Settings, s: Submission) -> Enqueued:
    """Dedupe, admission check, raw hash, queue entries, indexes and position: one round trip."""
    vk = VectorstoreKeys(s.vectorstore)
    outcome, raw_id, created, rank, queue_size, rate, status, active, idle, interval = fcall(
        store.r,
        "enqueue",
        [vk.raw(s.raw_id), vk.dedupe(s.digest)],
        [
            s.vectorstore,
            s.raw_id,
            s.session_id,
            s.data,
            s.encoding,
            s.metadata_json,
            settings.max_queue_size,
            settings.max_pending_per_vectorstore,
            s.digest,
            s.length,
        ],
    )
    return Enqueued(
        outcome, raw_id, created, int(rank), int(queue_size), status, int(active), rate, idle, interval
    )


@dataclass(frozen=True)
class Claim:
    """One claimed item. `token` fences the worker's later calls: every claim of the item gets a
    new one, never reused (not even after a redrive); `attempt` counts claims since the last redrive."""

    vectorstore: str
    raw_id: str
    token: str
    session_id: str
    attempt: int


@dataclass(frozen=True)
class ClaimBatch:
    items: list[Claim]
    reaped: int  # expired leases put back in the queue
    buried: int  # expired leases of a last attempt, dead-lettered
    lost: int = 0  # queue entries whose raw record was gone, dead-lettered as "record lost"


def claim(store: Store, settings: Settings, limit: int, reap_limit: int = 100) -> ClaimBatch:
    items, reaped, buried, lost = fcall(
        store.r,
        "claim",
        [],
        [limit, settings.lease_seconds, settings.max_attempts, reap_limit, settings.vectorstore_concurrency],
    )
    return ClaimBatch(
        [Claim(_s(vs), _s(rid), _s(tok), _s(sid), int(n)) for vs, rid, tok, sid, n in items],
        int(reaped),
        int(buried),
        int(lost),
    )


def renew(store: Store, settings: Settings, items: list[Claim]) -> set[str]:
    """Extend the leases of items this worker still holds; the raw ids it no longer holds."""
    if not items:
        return set()
    args: list[Any] = [settings.lease_seconds]
    for item in items:
        args += [item.vectorstore, item.raw_id, item.token]
    return {_s(rid) for rid in fcall(store.r, "renew", [], args)}


@dataclass(frozen=True)
class CommitResult:
    """ok; stale (fenced out); mismatch (embedding model or backend); moved (the vectorstore's
    memories changed since `seen_seq`: `seq` is the current one); conflict (a target changed)."""

    outcome: str
    created: int = 0
    merged: int = 0
    memory_ids: tuple[str, ...] = ()
    detail: str = ""
    updated: int = 0
    superseded: int = 0
    retracted: int = 0
    seq: int = 0


def commit_args(item: Claim, payload: dict[str, Any], vectors: list[bytes]) -> list[Any]:
    return [item.vectorstore, item.raw_id, item.token, json.dumps(payload, ensure_ascii=False), *vectors]


def commit(store: Store, item: Claim, payload: dict[str, Any], vectors: list[bytes]) -> CommitResult:
    """Write everything a processed item produced and ack it, only if `item.token` still owns it."""
    res = fcall(store.r, "commit", [], commit_args(item, payload, vectors))
    outcome = _s(res[0])
    if outcome == "ok":
        return CommitResult(
            "ok",
            int(res[1]),
            int(res[2]),
            tuple(_s(m) for m in res[3]),
            updated=int(res[4]),
            superseded=int(res[5]),
            retracted=int(res[6]),
        )
    if outcome == "moved":
        return CommitResult("moved", seq=int(res[1]))
    if outcome == "conflict":
        return CommitResult("conflict", detail=_s(res[1]))
    if outcome == "mismatch":
        return CommitResult(
            "mismatch",
            detail=f"vectorstore uses embedding model {_s(res[1])!r} with {_s(res[2])} dimensions",
        )
    return CommitResult(outcome)


def fail(
    store: Store,
    settings: Settings,
    item: Claim,
    error: str,
    *,
    retryable: bool,
    min_delay: float = 0.0,
) -> tuple[str, float]:
    """Back to the queue with exponential backoff and jitter, or into the dead set."""
    res = fcall(
        store.r,
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


def redrive(store: Store, vectorstore: str, raw_id: str) -> tuple[str, str]:
    """A dead item back to the queue with a fresh attempt budget: ('queued', pending count),
    ('not_dead', its status; '' when there is no such record) or ('lost', '') for a record lost
    before it was processed (nothing is left to process)."""
    outcome, detail = fcall(store.r, "redrive", [], [vectorstore, raw_id])
    return _s(outcome), _s(detail)


def heartbeat(
    store: Store,
    settings: Settings,
    version: str,
    *,
    rate: float | None = None,
    weight: float = 1.0,
    starting: bool = False,
) -> str:
    """Stamp background_processor:status (a measured rate is blended in with `weight`); returns
    the store's maxmemory-policy."""
    _, policy = fcall(
        store.r,
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
    return _s(policy)


@dataclass(frozen=True)
class QueueStatus:
    """The queue as processing_status shows it, read at one server time."""

    now: float
    queue_size: int
    processor: dict[str, str]  # background_processor:status
    processed_today: int
    last_processed_at: str
    pending: int
    in_flight: int
    dead: int
    oldest_pending: float | None
    all_in_flight: int
    all_dead: int
    eviction_policy: str  # the store's maxmemory-policy; anything but noeviction can lose work
    queue_head_due: float | None  # when the item first in RAW_MEMORY_QUEUE became due (None: none is)
    library_loaded: bool = True  # it answered: the library is there (the probe checks it for real)


def _due(score: Any) -> float | None:
    """A queue score as a due time; parked items (+inf) and an empty queue have none."""
    if score in (None, ""):
        return None
    value = float(score)
    return value if math.isfinite(value) else None


def status(store: Store, vectorstore: str) -> QueueStatus:
    (
        now,
        queue_size,
        flat,
        today,
        last,
        pending,
        inflight,
        dead,
        oldest,
        all_inflight,
        all_dead,
        policy,
        head,
    ) = fcall(store.r, "status", [], [vectorstore], readonly=True)
    return QueueStatus(
        now=float(now),
        queue_size=int(queue_size),
        processor=dict(zip(flat[::2], flat[1::2], strict=True)),
        processed_today=int(today),
        last_processed_at=last,
        pending=int(pending),
        in_flight=int(inflight),
        dead=int(dead),
        oldest_pending=float(oldest) if oldest else None,
        all_in_flight=int(all_inflight),
        all_dead=int(all_dead),
        eviction_policy=_s(policy),
        queue_head_due=_due(head),
    )


@dataclass(frozen=True)
class HealthProbe:
    """What GET /api/health reads, in one pipeline of plain commands: they answer even when the
    function library is missing, which is one of the things it checks."""

    now: float
    library_loaded: bool
    eviction_policy: str
    processor: dict[str, str]  # background_processor:status
    queue_size: int
    queue_head_due: float | None


def _library_names(listing: Any) -> set[str]:
    """Library names in a FUNCTION LIST reply (RESP2 flat pairs or RESP3 maps)."""
    names = set()
    for library in listing or []:
        fields = (
            library if isinstance(library, dict) else dict(zip(library[::2], library[1::2], strict=False))
        )
        names.add(_s(fields.get("library_name", "")))
    return names


def health_probe(store: Store) -> HealthProbe:
    library = f"memproc_{LIBRARY_VERSION}"
    pipe = store.r.pipeline(transaction=False)
    pipe.time()
    pipe.function_list(library=library)
    pipe.info("memory")
    pipe.hgetall(PROCESSOR_STATUS)
    pipe.zrange(RAW_MEMORY_QUEUE, 0, 0, withscores=True)
    pipe.zcard(RAW_MEMORY_QUEUE)
    (seconds, micros), listing, memory, processor, head, queue_size = pipe.execute()
    return HealthProbe(
        now=int(seconds) + int(micros) / 1e6,
        library_loaded=library in _library_names(listing),
        eviction_policy=str(memory.get("maxmemory_policy", "unknown")),
        processor=dict(processor),
        queue_size=int(queue_size),
        queue_head_due=_due(head[0][1]) if head else None,
    )
