"""The memory index as a Redis 8 vector set at the bare vectorstore name.

The element's attributes are the memory's JSON record; FILTER expressions read them. Vector-set
scores are (1 + cosine) / 2. See: https://redis.io/docs/latest/develop/data-types/vector-sets/
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import redis

from memproc.dal.functions import fcall
from memproc.dal.memory_index.base import (
    DimensionMismatch,
    Hit,
    MemoryFilter,
    MemoryState,
    Related,
    records_from,
)
from memproc.keys import VectorstoreKeys
from memproc.records import MemoryRecord
from memproc.validation import require_session_id


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def vsim_filter(where: MemoryFilter) -> str | None:
    """The FILTER expression, built only from validated, typed values: the memory type from a
    closed set and the session id (checked against SESSION_ID_RE, so it holds no quote or
    backslash) as JSON string literals, times as numbers. No user text is interpolated."""
    parts: list[str] = []
    if where.current_only:
        parts.append('.status == "current"')
    if where.memory_type is not None:
        parts.append(f".memory_type == {json.dumps(where.memory_type)}")
    if where.session_id is not None:
        parts.append(f"{json.dumps(require_session_id(where.session_id))} in .source_sessions")
    if where.valid_from_min is not None:
        parts.append(f".valid_from >= {where.valid_from_min:.6f}")
    if where.valid_from_max is not None:
        parts.append(f".valid_from <= {where.valid_from_max:.6f}")
    return " and ".join(parts) or None


class VectorSetIndex:
    name = "vectorset"

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def ensure(self, dimensions: int) -> None:
        """A vector set is created by its first VADD."""

    def queue_get(
        self, pipe: Any, vectorstore: str, memory_ids: list[str]
    ) -> Callable[[Iterator[Any]], dict[str, MemoryRecord]]:
        for mid in memory_ids:
            pipe.execute_command("VGETATTR", vectorstore, mid)

        return records_from(memory_ids)

    def restage(self, vectorstore: str, vectors: dict[str, bytes]) -> int:
        """Into a vector set of its own in the vectorstore's slot (the dimension may change),
        with each memory's current attributes: two round trips."""
        ids = list(vectors)
        pipe = self.client.pipeline(transaction=False)
        for mid in ids:
            pipe.execute_command("VGETATTR", vectorstore, mid)
        attrs = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        staging = VectorstoreKeys(vectorstore).reembed
        written = 0
        for mid, attr in zip(ids, attrs, strict=True):
            if attr is None:
                continue  # erased meanwhile
            pipe.execute_command("VADD", staging, "FP32", vectors[mid], mid, "SETATTR", _text(attr))
            written += 1
        if written:
            pipe.execute()
        return written

    def unstaged(self, vectorstore: str, memory_ids: list[str], dimensions: int) -> list[str]:
        staging = VectorstoreKeys(vectorstore).reembed
        if not self.client.exists(staging):
            return list(memory_ids)
        if int(self.client.execute_command("VDIM", staging)) != dimensions:
            self.client.delete(staging)
            return list(memory_ids)
        count = int(self.client.execute_command("VCARD", staging))
        staged = {_text(m) for m in self.client.execute_command("VRANDMEMBER", staging, count) or []}
        gone = staged - set(memory_ids)  # erased while it ran: not brought back
        if gone:
            pipe = self.client.pipeline(transaction=False)
            for mid in gone:
                pipe.execute_command("VREM", staging, mid)
            pipe.execute()
        return [mid for mid in memory_ids if mid not in staged]

    def finish_restage(self, pipe: Any, vectorstore: str, staged: int) -> None:
        if staged:  # RENAME replaces the vector set at once (same hash slot: {vs}:reembed)
            pipe.rename(VectorstoreKeys(vectorstore).reembed, vectorstore)
        else:
            pipe.delete(vectorstore)

    def discard_restage(self, vectorstore: str) -> None:
        self.client.delete(VectorstoreKeys(vectorstore).reembed)

    def _call(self, name: str, args: list[Any]) -> Any:
        """A read-only library function of nearest.lua; a vector of the wrong size is a mismatch."""
        try:
            return fcall(self.client, name, [], args, readonly=True)
        except redis.ResponseError as exc:
            if "dimension" in str(exc).lower():
                raise DimensionMismatch(str(exc)) from None
            raise

    def related(
        self, vectorstore: str, vectors: list[bytes], k: int, limit: int, where: MemoryFilter
    ) -> Related:
        """One library call: the state, every VSIM, the ranking and the attributes."""
        seq, memories, model, dims, distinct, flat = self._call(
            "related", [vectorstore, k, limit, vsim_filter(where) or "", *vectors]
        )
        found: list[tuple[MemoryRecord, float]] = []
        for i in range(0, len(flat), 3):
            record = MemoryRecord.from_attrs(_text(flat[i]), flat[i + 2])
            if record is not None:
                found.append((record, 2 * float(flat[i + 1]) - 1))
        return Related(MemoryState.from_reply(seq, memories, model, dims), found, int(distinct))

    def nearest(self, vectorstore: str, vectors: list[bytes], k: int, where: MemoryFilter) -> list[list[Hit]]:
        """One library call for every vector's VSIM."""
        if not vectors:
            return []
        replies = self._call("nearest", [vectorstore, k, vsim_filter(where) or "", *vectors])
        out: list[list[Hit]] = []
        for flat in replies:
            hits = [(_text(flat[i]), 2 * float(flat[i + 1]) - 1) for i in range(0, len(flat), 2)]
            out.append(sorted(hits, key=lambda h: h[1], reverse=True))
        return out
