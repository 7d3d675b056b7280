"""dal/batch.py's read_replies: a batch's replies taken straight from the connection's hiredis reader
are what the loop of read_response it replaces gives (values, types, error replies in place as
redis-py's exceptions, RESP3 pushes skipped, refusals reported to the connection), under RESP2 and
RESP3, decoded or not, whatever the socket's read size; a connection that fails mid-read (closed by
the server, cut mid-reply, timed out) raises what read_response raises and is closed, so nothing
stale answers its next batch; and the redis-py internals it mirrors are pinned."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import hiredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis._parsers import _RESP2Parser, _RESP3Parser
from redis._parsers.hiredis import NOT_ENOUGH_DATA

from memproc.dal import batch as batch_module
from memproc.dal.batch import (
    VERIFIED_REDIS,
    Client,
    RefusalConnection,
    _read_each,
    read_replies,
    reads_directly,
)
from memproc.dal.primary import PrimaryConnection, PrimarySSLConnection
from tests.redis_server import RedisServer

pytestmark = pytest.mark.one_backend  # replies never depend on the memory-index backend

Read = Callable[[Any, int], list[Any]]


# The code path read_replies replaces, which stays its fallback: read_response per reply.
by_read_response = _read_each
READS = pytest.mark.parametrize("read", [read_replies, by_read_response], ids=["direct", "read_response"])


def exchange(conn: Any, commands: list[tuple[Any, ...]], read: Read = read_replies) -> list[Any]:
    conn.send_packed_command([b"".join(hiredis.pack_command(command) for command in commands)])
    return read(conn, len(commands))


def shape(reply: Any) -> Any:
    """A reply comparable with ==: types kept (True is not 1, b"1" not "1"), errors by class and text."""
    if isinstance(reply, Exception):
        return ("error", type(reply), str(reply))
    if isinstance(reply, list):
        return ("list", [shape(x) for x in reply])
    if isinstance(reply, dict):
        return ("dict", sorted((repr(shape(k)), shape(v)) for k, v in reply.items()))
    if isinstance(reply, set):
        return ("set", sorted(repr(shape(x)) for x in reply))
    return (type(reply), reply)


LIBRARY = """#!lua name=batchread
redis.register_function{function_name='br_nested', flags={'no-writes'}, callback=function()
  return {1, {'a', {2, false}, {}}, 'b'} end}
redis.register_function{function_name='br_error', flags={'no-writes'}, callback=function()
  return redis.error_reply('ERR from the library') end}
redis.register_function{function_name='br_inner_error', flags={'no-writes'}, callback=function()
  return {1, redis.error_reply('NOSCRIPT inner'), 'x'} end}
redis.register_function{function_name='br_full', flags={'no-writes'}, callback=function(keys, args)
  local full = redis.error_reply('ERR max number of clients reached')
  if args[1] == 'nested' then return {full} end
  return full end}
redis.register_function{function_name='br_resp3', flags={'no-writes'}, callback=function()
  redis.setresp(3)
  return {map={a={double=1.5}, b=true}, set={x=true}, big={big_number='123456789012345678901'}} end}
"""


def load_state(r: redis.Redis, payloads: list[str], vectors: bool) -> None:
    r.flushall()
    r.function_load(LIBRARY, replace=True)
    for i, payload in enumerate(payloads):
        r.set(f"p{i}", payload)
    r.set("word", "not a number")
    r.hset("h", mapping={"a": "1", "b": "é", "c": ""})
    r.sadd("s", "x", "y", "z")
    r.zadd("z", {"a": 1.5, "b": -2.0, "c": 1e300})
    r.rpush("long", *(f"item {i}" for i in range(3000)))
    if vectors:
        for i in range(12):
            r.execute_command(
                "VADD", "vs", "VALUES", 2, i / 12, 1 - i / 12, f"m{i}", "SETATTR", f'{{"n":{i}}}'
            )


def command_menu(payloads: int, vectors: bool) -> st.SearchStrategy[tuple[Any, ...]]:
    keys = st.sampled_from([f"p{i}" for i in range(payloads)] + ["missing"])
    fields = st.lists(st.sampled_from(["a", "b", "c", "nope"]), min_size=1, max_size=5)
    menu: list[st.SearchStrategy[tuple[Any, ...]]] = [
        st.tuples(st.just("GET"), keys),
        st.tuples(st.just("STRLEN"), keys),
        st.just(("INCR", "word")),  # an error reply: not an integer
        st.just(("GET", "h")),  # WRONGTYPE
        st.just(("NOSUCHCOMMAND", "x")),
        st.just(("PING",)),
        st.just(("TYPE", "z")),  # a status reply
        st.tuples(st.just("ECHO"), st.text(max_size=40)),
        fields.map(lambda f: ("HMGET", "h", *f)),
        st.just(("HGETALL", "h")),
        st.just(("SMEMBERS", "s")),
        st.just(("ZRANGE", "z", 0, -1, "WITHSCORES")),
        st.just(("ZSCORE", "z", "c")),
        st.tuples(st.just("LRANGE"), st.just("long"), st.integers(0, 10), st.sampled_from([5, 1000, -1])),
        st.sampled_from(["br_nested", "br_error", "br_inner_error", "br_resp3"]).map(
            lambda f: ("FCALL_RO", f, 0)
        ),
    ]
    if vectors:
        menu += [
            st.tuples(st.floats(0, 1), st.integers(1, 12)).map(
                lambda a: ("VSIM", "vs", "VALUES", 2, a[0], 1 - a[0], "COUNT", a[1], "WITHSCORES")
            ),
            st.just(("VSIM", "vs", "ELE", "m3", "WITHSCORES", "WITHATTRIBS")),
            st.just(("VSIM", "vs", "VALUES", 3, 1, 2, 3)),  # a dimension mismatch: an error reply
        ]
    return st.one_of(menu)


# Payloads from a short text repeated: up to ~200 KB, across any number of read buffers.
PAYLOADS = st.lists(st.tuples(st.text(min_size=1, max_size=8), st.integers(1, 25_000)), max_size=3).map(
    lambda ps: [text * count for text, count in ps]
)


@pytest.mark.parametrize("parser", ["hiredis", "python"])
@pytest.mark.parametrize("decode", [True, False], ids=["str", "bytes"])
@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_replies_are_read_responses_whatever_the_mix(
    redis_server: RedisServer, protocol: int, decode: bool, parser: str
) -> None:
    r = redis_server.client()
    vectors = redis_server.engine == "redis8"  # vector sets
    python_parser = _RESP3Parser if protocol == 3 else _RESP2Parser
    options: dict[str, Any] = {} if parser == "hiredis" else {"parser_class": python_parser}

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), payloads=PAYLOADS, read_size=st.sampled_from([97, 4096, 65536]))
    def check(data: st.DataObject, payloads: list[str], read_size: int) -> None:
        load_state(r, payloads, vectors)
        commands = data.draw(st.lists(command_menu(len(payloads), vectors), min_size=1, max_size=12))
        client = Client.from_url(
            redis_server.url,
            protocol=protocol,
            decode_responses=decode,
            socket_read_size=read_size,
            **options,
        )
        conn = client.connection_pool.get_connection()
        try:
            assert reads_directly(conn) is (parser == "hiredis")
            direct = exchange(conn, commands, read_replies)
            assert [shape(x) for x in direct] == [
                shape(x) for x in exchange(conn, commands, by_read_response)
            ]
            assert exchange(conn, [("ECHO", "end")]) == ["end" if decode else b"end"]  # nothing left unread
        finally:
            client.connection_pool.release(conn)
            client.close()

    check()


@pytest.fixture
def conn(redis_server: RedisServer) -> Iterator[Any]:
    """A connection of memproc's client (RESP3, decoded, hiredis, health checks), with the state the
    tests read."""
    r = redis_server.client()
    load_state(r, ["x" * 200_000], vectors=False)
    client = Client.from_url(
        redis_server.url, protocol=3, decode_responses=True, socket_timeout=0.2, health_check_interval=30
    )
    connection = client.connection_pool.get_connection()
    assert reads_directly(connection)
    yield connection
    client.connection_pool.release(connection)
    client.close()


@READS
def test_a_push_between_replies_goes_to_the_parsers_handler_and_is_skipped(
    redis_server: RedisServer, conn: Any, read: Read
) -> None:
    pushes: list[Any] = []
    conn._parser.set_invalidation_push_handler(pushes.append)
    assert exchange(conn, [("CLIENT", "TRACKING", "ON"), ("GET", "word")], read) == ["OK", "not a number"]
    redis_server.client().set("word", "changed")  # an invalidation, pushed before the next replies
    replies = exchange(conn, [("PING",), ("GET", "word"), ("SET", "word", "own"), ("GET", "word")], read)
    assert replies == ["PONG", "changed", "OK", "own"]
    assert [push[1] for push in pushes] == [["word"], ["word"]]  # the other client's write, then its own


class Cut:
    """The parser's socket giving only the first `left` bytes of what the server sent, then the
    server's close (recv gives nothing) or, with `timeout`, silence."""

    def __init__(self, sock: socket.socket, left: int, timeout: bool) -> None:
        self._sock, self._left, self._timeout = sock, left, timeout

    def recv_into(self, buffer: Any) -> int:
        if self._left == 0:
            if self._timeout:
                raise TimeoutError("timed out")
            return 0
        got = self._sock.recv_into(memoryview(buffer)[: self._left])
        self._left -= got
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


BIG = [("PING",), ("GET", "p0"), ("HGETALL", "h"), ("ECHO", "after")]
BIG_BYTES = len(b"+PONG\r\n$200000\r\n" + b"x" * 200_000 + b"\r\n")  # at least: a cut inside the GET


@READS
@given(cut=st.integers(0, BIG_BYTES), timeout=st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_connection_cut_mid_reply_fails_closed_and_the_next_batch_reads_its_own(
    conn: Any, read: Read, cut: int, timeout: bool
) -> None:
    assert exchange(conn, [("PING",)]) == ["PONG"]  # connected (again, after the previous example)
    conn._parser._sock = Cut(conn._parser._sock, cut, timeout)
    with pytest.raises(redis.TimeoutError if timeout else redis.ConnectionError):
        exchange(conn, BIG, read)
    assert conn._sock is None  # closed: the rest of the replies can never be read as another's
    assert exchange(conn, [("ECHO", "next")]) == ["next"]


@READS
def test_a_connection_the_server_closes_between_replies_fails_closed(conn: Any, read: Read) -> None:
    (own,) = exchange(conn, [("CLIENT", "ID")])
    with pytest.raises(redis.ConnectionError):
        exchange(conn, [("PING",), ("CLIENT", "KILL", "ID", own, "SKIPME", "no"), ("PING",)], read)
    assert conn._sock is None
    assert exchange(conn, [("CLIENT", "ID")]) != [own]


@READS
def test_a_timeout_mid_read_fails_closed_and_the_late_replies_never_answer(conn: Any, read: Read) -> None:
    with pytest.raises(redis.TimeoutError):
        exchange(conn, [("PING",), ("BLPOP", "nothing", 1), ("ECHO", "late")], read)
    assert conn._sock is None
    assert exchange(conn, [("ECHO", "next")]) == ["next"]  # not BLPOP's nil, nor "late"


@READS
def test_an_error_reply_keeps_the_connection(conn: Any, read: Read) -> None:
    replies = exchange(conn, [("INCR", "word"), ("FCALL_RO", "br_error", 0), ("PING",)], read)
    assert [type(x) for x in replies] == [redis.ResponseError, redis.ResponseError, str]
    assert str(replies[1]) == "from the library"
    assert conn._sock is not None and exchange(conn, [("ECHO", "next")]) == ["next"]


@READS
@pytest.mark.parametrize("where", ["reply", "nested"])
def test_an_error_reply_redis_py_takes_for_a_connection_error_fails_closed(
    conn: Any, read: Read, where: str
) -> None:
    with pytest.raises(redis.ConnectionError, match="max number of clients"):
        exchange(conn, [("PING",), ("FCALL_RO", "br_full", 0, where), ("ECHO", "late")], read)
    assert conn._sock is None
    assert exchange(conn, [("ECHO", "next")]) == ["next"]


@READS
def test_replies_put_off_the_next_health_check(conn: Any, read: Read) -> None:
    soon = conn.next_health_check = time.monotonic() + 1  # not due yet: no PING before the batch
    exchange(conn, [("PING",)], read)
    assert conn.next_health_check > soon  # a health check's interval from the replies


class Counting(RefusalConnection):
    """A connection counting the refusals it is told of."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refusals = 0

    def refused(self) -> None:
        self.refusals += 1


@pytest.fixture(scope="module")
def replicas() -> Iterator[dict[str, RedisServer]]:
    """A standalone replica (READONLY to writes) and a cluster's replica (MOVED to any key)."""
    primary, replica = RedisServer(), RedisServer()
    cluster_primary = RedisServer(cluster=True)
    cluster_replica = RedisServer(cluster=True, slots=None)
    try:
        replica.client().replicaof("127.0.0.1", primary.port)
        cluster_replica.replicate(cluster_primary)
        yield {"standalone": replica, "cluster": cluster_replica}
    finally:
        for server in (cluster_replica, cluster_primary, replica, primary):
            server.stop()


@READS
@pytest.mark.parametrize(
    ("node", "refused"), [("standalone", redis.ReadOnlyError), ("cluster", redis.exceptions.MovedError)]
)
@pytest.mark.parametrize("protocol", [2, 3], ids=["resp2", "resp3"])
def test_a_refusal_is_in_place_and_told_to_the_connection(
    replicas: dict[str, RedisServer], node: str, refused: type, protocol: int, read: Read
) -> None:
    client = Client.from_url(replicas[node].url, protocol=protocol, connection_class=Counting)
    conn = client.connection_pool.get_connection()
    try:
        replies = exchange(conn, [("SET", "k", "v"), ("PING",), ("SET", "k", "w")], read)
        assert [type(x) for x in replies] == [refused, bytes, refused]
        assert conn.refusals == 2
        assert conn._sock is not None  # an error reply: the batch decides (Batch._exchange)
    finally:
        client.connection_pool.release(conn)
        client.close()


def test_only_redis_pys_own_reads_over_hiredis_are_taken_directly(redis_server: RedisServer) -> None:
    class Overriding(redis.Connection):
        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            return super().read_response(*args, **kwargs)

    def first(**options: Any) -> Any:
        return Client.from_url(redis_server.url, **options).connection_pool.make_connection()

    for protocol in (2, 3):
        assert reads_directly(first(protocol=protocol))
        assert not reads_directly(first(protocol=protocol, parser_class=_RESP3Parser))
    assert not reads_directly(first(connection_class=Overriding))
    for cls in (PrimaryConnection, PrimarySSLConnection):
        assert cls.read_response is RefusalConnection.read_response


# sha256 (first 16 hex digits) of the source of each redis-py function read_replies mirrors or
# relies on, as of VERIFIED_REDIS. A new redis-py fails here: read the new source of each changed
# one, bring read_replies in line, then add the release to VERIFIED_REDIS and the new digests here.
MIRRORED = {
    "redis._parsers.hiredis:_HiredisParser.__init__": "efb63586c00a9141",
    "redis._parsers.hiredis:_HiredisParser.on_connect": "d4bdd994b8fbe5ca",
    "redis._parsers.hiredis:_HiredisParser.on_disconnect": "b46e59d4bdb195c9",
    "redis._parsers.hiredis:_HiredisParser.read_from_socket": "005671392a8db6e0",
    "redis._parsers.hiredis:_HiredisParser.read_response": "ab1e7485a786202c",
    "redis.connection:AbstractConnection.read_response": "695c899843302e31",
}


def digest(path: str) -> str:
    module, _, names = path.partition(":")
    target: Any = importlib.import_module(module)
    for name in names.split("."):
        target = getattr(target, name)
    return hashlib.sha256(inspect.getsource(target).encode()).hexdigest()[:16]


def test_the_redis_py_internals_read_replies_mirrors_are_the_ones_it_was_checked_against(
    redis_server: RedisServer,
) -> None:
    assert redis.__version__ in VERIFIED_REDIS, f"redis-py {redis.__version__}: see MIRRORED"
    assert batch_module._DIRECT
    changed = {path for path, expected in MIRRORED.items() if digest(path) != expected}
    assert not changed, f"redis-py {redis.__version__} changed {sorted(changed)}: see MIRRORED"
    # The attributes it reads, on a live connection: the reader answers the sentinel it imports.
    conn = Client.from_url(redis_server.url, protocol=3).connection_pool.make_connection()
    conn.connect()
    parser = conn._parser
    assert parser._reader.gets() is NOT_ENOUGH_DATA
    assert parser._sock is conn._sock and isinstance(parser._buffer, bytearray)
    assert parser._hiredis_PushNotificationType is hiredis.PushNotification
    assert isinstance(conn.health_check_interval, int) and hasattr(conn, "next_health_check")
    conn.disconnect()
