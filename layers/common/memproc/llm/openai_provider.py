"""The OpenAI provider: OpenAI or any compatible server (``OPENAI_BASE_URL``) through the official
SDK, which also does the in-call retrying.

What the SDK cannot know is left here: which of its final exceptions the queue should retry
(``RetryableLLMError``, carrying the server's ``Retry-After`` as ``retry_after``) and which not
(``PermanentLLMError``), and that a malformed reply, which is not an HTTP error, deserves one more
try. Requests go through the SDK client's ``post`` (auth, timeouts, retries and errors as with the
typed resources, without their per-call parameter walk and response models) and the raw replies
are validated once by ``wire``: ``make profile`` measures the processor's CPU per session.

The SDK is imported inside ``OpenAIProvider.__init__``, not here: the store_raw Lambda imports
memproc but never talks to the LLM, and should not pay for loading openai.
"""

from __future__ import annotations

import email.utils
import functools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from memproc.llm.base import (
    LLMError,
    PermanentLLMError,
    RateLimitedLLMError,
    RetryableLLMError,
    Usage,
    Vector,
)
from memproc.llm.chunking import ChunkedExtractor
from memproc.llm.parsing import parse_extraction
from memproc.llm.prompt import build_messages
from memproc.llm.schema import EXTRACTION_JSON_SCHEMA, Candidate, Extraction
from memproc.llm.sdk_client import client_type
from memproc.llm.wire import ChatReply, WrongDimensions, parse_embeddings, parse_reply, unit

if TYPE_CHECKING:
    import openai

    from memproc.llm.gate import Gate
    from memproc.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What the typed resources send: the API key only (no admin key).
_BEARER_AUTH: Any = {"security": {"bearer_auth": True}}
# The SDK's platform telemetry (language, versions, OS, architecture, sync or async): seven headers
# per request that only describe the client, each validated and copied three times on its way.
# The headers the SDK's retries rely on (x-stainless-retry-count, x-stainless-read-timeout) stay.
_TELEMETRY_HEADERS = (
    "X-Stainless-Lang",
    "X-Stainless-Package-Version",
    "X-Stainless-OS",
    "X-Stainless-Arch",
    "X-Stainless-Runtime",
    "X-Stainless-Runtime-Version",
    "X-Stainless-Async",
)

# The embeddings endpoint accepts at most 2048 inputs per request; more is split (rare: ~50 per session).
_EMBED_BATCH = 2048


def _retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (delta-seconds or HTTP date), else None."""
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _gave_up(request_headers: Mapping[str, str], retry_after: float | None = None) -> str:
    """How the SDK's retries ended, as the tail of an error message, e.g.
    ``" (gave up after 3 attempts; the server asks to wait 2s)"``.

    The SDK numbers its attempts in the ``x-stainless-retry-count`` request header (0 for the first).
    """
    parts: list[str] = []
    count = request_headers.get("x-stainless-retry-count", "")
    if count.isdigit():
        attempts = int(count) + 1
        parts.append(f"gave up after {attempts} attempt{'s' if attempts > 1 else ''}")
    if retry_after is not None:
        parts.append(f"the server asks to wait {retry_after:g}s")
    return f" ({'; '.join(parts)})" if parts else ""


# As the SDK encodes a JSON body (openai._utils._json.openapi_dumps), for bodies of JSON values only.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class _JsonBody:
    """A request body of fixed fields and one that varies, as the bytes the SDK would send: the
    fixed ones encoded once, the varying one last."""

    def __init__(self, varying: str, **fixed: Any) -> None:
        self._head = (_dumps(fixed)[:-1] + f",{_dumps(varying)}:").encode()

    def __call__(self, value: Any) -> bytes:
        return self._head + _dumps(value).encode() + b"}"


class OpenAIProvider(ChunkedExtractor):
    """OpenAI (or any compatible server) through the official SDK, retries included. The model is
    shown the user's related memories and decides what the session does to them.

    The client is built with ``max_retries=llm_max_retries``: it retries 408, 409, 429, 5xx,
    timeouts and connection errors, waits what ``retry-after-ms`` / ``retry-after`` ask up to two
    minutes (exponential backoff with jitter when they ask nothing), obeys ``x-should-retry``, and
    does not retry a response that asks for a longer wait. The exception it finally raises becomes
    ``RetryableLLMError`` (with the server's ``retry_after``, the queue's minimum delay before the
    item's next attempt: a worker never sleeps minutes on one item) or ``PermanentLLMError``.
    """

    name = "openai"
    reconciles = True

    def __init__(self, settings: Settings, gate: Gate | None = None) -> None:
        import openai  # lazy: see the module docstring

        from memproc.llm.gated_http import http_client

        self._openai = openai
        self.chat_model = settings.llm_model
        self.embedding_model = settings.embedding_model
        self.dimensions = settings.embedding_dimensions
        self.chunk_chars = settings.llm_chunk_chars
        self.timeout = settings.llm_timeout_seconds
        api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        if not api_key:
            raise ValueError("OpenAIProvider needs OPENAI_API_KEY")
        from openai._models import FinalRequestOptions

        from memproc.llm.http_pool import httpx  # httpx2 from openai 3.0 on, httpx before

        self._response_type = httpx.Response
        telemetry_off: Any = dict.fromkeys(_TELEMETRY_HEADERS, openai.Omit())  # Omit: not sent
        self._client = client_type(openai)(
            api_key=api_key,
            base_url=settings.openai_base_url,
            timeout=settings.llm_timeout_seconds,
            max_retries=settings.llm_max_retries,
            default_headers=telemetry_off,
            # Every request (the SDK's retries too) through the rate-limit gate, when there is one.
            http_client=http_client(gate, lean=settings.llm_http_transport == "lean"),
        )
        # What `post` builds per call (a pydantic model_construct, its defaults copied), built once
        # per endpoint; `request` copies the options it is given before it touches them. The client
        # builds these endpoints' requests from copies of the first it builds (llm/sdk_client.py).
        self._options = {
            path: FinalRequestOptions.construct(
                method="post", url=path, json_data=None, content=None, files=None, **_BEARER_AUTH
            )
            for path in ("/chat/completions", "/embeddings")
        }
        self._client.use_templates(self._options)
        # The bodies' fixed fields, encoded once (the extraction schema is most of a chat body's
        # JSON outside the prompt); each request encodes only the field that varies.
        self._chat_body = _JsonBody(
            "messages",
            model=self.chat_model,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "memory_extraction",
                    "strict": True,
                    "schema": EXTRACTION_JSON_SCHEMA,
                },
            },
            temperature=0,
        )
        self._embeddings_body = _JsonBody(
            "input",
            model=self.embedding_model,
            dimensions=self.dimensions,
            # base64 decodes each vector in one call; "float" sends every number as JSON text, for
            # compatible servers that lack base64 (EMBEDDING_ENCODING=float).
            encoding_format="float" if settings.embedding_encoding == "float" else "base64",
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    # -- the verdict on what the SDK's retries left ---------------------------------------------

    def _verdict(self, exc: openai.OpenAIError, what: str) -> LLMError:
        """Our retryable/permanent verdict on an SDK exception, with status and server message."""
        o = self._openai
        if isinstance(exc, o.APITimeoutError):
            return RetryableLLMError(
                f"{what}: timed out after {self.timeout:g}s{_gave_up(exc.request.headers)}"
            )
        if isinstance(exc, o.APIConnectionError):
            return RetryableLLMError(f"{what}: connection error: {exc}{_gave_up(exc.request.headers)}")
        if isinstance(exc, o.APIStatusError):
            status = exc.status_code
            detail = exc.body.get("message") if isinstance(exc.body, dict) else None
            message = f"{what}: HTTP {status}: {detail or exc.message}"
            if status in (408, 409, 429) or status >= 500:
                retry_after = _retry_after_seconds(exc.response.headers)
                # A 429 is rate limiting (no attempt spent), unless the account's quota is gone.
                limited = status == 429 and getattr(exc, "code", None) != "insufficient_quota"
                return (RateLimitedLLMError if limited else RetryableLLMError)(
                    message + _gave_up(exc.request.headers, retry_after), retry_after=retry_after
                )
            return PermanentLLMError(message)
        return RetryableLLMError(f"{what}: {type(exc).__name__}: {exc}")

    def _request(self, path: str, body: bytes) -> Callable[[], bytes]:
        """A POST of the JSON ``body`` through the SDK's client (its auth, timeouts, retries and
        errors), answering the reply's raw body. The typed resources (``chat.completions.create``)
        would also walk every message against the parameter types and build a response model per
        reply: most of the SDK's CPU per call, for nothing memproc reads (``wire`` validates the
        body). ``request`` with the endpoint's options is what ``post`` does, without building them;
        the body goes as ``content`` (``post``'s bytes body), sent as it is on every attempt."""
        send = functools.partial(
            self._client.request,
            self._response_type,
            self._options[path].model_copy(update={"content": body}),
        )
        return lambda: send().content

    def _call(self, what: str, create: Callable[[], T]) -> T:
        """``create()`` (the SDK retries inside it); an SDK error that remains becomes our verdict."""
        try:
            return create()
        except self._openai.OpenAIError as exc:
            raise self._verdict(exc, what) from exc

    # -- extraction -----------------------------------------------------------------------------

    def _extract_one(
        self,
        chunk: str,
        session_timestamp: datetime,
        previous_summary: str | None,
        candidates: Sequence[Candidate],
    ) -> tuple[Extraction, Usage]:
        messages = build_messages(
            chunk,
            session_timestamp=session_timestamp,
            previous_summary=previous_summary,
            candidates=candidates,
        )
        create = self._request("/chat/completions", self._chat_body(messages))
        usage = Usage()
        # A malformed reply is a 200 to the SDK, so it is ours to retry: once, at once.
        malformed_retries = 1
        while True:
            body = self._call("chat completion", create)
            choice = None
            try:
                reply = parse_reply(ChatReply, body)
                if reply.usage is not None:
                    usage += Usage(
                        tokens_in=reply.usage.prompt_tokens or 0,
                        tokens_out=reply.usage.completion_tokens or 0,
                    )
                choice = reply.choices[0] if reply.choices else None
                message = choice.message if choice is not None else None
                if message is not None and message.refusal:
                    raise PermanentLLMError(f"model refused: {message.refusal}")
                if choice is not None and choice.finish_reason == "content_filter":
                    raise PermanentLLMError("model output was blocked by the content filter")
                if message is None:
                    raise ValueError("response has no choices")
                extraction = parse_extraction(
                    message.content, fallback_summary=previous_summary or "No durable information."
                )
            except (ValueError, ValidationError) as exc:  # MalformedReply is a ValueError
                reason = f"malformed extraction (finish_reason={getattr(choice, 'finish_reason', None)}): "
                reason += str(exc).splitlines()[0][:300]
                if malformed_retries > 0:
                    malformed_retries -= 1
                    logger.warning("%s; retrying once", reason)
                    continue
                raise RetryableLLMError(reason) from exc
            return extraction, usage

    # -- embeddings -----------------------------------------------------------------------------

    def embed(self, texts: list[str]) -> tuple[list[Vector], Usage]:
        if not texts:
            return [], Usage()
        vectors: list[Vector] = []
        usage = Usage()
        for start in range(0, len(texts), _EMBED_BATCH):
            batch = list(texts[start : start + _EMBED_BATCH])
            create = self._request("/embeddings", self._embeddings_body(batch))
            body = self._call("embeddings", create)
            try:
                reply = parse_embeddings(body, len(batch), self.dimensions)
            except WrongDimensions as exc:
                raise PermanentLLMError(
                    f"embeddings: model {self.embedding_model!r} returned {exc.got} "
                    f"dimensions, but EMBEDDING_DIMENSIONS is {self.dimensions}"
                ) from exc
            except ValueError as exc:  # MalformedReply: not JSON, a count, index or value amiss
                raise RetryableLLMError(f"embeddings: malformed reply: {exc}") from exc
            vectors += unit(reply.vectors)
            if reply.prompt_tokens is not None:
                usage += Usage(tokens_in=reply.prompt_tokens)
        return vectors, usage
