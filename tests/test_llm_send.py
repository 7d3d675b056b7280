"""llm.httpx_send: the openai client's HTTP client sends by a shorter way than httpx's ``send``,
and must answer what httpx's ``send`` answers. Each case goes to a real local server
(tests/local_http.py) through both, httpx's own ``Client.send`` on a twin client being the
reference: the same response (status, headers, content, request, elapsed, closed, history,
extensions, encodings, cookies kept), or the same error with the same request, and the same
requests on the wire. The private parts of httpx the shorter way relies on are pinned below.
"""

from __future__ import annotations

import datetime
import functools
import gzip
import hashlib
import inspect
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from memproc.llm import httpx_send
from memproc.llm.gated_http import http_client
from memproc.llm.transport import httpx
from tests.local_http import Server, read_request, sdk, serve

pytestmark = pytest.mark.timeout(60)

__all__ = ["serve"]  # a fixture: imported to be used, not called

_private = httpx_send._client  # httpx's _client module


def reply(status: bytes, body: bytes = b"", *extra: bytes, length: bool = True) -> bytes:
    head = [b"HTTP/1.1 " + status, *extra]
    if length:
        head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


JSON = b'{"id":"chatcmpl-1","choices":[],"usage":{"total_tokens":3}}'
OPENAI_HEADERS = (
    b"Content-Type: application/json",
    b"openai-processing-ms: 812",
    b"x-ratelimit-remaining-tokens: 29999000",
    b"x-request-id: req_abc123",
    b"X-Twice: one",
    b"x-twice: two",
)
ROUTES = {
    b"/json": reply(b"200 OK", JSON, *OPENAI_HEADERS),
    b"/empty": reply(b"204 No Content", length=False),
    b"/error": reply(b"500 Internal Server Error", b'{"error":{}}', b"Content-Type: application/json"),
    b"/chunked": reply(b"200 OK", b"5\r\nhello\r\n0\r\n\r\n", b"Transfer-Encoding: chunked", length=False),
    b"/gzip": reply(b"200 OK", gzip.compress(b"unzipped", mtime=0), b"Content-Encoding: gzip"),
    b"/identity": reply(b"200 OK", b"as is", b"Content-Encoding: identity"),
    b"/cookie": reply(b"200 OK", b"{}", b"Set-Cookie: __cf_bm=abc; Path=/; HttpOnly", b"Set-Cookie: b=2"),
    b"/redirect": reply(b"302 Found", b"moved", b"Location: /json"),
    b"/redirect-post": reply(b"307 Temporary Redirect", b"", b"Location: /json"),
    b"/loop": reply(b"301 Moved Permanently", b"", b"Location: /loop"),
    b"/located": reply(b"200 OK", b"here", b"Location: /elsewhere"),
    b"/latin-1": reply(b"200 OK", "café".encode("latin-1"), b"Content-Type: text/plain; charset=latin-1"),
    b"/no-charset": reply(b"200 OK", "café".encode("latin-1"), b"Content-Type: text/plain"),
    b"/http10": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"/until-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it",
}
CLOSING = {  # answered, then the connection closes
    b"/broken": b"SSH-2.0-OpenSSH_9.6\r\n",
    b"/short": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    b"/until-close": ROUTES[b"/until-close"],
}


class Wire:
    """The server's side of the cases: what it received, request by request."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, dict[bytes, bytes], bytes]] = []

    def handler(self, sock: socket.socket, server: Server) -> None:
        reader = sock.makefile("rb")
        while (request := read_request(reader)) is not None:
            self.seen.append(request)
            path = request[0].split()[1].removeprefix(b"/v1")  # the SDK's base URL
            if path == b"/silent":
                server.done.wait(30)
                return
            if path in CLOSING:
                sock.sendall(CLOSING[path])
                reader.close()
                sock.close()
                return
            sock.sendall(ROUTES[path])


def snapshot(response: Any, sent: Any) -> dict[str, Any]:
    """What a caller can see of a response (and of the ones before it)."""
    elapsed = response.elapsed if response.is_closed else datetime.timedelta()
    following = response.next_request
    return {
        "status": response.status_code,
        "reason": response.reason_phrase,
        "http_version": response.http_version,
        "headers": response.headers.multi_items(),
        "content": response.content if response.is_closed else None,
        "text": response.text if response.is_closed else None,
        "encoding": response.encoding,
        "default_encoding": response.default_encoding,
        "request": (response.request is sent, response.request.method, str(response.request.url)),
        "url": str(response.url),
        "closed": (response.is_closed, response.is_stream_consumed),
        "downloaded": response.num_bytes_downloaded,
        "elapsed": isinstance(elapsed, datetime.timedelta) and elapsed.total_seconds() >= 0,
        "history": [snapshot(r, r.request) for r in response.history],
        "next_request": following and (following.method, str(following.url)),
        "extensions": {k: v if isinstance(v, bytes) else type(v) for k, v in response.extensions.items()},
        "success": response.is_success,
    }


def outcome(
    client: Any, send: Callable[..., Any], method: str, url: str, body: str = "", **kwargs: Any
) -> Any:
    """The case's result through `send`, and whether the shorter way read the response (httpx's
    send leaves its timing stream on each response it reads)."""
    stream = kwargs.get("stream", False)
    content: Any = b'{"model":"m"}' if method == "POST" else None
    if body == "async":
        content = _chunks()
    build = httpx.Request if body == "bare" else client.build_request  # bare: no client's timeout
    request = build(method, url, content=content)
    try:
        response = send(request, **kwargs)
    except Exception as exc:
        return ("raised", type(exc), str(exc), getattr(exc, "request", None) is request), None
    shorter = not isinstance(response.stream, _private.BoundSyncStream)
    seen = [snapshot(response, request)]
    if stream:
        response.read()
        seen.append(snapshot(response, request))
    jar = sorted((c.name, c.value, c.domain, c.path) for c in client.cookies.jar)
    return (seen, jar), shorter


async def _chunks() -> Any:
    yield b"{}"


CASES: dict[str, tuple[dict[str, Any], str, str, dict[str, Any], bool]] = {
    # name: client options, method, path, send options, whether the shorter way reads the response
    "json": ({}, "POST", "/json", {}, True),
    "no content": ({}, "GET", "/empty", {}, True),
    "server error": ({}, "POST", "/error", {}, True),
    "chunked": ({}, "GET", "/chunked", {}, True),
    "HEAD": ({}, "HEAD", "/json", {}, True),
    "HTTP/1.0": ({}, "GET", "/http10", {}, True),
    "until the close": ({}, "GET", "/until-close", {}, True),
    "latin-1 charset": ({}, "GET", "/latin-1", {}, True),
    "default encoding": ({"default_encoding": "latin-1"}, "GET", "/no-charset", {}, True),
    "encoding guessed": ({"default_encoding": lambda content: "latin-1"}, "GET", "/no-charset", {}, True),
    "location on a 200": ({}, "GET", "/located", {}, True),
    "cookies": ({}, "GET", "/cookie", {}, True),
    "no auth asked for": ({"auth": ("u", "p")}, "GET", "/json", {"auth": None}, True),
    "broken reply": ({}, "GET", "/broken", {}, True),
    "short body": ({}, "GET", "/short", {}, True),
    "read timeout": ({"timeout": httpx.Timeout(5.0, read=0.1)}, "POST", "/silent", {}, True),
    # sent the shorter way, read by httpx's own code: its decoders, its redirect loop
    "gzip": ({}, "GET", "/gzip", {}, False),
    "identity encoding": ({}, "GET", "/identity", {}, False),
    "redirect followed": ({}, "GET", "/redirect", {}, False),
    "307 redirect followed": ({}, "POST", "/redirect-post", {}, False),
    "redirect not followed": ({}, "GET", "/redirect", {"follow_redirects": False}, False),
    "redirects not followed by the client": ({"follow_redirects": False}, "GET", "/redirect", {}, False),
    "too many redirects": ({"max_redirects": 3}, "GET", "/loop", {}, False),
    # httpx's own send, all the way
    "stream": ({}, "POST", "/json", {"stream": True}, False),
    "client auth": ({"auth": ("u", "p")}, "GET", "/json", {}, False),
    "request auth": ({}, "GET", "/json", {"auth": ("u", "p")}, False),
    "request hooks": (
        {"event_hooks": {"request": [lambda r: r.headers.__setitem__("x-hooked", "1")]}},
        "GET",
        "/json",
        {},
        False,
    ),
    "response hooks": ({"event_hooks": {"response": [lambda r: r.read()]}}, "GET", "/json", {}, False),
    "auth in the URL": ({"userinfo": "u:p@"}, "GET", "/json", {}, False),
    "a request of no client's": ({"body": "bare"}, "GET", "/json", {}, False),
    "an async body": ({"body": "async"}, "POST", "/json", {}, False),
    "no redirects allowed at all": ({"max_redirects": -1}, "GET", "/json", {}, False),
}


@pytest.mark.parametrize("lean", [True, False], ids=["lean transport", "httpx transport"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_shorter_way_answers_what_httpxs_send_answers(
    serve: Callable[..., Server], case: str, lean: bool
) -> None:
    options, method, path, send_options, shorter = CASES[case]
    wire = Wire()
    server = serve(wire.handler)
    results, wires = [], []
    for way in ("httpx", "shorter"):
        client = http_client(lean=lean)
        for name, value in options.items():
            if name in ("auth", "event_hooks", "follow_redirects", "max_redirects", "timeout"):
                setattr(client, name, value)
        client._default_encoding = options.get("default_encoding", "utf-8")
        url = server.url(path, host=options.get("userinfo", "") + "127.0.0.1")
        before = len(wire.seen)
        with client:  # opened: a client's first request, unopened, always goes httpx's way
            send = client.send if way == "shorter" else functools.partial(httpx.Client.send, client)
            result, took_shorter = outcome(
                client, send, method, url, body=options.get("body", ""), **send_options
            )
        results.append(result)
        wires.append(wire.seen[before:])
        if way == "shorter" and result[0] != "raised":
            assert took_shorter == shorter
    assert results[0] == results[1]
    assert wires[0] == wires[1]
    assert wires[0] or results[0][0] == "raised"  # the request reached the server, or was refused


def test_the_same_errors_before_any_response() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = []
    for way in ("httpx", "shorter"):
        with http_client() as client:
            send = client.send if way == "shorter" else functools.partial(httpx.Client.send, client)
            results.append(outcome(client, send, "GET", f"http://127.0.0.1:{port}/")[0])
            results.append(outcome(client, send, "GET", "ftp://127.0.0.1/")[0])
        results.append(outcome(client, send, "GET", f"http://127.0.0.1:{port}/")[0])  # closed
    assert results[:3] == results[3:]
    assert [r[1] for r in results[:3]] == [httpx.ConnectError, httpx.UnsupportedProtocol, RuntimeError]


def test_httpx_logs_each_request_as_it_does(serve: Callable[..., Server], caplog: Any) -> None:
    server = serve(Wire().handler)
    with http_client() as client, caplog.at_level(logging.INFO, logger=httpx.__name__):
        for send in (client.send, functools.partial(httpx.Client.send, client)):
            send(client.build_request("GET", server.url("/json")))
    logged = f'HTTP Request: GET {server.url("/json")} "HTTP/1.1 200 OK"'
    assert [r.getMessage() for r in caplog.records] == [logged, logged]


def test_the_sdks_requests_go_the_shorter_way(serve: Callable[..., Server]) -> None:
    wire = Wire()
    server = serve(wire.handler)
    client = sdk(server)
    first = client.post("/json", cast_to=httpx.Response, body={"model": "m"})  # opens the client
    response = client.post("/json", cast_to=httpx.Response, body={"model": "m"})
    assert isinstance(first.stream, _private.BoundSyncStream)
    assert not isinstance(response.stream, _private.BoundSyncStream)
    assert response.json() == first.json() and response.headers["x-request-id"] == "req_abc123"
    assert response.is_closed and response.request.headers["authorization"] == "Bearer k"


# --- the private parts of httpx it relies on -----------------------------------------------------

# httpx's code that httpx_send.send stands in for; a change there is a change to check it against.
MIRRORED = (
    httpx.Client.send,
    httpx.Client._send_handling_auth,
    httpx.Client._send_handling_redirects,
    httpx.Client._send_single_request,
    httpx.Client._build_request_auth,
    httpx.Client._set_timeout,
    httpx.Response.read,
    httpx.Response.iter_bytes,
    httpx.Response.iter_raw,
    httpx.Response.close,
    httpx.Cookies.extract_cookies,
    _private.BoundSyncStream,
)
MIRRORED_SHA256 = "7c63b06a2f948fd9a317f4b0fd9e9c1521cce5b43f3eda65c869290abf1542ad"


def test_httpxs_send_is_still_the_code_the_shorter_way_stands_in_for() -> None:
    source = "\n".join(inspect.getsource(part) for part in MIRRORED)
    assert hashlib.sha256(source.encode()).hexdigest() == MIRRORED_SHA256, (
        f"{httpx.__name__} {httpx.__version__} changed the send that llm/httpx_send.py mirrors: "
        "check that module against it, then update MIRRORED_SHA256"
    )


def test_the_private_parts_of_httpx_are_still_there() -> None:
    client = httpx.Client()
    assert client._state is _private.ClientState.UNOPENED
    with client:
        assert client._state is _private.ClientState.OPENED is httpx_send._OPENED
    assert client._state is _private.ClientState.CLOSED
    assert client._auth is None and isinstance(httpx.Client(auth=("u", "p"))._auth, httpx.BasicAuth)
    hook = print
    assert client._event_hooks == {"request": [], "response": []}
    assert httpx.Client(event_hooks={"response": [hook]})._event_hooks == {"request": [], "response": [hook]}
    assert client._default_encoding == "utf-8"
    assert httpx.Client(default_encoding="ascii")._default_encoding == "ascii"
    assert client._transport_for_url(httpx.URL("http://127.0.0.1/")) is client._transport
    assert list(inspect.signature(client._build_redirect_request).parameters) == ["request", "response"]
    assert list(inspect.signature(client._send_handling_redirects).parameters) == [
        "request",
        "follow_redirects",
        "history",
    ]
    assert httpx_send._DEFAULT is httpx.USE_CLIENT_DEFAULT
    assert httpx_send._logger is logging.getLogger(httpx.__name__)

    timed = _private.BoundSyncStream(httpx.ByteStream(b"abc"), start=time.perf_counter())
    assert list(timed) == [b"abc"] and timed.elapsed is None
    timed.close()
    assert isinstance(timed.elapsed, datetime.timedelta)

    read = httpx.Response(200, stream=httpx.ByteStream(b"abc"))
    assert read._num_bytes_downloaded == 0
    read.read()
    assert read._content is read.content and read._num_bytes_downloaded == read.num_bytes_downloaded == 3
    assigned = httpx.Response(200, stream=httpx.ByteStream(b""))
    assigned._content, assigned._num_bytes_downloaded = b"set", 3
    assert assigned.content == b"set" and assigned.read() == b"set" and assigned.num_bytes_downloaded == 3
    assert list(assigned.iter_bytes()) == [b"set"]

    headers = httpx.Headers([(b"Content-Encoding", b"gzip"), ("Set-Cookie", "a=1")])
    assert headers._list == [
        (b"Content-Encoding", b"content-encoding", b"gzip"),
        (b"Set-Cookie", b"set-cookie", b"a=1"),
    ]
