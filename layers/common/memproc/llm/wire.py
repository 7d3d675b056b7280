"""The replies memproc reads from an OpenAI-compatible server, validated once from the raw body.

The SDK's typed resources would build a response model for every reply (``construct_type``, field
by field in Python, and number by number for float embeddings); memproc reads a handful of fields.
So the provider takes the raw response from the SDK client (its retries, errors and Retry-After
handling unchanged) and validates the body with the models here, in one pass of pydantic-core.
Embeddings stay float32 from the wire to Redis: a base64 vector is decoded into an ``array("f")``,
whose bytes are what VADD / VSIM / FT.SEARCH take.
"""

from __future__ import annotations

import base64
import math
import operator
import sys
from array import array
from itertools import repeat
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError

__all__ = ["ChatReply", "EmbeddingsReply", "MalformedReply", "decode_vector", "parse_reply", "unit"]

M = TypeVar("M", bound=BaseModel)

# A vector whose length is this close to 1 is left as the server sent it (float32 rounding of a
# unit vector already moves its length by ~1e-7).
UNIT_TOLERANCE = 1e-4


class MalformedReply(ValueError):
    """A 200 whose body is not the reply the endpoint promises."""


class TokenUsage(BaseModel):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ChatMessage(BaseModel):
    content: str | None = None
    refusal: str | None = None


class ChatChoice(BaseModel):
    message: ChatMessage | None = None
    finish_reason: str | None = None


class ChatReply(BaseModel):
    """``POST /chat/completions``: the fields the provider reads (others are ignored)."""

    choices: list[ChatChoice] = Field(default_factory=list)
    usage: TokenUsage | None = None


class EmbeddingItem(BaseModel):
    index: int
    embedding: str | list[float]  # base64 of little-endian float32s, or numbers (encoding "float")


class EmbeddingsReply(BaseModel):
    """``POST /embeddings``."""

    data: list[EmbeddingItem]
    usage: TokenUsage | None = None


def parse_reply(model: type[M], body: bytes) -> M:
    """The body validated as ``model``; MalformedReply (with pydantic's first line) when it is not."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise MalformedReply(str(exc).splitlines()[0][:300]) from exc


def decode_vector(embedding: str | list[float]) -> array[float]:
    """One embedding as float32s: base64 decoded in one call (the API's float32s are little-endian)."""
    if isinstance(embedding, list):
        return array("f", embedding)
    vector = array("f", base64.b64decode(embedding))
    if sys.byteorder == "big":  # pragma: no cover - every platform memproc runs on is little-endian
        vector.byteswap()
    return vector


def unit(vectors: list[array[float]]) -> list[array[float]]:
    """The vectors at unit length, as the providers promise. A server normalises all its embeddings
    or none (OpenAI's are unit length), so one length is measured per reply and the others are
    scaled only when that one is off."""
    if not vectors:
        return vectors
    first = vectors[0]
    if abs(math.sqrt(math.fsum(map(operator.mul, first, first))) - 1.0) <= UNIT_TOLERANCE:
        return vectors
    out: list[array[float]] = []
    for vector in vectors:
        norm = math.sqrt(math.fsum(map(operator.mul, vector, vector)))
        out.append(array("f", map(operator.mul, vector, repeat(1.0 / norm))) if norm > 0 else vector)
    return out
