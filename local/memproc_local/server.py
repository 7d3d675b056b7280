"""The HTTP side of the local API: each request to a template route becomes a handler invocation.

Run it directly with ``python -m memproc_local.server --template template.yaml --port 5001``.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import socketserver
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from memproc_local.events import LambdaContext, MalformedResponse, build_event, to_http
from memproc_local.handlers import function_lock, load_handler
from memproc_local.routing import Route, RouteTable
from memproc_local.template import (
    cors_from_template,
    gateway_responses_from_template,
    read_template,
    render_gateway_response,
    routes_from_template,
)

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's hard payload limit
API_GATEWAY_TIMEOUT_SECONDS = 29.0  # REST API integration timeout, whatever the function's Timeout
_DRAIN_CAP_BYTES = 256 * 1024 * 1024


class _BodyTooLarge(Exception):
    """The request body is over the limit; ``remaining`` bytes of it are still unread (-1: unknown)."""

    def __init__(self, remaining: int) -> None:
        super().__init__(remaining)
        self.remaining = remaining


class _BadRequest(Exception):
    """The request framing is unusable (bad Content-Length, broken chunking)."""


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection; threads are daemons so idle keep-alive clients never block exit."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # socketserver's 5 resets simultaneous connects from busy clients

    def __init__(self, address: tuple[str, int], app: LocalApiServer) -> None:
        self.app = app
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse-DNS ``getfqdn`` (slow or hanging offline)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


@dataclass
class _Reply:
    """A response decided but not yet written; logged first so the log line never trails the client."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    function: str | None = None
    close: bool = False
    drain: int = 0  # bytes of a refused request body still to read and discard


class _RequestHandler(BaseHTTPRequestHandler):
    """Turns each HTTP request into a handler invocation; every response carries Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = "memproc-localapi"
    # Headers and body leave in two writes; with Nagle on, the body waits for the client's delayed
    # ACK of the headers (~40 ms per keep-alive request on Linux).
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are dropped eventually
    server: _HTTPServer

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: one concise line per request is written by ``_dispatch`` instead."""

    def log_message(self, format: str, *args: Any) -> None:
        self.server.app._log(f"localapi: {self.address_string()} {format % args}")

    def handle_expect_100(self) -> bool:
        """Refuse an oversized body before the client sends it (curl asks for bodies over 1 MiB)."""
        length = self._content_length()
        if length is not None and length > self.server.app.max_body_bytes:
            reply = self.server.app._too_large()
            reply.close = True
            self._finish(reply, time.perf_counter())
            return False
        return super().handle_expect_100()

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        try:
            value = int(raw.strip())
        except ValueError:
            return None
        return value if value >= 0 else None

    def _read_body(self) -> bytes | None:
        """The request body within the size limit; chunked transfer encoding is accepted."""
        limit = self.server.app.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        length = self._content_length()
        if length is None:
            raise _BadRequest(f"invalid Content-Length {raw!r}")
        if length > limit:
            raise _BodyTooLarge(length)
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            raise _BadRequest("request body shorter than Content-Length")
        return data

    def _read_chunked(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("malformed chunk size") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > limit:
                raise _BodyTooLarge(-1)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _BadRequest("truncated chunk")
            chunks.append(chunk)
            self.rfile.readline(3)

    def _drain(self, remaining: int) -> None:
        """Read and discard the rest of a refused body so the client sees our 413, not a reset."""
        if remaining <= 0 or remaining > _DRAIN_CAP_BYTES:
            return
        try:
            self.connection.settimeout(5)
            while remaining > 0:
                got = self.rfile.read(min(remaining, 1 << 20))
                if not got:
                    return
                remaining -= len(got)
        except OSError:
            return

    def _finish(self, reply: _Reply, start: float) -> None:
        """Log the request line, then write the response (and drain a refused body)."""
        ms = (time.perf_counter() - start) * 1000
        suffix = f" {reply.function}" if reply.function else ""
        self.server.app._log(f"localapi: {self.command} {self.path} {reply.status} {ms:.1f}ms{suffix}")
        self.send_response(reply.status)
        headers = reply.headers
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers = [*headers, ("Content-Type", "application/json")]
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)
        self.wfile.flush()
        self._drain(reply.drain)

    def _dispatch(self) -> None:
        start = time.perf_counter()
        self._finish(self._serve(), start)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    def _split_target(self) -> tuple[str, str]:
        """(raw path, raw query) from the request target; absolute-form targets are accepted."""
        target = self.path
        if not target.startswith("/"):
            parts = urlsplit(target)
            return parts.path or "/", parts.query
        path, _, query = target.partition("?")
        return path, query.partition("#")[0]

    def _serve(self) -> _Reply:
        """Decide the response to one request."""
        app = self.server.app
        try:
            body = self._read_body()
        except _BodyTooLarge as exc:
            reply = app._too_large()
            reply.close, reply.drain = True, exc.remaining
            return reply
        except _BadRequest as exc:
            error = {"error": {"code": "bad_request", "message": str(exc)}}
            return _Reply(400, [], _json_bytes(error), close=True)

        method = self.command.upper()
        raw_path, query = self._split_target()
        match = app.table.match(method, raw_path)
        if match.resource is None:
            return app._not_found(method, raw_path)
        methods = app.table.methods(match.resource)
        if method == "OPTIONS" and "OPTIONS" not in methods and app.cors is not None:
            cors = dict(app.cors)
            cors.setdefault("Access-Control-Allow-Methods", ",".join((*match.allowed, "OPTIONS")))
            return _Reply(200, list(cors.items()), b"")
        route = match.route
        if route is None:
            allowed = ", ".join(match.allowed)
            message = f"{method} is not allowed on {match.resource}; allowed: {allowed}"
            error = {"error": {"code": "method_not_allowed", "message": message}}
            return _Reply(405, [("Allow", allowed)], _json_bytes(error))

        event = build_event(
            route,
            method,
            raw_path,
            query,
            self._forwarded_headers(),
            body,
            match.path_params,
            app.stage,
            source_ip=self.client_address[0],
        )
        status, headers, data = self._invoke(route, event)
        return _Reply(status, headers, data, function=route.function)

    def _forwarded_headers(self) -> list[tuple[str, str]]:
        """The client's headers plus the X-Forwarded-* ones API Gateway adds."""
        pairs = [(k, v) for k, v in self.headers.items()]
        lower = {k.lower() for k, _ in pairs}
        client_ip = self.client_address[0]
        if "x-forwarded-for" in lower:
            pairs = [(k, f"{v}, {client_ip}" if k.lower() == "x-forwarded-for" else v) for k, v in pairs]
        else:
            pairs.append(("X-Forwarded-For", client_ip))
        if "x-forwarded-port" not in lower:
            pairs.append(("X-Forwarded-Port", str(self.server.server_port)))
        if "x-forwarded-proto" not in lower:
            pairs.append(("X-Forwarded-Proto", "http"))
        if "x-amzn-trace-id" not in lower:
            pairs.append(("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"))
        return pairs

    def _invoke(self, route: Route, event: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Call the handler like Lambda + API Gateway would; failures become API Gateway's 502."""
        app = self.server.app
        started = time.monotonic()
        try:
            handler = load_handler(route, app.project_root)
            context = LambdaContext(route.function, route.timeout, route.memory_size)
            # Like a Lambda container, one function serves one event at a time: a Powertools
            # resolver keeps per-request state on the app object, so threads must not share it.
            with function_lock(route.function):
                result = handler(event, context)
        except (Exception, SystemExit):
            app._log(
                f"localapi: {route.function} ({route.handler}) raised for {event['httpMethod']} "
                f"{event['path']}:\n{traceback.format_exc().rstrip()}"
            )
            return 502, [], _json_bytes({"message": "Internal server error"})
        elapsed = time.monotonic() - started
        if elapsed > route.timeout:
            app._log(
                f"localapi: WARNING {route.function} ran {elapsed:.1f}s, over its Timeout of "
                f"{route.timeout:g}s: Lambda would have stopped it (API Gateway: 504)"
            )
        elif elapsed > API_GATEWAY_TIMEOUT_SECONDS:
            app._log(
                f"localapi: WARNING {route.function} ran {elapsed:.1f}s; API Gateway gives up after "
                f"{API_GATEWAY_TIMEOUT_SECONDS:g}s and answers 504"
            )
        try:
            return to_http(result)
        except MalformedResponse as exc:
            app._log(f"localapi: {route.function} returned a malformed Lambda proxy response: {exc}")
            return 502, [], _json_bytes({"message": "Internal server error"})


class LocalApiServer:
    """The API of a SAM template on a local port, without Docker.

    ``port=0`` binds a free port (read it back from ``port``/``url``). ``max_body_bytes``
    defaults to API Gateway's 10 MiB; ``stage`` shows up in ``requestContext``.
    """

    def __init__(
        self,
        template_path: Path,
        project_root: Path,
        host: str = "127.0.0.1",
        port: int = 5001,
        *,
        stage: str = "local",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.template_path = Path(template_path)
        self.project_root = Path(project_root)
        doc = read_template(self.template_path)
        self.routes: list[Route] = routes_from_template(doc, str(self.template_path))
        self.cors: dict[str, str] | None = cors_from_template(doc)
        self.gateway_responses: dict[str, dict[str, Any]] = gateway_responses_from_template(doc)
        self.table = RouteTable(self.routes)
        self.stage = stage
        self.max_body_bytes = max_body_bytes
        self._log_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._serving = False
        self._closed = False
        self._thread: threading.Thread | None = None
        server_cls = _HTTPServer6 if ":" in host else _HTTPServer
        self._httpd = server_cls((host, port), self)
        self.host = host
        self.port: int = int(self._httpd.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        self.url: str = f"http://{shown}:{self.port}"

    def _gateway(
        self, response_type: str, default_status: int, message: str, fallback: str | None
    ) -> _Reply | None:
        """The template's gateway response for this error (or its DEFAULT_4XX/5XX), if it has one."""
        spec = self.gateway_responses.get(response_type)
        if spec is None and fallback is not None:
            spec = self.gateway_responses.get(fallback)
        if spec is None:
            return None
        status, headers, body = render_gateway_response(spec, response_type, default_status, message)
        return _Reply(status, headers, body)

    def _too_large(self) -> _Reply:
        """413 as API Gateway answers it (REQUEST_TOO_LARGE), rendered from the template if customised."""
        custom = self._gateway("REQUEST_TOO_LARGE", 413, "Request Too Long", "DEFAULT_4XX")
        return custom or _Reply(413, [], _json_bytes({"message": "Request Too Long"}))

    def _not_found(self, method: str, path: str) -> _Reply:
        """An unknown route: the template's MISSING_AUTHENTICATION_TOKEN response, else a plain 404."""
        custom = self._gateway("MISSING_AUTHENTICATION_TOKEN", 403, "Missing Authentication Token", None)
        if custom is not None:
            return custom
        message = (
            f"No route for {method} {path} in {self.template_path.name} "
            "(API Gateway would answer 403 Missing Authentication Token)"
        )
        return _Reply(404, [], _json_bytes({"error": {"code": "not_found", "message": message}}))

    def _log(self, line: str) -> None:
        """One line (or a traceback) to stderr; looked up per call so test capture sees it."""
        with self._log_lock:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`shutdown` is called from another thread."""
        with self._state_lock:
            if self._closed:
                raise RuntimeError("LocalApiServer is shut down")
            self._serving = True
        self._httpd.serve_forever(poll_interval=0.1)

    def start_in_thread(self) -> None:
        """Serve from a daemon thread (tests, and ``make dev`` next to the processor loop)."""
        with self._state_lock:
            if self._closed:
                raise RuntimeError("LocalApiServer is shut down")
            if self._thread is not None:
                return
            self._serving = True  # before the thread runs, so shutdown() cannot miss it
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="localapi", daemon=True
            )
        self._thread.start()

    def shutdown(self) -> None:
        """Stop serving and release the port; safe to call twice or without ever serving."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            serving = self._serving
        if serving:
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> LocalApiServer:
        self.start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def describe(self) -> str:
        """The route list, one per line, as printed at start-up."""
        width = max((len(r.method) for r in self.routes), default=3)
        lines = [f"  {r.method:<{width}} {self.url}{r.resource}  -> {r.function}" for r in self.routes]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m memproc_local.server``: serve a template's API until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--template", type=Path, default=Path("template.yaml"))
    parser.add_argument("--project-root", type=Path, default=None, help="default: the template's directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--stage", default="local")
    args = parser.parse_args(argv)
    root = args.project_root or args.template.resolve().parent
    server = LocalApiServer(args.template, root, args.host, args.port, stage=args.stage)
    sys.stderr.write(f"localapi: serving {len(server.routes)} routes on {server.url}\n{server.describe()}\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
