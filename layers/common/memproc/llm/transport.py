"""A lean HTTP/1.1 transport under the openai SDK's httpx client: the same client, auth, retries,
timeouts and errors above it, ~a fifth of the CPU below it.

httpx's default transport (httpcore with h11) validates and rebuilds every header several times
and reads a body in 64 KiB events joined twice: ~0.6 ms of CPU per request, ~2.5 ms for an
embeddings reply of a megabyte. This one writes a request in one ``sendall`` and reads the reply
with a buffered reader: the head parsed by two regular expressions, the body by its
``Content-Length`` in one read (or chunked, or up to the close), the response's ``httpx.Headers``
made of the parsed fields as they are (its private ``_list``, which tests/test_llm_transport.py
pins). It keeps what the SDK's default transport does:

- connect/read/write/pool timeouts from the request's ``timeout`` extension, per socket
  operation as httpcore does (connect covers the TLS handshake), kept by the kernel on a plain
  socket (``memproc.socket_timeouts``: one system call per read or write instead of two);
- TLS through ``create_ssl_context()`` (certifi, ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), hostname
  checked, ALPN ``http/1.1``;
- a keep-alive pool (``http_pool``) shared by every thread: ``max_connections`` open at most (a
  request waits up to the pool timeout for one), ``max_keepalive_connections`` idle at most, an
  idle connection dropped after ``keepalive_expiry`` or once the server has closed it;
- httpx's exception types (``ConnectTimeout``, ``ReadError``, ``RemoteProtocolError``, ...), which
  the SDK turns into ``APITimeoutError`` / ``APIConnectionError`` and retries.

Proxies are not its business: ``gated_http.http_client`` keeps the default transport whenever the
environment names one. See: https://www.python-httpx.org/advanced/transports/#custom-transports
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from typing import Any

from memproc.llm.http_pool import Connection, Origin, Pool, httpx
from memproc.socket_timeouts import TIMED_OUT

# Limits on what a server may send before the body (h11's, as httpcore configures it).
MAX_LINE = 64 * 1024
MAX_HEAD = 100 * 1024
# A body with a Content-Length is read in pieces of at most this (one piece for any API reply).
READ_CHUNK = 4 * 1024 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?")
# A head as servers send it (CRLF line ends, no folded lines), and each header line in it.
_HEAD = re.compile(
    rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\r\n]*))?\r\n"
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*)\r\n"
)
_FIELD = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)[ \t]*\r\n"
)
_REQUEST_HEADERS = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [^\x00-\x08\x0a-\x1f\x7f]*\r\n)*\r\n")
_FRAMING = frozenset((b"connection", b"transfer-encoding", b"content-length"))
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r?\n")
_DEFAULT_PORTS = {b"http": 80, b"https": 443}

Field = tuple[bytes, bytes, bytes]  # a response header: name, lower-case name, value


def _mapped(
    exc: OSError, timeout: type[httpx.RequestError], error: type[httpx.RequestError], request: Any
) -> Exception:
    """A socket error as the httpx exception httpcore raises for the same step."""
    if isinstance(exc, TIMED_OUT):  # socket.timeout, or a kernel timeout's EAGAIN
        return timeout(str(exc) or "timed out", request=request)
    return error(str(exc) or type(exc).__name__, request=request)  # ssl.SSLError among them


def _remote(message: str, request: Any) -> Exception:
    return httpx.RemoteProtocolError(message, request=request)


def _read_line(reader: Any, request: Any) -> bytes:
    line: bytes = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise _remote("a response line is too long", request)
    return line


def _head_lines(reader: Any, request: Any) -> list[bytes]:
    """The status line and header lines of a response, without their line ends, read line by line
    (a head split across reads, with bare LF line ends or folded lines, or a malformed one)."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = _read_line(reader, request)
        size += len(line)
        if size > MAX_HEAD:
            raise _remote("the response headers are too large", request)
        if not line:
            raise _remote("Server disconnected in the middle of the response headers.", request)
        line = line[:-2] if line.endswith(b"\r\n") else line.removesuffix(b"\n")
        if not line and lines:
            return lines
        lines.append(line)


def _parsed_lines(lines: list[bytes], request: Any) -> tuple[re.Match[bytes], list[Field]]:
    """The status line and header fields of a head read line by line, folded lines unfolded, as
    h11 parses them (and refuses what it refuses)."""
    status_line = _STATUS.fullmatch(lines[0])
    if status_line is None:
        raise _remote(f"not an HTTP/1.x status line: {lines[0][:100]!r}", request)
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and headers:  # obs-fold: a continuation of the previous value
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip(b" \t"))
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise _remote(f"a malformed response header: {line[:100]!r}", request)
        headers.append((name, value.strip(b" \t")))
    return status_line, [(name, name.lower(), value) for name, value in headers]


def _read_head(reader: Any, request: Any) -> tuple[int, int, bytes, list[Field]]:
    """The final response's HTTP minor version, status, reason and header fields (1xx ones
    skipped). Usually the whole head is already buffered (``peek`` reads once when nothing is),
    well formed, and parsed by two regular expressions; otherwise it is read line by line."""
    while True:
        buffered = reader.peek(1)
        if not buffered:
            raise _remote("Server disconnected without sending a response.", request)
        head = _HEAD.match(buffered)  # within the reader's buffer, 64 KiB: less than MAX_HEAD
        if head is not None:
            reader.read(head.end())
            fields = [(name, name.lower(), value) for name, value in _FIELD.findall(head.group(4))]
            status_line: re.Match[bytes] = head
        else:
            status_line, fields = _parsed_lines(_head_lines(reader, request), request)
        status = int(status_line.group(2))
        if 100 <= status < 200 and status != 101:  # interim (100 Continue, 103 Early Hints)
            continue
        return int(status_line.group(1)), status, status_line.group(3) or b"", fields


def _framing(fields: list[Field]) -> dict[bytes, list[bytes]]:
    """The comma-separated tokens of the headers that frame a message, by lower-case name."""
    found: dict[bytes, list[bytes]] = {}
    for _, lower, value in fields:
        if lower in _FRAMING:
            found.setdefault(lower, []).extend(v.strip().lower() for v in value.split(b","))
    return found


def _refused(names: list[bytes], request: Any) -> Exception:
    """Why a request's head is not sent: its first illegal header name, else an illegal value."""
    for name in names:
        if not _TOKEN.fullmatch(name):
            return httpx.LocalProtocolError(f"an illegal header name: {name[:100]!r}", request=request)
    return httpx.LocalProtocolError("a request header with an illegal value", request=request)


def _headers(fields: list[Field]) -> Any:
    """``httpx.Headers`` of `fields` as they are: what ``Headers(pairs)`` makes of the pairs,
    without checking, encoding and lower-casing each name again."""
    headers = httpx.Headers()
    headers._list = fields
    return headers


class _Body(httpx.SyncByteStream):
    """The response body, framed by Content-Length, chunked, or the close; the connection goes
    back to the pool when the body was read whole and both sides keep it alive."""

    def __init__(
        self, pool: Pool, conn: Connection, request: Any, length: int | None, chunked: bool, keep: bool
    ):
        self._pool, self._conn, self._request = pool, conn, request
        self._length, self._chunked, self._keep = length, chunked, keep
        self._done = length == 0
        self._released = False

    def __iter__(self) -> Iterator[bytes]:
        if self._done:
            return
        reader, request = self._conn.reader, self._request
        try:
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
        except OSError as exc:
            raise _mapped(exc, httpx.ReadTimeout, httpx.ReadError, request) from exc
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
        self._pool = Pool(limits)
        self._ssl_context = ssl_context

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = httpx.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    def _connect(self, origin: Origin, request: Any, timeout: float | None) -> Connection:
        scheme, host, port = origin
        try:
            sock = socket.create_connection((host, port), timeout)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if scheme == b"https":
                    sni = request.extensions.get("sni_hostname") or host
                    sock = self._tls().wrap_socket(sock, server_hostname=sni)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            raise _mapped(exc, httpx.ConnectTimeout, httpx.ConnectError, request) from exc
        return Connection(origin, sock)

    def handle_request(self, request: Any) -> Any:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported protocol '{url.scheme}://'.", request=request)
        timeouts = request.extensions.get("timeout", {})
        origin = (scheme, url.raw_host.decode("ascii"), url.port or _DEFAULT_PORTS[scheme])
        head, chunked, close = self._head(request)
        conn = self._pool.acquire(origin, timeouts.get("pool"), request)
        try:
            if conn is None:
                conn = self._connect(origin, request, timeouts.get("connect"))
            sock = conn.sock
            try:
                conn.settimeout(timeouts.get("write"))
                self._send(sock, head, request.stream, chunked)
            except TIMED_OUT as exc:
                raise _mapped(exc, httpx.WriteTimeout, httpx.WriteError, request) from exc
            except OSError:
                # As httpcore: a server may answer (a 413, say) and close before reading the whole
                # request, so its answer is read, and the connection is not reused.
                close = True
            try:
                conn.settimeout(timeouts.get("read"))
                minor, status, reason, fields = _read_head(conn.reader, request)
            except OSError as exc:
                raise _mapped(exc, httpx.ReadTimeout, httpx.ReadError, request) from exc
            body = self._body(conn, request, status, fields, close or minor == 0)
        except BaseException:
            self._pool.discard(conn)
            raise
        extensions = {"http_version": b"HTTP/1.1" if minor else b"HTTP/1.0", "reason_phrase": reason}
        return httpx.Response(status, headers=_headers(fields), stream=body, extensions=extensions)

    @staticmethod
    def _head(request: Any) -> tuple[bytes, bool, bool]:
        """The request line and headers, checked as h11 checks them (no header injection), and
        whether the body goes chunked and the request asks to close the connection. The names are
        checked joined, in one match (tokens joined make a token), the lines in another (where an
        empty name leaves its line malformed)."""
        fields = request.headers._list
        lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        names = []
        chunked = close = False
        for name, lower, value in fields:
            lines += (name, b": ", value, b"\r\n")
            names.append(name)
            if lower == b"transfer-encoding":
                chunked = True
            elif lower == b"connection":
                close = close or b"close" in value.lower()
        lines.append(b"\r\n")
        block = b"".join(lines[4:])  # a line break in a value would add a line: counted, refused
        if (
            (names and not _TOKEN.fullmatch(b"".join(names)))
            or block.count(b"\n") != len(fields) + 1
            or not _REQUEST_HEADERS.fullmatch(block)
        ):
            raise _refused(names, request)
        return b"".join(lines), chunked, close

    @staticmethod
    def _send(sock: socket.socket, head: bytes, stream: Any, chunked: bool) -> None:
        """Head and body: one ``sendall`` for a body of bytes; chunked framing when the request
        asks for it (a body of unknown length)."""
        parts = list(stream)
        if not chunked:
            sock.sendall(head + b"".join(parts))
            return
        sock.sendall(head)
        for part in parts:
            if part:
                sock.sendall(b"%x\r\n%b\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")

    def _body(self, conn: Connection, request: Any, status: int, fields: list[Field], close: bool) -> _Body:
        """How the body is framed (RFC 9112 section 6.3) and whether the connection stays open."""
        framing = _framing(fields)
        close = close or b"close" in framing.get(b"connection", ())
        if request.method == "HEAD" or status in (101, 204, 304):
            return _Body(self._pool, conn, request, 0, False, not close and status != 101)
        codings = framing.get(b"transfer-encoding")
        if codings:
            if codings != [b"chunked"]:
                raise _remote(f"unsupported Transfer-Encoding: {b', '.join(codings)!r}", request)
            return _Body(self._pool, conn, request, None, True, not close)
        lengths = set(framing.get(b"content-length", ()))
        if lengths:
            value = lengths.pop()
            if lengths or not value.isdigit():
                raise _remote("a malformed Content-Length", request)
            return _Body(self._pool, conn, request, int(value), False, not close)
        return _Body(self._pool, conn, request, None, False, False)  # until the server closes

    def close(self) -> None:
        self._pool.close()
