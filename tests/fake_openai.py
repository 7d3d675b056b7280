"""A fake OpenAI-compatible HTTP server for tests, benchmarks and local development.

Stdlib only. It speaks just enough of the API for memproc (``POST /v1/chat/completions`` with a
``json_schema`` response format, ``POST /v1/embeddings``), answers deterministically with the
offline provider's heuristics and hashing embeddings, and can be told to fail in the ways a real
server does (5xx, 429 with Retry-After, hanging requests, malformed output, refusals, wrong vector
sizes) so the real ``openai`` client can be exercised end to end without mocking it.

    with FakeOpenAI() as fake:
        settings = load_settings(openai_api_key="test", openai_base_url=fake.base_url)
        fake.fail_next("429", retry_after=2)

Standalone: ``python tests/fake_openai.py --port 8099 --latency 0.2``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from memproc.llm import hashing_embedding, heuristic_extraction, unpack_user_message

__all__ = ["FAILURE_KINDS", "FakeOpenAI", "RecordedRequest", "main"]

# Kinds accepted by fail_next/fail_always, besides any HTTP status "4xx"/"5xx" given as a string.
FAILURE_KINDS = frozenset({"timeout", "disconnect", "malformed", "refusal", "bad_dimensions"})
_STATUS_KIND_RE = re.compile(r"[45]\d\d")
# Kinds that only make sense for one endpoint; a queued failure waits for a request it applies to.
_KIND_ENDPOINTS = {"malformed": "chat", "refusal": "chat", "bad_dimensions": "embeddings"}
_STATUS_TEXT = {
    400: ("invalid_request_error", "Bad request"),
    401: ("invalid_request_error", "Incorrect API key provided"),
    403: ("invalid_request_error", "Forbidden"),
    404: ("invalid_request_error", "Not found"),
    408: ("timeout", "Request timeout"),
    409: ("conflict", "Conflict"),
    422: ("invalid_request_error", "Unprocessable entity"),
    429: ("rate_limit_exceeded", "Rate limit reached, please retry later"),
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received (recorded before any failure is injected)."""

    method: str
    path: str
    body: Any
    headers: dict[str, str]


@dataclass
class _Failure:
    kind: str
    path: str  # "chat" | "embeddings" | "any"
    retry_after: float | None = None

    def applies_to(self, endpoint: str) -> bool:
        wanted = _KIND_ENDPOINTS.get(self.kind)
        return (self.path in ("any", endpoint)) and (wanted is None or wanted == endpoint)


@dataclass
class _Counters:
    chat_calls: int = 0
    embedding_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default listen backlog (5) drops SYNs under 64+ simultaneous connects (1 s retransmits).
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], fake: FakeOpenAI) -> None:
        self.fake = fake
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries Content-Length
    disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stalls
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and benchmarks make thousands of requests."""

    def do_GET(self) -> None:
        self.server.fake._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._handle(self, "POST")

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send_raw(status, json.dumps(payload).encode(), headers)

    def send_raw(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away (e.g. it timed out first)
            self.close_connection = True


class FakeOpenAI:
    """An OpenAI-compatible server on 127.0.0.1 (a free port unless given), serving from a thread.

    Attributes that tests may set at any time: ``latency`` (seconds added to each request),
    ``embedding_latency`` (seconds for embeddings requests instead, when not None),
    ``timeout_sleep`` (how long a "timeout" failure holds a request before dropping it),
    ``extraction_for`` (``callable(transcript) -> dict | None`` overriding the chat content),
    ``embedding_for`` (``callable(text) -> vector | None`` replacing the hashing embeddings; a text it
    returns None for fails the request with HTTP 400, so a missing vector is never made up),
    ``record_requests`` (False keeps memory flat in long benchmarks; counters still count).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency: float = 0.0) -> None:
        self.latency = latency
        self.embedding_latency: float | None = None
        self.timeout_sleep = 5.0
        self.extraction_for: Callable[[str], dict[str, Any] | None] | None = None
        self.embedding_for: Callable[[str], list[float] | None] | None = None
        self.record_requests = True
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._queue: list[_Failure] = []
        self._always: list[_Failure] = []
        self._closing = threading.Event()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._server = _Server((host, port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{host}:{self.port}/v1"

    def close(self) -> None:
        """Stop serving, release held requests, drop open connections and wait briefly for handlers."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._handler_threads)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=2.0)
        self._thread.join(timeout=2.0)

    def __enter__(self) -> FakeOpenAI:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
                self._handler_threads.add(threading.current_thread())
            else:
                self._connections.discard(conn)
                self._handler_threads.discard(threading.current_thread())

    # -- observation ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._counters.requests)

    @property
    def chat_calls(self) -> int:
        with self._lock:
            return self._counters.chat_calls

    @property
    def embedding_calls(self) -> int:
        with self._lock:
            return self._counters.embedding_calls

    @property
    def tokens_in(self) -> int:
        with self._lock:
            return self._counters.tokens_in

    @property
    def tokens_out(self) -> int:
        with self._lock:
            return self._counters.tokens_out

    @property
    def peak_in_flight(self) -> int:
        """The most requests the fake was handling at the same moment (since start or ``reset``)."""
        with self._lock:
            return self._counters.peak_in_flight

    def reset(self) -> None:
        """Forget recorded requests and zero the counters (failures stay queued)."""
        with self._lock:
            self._counters = _Counters()

    # -- failure injection ----------------------------------------------------------------------

    @staticmethod
    def _check(kind: str, path: str) -> None:
        if kind not in FAILURE_KINDS and not _STATUS_KIND_RE.fullmatch(kind):
            raise ValueError(f"unknown failure kind {kind!r}")
        if path not in ("chat", "embeddings", "any"):
            raise ValueError(f"path must be 'chat', 'embeddings' or 'any', not {path!r}")

    def fail_next(
        self, kind: str, count: int = 1, path: str = "any", retry_after: float | None = None
    ) -> None:
        """Queue ``count`` failures of ``kind``; each is consumed by the next request it applies to."""
        self._check(kind, path)
        with self._lock:
            self._queue.extend(_Failure(kind, path, retry_after) for _ in range(count))

    def fail_always(self, kind: str, path: str = "any", retry_after: float | None = None) -> None:
        """Fail every applicable request (after the queued ones) until ``clear_failures``."""
        self._check(kind, path)
        with self._lock:
            self._always.append(_Failure(kind, path, retry_after))

    def clear_failures(self) -> None:
        with self._lock:
            self._queue.clear()
            self._always.clear()

    def _take_failure(self, endpoint: str) -> _Failure | None:
        with self._lock:
            for i, failure in enumerate(self._queue):
                if failure.applies_to(endpoint):
                    return self._queue.pop(i)
            for failure in self._always:
                if failure.applies_to(endpoint):
                    return failure
        return None

    # -- request handling -----------------------------------------------------------------------

    def _handle(self, handler: _Handler, method: str) -> None:
        with self._lock:
            counters = self._counters
            counters.in_flight += 1
            counters.peak_in_flight = max(counters.peak_in_flight, counters.in_flight)
        try:
            self._respond(handler, method)
        except Exception as exc:  # a broken test responder must surface as an error, not a hang
            handler.send_json(500, _error("server_error", f"fake server error: {type(exc).__name__}: {exc}"))
        finally:
            with self._lock:
                counters.in_flight -= 1

    def _respond(self, handler: _Handler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length > 0 else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = handler.path.split("?", 1)[0].rstrip("/")
        endpoint = None
        if method == "POST" and path.endswith("/chat/completions"):
            endpoint = "chat"
        elif method == "POST" and path.endswith("/embeddings"):
            endpoint = "embeddings"
        with self._lock:
            if self.record_requests:
                self._counters.requests.append(
                    RecordedRequest(
                        method, handler.path, body, {k.lower(): v for k, v in handler.headers.items()}
                    )
                )
            if endpoint == "chat":
                self._counters.chat_calls += 1
            elif endpoint == "embeddings":
                self._counters.embedding_calls += 1

        if method == "GET" and path.endswith("/models"):
            handler.send_json(
                200, {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "fake"}]}
            )
            return
        if endpoint is None:
            handler.send_json(404, _error("not_found", f"no route for {method} {path}"))
            return

        failure = self._take_failure(endpoint)
        if failure is not None and failure.kind in ("timeout", "disconnect"):
            if failure.kind == "timeout":
                # Hold the request past the client's timeout; never beyond close() or timeout_sleep.
                self._closing.wait(self.timeout_sleep)
            handler.close_connection = True  # drop it without an answer
            return
        latency = self.latency
        if endpoint == "embeddings" and self.embedding_latency is not None:
            latency = self.embedding_latency
        if latency > 0:
            self._closing.wait(latency)
        if failure is not None and _STATUS_KIND_RE.fullmatch(failure.kind):
            self._send_status_failure(handler, failure)
            return
        kind = failure.kind if failure is not None else None
        if endpoint == "chat":
            self._chat(handler, body, kind)
        else:
            self._embeddings(handler, body, kind)

    @staticmethod
    def _send_status_failure(handler: _Handler, failure: _Failure) -> None:
        status = int(failure.kind)
        code, message = _STATUS_TEXT.get(status, ("server_error", "The server had an error"))
        headers: dict[str, str] = {}
        if status == 429 or failure.retry_after is not None:
            value = failure.retry_after if failure.retry_after is not None else 1
            headers["Retry-After"] = f"{value:g}"
        handler.send_json(status, _error(code, f"{message} (injected {status})"), headers)

    def _chat(self, handler: _Handler, body: Any, failure: str | None) -> None:
        problem = _chat_request_problem(body)
        if problem:
            handler.send_json(400, _error("invalid_request_error", problem))
            return
        messages = body["messages"]
        user_content = next(
            (str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), ""
        )
        transcript, session_ts, previous_summary = unpack_user_message(user_content)
        if transcript is None:
            transcript = user_content
        refusal: str | None = None
        if failure == "malformed":
            content: str | None = '{"memories": [{"text": "truncated'
        elif failure == "refusal":
            content, refusal = None, "I'm sorry, but I can't help with that request."
        else:
            payload = self.extraction_for(transcript) if self.extraction_for is not None else None
            if payload is None:
                payload = heuristic_extraction(
                    transcript,
                    session_timestamp=session_ts or datetime.now(UTC),
                    previous_summary=previous_summary,
                ).model_dump(mode="json")
            content = json.dumps(payload)
        prompt_tokens = sum(len(str(m.get("content") or "")) for m in messages) // 4
        completion_tokens = len(content or refusal or "") // 4
        with self._lock:
            self._counters.tokens_in += prompt_tokens
            self._counters.tokens_out += completion_tokens
            number = self._counters.chat_calls
        handler.send_json(
            200,
            {
                "id": f"chatcmpl-fake-{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "system_fingerprint": "fp_fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": refusal},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )

    def _embeddings(self, handler: _Handler, body: Any, failure: str | None) -> None:
        if not isinstance(body, dict) or "input" not in body or "model" not in body:
            handler.send_json(400, _error("invalid_request_error", "'input' and 'model' are required"))
            return
        inputs = body["input"]
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            handler.send_json(400, _error("invalid_request_error", "'input' must be a string or strings"))
            return
        if any(not t for t in inputs):
            handler.send_json(400, _error("invalid_request_error", "'input' cannot contain empty strings"))
            return
        dimensions = body.get("dimensions") or 1536
        if not isinstance(dimensions, int) or dimensions < 1:
            handler.send_json(400, _error("invalid_request_error", "'dimensions' must be a positive integer"))
            return
        returned = dimensions + 1 if failure == "bad_dimensions" else dimensions
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            if self.embedding_for is None:
                vector = hashing_embedding(text, returned)
            else:
                found = self.embedding_for(text)
                if found is None:
                    handler.send_json(400, _error("invalid_request_error", f"no embedding for {text!r}"))
                    return
                vector = [*found, 0.0] if failure == "bad_dimensions" else found
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        prompt_tokens = sum(len(t) for t in inputs) // 4
        with self._lock:
            self._counters.tokens_in += prompt_tokens
        handler.send_json(
            200,
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            },
        )


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def _chat_request_problem(body: Any) -> str | None:
    """Why a chat request is not one memproc would send (None when it is fine)."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "'messages' must be a non-empty list of objects"
    if not body.get("model"):
        return "'model' is required"
    response_format = body.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return "response_format.type must be 'json_schema'"
    schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        return "response_format.json_schema.schema is required"
    return None


def main(argv: list[str] | None = None) -> None:
    """Run the fake standalone until interrupted (benchmarks and local development)."""
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server (chat + embeddings).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeOpenAI(args.host, args.port, latency=args.latency) as fake:
        print(f"fake OpenAI listening on {fake.base_url} (latency {args.latency:g}s)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
