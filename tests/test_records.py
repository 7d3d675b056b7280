"""Reading stored records fast reads them exactly as before: the JSON parser against json's, each
record model's stored-shape twin against the model's own validation, on the JSON commit.lua writes
and on hostile JSON alike (the same record, or the same refusal)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, BeforeValidator, Field, PrivateAttr, field_validator

from memproc import records
from memproc.records import HistoryEntry, MemoryRecord, SummaryRecord

SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1 is not 1.0, NaN is NaN, -0.0 is not 0.0),
    models field by field in the same order with the same fields set (a stack, not recursion: the
    JSON may nest deep)."""
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, BaseModel):
            if list(x.__dict__) != list(y.__dict__) or x.model_fields_set != y.model_fields_set:
                return False
            if (x.__pydantic_extra__, x.__pydantic_private__) != (
                y.__pydantic_extra__,
                y.__pydantic_private__,
            ):
                return False
            pending += [(x.__dict__[k], y.__dict__[k]) for k in x.__dict__]
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            pending += zip(x, y, strict=True)
        elif isinstance(x, dict):
            if list(x) != list(y):
                return False
            pending += [(x[k], y[k]) for k in x]
        elif isinstance(x, float):
            if not (math.isnan(x) and math.isnan(y)) and (
                x != y or math.copysign(1, x) != math.copysign(1, y)
            ):
                return False
        elif x != y:
            return False
    return True


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    """What a call gives: its value, or the type and text of what it raised."""
    try:
        return "value", fn(*args)
    except Exception as exc:
        return "raised", (type(exc).__name__, str(exc))


def assert_same_outcome(new: tuple[str, Any], old: tuple[str, Any]) -> None:
    assert new[0] == old[0], (new, old)
    assert (new[1] == old[1]) if new[0] == "raised" else same(new[1], old[1]), (new, old)


def json_loads_or_none(v: Any) -> Any:
    """How records read JSON before pydantic-core's parser: json's, None where it refuses."""
    v = records._blank_none(v)
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return None
    return v


def old_memory_from_attrs(memory_id: str, text: Any) -> MemoryRecord | None:
    """The parse before the twin (its history entries, and JSON inside fields, are read by the
    helpers tested on their own below)."""
    data = json_loads_or_none(text)
    return MemoryRecord.model_validate({**data, "memory_id": memory_id}) if isinstance(data, dict) else None


# -- values -------------------------------------------------------------------------------------

ODD_STRINGS = ["", " ", "current", "superseded", "retracted", "fact", "1.5", "nan", "inf", "1e400",
               "{}", "[]", '["a", 2]', '[{"op": "confirm"}]', "null", '"x"', "\ud800", "\x00", "é",
               "12"]  # fmt: skip
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 10**308, 10**309, 0])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(ODD_STRINGS)
)
ENTRY_KEYS = ["op", "text", "session_id", "stated_by", "raw_memory_id", "at", "valid_from", "was_memory_type"]
MEMORY_KEYS = [*MemoryRecord.model_fields, "text_sources", "retracted_by"]
keys = st.sampled_from(ENTRY_KEYS + MEMORY_KEYS) | st.text(max_size=4)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=12,
)

# The shapes commit.lua writes (cjson): numbers, non-empty strings, lists of strings, {} for an empty
# list, a known status, history entries.
words = st.text(min_size=1, max_size=12)
epochs = st.floats(min_value=0, max_value=4e9) | st.integers(min_value=0, max_value=4_000_000_000)
stored_entries = st.fixed_dictionaries(
    {"op": st.sampled_from(["confirm", "update", "retract"])},
    optional={
        "text": words,
        "session_id": words,
        "stated_by": st.lists(words, max_size=3),
        "raw_memory_id": words,
        "at": epochs,
        "valid_from": epochs,
        "was_memory_type": words,
    },
)
stored_attrs = st.fixed_dictionaries(
    {
        "text": st.text(max_size=40),
        "status": st.sampled_from(["current", "superseded", "retracted"]),
        "seq": st.integers(min_value=0, max_value=10**9),
        "merge_count": st.integers(min_value=0, max_value=100),
        "source_sessions": st.lists(words, min_size=1, max_size=4),
        "source_raw_ids": st.lists(words, min_size=1, max_size=4),
        "history": st.just({}) | st.lists(stored_entries, min_size=1, max_size=3),
    },
    optional={
        "memory_type": st.sampled_from(records.MEMORY_TYPES),
        "confidence": st.floats(min_value=0, max_value=1),
        "tags": st.lists(words, min_size=1, max_size=4),
        "session_id": words,
        "raw_memory_id": words,
        "created_at": epochs,
        "updated_at": epochs,
        "valid_from": epochs,
        "observed_at": epochs,
        "valid_to": epochs,
        "superseded_by": words,
        "supersedes": words,
        "text_sources": st.lists(words, max_size=2),
    },
)


def near(stored: st.SearchStrategy[dict[str, Any]], names: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """As stored but for a field or two holding anything (where the twin and the model part ways)."""
    odd = st.dictionaries(st.sampled_from(names), json_values, min_size=1, max_size=2)
    return st.builds(lambda good, bad: {**good, **bad}, stored, odd)


hostile_attrs = near(stored_attrs, MEMORY_KEYS) | st.dictionaries(
    st.sampled_from(MEMORY_KEYS) | st.text(max_size=4), json_values, max_size=10
)
hostile_entries = near(stored_entries, ENTRY_KEYS) | st.dictionaries(
    st.sampled_from(ENTRY_KEYS) | st.text(max_size=3), json_values, max_size=6
)


def dumps(value: Any, ascii_only: bool, spaced: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":"))


def mutated(text: str, data: st.DataObject) -> str:
    """The text with a few characters cut, doubled or replaced by JSON's own."""
    for _ in range(data.draw(st.integers(0, 3))):
        if not text:
            break
        i = data.draw(st.integers(0, len(text) - 1))
        piece = data.draw(st.sampled_from(["", text[i] * 2, "{", "}", "[", "]", ",", ":", '"', "\\", "-", "e",
                                           "0", ".", " ", "\\ud800", "NaN", "\t", "\ufeff"]))  # fmt: skip
        text = text[:i] + piece + text[i + 1 :]
    return text


# -- the JSON parser ----------------------------------------------------------------------------


@SETTINGS
@given(value=json_values, ascii_only=st.booleans(), spaced=st.booleans(), data=st.data())
def test_json_reads_as_json_does(value: Any, ascii_only: bool, spaced: bool, data: st.DataObject) -> None:
    """Whatever text (valid, cut short, garbled, with surrogates, NaN or huge numbers), records read
    it as json.loads does, or as nothing where json refuses it."""
    text = mutated(dumps(value, ascii_only, spaced), data)
    assert_same_outcome(outcome(records._json_value, text), outcome(json_loads_or_none, text))


@SETTINGS
@given(
    text=st.text(alphabet=st.sampled_from('{}[]",:-+.eE0123456789 \t\n\\u0aftrnulsNIy\ud800é'), max_size=30)
)
def test_json_reads_json_like_noise_as_json_does(text: str) -> None:
    assert_same_outcome(outcome(records._json_value, text), outcome(json_loads_or_none, text))


@pytest.mark.parametrize(
    "text",
    ["1" * 4301, "1" * 4300, "[" * 300 + "]" * 300, "[" * 5000 + "]" * 5000, "1e400", "-1e400", "NaN",
     "-0", "-0.0", "2.4703282292062328e-324", "1.7976931348623159e308", '"\\ud800"', '"\\udc00\\ud800"',
     '{"a":1,"a":2}', '{"\\ud800": 1}', "\ufeff{}", " {} ", "{} x", "\x0c{}", '"\t"', b'{"a": 1}', b"\xff",
     "", None, 5],
)  # fmt: skip
def test_json_reads_edge_cases_as_json_does(text: Any) -> None:
    assert_same_outcome(outcome(records._json_value, text), outcome(json_loads_or_none, text))


# -- the twins ----------------------------------------------------------------------------------


@SETTINGS
@given(entry=stored_entries)
def test_history_entry_twin_reads_stored_entries(entry: dict[str, Any]) -> None:
    """An entry as commit.lua stores it is read by the twin (the fast way), to what the model makes."""
    records._as_stored(HistoryEntry).model_validate(entry)
    assert same(records._read_stored(HistoryEntry, entry), HistoryEntry.model_validate(entry))


@SETTINGS
@given(entry=hostile_entries)
def test_history_entry_twin_reads_anything_as_the_model(entry: dict[str, Any]) -> None:
    assert_same_outcome(
        outcome(records._read_stored, HistoryEntry, entry), outcome(HistoryEntry.model_validate, entry)
    )


@SETTINGS
@given(attrs=stored_attrs, memory_id=words, ascii_only=st.booleans())
def test_memory_twin_reads_stored_memories(attrs: dict[str, Any], memory_id: str, ascii_only: bool) -> None:
    """A memory as commit.lua stores it is read by the twin, to the record the model makes of it."""
    text = dumps(attrs, ascii_only, False)
    data = records._json_object(text)
    assert data is not None
    records._as_stored(MemoryRecord).model_validate({**data, "memory_id": memory_id})  # taken as stored
    record = records._memory_from_attrs.__wrapped__(memory_id, text)
    assert same(record, old_memory_from_attrs(memory_id, text))
    assert record is not None
    assert (
        record.__getstate__()
        == MemoryRecord.model_construct(record.model_fields_set, **record.__dict__).__getstate__()
    )


@SETTINGS
@given(
    attrs=hostile_attrs,
    memory_id=words | st.sampled_from(["", "m1"]),
    ascii_only=st.booleans(),
    data=st.data(),
)
def test_memory_twin_reads_anything_as_the_model(
    attrs: dict[str, Any], memory_id: str, ascii_only: bool, data: st.DataObject
) -> None:
    """Hostile attributes (any JSON in any field, garbled text) give the same record or refusal."""
    text = (
        mutated(dumps(attrs, ascii_only, False), data)
        if data.draw(st.booleans())
        else dumps(attrs, True, True)
    )
    new = outcome(records._memory_from_attrs.__wrapped__, memory_id, text)
    assert_same_outcome(new, outcome(old_memory_from_attrs, memory_id, text))


ODD_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2**53, 2**53 + 1, -(2**53), -(2**53) - 1, 2**63, 10**309, 0.0, -0.0, 1.5,
    2.9, -1.5, math.nan, math.inf, -math.inf, 1e300, *ODD_STRINGS, [], [""], ["a"], ["a", 1], [None], [[]],
    [{}], [{"op": "confirm"}], [{"op": 1}], [{"op": "confirm", "at": "x"}], {}, {"a": 1}, {"op": "confirm"},
]  # fmt: skip
STORED_MEMORY = {
    "text": "The user has a dog.", "status": "current", "seq": 3, "merge_count": 1, "memory_type": "fact",
    "confidence": 0.9, "tags": ["dog"], "session_id": "s1", "raw_memory_id": "r1", "source_sessions": ["s1"],
    "source_raw_ids": ["r1"], "created_at": 1796192794.1193, "updated_at": 1796192794.1193,
    "valid_from": 1773144000, "observed_at": 1796192794, "history": {}, "text_sources": ["s1"],
}  # fmt: skip
STORED_ENTRY = {"op": "update", "text": "old", "session_id": "s1", "stated_by": ["s1"], "raw_memory_id": "r1",
                "at": 1796192794.5, "valid_from": 1773144000, "was_memory_type": "fact"}  # fmt: skip


@pytest.mark.parametrize("name", [*MemoryRecord.model_fields, "text_sources"])
def test_every_memory_field_holding_anything_reads_as_the_model(name: str) -> None:
    """Each field of a stored memory in turn holding each odd value (or gone): the same record or
    refusal as the model's, where the twin takes it and where it leaves it to the model."""
    for value in [*ODD_VALUES, "absent"]:
        attrs = {k: v for k, v in STORED_MEMORY.items() if k != name}
        if value != "absent":
            attrs[name] = value
        text = json.dumps(attrs)
        new = outcome(records._memory_from_attrs.__wrapped__, "m1", text)
        assert_same_outcome(new, outcome(old_memory_from_attrs, "m1", text))


@pytest.mark.parametrize("name", [*HistoryEntry.model_fields, "was_memory_type"])
def test_every_history_field_holding_anything_reads_as_the_model(name: str) -> None:
    for value in [*ODD_VALUES, "absent"]:
        entry = {k: v for k, v in STORED_ENTRY.items() if k != name}
        if value != "absent":
            entry[name] = value
        entry = json.loads(json.dumps(entry))
        new = outcome(records._read_stored, HistoryEntry, entry)
        assert_same_outcome(new, outcome(HistoryEntry.model_validate, entry))


def test_memory_from_attrs_keeps_its_leniency() -> None:
    """The shapes the twin leaves to the model still read as they always did."""
    record = MemoryRecord.from_attrs(
        "m1",
        json.dumps({"text": 5, "memory_type": "", "confidence": "0.5", "tags": {},
                    "source_sessions": '["s1"]', "merge_count": 2.9, "seq": True, "status": "bogus",
                    "history": [{"op": "confirm", "at": 1}, 3]}),
    )  # fmt: skip
    assert record is not None
    assert (record.text, record.memory_type, record.confidence, record.tags) == ("5", None, 0.5, [])
    assert (record.source_sessions, record.merge_count) == (["s1"], 2)
    assert (record.seq, record.status) == (1, "current")
    assert record.history == [HistoryEntry(op="confirm", at=1.0)]
    assert MemoryRecord.from_attrs("m1", "not json") is None
    assert MemoryRecord.from_attrs("m1", None) is None
    with pytest.raises(ValueError, match="memory_type"):
        MemoryRecord.from_attrs("m1", '{"memory_type": 7}')


def test_summary_reads_through_the_same_parser() -> None:
    summary = SummaryRecord.from_json("s1", '{"summary": "hi", "topics": {}, "memory_count": "3"}')
    assert summary is not None
    assert (summary.summary, summary.topics, summary.memory_count) == ("hi", [], 3)


def test_a_model_the_twin_cannot_stand_in_for_is_refused() -> None:
    """A field validator with no stored shape, a model whose instances hold more than the twin's
    (private attributes), or one with validators the twin would skip, is refused."""

    class Unknown(BaseModel):
        x: Annotated[int, BeforeValidator(lambda v: v)] = 0

    class Private(BaseModel):
        _secret: int = PrivateAttr(default=0)

    class Mistyped(BaseModel):
        x: Annotated[int | None, BeforeValidator(records._blank_none)] = None

    class Aliased(BaseModel):
        x: int = Field(0, alias="y")

    class Constrained(BaseModel):
        x: Annotated[int, BeforeValidator(records._int_or_zero), Field(ge=0)] = 0

    class Checked(BaseModel):
        x: Annotated[int, BeforeValidator(records._int_or_zero)] = 0

        @field_validator("x")
        @classmethod
        def positive(cls, v: int) -> int:
            return abs(v)

    for model in (Unknown, Private, Mistyped, Aliased, Constrained, Checked):
        with pytest.raises(TypeError):
            records._as_stored(model)


@SETTINGS
@given(epoch=st.floats(allow_nan=True, allow_infinity=True) | st.floats(min_value=-1e10, max_value=1e11))
def test_valid_from_date_is_the_utc_day_of_valid_from(epoch: float) -> None:
    """The cached day is the day formatted afresh (or the same refusal, for no time at all)."""
    fresh = outcome(lambda e: datetime.fromtimestamp(e, UTC).date().isoformat(), epoch)
    for _ in range(2):  # formatted, then from the cache
        assert_same_outcome(outcome(records._utc_day, epoch), fresh)
    if fresh[0] == "value":
        assert MemoryRecord(memory_id="m1", valid_from=epoch).valid_from_date == fresh[1]
    assert MemoryRecord(memory_id="m1").valid_from_date is None
