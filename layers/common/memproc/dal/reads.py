"""Reads of the memory hierarchy, each a constant number of pipelined round trips.

Every command touches only one vectorstore's indexes and the records they name, so a read costs
O(log N + results) whatever else Redis holds. Records come back as `memproc.records` shapes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from memproc.dal.connection import Store
from memproc.dal.functions import fcall
from memproc.dal.memory_index.base import MemoryState, queue_state
from memproc.keys import VECTORSTORES, VectorstoreKeys
from memproc.records import RAW_FIELDS, TRANSCRIPT_FIELDS, MemoryRecord, RawRecord, SummaryRecord
from memproc.transcript import decode_transcript

SESSION_RAW_LIMIT = 100


def vectorstore_exists(store: Store, vectorstore: str) -> bool:
    """Whether store_raw has written the vectorstore (and it has not been erased since)."""
    return store.r.zscore(VECTORSTORES, vectorstore) is not None


def _score(v: float | None, default: str) -> str:
    return default if v is None else repr(float(v))


@dataclass(frozen=True)
class Newest:
    """Newest-first entries of a zset index with scores in [bottom, top], at most `count`."""

    key: str
    top: float | None
    bottom: float | None
    count: int


@dataclass(frozen=True)
class Count:
    """How many entries of a zset index have scores in [bottom, top] (ZCOUNT: O(log N))."""

    key: str
    top: float | None
    bottom: float | None


@dataclass(frozen=True)
class Members:
    """Every member of a set (a session's memory ids)."""

    key: str


@dataclass(frozen=True)
class Summary:
    """One session summary with its expiry."""

    session_id: str


IndexRead = Newest | Count | Members | Summary


def index_entries(store: Store, vk: VectorstoreKeys, reads: dict[str, IndexRead]) -> dict[str, Any]:
    """One round trip for several index reads: rows [(member, score)] for `Newest`, a number for
    `Count`, a set for `Members`, a `SummaryRecord` (or None) for `Summary`."""
    pipe = store.r.pipeline(transaction=False)
    for read in reads.values():
        if isinstance(read, Newest):
            pipe.zrange(
                read.key,
                _score(read.top, "+inf"),
                _score(read.bottom, "-inf"),
                desc=True,
                byscore=True,
                offset=0,
                num=read.count,
                withscores=True,
            )
        elif isinstance(read, Count):
            pipe.zcount(read.key, _score(read.bottom, "-inf"), _score(read.top, "+inf"))
        elif isinstance(read, Members):
            pipe.smembers(read.key)
        else:
            pipe.get(vk.session_summary(read.session_id))
            pipe.expiretime(vk.session_summary(read.session_id))
    replies = iter(pipe.execute() if len(pipe) else [])
    out: dict[str, Any] = {}
    for name, read in reads.items():
        if isinstance(read, Summary):
            text, ttl = next(replies), next(replies)
            out[name] = SummaryRecord.from_json(read.session_id, text, ttl)
        else:
            out[name] = next(replies)
    return out


@dataclass
class Records:
    """The records behind index entries, in the order asked (missing ones left out)."""

    memories: dict[str, MemoryRecord] = field(default_factory=dict)
    summaries: list[SummaryRecord] = field(default_factory=list)
    raws: list[RawRecord] = field(default_factory=list)
    transcripts: dict[str, str] = field(default_factory=dict)


def records(
    store: Store,
    vk: VectorstoreKeys,
    *,
    memory_ids: Sequence[str] = (),
    session_ids: Sequence[str] = (),
    raw_ids: Sequence[str] = (),
    transcripts: bool = False,
) -> Records:
    """One round trip: memories, summaries (with expiry) and raw records (with expiry, and their
    transcripts on the binary client when asked)."""
    client: redis.Redis = store.rb if transcripts else store.r
    pipe = client.pipeline(transaction=False)
    # Only a read that needs memories resolves the memory index (a raw record's does not).
    read_memories = store.index.queue_get(pipe, vk.name, list(memory_ids)) if memory_ids else None
    fields = RAW_FIELDS + (TRANSCRIPT_FIELDS if transcripts else ())
    for sid in session_ids:
        pipe.get(vk.session_summary(sid))
        pipe.expiretime(vk.session_summary(sid))
    for rid in raw_ids:
        pipe.hmget(vk.raw(rid), fields)
        pipe.expiretime(vk.raw(rid))
    replies: Iterator[Any] = iter(pipe.execute() if len(pipe) else [])
    out = Records(memories=read_memories(replies) if read_memories else {})
    for sid in session_ids:
        summary = SummaryRecord.from_json(sid, next(replies), next(replies))
        if summary is not None:
            out.summaries.append(summary)
    for rid in raw_ids:
        values, ttl = next(replies), next(replies)
        raw = RawRecord.from_hash(rid, values[: len(RAW_FIELDS)], ttl)
        if raw is None:
            continue  # expired or erased since it was indexed
        out.raws.append(raw)
        data, encoding = values[len(RAW_FIELDS) :] or (None, None)
        if data is not None:
            out.transcripts[rid] = decode_transcript(data, (encoding or b"").decode())
    return out


@dataclass(frozen=True)
class SessionEntries:
    summary: SummaryRecord | None
    memory_ids: list[str]
    raw_ids: list[str]  # newest first, at most SESSION_RAW_LIMIT
    raw_total: int


def session_entries(store: Store, vk: VectorstoreKeys, session_id: str) -> SessionEntries:
    """A session's summary and the ids of its memories and submissions, in one round trip."""
    pipe = store.r.pipeline(transaction=False)
    pipe.get(vk.session_summary(session_id))
    pipe.expiretime(vk.session_summary(session_id))
    pipe.smembers(vk.session_memories(session_id))
    pipe.zrange(vk.session_raws(session_id), 0, SESSION_RAW_LIMIT - 1, desc=True)
    pipe.zcard(vk.session_raws(session_id))
    text, ttl, members, raw_ids, raw_total = pipe.execute()
    summary = SummaryRecord.from_json(session_id, text, ttl)
    ids = set(members) | set(summary.memory_ids if summary else ())
    return SessionEntries(summary, sorted(ids), list(raw_ids), int(raw_total))


@dataclass(frozen=True)
class SearchState:
    embedding_model: str | None
    dimensions: int | None
    memories: int
    waiting: int  # submissions queued or in flight
    session_pending: bool | None  # with a session: whether it has work queued or in flight


def search_state(store: Store, vk: VectorstoreKeys, session_id: str | None) -> SearchState:
    """What search needs to know before embedding the query, in one round trip."""
    pipe = store.r.pipeline(transaction=False)
    pipe.hmget(vk.config, ["embedding_model", "dimensions"])
    pipe.zcard(vk.memory_index)
    pipe.zcard(vk.pending)
    pipe.zcard(vk.inflight)
    if session_id:
        pipe.zintercard(2, [vk.session_raws(session_id), vk.pending])
        pipe.zintercard(2, [vk.session_raws(session_id), vk.inflight])
    state = pipe.execute()
    (model, dims), size, pending, inflight = state[:4]
    return SearchState(
        embedding_model=model,
        dimensions=int(dims) if dims else None,
        memories=int(size),
        waiting=int(pending) + int(inflight),
        session_pending=bool(state[4] or state[5]) if session_id else None,
    )


def dead_letter_ids(store: Store, vk: VectorstoreKeys, limit: int) -> tuple[list[str], int]:
    """The newest dead-lettered raw ids and how many there are."""
    pipe = store.r.pipeline(transaction=False)
    pipe.zrange(vk.dead, 0, limit - 1, desc=True)
    pipe.zcard(vk.dead)
    ids, total = pipe.execute()
    return list(ids), int(total)


def stats(store: Store, vectorstore: str, days: int, samples: int) -> dict[str, Any]:
    """Everything GET /stats shows, from one read-only library call (told the backend: memories are
    one vector set, or hashes it estimates from samples)."""
    result: dict[str, Any] = json.loads(
        fcall(store.r, "stats", [], [vectorstore, days, samples, store.index.name], readonly=True)
    )
    return result


def memory_state(store: Store, vectorstore: str) -> MemoryState:
    """The vectorstore's memory state alone (reconciliation reads it with the memories it looks up,
    and the processor with its input)."""
    pipe = store.r.pipeline(transaction=False)
    return queue_state(pipe, vectorstore)(iter(pipe.execute()))


def transcript(store: Store, vectorstore: str, raw_id: str) -> str | None:
    """One submission's transcript (None when it is gone)."""
    values: list[Any] = store.rb.hmget(VectorstoreKeys(vectorstore).raw(raw_id), list(TRANSCRIPT_FIELDS))
    data, encoding = values
    return None if data is None else decode_transcript(data, (encoding or b"").decode())


@dataclass(frozen=True)
class ProcessingInput:
    """What the processor starts from for one claimed item: the transcript and the session so far.

    The claim reads it with the item (dal/queue.py), so it is as old as the claim when the item
    runs, after waiting for a worker. Nothing in it can change under a held item in a way the
    item's commit would keep: the raw hash's fields are written once (an erasure deletes the
    record, and the commit, fenced by the token, is then stale); the session's summary changes only
    by commits of that session's submissions, which run one at a time (the next is claimable only
    once this one is done, and whoever reclaims this one fences this worker out); the memory state's
    seq fences the commit ('moved': decided again), and the lookup reads the state again with the
    memories it shows."""

    transcript: str | None  # None: the record has none (store_raw always writes one)
    created_at: float
    metadata: dict[str, Any]
    summary: SummaryRecord | None
    state: MemoryState  # the vectorstore's memories: whether the session's turns need embedding

    @classmethod
    def from_reply(
        cls, session_id: str, data: Any, encoding: Any, created: Any, metadata: Any, summary: Any, *state: Any
    ) -> ProcessingInput:
        """From the fields of the claim's reply for one item (bytes: a transcript may be stored
        compressed)."""
        try:
            meta = json.loads(metadata or b"{}")
        except ValueError:
            meta = {}
        return cls(
            transcript=None if data is None else decode_transcript(data, (encoding or b"").decode()),
            created_at=float(created or 0),
            metadata=meta if isinstance(meta, dict) else {},
            summary=SummaryRecord.from_json(session_id, summary),
            state=MemoryState.from_reply(*state),
        )


# -- re-embedding (memproc.reembed): its progress lives in the vectorstore's config ---------------

REEMBED_FIELDS = ("reembed_model", "reembed_dimensions", "reembed_next", "reembed_done")


@dataclass(frozen=True)
class ReembedState:
    model: str | None  # what the vectorstore's memories are embedded with now
    dimensions: int | None
    target: tuple[str, int] | None  # the model of a run in progress
    next: int  # rank in memory_index where it resumes
    done: int  # memories it gave a new vector
    memories: int


def reembed_state(store: Store, vk: VectorstoreKeys) -> ReembedState:
    pipe = store.r.pipeline(transaction=False)
    pipe.hmget(vk.config, ["embedding_model", "dimensions", *REEMBED_FIELDS])
    pipe.zcard(vk.memory_index)
    (model, dims, t_model, t_dims, nxt, done), count = pipe.execute()
    return ReembedState(
        model=model,
        dimensions=int(dims) if dims else None,
        target=(t_model, int(t_dims)) if t_model and t_dims else None,
        next=int(nxt or 0),
        done=int(done or 0),
        memories=int(count),
    )


def memory_ids(store: Store, vk: VectorstoreKeys) -> list[str]:
    """Every memory id of the vectorstore (its memory index)."""
    return [str(m) for m in store.r.zrange(vk.memory_index, 0, -1)]


def reembed_todo(store: Store, vk: VectorstoreKeys, start: int, count: int) -> list[str]:
    """The run's snapshot of the memory listing, from rank `start`."""
    return [str(m) for m in store.r.zrange(vk.reembed_todo, start, start + count - 1)]


def reembed_begin(store: Store, vk: VectorstoreKeys, model: str, dimensions: int) -> None:
    """Start (over): a snapshot of the memory listing to walk, and the run's target."""
    pipe = store.r.pipeline(transaction=True)
    pipe.delete(vk.reembed_todo)
    pipe.copy(vk.memory_index, vk.reembed_todo, replace=True)
    pipe.hset(
        vk.config,
        mapping={
            "reembed_model": model,
            "reembed_dimensions": dimensions,
            "reembed_next": 0,
            "reembed_done": 0,
        },
    )
    pipe.execute()


def reembed_step(store: Store, vk: VectorstoreKeys, next_rank: int, done: int) -> None:
    store.r.hset(vk.config, mapping={"reembed_next": next_rank, "reembed_done": done})


def reembed_commit(
    store: Store, vk: VectorstoreKeys, model: str, dimensions: int, swap: Callable[[Any], None]
) -> None:
    """The new vectors (`swap` queues the memory index's part) and the new model, in one transaction
    (every key is in the vectorstore's hash slot)."""
    pipe = store.r.pipeline(transaction=True)
    swap(pipe)
    pipe.hset(vk.config, mapping={"embedding_model": model, "dimensions": dimensions})
    pipe.hdel(vk.config, *REEMBED_FIELDS)
    pipe.delete(vk.reembed_todo)
    pipe.execute()
