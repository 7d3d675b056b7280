"""Redis key names: the one place that knows them, and the validation that guards them.

Per-vectorstore keys carry the name inside braces (a Redis Cluster hash tag) so every key of one
vectorstore, and its vector set at the bare name, share a hash slot.
"""

from __future__ import annotations

import re

RAW_MEMORY_QUEUE = "RAW_MEMORY_QUEUE"
INFLIGHT = "{RAW_MEMORY_QUEUE}:inflight"
DEAD = "{RAW_MEMORY_QUEUE}:dead"
# Vectorstores with waiting items, score = when each is next due a turn (round-robin fairness).
READY = "{RAW_MEMORY_QUEUE}:ready"
PROCESSOR_STATUS = "background_processor:status"
# Every vectorstore ever written, so scheduled work can visit them without SCAN.
VECTORSTORES = "memproc:vectorstores"

VECTORSTORE_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9._:@+=-]{1,256}$")
RAW_ID_RE = re.compile(r"^[0-9a-f]{32}$")
MEMORY_ID_RE = re.compile(r"^[0-9a-f]{32}-[0-9]{1,5}$")
RESERVED_NAMES = frozenset({RAW_MEMORY_QUEUE})


def vectorstore_problem(name: str) -> str | None:
    """Why ``name`` cannot be a vectorstore name, or None when it can."""
    if not VECTORSTORE_NAME_RE.fullmatch(name):
        return "vectorstore_name must match ^[A-Za-z0-9._-]{1,128}$"
    if set(name) <= {"."}:
        return "vectorstore_name cannot consist only of dots"
    if name in RESERVED_NAMES:
        return f"vectorstore_name {name!r} is reserved"
    return None


def processing_stats(date: str) -> str:
    return f"processing_stats:{date}"


class VectorstoreKeys:
    """The keys of one (already validated) vectorstore."""

    __slots__ = ("name", "tag")

    def __init__(self, name: str) -> None:
        self.name = name
        self.tag = "{" + name + "}"

    @property
    def vectorset(self) -> str:
        return self.name

    def raw(self, raw_id: str) -> str:
        return f"{self.tag}:raw_memory:{raw_id}"

    def session_summary(self, session_id: str) -> str:
        return f"{self.tag}:session_summary:{session_id}"

    def session_memories(self, session_id: str) -> str:
        return f"{self.tag}:session_memories:{session_id}"

    def session_raws(self, session_id: str) -> str:
        return f"{self.tag}:session_raws:{session_id}"

    def dedupe(self, digest: str) -> str:
        return f"{self.tag}:dedupe:{digest}"

    def daily_stats(self, date: str) -> str:
        return f"{self.tag}:processing_stats:{date}"

    @property
    def raw_index(self) -> str:
        return f"{self.tag}:raw_index"

    @property
    def session_index(self) -> str:
        return f"{self.tag}:session_index"

    @property
    def memory_index(self) -> str:
        return f"{self.tag}:memory_index"

    @property
    def pending(self) -> str:
        return f"{self.tag}:pending"

    @property
    def inflight(self) -> str:
        return f"{self.tag}:inflight"

    @property
    def dead(self) -> str:
        return f"{self.tag}:dead"

    @property
    def config(self) -> str:
        return f"{self.tag}:config"

    @property
    def counters(self) -> str:
        return f"{self.tag}:counters"

    @property
    def cleanup(self) -> str:
        """Cursors of the cleanup passes (memproc.lua `cleanup`)."""
        return f"{self.tag}:cleanup"


def memory_id(raw_id: str, position: int) -> str:
    """Memory ids derive from (raw id, position), so a retry rewrites rather than adds."""
    return f"{raw_id}-{position}"
