"""The memory index's reply handling on the hot path reads replies exactly as before: VSIM replies
into hits and the ranking of several queries' hits, against the earlier code on generated
replies (either protocol, bytes or text, ties, NaN, errors)."""

from __future__ import annotations

import math
from operator import itemgetter
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from memproc.dal.memory_index.base import Hit, rank
from memproc.dal.memory_index.vectorset import _ok, vsim_hits
from memproc.dal.replies import as_text


def old_vsim_hits(reply: Any) -> list[Hit]:
    if isinstance(_ok(reply), dict):
        pairs: Any = reply.items()
    else:
        flat = iter(reply or ())
        pairs = zip(flat, flat, strict=True)
    hits = [(as_text(mid), 2 * float(score) - 1) for mid, score in pairs]
    hits.sort(key=itemgetter(1), reverse=True)
    return hits


def old_rank(hits: list[list[Hit]], limit: int) -> tuple[list[Hit], int]:
    best: dict[str, float] = {}
    for query_hits in hits:
        for memory_id, sim in query_hits:
            best[memory_id] = max(sim, best.get(memory_id, -1.0))
    ranked = sorted(best, key=lambda memory_id: best[memory_id], reverse=True)[:limit]
    return [(memory_id, best[memory_id]) for memory_id in ranked], len(best)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "value", repr(fn(*args))  # repr: NaN equals NaN, 1 is not 1.0, b"a" is not "a"
    except Exception as exc:
        return "raised", (type(exc).__name__, str(exc))


ids = st.sampled_from(["m1", "m2", "m3", "m4", "é", ""]) | st.text(max_size=3)
scores = st.sampled_from([0.0, 0.5, 0.75, 1.0]) | st.floats(min_value=0, max_value=1) | st.just(math.nan)
odd_scores = (
    scores | st.integers(0, 1) | scores.map(lambda s: repr(s)) | scores.map(lambda s: repr(s).encode())
)
keys = ids | ids.map(str.encode)


class Map(dict[Any, Any]):
    """Not exactly a dict: taken the long way."""


replies = (
    st.dictionaries(ids, scores, max_size=8)
    | st.dictionaries(keys, odd_scores, max_size=8)
    | st.dictionaries(ids, scores, max_size=4).map(Map)
    | st.lists(st.tuples(keys, odd_scores), max_size=8).map(lambda pairs: [x for pair in pairs for x in pair])
    | st.lists(keys | odd_scores, max_size=5)  # odd lengths, ids where scores go
    | st.sampled_from(
        [None, [], {}, redis.ResponseError("ERR dimension mismatch"), redis.ResponseError("ERR x")]
    )
)


@settings(max_examples=800, deadline=None)
@given(reply=replies)
def test_vsim_hits_reads_replies_as_before(reply: Any) -> None:
    assert outcome(vsim_hits, reply) == outcome(old_vsim_hits, reply)


sims = (
    st.sampled_from([-1.0, -0.5, 0.0, -0.0, 0.5, 1.0])
    | st.floats(allow_nan=True, allow_infinity=False)
    | st.just(-2.0)
)


@settings(max_examples=800, deadline=None)
@given(hits=st.lists(st.lists(st.tuples(ids, sims), max_size=8), max_size=6), limit=st.integers(0, 12))
def test_rank_ranks_as_before(hits: list[list[Hit]], limit: int) -> None:
    """Ties in order of first appearance, a NaN or a similarity under -1 where it was."""
    assert outcome(rank, hits, limit) == outcome(old_rank, hits, limit)


def test_rank_keeps_ties_in_order_of_first_appearance() -> None:
    hits = [[("a", 0.5), ("b", 0.5)], [("c", 0.9), ("b", 0.7), ("a", 0.5)]]
    assert rank(hits, 3) == ([("c", 0.9), ("b", 0.7), ("a", 0.5)], 3)
    assert rank([[("x", 0.2)], [("y", 0.2)], [("x", 0.1)]], 5) == ([("x", 0.2), ("y", 0.2)], 2)


def test_vsim_hits_reads_either_protocol_best_first() -> None:
    assert vsim_hits({"far": 0.6, "near": 0.9}) == [("near", 0.8), ("far", pytest.approx(0.2))]
    assert vsim_hits([b"far", b"0.6", b"near", b"0.9"]) == [("near", 0.8), ("far", pytest.approx(0.2))]
