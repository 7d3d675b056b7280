"""GET search: semantic search over discrete memories, filtered inside the memory index.

Round trips: the vectorstore's state (embedding config, size, queue), the nearest-neighbour query,
the hits' records. The query embedding is skipped when there is nothing to search.
"""

from __future__ import annotations

from array import array
from typing import Any

from memproc.dal import reads
from memproc.dal.connection import Store
from memproc.dal.memory_index import DimensionMismatch, IndexUnavailable, MemoryFilter
from memproc.errors import Conflict, Unavailable
from memproc.keys import VectorstoreKeys
from memproc.mappers import search_result
from memproc.schemas.requests import SearchQuery
from memproc.schemas.responses import SearchFilters, SearchResponse, SearchResult
from memproc.settings import Settings
from memproc.timeutil import iso_datetime
from memproc.validation import require_vectorstore
from memproc.vectorstores import require_known

_provider: tuple[Settings, Any] | None = None
# Within this much cosine similarity a current memory ranks above a superseded one.
CURRENT_BONUS = 0.02


def embedding_provider(settings: Settings) -> Any:
    """The configured LLM provider for query embeddings, built once per process (the OpenAI
    client keeps its connection pool across warm invocations). Imported lazily: only search
    needs it, and the LLM package is the heaviest import of the layer."""
    global _provider
    if _provider is None or _provider[0] is not settings:
        from memproc.llm import make_provider

        _provider = (settings, make_provider(settings))
    return _provider[1]


def memory_filter(q: SearchQuery) -> MemoryFilter:
    """The query's filters, as typed values the memory index turns into its own expression. Dates
    filter by when the statement was made (the session's own time)."""
    return MemoryFilter(
        current_only=not q.include_superseded,
        memory_type=q.category,
        session_id=q.session_id,
        valid_from_min=q.min_score,
        valid_from_max=q.max_score,
    )


def _note(q: SearchQuery, state: reads.SearchState, found: bool) -> str | None:
    if found:
        return None
    if state.session_pending:
        return (
            f"session {q.session_id!r} has submissions queued or being processed; their memories "
            "become searchable once processed"
        )
    if state.waiting and not q.session_id:
        return (
            f"{state.waiting} submission(s) of this vectorstore are queued or being processed; their "
            "memories become searchable once processed"
        )
    return None


def search(
    store: Store, settings: Settings, vectorstore: str, q: SearchQuery, provider: Any = None
) -> SearchResponse:
    vk = require_vectorstore(vectorstore)
    state = reads.search_state(store, vk, q.session_id)
    if not state.memories and not state.waiting:
        require_known(store, vk)
    results: list[SearchResult] = []
    if state.memories:  # nothing to search yet: no embedding call either
        provider = provider or embedding_provider(settings)
        results = _nearest(store, vk, q, state, provider)
    return SearchResponse(
        vectorstore_name=vectorstore,
        query=q.q,
        k=q.k,
        filters=SearchFilters(
            session_id=q.session_id,
            category=q.category,
            start_date=iso_datetime(q.start_date),
            end_date=iso_datetime(q.end_date),
        ),
        results=results,
        count=len(results),
        pending_sessions=state.waiting,
        session_pending=state.session_pending,
        note=_note(q, state, bool(results)),
    )


def _nearest(
    store: Store, vk: VectorstoreKeys, q: SearchQuery, state: reads.SearchState, provider: Any
) -> list[SearchResult]:
    vectorstore = vk.name
    if state.dimensions and (
        state.dimensions != provider.dimensions or state.embedding_model != provider.embedding_model
    ):
        raise Conflict(
            f"vectorstore {vectorstore!r} holds {state.dimensions}-dimension vectors from embedding model "
            f"{state.embedding_model!r}, but this deployment embeds queries with "
            f"{provider.embedding_model!r} ({provider.dimensions} dimensions); set "
            "EMBEDDING_MODEL/EMBEDDING_DIMENSIONS to match",
            code="embedding_mismatch",
        )
    from memproc.llm import LLMError

    try:
        vectors, _ = provider.embed([q.q])
    except LLMError as exc:
        headers = {"Retry-After": str(max(1, int(exc.retry_after)))} if exc.retry_after else None
        raise Unavailable(
            f"the embedding service failed: {exc}", code="embedding_unavailable", headers=headers
        ) from None
    # Superseded memories are fetched too when asked for, and a current one ranks above a
    # superseded one on a near tie.
    try:
        (hits,) = store.index.nearest(
            vectorstore, [array("f", vectors[0]).tobytes()], q.k, memory_filter(q), state.memories
        )
    except DimensionMismatch as exc:
        raise Conflict(
            f"query vector does not fit vectorstore {vectorstore!r}: {exc}", code="embedding_mismatch"
        ) from None
    except IndexUnavailable as exc:
        raise Unavailable(
            str(exc), code="index_unavailable", headers={"Retry-After": str(exc.retry_after)}
        ) from None
    found = reads.records(store, vk, memory_ids=[mid for mid, _ in hits])
    ranked = sorted(
        ((found.memories[mid], sim) for mid, sim in hits if mid in found.memories),
        key=lambda hit: hit[1] + (CURRENT_BONUS if hit[0].status == "current" else 0.0),
        reverse=True,
    )
    return [search_result(m, sim) for m, sim in ranked]
