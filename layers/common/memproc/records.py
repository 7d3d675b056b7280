"""Stored record shapes and the domain's vocabulary: what memproc keeps in Redis, as data.

Redis hands back strings (hash fields) and JSON written by Lua's cjson (which writes an empty list
as ``{}``); these models read both leniently, so a record that an older version wrote, or one
half-erased under our feet, still maps to something the API can show instead of failing a read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, cast, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, create_model

from memproc.jsontext import loads
from memproc.request_body import unstorable

RawStatus = Literal["queued", "processing", "processed", "error"]

MemoryType = Literal["fact", "preference", "insight", "event", "goal", "relationship"]
MEMORY_TYPES: tuple[str, ...] = get_args(MemoryType)

# The raw hash fields a record is read with (never the transcript, which may be large).
RAW_FIELDS = (
    "raw_memory_id",
    "session_id",
    "status",
    "created_at",
    "session_length",
    "metadata",
    "processing_attempts",
    "last_error",
    "next_attempt_at",
    "processed_at",
    "dead_at",
    "redrive_count",
    "memories_created",
    "memories_merged",
    "memories_updated",
    "memories_superseded",
    "memories_retracted",
    "memory_ids",
    "tokens_in",
    "tokens_out",
    "processing_ms",
    "extraction_mode",
)
TRANSCRIPT_FIELDS = ("session_data", "session_data_encoding")


def _text(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


# These validators run for every field of every record parsed (a lookup parses tens of memories):
# a value already of the type it is read as takes a shortcut to the same result.


def _blank_none(v: Any) -> Any:
    if type(v) is not str:
        v = _text(v)
    return None if v == "" else v


def _number_or_none(v: Any) -> Any:
    if type(v) is float or type(v) is int:
        return float(v)
    v = _blank_none(v)
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def _json_value(v: Any) -> Any:
    """JSON text as its value, None if it is not JSON."""
    v = _blank_none(v)
    if isinstance(v, str):
        try:
            return loads(v)
        except ValueError:
            return None
    return v


def _string_list(v: Any) -> list[str]:
    """A JSON list of strings as stored; cjson writes an empty list as {} and anything else is []."""
    if type(v) is list and all(type(x) is str for x in v):
        return list(v)
    v = _json_value(v)
    return [str(x) for x in v] if isinstance(v, list) else []


def _optional_string_list(v: Any) -> list[str] | None:
    """Absent stays None (not processed yet); present is read as `_string_list`."""
    return None if _blank_none(v) is None else _string_list(v)


def _json_object(v: Any) -> dict[str, Any] | None:
    v = _json_value(v)
    return v if isinstance(v, dict) else None


def _metadata(v: Any) -> dict[str, Any] | None:
    """Stored before the door checked it, metadata may be too deep to serialise: then it is hidden."""
    v = _json_object(v)
    return None if v is None or unstorable(v) else v


def _int_or_none(v: Any) -> int | None:
    number = _number_or_none(v)
    return None if number is None else int(number)


def _int_or_zero(v: Any) -> int:
    return _int_or_none(v) or 0


def _expiry(v: Any) -> int | None:
    """EXPIRETIME's answer: -1 (no expiry) and -2 (no key) are not times."""
    return v if isinstance(v, int) and v > 0 else None


Text = Annotated[str | None, BeforeValidator(_blank_none)]
Epoch = Annotated[float | None, BeforeValidator(_number_or_none)]
Count = Annotated[int, BeforeValidator(_int_or_zero)]
OptionalCount = Annotated[int | None, BeforeValidator(_int_or_none)]
StringList = Annotated[list[str], BeforeValidator(_string_list)]
OptionalStringList = Annotated[list[str] | None, BeforeValidator(_optional_string_list)]
Metadata = Annotated[dict[str, Any] | None, BeforeValidator(_metadata)]


class RawRecord(BaseModel):
    """One submission's hash `{vs}:raw_memory:<id>`, without its transcript."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    raw_memory_id: str
    session_id: Text = None
    status: RawStatus
    created_at: Epoch = None
    session_length: Count = 0
    metadata: Metadata = None
    processing_attempts: Count = 0
    last_error: Text = None
    next_attempt_at: Epoch = None
    processed_at: Epoch = None
    dead_at: Epoch = None
    redrive_count: Count = 0
    memories_created: OptionalCount = None
    memories_merged: OptionalCount = None
    memories_updated: OptionalCount = None
    memories_superseded: OptionalCount = None
    memories_retracted: OptionalCount = None
    memory_ids: OptionalStringList = None
    tokens_in: OptionalCount = None
    tokens_out: OptionalCount = None
    processing_ms: OptionalCount = None
    extraction_mode: Text = None
    # Not a hash field: the key's EXPIRETIME (None: no expiry).
    expires_at: Epoch = None

    @classmethod
    def from_hash(cls, raw_id: str, values: list[Any], expires: Any = None) -> RawRecord | None:
        """From an HMGET of RAW_FIELDS; None when the record is gone (no status)."""
        h = {name: _text(v) for name, v in zip(RAW_FIELDS, values, strict=True)}
        if not h["status"]:
            return None
        h["raw_memory_id"] = raw_id
        return cls.model_validate({**h, "expires_at": _expiry(expires)})


class SummaryRecord(BaseModel):
    """A session's summary `{vs}:session_summary:<session_id>` (JSON written by the commit)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    session_id: str
    summary: Text = None
    topics: StringList = Field(default_factory=list)
    memory_ids: StringList = Field(default_factory=list)
    memory_count: Count = 0
    raw_memory_ids: StringList = Field(default_factory=list)
    created_at: Epoch = None
    updated_at: Epoch = None
    processed_length: OptionalCount = None
    processed_sha256: Text = None
    processed_raw_id: Text = None  # the submission whose transcript the processed prefix is
    redacted_at: Epoch = None  # a memory it stated was erased: the prose was cleared
    tokens_in: Count = 0
    tokens_out: Count = 0
    expires_at: Epoch = None

    @classmethod
    def from_json(cls, session_id: str, text: Any, expires: Any = None) -> SummaryRecord | None:
        data = _json_object(text)
        if data is None:
            return None
        return cls.model_validate({**data, "session_id": session_id, "expires_at": _expiry(expires)})


MemoryStatus = Literal["current", "superseded", "retracted"]


def _status(v: Any) -> str:
    """Memories stored before statuses existed are current."""
    v = _blank_none(v)
    return v if v in ("current", "superseded", "retracted") else "current"


def _history(v: Any) -> list[HistoryEntry]:
    """A memory's history entries as stored (cjson writes none as {}: the common case, at once)."""
    if type(v) is dict:
        return []
    v = _json_value(v)
    return [_read_stored(HistoryEntry, e) for e in v if isinstance(e, dict)] if isinstance(v, list) else []


def _memory_text(v: Any) -> str:
    return str(_text(v) or "")


class HistoryEntry(BaseModel):
    """A statement a memory no longer shows as its text: a restatement (confirm), the text an
    update replaced (with the sessions that stated it), or the withdrawal (retract), with the
    session that made the change."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    op: str
    text: Text = None
    session_id: Text = None
    stated_by: StringList = Field(default_factory=list)
    raw_memory_id: Text = None
    at: Epoch = None
    valid_from: Epoch = None


class MemoryRecord(BaseModel):
    """One discrete memory as the memory index stores it (vector-set attributes, or the `attrs` of
    its Query-Engine hash): one shape in both engines."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    memory_id: str
    text: Annotated[str, BeforeValidator(_memory_text)] = ""
    memory_type: Text = None
    confidence: Epoch = None
    tags: StringList = Field(default_factory=list)
    session_id: Text = None
    raw_memory_id: Text = None
    source_sessions: StringList = Field(default_factory=list)
    source_raw_ids: StringList = Field(default_factory=list)
    merge_count: Count = 0
    created_at: Epoch = None
    updated_at: Epoch = None
    # Time: when the statement was made (the session's own time), when memproc last saw it,
    # and, once no longer true, until when it was and what replaced it.
    valid_from: Epoch = None
    observed_at: Epoch = None
    valid_to: Epoch = None
    status: Annotated[MemoryStatus, BeforeValidator(_status)] = "current"
    superseded_by: Text = None
    supersedes: Text = None
    history: Annotated[list[HistoryEntry], BeforeValidator(_history)] = Field(default_factory=list)
    seq: Count = 0  # the vectorstore's memory sequence at its last change (optimistic concurrency)

    @property
    def valid_from_date(self) -> str | None:
        """The day the statement was made, as the prompt shows it."""
        return None if self.valid_from is None else _utc_day(self.valid_from)

    @classmethod
    def from_attrs(cls, memory_id: str, text: Any) -> MemoryRecord | None:
        """From the stored JSON attributes; None when the memory is gone. Parsed once per distinct
        (id, attributes text): sessions of one vectorstore are shown the same memories again and
        again (reconciliation reads ~30 per session), and a parse is a pure function of that text,
        so a cached record is exactly what parsing the reply again would give."""
        return _memory_from_attrs(memory_id, text) if text is not None else None


@functools.lru_cache(maxsize=4096)
def _utc_day(epoch: float) -> str:
    """A time's UTC day: a prompt shows ~20 memories' (~0.6 us each to format), of a few days."""
    return datetime.fromtimestamp(epoch, UTC).date().isoformat()


# Records are frozen; a few thousand of them is a few MB.
@functools.lru_cache(maxsize=2048)
def _memory_from_attrs(memory_id: str, text: str | bytes) -> MemoryRecord | None:
    data = _json_object(text)
    return None if data is None else _read_stored(MemoryRecord, {**data, "memory_id": memory_id})


# Reading a memory is on the processor's hot path (a session parses ~10 it has not seen before), and
# validating one calls a Python validator per field: ~7 of a ~12 us parse (json.loads the rest).
# Each record model has a twin that takes only values in the shape commit.lua stores them (cjson's
# numbers, non-empty strings, lists of strings, a known status) and checks them in pydantic-core
# alone (~4 us): on such values each lenient validator is the identity (or int -> float, as the
# twin does), so the twin's values are the model's. Anything else (an empty string, cjson's {} for
# an empty list, a bad value) the twin refuses, and the model reads it as ever, accepting or
# refusing it alike. tests/test_records.py checks both ways give the same record, or refusal.

_EXACT_INT = 2**53  # an int this small is its own float: `_int_or_zero` gives it back unchanged
# What each field validator is the identity on (with the declared type it is the identity into).
_AS_STORED: dict[Callable[..., Any] | None, tuple[Any, Any]] = {
    _blank_none: (str | None, Annotated[str, StringConstraints(min_length=1)] | None),
    _number_or_none: (float | None, float | None),  # strict float takes an int as float() does
    _int_or_zero: (int, Annotated[int, Field(ge=-_EXACT_INT, le=_EXACT_INT)]),
    _string_list: (list[str], list[str]),
    _memory_text: (str, str),
    _status: (MemoryStatus, MemoryStatus),
}
_M = TypeVar("_M", bound=BaseModel)


@functools.cache
def _as_stored(model: type[BaseModel]) -> type[BaseModel]:
    """`model`'s twin: its configuration made strict, the same fields, defaults and order, each of
    its stored shape (a field without a validator as declared; `history` keeps its validator, which
    reads entries by their own twin). A field or model it could not stand in for is refused (a
    TypeError at every read). Made at the first read, not at import (~3 ms: cold starts)."""
    extra, checks = model.model_config.get("extra"), model.__pydantic_decorators__
    if model.__pydantic_post_init__ or model.__private_attributes__ or extra == "allow":
        raise TypeError(f"{model.__name__}: its instances hold more than the twin's")
    if checks.validators or checks.field_validators or checks.root_validators or checks.model_validators:
        raise TypeError(f"{model.__name__}: its validators would not run on the twin")
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if info.alias or info.validation_alias or info.validate_default:
            raise TypeError(f"{model.__name__}.{name}: the twin reads fields by name, defaults as they are")
        validator = info.metadata[0] if len(info.metadata) == 1 else None
        stored: Any
        if not info.metadata:
            stored = info.annotation
        elif validator == BeforeValidator(_history):
            stored = Annotated[info.annotation, validator]
        else:
            declared, stored = _AS_STORED.get(getattr(validator, "func", None), (None, None))
            if not isinstance(validator, BeforeValidator) or declared != info.annotation:
                raise TypeError(f"{model.__name__}.{name}: no stored shape for how it is declared")
        default = Field(default_factory=info.default_factory) if info.default_factory else info.default
        fields[name] = (stored, default)
    config = ConfigDict(**{**model.model_config, "strict": True})
    twin: type[BaseModel] = create_model(f"Stored{model.__name__}", __config__=config, **fields)
    return twin


def _read_stored(model: type[_M], data: dict[str, Any]) -> _M:
    """`model.model_validate(data)`, by its twin when the values are as stored: the twin's instance,
    its slots set by pydantic-core as the model's would be, is made the model's (~0.2 us, where
    `model_construct` loops over the fields in Python for ~9)."""
    validate = _as_stored(model).__pydantic_validator__.validate_python  # model_validate, less its wrapper
    try:
        stored = validate(data)
    except Exception:  # not as stored, or not valid at all: the model says which
        return model.model_validate(data)
    _setattr(stored, "__class__", model)  # the same layout: both are BaseModels adding no slots
    return cast(_M, stored)


_setattr = object.__setattr__
