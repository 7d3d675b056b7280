"""memproc on a cluster-mode store of one shard, as MemoryDB runs, through an address that may be a
replica's: the connection finds the shard's primary, follows it through a failover (at most one
request answered 503 store_unavailable), and refuses a cluster of several shards at start-up.

Real two-node clusters (a primary owning every slot and its replica), started per test: each test
fails one over."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from memproc import settings as settings_module
from memproc.dal import connection
from memproc.dal.connection import get_store
from memproc.dal.primary import UnsupportedStoreError
from tests.api_client import call, mem_path
from tests.environment import ENGINE_BACKEND, point_at
from tests.memory_helpers import drain, store
from tests.redis_server import Engine, RedisServer

pytestmark = pytest.mark.timeout(90)

NOTHING = {"memories": [], "summary": "Nothing to remember.", "topics": []}


@pytest.fixture
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[RedisServer, RedisServer]]:
    """(primary of all 16384 slots, its replica), in one cluster."""
    engine: Engine = request.param
    primary = RedisServer(engine=engine, cluster=True)
    replica = RedisServer(engine=engine, cluster=True, slots=None)
    try:
        replica.replicate(primary)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


@pytest.fixture
def on_replica(
    pair: tuple[RedisServer, RedisServer], monkeypatch: pytest.MonkeyPatch, fake_llm_server: Any
) -> Iterator[tuple[RedisServer, RedisServer]]:
    """memproc's settings pointing at the replica (as a cluster endpoint may), the fake LLM
    extracting nothing: no memory index is needed, everything else a session's processing does
    still happens."""
    primary, replica = pair
    point_at(monkeypatch, primary, ENGINE_BACKEND[primary.engine])
    monkeypatch.setenv("REDIS_URL", replica.url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm_server.base_url)
    fake_llm_server.clear_failures()
    fake_llm_server.extraction_for = lambda transcript: NOTHING
    settings_module.get_settings.cache_clear()
    yield pair
    fake_llm_server.extraction_for = None
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()


def _store_read_and_drain(vs: str, sid: str, queued: int = 0) -> None:
    """A session stored, processed (with the `queued` ones before it) and read back: every write
    went to the primary."""
    store(vs, f"user: I keep bees ({sid}).\nassistant: Noted.", session_id=sid)
    assert drain().processed == 1 + queued
    res = call("GET", mem_path(vs, f"/session/{sid}"))
    assert res.status == 200, res.body
    assert res.body["summary"]["summary"] == NOTHING["summary"]


def _wait_role(server: RedisServer, role: str) -> None:
    """Poll ROLE until the node says `role` (bounded: a failover takes well under 10 s here)."""
    client = server.client()
    deadline = time.monotonic() + 10
    while client.execute_command("ROLE")[0] != role:
        assert time.monotonic() < deadline, f"{server.engine} on {server.port} never became {role}"
        time.sleep(0.02)


def _answers_after_failover(vs: str, n: int = 4) -> list[str]:
    """The answers of the next `n` store_raw requests after a failover (printed: the figure)."""
    answers = []
    for i in range(n):
        body = {"session_data": f"user: after the failover {i}\nassistant: ok", "session_id": f"after-{i}"}
        res = call("POST", mem_path(vs, "/store_raw"), json_body=body)
        answers.append("202" if res.status == 202 else str(res.error_code))
    print(f"answers after the failover: {answers}")
    return answers


@pytest.mark.parametrize("pair", ["valkey9", "redis8"], indirect=True)
def test_a_store_reached_through_a_replica_writes_to_the_primary_and_follows_a_failover(
    on_replica: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = on_replica
    _store_read_and_drain("bees", "s1")
    # The replica answers writes with MOVED: what was written went to the primary, and replicated.
    assert primary.client().dbsize() > 0
    replica.client().execute_command("CLUSTER", "FAILOVER")
    _wait_role(replica, "master")
    _wait_role(primary, "slave")
    answers = _answers_after_failover("bees")
    assert answers.count("store_unavailable") <= 1 and answers[-3:] == ["202"] * 3, answers
    _store_read_and_drain("bees", "s2", queued=answers.count("202"))


@pytest.mark.parametrize("pair", ["valkey9"], indirect=True)
def test_a_dead_primary_costs_at_most_one_request_once_its_replica_took_over(
    on_replica: tuple[RedisServer, RedisServer],
) -> None:
    primary, replica = on_replica
    _store_read_and_drain("bees", "s1")
    primary.proc.kill()
    primary.proc.wait()
    replica.client().execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    _wait_role(replica, "master")
    answers = _answers_after_failover("bees")
    assert answers.count("store_unavailable") <= 1 and answers[-3:] == ["202"] * 3, answers
    _store_read_and_drain("bees", "s2", queued=answers.count("202"))


def test_a_cluster_of_two_shards_is_refused_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    first = RedisServer(engine="valkey9", cluster=True, slots=(0, 8191))
    second = RedisServer(engine="valkey9", cluster=True, slots=(8192, 16383))
    try:
        first.meet(second)
        client = first.client()
        deadline = time.monotonic() + 10
        while int(client.cluster("INFO")["cluster_slots_assigned"]) < 16384:
            assert time.monotonic() < deadline, "the second shard's slots never reached the first"
            time.sleep(0.02)
        point_at(monkeypatch, first, "search")
        with pytest.raises(
            UnsupportedStoreError, match="cluster of 2 shards; memproc needs a cluster of one shard"
        ):
            get_store().r.ping()
    finally:
        settings_module.get_settings.cache_clear()
        connection._store.cache_clear()
        second.stop()
        first.stop()
