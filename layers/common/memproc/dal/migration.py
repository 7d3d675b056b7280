"""Data access for `memproc migrate`: a vectorstore read from one store and written into another.

Memories go through the library's `export_memories` / `import_memories` (each backend's layout
stays in memories.lua). Every other key of a vectorstore has one shape in both backends and is
copied key by key, by type, with its absolute expiry: not with DUMP/RESTORE, whose payloads Redis 8,
Redis Stack 7.4 and Valkey do not all accept from each other (RDB versions differ). Ids come from
the per-vectorstore sorted-set indexes, never SCAN; each batch is one pipelined round trip per side.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from memproc.dal.connection import Store
from memproc.dal.functions import fcall
from memproc.dal.replies import as_text
from memproc.keys import DEAD, VECTORSTORES, VectorstoreKeys

KeyType = Literal["hash", "string", "set", "zset"]
Row = tuple[str, float]  # (member, score) of a sorted-set index


def _b(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


@dataclass(frozen=True)
class KeyValue:
    """One key as read: its name, type, content (None: no such key) and expiry in epoch ms."""

    key: str
    kind: KeyType
    content: Any
    expires_ms: int | None


def page(store: Store, key: str, after: Row | None, count: int) -> list[Row]:
    """The next `count` members of index `key` after `after`, ascending. By rank while the cursor's
    member is still there; else by score from the cursor's, skipping the members of that score that
    sort before it (Redis orders equal scores by member), so a removed member loses nothing."""
    if after is None:
        return _rows(store.r.zrange(key, 0, count - 1, withscores=True))
    member, score = after
    rank: Any = store.r.zrank(key, member)
    if rank is not None:
        return _rows(store.r.zrange(key, int(rank) + 1, int(rank) + count, withscores=True))
    offset = 0
    while True:
        rows = _rows(
            store.r.zrange(key, repr(score), "+inf", byscore=True, offset=offset, num=count, withscores=True)
        )
        kept = [(m, s) for m, s in rows if s > score or m > member]
        if kept or len(rows) < count:
            return kept
        offset += count


def _rows(reply: Any) -> list[Row]:
    return [(as_text(m), float(s)) for m, s in reply]


def export_memories(
    store: Store, vectorstore: str, backend: str, ids: list[str]
) -> list[tuple[str, bytes] | None]:
    """Per id its stored JSON and FP32 vector, or None when it is gone (one read-only call)."""
    if not ids:
        return []
    replies = fcall(store.rb, "export_memories", [], [vectorstore, backend, *ids], readonly=True)
    out: list[tuple[str, bytes] | None] = []
    for text, blob in replies:
        out.append(None if not text or not blob else (as_text(text), _b(blob)))
    return out


def import_memories(
    store: Store, vectorstore: str, backend: str, dimensions: int, rows: list[tuple[str, float, str, bytes]]
) -> int:
    """Write (id, index score, JSON, FP32 vector) rows as `backend` stores memories; overwrites."""
    if not rows:
        return 0
    args: list[Any] = [vectorstore, backend, dimensions]
    for memory_id, score, text, blob in rows:
        args += [memory_id, repr(score), text, blob]
    return int(fcall(store.rb, "import_memories", [], args))


def attrs_of(text: str) -> dict[str, Any]:
    """A stored record's attributes ({} when it is not a JSON object)."""
    try:
        attrs = json.loads(text)
    except ValueError:
        return {}
    return attrs if isinstance(attrs, dict) else {}


def versions_of(attrs: dict[str, Any]) -> list[str]:
    """The stored versions (vectors of replaced texts) a memory's history entries name."""
    history = attrs.get("history")
    entries = history if isinstance(history, list) else []
    return [e["version"] for e in entries if isinstance(e, dict) and isinstance(e.get("version"), str)]


def read_versions(store: Store, vk: VectorstoreKeys, names: list[str]) -> dict[str, bytes]:
    """The stored vectors of texts that updates replaced, by the `version` their history entries
    name (one round trip; the hash is shared by the vectorstore's memories, so it is read by field)."""
    if not names:
        return {}
    values = store.rb.hmget(vk.memory_versions, names)
    return {name: _b(v) for name, v in zip(names, values, strict=True) if v is not None}


def write_versions(store: Store, vk: VectorstoreKeys, versions: dict[str, bytes]) -> None:
    if versions:
        store.rb.hset(vk.memory_versions, mapping=versions)  # type: ignore[arg-type]


def category_scores(store: Store, vk: VectorstoreKeys, typed: list[tuple[str, str]]) -> list[float | None]:
    """Per (memory id, memory type) its score in that type's category listing (one round trip)."""
    if not typed:
        return []
    pipe = store.r.pipeline(transaction=False)
    for mid, memory_type in typed:
        pipe.zscore(vk.category_index(memory_type), mid)
    return [None if s is None else float(s) for s in pipe.execute()]


def category_counts(store: Store, vk: VectorstoreKeys, types: tuple[str, ...]) -> dict[str, int]:
    pipe = store.r.pipeline(transaction=False)
    for memory_type in types:
        pipe.zcard(vk.category_index(memory_type))
    return {t: int(n) for t, n in zip(types, pipe.execute(), strict=True)}


_READ = {"hash": "HGETALL", "string": "GET", "set": "SMEMBERS"}


def queue_read(pipe: Any, specs: list[tuple[str, KeyType]]) -> Callable[[Iterator[Any]], list[KeyValue]]:
    """Queue the reads of keys of known types (content, then PEXPIRETIME) on a bytes pipeline; the
    returned function turns the replies, in order, into KeyValues."""
    for key, kind in specs:
        if kind == "zset":
            pipe.zrange(key, 0, -1, withscores=True)
        else:
            pipe.execute_command(_READ[kind], key)
        pipe.pexpiretime(key)

    def parse(replies: Iterator[Any]) -> list[KeyValue]:
        out = []
        for key, kind in specs:
            content, expires = next(replies), next(replies)
            if kind == "hash" and isinstance(content, list):  # HGETALL unparsed: a flat list
                content = dict(zip(content[::2], content[1::2], strict=True))
            if not content:
                content = None
            out.append(KeyValue(key, kind, content, int(expires) if int(expires) > 0 else None))
        return out

    return parse


def read_keys(store: Store, specs: list[tuple[str, KeyType]]) -> list[KeyValue]:
    pipe = store.rb.pipeline(transaction=False)
    parse = queue_read(pipe, specs)
    return parse(iter(pipe.execute()))


def queue_write(pipe: Any, values: list[KeyValue]) -> None:
    """Queue exact copies: each key replaced by the content read (deleted where the source has
    none), with the same absolute expiry. Only ever aimed at keys this migration owns."""
    for v in values:
        pipe.delete(v.key)
        if v.content is None:
            continue
        if v.kind == "hash":
            pipe.hset(v.key, mapping=v.content)
        elif v.kind == "string":
            pipe.set(v.key, v.content)
        elif v.kind == "set":
            pipe.sadd(v.key, *v.content)
        else:
            pipe.zadd(v.key, dict(v.content))
        if v.expires_ms:
            pipe.pexpireat(v.key, v.expires_ms)


def queue_index(pipe: Any, key: str, rows: list[Row]) -> None:
    if rows:
        pipe.zadd(key, dict(rows))


def dead_scores(store: Store, vk: VectorstoreKeys, ids: list[str]) -> list[tuple[float | None, float | None]]:
    """Per raw id its score in the vectorstore's dead set and in the global one (None: not dead)."""
    if not ids:
        return []
    pipe = store.r.pipeline(transaction=False)
    pipe.zmscore(vk.dead, ids)
    pipe.zmscore(DEAD, [vk.raw(i) for i in ids])
    mine, everyone = pipe.execute()
    return list(zip(mine, everyone, strict=True))


def queue_dead(
    pipe: Any, vk: VectorstoreKeys, raw_id: str, mine: float | None, everyone: float | None
) -> None:
    """A dead letter stays one on the target: visible in both dead sets, redrivable."""
    if mine is not None:
        pipe.zadd(vk.dead, {raw_id: mine})
    if everyone is not None:
        pipe.zadd(DEAD, {vk.raw(raw_id): everyone})


@dataclass(frozen=True)
class VectorstoreState:
    """What decides whether a vectorstore may move, and whether it changed while it did."""

    config: dict[str, str]
    counters: dict[str, str]
    memories: int
    raws: int
    sessions: int
    pending: int
    inflight: int
    dead: int
    listed_at: float | None  # its score in memproc:vectorstores
    bare_key: bool  # the vector-set key at the bare name exists
    migration: dict[str, str]

    @property
    def exists(self) -> bool:
        return bool(
            self.config or self.memories or self.raws or self.sessions or self.listed_at or self.bare_key
        )

    def fingerprint(self) -> str:
        """Changes when a session is received, processed, dead-lettered or erased."""
        seq = self.config.get("memory_seq", "0")
        got = self.counters.get("received", "0")
        return (
            f"seq={seq} received={got} memories={self.memories} raws={self.raws} "
            f"sessions={self.sessions} dead={self.dead}"
        )


def state(store: Store, vk: VectorstoreKeys) -> VectorstoreState:
    """One round trip."""
    pipe = store.r.pipeline(transaction=False)
    pipe.hgetall(vk.config)
    pipe.hgetall(vk.counters)
    for key in (vk.memory_index, vk.raw_index, vk.session_index, vk.pending, vk.inflight, vk.dead):
        pipe.zcard(key)
    pipe.zscore(VECTORSTORES, vk.name)
    pipe.exists(vk.vectorset)
    pipe.hgetall(vk.migration)
    cfg, counters, memories, raws, sessions, pending, inflight, dead, listed, bare, migration = pipe.execute()
    return VectorstoreState(
        dict(cfg), dict(counters), int(memories), int(raws), int(sessions), int(pending), int(inflight),
        int(dead), float(listed) if listed is not None else None, bool(bare), dict(migration),
    )  # fmt: skip


def save_progress(store: Store, vk: VectorstoreKeys, fields: dict[Any, Any], *, reset: bool = False) -> None:
    pipe = store.r.pipeline(transaction=False)
    if reset:
        pipe.delete(vk.migration)
    pipe.hset(vk.migration, mapping=fields)
    pipe.execute()


def set_config(store: Store, vk: VectorstoreKeys, fields: dict[Any, Any]) -> None:
    store.r.hset(vk.config, mapping=fields)


def list_vectorstore(store: Store, vk: VectorstoreKeys, score: float) -> None:
    store.r.zadd(VECTORSTORES, {vk.name: score})


def missing_members(store: Store, key: str, members: list[str]) -> list[str]:
    """Which of `members` the sorted set lacks (one round trip)."""
    if not members:
        return []
    scores = store.r.zmscore(key, members)
    return [m for m, s in zip(members, scores, strict=True) if s is None]


def existing(store: Store, keys: list[str]) -> list[bool]:
    """Which keys exist (one round trip)."""
    pipe = store.r.pipeline(transaction=False)
    for key in keys:
        pipe.exists(key)
    return [bool(n) for n in pipe.execute()]


def vector_count(store: Store, vk: VectorstoreKeys) -> int:
    """Elements of the vectorstore's vector set (0 when there is none)."""
    return int(store.r.execute_command("VCARD", vk.vectorset) or 0)


def _connection_kwargs(store: Store) -> dict[str, Any]:
    pool = getattr(store.r, "connection_pool", None)  # a cluster client has one pool per node
    return dict(pool.connection_kwargs) if pool is not None else {}


def server_identity(store: Store) -> tuple[str, int]:
    """(run_id, db): equal for two clients of one keyspace. A server that reports no run_id (a
    cluster client answers per node) is named by its address instead, never taken for another."""
    info = store.r.info("server")
    run_id = str(info.get("run_id") or "") if isinstance(info, dict) else ""
    return run_id or address(store), int(_connection_kwargs(store).get("db", 0) or 0)


def address(store: Store) -> str:
    """host:port/db of the store, without credentials: how a migration names its source."""
    kw = _connection_kwargs(store)
    if "path" in kw:
        return f"unix:{kw['path']}/{kw.get('db', 0)}"
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


def server_time(store: Store) -> float:
    seconds, micros = store.r.time()
    return float(seconds) + float(micros) / 1e6
