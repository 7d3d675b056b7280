"""The replies memproc reads from an OpenAI-compatible server, validated once from the raw body.

The SDK's typed resources would build a response model for every reply (``construct_type``, field
by field in Python, and number by number for float embeddings); memproc reads a handful of fields.
So the provider takes the raw response from the SDK client (its retries, errors and Retry-After
handling unchanged) and validates the body with the models here, in one pass of pydantic-core.
Embeddings replies are the large ones (~8 KB of base64 per vector): ``parse_embeddings`` decodes
each base64 vector with pybase64 (SIMD, ~20x binascii) straight from the body's bytes into an
``array("f")`` (whose bytes are what VADD / VSIM / FT.SEARCH take), parses the rest (the vectors
lifted out, see ``_lift_base64``; ``jsontext.loads``, which is json.loads made faster), and checks the
shape by hand (count, order, dimension, finite), no model per item.
"""

from __future__ import annotations

import binascii
import math
import operator
import secrets
import struct
import sys
from array import array
from dataclasses import dataclass
from itertools import repeat
from typing import Any, TypeVar

import pybase64
from pydantic import BaseModel, Field, ValidationError

from memproc.jsontext import loads

__all__ = [
    "ChatReply",
    "Embeddings",
    "MalformedReply",
    "NonFiniteVector",
    "WrongDimensions",
    "parse_embeddings",
    "parse_reply",
    "unit",
]

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


def parse_reply(model: type[M], body: bytes) -> M:
    """The body validated as ``model``; MalformedReply (with pydantic's first line) when it is not."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise MalformedReply(str(exc).splitlines()[0][:300]) from exc


class WrongDimensions(ValueError):
    """Vectors of another length than asked for: a configuration error, not a bad reply."""

    def __init__(self, got: int) -> None:
        super().__init__(f"{got} dimensions")
        self.got = got


class NonFiniteVector(MalformedReply):
    """A vector with a NaN or an infinity: it would poison every similarity it takes part in."""


@dataclass(frozen=True, slots=True)
class Embeddings:
    """``POST /embeddings``: the vectors in input order, and the tokens it counted (None: not said)."""

    vectors: list[array[float]]
    prompt_tokens: int | None


def _malformed(why: str) -> MalformedReply:
    return MalformedReply(f"embeddings reply: {why}")


def _float32s(raw: bytes, dimensions: int) -> array[float]:
    """Little-endian float32s as an array, of `dimensions` and finite."""
    if len(raw) % 4:
        raise _malformed("an embedding is not base64 float32s (not a whole number of float32s)")
    vector = array("f", raw)
    if sys.byteorder == "big":  # pragma: no cover - every platform memproc runs on is little-endian
        vector.byteswap()
    if len(vector) != dimensions:
        raise WrongDimensions(len(vector))
    # A float32 is NaN or infinite when its exponent bits are all ones: its top byte (the last,
    # little-endian) is then 0x7f or 0xff. A finite one with that top byte is >= 2**127 in size,
    # never in an embedding, so those are checked one by one only when the bytes say maybe.
    # (An int needle: ``bytes in bytes`` first tries the needle as an int and clears the TypeError.)
    top = raw[3::4]
    if (0x7F in top or 0xFF in top) and not all(map(math.isfinite, vector)):
        raise NonFiniteVector("embeddings reply: a vector has a NaN or an infinity")
    return vector


def _vector(embedding: Any, dimensions: int) -> array[float]:
    """One embedding as float32s: base64 of little-endian float32s, or a list of numbers."""
    if isinstance(embedding, str):
        try:
            raw = pybase64.b64decode(embedding, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _malformed(f"an embedding is not base64 float32s ({exc})") from exc
        return _float32s(raw, dimensions)
    if isinstance(embedding, list):
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in embedding):
            raise _malformed("an embedding has a value that is not a number")
        if len(embedding) != dimensions:
            raise WrongDimensions(len(embedding))
        if not all(map(math.isfinite, embedding)):
            raise NonFiniteVector("embeddings reply: a vector has a NaN or an infinity")
        return array("f", embedding)
    raise _malformed(f"an embedding is a {type(embedding).__name__}, not base64 or a list")


_KEY = b'"embedding":'
_SPACE = frozenset(b" \t\r\n")


def _lift_base64(body: bytes) -> tuple[bytes, str, list[bytes]] | None:
    """The body with each ``"embedding": "<base64>"`` string replaced by a short placeholder
    string (a random prefix and the vector's number), the prefix, and the decoded vectors; None
    when a string is not strict base64 (then the body is parsed as it is).

    ``json.loads`` of a reply spends most of its time copying the ~8 KB base64 strings into str
    objects only to decode them again. Strict base64 holds no quote, backslash or control
    character, so such a string ends at the next quote and swapping it for another string changes
    nothing else in the document: the placeholder body is valid JSON exactly when the body is, and
    parses to the same values but for those strings. The prefix starts with NUL and 16 random hex
    digits, so no string the server sent can pass for a placeholder."""
    prefix = "\x00" + secrets.token_hex(8) + ":"
    escaped = prefix.replace("\x00", "\\u0000").encode()
    view = memoryview(body)
    pieces: list[bytes | memoryview] = []
    vectors: list[bytes] = []
    at = 0
    find, size = body.find, len(body)
    key = find(_KEY)
    while key >= 0:
        start = key + len(_KEY)
        while start < size and body[start] in _SPACE:
            start += 1
        end = find(b'"', start + 1) if start < size and body[start] == 0x22 else -1  # 0x22: a quote
        if end < 0:
            key = find(_KEY, start)
            continue
        try:
            vectors.append(pybase64.b64decode(view[start + 1 : end], validate=True))
        except (binascii.Error, ValueError):
            return None
        pieces += (view[at : start + 1], escaped, b"%d" % (len(vectors) - 1))
        at = end
        key = find(_KEY, end + 1)
    pieces.append(view[at:])
    return b"".join(pieces), prefix, vectors


def parse_embeddings(body: bytes, count: int, dimensions: int) -> Embeddings:
    """The ``count`` vectors of ``dimensions`` an embeddings reply carries, in input order.

    MalformedReply (NonFiniteVector among them) when the body is not such a reply, WrongDimensions
    when the vectors are of another size."""
    lifted = _lift_base64(body)
    text, prefix, lifted_vectors = lifted if lifted is not None else (body, None, [])
    try:
        reply = loads(text)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise _malformed(f"not JSON ({exc})") from exc
    data = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(data, list):
        raise _malformed("no data list")
    if len(data) != count:
        raise _malformed(f"asked for {count} vectors, got {len(data)}")
    slots: list[array[float] | None] = [None] * count
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < count or slots[index] is not None:
            raise _malformed(f"an item's index is {index!r}: not one of 0..{count - 1} once each")
        embedding = item.get("embedding")
        if prefix is not None and type(embedding) is str and embedding.startswith(prefix):
            slots[index] = _float32s(lifted_vectors[int(embedding[len(prefix) :])], dimensions)
        else:
            slots[index] = _vector(embedding, dimensions)
    usage = reply.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    vectors: list[array[float]] = slots  # type: ignore[assignment]  # every slot filled: count items, distinct indices
    return Embeddings(vectors, tokens if type(tokens) is int else None)


def _components(vector: array[float]) -> tuple[float, ...]:
    """The vector's values as one tuple, made by struct in one C loop (``*vector`` and iteration make
    them one float object at a time: most of a length's cost)."""
    return struct.unpack(f"{len(vector)}{vector.typecode}", vector)


def unit(vectors: list[array[float]]) -> list[array[float]]:
    """The vectors at unit length, as the providers promise. A server normalises all its embeddings
    or none (OpenAI's are unit length), so one length is measured per reply and the others are
    scaled only when that one is off."""
    if not vectors:
        return vectors
    if abs(math.hypot(*_components(vectors[0])) - 1.0) <= UNIT_TOLERANCE:  # hypot: one C loop
        return vectors
    out: list[array[float]] = []
    for vector in vectors:
        values = _components(vector)
        norm = math.hypot(*values)
        out.append(array("f", map(operator.mul, values, repeat(1.0 / norm))) if norm > 0 else vector)
    return out
