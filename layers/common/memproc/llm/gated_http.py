"""The openai client's HTTP client, with every request to the provider through the gate
(`llm/gate.py`).

The SDK sends each attempt, its own retries included, through its HTTP client's `send` (httpx,
httpx2 from openai 3 on). A subclass of `openai.DefaultHttpxClient` (the SDK's own defaults:
connection limits, timeouts, proxies from the environment) that wraps `send` puts every request
the provider sees through the gate, and changes nothing else about the client.
See: https://github.com/openai/openai-python#configuring-the-http-client
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from memproc.llm.gate import Gate

# What a chat answer is booked for before it is known, unless the request sets max_tokens: the
# extraction schema allows ~15,000 output tokens, answers use a few hundred to ~2,000. The booking
# is corrected to the real usage when the answer arrives.
OUTPUT_TOKENS = 2048
_MAX_TOKENS_RE = re.compile(rb'"max_(?:completion_)?tokens"\s*:\s*(\d+)')


def request_kind(path: str) -> str | None:
    """Which limit a request counts against: "chat", "embeddings", or None (not limited)."""
    if path.endswith("/chat/completions"):
        return "chat"
    if path.endswith("/embeddings"):
        return "embeddings"
    return None


def estimate_tokens(kind: str, body: bytes) -> int:
    """Tokens to book for a request: its JSON body's characters / 4 (the schema and the JSON
    around the prompt make this a little more than the prompt's tokens), plus, for a chat
    completion, its max_tokens or OUTPUT_TOKENS."""
    tokens = -(-len(body) // 4)
    if kind == "chat":
        found = _max_tokens(body)
        tokens += found if found is not None else OUTPUT_TOKENS
    return tokens


def _max_tokens(body: bytes) -> int | None:
    """The first ``"max_tokens": N`` / ``"max_completion_tokens": N`` of a body, as
    ``_MAX_TOKENS_RE.search`` finds it: tried only where ``"max_`` starts, found by ``find``
    (searching a 40 KB prompt for the pattern itself takes ~50 us)."""
    at = body.find(b'"max_')
    while at >= 0:
        found = _MAX_TOKENS_RE.match(body, at)
        if found:
            return int(found.group(1))
        at = body.find(b'"max_', at + 1)
    return None


def used_tokens(body: bytes) -> int | None:
    """`total_tokens` (else prompt + completion) of the answer's "usage" object, None without one.
    OpenAI puts it last, so it is found from the end without parsing the rest (embeddings
    answers are mostly vectors)."""
    at = body.rfind(b'"usage"')
    start = body.find(b"{", at) if at >= 0 else -1
    if start < 0:
        return None
    try:
        usage, _ = json.JSONDecoder().raw_decode(body[start:].decode())
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    return sum(p for p in parts if isinstance(p, int)) if any(isinstance(p, int) for p in parts) else None


def http_client(gate: Gate | None = None, *, lean: bool = True) -> Any:
    """An `openai.DefaultHttpxClient` over `transport.LeanTransport` (the SDK's connection limits)
    whose chat and embeddings requests pass `gate` when there is one. When the environment names a
    proxy, or `lean` is off (LLM_HTTP_TRANSPORT=httpx: the operator's way back should a provider or
    network need what only httpx does), the client keeps httpx's own transports."""
    import openai

    from memproc.llm import httpx_send
    from memproc.llm.transport import LeanTransport, httpx

    class GatedHttpClient(openai.DefaultHttpxClient):
        def send(self, request: Any, **kwargs: Any) -> Any:
            """httpx's send (``httpx_send``'s shorter way to it), through the gate for the requests
            it limits."""
            kind = request_kind(request.url.path) if gate is not None else None
            scope = gate.scopes.get(kind) if gate is not None and kind else None
            if gate is None or kind is None or scope is None:
                return httpx_send.send(super().send, self, request, **kwargs)
            with gate.request(scope, estimate_tokens(kind, request.content)) as ticket:
                response = httpx_send.send(super().send, self, request, **kwargs)
                read = not kwargs.get("stream") and ticket.booking is not None and response.is_success
                ticket.answered(response.status_code, used_tokens(response.content) if read else None)
                return response

    proxies = urllib.request.getproxies()
    proxied = any(proxies.get(scheme) for scheme in ("http", "https", "all"))
    # httpx before 0.28 (openai 2.x allows it) lacks the public create_ssl_context the transport uses.
    if not lean or proxied or not hasattr(httpx, "create_ssl_context"):
        return GatedHttpClient()
    return GatedHttpClient(transport=LeanTransport(openai.DEFAULT_CONNECTION_LIMITS))
