"""What every provider promises the processor: the ``LLMProvider`` protocol, its token ``Usage``,
and the two-way error verdict.

The queue only needs to know whether trying an item again can help (``RetryableLLMError``, with an
optional ``retry_after`` hint) or not (``PermanentLLMError``); keeping that verdict here, apart
from any SDK, lets the processor and the search API depend on the interface alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from memproc.llm.schema import Candidate, Extraction

# One embedding: a list of floats (offline) or an array("f") of float32s straight off the wire.
Vector = Sequence[float]


class Usage(BaseModel):
    """Token counts of one or more LLM calls; add them with ``+``."""

    model_config = ConfigDict(frozen=True)

    tokens_in: int = Field(0, ge=0)
    tokens_out: int = Field(0, ge=0)

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            tokens_in=self.tokens_in + other.tokens_in, tokens_out=self.tokens_out + other.tokens_out
        )

    def __radd__(self, other: object) -> Usage:
        # Lets ``sum(usages)`` work with its default start value 0.
        if other == 0:
            return self
        if isinstance(other, Usage):
            return other + self
        return NotImplemented

    @property
    def total_tokens(self) -> int:
        return self.tokens_in + self.tokens_out


class LLMError(Exception):
    """Base of every LLM failure; ``retryable`` tells the queue whether to try the item again, and
    ``counts_attempt`` whether this try counts against MAX_ATTEMPTS."""

    retryable: bool = False
    counts_attempt: bool = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryableLLMError(LLMError):
    """Transient: 5xx, timeouts, connection errors, 429, malformed output. ``retry_after`` may hint."""

    retryable = True


class RateLimitedLLMError(RetryableLLMError):
    """Rate limited: the provider answered 429, or the shared limiter's wait would outlast this
    invocation's time budget. The item waits ``retry_after`` in the queue, and the try does not
    count as an attempt: rate limiting never dead-letters an item."""

    counts_attempt = False


class PermanentLLMError(LLMError):
    """Trying again will not help: refusals, 4xx other than 408/409/429, wrong embedding size."""

    retryable = False


@runtime_checkable
class LLMProvider(Protocol):
    """What the processor needs from a language model: one extraction call (per chunk), shown the
    user's related memories, and embeddings. `reconciles` says whether it can judge operations on
    those memories (an LLM) or only spot restatements (the offline heuristics)."""

    name: str
    chat_model: str
    embedding_model: str
    dimensions: int
    reconciles: bool

    def extract(
        self,
        transcript: str,
        *,
        session_timestamp: datetime,
        previous_summary: str | None = None,
        candidates: Sequence[Candidate] = (),
    ) -> tuple[Extraction, Usage]: ...

    def embed(self, texts: list[str]) -> tuple[list[Vector], Usage]: ...


def l2_normalise(vector: Iterable[float]) -> list[float]:
    """Scale to unit length: both providers hand out unit vectors, so cosine is a dot product."""
    values = [float(v) for v in vector]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values] if norm > 0 else values
