"""The memory index on the Query Engine: ElastiCache for Valkey 8.2+ and MemoryDB (valkey-search),
or any engine with RediSearch (Redis Stack, used by the tests).

Written to the subset AWS documents for ElastiCache for Valkey 8.2 and MemoryDB:
- ONE index per deployment (`memproc:idx:<dimensions>`), not one per vectorstore: these engines
  allow about ten indexes. Every memory is a hash `memproc:mem:{<vs>}:<id>` (in its vectorstore's
  hash slot), and every query pre-filters on the `vs` TAG.
- Only hybrid KNN queries (`<filter>=>[KNN k @vec $B AS dist]`), DIALECT 2, the vector passed as a
  PARAM, at most five filter terms (the engines allow 16); no full-text, no aggregations, no
  filter-only queries (listings use the per-vectorstore sorted sets).
- A search while the engine rebuilds its index (after a restart or failover) raises
  IndexUnavailable instead of answering "no memories".
See: https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/vector-search-commands-ft.search.html
     https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/search-features-limits.html
     https://valkey.io/topics/search-query/
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from memproc.dal.memory_index.base import (
    DimensionMismatch,
    Hit,
    IndexUnavailable,
    MemoryFilter,
    MemoryState,
    Related,
    queue_state,
    rank,
    records_from,
)
from memproc.dal.replies import as_text
from memproc.keys import MEMORY_PREFIX, VectorstoreKeys, search_index
from memproc.records import MemoryRecord
from memproc.validation import require_session_id

_TAG_SPECIAL = re.compile(r"[^A-Za-z0-9]")


def tag_value(value: str) -> str:
    """A TAG query literal: every character but letters and digits backslash-escaped, so a value
    can never close the braces or start another term (RediSearch even refuses a bare `{_}`). Values
    are allowlisted before they get here."""
    return _TAG_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def query(vectorstore: str, k: int, where: MemoryFilter) -> str:
    """The hybrid KNN query string for one vectorstore."""
    terms = [f"@vs:{{{tag_value(vectorstore)}}}"]
    if where.current_only:
        terms.append("@status:{current}")
    if where.memory_type is not None:
        terms.append(f"@memory_type:{{{tag_value(where.memory_type)}}}")
    if where.session_id is not None:
        terms.append(f"@sessions:{{{tag_value(require_session_id(where.session_id))}}}")
    if where.valid_from_min is not None or where.valid_from_max is not None:
        low = "-inf" if where.valid_from_min is None else f"{where.valid_from_min:.6f}"
        high = "+inf" if where.valid_from_max is None else f"{where.valid_from_max:.6f}"
        terms.append(f"@valid_from:[{low} {high}]")
    return f"({' '.join(terms)})=>[KNN {int(k)} @vec $B AS dist]"


def _hits(reply: Any) -> list[Hit]:
    """FT.SEARCH's reply (RESP2 [total, key, [field, value...], ...] or a RESP3 map) as hits."""
    rows: list[tuple[str, dict[str, str]]] = []
    if isinstance(reply, dict):
        for entry in reply.get("results", reply.get(b"results")) or []:
            fields = entry.get("extra_attributes", entry.get(b"extra_attributes")) or {}
            rows.append(
                (
                    as_text(entry.get("id", entry.get(b"id"))),
                    {as_text(a): as_text(b) for a, b in fields.items()},
                )
            )
    else:
        for i in range(1, len(reply) - 1, 2):
            flat = reply[i + 1] or []
            rows.append(
                (as_text(reply[i]), {as_text(flat[j]): as_text(flat[j + 1]) for j in range(0, len(flat), 2)})
            )
    hits = []
    for key, fields in rows:
        memory_id = key.rsplit("}:", 1)[-1]
        hits.append((memory_id, 1.0 - float(fields.get("dist", "1"))))  # cosine distance = 1 - similarity
    return sorted(hits, key=lambda h: h[1], reverse=True)


class _IndexGone(redis.ResponseError):
    """The index this process made sure of is not there any more."""


def _fields(info: Any) -> dict[str, str]:
    """FT.INFO's top-level scalar fields, whichever protocol and engine answered (a RESP3 map, or a
    flat RESP2 list; nested values are left out)."""
    pairs = info.items() if isinstance(info, dict) else zip(info[::2], info[1::2], strict=False)
    return {as_text(k).lower(): as_text(v) for k, v in pairs if not isinstance(v, list | dict)}


def index_ready(info: Any) -> bool:
    """Whether an FT.INFO reply says every existing hash is indexed. The engines keep answering
    queries while they (re)build an index, from what they indexed so far: RediSearch reports
    `indexing` 1 and `percent_indexed` < 1, valkey-search (ElastiCache) `backfill_in_progress` 1 and a
    `state` other than ready, MemoryDB an `index_status` other than AVAILABLE."""
    f = _fields(info)
    if f.get("indexing", "0") not in ("0", ""):
        return False
    if float(f.get("percent_indexed", "1") or 1) < 1:
        return False
    if f.get("backfill_in_progress", "0") not in ("0", ""):
        return False
    if f.get("state", "ready").lower() != "ready":
        return False
    return f.get("index_status", "available").lower() in ("available", "ready")


def missing_index(exc: redis.ResponseError) -> bool:
    """Whether an error says the index does not exist, as each engine words it: RediSearch "Unknown
    index name" / "no such index", valkey-search (ElastiCache, MemoryDB) "Index with name '…' not
    found"."""
    message = str(exc).lower()
    return "unknown index" in message or "no such index" in message or "not found" in message


class SearchIndex:
    """One process's view of the deployment's index: created once (FT.INFO first), and trusted to be
    fully built for READY_SECONDS after FT.INFO last said so (FT.INFO costs RediSearch ~3 ms at 20k
    memories, several KNN queries' worth, so it is not asked on every query)."""

    name = "search"
    READY_SECONDS = 60.0
    CREATE_WAIT_SECONDS = 10.0

    def __init__(self, client: redis.Redis, dimensions: int) -> None:
        self.client = client
        self.index = search_index(dimensions)
        self.dimensions = dimensions
        self._exists = False
        self._ready_until = 0.0  # time.monotonic() until which the index counts as fully built
        self._creating = threading.Lock()  # one worker thread creates; the others wait for it

    def _info(self) -> Any | None:
        """FT.INFO's reply, or None when there is no such index."""
        try:
            return self.client.execute_command("FT.INFO", self.index)
        except redis.ResponseError as exc:
            if missing_index(exc):
                return None
            raise

    def _seen(self, info: Any) -> bool:
        """Note what an FT.INFO reply says; whether the index is fully built."""
        ready = index_ready(info)
        self._ready_until = time.monotonic() + self.READY_SECONDS if ready else 0.0
        return ready

    def ensure(self, dimensions: int) -> None:
        """Create the deployment's index unless it exists: FT.INFO first (a restart or a second
        processor must not recreate it), once per process. Memories must not be written before it
        exists (they would only be found after a backfill), so the processor calls this before its
        first commit, and a search before its first query."""
        if dimensions != self.dimensions:
            raise DimensionMismatch(f"the index holds {self.dimensions}-dimension vectors, not {dimensions}")
        if self._exists:
            return
        with self._creating:
            if not self._exists:
                self._create(dimensions)

    def _create(self, dimensions: int) -> None:
        info = self._info()
        if info is not None:
            self._seen(info)
        else:
            try:
                self.client.execute_command(
                    "FT.CREATE", self.index, "ON", "HASH", "PREFIX", "1", MEMORY_PREFIX, "SCHEMA",
                    "vs", "TAG", "CASESENSITIVE",
                    "status", "TAG",
                    "memory_type", "TAG",
                    "sessions", "TAG", "SEPARATOR", ",", "CASESENSITIVE",
                    "valid_from", "NUMERIC",
                    "vec", "VECTOR", "HNSW", "6", "TYPE", "FLOAT32", "DIM", str(dimensions),
                    "DISTANCE_METRIC", "COSINE",
                )  # fmt: skip
            except redis.ResponseError as exc:
                if "exists" not in str(exc).lower():
                    raise
            # Created now, by this call or by another process just before it: its scan has begun.
            self._await_scan()
        self._exists = True

    def _await_scan(self) -> None:
        """A new index scans the whole keyspace first (the raw submissions already stored, and any
        memory hashes an index that was dropped left behind) and answers from what it scanned so
        far meanwhile. The process that created it waits for that, once per deployment, bounded
        by CREATE_WAIT_SECONDS; past it, queries answer IndexUnavailable until the scan is done."""
        deadline = time.monotonic() + self.CREATE_WAIT_SECONDS
        pause = 0.005
        while True:
            info = self._info()
            if info is not None and self._seen(info):
                return
            if time.monotonic() + pause > deadline:
                return
            time.sleep(pause)
            pause = min(2 * pause, 0.25)

    def queue_get(
        self, pipe: Any, vectorstore: str, memory_ids: list[str]
    ) -> Callable[[Iterator[Any]], dict[str, MemoryRecord]]:
        vk = VectorstoreKeys(vectorstore)
        for mid in memory_ids:
            pipe.hget(vk.memory(mid), "attrs")

        return records_from(memory_ids)

    def restage(self, vectorstore: str, vectors: dict[str, bytes]) -> int:
        """In place: each memory hash's `vec` (the deployment's index for the new dimension picks it
        up; the old one stops matching it). Only hashes that still exist are written."""
        vk = VectorstoreKeys(vectorstore)
        ids = list(vectors)
        pipe = self.client.pipeline(transaction=False)
        for mid in ids:
            pipe.exists(vk.memory(mid))
        present = pipe.execute()
        pipe = self.client.pipeline(transaction=False)
        for mid, there in zip(ids, present, strict=True):
            if there:
                pipe.hset(vk.memory(mid), "vec", vectors[mid])
        if len(pipe):
            pipe.execute()
        return sum(1 for there in present if there)

    def unstaged(self, vectorstore: str, memory_ids: list[str], dimensions: int) -> list[str]:
        """Memories whose `vec` is not of the new dimension (erased ones have no hash at all). A
        change of model at the same dimension looks the same here: the run's snapshot covers it."""
        vk = VectorstoreKeys(vectorstore)
        pipe = self.client.pipeline(transaction=False)
        for mid in memory_ids:
            pipe.hstrlen(vk.memory(mid), "vec")
        return [mid for mid, n in zip(memory_ids, pipe.execute(), strict=True) if int(n) != 4 * dimensions]

    def finish_restage(self, pipe: Any, vectorstore: str, staged: int) -> None:
        """Nothing to swap: the vectors were written in place."""

    def discard_restage(self, vectorstore: str) -> None:
        """Nothing staged apart from the memories themselves."""

    def nearest(
        self, vectorstore: str, vectors: list[bytes], k: int, where: MemoryFilter, memories: int | None = None
    ) -> list[list[Hit]]:
        """`memories` is not needed: every KNN query runs alike."""
        if not vectors:
            return []
        return self._search(vectorstore, vectors, k, where, state=False)[1]

    def related(
        self,
        vectorstore: str,
        vectors: list[bytes],
        k: int,
        limit: int,
        where: MemoryFilter,
        memories: int | None = None,
    ) -> Related:
        """Two round trips: the state (read first, so a commit after it is noticed) with each vector's
        KNN query, then the best memories' records (FT.SEARCH may RETURN only fields the index
        declares on ElastiCache and MemoryDB, and `attrs` is not one). The queries count only when
        the vectorstore has memories of the vectors' dimension (else the caller sees the mismatch).
        `memories` is not needed: every KNN query runs alike."""
        state, hits = self._search(vectorstore, vectors, k, where, state=True)
        assert state is not None
        if not state.memories or (state.dimensions and vectors and 4 * state.dimensions != len(vectors[0])):
            return Related(state, [], 0)
        ranked, distinct = rank(hits, limit)
        pipe = self.client.pipeline(transaction=False)
        read = self.queue_get(pipe, vectorstore, [mid for mid, _ in ranked])
        found = read(iter(pipe.execute() if ranked else []))
        return Related(state, [(found[mid], sim) for mid, sim in ranked if mid in found], distinct)

    def _search(
        self, vectorstore: str, vectors: list[bytes], k: int, where: MemoryFilter, *, state: bool
    ) -> tuple[MemoryState | None, list[list[Hit]]]:
        try:
            return self._pipeline(vectorstore, vectors, k, where, state)
        except _IndexGone:  # dropped (or flushed) since this process made sure of it: once more
            self._exists = False
            return self._pipeline(vectorstore, vectors, k, where, state)

    def _pipeline(
        self, vectorstore: str, vectors: list[bytes], k: int, where: MemoryFilter, state: bool
    ) -> tuple[MemoryState | None, list[list[Hit]]]:
        """The memory state (when asked), FT.INFO (when due) and one KNN query per vector, in one
        round trip: the state and each vector's hits."""
        self.ensure(self.dimensions)
        text = query(vectorstore, k, where)
        pipe = self.client.pipeline(transaction=False)
        read_state = queue_state(pipe, vectorstore) if state else None
        check = time.monotonic() >= self._ready_until
        if check:  # in the same round trip as the queries
            pipe.execute_command("FT.INFO", self.index)
        for vector in vectors:
            pipe.execute_command(
                "FT.SEARCH", self.index, text, "PARAMS", "2", "B", vector,
                "RETURN", "1", "dist", "LIMIT", "0", str(int(k)), "DIALECT", "2",
            )  # fmt: skip
        try:
            replies = iter(pipe.execute(raise_on_error=True))
        except redis.ResponseError as exc:
            message = str(exc).lower()
            if missing_index(exc):
                raise _IndexGone(str(exc)) from None
            if "backfill" in message or "loading" in message:
                raise IndexUnavailable(f"the search index is being rebuilt: {exc}") from None
            if "dim" in message or ("vector" in message and "size" in message):
                raise DimensionMismatch(str(exc)) from None
            raise
        seen = read_state(replies) if read_state else None
        if check and not self._seen(next(replies)):
            raise IndexUnavailable("the search index is being built: answers would miss memories")
        return seen, [_hits(reply) for reply in replies]
