"""Stored records to what the API shows: epoch seconds become ISO 8601, internal fields stay inside."""

from __future__ import annotations

from memproc.records import MemoryRecord, RawRecord, SummaryRecord
from memproc.schemas.responses import (
    DiscreteMemory,
    MemoryHistoryEntry,
    RawMemory,
    SearchResult,
    SessionSummary,
)
from memproc.timeutil import iso


def memory_view(m: MemoryRecord) -> DiscreteMemory:
    return DiscreteMemory(
        memory_id=m.memory_id,
        text=m.text,
        memory_type=m.memory_type,
        confidence=m.confidence,
        tags=m.tags,
        session_id=m.session_id,
        raw_memory_id=m.raw_memory_id,
        source_sessions=m.source_sessions,
        merge_count=m.merge_count,
        created_at=iso(m.created_at),
        updated_at=iso(m.updated_at),
        status=m.status,
        valid_from=iso(m.valid_from),
        observed_at=iso(m.observed_at),
        valid_to=iso(m.valid_to),
        superseded_by=m.superseded_by,
        history=[
            MemoryHistoryEntry(
                op=h.op,
                text=h.text,
                session_id=h.session_id,
                stated_by=h.stated_by or ([h.session_id] if h.session_id and h.op != "update" else []),
                at=iso(h.at),
                valid_from=iso(h.valid_from),
            )
            for h in m.history
        ],
    )


def search_result(m: MemoryRecord, similarity: float) -> SearchResult:
    return SearchResult(
        memory_id=m.memory_id,
        text=m.text,
        memory_type=m.memory_type,
        session_id=m.session_id,
        source_sessions=m.source_sessions,
        tags=m.tags,
        created_at=iso(m.created_at),
        status=m.status,
        valid_from=iso(m.valid_from),
        valid_to=iso(m.valid_to),
        superseded_by=m.superseded_by,
        similarity=round(similarity, 6),
        score=round((1 + similarity) / 2, 6),
    )


def summary_view(s: SummaryRecord) -> SessionSummary:
    return SessionSummary(
        session_id=s.session_id,
        summary=s.summary,
        topics=s.topics,
        memory_ids=s.memory_ids,
        memory_count=s.memory_count,
        raw_memory_ids=s.raw_memory_ids,
        created_at=iso(s.created_at),
        updated_at=iso(s.updated_at),
        processed_length=s.processed_length,
        tokens_in=s.tokens_in,
        tokens_out=s.tokens_out,
        expires_at=iso(s.expires_at),
        redacted=s.redacted_at is not None,
    )


def raw_view(r: RawRecord) -> RawMemory:
    """A submission's state; retry and death times only while they apply."""
    return RawMemory(
        raw_memory_id=r.raw_memory_id,
        session_id=r.session_id,
        status=r.status,
        created_at=iso(r.created_at),
        session_length=r.session_length,
        metadata=r.metadata,
        processing_attempts=r.processing_attempts,
        last_error=r.last_error,
        next_attempt_at=iso(r.next_attempt_at) if r.status == "queued" else None,
        processed_at=iso(r.processed_at),
        dead_at=iso(r.dead_at) if r.status == "error" else None,
        redrive_count=r.redrive_count,
        memories_created=r.memories_created,
        memories_merged=r.memories_merged,
        memories_updated=r.memories_updated,
        memories_superseded=r.memories_superseded,
        memories_retracted=r.memories_retracted,
        memory_ids=r.memory_ids,
        tokens_in=r.tokens_in,
        tokens_out=r.tokens_out,
        processing_ms=r.processing_ms,
        extraction_mode=r.extraction_mode,
        expires_at=iso(r.expires_at),
    )
