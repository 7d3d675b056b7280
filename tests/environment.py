"""Pointing memproc's process environment at one test server: what the fixtures of conftest.py
(and a test that switches servers itself) share."""

from __future__ import annotations

import sys

import pytest

from memproc import settings as settings_module
from memproc.dal import connection
from tests.redis_server import Engine, RedisServer

# The engine that serves each memory-index backend in `make test`.
BACKEND_ENGINE: dict[str, Engine] = {"vectorset": "redis8", "search": "stack"}
# The backend memproc uses on each engine. Valkey 9 has no search module here: the tests that run on
# it name `search` so no probe runs, and write no memory that would need the index.
ENGINE_BACKEND: dict[Engine, str] = {"redis8": "vectorset", "stack": "search", "valkey9": "search"}


def point_at(monkeypatch: pytest.MonkeyPatch, server: RedisServer, backend: str) -> None:
    """Process environment for handlers: `server`, flushed, with `backend`, an offline LLM and
    fresh caches (settings, clients)."""
    server.client().flushall()
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("VECTOR_BACKEND", backend)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "64")
    monkeypatch.setenv("AUTH_MODE", "NONE")  # the auth tests set their mode themselves
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()
    new_containers()


def new_containers() -> None:
    """Each test is a new Lambda container: the process-queue handler (imported once per session by
    memproc_local) keeps the processor it built, with the clients of the server it was built for."""
    for name, module in list(sys.modules.items()):
        if name.startswith("_memproc_local_") and getattr(module, "_processor", None) is not None:
            module._processor = None
