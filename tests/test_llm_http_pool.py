"""llm.http_pool: the transport's keep-alive pool (reuse, limits, stale connections, the pool
timeout), against real local servers (tests/local_http.py)."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import pytest

from memproc.llm.transport import httpx
from tests.local_http import Server, answering, lean_client, ok, read_request, serve

pytestmark = pytest.mark.timeout(60)

__all__ = ["serve"]  # a fixture: imported to be used, not called


# --- keep-alive and the pool ---------------------------------------------------------------------


def test_sequential_requests_share_one_kept_alive_connection(serve: Callable[..., Server]) -> None:
    server = serve(answering(ok(b"first"), ok(b"again")))
    with lean_client() as client:
        bodies = [client.post(server.url(), content=b"{}").content for _ in range(20)]
    assert bodies == [b"first"] + [b"again"] * 19
    assert server.connections == 1


def test_64_threads_in_flight_open_64_connections_and_reuse_them(serve: Callable[..., Server]) -> None:
    barrier = threading.Barrier(64)

    def handler(sock: socket.socket, server: Server) -> None:
        reader = sock.makefile("rb")
        first = True
        while read_request(reader) is not None:
            if first:  # every connection's first request waits until 64 are in flight at once
                barrier.wait(timeout=20)
                first = False
            sock.sendall(ok())

    server = serve(handler)
    client = lean_client()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                assert client.post(server.url(), content=b"{}").json() == {"ok": True}
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    assert errors == []
    assert server.connections == 64  # one per thread in flight, none opened afterwards


def test_an_idle_connection_the_server_closed_is_not_reused(serve: Callable[..., Server]) -> None:
    # The server closes after each answer without saying so, as one whose keep-alive ran out.
    server = serve(answering(ok(), close_after=True))
    with lean_client() as client:
        for _ in range(3):
            server.event.clear()
            assert client.post(server.url(), content=b"{}").json() == {"ok": True}
            assert server.event.wait(10)
    assert server.connections == 3


def test_connection_close_and_http_1_0_replies_are_not_kept(serve: Callable[..., Server]) -> None:
    closing = ok(b"a", b"Connection: close")
    http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb"
    server = serve(answering(closing, http10))
    with lean_client() as client:
        assert client.get(server.url()).content == b"a"
        server2 = serve(answering(http10))
        assert [client.get(server2.url()).content for _ in range(2)] == [b"b", b"b"]
    assert server.connections == 1
    assert server2.connections == 2


@pytest.mark.parametrize("limits", [{"keepalive_expiry": 0.0}, {"max_keepalive_connections": 0}])
def test_no_connection_is_kept_past_the_keepalive_limits(serve: Callable[..., Server], limits: Any) -> None:
    server = serve(answering(ok()))
    with lean_client(max_connections=10, **{"max_keepalive_connections": 10, **limits}) as client:
        for _ in range(3):
            assert client.get(server.url()).json() == {"ok": True}
    assert server.connections == 3


def test_pool_timeout_when_every_connection_is_taken(serve: Callable[..., Server]) -> None:
    server = serve(answering(ok()))
    with lean_client(max_connections=1, max_keepalive_connections=1) as client:
        held = client.send(client.build_request("GET", server.url()), stream=True)  # not read: still taken
        with pytest.raises(httpx.PoolTimeout):
            client.get(server.url(), timeout=httpx.Timeout(5.0, pool=0.05))
        held.read()
        held.close()
        assert client.get(server.url(), timeout=httpx.Timeout(5.0, pool=0.05)).json() == {"ok": True}
    assert server.connections == 1


def test_bytes_past_a_response_keep_its_connection_from_reuse(serve: Callable[..., Server]) -> None:
    # Each answer comes with a stray line in the same write: the reader holds it, unread, once the
    # answer is read (no system call sees it), and the next request must not start with it.
    server = serve(answering(ok(b"answer") + b"HTTP/1.1 200 OK\r\n"))
    with lean_client() as client:
        assert [client.get(server.url()).content for _ in range(3)] == [b"answer"] * 3
    assert server.connections == 3


def test_an_idle_connection_the_server_wrote_to_is_not_reused(serve: Callable[..., Server]) -> None:
    wrote = threading.Event()

    def handler(sock: socket.socket, server: Server) -> None:
        read_request(sock.makefile("rb"))
        sock.sendall(ok(b"answer"))
        server.event.wait(10)  # the client has its answer: what follows arrives while it is idle
        sock.sendall(b"HTTP/1.1 200 OK\r\n")
        wrote.set()
        server.done.wait(30)

    server = serve(handler)
    with lean_client() as client:
        assert client.get(server.url()).content == b"answer"
        (idle,) = [c for conns in client._transport._pool._idle.values() for c in conns]
        server.event.set()
        assert wrote.wait(10) and select.select([idle.sock], [], [], 10)[0]  # arrived
        assert client.get(server.url()).content == b"answer"
    assert server.connections == 2


@pytest.mark.parametrize("connect", [None, 0.1])
def test_a_kept_connection_takes_each_requests_timeouts(serve: Callable[..., Server], connect: Any) -> None:
    # The socket starts with the connect timeout; a timeout left unset would leave it, or None,
    # and the client would wait on the silent server until the test times out.
    def handler(sock: socket.socket, server: Server) -> None:  # answers once, then stays silent
        reader = sock.makefile("rb")
        read_request(reader)
        sock.sendall(ok())
        read_request(reader)
        server.done.wait(30)

    server = serve(handler)
    with lean_client() as client:
        assert client.get(server.url(), timeout=httpx.Timeout(None, connect=connect)).json() == {"ok": True}
        with pytest.raises(httpx.ReadTimeout):
            client.get(server.url(), timeout=httpx.Timeout(None, connect=connect, read=0.1))
    assert server.connections == 1
