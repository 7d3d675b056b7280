"""The Query-Engine memory index itself (Redis Stack's RediSearch here; valkey-search on ElastiCache
and MemoryDB): when its index is created. Each test pins a defect found when the whole suite first
ran on this backend."""

from __future__ import annotations

from typing import Any

import redis

from memproc import keys
from memproc.dal import connection
from tests.memory_helpers import drain, store
from tests.redis_server import RedisServer

INDEX = keys.search_index(64)
CHAT = "user: I prefer green tea over coffee.\nuser: I live in Porto.\n"
MORE = "user: I adopted a cat named Miso.\nuser: I want to learn the cello.\n"


def info(r: redis.Redis) -> dict[str, Any]:
    reply = r.execute_command("FT.INFO", INDEX)
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))


def new_process() -> None:
    """What another Lambda process sees: new clients, and nothing it learnt about the index."""
    connection._store.cache_clear()


def test_the_index_exists_before_the_first_memory_is_written_and_is_created_once(
    search_env: RedisServer, search_fake_llm: Any
) -> None:
    r = search_env.client()
    r.config_resetstat()
    store("user1", CHAT, "s-1")
    assert drain().processed == 1
    assert r.execute_command("FT._LIST") == [INDEX]
    memories = r.zcard(keys.VectorstoreKeys("user1").memory_index)
    assert memories > 0 and int(info(r)["num_docs"]) == memories  # every memory indexed as written
    new_process()  # a second processor: it asks FT.INFO first and creates nothing
    store("user1", MORE, "s-2")
    assert drain().processed == 1
    seen = search_env.commands_seen()
    assert seen["FT.CREATE"] == 1 and seen["FT.INFO"] >= 2
    assert int(info(r)["num_docs"]) == r.zcard(keys.VectorstoreKeys("user1").memory_index) > memories
