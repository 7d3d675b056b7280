"""Fixtures: the memory tests run once per memory-index backend (Redis 8 vector sets, and the Query
Engine of Redis Stack), on session-wide servers flushed per test; queue-only tests also run on
Valkey 9 and one-node clusters. Every engine is started once per session, when first asked for."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
import redis

from memproc import settings as settings_module
from memproc.dal import connection
from memproc.settings import Settings
from tests.environment import BACKEND_ENGINE, ENGINE_BACKEND, point_at
from tests.redis_server import BINARY_ENV, Engine, RedisServer


def _serve(engine: Engine, cluster: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(engine=engine, cluster=cluster)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis8_server() -> Iterator[RedisServer]:
    yield from _serve("redis8")


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


# The session fixture of each (engine, cluster) pair.
SERVER_FIXTURE: dict[tuple[Engine, bool], str] = {
    ("redis8", False): "redis8_server",
    ("valkey9", False): "valkey_server",
    ("stack", False): "stack_server",
    ("redis8", True): "cluster_server",
    ("valkey9", True): "valkey_cluster_server",
}


@dataclass(frozen=True)
class Target:
    """One server the memory tests run against, and the backend memproc is told to use there."""

    engine: Engine
    backend: str
    cluster: bool = False

    @property
    def id(self) -> str:
        suffix = "" if BACKEND_ENGINE[self.backend] == self.engine else f"-{self.engine}"
        return self.backend + suffix + ("-cluster" if self.cluster else "")


def memory_targets() -> list[Target]:
    """Both backends; MEMPROC_TEST_ENGINE (redis8, valkey9, stack) points the whole suite at one
    engine instead, MEMPROC_TEST_CLUSTER=1 at its one-node cluster."""
    cluster = os.environ.get("MEMPROC_TEST_CLUSTER") == "1"
    engine = os.environ.get("MEMPROC_TEST_ENGINE")
    if engine is None:
        return [Target(BACKEND_ENGINE[b], b, cluster) for b in ("vectorset", "search")]
    if engine not in BINARY_ENV:
        raise ValueError(f"MEMPROC_TEST_ENGINE={engine}: not one of {', '.join(BINARY_ENV)}")
    chosen = cast(Engine, engine)
    return [Target(chosen, ENGINE_BACKEND[chosen], cluster)]


def _server_of(request: pytest.FixtureRequest, engine: Engine, cluster: bool) -> Any:
    name = SERVER_FIXTURE.get((engine, cluster))
    if name is None:  # Redis Stack as a cluster: only through MEMPROC_TEST_CLUSTER
        server = RedisServer(engine=engine, cluster=True)
        request.addfinalizer(server.stop)
        return server
    return request.getfixturevalue(name)


_TARGETS = memory_targets()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test of `redis_server` runs once per target, but those marked one_backend (what they
    check never reaches the memory index) run on the first only: the matrix doubles what matters,
    not the suite."""
    if "redis_server" in metafunc.fixturenames:
        one = metafunc.definition.get_closest_marker("one_backend") is not None
        targets = _TARGETS[:1] if one else _TARGETS
        metafunc.parametrize(
            "redis_server", targets, ids=[t.id for t in targets], indirect=True, scope="session"
        )


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> RedisServer:
    """The server of one memory-index backend: every test that uses it runs once per backend."""
    target: Target = request.param
    server: RedisServer = _server_of(request, target.engine, target.cluster)
    return server


@pytest.fixture(scope="session")
def backend(redis_server: RedisServer) -> str:
    """VECTOR_BACKEND for `redis_server` (tests state per-backend expectations with it)."""
    return ENGINE_BACKEND[redis_server.engine]


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, backend: str
) -> Iterator[pytest.MonkeyPatch]:
    point_at(monkeypatch, redis_server, backend)
    yield monkeypatch
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()


# Queue-only tests (no memory index needed): Redis 8, Valkey 9 and both as one-node clusters.
QUEUE_SERVERS = {
    "redis8": ("redis8", False),
    "valkey9": ("valkey9", False),
    "redis8-cluster": ("redis8", True),
    "valkey9-cluster": ("valkey9", True),
}


@pytest.fixture(params=list(QUEUE_SERVERS))
def queue_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """A queue engine with the environment pointing at it (VECTOR_BACKEND=search on Valkey, so no
    probe runs: these tests never need the memory index)."""
    engine, cluster = QUEUE_SERVERS[request.param]
    server: RedisServer = _server_of(request, cast(Engine, engine), cluster)
    point_at(monkeypatch, server, ENGINE_BACKEND[server.engine])
    yield server
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()


@pytest.fixture
def search_env(monkeypatch: pytest.MonkeyPatch, stack_server: RedisServer) -> Iterator[RedisServer]:
    """The environment pointing at Redis Stack with VECTOR_BACKEND=search, for tests of the
    Query-Engine backend itself (whatever backends `redis_server` runs)."""
    point_at(monkeypatch, stack_server, "search")
    yield stack_server
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()


@pytest.fixture
def search_fake_llm(search_env: RedisServer, monkeypatch: pytest.MonkeyPatch, fake_llm_server: Any) -> Any:
    return _reset_fake(monkeypatch, fake_llm_server)


@pytest.fixture
def qr(queue_server: RedisServer) -> redis.Redis:
    """A plain client of the queue engine (on a one-node cluster every key is local to it)."""
    return queue_server.client()


@pytest.fixture
def queue_fake_llm(queue_server: RedisServer, monkeypatch: pytest.MonkeyPatch, fake_llm_server: Any) -> Any:
    """The fake LLM for processors on a queue engine: it extracts nothing, so no memory (and no
    memory index) is ever needed; everything else a session's processing does still happens."""
    fake = _reset_fake(monkeypatch, fake_llm_server)
    fake.extraction_for = lambda transcript: {"memories": [], "summary": "Nothing to remember.", "topics": []}
    return fake


@pytest.fixture
def settings(env: pytest.MonkeyPatch) -> Settings:
    return settings_module.get_settings()


@pytest.fixture
def r(env: pytest.MonkeyPatch, redis_server: RedisServer) -> redis.Redis:
    return redis_server.client()


@pytest.fixture
def fake() -> Iterator[Any]:
    """A fake OpenAI server of the test's own (its failures and records start empty)."""
    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def provider_factory(fake: Any) -> Iterator[Any]:
    """OpenAIProvider(settings) against `fake`: 64 dimensions, a 5 s timeout, 2 retries, unless the
    test's keyword arguments say otherwise; each is closed after the test."""
    from memproc.llm.openai_provider import OpenAIProvider
    from memproc.settings import load_settings

    created: list[OpenAIProvider] = []

    def factory(**overrides: Any) -> OpenAIProvider:
        values: dict[str, Any] = {
            "openai_api_key": "test",
            "openai_base_url": fake.base_url,
            "embedding_dimensions": 64,
            "llm_timeout_seconds": 5.0,
            "llm_max_retries": 2,
            **overrides,
        }
        provider = OpenAIProvider(load_settings(**values))
        created.append(provider)
        return provider

    yield factory
    for provider in created:
        provider.close()


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[Any]:
    from tests.fake_openai import FakeOpenAI

    with FakeOpenAI() as fake:
        yield fake


def _reset_fake(monkeypatch: pytest.MonkeyPatch, fake: Any) -> Any:
    fake.clear_failures()
    fake.latency = 0.0
    fake.extraction_for = None
    fake.reconciliation_for = None
    fake.embedding_for = None
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("LLM_TIMEOUT_SECONDS", "2")
    settings_module.get_settings.cache_clear()
    return fake


@pytest.fixture
def fake_llm(env: pytest.MonkeyPatch, fake_llm_server: Any) -> Any:
    """The fake OpenAI-compatible server, reset, with the environment pointing the real client at it."""
    return _reset_fake(env, fake_llm_server)
