"""dal/batch.py: a batch's replies come back in order with error replies in place, as a pipeline's
would; a connection that dies mid-batch is retried by sending the whole batch again, a timeout is
not retried (the client's Retry policy); the pool neither loses a connection nor hands one out with
replies left unread; under RESP2 and RESP3, decoded or not."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis._parsers.hiredis import NOT_ENOUGH_DATA

from memproc import settings as settings_module
from memproc.dal import connection
from memproc.dal.batch import Client, held_connections
from memproc.dal.connection import get_store
from memproc.dal.memory_index.vectorset import vsim_hits
from tests.redis_server import RedisServer

pytestmark = pytest.mark.one_backend  # a batch never depends on the memory-index backend


def run(client: Client, *commands: tuple[Any, ...]) -> list[Any]:
    batch = client.batch()
    for command in commands:
        batch.execute_command(*command)
    return batch.execute()


def pool_state(client: redis.Redis) -> tuple[int, int]:
    """(connections the pool made, connections handed out and not given back)."""
    pool = client.connection_pool
    return pool._created_connections, len(pool._in_use_connections)  # type: ignore[attr-defined]


def test_an_error_reply_comes_back_in_its_commands_place(r: redis.Redis) -> None:
    client = get_store().r
    (own,) = run(client, ("CLIENT", "ID"))
    before = pool_state(client)
    stored, error, value = run(client, ("SET", "k", "v"), ("INCR", "k"), ("GET", "k"))
    assert (stored, value) == ("OK", "v")  # replies as the connection reads them: no callbacks
    assert isinstance(error, redis.ResponseError) and "not an integer" in str(error)
    assert run(client, ("CLIENT", "ID")) == [own]  # an error reply keeps the connection
    assert pool_state(client) == before


def test_a_connection_killed_mid_batch_is_sent_the_whole_batch_again(r: redis.Redis) -> None:
    client = get_store().r
    (own,) = run(client, ("CLIENT", "ID"))
    before = pool_state(client)
    # The server runs INCR, answers the kill of its own connection and closes it: GET never runs.
    kill = ("CLIENT", "KILL", "ID", own, "SKIPME", "no")
    assert run(client, ("INCR", "n"), kill, ("GET", "n")) == [2, 0, "2"]  # all three sent again
    assert run(client, ("CLIENT", "ID")) != [own]
    assert pool_state(client) == before


def test_a_connection_killed_between_batches_is_replaced(r: redis.Redis) -> None:
    client = get_store().r
    (own,) = run(client, ("CLIENT", "ID"))
    before = pool_state(client)
    assert r.client_kill_filter(_id=own) == 1
    assert run(client, ("SET", "k", "v"), ("GET", "k")) == ["OK", "v"]
    assert pool_state(client) == before


def test_a_connection_lost_again_on_the_retry_is_an_error_and_the_pool_keeps_it(r: redis.Redis) -> None:
    client = get_store().r
    run(client, ("PING",))
    before = pool_state(client)
    # Every attempt kills every normal connection, its own too, before PING's reply.
    with pytest.raises(redis.ConnectionError):
        run(client, ("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no"), ("PING",))
    assert pool_state(client) == before
    assert run(client, ("PING",)) == ["PONG"]


def test_a_timeout_is_not_retried_and_its_unread_replies_never_reach_another_batch(
    env: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    env.setenv("REDIS_SOCKET_TIMEOUT_SECONDS", "0.2")
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()
    client = get_store().r
    run(client, ("PING",))
    before = pool_state(client)
    with pytest.raises(redis.TimeoutError):
        run(client, ("INCR", "n"), ("BLPOP", "nothing", 1), ("PING",))
    assert r.get("n") == "1"  # sent once: a write in it may have run
    assert pool_state(client) == before
    assert run(client, ("ECHO", "next")) == ["next"]  # not BLPOP's late nil, nor the PONG


def test_a_thread_in_held_connections_keeps_one_connection_and_gives_it_back(r: redis.Redis) -> None:
    client = get_store().r
    run(client, ("PING",))
    created, in_use = pool_state(client)
    with held_connections():
        (own,) = run(client, ("CLIENT", "ID"))
        assert pool_state(client) == (created, in_use + 1)  # taken at the first batch, kept
        assert [run(client, ("CLIENT", "ID")) for _ in range(3)] == [[own]] * 3
        # A connection lost between batches: the next one reconnects on the same held connection.
        assert r.client_kill_filter(_id=own) == 1
        (again,) = run(client, ("CLIENT", "ID"))
        assert again != own
    assert pool_state(client) == (created, in_use)  # given back when the thread leaves
    assert run(client, ("CLIENT", "ID")) == [again]  # the pool's now, as any other


def test_a_held_connection_whose_batch_timed_out_never_answers_the_next_batch(
    env: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    env.setenv("REDIS_SOCKET_TIMEOUT_SECONDS", "0.2")
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()
    client = get_store().r
    with held_connections():
        run(client, ("PING",))
        with pytest.raises(redis.TimeoutError):
            run(client, ("BLPOP", "nothing", 1), ("PING",))
        assert run(client, ("ECHO", "next")) == ["next"]  # not BLPOP's late nil, nor the PONG


class Interrupted:
    """A connection's hiredis reader that gives its first reply, then is interrupted."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self._given = False

    def feed(self, *args: Any) -> None:
        self._reader.feed(*args)

    def gets(self) -> Any:
        if self._given:
            raise KeyboardInterrupt
        reply = self._reader.gets()
        self._given = reply is not NOT_ENOUGH_DATA
        return reply


def test_a_held_connection_whose_batch_was_interrupted_is_closed(r: redis.Redis) -> None:
    """Anything that stops a batch between its send and its last reply (here an exception raised
    from inside the read, as an interrupt would be) leaves its connection closed, not with replies
    unread that the thread's next batch would take for its own."""
    client = get_store().r
    with held_connections():
        (own,) = run(client, ("CLIENT", "ID"))
        batch = client.batch()
        batch.execute_command("PING")
        batch.execute_command("ECHO", "late")
        conn = client.connection_pool._in_use_connections.copy().pop()  # type: ignore[attr-defined]
        conn._parser._reader = Interrupted(conn._parser._reader)  # batches read from it (read_replies)
        with pytest.raises(KeyboardInterrupt):
            batch.execute()
        (again,) = run(client, ("CLIENT", "ID"))
        assert isinstance(again, int) and again != own  # a new connection's id, not "late"


def test_an_argument_redis_cannot_take_is_a_data_error(r: redis.Redis) -> None:
    with pytest.raises(redis.DataError):
        get_store().r.batch().execute_command("SET", "k", None)


@pytest.mark.parametrize("decode", [True, False], ids=["str", "bytes"])
@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_replies_are_a_pipelines_under_either_protocol(
    r: redis.Redis, redis_server: RedisServer, backend: str, protocol: int, decode: bool
) -> None:
    commands: list[tuple[Any, ...]] = [
        ("HSET", "h", "a", "1", "b", "2"),
        ("HMGET", "h", "a", "b", "c"),
        ("ZADD", "z", 1, "m"),
        ("ZCARD", "z"),
        ("INCR", "h"),
    ]
    if backend == "vectorset":
        commands += [
            ("VADD", "vs", "VALUES", 2, 1.0, 0.0, "near"),
            ("VADD", "vs", "VALUES", 2, 0.0, 1.0, "far"),
            ("VSIM", "vs", "VALUES", 2, 1.0, 0.1, "COUNT", 2, "WITHSCORES"),
        ]
    client = Client.from_url(redis_server.url, protocol=protocol, decode_responses=decode)
    replies = run(client, *commands)
    r.flushall()
    pipe = redis.Redis.from_url(redis_server.url, protocol=protocol, decode_responses=decode).pipeline(False)
    for command in commands:
        pipe.execute_command(*command)
    expected = pipe.execute(raise_on_error=False)
    assert [str(x) if isinstance(x, Exception) else x for x in replies] == [
        str(x) if isinstance(x, Exception) else x for x in expected
    ]
    assert isinstance(replies[4], redis.ResponseError)
    if backend == "vectorset":
        assert [mid for mid, _ in vsim_hits(replies[-1])] == ["near", "far"]


def test_a_replicas_refusal_fails_the_whole_batch_after_its_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    primary, replica = RedisServer(), RedisServer()
    try:
        replica.client().replicaof("127.0.0.1", primary.port)
        monkeypatch.setenv("REDIS_URL", replica.url)
        settings_module.get_settings.cache_clear()
        connection._store.cache_clear()
        client = get_store().r
        run(client, ("PING",))
        before = pool_state(client)
        # Not in place like other error replies: the retry goes to the primary found again (on a
        # store in cluster mode, see test_primary); a standalone replica refuses it again.
        with replica.requests() as seen, pytest.raises(redis.ReadOnlyError):
            run(client, ("GET", "k"), ("SET", "k", "v"), ("GET", "k"))
        # Sent again whole, once, on a new connection (MONITOR leaves refused commands out).
        assert [name for name in seen if name in ("GET", "SET")] == ["GET", "GET"] * 2
        assert pool_state(client) == before
        assert run(client, ("GET", "k")) == [None]
    finally:
        settings_module.get_settings.cache_clear()
        connection._store.cache_clear()
        replica.stop()
        primary.stop()
