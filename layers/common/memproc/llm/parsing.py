"""Turning a model's JSON reply into a validated ``Extraction``.

Strict structured outputs cannot express string lengths, and compatible servers may ignore the
schema's bounds: harmless overshoots are repaired here rather than failing a whole session, while
structural errors still fail validation so the caller can ask again.
"""

from __future__ import annotations

import logging
import math
from typing import Any, get_args

from memproc.jsontext import loads
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
_MEMORY_TYPES = frozenset(MEMORY_TYPES)


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
    """Strip, lowercase, shorten and dedupe string labels; leave non-strings for validation to reject.
    A list is short (the schema allows 10 or 20), so a label is looked for in the list itself; past
    ``max_items`` nothing more is kept."""
    out: list[Any] = []
    for value in values:
        if len(out) == max_items:
            break
        if isinstance(value, str):
            # one word (most labels) has no white space to collapse: no character is both
            value = value.lower() if value.isalnum() else " ".join(value.split()).lower()
            if len(value) > max_chars:
                value = truncate(value, max_chars)
            if not value or value in out:
                continue
        out.append(value)
    return out


def _repair_kind_confidence_tags(item: dict[str, Any]) -> None:
    """What memories and operations share: a memory type outside the list is a fact, confidence is
    clamped to 0..1 (NaN: 0.5), tags are cleaned. A value already as it would become (the common
    case) is left in place."""
    kind = item.get("memory_type")
    if isinstance(kind, str) and kind not in _MEMORY_TYPES:
        kind = kind.strip().lower()
        item["memory_type"] = kind if kind in _MEMORY_TYPES else "fact"
    conf = item.get("confidence")
    if type(conf) is float and 0.0 < conf <= 1.0:
        pass  # (0 itself is not: -0.0 becomes 0.0)
    elif isinstance(conf, (int, float)) and not isinstance(conf, bool):
        item["confidence"] = 0.5 if math.isnan(conf) else min(1.0, max(0.0, float(conf)))
    tags = item.get("tags")
    if isinstance(tags, list):
        item["tags"] = _clean_labels(tags, MAX_TAGS, MAX_TAG_CHARS)


def _coerce_payload(data: dict[str, Any], *, fallback_summary: str, max_memories: int) -> dict[str, Any]:
    """Repair the harmless ways a model overshoots the schema instead of failing a whole session.

    Strict mode cannot express string lengths, and OpenAI-compatible servers may ignore the schema's
    bounds: clamp/truncate those (11 tags, confidence 1.2, a 1,100-char memory). Structural problems
    (missing fields, wrong types) are left for validation to reject as malformed output. ``data``
    (the reply's own parse) is repaired in place.
    """
    memories = data.get("memories")
    if isinstance(memories, list):
        cleaned: list[Any] = []
        for item in memories:
            if len(cleaned) == max_memories:
                break
            if isinstance(item, dict):
                text = item.get("text")
                if isinstance(text, str):
                    text = " ".join(text.split())
                    if not text:
                        continue
                    item["text"] = truncate(text, MAX_MEMORY_CHARS) if len(text) > MAX_MEMORY_CHARS else text
                _repair_kind_confidence_tags(item)
            cleaned.append(item)
        data["memories"] = cleaned
    summary = data.get("summary")
    if isinstance(summary, str):
        summary = summary.strip()
        data["summary"] = truncate(summary, MAX_SUMMARY_CHARS) if summary else fallback_summary
    topics = data.get("topics")
    if isinstance(topics, list):
        data["topics"] = _clean_labels(topics, MAX_TOPICS, MAX_TOPIC_CHARS)
    operations = data.get("operations")
    if operations is None:
        data["operations"] = []  # a model that was shown no memories may leave it out
    elif isinstance(operations, list):
        data["operations"] = [_coerce_operation(op) for op in operations if _usable_operation(op)]
    return data


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
    _repair_kind_confidence_tags(out)
    return {k: out[k] for k in ("op", "id", "text", "memory_type", "confidence", "tags")}


def parse_extraction(
    content: str | None,
    *,
    fallback_summary: str = "No durable information in this session.",
    max_memories: int = MAX_MEMORIES_PER_CALL,
) -> Extraction:
    """Parse a model's JSON reply into an ``Extraction``; raises ValueError/ValidationError when malformed."""
    if not content or content.isspace():  # not content.strip(), without copying the content
        raise ValueError("empty response content")
    data = loads(content)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return Extraction.model_validate(
        _coerce_payload(data, fallback_summary=fallback_summary, max_memories=max_memories)
    )
