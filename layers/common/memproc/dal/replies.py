"""Reading Redis replies whichever way a client decodes them (bytes, or str with decode_responses)."""

from __future__ import annotations

from typing import Any


def as_text(v: Any) -> str:
    """A reply element as text."""
    return v.decode() if isinstance(v, bytes) else str(v)
