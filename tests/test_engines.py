"""What the test harness guarantees about each engine the product must run on.

Redis 8, Valkey 9 (ElastiCache / MemoryDB), Redis Stack with RediSearch (the FT.* query engine
those services offer) and one-node clusters (MemoryDB's shape) start from provisioned binaries and
answer what later tests will build on. Whether memproc's own library works on each is not pinned
here: that is the library's business, probed with MEMPROC_TEST_ENGINE / MEMPROC_TEST_CLUSTER.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from memproc.dal.functions import LIBRARY, LIBRARY_VERSION
from tests.redis_server import RedisServer

# engine -> (INFO server_name, major version)
EXPECTED = {"redis8": ("redis", 8), "valkey9": ("valkey", 9), "stack": ("redis", 7)}
SERVERS = ["redis8_server", "valkey_server", "stack_server", "cluster_server", "valkey_cluster_server"]
CLUSTERS = ["cluster_server", "valkey_cluster_server"]


def _as_dict(reply: Any) -> dict[Any, Any]:
    """A map reply as redis-py gives it under either protocol: a dict, or a flat RESP2 list."""
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))


@pytest.mark.parametrize("fixture", SERVERS)
def test_each_engine_starts_and_reports_its_version(request: pytest.FixtureRequest, fixture: str) -> None:
    server: RedisServer = request.getfixturevalue(fixture)
    name, major = EXPECTED[server.engine]
    assert server.server_name == name
    seen = int(server.version.split(".")[0])
    assert (seen >= major) if server.engine == "redis8" else (seen == major)
    assert server.client().ping()


@pytest.mark.parametrize("fixture", ["valkey_server", "valkey_cluster_server"])
def test_the_harness_sees_valkey_commands_as_redis_ones(request: pytest.FixtureRequest, fixture: str) -> None:
    """commands_seen() and requests() read INFO commandstats and MONITOR, which Valkey formats
    as Redis does."""
    server: RedisServer = request.getfixturevalue(fixture)
    r = server.client()
    r.ping()  # the connection's handshake (HELLO, CLIENT ...) before the block
    before = server.commands_seen().get("set", 0)
    with server.requests() as seen:
        r.set("harness-probe", "1")
    assert seen == ["SET"]
    assert server.commands_seen()["set"] == before + 1


def test_valkey_loads_the_function_library_and_has_no_vector_sets(valkey_server: RedisServer) -> None:
    r = valkey_server.client()
    assert r.function_load(LIBRARY, replace=True) == f"memproc_{LIBRARY_VERSION}"
    (lib,) = r.function_list(library=f"memproc_{LIBRARY_VERSION}")
    assert len(_as_dict(lib)["functions"]) == LIBRARY.count("register_function")
    # Vector sets are Redis 8's; on Valkey the memory index needs another backend.
    with pytest.raises(redis.ResponseError, match="unknown command"):
        r.execute_command("VADD", "probe", "VALUES", 1, 1, "a")


@pytest.mark.parametrize("fixture", CLUSTERS)
def test_a_one_node_cluster_owns_every_slot(request: pytest.FixtureRequest, fixture: str) -> None:
    server: RedisServer = request.getfixturevalue(fixture)
    info = server.client().cluster("INFO")
    assert info["cluster_state"] == "ok"
    assert int(info["cluster_slots_assigned"]) == 16384
    rc = server.cluster_client()
    assert len(rc.get_nodes()) == 1
    names = [f"probe:{i}" for i in range(50)]  # spread over many slots
    assert len({rc.keyslot(n) for n in names}) > 1
    for n in names:
        rc.set(n, n)
    assert [rc.get(n) for n in names] == names


# Functions of one engine-level probe library: 0 declared keys, keys touched in one slot, in two
# slots, and in two slots with the flag that allows it.
PROBE_LIBRARY = """#!lua name=memproc_cluster_probe
redis.register_function('one_slot', function(keys, argv)
  redis.call('SET', 'probe-a', 1); return redis.call('INCR', 'probe-a') end)
redis.register_function('two_slots', function(keys, argv)
  redis.call('SET', 'probe-a', 1); return redis.call('SET', 'probe-b', 1) end)
redis.register_function{function_name = 'two_slots_flagged', flags = {'allow-cross-slot-keys'},
  callback = function(keys, argv) redis.call('SET', 'probe-a', 1); return redis.call('SET', 'probe-b', 1) end}
"""


@pytest.mark.parametrize("fixture", CLUSTERS)
def test_fcall_without_declared_keys_via_redis_cluster(request: pytest.FixtureRequest, fixture: str) -> None:
    """redis-py sends an FCALL without keys to a random primary (here the only one). The engine
    lets a function touch undeclared keys of one slot, refuses keys of several slots unless the
    function carries allow-cross-slot-keys."""
    server: RedisServer = request.getfixturevalue(fixture)
    rc: RedisCluster = server.cluster_client()
    assert rc.keyslot("probe-a") != rc.keyslot("probe-b")
    rc.function_load(PROBE_LIBRARY, replace=True)
    assert rc.fcall("one_slot", 0) == 2
    with pytest.raises(redis.ResponseError, match="do not hash to the same slot"):
        rc.fcall("two_slots", 0)
    assert rc.fcall("two_slots_flagged", 0) == "OK"
    # memproc's library loads on the cluster; its heartbeat touches one key and so runs.
    rc.function_load(LIBRARY, replace=True)
    assert rc.fcall(f"heartbeat_{LIBRARY_VERSION}", 0, 60, "probe", "", "1", "") is not None


def test_stack_has_the_query_engine_with_knn(stack_server: RedisServer) -> None:
    r = stack_server.client(decode=False)
    modules = {m[b"name"] for m in r.module_list()}
    assert b"search" in modules
    r.execute_command(
        "FT.CREATE", "idx", "ON", "HASH", "PREFIX", 1, "p:",
        "SCHEMA", "v", "VECTOR", "HNSW", 6, "TYPE", "FLOAT32", "DIM", 4, "DISTANCE_METRIC", "COSINE",
        "t", "TAG",
    )  # fmt: skip

    def blob(*xs: float) -> bytes:
        return struct.pack("<4f", *xs)

    r.hset("p:1", mapping={"v": blob(1, 0, 0, 0), "t": "a"})
    r.hset("p:2", mapping={"v": blob(1, 0, 0, 0), "t": "b"})  # as close, other tag: filtered out
    r.hset("p:3", mapping={"v": blob(1, 1, 0, 0), "t": "a"})
    r.hset("p:4", mapping={"v": blob(0, 0, 1, 0), "t": "a"})
    res = r.execute_command(
        "FT.SEARCH", "idx", "(@t:{a})=>[KNN 3 @v $B]", "PARAMS", 2, "B", blob(1, 0.1, 0, 0),
        "SORTBY", "__v_score", "RETURN", 1, "__v_score", "DIALECT", 2,
    )  # fmt: skip
    if isinstance(res, dict):  # RESP3
        total, ids = res[b"total_results"], [d[b"id"] for d in res[b"results"]]
    else:
        total, ids = res[0], res[1::2]
    assert total == 3
    assert ids == [b"p:1", b"p:3", b"p:4"]
