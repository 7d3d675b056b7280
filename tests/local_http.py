"""Real HTTP servers on 127.0.0.1 for the transport tests: each connection served byte for byte by
a test's handler, so framing, keep-alive, timeouts, TLS and broken replies are what the test says."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from memproc.llm.gated_http import http_client
from memproc.llm.transport import LeanTransport, httpx

Handler = Callable[[socket.socket, "Server"], None]


class Server:
    """A TCP server on 127.0.0.1: each connection served by ``handler(sock, server)`` in a thread."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None, backlog: int = 128) -> None:
        self.handler, self.tls = handler, tls
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.lock = threading.Lock()
        self.done = threading.Event()  # set by a test to let blocked handlers finish
        self.event = threading.Event()  # set by handlers that have done what a test waits for
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, path: str = "/v1/x", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            self.handler(sock, self)
        except OSError:
            pass
        finally:
            sock.close()

    def close(self) -> None:
        """Stop accepting, then close: closing a listener another thread is about to accept on
        would free its descriptor for the next test's listener, which that thread would then serve."""
        self.done.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (EINVAL)
        self._thread.join(10)
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(handler: Handler, **kwargs: Any) -> Server:
        servers.append(Server(handler, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def read_request(reader: Any) -> tuple[bytes, dict[bytes, bytes], bytes] | None:
    """One request (head and Content-Length body) from a connection; None at its end."""
    line = reader.readline()
    if not line:
        return None
    headers: dict[bytes, bytes] = {}
    while (header := reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return line, headers, reader.read(int(headers.get(b"content-length", b"0")))


def answering(*replies: bytes, close_after: bool = False) -> Handler:
    """Answer the connection's requests with ``replies`` in turn (the last one from then on)."""

    def handler(sock: socket.socket, server: Server) -> None:
        reader = sock.makefile("rb")
        n = 0
        while read_request(reader) is not None:
            sock.sendall(replies[min(n, len(replies) - 1)])
            n += 1
            if close_after:
                reader.close()  # the socket closes only with its reader
                sock.close()
                server.event.set()
                return

    return handler


def ok(body: bytes = b'{"ok":true}', *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Type: application/json", b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def lean_client(**limits: Any) -> Any:
    return httpx.Client(
        transport=LeanTransport(httpx.Limits(**limits) if limits else openai.DEFAULT_CONNECTION_LIMITS)
    )


def sdk(server: Server, **kwargs: Any) -> openai.OpenAI:
    """The real openai client over ``http_client()``, at the server, without retries."""
    return openai.OpenAI(
        api_key="k", base_url=server.url("/v1"), max_retries=0, http_client=http_client(), **kwargs
    )
