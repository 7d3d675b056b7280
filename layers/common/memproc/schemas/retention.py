"""What cleanup and erasure answer: the receipts of POST cleanup, the scheduled cleanup's report, and
DELETE memory / session / vectorstore."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class TrimCounts(BaseModel):
    raw_index: int = 0
    session_index: int = 0
    session_raws: int = 0
    memory_index: int = 0
    total: int = 0


class ReconcileCounts(BaseModel):
    requeued: int = Field(0, description="queued records missing from the queue, put back")
    restored_in_flight: int = Field(0, description="processing records missing from the in-flight set")
    restored_dead: int = Field(0, description="error records missing from the dead set")
    ready: int = Field(0, description="1 when the vectorstore had waiting items but no turn in the ready set")
    category_indexed: int = Field(0, description="memories missing from their category listing, listed again")
    total: int = 0


class CleanupReceipt(BaseModel):
    success: bool = True
    vectorstore_name: str
    dry_run: bool
    retention_days: int
    cutoff: str = Field(description="Processed raw memories created before this are deleted")
    deleted_raw_memories: list[str]
    deleted_count: int
    trimmed_index_entries: TrimCounts
    reconciled: ReconcileCounts
    live_kept: int = Field(description="Queued, in-flight or dead raw memories older than the cutoff, kept")
    examined: dict[str, int]
    complete: bool = Field(description="false: more old entries remain; call again")


class ScheduledCleanupReport(BaseModel):
    dry_run: bool
    vectorstores: int = Field(description="Vectorstores fully cleaned in this run")
    calls: int
    deleted_raw_memories: int
    trimmed_index_entries: int
    reconciled: int
    cycle_complete: bool = Field(description="Every vectorstore was visited; the next run starts over")
    seconds: float


class ErasureCounts(BaseModel):
    raw_memories: int = 0
    queue_entries: int = Field(0, description="Raw memories taken out of the queue, in-flight or dead sets")
    dedupe_keys: int = 0
    memories: int = 0
    memories_updated: int = Field(0, description="Memories shared with other sessions that lost this source")
    references_updated: int = Field(0, description="Sessions and raw records that no longer list the memory")
    transcripts_purged: int = Field(0, description="With purge_sources: transcripts the memory came from")
    sessions: int = 0
    summaries: int = 0


class ErasureReceipt(BaseModel):
    success: bool = True
    vectorstore_name: str
    erased: Literal["memory", "session", "vectorstore"]
    id: str
    removed: ErasureCounts
    complete: bool = Field(True, description="false: a huge vectorstore was partly erased; call again")
