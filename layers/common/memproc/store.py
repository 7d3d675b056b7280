"""Reads of the memory hierarchy: raw submissions, sessions, memories."""

from __future__ import annotations

import json
from typing import Any

import redis

from memproc.errors import NotFound
from memproc.models import RawMemoryStatus
from memproc.queue import iso, require_raw_id, require_vectorstore

_STATUS_FIELDS = (
    "raw_memory_id", "session_id", "status", "created_at", "processing_attempts", "last_error",
    "next_attempt_at", "processed_at", "session_length", "metadata", "memories_created",
    "memories_merged", "memory_ids", "tokens_in", "tokens_out",
)


def _int(v: Any) -> int | None:
    return int(v) if v not in (None, "") else None


def raw_status(r: redis.Redis, vectorstore: str, raw_id: str) -> RawMemoryStatus:
    """One submission's state in one round trip (the transcript is never read)."""
    vk = require_vectorstore(vectorstore)
    key = vk.raw(require_raw_id(raw_id))
    pipe = r.pipeline(transaction=False)
    pipe.hmget(key, _STATUS_FIELDS)
    pipe.expiretime(key)
    values, expires = pipe.execute()
    h = dict(zip(_STATUS_FIELDS, values, strict=True))
    if not h["status"]:
        raise NotFound(f"no raw memory {raw_id!r} in vectorstore {vectorstore!r}", code="raw_memory_not_found")
    return RawMemoryStatus(
        raw_memory_id=raw_id,
        vectorstore_name=vectorstore,
        session_id=h["session_id"],
        status=h["status"],
        created_at=iso(h["created_at"]) or "",
        processing_attempts=int(h["processing_attempts"] or 0),
        last_error=h["last_error"] or None,
        next_attempt_at=iso(h["next_attempt_at"]) if h["status"] == "queued" else None,
        processed_at=iso(h["processed_at"]),
        session_length=int(h["session_length"] or 0),
        metadata=json.loads(h["metadata"]) if h["metadata"] else None,
        memories_created=_int(h["memories_created"]),
        memories_merged=_int(h["memories_merged"]),
        memory_ids=json.loads(h["memory_ids"]) or [] if h["memory_ids"] else None,
        tokens_in=_int(h["tokens_in"]),
        tokens_out=_int(h["tokens_out"]),
        expires_at=iso(expires) if expires and expires > 0 else None,
    )
