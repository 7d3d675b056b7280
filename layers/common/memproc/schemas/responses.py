"""What clients get back: every route's response body, and the one error shape.

Field names and types of the product specification's responses are kept exactly; more may be added.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from memproc.records import RawStatus
from memproc.schemas.requests import HierarchyLevel


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
    processors_running: int = Field(description="Live processors: the scheduled one and those it fanned out")
    backlog_age_seconds: float = Field(
        description="How long the oldest eligible submission of any vectorstore has waited for a processor"
    )
    retention_policy: RetentionPolicy
    vectorstore: VectorstoreQueue
    eviction_policy: str = Field(description="The store's maxmemory-policy; noeviction is expected")
    last_heartbeat_age_seconds: float | None = Field(
        None, description="Seconds since the processor's last heartbeat (null: it never ran)"
    )
    degraded: list[str] = Field(
        description="Why the service is not healthy, as GET /api/health reports it: it may lose queued "
        "sessions (an evicting store) or is not processing them (a silent processor, a queue falling "
        "behind). Empty: healthy"
    )


class HealthChecks(BaseModel):
    """The facts GET /api/health judges (processing_status shows the same ones)."""

    library: str = Field(description="The Redis function library this code uses (memproc_<version>)")
    library_loaded: bool = Field(description="FUNCTION LIST finds it in the store")
    eviction_policy: str = Field(description="The store's maxmemory-policy; noeviction is expected")
    processor_running: bool = Field(description="A heartbeat within two processing intervals")
    last_heartbeat_age_seconds: float | None
    processing_interval_seconds: int
    queue_size: int
    processors_running: int = Field(description="Live processors: the scheduled one and those it fanned out")
    backlog_age_seconds: float = Field(
        description="How long the oldest eligible submission of any vectorstore has waited for a processor "
        "(since it was submitted, or its retry backoff ended; 0: none waits)"
    )
    max_backlog_age_seconds: int = Field(description="Beyond this the queue counts as falling behind")


class HealthResponse(BaseModel):
    success: bool = Field(description="true: healthy (200); false: degraded (503, with Retry-After)")
    status: Literal["ok", "degraded"]
    reasons: list[str] = Field(description="Why it is degraded; empty when healthy")
    checks: HealthChecks


class MemoryHistoryEntry(BaseModel):
    op: str = Field(description="confirm: restated; update: the text it replaced; retract: withdrawn")
    text: str | None = None
    session_id: str | None = Field(None, description="The session that restated, updated or withdrew it")
    stated_by: list[str] = Field(
        default_factory=list, description="The sessions whose statement `text` is (an update's replaced text)"
    )
    at: str | None = Field(None, description="When memproc processed it")
    valid_from: str | None = Field(None, description="The session's own time of the statement")


class DiscreteMemory(BaseModel):
    """One memory, as the memory index describes it."""

    memory_id: str
    text: str
    memory_type: str | None = None
    confidence: float | None = None
    tags: list[str] = Field(default_factory=list)
    session_id: str | None = None
    raw_memory_id: str | None = None
    source_sessions: list[str] = Field(default_factory=list)
    merge_count: int = Field(0, description="Times a later session restated it")
    created_at: str | None = None
    updated_at: str | None = None
    status: Literal["current", "superseded", "retracted"] = "current"
    valid_from: str | None = Field(None, description="When it was said: the session's own time")
    observed_at: str | None = Field(None, description="When memproc last saw it stated")
    valid_to: str | None = Field(None, description="Superseded or retracted: since when it no longer holds")
    superseded_by: str | None = None
    history: list[MemoryHistoryEntry] = Field(default_factory=list)


class SessionSummary(BaseModel):
    session_id: str
    summary: str | None = None
    topics: list[str] = Field(default_factory=list)
    memory_ids: list[str] = Field(default_factory=list)
    memory_count: int = 0
    raw_memory_ids: list[str] = Field(default_factory=list)
    created_at: str | None = None
    updated_at: str | None = None
    processed_length: int | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    expires_at: str | None = None
    redacted: bool = Field(False, description="A memory it stated was erased; its prose was cleared")


class RawMemory(BaseModel):
    """A raw submission's metadata, length and processing state; never its transcript."""

    raw_memory_id: str
    session_id: str | None = None
    status: RawStatus
    created_at: str | None = None
    session_length: int = 0
    metadata: dict[str, Any] | None = None
    processing_attempts: int = 0
    last_error: str | None = None
    next_attempt_at: str | None = None
    processed_at: str | None = None
    dead_at: str | None = None
    redrive_count: int = 0
    memories_created: int | None = None
    memories_merged: int | None = None
    memories_updated: int | None = None
    memories_superseded: int | None = None
    memories_retracted: int | None = None
    memory_ids: list[str] | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    processing_ms: int | None = None
    extraction_mode: str | None = None
    expires_at: str | None = None


class SessionRawMemory(RawMemory):
    session_data: str | None = Field(
        None, description="The transcript; only with include_transcript=true, while it is retained"
    )


class RawMemoryResponse(SessionRawMemory):
    """GET raw/{raw_memory_id}: one submission's state (its transcript with include_transcript=true)."""

    success: bool = True
    vectorstore_name: str


class HierarchyFilters(BaseModel):
    session_id: str | None
    memory_type: HierarchyLevel
    category: str | None
    start_date: str | None
    end_date: str | None
    limit: int


class HierarchyCounts(BaseModel):
    discrete: int = 0
    summary: int = 0
    raw: int = 0


class HierarchyResponse(BaseModel):
    success: bool = True
    vectorstore_name: str
    filters: HierarchyFilters
    discrete_memories: list[DiscreteMemory]
    session_summaries: list[SessionSummary]
    raw_memories: list[RawMemory]
    total_count: int = Field(
        description="Items matching the filters in every group asked for, on all pages (index entries: "
        "those of expired transcripts count until cleanup trims them)"
    )
    totals: HierarchyCounts = Field(description="Items matching the filters per group, on all pages")
    counts: HierarchyCounts = Field(description="Items in this page per group")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null when done")


class TokenUsage(BaseModel):
    tokens_in: int = 0
    tokens_out: int = 0
    total_tokens: int = 0


class SessionDetails(BaseModel):
    success: bool = True
    vectorstore_name: str
    session_id: str
    status: Literal["processed", "pending", "error"] = Field(
        description="pending: a submission is queued or being processed; error: one is dead-lettered"
    )
    summary: SessionSummary | None
    memories: list[DiscreteMemory]
    memory_count: int
    raw_memories: list[SessionRawMemory] = Field(description="Newest first, at most 100")
    raw_memory_count: int = Field(description="Submissions of this session still indexed")
    token_usage: TokenUsage


class RawStatusCounts(BaseModel):
    queued: int = Field(description="Waiting in the queue (including retries in backoff)")
    processing: int = Field(description="Claimed by a worker (in flight)")
    error: int = Field(description="Dead-lettered; GET dead_letters lists them")
    processed: int = Field(
        description="Processed submissions still in the raw index (transcripts kept for the retention "
        "period; entries of expired ones count until cleanup trims them)"
    )
    indexed: int = Field(description="All raw memory index entries")


class StatsCounts(BaseModel):
    memories: int = Field(description="Discrete memories in the vector set (VCARD)")
    sessions: int = Field(description="Sessions with a summary (session index; expired ones until cleanup)")
    raw_memories: RawStatusCounts
    received_total: int = Field(description="Submissions ever accepted (duplicates excluded)")
    processed_total: int = Field(description="Submissions ever processed")


class StorageStats(BaseModel):
    approximate: bool = True
    vector_set_bytes: int = Field(description="MEMORY USAGE of the vector set")
    index_bytes: int = Field(description="MEMORY USAGE of the index, queue and config keys")
    raw_memories_bytes: int = Field(
        description="Estimate: mean MEMORY USAGE of the newest raw memories x count"
    )
    session_summaries_bytes: int = Field(description="Estimate: mean of the newest summaries x count")
    total_bytes: int


class DailyStats(BaseModel):
    date: str
    processed: int = 0
    errors: int = Field(0, description="Failed attempts (retried or dead-lettered)")
    dead: int = 0
    lost: int = Field(0, description="Queued sessions whose raw record was gone (evicted?), dead-lettered")
    memories_created: int = 0
    memories_merged: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    mean_processing_ms: float | None = None
    extraction_success_rate: float | None = Field(None, description="processed / (processed + dead)")
    last_processed_at: str | None = None


class EmbeddingConfig(BaseModel):
    model: str | None
    dimensions: int | None


class StatsResponse(BaseModel):
    success: bool = True
    vectorstore_name: str
    generated_at: str
    counts: StatsCounts
    storage: StorageStats
    daily: list[DailyStats] = Field(description="The last 7 days (UTC), oldest first")
    last_7_days: DailyStats
    embedding: EmbeddingConfig | None


class SearchFilters(BaseModel):
    session_id: str | None
    category: str | None
    start_date: str | None
    end_date: str | None


class SearchResult(BaseModel):
    memory_id: str
    text: str
    memory_type: str | None
    session_id: str | None
    source_sessions: list[str]
    tags: list[str]
    created_at: str | None
    status: Literal["current", "superseded", "retracted"] = "current"
    valid_from: str | None = None
    valid_to: str | None = None
    superseded_by: str | None = None
    similarity: float = Field(description="Cosine similarity in [-1, 1]")
    score: float = Field(description="(1 + similarity) / 2, in [0, 1]")


class SearchResponse(BaseModel):
    success: bool = True
    vectorstore_name: str
    query: str
    k: int
    filters: SearchFilters
    results: list[SearchResult]
    count: int
    pending_sessions: int = Field(description="Submissions of this vectorstore queued or being processed")
    session_pending: bool | None = Field(
        None, description="With session_id: whether that session has submissions not yet processed"
    )
    note: str | None = None


class DeadLettersResponse(BaseModel):
    success: bool = True
    vectorstore_name: str
    total: int
    dead_letters: list[RawMemory]
