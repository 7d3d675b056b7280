"""Pydantic models at every boundary: API requests and responses, stored records."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator

RawStatus = Literal["queued", "processing", "processed", "error"]


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


class StoreRawResponse(BaseModel):
    success: bool = True
    raw_memory_id: str
    session_id: str
    vectorstore_name: str
    status: RawStatus
    duplicate: bool = False
    queued_at: str = Field(description="ISO 8601 UTC time the session was queued")
    queue_position: int = Field(description="Estimated items processed before this one (0: not waiting)")
    queue_size: int
    estimated_processing_time: float = Field(description="Estimated seconds until processed")


class RetentionPolicy(BaseModel):
    raw_memory_days: int
    session_days: int
    memories: Literal["permanent"] = "permanent"


class VectorstoreQueue(BaseModel):
    pending: int
    in_flight: int
    dead: int
    oldest_pending_age_seconds: float | None


class ProcessingStatus(BaseModel):
    success: bool = True
    vectorstore_name: str
    processor_running: bool
    last_heartbeat: str | None
    queue_size: int
    in_flight: int
    dead_letters: int
    processed_today: int
    last_processed_at: str | None
    processing_interval_seconds: int
    processing_rate_per_second: float | None
    retention_policy: RetentionPolicy
    vectorstore: VectorstoreQueue


class RawMemoryStatus(BaseModel):
    """One submission's state, without its transcript."""

    success: bool = True
    raw_memory_id: str
    vectorstore_name: str
    session_id: str
    status: RawStatus
    created_at: str
    processing_attempts: int
    last_error: str | None = None
    next_attempt_at: str | None = None
    processed_at: str | None = None
    session_length: int
    metadata: dict[str, Any] | None = None
    memories_created: int | None = None
    memories_merged: int | None = None
    memory_ids: list[str] | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    expires_at: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any | None = None


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    error: ErrorBody
