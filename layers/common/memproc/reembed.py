"""Re-embedding a vectorstore with the configured provider (`memproc reembed <vs>`).

A vectorstore records the embedding model and dimension of its memories (`{vs}:config`), and
every later vector must match: a vectorstore first filled by the offline provider refuses the
sessions of a deployment that now embeds with OpenAI (store_raw answers 409 embedding_mismatch).
Re-embedding computes every memory's vector again with the configured provider, in batches,
through the memory index (a staged vector set for Redis 8, in place for the Query Engine), and
switches `{vs}:config` to the new model only when every memory has its new vector.

Progress is kept in `{vs}:config` (`reembed_model`, `reembed_dimensions`, `reembed_next`,
`reembed_done`) over a snapshot of the memory listing (`{vs}:reembed_todo`), so an interrupted
run resumes where it stopped; a run for another model starts over. While it runs, the
vectorstore still refuses new sessions (its config names the old model).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memproc.dal import reads
from memproc.dal.connection import Store
from memproc.dal.memory_index import SearchIndex
from memproc.errors import Conflict
from memproc.keys import VectorstoreKeys
from memproc.validation import require_vectorstore
from memproc.vectorstores import require_known

BATCH = 100


@dataclass(frozen=True)
class Progress:
    vectorstore: str
    model: str
    dimensions: int
    done: int  # memories with their new vector
    total: int  # memories in the vectorstore
    complete: bool
    previous: str = ""  # the model the vectorstore had ("" when it had none)


def reembed(
    store: Store,
    provider: Any,
    vectorstore: str,
    *,
    batch: int = BATCH,
    max_batches: int | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Progress:
    """Re-embed every memory of `vectorstore` with `provider`, resuming an interrupted run;
    `max_batches` stops early (complete=false), as an interruption would. A run walks a snapshot
    of the memory listing taken when it began, so erasures meanwhile cannot make it skip one."""
    vk = require_vectorstore(vectorstore)
    require_known(store, vk)
    model, dims = provider.embedding_model, int(provider.dimensions)
    index = store.index if store.index.name != "search" else SearchIndex(store.r, dims)
    state = reads.reembed_state(store, vk)
    previous = state.model or ""
    if state.target is None and state.model in (None, model) and state.dimensions in (None, dims):
        # Already this model (or no memory yet, so the first commit records the configured one).
        return Progress(vectorstore, model, dims, state.memories, state.memories, True, previous)
    if state.target != (model, dims):  # a first run, or one for another model: from the start
        index.discard_restage(vectorstore)
        reads.reembed_begin(store, vk, model, dims)
        start, done = 0, 0
    else:
        start, done = state.next, state.done
    if index.name == "search":
        index.ensure(dims)
    batches = 0
    while max_batches is None or batches < max_batches:
        ids = reads.reembed_todo(store, vk, start, batch)
        if not ids:
            return _finish(store, index, vk, Progress(vectorstore, model, dims, done, 0, False, previous))
        done += _embed(store, provider, index, vk, ids)
        start += len(ids)
        reads.reembed_step(store, vk, start, done)
        batches += 1
        if progress:
            progress(Progress(vectorstore, model, dims, done, state.memories, False, previous))
    return Progress(vectorstore, model, dims, done, state.memories, False, previous)


def _embed(store: Store, provider: Any, index: Any, vk: VectorstoreKeys, ids: list[str]) -> int:
    """One embeddings call for a batch of memories; how many got their new vector (erased ones
    are skipped)."""
    found = reads.records(store, vk, memory_ids=ids).memories
    texts = [(mid, found[mid].text) for mid in ids if mid in found]
    if not texts:
        return 0
    vectors, _ = provider.embed([text for _, text in texts])
    blobs = {mid: array("f", vector).tobytes() for (mid, _), vector in zip(texts, vectors, strict=True)}
    return int(index.restage(vk.name, blobs))


def _finish(store: Store, index: Any, vk: VectorstoreKeys, p: Progress) -> Progress:
    """Verify that every memory has its new vector (staged vectors of memories erased meanwhile are
    dropped), then switch the vectorstore to the new vectors and model in one transaction."""
    ids = reads.memory_ids(store, vk)
    missing = index.unstaged(vk.name, ids, p.dimensions)
    if missing:
        reads.reembed_begin(store, vk, p.model, p.dimensions)  # the next run starts over
        raise Conflict(
            f"re-embedding {vk.name!r} left {len(missing)} of {len(ids)} memories without a new vector "
            "(memories were added while it ran); run it again",
            code="reembed_incomplete",
        )
    reads.reembed_commit(
        store, vk, p.model, p.dimensions, lambda pipe: index.finish_restage(pipe, vk.name, len(ids))
    )
    return Progress(vk.name, p.model, p.dimensions, len(ids), len(ids), True, p.previous)
