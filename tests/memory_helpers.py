"""Shared steps of the retrieval, retention and erasure tests: store through the API, process,
and snapshot what Redis holds so a test can prove an operation left other data untouched."""

from __future__ import annotations

import inspect
import json
import uuid
from array import array
from pathlib import Path
from typing import Any

import redis

from memproc import keys, submissions
from memproc.dal import queue, reads
from memproc.dal.connection import Store, get_store
from memproc.processor import build_processor
from memproc.schemas.requests import StoreRawRequest
from memproc.settings import Settings, get_settings, load_settings
from tests.api_client import call, mem_path


def store(
    vs: str, data: str, session_id: str | None = None, metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"session_data": data}
    if session_id:
        body["session_id"] = session_id
    if metadata:
        body["metadata"] = metadata
    res = call("POST", mem_path(vs, "/store_raw"), json_body=body)
    assert res.status == 202, res.body
    return dict(res.body)


def drain(**overrides: Any) -> Any:
    settings = load_settings(**overrides) if overrides else get_settings()
    return build_processor(settings).drain()


def commit_payload(dimensions: int = 64, backend: str | None = None) -> tuple[dict[str, Any], list[bytes]]:
    """What a processor would write for one new memory (the commit's payload and vector blobs), for
    the memory index memproc uses here unless `backend` names one."""
    payload = {
        "ops": [{"op": "add", "text": "The user erased this.", "memory_type": "fact", "confidence": 0.9,
                 "tags": [], "vector": 0}],
        "seen_seq": 0,
        "backend": backend or get_store().index.name,
        "valid_from": 1_700_000_000.0,
        "history_limit": 50,
        "summary": "late",
        "topics": [],
        "tokens_in": 1,
        "tokens_out": 1,
        "processed_length": 1,
        "processed_sha256": "0" * 64,
        "raw_retention": 30 * 86400,
        "session_retention": 365 * 86400,
        "embedding_model": "text-embedding-3-small",
        "dimensions": dimensions,
        "processing_ms": 1,
        "mode": "full",
    }  # fmt: skip
    return payload, [array("f", [1.0] + [0.0] * (dimensions - 1)).tobytes()]


def commit_ops(
    vs: str,
    session_id: str,
    ops: list[dict[str, Any]],
    vectors: list[list[float]],
    *,
    valid_from: float = 1_700_000_000.0,
    store: Store | None = None,
    settings: Settings | None = None,
) -> list[str]:
    """Memory operations committed as a processor would, with the caller's vectors and no LLM: one
    submission of `session_id`, claimed and committed (each op's `vector` numbers its vector). The
    ids of the memories it touched, in order."""
    store = store or get_store()
    settings = settings or get_settings()
    dims = len(vectors[0]) if vectors else settings.embedding_dimensions
    text = f"user: commit {uuid.uuid4().hex}"
    raw_id = submissions.submit(
        store, settings, vs, StoreRawRequest(session_data=text, session_id=session_id)
    ).raw_memory_id
    (item,) = queue.claim(store, settings, 1).items
    assert item.raw_id == raw_id
    payload, _ = commit_payload(dims, store.index.name)
    payload.update(
        ops=ops, seen_seq=reads.memory_state(store, vs).seq, valid_from=valid_from, processed_length=len(text)
    )
    if ops:
        store.index.ensure(dims)  # as the processor does before it commits
    result = queue.commit(store, item, payload, [array("f", v).tobytes() for v in vectors])
    assert result.outcome == "ok", result
    return list(result.memory_ids)


def add_memories(
    vs: str,
    session_id: str,
    vectors: list[list[float]],
    *,
    memory_type: str = "fact",
    valid_from: float = 1_700_000_000.0,
    store: Store | None = None,
    settings: Settings | None = None,
) -> list[str]:
    """New memories with the given vectors (texts "<vs>/<session> #i"), through `commit_ops`."""
    ops = [
        {"op": "add", "text": f"{vs}/{session_id} #{i}", "memory_type": memory_type, "confidence": 0.9,
         "tags": [], "vector": i}
        for i in range(len(vectors))
    ]  # fmt: skip
    return commit_ops(vs, session_id, ops, vectors, valid_from=valid_from, store=store, settings=settings)


def memory_records(vs: str, store: Store | None = None) -> dict[str, dict[str, Any]]:
    """Every memory of `vs` with its stored record (the JSON attributes, whole): ids from the
    vectorstore's memory index, records read with the commands memproc's memory index queues for
    them (VGETATTR or HGET, whichever backend runs). Index entries without a record are left out."""
    store = store or get_store()
    ids = store.r.zrange(keys.VectorstoreKeys(vs).memory_index, 0, -1)
    if not ids:
        return {}
    pipe = store.r.pipeline(transaction=False)
    parse = store.index.queue_get(pipe, vs, ids)
    replies = pipe.execute()
    found = parse(iter(replies))
    return {mid: json.loads(text) for mid, text in zip(ids, replies, strict=True) if mid in found}


def memory_key_pattern(vs: str) -> str:
    """The glob of `vs`'s memory hashes on the Query Engine (`{vs}` never matches `{vs0}`)."""
    return f"{keys.MEMORY_PREFIX}{{{vs}}}:*"


def memory_storage(r: redis.Redis, vs: str) -> list[str]:
    """The keys the engine keeps `vs`'s memories in, whatever the memory index zset says: the vector
    set at the bare name, or one Query-Engine hash per memory (SCAN: test-only)."""
    if get_store().index.name == "search":
        return sorted(r.scan_iter(match=memory_key_pattern(vs), count=1000))
    return [vs] if r.exists(vs) else []


def stored_memories(r: redis.Redis, vs: str) -> int:
    """How many memories the engine itself holds for `vs`: the vector set's cardinality, or the
    number of memory hashes."""
    if get_store().index.name == "search":
        return len(memory_storage(r, vs))
    return int(r.execute_command("VCARD", vs)) if r.exists(vs) else 0


def drop_memory_record(r: redis.Redis, vs: str, memory_id: str) -> None:
    """Remove one memory from the engine behind memproc's back (what a stray delete would leave:
    an index entry whose memory is gone)."""
    if get_store().index.name == "search":
        r.delete(keys.VectorstoreKeys(vs).memory(memory_id))
    else:
        r.execute_command("VREM", vs, memory_id)


GLOBAL_ZSETS = (keys.RAW_MEMORY_QUEUE, keys.INFLIGHT, keys.DEAD)


def _binary(r: redis.Redis) -> redis.Redis:
    kw = r.connection_pool.connection_kwargs
    return redis.Redis(host=kw.get("host", "127.0.0.1"), port=kw.get("port", 6379), db=kw.get("db", 0))


def value(rb: redis.Redis, key: bytes | str) -> tuple[Any, ...]:
    """A key's type, logical content and expiry (DUMP is not stable: hash tables rehash)."""
    kind = rb.type(key).decode()
    content: Any
    if kind == "string":
        content = rb.get(key)
    elif kind == "hash":
        content = rb.hgetall(key)
    elif kind == "set":
        content = sorted(rb.smembers(key))
    elif kind == "zset":
        content = rb.zrange(key, 0, -1, withscores=True)
    elif kind == "vectorset":
        names = sorted(rb.execute_command("VRANDMEMBER", key, rb.execute_command("VCARD", key)))
        content = [
            (n, rb.execute_command("VGETATTR", key, n), rb.execute_command("VEMB", key, n)) for n in names
        ]
    else:
        content = rb.dump(key)
    return kind, content, rb.pexpiretime(key)


def snapshot(r: redis.Redis, vs: str) -> dict[str, Any]:
    """Every key of vectorstore `vs` (type, content, expiry: its vector set or its memory hashes
    included) and its entries in the global sets.

    Test-only: uses SCAN, which no request path does. `{vs}:*` does not match `{vs0}:*`, so names
    that share a prefix stay apart.
    """
    rb = _binary(r)
    names = [k.decode() for k in rb.scan_iter(match=f"{{{vs}}}:*".encode(), count=1000)]
    names += [k.decode() for k in rb.scan_iter(match=memory_key_pattern(vs).encode(), count=1000)]
    if rb.exists(vs):
        names.append(vs)
    found: dict[str, Any] = {name: value(rb, name) for name in sorted(names)}
    prefix = "{" + vs + "}:"
    for z in GLOBAL_ZSETS:
        found[f"global {z}"] = sorted(
            (m, s) for m, s in r.zrange(z, 0, -1, withscores=True) if m.startswith(prefix)
        )
    found["global ready"] = r.zscore(keys.READY, vs)
    found["global vectorstores"] = r.zscore(keys.VECTORSTORES, vs)
    return found


def everything(r: redis.Redis) -> dict[bytes, Any]:
    """Every key in Redis (type, content, expiry): for 'nothing changed' assertions."""
    rb = _binary(r)
    return {k: value(rb, k) for k in sorted(rb.scan_iter(count=1000))}


def process_queue_handler(env: Any) -> Any:
    """The real process_queue handler with a processor built for this test's settings (the
    handler keeps one per container); `env` is the test's monkeypatch, which restores it."""
    from memproc_local.handlers import load_handler
    from memproc_local.routing import Route
    from tests.redis_server import ROOT

    fn = load_handler(
        Route("", "", "ProcessQueueFunction", Path("functions/process_queue"), "app.lambda_handler"), ROOT
    )
    get_settings.cache_clear()
    env.setitem(inspect.unwrap(fn).__globals__, "_processor", None)  # the module's, not a decorator's
    return fn
