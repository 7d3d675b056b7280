"""The keep-alive connection pool under ``transport.LeanTransport``: one socket and its buffered
reader per connection, shared by every thread of the process, within httpx's ``Limits``
(``max_connections`` open, ``max_keepalive_connections`` idle, ``keepalive_expiry``), as
httpcore's pool keeps them. See: https://www.python-httpx.org/advanced/resource-limits/
"""

from __future__ import annotations

import io
import select
import socket
import ssl
import threading
import time
from typing import Any

from memproc.socket_timeouts import set_timeout

try:  # the SDK's HTTP client: httpx2 from openai 3.0 on, httpx before (the one place that chooses)
    import httpx2 as httpx
except ImportError:  # pragma: no cover - openai 2.x
    import httpx  # type: ignore[no-redef]

Origin = tuple[bytes, str, int]  # scheme, host, port
_UNSET = object()


class _SocketStream(io.RawIOBase):
    """The socket as the raw stream under a connection's buffered reader. It reads with
    ``recv_into`` and nothing else (``socket.makefile``'s ``SocketIO`` checks its state and
    catches timeouts around each read), and counts what it received, so that the reader's
    ``tell()`` (that count less what the reader holds) says whether bytes wait unread."""

    def __init__(self, sock: socket.socket) -> None:
        self._recv_into = sock.recv_into
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n: int = self._recv_into(buffer)
        self.received += n
        return n

    def tell(self) -> int:
        return self.received


class Connection:
    """One socket, its buffered reader, its timeout, and when it went idle."""

    __slots__ = ("_poller", "_raw", "_tls", "idle_since", "origin", "reader", "sock", "timeout")

    def __init__(self, origin: Origin, sock: socket.socket) -> None:
        self.origin = origin
        self.sock = sock
        # Unset: the first request sets its timeouts even when they equal the connect timeout the
        # socket has (the SDK gives all four one value), so they are the kernel's from then on.
        self.timeout: float | object | None = _UNSET
        self._raw = _SocketStream(sock)
        self.reader = io.BufferedReader(self._raw, 65536)
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._poller = select.poll()  # POLLHUP and POLLERR are reported whatever is registered
        self._poller.register(sock, select.POLLIN)
        self.idle_since = 0.0

    def settimeout(self, timeout: float | None) -> None:
        """The socket's timeout, kept by the kernel on a plain socket (memproc/socket_timeouts.py:
        an expiry raises one of its TIMED_OUT), set only when it changes (each setting is a system
        call)."""
        if timeout != self.timeout:
            set_timeout(self.sock, timeout)
            self.timeout = timeout

    def reusable(self) -> bool:
        """Whether an idle connection can take a request: nothing to read on it (readable, hung up
        or in error means the server closed it or sent what nobody asked for, as httpcore's
        ``has_expired`` checks), nothing left in the reader past the last response, nor in TLS's
        own buffer."""
        return not (
            self._poller.poll(0)
            or self.reader.tell() != self._raw.received
            or (self._tls and self.sock.pending())  # type: ignore[attr-defined]
        )

    def close(self) -> None:
        try:
            self.reader.close()
            self.sock.close()
        except OSError:  # pragma: no cover - closing a dead socket
            pass


class Pool:
    """Connections per origin, LIFO (the warmest first), within the limits (see the module doc)."""

    def __init__(self, limits: Any) -> None:
        self.max_connections = limits.max_connections
        self.max_idle = limits.max_keepalive_connections
        self.expiry = limits.keepalive_expiry
        self._cond = threading.Condition()
        self._idle: dict[Origin, list[Connection]] = {}
        self._idle_count = 0
        self._open = 0  # connections open, being opened, or reserved
        self.closed = False

    def _take_idle(self, origin: Origin, stale: list[Connection]) -> Connection | None:
        """The warmest idle connection to `origin`; expired ones go to `stale` (lock held)."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        if self.expiry is not None:
            now = time.monotonic()
            while idle and now - idle[0].idle_since > self.expiry:
                stale.append(idle.pop(0))
                self._idle_count -= 1
                self._open -= 1
        if not idle:
            return None
        self._idle_count -= 1
        return idle.pop()

    def acquire(self, origin: Origin, timeout: float | None, request: Any) -> Connection | None:
        """An idle connection to `origin`, or None with a slot reserved for a new one; PoolTimeout
        when none frees within `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            stale: list[Connection] = []
            with self._cond:
                while True:
                    if self.closed:
                        raise RuntimeError("the HTTP transport is closed")
                    conn = self._take_idle(origin, stale)
                    if conn is not None or self._open < self.max_connections:
                        break
                    victim = next((c for idle in self._idle.values() for c in idle), None)
                    if victim is not None:  # at the limit: an idle connection elsewhere gives way
                        self._idle[victim.origin].remove(victim)
                        self._idle_count -= 1
                        self._open -= 1
                        stale.append(victim)
                        continue
                    left = None if deadline is None else deadline - time.monotonic()
                    if (left is not None and left <= 0) or not self._cond.wait(left):
                        raise httpx.PoolTimeout(
                            "no connection became free within the pool timeout", request=request
                        )
                if conn is None:
                    self._open += 1
            for c in stale:
                c.close()
            if conn is None or conn.reusable():
                return conn
            self.discard(conn)

    def release(self, conn: Connection) -> None:
        """A connection whose response was read whole goes back to the pool (or is closed)."""
        with self._cond:
            self._cond.notify()
            if not self.closed and self._idle_count < self.max_idle:
                conn.idle_since = time.monotonic()
                self._idle.setdefault(conn.origin, []).append(conn)
                self._idle_count += 1
                return
            self._open -= 1
        conn.close()

    def discard(self, conn: Connection | None) -> None:
        """A connection that cannot take another request (or a reserved slot never used)."""
        if conn is not None:
            conn.close()
        with self._cond:
            self._open -= 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
            self._open -= len(idle)
            self._idle_count = 0
            self._cond.notify_all()
        for c in idle:
            c.close()
