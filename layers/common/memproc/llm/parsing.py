"""Turning a model's JSON reply into a validated ``Extraction``.

Strict structured outputs cannot express string lengths, and compatible servers may ignore the
schema's bounds: harmless overshoots are repaired here rather than failing a whole session, while
structural errors still fail validation so the caller can ask again.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, get_args

from memproc.llm.schema import (
    MAX_MEMORIES_PER_CALL,
    MAX_MEMORY_CHARS,
    MAX_SUMMARY_CHARS,
    MAX_TAG_CHARS,
    MAX_TAGS,
    MAX_TOPIC_CHARS,
    MAX_TOPICS,
    Extraction,
    OperationKind,
)
from memproc.records import MEMORY_TYPES

logger = logging.getLogger(__name__)
OPERATION_KINDS = frozenset(get_args(OperationKind))


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, at a word boundary when one is near."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit * 0.8:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _clean_labels(values: list[Any], max_items: int, max_chars: int) -> list[Any]:
    """Strip, lowercase, shorten and dedupe string labels; leave non-strings for validation to reject."""
    out: list[Any] = []
    seen: set[str] = set()
    for value in values:
        if isinstance(value, str):
            value = truncate(" ".join(value.split()).lower(), max_chars)
            if not value or value in seen:
                continue
            seen.add(value)
        out.append(value)
    return out[:max_items]


def _coerce_payload(data: dict[str, Any], *, fallback_summary: str, max_memories: int) -> dict[str, Any]:
    """Repair the harmless ways a model overshoots the schema instead of failing a whole session.

    Strict mode cannot express string lengths, and OpenAI-compatible servers may ignore the schema's
    bounds: clamp/truncate those (11 tags, confidence 1.2, a 1,100-char memory). Structural problems
    (missing fields, wrong types) are left for validation to reject as malformed output.
    """
    out = dict(data)
    memories = data.get("memories")
    if isinstance(memories, list):
        cleaned: list[Any] = []
        for item in memories:
            if isinstance(item, dict):
                item = dict(item)
                text = item.get("text")
                if isinstance(text, str):
                    text = " ".join(text.split())
                    if not text:
                        continue
                    item["text"] = truncate(text, MAX_MEMORY_CHARS)
                kind = item.get("memory_type")
                if isinstance(kind, str):
                    kind = kind.strip().lower()
                    item["memory_type"] = kind if kind in MEMORY_TYPES else "fact"
                conf = item.get("confidence")
                if isinstance(conf, int | float) and not isinstance(conf, bool):
                    item["confidence"] = 0.5 if math.isnan(conf) else min(1.0, max(0.0, float(conf)))
                tags = item.get("tags")
                if isinstance(tags, list):
                    item["tags"] = _clean_labels(tags, MAX_TAGS, MAX_TAG_CHARS)
            cleaned.append(item)
        out["memories"] = cleaned[:max_memories]
    summary = data.get("summary")
    if isinstance(summary, str):
        summary = summary.strip()
        out["summary"] = truncate(summary, MAX_SUMMARY_CHARS) if summary else fallback_summary
    topics = data.get("topics")
    if isinstance(topics, list):
        out["topics"] = _clean_labels(topics, MAX_TOPICS, MAX_TOPIC_CHARS)
    operations = data.get("operations")
    if operations is None:
        out["operations"] = []  # a model that was shown no memories may leave it out
    elif isinstance(operations, list):
        out["operations"] = [_coerce_operation(op) for op in operations if _usable_operation(op)]
    return out


def _usable_operation(op: Any) -> bool:
    """An operation the processor can act on; others are dropped (and counted by the caller's log),
    never a reason to fail the whole session."""
    if not isinstance(op, dict) or op.get("op") not in OPERATION_KINDS or not isinstance(op.get("id"), str):
        logger.warning("dropped an unusable memory operation: %.80r", op)
        return False
    if op["op"] in ("update", "supersede") and not (isinstance(op.get("text"), str) and op["text"].strip()):
        logger.warning("dropped a %s operation without text", op["op"])
        return False
    return True


def _coerce_operation(op: dict[str, Any]) -> dict[str, Any]:
    out = {"text": None, "memory_type": None, "confidence": None, "tags": [], **op}
    if isinstance(out["text"], str):
        out["text"] = truncate(" ".join(out["text"].split()), MAX_MEMORY_CHARS) or None
    kind = out["memory_type"]
    if isinstance(kind, str):
        kind = kind.strip().lower()
        out["memory_type"] = kind if kind in MEMORY_TYPES else "fact"
    conf = out["confidence"]
    if isinstance(conf, int | float) and not isinstance(conf, bool):
        out["confidence"] = 0.5 if math.isnan(conf) else min(1.0, max(0.0, float(conf)))
    if isinstance(out["tags"], list):
        out["tags"] = _clean_labels(out["tags"], MAX_TAGS, MAX_TAG_CHARS)
    return {k: out[k] for k in ("op", "id", "text", "memory_type", "confidence", "tags")}


def parse_extraction(
    content: str | None,
    *,
    fallback_summary: str = "No durable information in this session.",
    max_memories: int = MAX_MEMORIES_PER_CALL,
) -> Extraction:
    """Parse a model's JSON reply into an ``Extraction``; raises ValueError/ValidationError when malformed."""
    if content is None or not content.strip():
        raise ValueError("empty response content")
    data = json.loads(content)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return Extraction.model_validate(
        _coerce_payload(data, fallback_summary=fallback_summary, max_memories=max_memories)
    )
