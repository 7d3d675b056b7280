"""memproc.llm.wire's embeddings parser: the reply's shape is checked by hand (no model per item),
so every way a reply can be wrong is named here, and each must fail with a clear error."""

from __future__ import annotations

import base64
import binascii
import json
import math
import operator
import struct
import sys
from array import array
from collections.abc import Callable
from itertools import repeat
from typing import Any

import pybase64
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memproc import jsontext
from memproc.llm import wire
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


# --- the base64 strings lifted out of the JSON before it is parsed --------------------------------

VECTORS = [packed(1, 0, 0, 0), packed(0, 0.6, 0.8, 0), packed(0.5, 0.5, 0.5, 0.5)]


def as_lists(reply: bytes, count: int = 3) -> list[list[float]]:
    return [list(v) for v in parse_embeddings(reply, count, DIMS).vectors]


@pytest.mark.parametrize(
    "dumps",
    [
        lambda r: json.dumps(r).encode(),
        lambda r: json.dumps(r, indent=2).encode(),  # OpenAI's own layout
        lambda r: json.dumps(r, separators=(",", ":")).encode(),
        lambda r: json.dumps(r).replace('"embedding": ', '"embedding" : \t').encode(),
        lambda r: json.dumps(r).encode("utf-16"),  # JSON in UTF-16: parsed as a whole
    ],
)
def test_every_layout_of_a_reply_reads_the_same(dumps: Callable[[Any], bytes]) -> None:
    reply = json.loads(body(*VECTORS, indices=[2, 0, 1]))
    assert as_lists(dumps(reply)) == as_lists(body(*VECTORS, indices=[2, 0, 1]))


def test_escapes_inside_a_base64_string_are_read_as_json_reads_them() -> None:
    escaped = body(*VECTORS).replace(VECTORS[1].encode(), VECTORS[1][:-1].encode() + b"\\u003d")  # "="
    assert VECTORS[1].endswith("=")
    assert as_lists(escaped) == as_lists(body(*VECTORS))


def test_a_string_made_to_look_like_a_placeholder_is_not_one() -> None:
    # The key spelled with an escape: the other vector is lifted out, this string is parsed by JSON.
    forged = body(VECTORS[0], "\0" + "0" * 16 + ":0")
    forged = forged[::-1].replace(b'"embedding"'[::-1], b'"embed\\u0064ing"'[::-1], 1)[::-1]
    assert json.loads(forged)["data"][1]["embedding"].startswith("\0")
    with pytest.raises(MalformedReply, match="not base64 float32s"):
        parse_embeddings(forged, 2, DIMS)


def test_an_embedding_key_inside_a_string_or_another_object_changes_nothing() -> None:
    reply = json.loads(body(*VECTORS))
    reply["note"] = f'"embedding": "{VECTORS[2]}"'
    reply["model"] = {"embedding": VECTORS[2]}
    reply["data"][0] = {"embedding": VECTORS[2], **reply["data"][0]}  # a duplicate key: the last wins
    text = json.dumps(reply).replace('{"embedding": ', '{"embedding": "' + VECTORS[1] + '", "embedding": ', 1)
    assert as_lists(text.encode()) == as_lists(body(*VECTORS))


@pytest.mark.parametrize(
    "broken",
    [
        lambda b: b.replace(b'"index": 1', b'"index": 1,'),  # a stray comma
        lambda b: b[:-1],  # cut short
        lambda b: b.replace(VECTORS[1][:4].encode(), b'"\x01', 1),  # a control character in a string
    ],
)
def test_a_body_that_is_not_json_stays_not_json(broken: Callable[[bytes], bytes]) -> None:
    with pytest.raises(MalformedReply, match="not JSON"):
        parse_embeddings(broken(body(*VECTORS)), 3, DIMS)


# --- the cheaper checks against the implementations they replaced --------------------------------


def old_float32s(raw: bytes, dimensions: int) -> array[float]:
    if len(raw) % 4:
        raise wire._malformed("an embedding is not base64 float32s (not a whole number of float32s)")
    vector = array("f", raw)
    if len(vector) != dimensions:
        raise WrongDimensions(len(vector))
    top = raw[3::4]
    if (b"\x7f" in top or b"\xff" in top) and not all(map(math.isfinite, vector)):
        raise NonFiniteVector("embeddings reply: a vector has a NaN or an infinity")
    return vector


def old_lift(body: bytes) -> tuple[bytes, str, list[bytes]] | None:
    prefix = "\x00" + "0" * 16 + ":"
    escaped = prefix.replace("\x00", "\\u0000").encode()
    view = memoryview(body)
    pieces: list[bytes | memoryview] = []
    vectors: list[bytes] = []
    at = 0
    find, size = body.find, len(body)
    key = find(b'"embedding":')
    while key >= 0:
        start = key + len(b'"embedding":')
        while start < size and body[start] in b" \t\r\n":
            start += 1
        end = find(b'"', start + 1) if body[start : start + 1] == b'"' else -1
        if end < 0:
            key = find(b'"embedding":', start)
            continue
        try:
            vectors.append(pybase64.b64decode(view[start + 1 : end], validate=True))
        except (binascii.Error, ValueError):
            return None
        pieces += (view[at : start + 1], escaped, b"%d" % (len(vectors) - 1))
        at = end
        key = find(b'"embedding":', end + 1)
    pieces.append(view[at:])
    return b"".join(pieces), prefix, vectors


def old_unit(vectors: list[array[float]]) -> list[array[float]]:
    if not vectors:
        return vectors
    if abs(math.hypot(*vectors[0]) - 1.0) <= wire.UNIT_TOLERANCE:
        return vectors
    out: list[array[float]] = []
    for vector in vectors:
        norm = math.hypot(*vector)
        out.append(array("f", map(operator.mul, vector, repeat(1.0 / norm))) if norm > 0 else vector)
    return out


def outcome(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as exc:
        return ("raised", type(exc), str(exc))


FLOAT32 = st.floats(width=32) | st.sampled_from([0.0, -0.0, 2.0**127, -(2.0**127), 1e-45, math.inf, math.nan])
RAW = st.binary(max_size=40) | st.lists(FLOAT32, max_size=9).map(lambda v: struct.pack(f"<{len(v)}f", *v))


@settings(max_examples=500, deadline=None)
@given(RAW, st.integers(0, 10))
def test_float32s_are_checked_as_before(raw: bytes, dimensions: int) -> None:
    new, old = outcome(wire._float32s, raw, dimensions), outcome(old_float32s, raw, dimensions)
    assert (new.tobytes() if isinstance(new, array) else new) == (
        old.tobytes() if isinstance(old, array) else old
    )


def near_unit(values: list[float], scale: float) -> array[float]:
    norm = math.hypot(*values)
    return array("f", [v / norm * scale for v in values]) if norm else array("f", values)


VECTOR = st.lists(FLOAT32, min_size=1, max_size=12).map(lambda v: array("f", v)) | st.builds(
    near_unit,
    st.lists(st.floats(-1, 1), min_size=1, max_size=12),
    st.sampled_from([1.0, 1.00009, 0.99991, 1.0001, 0.9999, 1.00011, 2.0, 1e-20]),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(VECTOR, max_size=4), st.sampled_from(["f", "d"]))
def test_vectors_are_made_unit_as_before(vectors: list[array[float]], typecode: str) -> None:
    vectors = [array(typecode, v) for v in vectors]
    new, old = wire.unit(list(vectors)), old_unit(list(vectors))
    assert [(v.typecode, v.tobytes()) for v in new] == [(v.typecode, v.tobytes()) for v in old]


def layout(reply: dict[str, Any], style: int) -> bytes:
    text = [json.dumps(reply), json.dumps(reply, indent=2), json.dumps(reply, separators=(",", ":"))][
        style % 3
    ]
    return text.replace('"embedding": ', '"embedding":' + " \t\n\r"[: style % 5]).encode()


EMBEDDING = (
    st.lists(FLOAT32, max_size=4).map(lambda v: base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode())
    | st.sampled_from(["", "AAAA", "AAA=", "AA==", "A", "not base64!", "AAAAAAA=\\u003d", "\u00e9"])
    | st.lists(FLOAT32, max_size=4)
    | st.none()
)
REPLY = st.builds(
    lambda embeddings, style, extra: layout(
        {"data": [{"index": i, "embedding": e} for i, e in enumerate(embeddings)], **extra}, style
    ),
    st.lists(EMBEDDING, max_size=4),
    st.integers(0, 14),
    st.sampled_from(
        [{}, {"note": '"embedding": "AAAA"'}, {"embedding": "AAAA"}, {"usage": {"prompt_tokens": 3}}]
    ),
)


@settings(max_examples=500, deadline=None)
@given(
    REPLY
    | st.binary(max_size=30).map(lambda b: b'{"embedding": "' + b)
    | st.sampled_from([b'{"embedding":', b'{"embedding": \t', b'"embedding":"', b'"embedding":"AAAA'])
)
def test_base64_is_lifted_out_as_before(body: bytes) -> None:
    new, old = wire._lift_base64(body), old_lift(body)
    if new is None or old is None:
        assert new is old
        return
    assert new[2] == old[2]  # the vectors, and the body but for the placeholders' random prefix
    assert new[0].replace(new[1].replace("\x00", "\\u0000").encode(), b"P") == old[0].replace(
        old[1].replace("\x00", "\\u0000").encode(), b"P"
    )


# --- loads: json.loads, parsed by pydantic-core first ---------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.floats()
    | st.integers()
    | st.integers(-(10**40), 10**40)
    | st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('\\"\x00\x1f\u2028\ufeff')),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
DUMPED = st.builds(
    lambda value, style: [
        json.dumps(value),
        json.dumps(value, ensure_ascii=False),
        json.dumps(value, indent=1),
        json.dumps(value, separators=(",", ":")),
    ][style],
    JSON_VALUES,
    st.integers(0, 3),
)
TOKENS = st.lists(
    st.sampled_from(
        [
            *'{}[],:"\\ 0123456789.-+eE\t\n\r',
            "true",
            "null",
            "NaN",
            "Infinity",
            '"a"',
            "\\u00e9",
            "\\ud800",
            "x",
        ]
    ),
    max_size=14,
).map("".join)
NUMBER_TEXT = st.builds(
    lambda digits, fraction, exponent: f"{digits}{fraction}{exponent}",
    st.sampled_from(["0", "-0", "1", "9" * 17, "1" * 400, "9" * 4300, "9" * 4301, "-" + "7" * 5000]),
    st.sampled_from(["", ".5", ".000000000000000000001", "." + "3" * 800]),
    st.sampled_from(["", "e5", "E-400", "e+309", "e-324", "e0"]),
)
ODD_DOCUMENTS = [
    '"\\ud800"', '{"a": "\udcff"}', "\ufeff{}", '{"a": 1, "b": 2, "a": 3}', "[" * 300 + "]" * 300,
    "[" * 3000 + "]" * 3000, '{"a": NaN, "b": -Infinity}', "1e400", "  [1]  ", "[1,]", "{} x", "",
]  # fmt: skip


def read(parse: Callable[[Any], Any], text: Any) -> Any:
    try:
        return ("value", repr(parse(text)))
    except (ValueError, RecursionError) as exc:
        return ("raised", type(exc), str(exc))


@settings(max_examples=1500, deadline=None)
@given(DUMPED | TOKENS | NUMBER_TEXT | st.sampled_from(ODD_DOCUMENTS), st.booleans())
def test_loads_reads_every_text_as_json_loads_does(text: str, as_bytes: bool) -> None:
    subject: Any = text.encode("utf-8", "surrogatepass") if as_bytes else text
    assert read(jsontext.loads, subject) == read(json.loads, subject)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32-be"])
def test_loads_reads_other_encodings_as_json_loads_does(encoding: str) -> None:
    body = json.dumps({"data": [1.5, "\u00e9"]}).encode(encoding)
    assert jsontext.loads(body) == json.loads(body) == {"data": [1.5, "\u00e9"]}


def test_under_a_lower_digit_limit_json_loads_alone_reads() -> None:
    text = "[" + "9" * 1000 + "]"
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(640)
    try:
        assert read(jsontext.loads, text) == read(json.loads, text)
        assert read(json.loads, text)[0] == "raised"
    finally:
        sys.set_int_max_str_digits(before)
