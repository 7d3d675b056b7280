"""Stored record shapes and the domain's vocabulary: what memproc keeps in Redis, as data."""

from __future__ import annotations

from typing import Literal, get_args

RawStatus = Literal["queued", "processing", "processed", "error"]

MemoryType = Literal["fact", "preference", "insight", "event", "goal", "relationship"]
MEMORY_TYPES: tuple[str, ...] = get_args(MemoryType)
