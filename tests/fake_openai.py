"""A fake OpenAI-compatible HTTP server for tests, benchmarks and local development.

Stdlib only, and nothing from memproc: a fake that reused production code would pass its own
regressions. It speaks just enough of the API for memproc (``POST /v1/chat/completions`` with a
``json_schema`` response format, ``POST /v1/embeddings``), answers deterministically with a small
model of its own (``extract`` and ``embedding`` below say exactly what it does), and can be told to
fail in the ways a real server does (5xx, 429 with Retry-After, hanging requests, malformed output,
refusals, wrong vector sizes) so the real ``openai`` client can be exercised end to end without
mocking it. It can also enforce a provider's rate limit (``limit_rate``: requests per sliding
window, 429 with Retry-After past it) and records when every request arrived (``arrivals``), so a
test can count the requests of any window from the server's side.

    with FakeOpenAI() as fake:
        settings = load_settings(openai_api_key="test", openai_base_url=fake.base_url)
        fake.fail_next("429", retry_after_ms=1)  # the SDK retries after 1 ms

Standalone: ``python tests/fake_openai.py --port 8099 --latency 0.2``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import re
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple

__all__ = [
    "FAILURE_KINDS",
    "Arrival",
    "FakeOpenAI",
    "RecordedRequest",
    "embedding",
    "extract",
    "main",
    "max_in_window",
    "packed_embedding",
]

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


class Arrival(NamedTuple):
    """When a request arrived (``time.monotonic()``), at which endpoint, and whether the fake's
    rate limit refused it (429)."""

    at: float
    endpoint: str
    throttled: bool


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most of ``times`` that fall in any window of ``window`` seconds, (t - window, t]."""
    ordered = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(ordered):
        while ordered[first] <= t - window:
            first += 1
        most = max(most, last - first + 1)
    return most


@dataclass
class _RateLimit:
    requests: int
    window: float
    accepted: deque[float] = field(default_factory=deque)


@dataclass
class _Failure:
    kind: str
    path: str  # "chat" | "embeddings" | "any"
    retry_after: float | str | None = None
    retry_after_ms: float | None = None

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
    throttled: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)


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
    ``reconciliation_for`` (the same, also given the shown memories as ``[(id, text)]``),
    ``embedding_for`` (``callable(text) -> vector | None`` replacing the hashing embeddings; a text it
    returns None for fails the request with HTTP 400, so a missing vector is never made up),
    ``record_requests`` (False keeps memory flat in long benchmarks; counters still count).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, latency: float = 0.0) -> None:
        self.latency = latency
        self.embedding_latency: float | None = None
        self.timeout_sleep = 5.0
        self.extraction_for: Callable[[str], dict[str, Any] | None] | None = None
        # Like extraction_for, but also given the memories the prompt shows as (id, text) pairs.
        self.reconciliation_for: Callable[[str, list[tuple[str, str]]], dict[str, Any] | None] | None = None
        self.embedding_for: Callable[[str], list[float] | None] | None = None
        self.record_requests = True
        self._lock = threading.Lock()
        self._counters = _Counters()
        self._queue: list[_Failure] = []
        self._always: list[_Failure] = []
        self._rate_limits: dict[str, _RateLimit] = {}
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
    def arrivals(self) -> list[Arrival]:
        """Every chat and embeddings request's arrival, oldest first (kept even without
        ``record_requests``)."""
        with self._lock:
            return list(self._counters.arrivals)

    @property
    def throttled(self) -> int:
        """Requests the fake's rate limit answered 429."""
        with self._lock:
            return self._counters.throttled

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
        self,
        kind: str,
        count: int = 1,
        path: str = "any",
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
    ) -> None:
        """Queue ``count`` failures of ``kind``; each is consumed by the next request it applies to.

        An HTTP status failure sends ``Retry-After: <retry_after>`` (seconds, or a string such as an
        HTTP date, as it is) and ``retry-after-ms: <retry_after_ms>`` when given; a 429 without
        either sends ``Retry-After: 1``, as OpenAI does. Tests pass a small ``retry_after_ms`` so the
        SDK's retries wait milliseconds, not seconds.
        """
        self._check(kind, path)
        with self._lock:
            self._queue.extend(_Failure(kind, path, retry_after, retry_after_ms) for _ in range(count))

    def fail_always(
        self,
        kind: str,
        path: str = "any",
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
    ) -> None:
        """Fail every applicable request (after the queued ones) until ``clear_failures``; headers as
        for ``fail_next``."""
        self._check(kind, path)
        with self._lock:
            self._always.append(_Failure(kind, path, retry_after, retry_after_ms))

    def clear_failures(self) -> None:
        """Forget queued and permanent failures, and any rate limit."""
        with self._lock:
            self._queue.clear()
            self._always.clear()
            self._rate_limits.clear()

    def limit_rate(self, requests: int | None, window: float = 60.0, path: str = "any") -> None:
        """Accept at most ``requests`` requests per sliding ``window`` seconds on ``path`` ("chat",
        "embeddings", or "any": both together), as a provider limits each model; past it answer 429
        at once, with ``Retry-After`` and ``retry-after-ms`` saying when the oldest accepted request
        leaves the window. Refused requests do not count. ``None`` removes the limit."""
        self._check("429", path)
        with self._lock:
            if requests is None:
                self._rate_limits.pop(path, None)
            else:
                self._rate_limits[path] = _RateLimit(requests, window)

    def _admit(self, endpoint: str) -> float | None:
        """Record the arrival; None when the rate limits accept it, else the seconds to wait."""
        with self._lock:
            now = time.monotonic()
            limits = [lim for path, lim in self._rate_limits.items() if path in ("any", endpoint)]
            wait = 0.0
            for lim in limits:
                while lim.accepted and lim.accepted[0] <= now - lim.window:
                    lim.accepted.popleft()
                if len(lim.accepted) >= lim.requests:
                    wait = max(wait, lim.accepted[0] + lim.window - now)
            refused = bool(limits) and any(len(lim.accepted) >= lim.requests for lim in limits)
            self._counters.arrivals.append(Arrival(now, endpoint, refused))
            if refused:
                self._counters.throttled += 1
                return wait
            for lim in limits:
                lim.accepted.append(now)
            return None

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
        wait = self._admit(endpoint)
        if wait is not None:
            self._send_status_failure(handler, _Failure("429", endpoint, f"{wait:.3f}", wait * 1000))
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
        retry_after = failure.retry_after
        if status == 429 and retry_after is None and failure.retry_after_ms is None:
            retry_after = 1
        if retry_after is not None:
            headers["Retry-After"] = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
        if failure.retry_after_ms is not None:
            headers["retry-after-ms"] = f"{failure.retry_after_ms:g}"
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
        transcript, session_ts, previous_summary = _unpack(user_content)
        shown = _shown_memories(user_content)
        refusal: str | None = None
        if failure == "malformed":
            content: str | None = '{"memories": [{"text": "truncated'
        elif failure == "refusal":
            content, refusal = None, "I'm sorry, but I can't help with that request."
        else:
            payload = None
            if self.reconciliation_for is not None:
                payload = self.reconciliation_for(transcript, shown)
            elif self.extraction_for is not None:
                payload = self.extraction_for(transcript)
            if payload is None:
                payload = confirm_restatements(
                    extract(
                        transcript,
                        session_timestamp=session_ts,
                        previous_summary=previous_summary,
                        max_memories=_max_memories(body),
                    ),
                    shown,
                )
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
            if self.embedding_for is None and as_base64:  # the common case, without a 1536-float list
                packed = base64.b64encode(packed_embedding(text, returned)).decode()
                data.append({"object": "embedding", "index": index, "embedding": packed})
                continue
            if self.embedding_for is None:
                vector = embedding(text, returned)
            else:
                found = self.embedding_for(text)
                if found is None:
                    handler.send_json(400, _error("invalid_request_error", f"no embedding for {text!r}"))
                    return
                vector = [*found, 0.0] if failure == "bad_dimensions" else found
            encoded: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
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


# -- the fake model ------------------------------------------------------------------------------
# Deliberately small and independent of memproc's offline heuristics, so tests of the OpenAI path
# check memproc against documented, fixed behaviour rather than against itself.

_TRANSCRIPT_RE = re.compile(r"<transcript>\n(.*?)\n</transcript>", re.DOTALL)
_MEMORIES_RE = re.compile(r"<memories>\n(.*?)\n</memories>", re.DOTALL)
_SHOWN_RE = re.compile(r"^\[(m\d+)\] \([^)]*\) (.*)$")
_SUMMARY_RE = re.compile(r"<previous_summary>\n(.*?)\n</previous_summary>", re.DOTALL)
_TIMESTAMP_RE = re.compile(r"^Session timestamp:\s*(\S+)", re.MULTILINE)
_ROLE_RE = re.compile(r"^\s*(user|human|assistant|ai|bot|system|developer|tool)\s*:\s?(.*)$", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")
_ABBREVIATIONS = ("Mr.", "Mrs.", "Ms.", "Dr.", "St.")
_FIRST_PERSON_RE = re.compile(r"\b(I|I'm|I've|I'll|I'd|[Mm]y)\b")
_CONTRACTIONS = (
    (re.compile(r"\bI'm\b|\bI am\b"), "the user is"),
    (re.compile(r"\bI've\b"), "the user has"),
    (re.compile(r"\bI'll\b"), "the user will"),
    (re.compile(r"\bI'd\b"), "the user would"),
)
_I_VERB_RE = re.compile(r"\bI ([a-z']+)")
_IRREGULAR_VERBS = {"have": "has", "don't": "doesn't", "haven't": "hasn't"}
_UNCHANGED_VERBS = frozenset(
    ["was", "had", "did", "went", "got", "can", "could", "will", "would", "should", "must", "may", "might"]
)
_RELATIVE_DAYS = {"yesterday": -1, "today": 0, "tomorrow": 1}
_RELATIVE_DAY_RE = re.compile(r"\b(yesterday|today|tomorrow)\b", re.IGNORECASE)
_TYPE_RULES = (
    ("goal", re.compile(r"\b(wants?|plans?|hopes?|going) to\b|\bwill\b", re.IGNORECASE)),
    ("preference", re.compile(r"\b(prefers?|loves?|likes?|enjoys?|hates?|favou?rite)\b", re.IGNORECASE)),
)
_TAG_WORD_RE = re.compile(r"[a-z][a-z'-]{2,}")
_NOT_TAGS = frozenset({
    "the", "user", "user's", "and", "with", "for", "over", "that", "this", "was", "are", "has", "have",
    "from", "into", "about",
})  # fmt: skip
_EMBEDDING_WORD_RE = re.compile(r"[a-z0-9']+")


def _unpack(content: str) -> tuple[str, datetime | None, str | None]:
    """(transcript, session timestamp, previous summary) from the user message memproc builds.

    Without a ``<transcript>`` block the whole message is the transcript.
    """
    transcript = _TRANSCRIPT_RE.search(content)
    summary = _SUMMARY_RE.search(content)
    stamp = _TIMESTAMP_RE.search(content)
    when: datetime | None = None
    if stamp:
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(stamp.group(1))
    return (
        transcript.group(1) if transcript else content,
        when,
        summary.group(1) if summary else None,
    )


def _shown_memories(content: str) -> list[tuple[str, str]]:
    """The memories memproc's prompt lists as ``[m1] (fact, since 2026-03-02) The user ...``."""
    block = _MEMORIES_RE.search(content)
    if not block:
        return []
    return [(m.group(1), m.group(2)) for m in map(_SHOWN_RE.match, block.group(1).splitlines()) if m]


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def confirm_restatements(payload: dict[str, Any], shown: list[tuple[str, str]]) -> dict[str, Any]:
    """The fake reconciles only the obvious: a memory worded exactly like a shown one is a confirm."""
    by_words = {_words(text): short_id for short_id, text in shown}
    memories, operations = [], list(payload.get("operations", []))
    for memory in payload.get("memories", []):
        short_id = by_words.get(_words(memory["text"]))
        if short_id is None:
            memories.append(memory)
        else:
            operations.append(
                {
                    "op": "confirm",
                    "id": short_id,
                    "text": None,
                    "memory_type": None,
                    "confidence": None,
                    "tags": [],
                }
            )
    return {**payload, "memories": memories, "operations": operations}


def _max_memories(body: dict[str, Any]) -> int:
    """The ``maxItems`` the request's schema puts on memories, as a structured-output model obeys it."""
    schema = body["response_format"]["json_schema"]["schema"]
    limit = schema.get("properties", {}).get("memories", {}).get("maxItems", 50)
    return int(limit) if isinstance(limit, int) else 50


def _turns(transcript: str) -> list[tuple[str, str]]:
    """(role, text) per message: a JSON message list, or ``role: text`` lines (a line without a
    prefix continues the message before it); a transcript without any prefix is all the user's."""
    with contextlib.suppress(ValueError):
        data = json.loads(transcript)
        if isinstance(data, dict):
            data = data.get("messages")
        if isinstance(data, list):
            return [
                (str(m.get("role", "")).lower(), str(m.get("content") or ""))
                for m in data
                if isinstance(m, dict)
            ]
    lines = [line for line in transcript.splitlines() if line.strip()]
    if not any(_ROLE_RE.match(line) for line in lines):
        return [("user", line) for line in lines]
    turns: list[tuple[str, str]] = []
    for line in lines:
        match = _ROLE_RE.match(line)
        if match:
            turns.append((match.group(1).lower(), match.group(2)))
        elif turns:
            turns[-1] = (turns[-1][0], f"{turns[-1][1]} {line.strip()}")
    return turns


def _sentences(text: str) -> list[str]:
    """Split at . ! ? followed by a space, except after Mr. Mrs. Ms. Dr. St."""
    sentences: list[str] = []
    for piece in _SENTENCE_END_RE.split(text.strip()):
        if sentences and sentences[-1].endswith(_ABBREVIATIONS):
            sentences[-1] += " " + piece
        elif piece:
            sentences.append(piece)
    return sentences


def _verb_for_the_user(verb: str) -> str:
    """ "work" -> "works", "watch" -> "watches", "study" -> "studies", "don't" -> "doesn't"; past
    tenses, modals and other contractions stay as they are."""
    if verb in _IRREGULAR_VERBS:
        return _IRREGULAR_VERBS[verb]
    if verb in _UNCHANGED_VERBS or verb.endswith("ed") or "'" in verb:
        return verb
    if verb.endswith("y") and verb[-2:-1] not in tuple("aeiou"):
        return verb[:-1] + "ies"
    return verb + ("es" if verb.endswith(("s", "sh", "ch", "x", "o")) else "s")


def extract(
    transcript: str,
    *,
    session_timestamp: datetime | None,
    previous_summary: str | None = None,
    max_memories: int = 50,
) -> dict[str, Any]:
    """What the fake model answers, as the JSON object memproc's schema asks for.

    Every sentence of a user message that speaks in the first person (I, I'm, my, ...) and is not a
    question becomes one memory, in order, up to ``max_memories``, rewritten for "the user" ("I work"
    -> "the user works", "my" -> "the user's"). Nothing is filtered: an injected instruction in the
    first person is copied like any other sentence. "yesterday", "today" and "tomorrow" become
    "on <date>" relative to the session timestamp (when there is one), which makes the memory an
    event; otherwise "wants to", "plans to", "will", ... make a goal, "prefer", "love", "like", ...
    a preference, anything else a fact. Confidence is 0.9; tags are the first four words of three or
    more letters that are not "the", "user", "and", ...; topics are the tags of all memories, first
    five. The summary is "Conversation with N messages." (N counts every message), appended to the
    previous summary as "... Then N more messages." in a continuation.
    """
    turns = _turns(transcript)
    memories: list[dict[str, Any]] = []
    for role, text in turns:
        if role not in ("user", "human"):
            continue
        for sentence in _sentences(text):
            if sentence.endswith("?") or not _FIRST_PERSON_RE.search(sentence):
                continue
            if len(memories) < max_memories:
                memories.append(_memory(sentence, session_timestamp))
    topics: list[str] = []
    for memory in memories:
        topics += [tag for tag in memory["tags"] if tag not in topics]
    if previous_summary:
        summary = f"{previous_summary} Then {len(turns)} more messages."
    else:
        summary = f"Conversation with {len(turns)} messages."
    return {"memories": memories, "summary": summary, "topics": topics[:5]}


def _memory(sentence: str, session_timestamp: datetime | None) -> dict[str, Any]:
    text = sentence.strip().rstrip(".!")
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    text = _I_VERB_RE.sub(lambda m: f"the user {_verb_for_the_user(m.group(1))}", text)
    text = re.sub(r"\b[Mm]y\b", "the user's", text)
    text = re.sub(r"\bI\b|\bme\b", "the user", text)
    dated = False
    if session_timestamp is not None:

        def on_day(match: re.Match[str]) -> str:
            nonlocal dated
            dated = True
            day = session_timestamp.date() + timedelta(days=_RELATIVE_DAYS[match.group(1).lower()])
            return f"on {day.isoformat()}"

        text = _RELATIVE_DAY_RE.sub(on_day, text)
    text = text[:1].upper() + text[1:] + "."
    memory_type = "event" if dated else next((t for t, rule in _TYPE_RULES if rule.search(text)), "fact")
    words = [w for w in _TAG_WORD_RE.findall(text.lower()) if w not in _NOT_TAGS]
    tags = list(dict.fromkeys(words))[:4]
    return {"text": text, "memory_type": memory_type, "confidence": 0.9, "tags": tags}


def _coordinates(text: str, dimensions: int) -> tuple[dict[int, float], float]:
    """The nonzero coordinates of ``embedding`` before scaling, and the vector's length."""
    coordinates: dict[int, float] = {}
    for feature in [*_EMBEDDING_WORD_RE.findall(text.lower()), text]:
        digest = hashlib.sha256(feature.encode()).digest()
        for offset in (0, 8):
            number = int.from_bytes(digest[offset : offset + 8], "big")
            at = number % dimensions
            coordinates[at] = coordinates.get(at, 0.0) + (1.0 if number >> 63 else -1.0)
    # Sums of small integers: exact in any order, so the same length as over the full vector.
    return coordinates, sum(v * v for v in coordinates.values()) ** 0.5


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector: each word, and the whole text, adds ±1 at two sha256-chosen
    coordinates. Identical texts give identical vectors; texts sharing words point the same way
    (so a search for "green tea" finds the memory about green tea); any other difference, word
    order included, moves the vector, so distinct memories stay apart."""
    coordinates, norm = _coordinates(text, dimensions)
    if norm == 0:  # every feature cancelled out: any fixed unit vector will do
        return [1.0] + [0.0] * (dimensions - 1)
    vector = [0.0] * dimensions
    for at, value in coordinates.items():
        vector[at] = value / norm
    return vector


def packed_embedding(text: str, dimensions: int) -> bytes:
    """``embedding`` as little-endian float32s (what base64 embeddings carry), written coordinate
    by coordinate: the fake's CPU per request, in the benchmarks' process beside memproc's."""
    coordinates, norm = _coordinates(text, dimensions)
    if norm == 0:
        coordinates, norm = {0: 1.0}, 1.0
    packed = bytearray(4 * dimensions)
    for at, value in coordinates.items():
        struct.pack_into("<f", packed, 4 * at, value / norm)
    return bytes(packed)


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
