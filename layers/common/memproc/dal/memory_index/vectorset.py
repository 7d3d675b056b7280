"""The memory index as a Redis 8 vector set at the bare vectorstore name.

The element's attributes are the memory's JSON record; FILTER expressions read them. Vector-set
scores are (1 + cosine) / 2. See: https://redis.io/docs/latest/develop/data-types/vector-sets/
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Any

import redis

from memproc.dal.batch import Client
from memproc.dal.functions import fcall
from memproc.dal.memory_index.base import (
    STATE_REPLIES,
    DimensionMismatch,
    Hit,
    MemoryFilter,
    Related,
    queue_state,
    rank,
    records_from,
)
from memproc.dal.replies import as_text
from memproc.keys import VectorstoreKeys
from memproc.records import MemoryRecord
from memproc.validation import require_session_id


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

    def __init__(self, client: Client) -> None:
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
            pipe.execute_command("VADD", staging, "FP32", vectors[mid], mid, "SETATTR", as_text(attr))
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
        staged = {as_text(m) for m in self.client.execute_command("VRANDMEMBER", staging, count) or []}
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

    def nearest(
        self, vectorstore: str, vectors: list[bytes], k: int, where: MemoryFilter, memories: int | None = None
    ) -> list[list[Hit]]:
        if not vectors:
            return []
        batch = self.client.batch()
        queue_vsim(batch, vectorstore, vectors, k, where, memories)
        return [vsim_hits(reply) for reply in batch.execute()]

    def related(
        self,
        vectorstore: str,
        vectors: list[bytes],
        k: int,
        limit: int,
        where: MemoryFilter,
        memories: int | None = None,
    ) -> Related:
        """Two round trips: the state (read first, so a commit after it is noticed) with every
        vector's VSIM, then the best memories' attributes in one read-only library call
        (related.lua). The VSIMs count only when the vectorstore has memories of the vectors'
        dimension (else the caller sees the mismatch in the state)."""
        batch = self.client.batch()
        read_state = queue_state(batch, vectorstore)
        queue_vsim(batch, vectorstore, vectors, k, where, memories)
        replies = batch.execute()
        state = read_state(iter([_ok(reply) for reply in replies[:STATE_REPLIES]]))
        if not state.memories or (state.dimensions and vectors and 4 * state.dimensions != len(vectors[0])):
            return Related(state, [], 0)
        ranked, distinct = rank([vsim_hits(reply) for reply in replies[STATE_REPLIES:]], limit)
        ids = [mid for mid, _ in ranked]
        attrs = fcall(self.client, "attributes", [], [vectorstore, *ids], readonly=True) if ids else []
        found = records_from(ids)(iter(attrs))
        return Related(state, [(found[mid], sim) for mid, sim in ranked if mid in found], distinct)


NOTHREAD_MAX_MEMORIES = 100
"""A vector set of at most this many memories is searched on Redis's main thread (VSIM ... NOTHREAD).

A threaded VSIM costs the main thread ~80-120 us anyway (parse, block the client, hand off, reply)
and the whole server 250-400 us at these sizes; on the main thread it costs (Redis 8.0.2, 1536
dimensions, COUNT 8, FILTER on status, ~400-byte attributes; INFO cpu per VSIM) ~80 us at 64
memories, ~150 at 100, ~190 at 128, ~250 at 200, ~520 at 1000. A client's pipelined commands are
read 16 KB (2-3 VSIMs) at a time, so at up to 100 memories a client holds the main thread for
~0.3-0.5 ms at a time: PING p99 from another process while 64 threads send 16-VSIM batches (~68/s)
was 4.4 and 6.2 ms NOTHREAD vs 3.3 and 4.0 threaded at 100 memories, 17 and 8 vs 5.6 and 3.9 at
128, 22 and 15 vs 7.4 and 6.0 at 200 (idle: 1-3 ms on this shared 2-core machine), while the
batch cost the client 0.6 instead of 0.85 ms and the server 2.6 instead of 5 ms. On a server
with more cores, threaded VSIMs of large sets run in parallel: those stay threaded."""


def queue_vsim(
    pipe: Any, vectorstore: str, vectors: list[bytes], k: int, where: MemoryFilter, memories: int | None
) -> None:
    """One VSIM per vector, as plain (pipelined) commands: the module runs those on its worker
    threads, where a VSIM called from a script, a function or MULTI runs on, and blocks, the main
    thread for the whole search (related.lua reads only the attributes). A set of at most
    NOTHREAD_MAX_MEMORIES (`memories` as the caller last read it) is searched on the main thread
    (NOTHREAD): its search costs the main thread about what the hand-off to a worker does, and the
    batch's replies reach the client together instead of one per search."""
    tail: list[Any] = ["COUNT", k, "WITHSCORES"]
    expression = vsim_filter(where)
    if expression:
        tail += ["FILTER", expression]
    if memories is not None and memories <= NOTHREAD_MAX_MEMORIES:
        tail.append("NOTHREAD")
    for vector in vectors:
        pipe.execute_command("VSIM", vectorstore, "FP32", vector, *tail)


_SIMILARITY = itemgetter(1)


def vsim_hits(reply: Any) -> list[Hit]:
    """A VSIM ... WITHSCORES reply as it arrives (the base client registers no callback for VSIM,
    unlike redis-py's `vset()` commands): under RESP3, redis-py 8's default, a map hiredis builds
    as {id: score}; under RESP2 a flat [id, score, ...]. Hits best first; a vector of another
    size than the set's is a mismatch. (~20 replies a session: a map is taken without a call to
    `_ok`, an id already text without one to `as_text`.)"""
    if type(reply) is dict or isinstance(_ok(reply), dict):
        pairs: Any = reply.items()
    else:
        flat = iter(reply or ())
        pairs = zip(flat, flat, strict=True)
    hits = [(mid if type(mid) is str else as_text(mid), 2 * float(score) - 1) for mid, score in pairs]
    hits.sort(key=_SIMILARITY, reverse=True)
    return hits


def _ok(reply: Any) -> Any:
    """A batched reply, or its error raised (a vector of the wrong size as a mismatch)."""
    if isinstance(reply, redis.ResponseError):
        if "dimension" in str(reply).lower():
            raise DimensionMismatch(str(reply)) from None
        raise reply
    return reply
