"""memproc.llm.wire's embeddings parser: the reply's shape is checked by hand (no model per item),
so every way a reply can be wrong is named here, and each must fail with a clear error."""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import pytest

from memproc.llm.wire import MalformedReply, NonFiniteVector, WrongDimensions, parse_embeddings

DIMS = 4


def packed(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def body(*embeddings: Any, indices: list[Any] | None = None, usage: Any = None) -> bytes:
    order = indices if indices is not None else list(range(len(embeddings)))
    reply: dict[str, Any] = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": e}
            for i, e in zip(order, embeddings, strict=True)
        ],
    }
    if usage is not None:
        reply["usage"] = usage
    return json.dumps(reply).encode()


def test_vectors_come_back_in_input_order_as_float32_with_the_tokens() -> None:
    reply = parse_embeddings(
        body(packed(0, 0, 1, 0), [1.0, 0, 0, 0], indices=[1, 0], usage={"prompt_tokens": 7}), 2, DIMS
    )
    assert [list(v) for v in reply.vectors] == [[1, 0, 0, 0], [0, 0, 1, 0]]
    assert all(v.typecode == "f" for v in reply.vectors)
    assert reply.prompt_tokens == 7
    assert parse_embeddings(body(packed(1, 0, 0, 0)), 1, DIMS).prompt_tokens is None


def test_a_huge_but_finite_component_is_kept() -> None:
    # 2**127's top byte is 0x7f, as an infinity's is: the fast check must fall back, not reject.
    (vector,) = parse_embeddings(body(packed(2.0**127, -(2.0**127), 0, 1)), 1, DIMS).vectors
    assert list(vector) == [2.0**127, -(2.0**127), 0, 1]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("as_base64", [True, False])
def test_a_nan_or_infinity_is_refused(bad: float, as_base64: bool) -> None:
    values = (0.5, bad, 0.5, 0.5)
    with pytest.raises(NonFiniteVector, match="NaN or an infinity"):
        parse_embeddings(body(packed(*values) if as_base64 else list(values)), 1, DIMS)


@pytest.mark.parametrize("as_base64", [True, False])
def test_another_dimension_is_its_own_error(as_base64: bool) -> None:
    values = (1.0, 0, 0, 0, 0)
    with pytest.raises(WrongDimensions) as caught:
        parse_embeddings(body(packed(*values) if as_base64 else list(values)), 1, DIMS)
    assert caught.value.got == 5


@pytest.mark.parametrize(
    ("reply", "count", "message"),
    [
        (b"<html>busy</html>", 1, "not JSON"),
        (b"\xff\xfe", 1, "not JSON"),
        (b"[]", 1, "no data list"),
        (b'{"data": {}}', 1, "no data list"),
        (body(packed(1, 0, 0, 0)), 2, "asked for 2 vectors, got 1"),
        (body(packed(1, 0, 0, 0), packed(0, 1, 0, 0), indices=[0, 0]), 2, "index is 0"),
        (body(packed(1, 0, 0, 0), indices=[1]), 1, "index is 1"),
        (body(packed(1, 0, 0, 0), indices=["0"]), 1, "index is '0'"),
        (body(packed(1, 0, 0, 0), indices=[True]), 1, "index is True"),
        (body("not base64!"), 1, "not base64 float32s"),
        (body(base64.b64encode(b"\0" * 15).decode()), 1, "not base64 float32s"),  # 3.75 float32s
        (body([1.0, "0", 0, 0]), 1, "not a number"),
        (body([True, 0, 0, 0]), 1, "not a number"),
        (body({"vector": [1, 0, 0, 0]}), 1, "a dict, not base64 or a list"),
        (body(None), 1, "a NoneType"),
    ],
)
def test_a_malformed_reply_says_what_is_wrong(reply: bytes, count: int, message: str) -> None:
    with pytest.raises(MalformedReply, match=message):
        parse_embeddings(reply, count, DIMS)
