"""Redis key names: the one place that spells them, for Python and for the Lua library.

Per-vectorstore keys carry the name inside braces (a Redis Cluster hash tag) so every key of one
vectorstore, and its vector set at the bare name, share a hash slot. The Lua library gets its key
builders from `lua_header()`, generated from the tables below, so the two sides cannot drift apart.
"""

from __future__ import annotations

RAW_MEMORY_QUEUE = "RAW_MEMORY_QUEUE"
INFLIGHT = "{RAW_MEMORY_QUEUE}:inflight"
DEAD = "{RAW_MEMORY_QUEUE}:dead"
# Vectorstores with waiting items, score = when each is next due a turn (round-robin fairness).
READY = "{RAW_MEMORY_QUEUE}:ready"
PROCESSOR_STATUS = "background_processor:status"
# Live processors (drains), score = when each drops out unless it beats again: fan-out counts them.
PROCESSORS = "{RAW_MEMORY_QUEUE}:processors"
# Every vectorstore ever written, so scheduled work can visit them without SCAN.
VECTORSTORES = "memproc:vectorstores"
# Where the scheduled cleanup run resumes in VECTORSTORES.
CLEANUP_SCHEDULE = "memproc:cleanup"
PROCESSING_STATS_PREFIX = "processing_stats:"
# Memories as hashes for the Query Engine: memproc:mem:{<vs>}:<id>, in the vectorstore's hash slot.
MEMORY_PREFIX = "memproc:mem:"
# The shared LLM rate limiter, one per limited model: memproc:ratelimit:{<scope>} (a zset of bookings)
# and memproc:ratelimit:{<scope>}:tokens (a hash of their tokens), in one hash slot.
RATE_LIMIT_PREFIX = "memproc:ratelimit:"


def search_index(dimensions: int) -> str:
    """The deployment's one Query-Engine index (ElastiCache and MemoryDB allow about ten)."""
    return f"memproc:idx:{dimensions}"


# Global keys by the name the Lua library knows them by.
GLOBAL_KEYS: dict[str, str] = {
    "QUEUE": RAW_MEMORY_QUEUE,
    "INFLIGHT": INFLIGHT,
    "DEAD": DEAD,
    "READY": READY,
    "STATUS": PROCESSOR_STATUS,
    "PROCESSORS": PROCESSORS,
    "VECTORSTORES": VECTORSTORES,
}

# Per-vectorstore keys: builder name -> what follows "{<vs>}:". A trailing ":" means the key takes
# an id (`raw("9b2e…")` is "{<vs>}:raw_memory:9b2e…").
VECTORSTORE_KEYS: dict[str, str] = {
    "raw": "raw_memory:",
    "session_summary": "session_summary:",
    "session_memories": "session_memories:",
    "session_raws": "session_raws:",
    # A session's unfinished submissions in submission order: only the first may be claimed.
    "session_queue": "session_queue:",
    "dedupe": "dedupe:",
    "daily_stats": "processing_stats:",
    "raw_index": "raw_index",
    "session_index": "session_index",
    "memory_index": "memory_index",
    # "<memory id>:<seq>" -> the FP32 vector of a text an update replaced (named by its history entry).
    "memory_versions": "memory_versions",
    # memory_index split by memory type (same members and scores): hierarchy's `category` filter.
    "category_index": "category_index:",
    "pending": "pending",
    "inflight": "inflight",
    "dead": "dead",
    "config": "config",
    "counters": "counters",
    "cleanup": "cleanup",
    # Progress of `memproc migrate` into this store (phase, cursor, the source it copies).
    "migration": "migration",
    # A vector set being filled by `memproc reembed`, swapped in when it is complete.
    "reembed": "reembed",
    "reembed_todo": "reembed_todo",  # the memory listing as that run found it
    # Raw id -> session id of every unfinished submission (to find its session queue).
    "queued_sessions": "queued_sessions",
}


def rate_limit(scope: str) -> tuple[str, str]:
    """The limiter's two keys for a scope such as ``chat:gpt-4o-mini``: its bookings and their tokens.
    Braces in a model name would move the hash tag, so they are dropped."""
    tagged = RATE_LIMIT_PREFIX + tag(scope.replace("{", "").replace("}", ""))
    return tagged, tagged + ":tokens"


def tag(name: str) -> str:
    return "{" + name + "}"


def processing_stats(date: str) -> str:
    return PROCESSING_STATS_PREFIX + date


class VectorstoreKeys:
    """The keys of one (already validated) vectorstore: `vk.raw(id)`, `vk.pending`, ..."""

    __slots__ = ("name", "tag")

    def __init__(self, name: str) -> None:
        self.name = name
        self.tag = tag(name)

    def _key(self, kind: str, item: str = "") -> str:
        return f"{self.tag}:{VECTORSTORE_KEYS[kind]}{item}"

    @property
    def vectorset(self) -> str:
        return self.name

    def raw(self, raw_id: str) -> str:
        return self._key("raw", raw_id)

    def session_summary(self, session_id: str) -> str:
        return self._key("session_summary", session_id)

    def session_memories(self, session_id: str) -> str:
        return self._key("session_memories", session_id)

    def session_raws(self, session_id: str) -> str:
        return self._key("session_raws", session_id)

    def session_queue(self, session_id: str) -> str:
        return self._key("session_queue", session_id)

    def dedupe(self, digest: str) -> str:
        return self._key("dedupe", digest)

    def daily_stats(self, date: str) -> str:
        return self._key("daily_stats", date)

    def memory(self, memory_id: str) -> str:
        """A memory's hash when the memory index is the Query Engine."""
        return f"{MEMORY_PREFIX}{self.tag}:{memory_id}"

    @property
    def raw_index(self) -> str:
        return self._key("raw_index")

    @property
    def session_index(self) -> str:
        return self._key("session_index")

    @property
    def memory_index(self) -> str:
        return self._key("memory_index")

    def category_index(self, memory_type: str) -> str:
        return self._key("category_index", memory_type)

    @property
    def memory_versions(self) -> str:
        return self._key("memory_versions")

    @property
    def pending(self) -> str:
        return self._key("pending")

    @property
    def inflight(self) -> str:
        return self._key("inflight")

    @property
    def dead(self) -> str:
        return self._key("dead")

    @property
    def config(self) -> str:
        return self._key("config")

    @property
    def counters(self) -> str:
        return self._key("counters")

    @property
    def queued_sessions(self) -> str:
        return self._key("queued_sessions")

    @property
    def reembed(self) -> str:
        return self._key("reembed")

    @property
    def reembed_todo(self) -> str:
        return self._key("reembed_todo")

    @property
    def cleanup(self) -> str:
        """Cursors of the cleanup passes (the library's `cleanup`)."""
        return self._key("cleanup")

    @property
    def migration(self) -> str:
        """Progress of a migration into this store (`memproc migrate`)."""
        return self._key("migration")


def memory_id(raw_id: str, position: int) -> str:
    """Memory ids derive from (raw id, position), so a retry rewrites rather than adds."""
    return f"{raw_id}-{position}"


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def lua_header(categories: tuple[str, ...] = ()) -> str:
    """Lua locals for every key name: `QUEUE`, ..., and `k.raw(vs, id)`, `k.pending(vs)`, ...; and
    `CATEGORIES` (and the set `CATEGORY`), the memory types that have a category index."""
    lines = [f"local {name} = {_lua_string(value)}" for name, value in GLOBAL_KEYS.items()]
    # Literal tables: a library's load runs without ipairs and the other standard functions.
    lines.append("local CATEGORIES = {" + ", ".join(_lua_string(c) for c in categories) + "}")
    lines.append("local CATEGORY = {" + ", ".join(f"[{_lua_string(c)}] = true" for c in categories) + "}")
    lines.append(f"local STATS_PREFIX = {_lua_string(PROCESSING_STATS_PREFIX)}")
    lines.append("local k = {}")
    for name, suffix in VECTORSTORE_KEYS.items():
        if suffix.endswith(":"):
            lines.append(
                f"function k.{name}(vs, id) return '{{' .. vs .. {_lua_string('}:' + suffix)} .. id end"
            )
        else:
            lines.append(f"function k.{name}(vs) return '{{' .. vs .. {_lua_string('}:' + suffix)} end")
    close = _lua_string("}:")
    lines.append(
        f"function k.mem(vs, id) return {_lua_string(MEMORY_PREFIX + '{')} .. vs .. {close} .. id end"
    )
    # A raw key back to (vectorstore, id): the queue sets hold raw keys.
    lines.append(
        "local function split_raw(key) return string.match(key, "
        + _lua_string("^{(.-)}:" + VECTORSTORE_KEYS["raw"].replace("-", "%-") + "(.+)$")
        + ") end"
    )
    return "\n".join(lines) + "\n"
