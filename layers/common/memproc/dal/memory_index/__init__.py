"""The memory index: discrete memories with their vectors, in the engine the store offers.

`VECTOR_BACKEND=auto` picks the vector set where `VADD` answers (Redis 8) and the Query Engine where
`FT.SEARCH` does (ElastiCache for Valkey, MemoryDB, Redis Stack); `vectorset` / `search` force one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from memproc.dal.memory_index.base import (
    DimensionMismatch,
    Hit,
    IndexUnavailable,
    MemoryFilter,
    MemoryIndex,
    MemoryState,
    Related,
)
from memproc.dal.memory_index.search import SearchIndex
from memproc.dal.memory_index.vectorset import VectorSetIndex
from memproc.settings import ConfigurationError

if TYPE_CHECKING:
    from memproc.dal.connection import Store

__all__ = [
    "DimensionMismatch",
    "Hit",
    "IndexUnavailable",
    "MemoryFilter",
    "MemoryIndex",
    "MemoryState",
    "Related",
    "SearchIndex",
    "VectorSetIndex",
    "offers",
    "open_index",
]


def _answers(store: Store, *command: str) -> bool:
    """Whether the server knows the command (the probe key never exists)."""
    try:
        store.r.execute_command(*command)
    except redis.ResponseError as exc:
        if "unknown command" in str(exc).lower():
            return False
        raise
    return True


# The probe of each backend: a command only an engine with it answers (the probe key never exists).
PROBES: dict[str, tuple[str, ...]] = {"vectorset": ("VCARD", "memproc:probe"), "search": ("FT._LIST",)}


def offers(store: Store, backend: str) -> bool:
    """Whether the server can hold memories in `backend` (vector sets, or the Query Engine)."""
    return _answers(store, *PROBES[backend])


def open_index(store: Store) -> MemoryIndex:
    """The backend `store.vector_backend` names; for auto, the one the server answers to."""
    choice = store.vector_backend
    if choice == "auto":
        if offers(store, "vectorset"):
            choice = "vectorset"
        elif offers(store, "search"):
            choice = "search"
        else:
            raise ConfigurationError(
                "VECTOR_BACKEND=auto: this Redis has neither vector sets (VADD, Redis 8) nor the Query "
                "Engine (FT.SEARCH: ElastiCache for Valkey 8.2+, MemoryDB, Redis Stack); memories need one"
            )
    if choice == "search":
        return SearchIndex(store.r, store.dimensions)
    return VectorSetIndex(store.r)
