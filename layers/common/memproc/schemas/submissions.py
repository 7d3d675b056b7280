"""What store_raw and a dead letter's redrive answer: apart from the read routes' responses, so the
store_raw function builds only the models it sends (its cold start)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from memproc.records import RawStatus


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
    estimated_processing_time: str = Field(
        description='When it should be processed, as the specification shows it: "about 4 seconds", '
        '"2-5 minutes"'
    )
    estimated_processing_seconds: float = Field(description="The same estimate in seconds")


class RetryResponse(BaseModel):
    success: bool = True
    vectorstore_name: str
    raw_memory_id: str
    status: Literal["queued"] = "queued"
    pending: int = Field(description="Items of this vectorstore now waiting")
