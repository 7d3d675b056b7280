"""Fixtures: a real Redis 8 server per test session (flushed per test) and settings pointing at it;
the other engines (Valkey 9, Redis Stack with RediSearch, one-node clusters) per session, started
only when a test asks for them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis

from memproc import settings as settings_module
from memproc.dal import connection
from memproc.settings import Settings
from tests.redis_server import BINARY_ENV, Engine, RedisServer


def _serve(engine: Engine, cluster: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(engine=engine, cluster=cluster)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Redis 8, or what MEMPROC_TEST_ENGINE names (valkey9, stack), as a one-node cluster with
    MEMPROC_TEST_CLUSTER=1: the whole suite can be pointed at another engine in one go."""
    engine = cast(Engine, os.environ.get("MEMPROC_TEST_ENGINE", "redis8"))
    if engine not in BINARY_ENV:
        raise ValueError(f"MEMPROC_TEST_ENGINE={engine}: not one of {', '.join(BINARY_ENV)}")
    yield from _serve(engine, cluster=os.environ.get("MEMPROC_TEST_CLUSTER") == "1")


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[RedisServer]:
    yield from _serve("valkey9")


@pytest.fixture(scope="session")
def stack_server() -> Iterator[RedisServer]:
    yield from _serve("stack")


@pytest.fixture(scope="session")
def cluster_server() -> Iterator[RedisServer]:
    """Redis 8 as a one-node cluster."""
    yield from _serve("redis8", cluster=True)


@pytest.fixture(scope="session")
def valkey_cluster_server() -> Iterator[RedisServer]:
    """Valkey 9 as a one-node cluster, the shape of MemoryDB (always cluster mode, one shard)."""
    yield from _serve("valkey9", cluster=True)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> pytest.MonkeyPatch:
    """Process environment for handlers: this test's Redis, offline LLM, fresh caches."""
    redis_server.client().flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "64")
    monkeypatch.setenv("AUTH_MODE", "NONE")  # the auth tests set their mode themselves
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()
    yield monkeypatch
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()


@pytest.fixture
def settings(env: pytest.MonkeyPatch) -> Settings:
    return settings_module.get_settings()


@pytest.fixture
def r(env: pytest.MonkeyPatch, redis_server: RedisServer) -> redis.Redis:
    return redis_server.client()


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[Any]:
    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_llm(env: pytest.MonkeyPatch, fake_llm_server: Any) -> Any:
    """The fake OpenAI-compatible server, reset, with the environment pointing the real client at it."""
    fake_llm_server.clear_failures()
    fake_llm_server.latency = 0.0
    fake_llm_server.extraction_for = None
    fake_llm_server.reconciliation_for = None
    fake_llm_server.embedding_for = None
    env.setenv("OPENAI_API_KEY", "test-key")
    env.setenv("OPENAI_BASE_URL", fake_llm_server.base_url)
    env.setenv("LLM_TIMEOUT_SECONDS", "2")
    settings_module.get_settings.cache_clear()
    return fake_llm_server
