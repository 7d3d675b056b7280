"""What the rest of memproc may ask of the memory index, whichever engine holds it.

Nothing above this package knows which engine runs: both keep a memory under one id with one JSON
record (`records.MemoryRecord`), and both answer the same filtered nearest-neighbour questions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

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

    def nearest(self, vectorstore: str, vectors: list[bytes], k: int, where: MemoryFilter) -> list[list[Hit]]:
        """The `k` nearest memories of each vector (FP32 bytes), best first, in one round trip."""
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
