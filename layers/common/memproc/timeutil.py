"""Times as memproc stores and shows them: epoch seconds in Redis (server time), ISO 8601 UTC outside.

One parser for every time a client gives us (query parameters, `metadata.session_timestamp`), so
they all accept the same forms: ISO 8601 with or without a zone (naive means UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

SESSION_TIME_FIELDS = ("session_timestamp", "timestamp", "session_date")


def iso(epoch: float | str | None) -> str | None:
    """Epoch seconds (as stored in Redis) to ISO 8601 UTC with a Z."""
    if epoch in (None, ""):
        return None
    return iso_datetime(datetime.fromtimestamp(float(epoch), UTC))


def iso_datetime(moment: datetime | None) -> str | None:
    """An aware datetime as ISO 8601 UTC with a Z (exact: no round trip through a float)."""
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str, *, end_of_day: bool = False) -> datetime:
    """ISO 8601 to an aware datetime in the zone it was given in (naive means UTC); ValueError says
    what is wrong. A bare date with ``end_of_day`` is the last instant of that day."""
    text = text.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text[:64]!r} is not an ISO 8601 date or date-time (e.g. 2026-03-10T12:00:00Z)"
        ) from None
    if end_of_day and len(text) <= 10 and "T" not in text:
        moment = datetime.combine(moment.date(), time.max)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def parse_instant(text: str, *, end_of_day: bool = False) -> datetime:
    """`parse_time` in UTC: a bare date is the whole day (midnight for a start, the last instant for
    an end, so ``end_date=2026-03-10`` includes the 10th)."""
    moment = parse_time(text, end_of_day=end_of_day)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text.strip()[:64]!r} is outside the years 1 to 9999 in UTC") from None


def session_time(metadata: dict[str, Any], created_at: float) -> datetime:
    """When the conversation happened, in the user's own zone (their "yesterday" is what counts): the
    first metadata time that parses, else when it was stored."""
    for name in SESSION_TIME_FIELDS:
        value = metadata.get(name)
        if isinstance(value, str):
            try:
                return parse_time(value)
            except ValueError:
                continue
    return datetime.fromtimestamp(created_at, UTC)
