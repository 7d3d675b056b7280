"""Reconciliation's lookup (`reconcile.find`): the memories a session is shown are the best of every
user turn's nearest neighbours, ranked as the per-turn lookups rank them, read with the vectorstore's
memory state in two round trips on either backend, the VSIMs of vector sets as plain commands (a
small set's on Redis's main thread)."""

from __future__ import annotations

import random
import re
from importlib import resources
from typing import Any

import pytest
import redis

from memproc import reconcile
from memproc.dal import reads
from memproc.dal.connection import get_store
from memproc.dal.functions import SOURCES
from memproc.dal.memory_index import MemoryFilter
from memproc.dal.memory_index.base import rank
from memproc.dal.memory_index.vectorset import NOTHREAD_MAX_MEMORIES
from memproc.keys import VectorstoreKeys
from memproc.llm import LLMProvider
from memproc.llm.schema import MAX_CANDIDATES
from memproc.processor import build_processor
from memproc.settings import get_settings
from tests.fake_openai import embedding
from tests.memory_helpers import add_memories
from tests.redis_server import RedisServer
from tests.round_trips import RoundTrips

DIMS = 64
TURNS = [
    "I keep bees in the garden.",
    "My sister Ana lives in Porto.",
    "I am learning the cello.",
    "We adopted a grey cat last spring.",
    "I cycle to the office on Fridays.",
    "My favourite food is mushroom risotto.",
]
TRANSCRIPT = "\n".join(f"user: {turn}\nassistant: Noted." for turn in TURNS)


def provider() -> LLMProvider:
    """The processor's provider: the real OpenAI client, against the fake server."""
    return build_processor(get_settings()).provider


def near(vector: list[float], rng: random.Random, noise: float) -> list[float]:
    return [x + rng.gauss(0, noise) for x in vector]


def test_a_session_is_shown_each_memorys_best_rank_over_its_turns(fake_llm: Any, r: redis.Redis) -> None:
    rng = random.Random(11)
    bees = embedding(TURNS[0], DIMS)
    vectors = [bees, bees, bees]  # three memories exactly as near the first turn: a tie
    vectors += [near(embedding(turn, DIMS), rng, 0.05 * (1 + i % 4)) for i, turn in enumerate(TURNS * 4)]
    vectors += [near([0.0] * DIMS, rng, 1.0) for _ in range(20)]
    ids = add_memories("user1", "s-0", vectors)
    store = get_store()

    lookup, _ = reconcile.find(store, provider(), "user1", TRANSCRIPT)

    assert len(lookup.vectors) == len(TURNS)
    per_turn = store.index.nearest(
        "user1", list(lookup.vectors), reconcile.NEIGHBOURS_PER_TURN, MemoryFilter()
    )
    ranked, distinct = rank(per_turn, MAX_CANDIDATES)
    assert distinct > MAX_CANDIDATES  # the ranking decides who is shown
    found = reads.records(store, VectorstoreKeys("user1"), memory_ids=[mid for mid, _ in ranked]).memories
    assert [c.memory for c in lookup.candidates] == [found[mid] for mid, _ in ranked]
    assert [c.short_id for c in lookup.candidates] == [f"m{i + 1}" for i in range(MAX_CANDIDATES)]
    assert {c.memory.memory_id for c in lookup.candidates[:3]} == set(ids[:3])
    assert lookup.truncated
    state = reads.memory_state(store, "user1")
    assert (lookup.seq, lookup.memories) == (state.seq, len(vectors))


def test_the_lookup_reads_the_state_it_is_fenced_by_with_the_memories(fake_llm: Any, r: redis.Redis) -> None:
    store = get_store()
    add_memories("user1", "s-0", [embedding(TURNS[1], DIMS)])
    read_with_input = reads.memory_state(store, "user1")
    add_memories("user1", "s-1", [embedding(TURNS[2], DIMS)])  # committed after the input was read

    lookup, _ = reconcile.find(store, provider(), "user1", TRANSCRIPT, state=read_with_input)

    now = reads.memory_state(store, "user1")
    assert now.seq > read_with_input.seq
    # The seq the commit is fenced by is the one the shown memories were read at: both are there.
    assert (lookup.seq, lookup.memories, len(lookup.candidates)) == (now.seq, 2, 2)
    trips = RoundTrips()
    trips.instrument(store.r)
    trips.instrument(store.rb)
    again, _ = reconcile.find(store, provider(), "user1", TRANSCRIPT, previous=lookup)
    assert again == lookup
    assert trips.count == 2, trips.kinds


@pytest.mark.parametrize("change", [{"embedding_model": "another-model"}, {"dimensions": "32"}])
def test_a_lookup_after_the_memories_were_embedded_otherwise_is_a_mismatch(
    fake_llm: Any, r: redis.Redis, change: dict[str, str]
) -> None:
    store = get_store()
    add_memories("user1", "s-0", [embedding(TURNS[0], DIMS)])
    first, _ = reconcile.find(store, provider(), "user1", TRANSCRIPT)
    assert len(first.candidates) == 1
    r.hset(VectorstoreKeys("user1").config, mapping=change)  # re-embedded since, as memproc reembed does
    with pytest.raises(reconcile.EmbeddingMismatch):
        reconcile.find(store, provider(), "user1", TRANSCRIPT, previous=first)


def test_the_library_never_calls_vsim() -> None:
    # A VSIM called from a script or function runs on Redis's main thread, blocking every other
    # client for the whole search; sent as a command it runs on the vector-set module's threads.
    lua = resources.files("memproc.dal").joinpath("lua")
    for name in SOURCES:
        code = re.sub(r"--[^\n]*", "", lua.joinpath(name).read_text())  # comments may name it
        assert "VSIM" not in code.upper(), name


def test_every_vsim_of_a_lookup_arrives_as_a_top_level_command(
    fake_llm: Any, r: redis.Redis, redis_server: RedisServer, backend: str
) -> None:
    add_memories("user1", "s-0", [embedding(turn, DIMS) for turn in TURNS])
    store = get_store()
    first, _ = reconcile.find(store, provider(), "user1", TRANSCRIPT)  # embeds once, loads the library
    before = redis_server.commands_seen().get("VSIM", 0)  # counts the calls inside Lua as well
    with redis_server.requests() as top_level:  # MONITOR: what clients sent, not what Lua called
        again, _ = reconcile.find(store, provider(), "user1", TRANSCRIPT, previous=first)
    assert again == first and len(first.candidates) == len(TURNS)
    vsim = len(TURNS) if backend == "vectorset" else 0
    assert top_level.count("VSIM") == redis_server.commands_seen().get("VSIM", 0) - before == vsim


@pytest.mark.parametrize("extra", [0, 1], ids=["small", "large"])
def test_a_small_sets_vsims_run_on_the_main_thread_and_a_large_sets_on_workers(
    fake_llm: Any, r: redis.Redis, redis_server: RedisServer, backend: str, extra: int
) -> None:
    # NOTHREAD up to NOTHREAD_MAX_MEMORIES memories (the count the caller read), threaded past it,
    # for the lookup (reconcile.find) and the backstop (reconcile.backstop) alike.
    rng = random.Random(5)
    vectors = [embedding(turn, DIMS) for turn in TURNS]
    vectors += [near([0.0] * DIMS, rng, 1.0) for _ in range(NOTHREAD_MAX_MEMORIES + extra - len(TURNS))]
    add_memories("user1", "s-0", vectors)
    store = get_store()
    first, _ = reconcile.find(store, provider(), "user1", TRANSCRIPT)  # embeds once, loads the library
    assert first.memories == NOTHREAD_MAX_MEMORIES + extra
    decision = reconcile.Decision(ops=[{"op": "add", "text": TURNS[0], "vector": 0}], texts=[TURNS[0]])
    with redis_server.requests(whole=True) as seen:
        again, _ = reconcile.find(store, provider(), "user1", TRANSCRIPT, previous=first)
        reconcile.backstop(
            store, "user1", decision, [first.vectors[0]], first, reconciles=True, threshold=0.99
        )
    assert again == first
    vsims = [command for command in seen if command.upper().startswith("VSIM ")]
    assert len(vsims) == (len(TURNS) + 1 if backend == "vectorset" else 0)
    on_main_thread = [command.endswith(" NOTHREAD") for command in vsims]
    assert on_main_thread == [not extra] * len(vsims)
