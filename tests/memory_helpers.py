"""Shared steps of the retrieval, retention and erasure tests: store through the API, process,
and snapshot what Redis holds so a test can prove an operation left other data untouched."""

from __future__ import annotations

import inspect
import json
from array import array
from pathlib import Path
from typing import Any

import redis

from memproc import keys
from memproc.processor import build_processor
from memproc.settings import get_settings, load_settings
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


def commit_payload(dimensions: int = 64) -> tuple[dict[str, Any], list[bytes]]:
    """What a processor would write for one new memory (the commit's payload and vector blobs)."""
    payload = {
        "ops": [{"op": "add", "text": "The user erased this.", "memory_type": "fact", "confidence": 0.9,
                 "tags": [], "vector": 0}],
        "seen_seq": 0,
        "backend": "vectorset",
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


def vector_elements(r: redis.Redis, vs: str) -> dict[str, dict[str, Any]]:
    """Every element of the vector set with its attributes."""
    if not r.exists(vs):
        return {}
    names = r.execute_command("VRANDMEMBER", vs, r.execute_command("VCARD", vs))
    pipe = r.pipeline(transaction=False)
    for n in names:
        pipe.execute_command("VGETATTR", vs, n)
    return {n: json.loads(a) for n, a in zip(names, pipe.execute(), strict=True)}


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
    """Every key of vectorstore `vs` (type, content, expiry) and its entries in the global sets.

    Test-only: uses SCAN, which no request path does. `{vs}:*` does not match `{vs0}:*`, so names
    that share a prefix stay apart.
    """
    rb = _binary(r)
    names = [k.decode() for k in rb.scan_iter(match=f"{{{vs}}}:*".encode(), count=1000)]
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
