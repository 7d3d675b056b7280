"""The memory index: discrete memories with their vectors, in a Redis 8 vector set named `<vs>`.

Each element's attributes are the memory's JSON record (`records.MemoryRecord`). Reads are queued
on a caller's pipeline so they share its round trip. Writes happen inside the commit function.
See: https://redis.io/docs/latest/develop/data-types/vector-sets/
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import redis

from memproc.dal.connection import Store
from memproc.records import MemoryRecord


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def queue_get(
    pipe: Any, vectorstore: str, memory_ids: list[str]
) -> Callable[[Iterator[Any]], dict[str, MemoryRecord]]:
    """Queue the reads of `memory_ids`; the returned function takes the pipeline's replies (in
    order) and gives the memories that still exist, in the order asked."""
    for mid in memory_ids:
        pipe.execute_command("VGETATTR", vectorstore, mid)

    def parse(replies: Iterator[Any]) -> dict[str, MemoryRecord]:
        out: dict[str, MemoryRecord] = {}
        for mid in memory_ids:
            record = MemoryRecord.from_attrs(mid, next(replies))
            if record is not None:
                out[mid] = record
        return out

    return parse


def queue_count(pipe: Any, vectorstore: str) -> None:
    pipe.execute_command("VCARD", vectorstore)


class DimensionMismatch(Exception):
    """The query vector does not fit the vectors the index holds."""


def nearest(
    store: Store, vectorstore: str, vector: bytes, k: int, filter_expression: str | None
) -> list[tuple[str, float]]:
    """The `k` nearest memories as (id, cosine similarity), best first; `filter_expression` is a
    vector-set FILTER built only from validated values (see `search.vsim_filter`)."""
    args: list[Any] = ["VSIM", vectorstore, "FP32", vector, "COUNT", k, "WITHSCORES"]
    if filter_expression:
        args += ["FILTER", filter_expression]
    try:
        flat = store.r.execute_command(*args) or []
    except redis.ResponseError as exc:
        if "dimension" in str(exc).lower():
            raise DimensionMismatch(str(exc)) from None
        raise
    # redis-py parses VSIM ... WITHSCORES into {id: score}; a raw reply is [id, score, ...].
    pairs = list(flat.items()) if isinstance(flat, dict) else list(zip(flat[::2], flat[1::2], strict=True))
    # VSIM's score is (1 + cosine) / 2.
    hits = [(_text(m), 2 * float(s) - 1) for m, s in pairs]
    return sorted(hits, key=lambda h: h[1], reverse=True)
