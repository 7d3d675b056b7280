"""What clients send: the store_raw body and every route's query parameters.

Query models forbid unknown names, so a typo cannot silently widen a query or an erasure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, WithJsonSchema, field_validator, model_validator
from pydantic_core import PydanticCustomError

from memproc.records import MemoryType
from memproc.timeutil import parse_instant
from memproc.validation import SESSION_ID_RE, SESSION_ID_RULE

HierarchyLevel = Literal["discrete", "summary", "raw", "all"]


class StoreRawRequest(BaseModel):
    """Body of POST /store_raw: one complete chat session."""

    model_config = ConfigDict(extra="forbid")

    session_data: StrictStr = Field(min_length=1, description="The complete chat transcript")
    session_id: StrictStr | None = Field(None, description="Generated when absent")
    metadata: dict[str, Any] | None = Field(None, description="Free-form JSON object, at most 16 KiB")

    @field_validator("session_data")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("session_data must not be blank")
        return v


def _instant(value: Any, *, end_of_day: bool = False) -> datetime:
    if not isinstance(value, str) or not value.strip():
        raise PydanticCustomError("invalid_date", "must be an ISO 8601 date or date-time")
    try:
        return parse_instant(value, end_of_day=end_of_day)
    except ValueError as exc:
        raise PydanticCustomError("invalid_date", "{reason}", {"reason": str(exc)}) from None


def _check_session_id(value: str | None) -> str | None:
    if value is not None and not SESSION_ID_RE.fullmatch(value):
        raise PydanticCustomError("invalid_session_id", SESSION_ID_RULE)
    return value


class QueryParams(BaseModel):
    """Query-string parameters: unknown names are refused, so a typo cannot widen a query."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# A date or a date-time (both ISO 8601), which no JSON schema format names.
Instant = Annotated[
    datetime | None, WithJsonSchema({"type": "string", "examples": ["2026-11-01", "2026-11-26T09:30:00Z"]})
]


class DateRange(QueryParams):
    start_date: Instant = Field(None, description="ISO 8601 date or date-time; naive means UTC")
    end_date: Instant = Field(
        None, description="ISO 8601 date or date-time; naive means UTC, a bare date includes the whole day"
    )

    @field_validator("start_date", mode="before")
    @classmethod
    def _start(cls, v: Any) -> datetime | None:
        return None if v is None else _instant(v)

    @field_validator("end_date", mode="before")
    @classmethod
    def _end(cls, v: Any) -> datetime | None:
        return None if v is None else _instant(v, end_of_day=True)

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.start_date and self.end_date and self.start_date > self.end_date:
            raise PydanticCustomError("invalid_date_range", "start_date must not be after end_date")
        return self

    @property
    def min_score(self) -> float | None:
        return self.start_date.timestamp() if self.start_date else None

    @property
    def max_score(self) -> float | None:
        return self.end_date.timestamp() if self.end_date else None


class HierarchyQuery(DateRange):
    session_id: str | None = None
    memory_type: HierarchyLevel = Field("all", description="The level: discrete, summary, raw or all")
    category: MemoryType | None = Field(
        None, description="Discrete memories of this category only: fact, preference, insight, ..."
    )
    limit: int = Field(50, ge=1, le=1000, description="Items per group (with memory_type=all: in each group)")
    cursor: str | None = Field(
        None, min_length=1, max_length=4096, description="next_cursor of a previous page"
    )

    _session = field_validator("session_id")(_check_session_id)

    @model_validator(mode="after")
    def _category_needs_memories(self) -> HierarchyQuery:
        if self.category is not None and self.memory_type not in ("discrete", "all"):
            raise PydanticCustomError(
                "invalid_category",
                "category filters discrete memories: use it with memory_type=discrete or all",
            )
        return self


class TranscriptQuery(QueryParams):
    """GET session/{id} and raw/{id}: the transcripts too, while they are retained."""

    include_transcript: bool = False


class NoParams(QueryParams):
    """Routes that take no query parameters."""


class SearchQuery(DateRange):
    q: str = Field(min_length=1, max_length=2000, description="Text to search for")
    k: int = Field(10, ge=1, le=100, description="Number of results")
    session_id: str | None = None
    category: MemoryType | None = Field(
        None, description="Memories of this category only: fact, preference, insight, event, goal, ..."
    )
    include_superseded: bool = Field(
        False, description="Also memories no longer true (superseded or retracted); current ones rank first"
    )

    _session = field_validator("session_id")(_check_session_id)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "memory_type" in data:
            raise PydanticCustomError(
                "renamed_parameter",
                "search's category filter is called category (memory_type is the hierarchy's level: "
                "discrete, summary, raw or all)",
            )
        return data

    @field_validator("q")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise PydanticCustomError("invalid_q", "q must not be blank")
        return v


class CleanupQuery(QueryParams):
    retention_days: int | None = Field(None, ge=1, le=3650, description="Default: RAW_RETENTION_DAYS")
    dry_run: bool = False
    limit: int = Field(1000, ge=1, le=10_000, description="Index entries examined per pass")


class EraseMemoryQuery(QueryParams):
    purge_sources: bool = Field(False, description="Also delete the transcripts the memory came from")


class DeadLettersQuery(QueryParams):
    limit: int = Field(50, ge=1, le=1000)
