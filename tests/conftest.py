"""Fixtures: a real Redis 8 server per test session (flushed per test) and settings pointing at it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from memproc import settings as settings_module
from memproc.dal import connection
from memproc.settings import Settings
from tests.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer) -> pytest.MonkeyPatch:
    """Process environment for handlers: this test's Redis, offline LLM, fresh caches."""
    redis_server.client().flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("EMBEDDING_DIMENSIONS", "64")
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
    fake_llm_server.embedding_for = None
    env.setenv("OPENAI_API_KEY", "test-key")
    env.setenv("OPENAI_BASE_URL", fake_llm_server.base_url)
    env.setenv("LLM_TIMEOUT_SECONDS", "2")
    settings_module.get_settings.cache_clear()
    return fake_llm_server
