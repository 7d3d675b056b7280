"""The Redis function library (`dal/lua/*.lua`) and the one way to call it.

The library is one `FUNCTION LOAD` unit assembled from the generated key builders (`keys.lua_header`)
and the Lua sources, so every part shares the helpers. Function names carry the library's content
hash: a deploy with changed Lua loads its own library on first call and never calls an older one.
See: https://redis.io/docs/latest/develop/programmability/functions-intro/
"""

from __future__ import annotations

import hashlib
import threading
from importlib import resources
from typing import Any

import redis

from memproc.dal.batch import Client
from memproc.keys import lua_header
from memproc.records import MEMORY_TYPES

# One chunk: helpers first, then the functions that use them.
SOURCES = (
    "common.lua",
    "memories.lua",
    "related.lua",
    "queue.lua",
    "commit.lua",
    "erasure.lua",
    "cleanup.lua",
    "stats.lua",
    "ratelimit.lua",
    "migration.lua",
)


def _assemble() -> tuple[str, str]:
    folder = resources.files("memproc.dal").joinpath("lua")
    body = lua_header(MEMORY_TYPES) + "\n".join(folder.joinpath(name).read_text() for name in SOURCES)
    version = hashlib.sha256(body.encode()).hexdigest()[:12]
    return f"#!lua name=memproc_{version}\n" + body.replace("__VERSION__", version), version


LIBRARY, LIBRARY_VERSION = _assemble()
_load_lock = threading.Lock()


def load_library(client: redis.Redis) -> None:
    client.function_load(LIBRARY, replace=True)


def fcall(client: Client, name: str, keys: list[str], args: list[Any], *, readonly: bool = False) -> Any:
    """Call library function `name` (FCALL, or FCALL_RO so a read can run on a replica) as a batch
    of one (dal/batch.py: ~25 us less client CPU per call than redis-py's fcall); the first call against a
    server without this library version loads it."""
    command = ("FCALL_RO" if readonly else "FCALL", f"{name}_{LIBRARY_VERSION}", len(keys), *keys, *args)
    reply = _send(client, command)
    if isinstance(reply, redis.ResponseError) and "Function not found" in str(reply):
        with _load_lock:
            load_library(client)
        reply = _send(client, command)
    if isinstance(reply, redis.ResponseError):
        raise reply
    return reply


def _send(client: Client, command: tuple[Any, ...]) -> Any:
    batch = client.batch()
    batch.execute_command(*command)
    return batch.execute()[0]
