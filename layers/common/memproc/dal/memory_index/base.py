"""What the rest of memproc may ask of the memory index, whichever engine holds it.

Nothing above this package knows which engine runs: both keep a memory under one id with one JSON
record (`records.MemoryRecord`), and both answer the same filtered nearest-neighbour questions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

from memproc.dal.replies import as_text
from memproc.keys import VectorstoreKeys
from memproc.records import MemoryRecord


@dataclass(frozen=True)
class MemoryFilter:
    """Which memories a nearest-neighbour query may return. Every value is validated before it gets
    here (session ids by SESSION_ID_RE, memory types from a closed set, times are numbers); each
    backend still passes or escapes them through one tested function."""

    current_only: bool = True
    memory_type: str | None = None
    session_id: str | None = None
    valid_from_min: float | None = None  # the session's own time of the statement
    valid_from_max: float | None = None


Hit = tuple[str, float]  # (memory id, cosine similarity), best first


@dataclass(frozen=True)
class MemoryState:
    """What reconciliation decides against: the vectorstore's memory sequence (a commit made after
    it is noticed, see commit.lua), how many memories it has, and what embeds them."""

    seq: int
    memories: int
    embedding_model: str | None
    dimensions: int | None

    @classmethod
    def from_reply(cls, seq: Any, memories: Any, model: Any, dimensions: Any) -> MemoryState:
        """From the config hash's memory_seq, embedding_model and dimensions and the memory index's
        ZCARD, as either client (or the library, with '' for a missing field) hands them back."""
        dims = int(dimensions) if dimensions else None
        return cls(int(seq or 0), int(memories), as_text(model) if model else None, dims)


STATE_FIELDS = ("memory_seq", "embedding_model", "dimensions")
STATE_REPLIES = 2  # what queue_state queues: HMGET of the config, ZCARD of the memory index


def queue_state(pipe: Any, vectorstore: str) -> Callable[[Iterator[Any]], MemoryState]:
    """Queue the reads of the vectorstore's memory state on a pipeline or a batch (the library's
    claim reads the same fields with each item it hands out); the returned function turns their
    replies into it."""
    vk = VectorstoreKeys(vectorstore)
    pipe.execute_command("HMGET", vk.config, *STATE_FIELDS)
    pipe.execute_command("ZCARD", vk.memory_index)

    def parse(replies: Iterator[Any]) -> MemoryState:
        (seq, model, dimensions), memories = next(replies), next(replies)
        return MemoryState.from_reply(seq, memories, model, dimensions)

    return parse


@dataclass(frozen=True)
class Related:
    """What the memories nearest to a session's query vectors are, read in two round trips: the
    vectorstore's state at that read, the best `limit` memories by each one's best similarity to
    any vector (best first, with it), and how many different memories the neighbours were."""

    state: MemoryState
    memories: list[tuple[MemoryRecord, float]]
    distinct: int


def rank(hits: list[list[Hit]], limit: int) -> tuple[list[Hit], int]:
    """The `limit` memories with the best similarity to any of several queries (each query's hits
    best first), a tie in order of first appearance, and how many different memories the hits
    were."""
    best: dict[str, float] = {}
    seen = best.get
    for query_hits in hits:
        for memory_id, sim in query_hits:
            known = seen(memory_id, -1.0)
            best[memory_id] = known if known > sim else sim  # max(sim, known), without the call
    return sorted(best.items(), key=itemgetter(1), reverse=True)[:limit], len(best)


class IndexUnavailable(Exception):
    """The engine cannot answer now (e.g. the Query Engine is rebuilding its index after a restart):
    an empty answer would look like "no memories"."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DimensionMismatch(Exception):
    """The query vector does not fit the vectors the index holds."""


class MemoryIndex(Protocol):
    name: str  # what the commit function is told: "vectorset" | "search"

    def ensure(self, dimensions: int) -> None:
        """Make sure the index can hold vectors of `dimensions` (idempotent)."""

    def queue_get(
        self, pipe: Any, vectorstore: str, memory_ids: list[str]
    ) -> Callable[[Iterator[Any]], dict[str, MemoryRecord]]:
        """Queue the reads of `memory_ids` on a pipeline; the returned function turns the replies
        (in order) into the memories that still exist."""
        ...

    # `memories` (nearest, related): how many memories the vectorstore held when the caller last
    # read its state, None when it did not; a backend may pick how to run the queries by it.

    def nearest(
        self, vectorstore: str, vectors: list[bytes], k: int, where: MemoryFilter, memories: int | None = None
    ) -> list[list[Hit]]:
        """The `k` nearest memories of each vector (FP32 bytes), best first, in one round trip."""
        ...

    def related(
        self,
        vectorstore: str,
        vectors: list[bytes],
        k: int,
        limit: int,
        where: MemoryFilter,
        memories: int | None = None,
    ) -> Related:
        """The memory state and, when it has memories of the vectors' dimension, the `limit` best of
        every vector's `k` nearest (ranked by each memory's best similarity; a tie by first
        appearance, vector by vector), with their records: two round trips, the state with the
        queries, then the records of the ranked memories."""
        ...

    # Re-embedding (memproc reembed): new vectors for existing memories, made current at once.

    def restage(self, vectorstore: str, vectors: dict[str, bytes]) -> int:
        """Write new vectors (FP32 bytes) for existing memories where `finish_restage` makes them
        current; how many memories were written (one erased meanwhile is skipped)."""
        ...

    def unstaged(self, vectorstore: str, memory_ids: list[str], dimensions: int) -> list[str]:
        """Which of `memory_ids` (every memory the vectorstore has) have no staged vector of
        `dimensions` yet; staged vectors of memories no longer there are dropped."""
        ...

    def finish_restage(self, pipe: Any, vectorstore: str, staged: int) -> None:
        """Queue, on a transaction, what makes the `staged` vectors the memories' vectors."""

    def discard_restage(self, vectorstore: str) -> None:
        """Forget vectors staged by an abandoned re-embedding."""


def records_from(memory_ids: list[str]) -> Callable[[Iterator[Any]], dict[str, MemoryRecord]]:
    """What `queue_get` returns on either engine: the pipeline's replies (one attributes JSON per id,
    in order) as records; an id whose memory is gone has none."""

    def parse(replies: Iterator[Any]) -> dict[str, MemoryRecord]:
        out: dict[str, MemoryRecord] = {}
        for mid in memory_ids:
            record = MemoryRecord.from_attrs(mid, next(replies))
            if record is not None:
                out[mid] = record
        return out

    return parse
