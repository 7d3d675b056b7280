"""The two memory-index backends answer the same nearest-neighbour questions alike: the same
memories, written through the commit function on Redis 8 (vector sets) and on the Query Engine
(Redis Stack), give the same top-k for the same queries and filters (near-ties allowed)."""

from __future__ import annotations

import random
from array import array
from typing import Any

import pytest

from memproc import settings as settings_module
from memproc.dal import connection
from memproc.dal.connection import get_store
from memproc.dal.memory_index import DimensionMismatch, MemoryFilter
from memproc.dal.memory_index.base import rank
from memproc.dal.reads import memory_state
from tests.environment import point_at
from tests.memory_helpers import add_memories, memory_records
from tests.redis_server import RedisServer

DIMS = 64
K = 8
LIMIT = 20  # related memories: fewer than the queries' distinct neighbours, so the ranking decides
TIE = 0.005  # similarity
FILTERS = {
    "none": MemoryFilter(),
    "type": MemoryFilter(memory_type="goal"),
    "session": MemoryFilter(session_id="s-1"),
    "time": MemoryFilter(valid_from_min=1_700_000_100.0, valid_from_max=1_700_000_200.0),
    "all": MemoryFilter(memory_type="fact", session_id="s-2", valid_from_min=1_700_000_000.0),
}


def vectors(rng: random.Random, n: int) -> list[list[float]]:
    return [[rng.gauss(0, 1) for _ in range(DIMS)] for _ in range(n)]


def top_k(monkeypatch: pytest.MonkeyPatch, server: RedisServer, backend: str) -> dict[str, list[list[Any]]]:
    """The same 90 memories (three sessions at three times, two types) on one backend, then each
    query's hits as (similarity, text), best first."""
    point_at(monkeypatch, server, backend)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")  # the model the commits record; no LLM is called
    settings_module.get_settings.cache_clear()
    rng = random.Random(7)
    for i, session in enumerate(("s-0", "s-1", "s-2")):
        for memory_type in ("fact", "goal"):
            add_memories(
                "user1",
                session,
                vectors(rng, 15),
                memory_type=memory_type,
                valid_from=1_700_000_000.0 + 100 * i,
            )
    texts = {mid: record["text"] for mid, record in memory_records("user1").items()}
    assert len(texts) == 90
    queries = [array("f", v).tobytes() for v in vectors(rng, 6)]
    index = get_store().index
    out = {
        name: [[(sim, texts[mid]) for mid, sim in hits] for hits in index.nearest("user1", queries, K, f)]
        for name, f in FILTERS.items()
    }
    related = index.related("user1", queries, K, LIMIT, MemoryFilter())
    assert related.state == memory_state(get_store(), "user1")
    assert related.state.memories == 90
    # The one-call lookup is the per-query lookup, ranked, with the records as stored.
    ranked, distinct = rank(index.nearest("user1", queries, K, MemoryFilter()), LIMIT)
    assert [(m.memory_id, sim) for m, sim in related.memories] == ranked
    assert [m.text for m, _ in related.memories] == [texts[mid] for mid, _ in ranked]
    assert related.distinct == distinct > LIMIT
    # Across backends, with every memory a neighbour of every query: a memory's best similarity is
    # then the same on both, near-ties aside (with k = 8, a memory at one query's k-th place on one
    # backend only may have its best similarity from another query there).
    related = index.related("user1", queries, 90, LIMIT, MemoryFilter())
    assert related.distinct == 90
    out["related"] = [[(sim, f"{m.memory_type}: {m.text}") for m, sim in related.memories]]  # one per memory
    return out


def agree(a: list[tuple[float, str]], b: list[tuple[float, str]]) -> None:
    """The same memories in the same order, but for near-ties: Redis 8 quantises vectors (Q8), so
    its similarities differ from the exact FLOAT32 ones by up to TIE; memories that close may swap
    places, and ones that close to the k-th similarity may be in one top-k and not the other."""
    sa, sb = {t: x for x, t in a}, {t: x for x, t in b}
    for text in sa.keys() ^ sb.keys():
        assert abs((sa[text] if text in sa else sb[text]) - min(a[-1][0], b[-1][0])) <= TIE, text
    common = [t for _, t in a if t in sb]
    assert all(abs(sa[t] - sb[t]) <= TIE for t in common)
    order_b = [t for _, t in b if t in sa]
    for i, (x, y) in enumerate(zip(common, order_b, strict=True)):
        assert x == y or abs(sa[x] - sa[y]) <= 2 * TIE, (i, x, y)


def test_both_backends_return_the_same_top_k_for_the_same_memories(
    monkeypatch: pytest.MonkeyPatch, redis8_server: RedisServer, stack_server: RedisServer
) -> None:
    try:
        vectorset = top_k(monkeypatch, redis8_server, "vectorset")
        search = top_k(monkeypatch, stack_server, "search")
    finally:
        settings_module.get_settings.cache_clear()
        connection._store.cache_clear()
    for name in FILTERS:
        for a, b in zip(vectorset[name], search[name], strict=True):
            assert len(a) == len(b) == K, name
            agree(a, b)
    ((a,), (b,)) = vectorset["related"], search["related"]
    assert len(a) == len(b) == LIMIT
    agree(a, b)


def test_a_query_vector_of_another_size_is_a_dimension_mismatch_on_either_backend(r: Any) -> None:
    add_memories("user1", "s-0", vectors(random.Random(3), 2))
    index = get_store().index
    with pytest.raises(DimensionMismatch):
        index.nearest("user1", [array("f", [1.0] * (DIMS // 2)).tobytes()], K, MemoryFilter())
