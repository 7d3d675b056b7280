"""The queue protocol's calls: enqueue, claim, commit, fail, redrive, heartbeat and status.

Each is one call of the function library, so each is atomic and costs one round trip; all times
are Redis server time.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from memproc.dal.connection import Store
from memproc.dal.functions import LIBRARY_VERSION, fcall
from memproc.dal.reads import ProcessingInput
from memproc.dal.replies import as_text
from memproc.keys import PROCESSOR_STATUS, PROCESSORS, RAW_MEMORY_QUEUE, VectorstoreKeys
from memproc.settings import Settings


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

    outcome: str  # queued | duplicate | queue_full | vectorstore_full | store_evicting | embedding_mismatch
    raw_id: str
    created_at: str
    pending_rank: int  # 1-based position among the vectorstore's pending items (0: not waiting)
    queue_size: int
    status: str
    active_vectorstores: int
    rate: str  # the processor's measured sessions/s ('' before the first measurement)
    idle: str  # seconds since the last heartbeat ('' before the first)
    interval: str  # the processor's schedule interval ('' before the first heartbeat)
    dimensions: str = ""  # embedding_mismatch: the vectorstore's dimension (its model is in `status`)


def enqueue(store: Store, settings: Settings, s: Submission) -> Enqueued:
    """Dedupe, admission check, raw hash, queue entries, indexes and position: one round trip."""
    vk = VectorstoreKeys(s.vectorstore)
    model, dimensions = settings.embeddings
    outcome, raw_id, created, rank, queue_size, rate, status, active, idle, interval, *more = fcall(
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
            model,
            dimensions,
        ],
    )
    return Enqueued(
        outcome,
        raw_id,
        created,
        int(rank),
        int(queue_size),
        status,
        int(active),
        rate,
        idle,
        interval,
        as_text(more[0]) if more else "",
    )


@dataclass(frozen=True)
class Claim:
    """One claimed item. `token` fences the worker's later calls: every claim of the item gets a
    new one, never reused (not even after a redrive); `attempt` counts claims since the last redrive.
    `loaded` is its processing input as the claim read it, parsed by `input()` on the worker."""

    vectorstore: str
    raw_id: str
    token: str
    session_id: str
    attempt: int
    waited: float = 0.0  # seconds from submission (or redrive) to this claim, in server time
    loaded: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def input(self) -> ProcessingInput:
        """Read atomically with the claim (ProcessingInput says why it is still right later)."""
        return ProcessingInput.from_reply(self.session_id, *self.loaded)


@dataclass(frozen=True)
class DeadLetter:
    """An item the claim dead-lettered (a last attempt's lease expired, or its record was lost)."""

    vectorstore: str
    raw_id: str
    session_id: str
    error: str
    attempt: int


@dataclass(frozen=True)
class ClaimBatch:
    items: list[Claim]
    reaped: int  # expired leases put back in the queue
    buried: int  # expired leases of a last attempt, dead-lettered
    lost: int = 0  # queue entries whose raw record was gone, dead-lettered as "record lost"
    dead: tuple[DeadLetter, ...] = ()  # the buried and lost items
    more: bool = False  # the reply's byte budget ended the claim: more items may be eligible now


CLAIM_INPUT_BYTES = 1024 * 1024
"""What one claim's reply may carry of its items' inputs (transcripts as stored, metadata and
summaries) before it stops taking items (it always takes one). A drain's first claim at concurrency
64 (72 items of 1-8 KB) stays below it; larger sessions are claimed fewer at a time (at worst one
per claim: no more round trips than a read per item), so neither the reply nor the Lua table Redis
builds for it, serving nobody else meanwhile, grows with the batch (256 sessions of 1 MB: 440 ms)."""


def claim(store: Store, settings: Settings, limit: int, reap_limit: int = 100) -> ClaimBatch:
    """Up to `limit` items with their processing input, on the binary client (transcripts may be
    stored compressed): one round trip."""
    s = settings
    args = [limit, s.lease_seconds, s.max_attempts, reap_limit, s.vectorstore_concurrency, CLAIM_INPUT_BYTES]
    items, reaped, buried, lost, dead, more = fcall(store.rb, "claim", [], args)
    return ClaimBatch(
        [
            Claim(as_text(vs), as_text(rid), as_text(tok), as_text(sid), int(n), float(waited), tuple(loaded))
            for vs, rid, tok, sid, n, waited, *loaded in items
        ],
        int(reaped),
        int(buried),
        int(lost),
        tuple(
            DeadLetter(as_text(vs), as_text(rid), as_text(sid), as_text(err), int(n))
            for vs, rid, sid, err, n in dead
        ),
        more=bool(int(more)),
    )


def renew(store: Store, settings: Settings, items: list[Claim]) -> set[str]:
    """Extend the leases of items this worker still holds; the raw ids it no longer holds."""
    if not items:
        return set()
    args: list[Any] = [settings.lease_seconds]
    for item in items:
        args += [item.vectorstore, item.raw_id, item.token]
    return {as_text(rid) for rid in fcall(store.r, "renew", [], args)}


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
    outcome = as_text(res[0])
    if outcome == "ok":
        return CommitResult(
            "ok",
            int(res[1]),
            int(res[2]),
            tuple(as_text(m) for m in res[3]),
            updated=int(res[4]),
            superseded=int(res[5]),
            retracted=int(res[6]),
        )
    if outcome == "moved":
        return CommitResult("moved", seq=int(res[1]))
    if outcome == "conflict":
        return CommitResult("conflict", detail=as_text(res[1]))
    if outcome == "mismatch":
        return CommitResult(
            "mismatch",
            detail=f"vectorstore uses embedding model {as_text(res[1])!r} with {as_text(res[2])} dimensions",
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
    counts_attempt: bool = True,
) -> tuple[str, float]:
    """Back to the queue with exponential backoff and jitter, or into the dead set. A try that
    does not count as an attempt (rate limiting) gets its attempt back, waits `min_delay` and is
    never dead-lettered."""
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
            1 if counts_attempt else 0,
        ],
    )
    return as_text(res[0]), float(res[1]) if len(res) > 1 else 0.0


def redrive(store: Store, vectorstore: str, raw_id: str) -> tuple[str, str]:
    """A dead item back to the queue with a fresh attempt budget: ('queued', pending count),
    ('not_dead', its status; '' when there is no such record) or ('lost', '') for a record lost
    before it was processed (nothing is left to process)."""
    outcome, detail = fcall(store.r, "redrive", [], [vectorstore, raw_id])
    return as_text(outcome), as_text(detail)


@dataclass(frozen=True)
class Beat:
    """What a heartbeat answers: the store's maxmemory-policy, and the queue as fan-out sees it."""

    policy: str
    backlog: int  # items eligible now
    backlog_age: float  # seconds the oldest eligible item has been eligible (0: none is)
    vectorstores: int  # vectorstores with waiting items
    processors: int  # live processors, the caller included when it registered
    rate: float | None  # one processor's measured sessions/s (None before the first measurement)


def heartbeat(
    store: Store,
    settings: Settings,
    version: str,
    *,
    rate: float | None = None,
    weight: float = 1.0,
    starting: bool = False,
    processor: str = "",
    ttl: float = 0.0,
) -> Beat:
    """Stamp background_processor:status (a measured rate is blended in with `weight`) and, for a
    `processor` id, register it as live for `ttl` seconds (0: it is done and leaves)."""
    _, policy, backlog, age, vectorstores, processors, measured = fcall(
        store.r,
        "heartbeat",
        [],
        [
            settings.processing_interval_seconds,
            version,
            f"{rate:.4f}" if rate is not None else "",
            f"{weight:.4f}",
            "1" if starting else "",
            processor,
            f"{ttl:.3f}",
        ],
    )
    return Beat(
        as_text(policy),
        int(backlog),
        float(age),
        int(vectorstores),
        int(processors),
        float(measured) if measured else None,
    )


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
    backlog_age: float  # seconds the oldest eligible item of any vectorstore has been eligible
    processors: int  # live processors
    library_loaded: bool = True  # it answered: the library is there (the probe checks it for real)


def backlog_age(now: float, head_score: Any) -> float:
    """How long the first item of RAW_MEMORY_QUEUE has been eligible (0: none is): the queue is scored
    by eligibility, parked items at +inf (the rule of the Lua ``backlog_age`` the heartbeat uses)."""
    if head_score in (None, ""):
        return 0.0
    due = float(head_score)
    return round(now - due, 3) if math.isfinite(due) and due <= now else 0.0


def status(store: Store, vectorstore: str) -> QueueStatus:
    (
        now, queue_size, flat, today, last, pending, inflight, dead, oldest, all_inflight, all_dead, policy,
        head, processors,
    ) = fcall(store.r, "status", [], [vectorstore], readonly=True)  # fmt: skip
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
        eviction_policy=as_text(policy),
        backlog_age=backlog_age(float(now), head),
        processors=int(processors),
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
    backlog_age: float
    processors: int  # live: registered until a deadline still ahead


def _library_names(listing: Any) -> set[str]:
    """Library names in a FUNCTION LIST reply (RESP2 flat pairs or RESP3 maps)."""
    names = set()
    for library in listing or []:
        fields = (
            library if isinstance(library, dict) else dict(zip(library[::2], library[1::2], strict=False))
        )
        names.add(as_text(fields.get("library_name", "")))
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
    pipe.zrange(PROCESSORS, 0, -1, withscores=True)  # at most MAX_PROCESSORS and the lately dead
    (seconds, micros), listing, memory, processor, head, queue_size, live = pipe.execute()
    now = int(seconds) + int(micros) / 1e6
    return HealthProbe(
        now=now,
        library_loaded=library in _library_names(listing),
        eviction_policy=str(memory.get("maxmemory_policy", "unknown")),
        processor=dict(processor),
        queue_size=int(queue_size),
        backlog_age=backlog_age(now, head[0][1] if head else None),
        processors=sum(1 for _, deadline in live if float(deadline) > now),
    )
