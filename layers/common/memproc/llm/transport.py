"""A lean HTTP/1.1 transport under the openai SDK's httpx client: the same client, auth, retries,
timeouts and errors above it, ~a fifth of the CPU below it.

httpx's default transport (httpcore with h11) validates and rebuilds every header several times
and reads a body in 64 KiB events joined twice: ~0.6 ms of CPU per request, ~2.5 ms for an
embeddings reply of a megabyte. This one writes a request in one ``sendall`` and reads the reply
with a buffered reader: the status line and headers line by line, the body by its
``Content-Length`` in one read (or chunked, or up to the close). It keeps what the SDK's default
transport does:

- connect/read/write/pool timeouts from the request's ``timeout`` extension, per socket
  operation as httpcore does (connect covers the TLS handshake);
- TLS through ``create_ssl_context()`` (certifi, ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), hostname
  checked, ALPN ``http/1.1``;
- a keep-alive pool shared by every thread: ``max_connections`` open at most (a request waits up
  to the pool timeout for one), ``max_keepalive_connections`` idle at most, an idle connection
  dropped after ``keepalive_expiry`` or once the server has closed it (a readable idle socket);
- httpx's exception types (``ConnectTimeout``, ``ReadError``, ``RemoteProtocolError``, ...), which
  the SDK turns into ``APITimeoutError`` / ``APIConnectionError`` and retries.

Proxies are not its business: ``gated_http.http_client`` keeps the default transport whenever the
environment names one. See: https://www.python-httpx.org/advanced/transports/#custom-transports
"""

from __future__ import annotations

import io
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:  # the SDK's HTTP client: httpx2 from openai 3.0 on, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover - openai 2.x
    import httpx  # type: ignore[no-redef]

# Limits on what a server may send before the body (h11's, as httpcore configures it).
MAX_LINE = 64 * 1024
MAX_HEAD = 100 * 1024
# A body with a Content-Length is read in pieces of at most this (one piece for any API reply).
READ_CHUNK = 4 * 1024 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?\r?\n")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r?\n")
_DEFAULT_PORTS = {b"http": 80, b"https": 443}

Origin = tuple[bytes, str, int]


class _Connection:
    """One socket, its buffered reader, and when it went idle."""

    __slots__ = ("idle_since", "origin", "reader", "sock")

    def __init__(self, origin: Origin, sock: socket.socket) -> None:
        self.origin = origin
        self.sock = sock
        self.reader: io.BufferedReader = sock.makefile("rb", buffering=65536)  # type: ignore[assignment]
        self.idle_since = 0.0

    def reusable(self) -> bool:
        """Whether an idle connection can take a request. A readable idle socket means the server
        closed it (or sent what nobody asked for), as httpcore's ``has_expired`` checks; bytes left
        in the reader past the last response mean the same."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if poller.poll(0) or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            return False
        self.sock.settimeout(0)  # peek returns what is buffered, and reads nothing that has not arrived
        try:
            return not self.reader.peek(1)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        except OSError:
            return False

    def close(self) -> None:
        try:
            self.reader.close()
            self.sock.close()
        except OSError:  # pragma: no cover - closing a dead socket
            pass


class _Pool:
    """Connections per origin, LIFO (the warmest first), within the limits (see the module doc)."""

    def __init__(self, limits: Any) -> None:
        self.max_connections = limits.max_connections
        self.max_idle = limits.max_keepalive_connections
        self.expiry = limits.keepalive_expiry
        self._cond = threading.Condition()
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self._open = 0  # connections open, being opened, or reserved
        self.closed = False

    def _take_idle(self, origin: Origin, stale: list[_Connection]) -> _Connection | None:
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

    def acquire(self, origin: Origin, timeout: float | None, request: Any) -> _Connection | None:
        """An idle connection to `origin`, or None with a slot reserved for a new one; PoolTimeout
        when none frees within `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            stale: list[_Connection] = []
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

    def release(self, conn: _Connection) -> None:
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

    def discard(self, conn: _Connection | None) -> None:
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


@contextmanager
def _mapped(
    timeout: type[httpx.RequestError], error: type[httpx.RequestError], request: Any
) -> Iterator[None]:
    """Socket errors as the httpx exceptions httpcore raises for the same step."""
    try:
        yield
    except TimeoutError as exc:  # socket.timeout
        raise timeout(str(exc) or "timed out", request=request) from exc
    except OSError as exc:  # ssl.SSLError among them
        raise error(str(exc) or type(exc).__name__, request=request) from exc


def _remote(message: str, request: Any) -> Exception:
    return httpx.RemoteProtocolError(message, request=request)


def _read_line(reader: Any, request: Any) -> bytes:
    line: bytes = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise _remote("a response line is too long", request)
    return line


def _read_head(reader: Any, request: Any) -> tuple[int, int, bytes, list[tuple[bytes, bytes]]]:
    """The final response's HTTP minor version, status, reason and headers (1xx ones skipped)."""
    while True:
        line = _read_line(reader, request)
        if not line:
            raise _remote("Server disconnected without sending a response.", request)
        status_line = _STATUS.fullmatch(line)
        if status_line is None:
            raise _remote(f"not an HTTP/1.x status line: {line[:100]!r}", request)
        headers: list[tuple[bytes, bytes]] = []
        size = len(line)
        while True:
            line = _read_line(reader, request)
            size += len(line)
            if size > MAX_HEAD:
                raise _remote("the response headers are too large", request)
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise _remote("Server disconnected in the middle of the response headers.", request)
            if line[0] in b" \t" and headers:  # obs-fold: a continuation of the previous value
                name, value = headers[-1]
                headers[-1] = (name, value + b" " + line.strip())
                continue
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise _remote(f"a malformed response header: {line[:100]!r}", request)
            headers.append((name, value.strip(b" \t\r\n")))
        status = int(status_line.group(2))
        if 100 <= status < 200 and status != 101:  # interim (100 Continue, 103 Early Hints)
            continue
        return int(status_line.group(1)), status, status_line.group(3) or b"", headers


def _values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v.strip().lower() for k, value in headers if k.lower() == name for v in value.split(b",")]


class _Body(httpx.SyncByteStream):
    """The response body, framed by Content-Length, chunked, or the close; the connection goes
    back to the pool when the body was read whole and both sides keep it alive."""

    def __init__(
        self, pool: _Pool, conn: _Connection, request: Any, length: int | None, chunked: bool, keep: bool
    ):
        self._pool, self._conn, self._request = pool, conn, request
        self._length, self._chunked, self._keep = length, chunked, keep
        self._done = length == 0
        self._released = False

    def __iter__(self) -> Iterator[bytes]:
        if self._done:
            return
        reader, request = self._conn.reader, self._request
        with _mapped(httpx.ReadTimeout, httpx.ReadError, request):
            if self._chunked:
                yield from self._chunks(reader, request)
            elif self._length is not None:
                left = self._length
                while left:
                    data = reader.read(min(left, READ_CHUNK))
                    if not data:
                        raise _remote("peer closed connection without sending complete message body", request)
                    left -= len(data)
                    yield data
            else:
                while data := reader.read1(65536):
                    yield data
        self._done = True

    @staticmethod
    def _chunks(reader: Any, request: Any) -> Iterator[bytes]:
        while True:
            line = _read_line(reader, request)
            size_line = _CHUNK_SIZE.fullmatch(line)
            if size_line is None:
                raise _remote(f"a malformed chunk size line: {line[:100]!r}", request)
            size = int(size_line.group(1), 16)
            if size == 0:
                while (line := _read_line(reader, request)) not in (b"\r\n", b"\n"):  # trailers, unread
                    if not line:
                        raise _remote("peer closed connection in the chunked trailers", request)
                return
            data = reader.read(size)
            if len(data) != size or _read_line(reader, request) not in (b"\r\n", b"\n"):
                raise _remote("peer closed connection without sending complete message body", request)
            yield data

    def close(self) -> None:
        if self._released:
            return
        self._released = True
        if self._done and self._keep:
            self._pool.release(self._conn)
        else:
            self._pool.discard(self._conn)


class LeanTransport(httpx.BaseTransport):
    """HTTP/1.1 over pooled sockets; ``limits`` an ``httpx.Limits`` (the SDK's defaults)."""

    def __init__(self, limits: Any, ssl_context: ssl.SSLContext | None = None) -> None:
        self._pool = _Pool(limits)
        self._ssl_context = ssl_context

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = httpx.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    def _connect(self, origin: Origin, request: Any, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        with _mapped(httpx.ConnectTimeout, httpx.ConnectError, request):
            sock = socket.create_connection((host, port), timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if scheme == b"https":
                    sni = request.extensions.get("sni_hostname") or host
                    sock = self._tls().wrap_socket(sock, server_hostname=sni)
            except BaseException:
                sock.close()
                raise
        return _Connection(origin, sock)

    def handle_request(self, request: Any) -> Any:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported protocol '{url.scheme}://'.", request=request)
        timeouts = request.extensions.get("timeout", {})
        origin = (scheme, url.raw_host.decode("ascii"), url.port or _DEFAULT_PORTS[scheme])
        head = self._head(request)
        conn = self._pool.acquire(origin, timeouts.get("pool"), request)
        try:
            if conn is None:
                conn = self._connect(origin, request, timeouts.get("connect"))
            sock = conn.sock
            with _mapped(httpx.WriteTimeout, httpx.WriteError, request):
                sock.settimeout(timeouts.get("write"))
                self._send(sock, head, request)
            with _mapped(httpx.ReadTimeout, httpx.ReadError, request):
                sock.settimeout(timeouts.get("read"))
                minor, status, reason, headers = _read_head(conn.reader, request)
            body = self._body(conn, request, minor, status, headers)
        except BaseException:
            self._pool.discard(conn)
            raise
        extensions = {"http_version": b"HTTP/1.1" if minor else b"HTTP/1.0", "reason_phrase": reason}
        return httpx.Response(status, headers=headers, stream=body, extensions=extensions)

    @staticmethod
    def _head(request: Any) -> bytes:
        """The request line and headers, each checked as h11 does (no header injection)."""
        lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
                raise httpx.LocalProtocolError(f"an illegal header: {name[:100]!r}", request=request)
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    @staticmethod
    def _send(sock: socket.socket, head: bytes, request: Any) -> None:
        """Head and body: one ``sendall`` for a body of bytes; chunked framing when the request
        asks for it (a body of unknown length)."""
        chunked = any(k.lower() == b"transfer-encoding" for k, _ in request.headers.raw)
        parts = list(request.stream)
        if not chunked:
            sock.sendall(head + b"".join(parts))
            return
        sock.sendall(head)
        for part in parts:
            if part:
                sock.sendall(b"%x\r\n%b\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")

    def _body(
        self, conn: _Connection, request: Any, minor: int, status: int, headers: list[tuple[bytes, bytes]]
    ) -> _Body:
        """How the body is framed (RFC 9112 section 6.3) and whether the connection stays open."""
        close = minor == 0 or b"close" in _values(headers, b"connection")
        close = close or b"close" in _values(request.headers.raw, b"connection")
        if request.method == "HEAD" or status in (101, 204, 304):
            return _Body(self._pool, conn, request, 0, False, not close and status != 101)
        codings = _values(headers, b"transfer-encoding")
        if codings:
            if codings != [b"chunked"]:
                raise _remote(f"unsupported Transfer-Encoding: {b', '.join(codings)!r}", request)
            return _Body(self._pool, conn, request, None, True, not close)
        lengths = set(_values(headers, b"content-length"))
        if lengths:
            value = lengths.pop()
            if lengths or not value.isdigit():
                raise _remote("a malformed Content-Length", request)
            return _Body(self._pool, conn, request, int(value), False, not close)
        return _Body(self._pool, conn, request, None, False, False)  # until the server closes

    def close(self) -> None:
        self._pool.close()
