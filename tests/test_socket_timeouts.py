"""Kernel-kept socket timeouts (memproc/socket_timeouts.py) and the held Redis connections that use
them (dal/batch.py): a timeout still surfaces as a timeout, is not retried, and does not outlive
the hold. The HTTP side's timeouts are tests/test_llm_transport.py's (read and write, over plain
sockets, which now keep theirs in the kernel)."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from memproc.dal import batch
from memproc.dal.batch import Client, held_connections
from memproc.llm.transport import httpx
from memproc.socket_timeouts import TIMED_OUT, kernel_timeouts, python_timeout, set_timeout
from tests.local_http import Server, answering, lean_client, ok, serve
from tests.redis_server import RedisServer

__all__ = ["serve"]  # a fixture: imported to be used, not called

pytestmark = pytest.mark.timeout(60)

TIMEVAL = struct.calcsize("@ll")


def kernel(sock: socket.socket) -> tuple[float, float]:
    """The socket's SO_RCVTIMEO and SO_SNDTIMEO in seconds (0: none)."""
    out = []
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        sec, usec = struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, option, TIMEVAL))
        out.append(sec + usec / 1e6)
    return out[0], out[1]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected TCP client socket and the server's end of it, which sends nothing."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
        try:
            yield client, peer
        finally:
            client.close()
            peer.close()


def test_a_plain_sockets_timeout_is_the_kernels_and_expires_as_a_timed_out_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    sock, _ = pair
    assert kernel_timeouts(sock)
    set_timeout(sock, 0.05)
    assert sock.gettimeout() is None  # blocking: one system call per read, no poll before it
    assert all(0.05 <= t < 0.06 for t in kernel(sock))  # kept in the kernel's clock ticks
    with pytest.raises(TIMED_OUT):
        sock.recv(1)


def test_back_to_pythons_timeout_no_kernel_timeout_is_left(pair: tuple[socket.socket, socket.socket]) -> None:
    sock, _ = pair
    set_timeout(sock, 0.05)
    python_timeout(sock, 0.05)
    assert kernel(sock) == (0.0, 0.0)
    assert sock.gettimeout() == 0.05
    with pytest.raises(TimeoutError):  # socket.timeout, as redis-py expects it
        sock.recv(1)


@pytest.mark.parametrize("seconds", [None, float("inf"), 1e30])
def test_no_timeout_leaves_no_kernel_timeout_behind(
    pair: tuple[socket.socket, socket.socket], seconds: float | None
) -> None:
    sock, _ = pair
    set_timeout(sock, 0.05)
    set_timeout(sock, seconds)
    assert sock.gettimeout() is None
    assert kernel(sock) == (0.0, 0.0)


def test_a_timeout_too_short_for_a_timeval_is_not_taken_for_none(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    sock, _ = pair
    set_timeout(sock, 1e-9)  # zero microseconds would mean "wait without end" to the kernel
    assert all(0 < t < 0.05 for t in kernel(sock))


def test_a_zero_timeout_is_pythons_non_blocking_mode(pair: tuple[socket.socket, socket.socket]) -> None:
    sock, _ = pair
    set_timeout(sock, 0)
    assert sock.gettimeout() == 0.0
    with pytest.raises(BlockingIOError):
        sock.recv(1)


def test_a_tls_socket_keeps_pythons_timeout() -> None:
    with ssl.create_default_context().wrap_socket(socket.socket(), server_hostname="example.org") as tls:
        assert not kernel_timeouts(tls)
        set_timeout(tls, 0.25)
        assert tls.gettimeout() == 0.25
        assert kernel(tls) == (0.0, 0.0)


def test_an_llm_connection_keeps_the_sdks_single_timeout_in_the_kernel(serve: Callable[..., Server]) -> None:
    # The SDK gives connect, read, write and pool one value: the socket's connect timeout already.
    server = serve(answering(ok()))
    with lean_client() as client:
        for _ in range(2):
            assert client.get(server.url(), timeout=httpx.Timeout(5.0)).json() == {"ok": True}
        (conn,) = [c for conns in client._transport._pool._idle.values() for c in conns]
        assert conn.sock.gettimeout() is None
        assert all(5.0 <= t < 5.01 for t in kernel(conn.sock))
    assert server.connections == 1


# --- held Redis connections -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A server of this module's own: the tests stop its process (SIGSTOP) to make it silent."""
    s = RedisServer()
    yield s
    s.stop()


@contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """The server's process stopped: it accepts no command, reads nothing and answers nothing."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def client(server: RedisServer, retries: int = 1) -> Client:
    """memproc's client as dal/connection.py builds it: one retry, on connection errors only."""
    retry = Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,))
    return Client.from_url(server.url, protocol=3, decode_responses=True, socket_timeout=0.2, retry=retry)


def connections(server: RedisServer) -> int:
    return int(server.client().info("stats")["total_connections_received"])


def held_socket(c: Client) -> Any:
    return batch._thread.held[c.connection_pool].conn._sock


@contextmanager
def holding(c: Client) -> Iterator[Any]:
    """Within held_connections, the connection held by a first batch: a PING, yielded to send again."""
    with held_connections():
        b = c.batch()
        b.execute_command("PING")
        assert b.execute() == ["PONG"]
        yield b


def test_a_held_connection_keeps_its_timeout_in_the_kernel_and_gives_pythons_back(
    server: RedisServer,
) -> None:
    c = client(server)
    with holding(c):
        sock = held_socket(c)
        assert sock.gettimeout() is None
        assert all(0.2 <= t < 0.21 for t in kernel(sock))
    assert sock.gettimeout() == 0.2
    assert kernel(sock) == (0.0, 0.0)
    c.close()


def test_a_read_timeout_on_a_held_connection_is_a_timeout_and_is_not_retried(server: RedisServer) -> None:
    c = client(server)
    with holding(c) as b:
        before = connections(server)
        with stopped(server), pytest.raises(redis.TimeoutError, match="reading"):
            b.execute()
        assert connections(server) == before + 1  # the count's own connection: none reconnected
        assert b.execute() == ["PONG"]  # on a new connection, which the next batch finds
        assert b.execute() == ["PONG"]
        assert all(0.2 <= t < 0.21 for t in kernel(held_socket(c)))  # and gives the kernel's timeout
    c.close()


def test_a_write_timeout_on_a_held_connection_is_a_timeout_and_is_not_retried(server: RedisServer) -> None:
    c = client(server)
    with holding(c):
        big = c.batch()
        big.execute_command("SET", "big", b"x" * (64 << 20))  # more than the socket buffers hold
        before = connections(server)
        with stopped(server), pytest.raises(redis.TimeoutError, match="writing"):
            big.execute()
    assert connections(server) == before + 1
    assert not server.client().exists("big")  # cut short and closed: the command never ran
    c.close()


def test_redis_pys_own_reads_see_a_timeout_after_the_hold(server: RedisServer) -> None:
    c = client(server, retries=0)
    with holding(c):
        pass
    with stopped(server), pytest.raises(redis.TimeoutError):
        c.ping()  # the connection the hold gave back: a kernel timeout left would read as a lost one
    c.close()
