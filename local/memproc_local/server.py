"""The HTTP side of the local API, on werkzeug's threaded development server.

werkzeug owns the HTTP/1.1 framing (request parsing, chunked bodies, ``Expect: 100-continue``,
reading and discarding a refused body); this module is the WSGI application that turns each
request into the API Gateway event of its route, calls the handler and answers as API Gateway
would, including the errors API Gateway produces itself (413, unknown route, 502).
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from wsgiref.types import StartResponse, WSGIEnvironment

from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wsgi import get_input_stream

from memproc_local.events import LambdaContext, MalformedResponse, build_event, to_http
from memproc_local.gateway_auth import LocalAuth, Refusal
from memproc_local.handlers import function_lock, load_handler
from memproc_local.routing import Route, RouteTable
from memproc_local.template import (
    cors_from_template,
    gateway_responses_from_template,
    read_template,
    render_gateway_response,
    routes_from_template,
)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "LocalApiServer"]

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's hard payload limit
API_GATEWAY_TIMEOUT_SECONDS = 29.0  # REST API integration timeout, whatever the function's Timeout
# environ keys for what WSGI loses and API Gateway keeps: the request target exactly as sent
# (percent-encoding included) and the header lines (spelling and repeats included).
_TARGET = "memproc_local.target"
_HEADER_LINES = "memproc_local.header_lines"
_REASONS = {status.value: status.phrase for status in HTTPStatus}


class _RequestHandler(WSGIRequestHandler):
    """werkzeug's request handler, keeping the raw request the events are built from."""

    # The status line and headers leave in one send and the body in another; with Nagle on, a
    # small body waits for the client's (delayed) ACK of the headers.
    disable_nagle_algorithm = True

    def make_environ(self) -> WSGIEnvironment:
        environ = super().make_environ()
        environ[_TARGET] = self.path
        environ[_HEADER_LINES] = self.headers.items()
        return environ

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: the application logs one line per request, with the function and the time."""


@dataclass
class _Reply:
    """A response decided but not yet written; logged first so the log line never trails the client."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    function: str | None = None


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def _split_target(target: str) -> tuple[str, str]:
    """(raw path, raw query) from the request target; absolute-form targets are accepted."""
    if not target.startswith("/"):
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    path, _, query = target.partition("?")
    return path, query.partition("#")[0]


def _forwarded_headers(
    lines: Iterable[tuple[str, str]], client_ip: str, server_port: str
) -> list[tuple[str, str]]:
    """The client's headers plus the X-Forwarded-* ones API Gateway adds."""
    pairs = list(lines)
    lower = {k.lower() for k, _ in pairs}
    if "x-forwarded-for" in lower:
        pairs = [(k, f"{v}, {client_ip}" if k.lower() == "x-forwarded-for" else v) for k, v in pairs]
    else:
        pairs.append(("X-Forwarded-For", client_ip))
    if "x-forwarded-port" not in lower:
        pairs.append(("X-Forwarded-Port", server_port))
    if "x-forwarded-proto" not in lower:
        pairs.append(("X-Forwarded-Proto", "http"))
    if "x-amzn-trace-id" not in lower:
        pairs.append(("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"))
    return pairs


class LocalApiServer:
    """The API of a SAM template on a local port, without Docker.

    ``port=0`` binds a free port (read it back from ``port``/``url``). ``max_body_bytes``
    defaults to API Gateway's 10 MiB; ``stage`` shows up in ``requestContext``. ``auth`` stands in
    for API Gateway's authentication (an API key, or simulated Cognito claims; none by default).
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
        auth: LocalAuth | None = None,
    ) -> None:
        self.template_path = Path(template_path)
        self.project_root = Path(project_root)
        doc = read_template(self.template_path)
        self.routes: list[Route] = routes_from_template(doc, str(self.template_path))
        self.cors: dict[str, str] | None = cors_from_template(doc)
        self.auth = auth or LocalAuth()
        # API Gateway's own errors as the template has them for the AuthMode simulated here.
        self.gateway_responses: dict[str, dict[str, Any]] = gateway_responses_from_template(
            doc, self.auth.template_parameters(doc)
        )
        self.table = RouteTable(self.routes)
        self.stage = stage
        self.max_body_bytes = max_body_bytes
        self._log_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._serving = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._httpd = make_server(host, port, self._wsgi, threaded=True, request_handler=_RequestHandler)
        self.host = host
        self.port: int = int(self._httpd.port)
        shown = f"[{host}]" if ":" in host else host
        self.url: str = f"http://{shown}:{self.port}"

    # ----------------------------------------------------------------------- the WSGI application

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """One request: decide the reply, log it, then hand it to werkzeug as is."""
        start = time.perf_counter()
        method = environ["REQUEST_METHOD"].upper()
        reply = self._serve(environ, method)
        ms = (time.perf_counter() - start) * 1000
        suffix = f" {reply.function}" if reply.function else ""
        self._log(f"localapi: {method} {environ[_TARGET]} {reply.status} {ms:.1f}ms{suffix}")
        headers = reply.headers
        if not any(k.lower() == "content-type" for k, _ in headers):  # API Gateway's default
            headers = [*headers, ("Content-Type", "application/json")]
        start_response(
            f"{reply.status} {_REASONS.get(reply.status, '')}".rstrip(),
            [*headers, ("Content-Length", str(len(reply.body)))],
        )
        return [b"" if method == "HEAD" else reply.body]

    def _read_body(self, environ: WSGIEnvironment) -> bytes:
        """The request body; RequestEntityTooLarge past the limit.

        werkzeug cuts a chunked body off at ``max_content_length`` without an error, so one byte
        more than the limit is read and a body that reaches it is refused too.
        """
        body = get_input_stream(environ, max_content_length=self.max_body_bytes + 1).read()
        if len(body) > self.max_body_bytes:
            raise RequestEntityTooLarge()
        return body

    def _serve(self, environ: WSGIEnvironment, method: str) -> _Reply:
        """Decide the response to one request."""
        try:
            body = self._read_body(environ)
        except RequestEntityTooLarge:
            return self._too_large()
        except BadRequest:  # werkzeug's ClientDisconnected
            message = "request body shorter than Content-Length, or malformed chunked encoding"
            return _Reply(
                400, [], _json_bytes({"success": False, "error": {"code": "bad_request", "message": message}})
            )

        raw_path, query = _split_target(environ[_TARGET])
        match = self.table.match(method, raw_path)
        if match.resource is None:
            return self._not_found(method, raw_path)
        methods = self.table.methods(match.resource)
        if method == "OPTIONS" and "OPTIONS" not in methods and self.cors is not None:
            cors = dict(self.cors)
            cors.setdefault("Access-Control-Allow-Methods", ",".join((*match.allowed, "OPTIONS")))
            return _Reply(200, list(cors.items()), b"")
        route = match.route
        if route is None:
            allowed = ", ".join(match.allowed)
            message = f"{method} is not allowed on {match.resource}; allowed: {allowed}"
            error = {"success": False, "error": {"code": "method_not_allowed", "message": message}}
            return _Reply(405, [("Allow", allowed)], _json_bytes(error))

        admitted = self.auth.admit(environ[_HEADER_LINES])
        if isinstance(admitted, Refusal):
            return self._refused(admitted)
        client_ip = str(environ["REMOTE_ADDR"])
        headers = _forwarded_headers(environ[_HEADER_LINES], client_ip, str(self.port))
        event = build_event(
            route,
            method,
            raw_path,
            query,
            headers,
            body,
            match.path_params,
            self.stage,
            source_ip=client_ip,
            identity=admitted.identity,
            claims=admitted.claims,
            base_path="",  # served at the root: no stage segment in the URL
        )
        status, reply_headers, data = self._invoke(route, event)
        return _Reply(status, reply_headers, data, function=route.function)

    def _invoke(self, route: Route, event: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Call the handler like Lambda + API Gateway would; failures become API Gateway's 502."""
        started = time.monotonic()
        try:
            handler = load_handler(route, self.project_root)
            context = LambdaContext(route.function, route.timeout, route.memory_size)
            with function_lock(route.function):
                result = handler(event, context)
        except (Exception, SystemExit):
            self._log(
                f"localapi: {route.function} ({route.handler}) raised for {event['httpMethod']} "
                f"{event['path']}:\n{traceback.format_exc().rstrip()}"
            )
            return 502, [], _json_bytes({"message": "Internal server error"})
        elapsed = time.monotonic() - started
        if elapsed > route.timeout:
            self._log(
                f"localapi: WARNING {route.function} ran {elapsed:.1f}s, over its Timeout of "
                f"{route.timeout:g}s: Lambda would have stopped it (API Gateway: 504)"
            )
        elif elapsed > API_GATEWAY_TIMEOUT_SECONDS:
            self._log(
                f"localapi: WARNING {route.function} ran {elapsed:.1f}s; API Gateway gives up after "
                f"{API_GATEWAY_TIMEOUT_SECONDS:g}s and answers 504"
            )
        try:
            return to_http(result)
        except MalformedResponse as exc:
            self._log(f"localapi: {route.function} returned a malformed Lambda proxy response: {exc}")
            return 502, [], _json_bytes({"message": "Internal server error"})

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

    def _refused(self, refusal: Refusal) -> _Reply:
        """A request API Gateway's authentication turns away, rendered from the template if customised."""
        custom = self._gateway(refusal.response_type, refusal.status, refusal.message, "DEFAULT_4XX")
        return custom or _Reply(refusal.status, [], _json_bytes({"message": refusal.message}))

    def _not_found(self, method: str, path: str) -> _Reply:
        """An unknown route: the template's MISSING_AUTHENTICATION_TOKEN response, else a plain 404."""
        custom = self._gateway("MISSING_AUTHENTICATION_TOKEN", 403, "Missing Authentication Token", None)
        if custom is not None:
            return custom
        message = (
            f"No route for {method} {path} in {self.template_path.name} "
            "(API Gateway would answer 403 Missing Authentication Token)"
        )
        return _Reply(
            404, [], _json_bytes({"success": False, "error": {"code": "not_found", "message": message}})
        )

    def _log(self, line: str) -> None:
        """One line (or a traceback) to stderr; looked up per call so test capture sees it."""
        with self._log_lock:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    # ----------------------------------------------------------------------- lifecycle

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
