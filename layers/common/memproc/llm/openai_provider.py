"""The OpenAI provider: OpenAI or any compatible server (``OPENAI_BASE_URL``) through the official
SDK.

The SDK is imported inside ``OpenAIProvider.__init__``, not here: the store_raw Lambda imports
memproc but never talks to the LLM, and should not pay for loading openai.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from memproc.llm.base import LLMError, PermanentLLMError, RetryableLLMError, Usage, l2_normalise
from memproc.llm.chunking import ChunkedExtractor
from memproc.llm.parsing import parse_extraction
from memproc.llm.prompt import build_messages
from memproc.llm.schema import EXTRACTION_JSON_SCHEMA, Extraction

if TYPE_CHECKING:
    from memproc.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


class OpenAIProvider(ChunkedExtractor):
    """OpenAI (or any compatible server) through the official SDK, with our own retry policy.

    The SDK's retries are off (``max_retries=0``): within one call we retry 5xx, 408/409, 429,
    timeouts and connection errors up to ``llm_max_retries`` times with exponential backoff and
    jitter, honouring ``Retry-After`` up to ``retry_after_cap`` seconds. Anything longer, or an
    exhausted budget, surfaces as ``RetryableLLMError`` (with ``retry_after`` when the server gave
    one) so the queue backs the item off instead of a worker sleeping on it.
    """

    name = "openai"

    def __init__(
        self,
        settings: Settings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        retry_after_cap: float = 60.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        client: Any = None,
    ) -> None:
        import openai  # lazy: see the module docstring

        self._openai = openai
        self.chat_model = settings.llm_model
        self.embedding_model = settings.embedding_model
        self.dimensions = settings.embedding_dimensions
        self._float_embeddings = settings.embedding_encoding == "float"
        self.chunk_chars = settings.llm_chunk_chars
        self.max_retries = settings.llm_max_retries
        self.timeout = settings.llm_timeout_seconds
        self.retry_after_cap = retry_after_cap
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self._rng = rng or random.Random()
        if client is None:
            api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
            if not api_key:
                raise ValueError("OpenAIProvider needs OPENAI_API_KEY")
            client = openai.OpenAI(
                api_key=api_key,
                base_url=settings.openai_base_url,
                timeout=settings.llm_timeout_seconds,
                max_retries=0,
            )
        self._client = client

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    # -- retry machinery ------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random, capped."""
        delay = min(self.backoff_cap, self.backoff_base * (2**attempt))
        return delay / 2 + self._rng.uniform(0, delay / 2)

    def _classify(self, exc: Exception, what: str) -> LLMError | None:
        """Map an SDK exception to our retryable/permanent verdict (None: not an SDK error)."""
        o = self._openai
        if isinstance(exc, o.APITimeoutError):
            return RetryableLLMError(f"{what}: timed out after {self.timeout:g}s")
        if isinstance(exc, o.APIConnectionError):
            return RetryableLLMError(f"{what}: connection error: {exc}")
        if isinstance(exc, o.APIStatusError):
            status = exc.status_code
            retry_after = _retry_after_seconds(exc.response.headers)
            detail = exc.body.get("message") if isinstance(exc.body, dict) else None
            message = f"{what}: HTTP {status}: {detail or exc.message}"
            if status in (408, 409, 429) or status >= 500:
                return RetryableLLMError(message, retry_after=retry_after)
            return PermanentLLMError(message)
        if isinstance(exc, o.APIResponseValidationError | o.OpenAIError):
            return RetryableLLMError(f"{what}: {type(exc).__name__}: {exc}")
        return None

    def _with_retries(self, what: str, call: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return call()
            except Exception as exc:
                error = self._classify(exc, what)
                if error is None:
                    raise
                if not error.retryable:
                    raise error from exc
                if error.retry_after is not None and error.retry_after > self.retry_after_cap:
                    raise RetryableLLMError(
                        f"{error} (server asks to wait {error.retry_after:g}s, more than we wait in-call)",
                        retry_after=error.retry_after,
                    ) from exc
                if attempt >= self.max_retries:
                    raise RetryableLLMError(
                        f"{error} (gave up after {attempt + 1} attempt{'s' if attempt else ''})",
                        retry_after=error.retry_after,
                    ) from exc
                delay = error.retry_after if error.retry_after is not None else self._backoff(attempt)
                attempt += 1
                logger.warning(
                    "%s; retry %d/%d in %.2fs", error, attempt, self.max_retries, delay, exc_info=False
                )
                self._sleep(delay)

    # -- extraction -----------------------------------------------------------------------------

    def _extract_one(
        self, chunk: str, session_timestamp: datetime, previous_summary: str | None
    ) -> tuple[Extraction, Usage]:
        messages = build_messages(
            chunk, session_timestamp=session_timestamp, previous_summary=previous_summary
        )
        create = functools.partial(
            self._client.chat.completions.create,
            model=self.chat_model,
            messages=messages,
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
        usage = Usage()
        malformed_retries = 1  # a malformed reply is retried once, without sleeping
        while True:
            response = self._with_retries("chat completion", create)
            if response.usage is not None:
                usage += Usage(
                    tokens_in=response.usage.prompt_tokens or 0,
                    tokens_out=response.usage.completion_tokens or 0,
                )
            choice = response.choices[0] if response.choices else None
            message = choice.message if choice is not None else None
            if message is not None and getattr(message, "refusal", None):
                raise PermanentLLMError(f"model refused: {message.refusal}")
            if choice is not None and choice.finish_reason == "content_filter":
                raise PermanentLLMError("model output was blocked by the content filter")
            try:
                if message is None:
                    raise ValueError("response has no choices")
                extraction = parse_extraction(
                    message.content, fallback_summary=previous_summary or "No durable information."
                )
            except (ValueError, ValidationError) as exc:
                reason = f"malformed extraction (finish_reason={getattr(choice, 'finish_reason', None)}): "
                reason += str(exc).splitlines()[0][:300]
                if malformed_retries > 0:
                    malformed_retries -= 1
                    logger.warning("%s; retrying once", reason)
                    continue
                raise RetryableLLMError(reason) from exc
            return extraction, usage

    # -- embeddings -----------------------------------------------------------------------------

    def embed(self, texts: list[str]) -> tuple[list[list[float]], Usage]:
        if not texts:
            return [], Usage()
        vectors: list[list[float]] = []
        usage = Usage()
        for start in range(0, len(texts), _EMBED_BATCH):
            batch = list(texts[start : start + _EMBED_BATCH])
            # base64 (the SDK's default) decodes each vector in one call; "float" makes the SDK
            # build every number as a model field, ~90% of the processor's CPU at 1536 dimensions.
            # EMBEDDING_ENCODING=float is for compatible servers that lack base64.
            options: dict[str, Any] = {"encoding_format": "float"} if self._float_embeddings else {}
            create = functools.partial(
                self._client.embeddings.create,
                model=self.embedding_model,
                input=batch,
                dimensions=self.dimensions,
                **options,
            )
            response = self._with_retries("embeddings", create)
            data = sorted(response.data, key=lambda item: item.index)
            if len(data) != len(batch):
                raise RetryableLLMError(f"embeddings: asked for {len(batch)} vectors, got {len(data)}")
            for item in data:
                if len(item.embedding) != self.dimensions:
                    raise PermanentLLMError(
                        f"embeddings: model {self.embedding_model!r} returned {len(item.embedding)} "
                        f"dimensions, but EMBEDDING_DIMENSIONS is {self.dimensions}"
                    )
                vectors.append(l2_normalise(item.embedding))
            if response.usage is not None:
                usage += Usage(tokens_in=response.usage.prompt_tokens or 0)
        return vectors, usage
