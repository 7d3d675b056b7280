"""Relative dates ("yesterday", "next Friday", "3 days ago") made absolute against the session
timestamp, for the offline heuristics.

A memory is read long after its session, so "yesterday" must be stored as the date it meant.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBER_WORDS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "a couple of": 2,
    "a few": 3,
}
_NUM = r"(\d{1,3}|a|an|one|two|three|four|five|six|seven|eight|nine|ten|a couple of|a few)"
_BARE_DATE_AFTER = frozenset({"since", "until", "till", "by", "from", "before", "after", "on", "of", "than"})


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    return date(year, month + 1, 1)


def _number(word: str) -> int:
    word = " ".join(word.lower().split())
    return int(word) if word.isdigit() else _NUMBER_WORDS.get(word, 1)


def resolve_relative_dates(text: str, today: date) -> tuple[str, bool]:
    """Replace relative date phrases with absolute ones; returns (text, whether any date was resolved).

    "yesterday" → "on 2026-03-09", "next Friday" → the first Friday after ``today``, "last week" → "the
    week of <Monday>", "last month" → "in 2026-02", "3 days ago" → "on <date>".
    """
    found = False

    def dated(match: re.Match[str], value: str, *, prefix: str = "on") -> str:
        nonlocal found
        found = True
        before = match.string[: match.start()].split()
        if not prefix or (before and before[-1].lower().strip(",") in _BARE_DATE_AFTER):
            return value
        return f"{prefix} {value}"

    def monday(day: date) -> date:
        return day - timedelta(days=day.weekday())

    def weekday(m: re.Match[str]) -> str:
        which, name = m.group(1).lower(), m.group(2).lower()
        target = _WEEKDAYS.index(name)
        if which == "last":
            delta = -((today.weekday() - target) % 7 or 7)
        elif which == "this":
            delta = (target - today.weekday()) % 7
        else:  # next / coming
            delta = (target - today.weekday()) % 7 or 7
        return dated(m, (today + timedelta(days=delta)).isoformat())

    def ago(m: re.Match[str]) -> str:
        n, unit = _number(m.group(1)), m.group(2).lower()
        sign = -1 if m.group(3) else 1
        if unit == "day":
            return dated(m, (today + timedelta(days=sign * n)).isoformat())
        if unit == "week":
            return dated(m, (today + timedelta(weeks=sign * n)).isoformat(), prefix="around")
        if unit == "month":
            return dated(m, _add_months(today, sign * n).strftime("%Y-%m"), prefix="in")
        return dated(m, str(today.year + sign * n), prefix="in")

    def in_n(m: re.Match[str]) -> str:
        n, unit = _number(m.group(1)), m.group(2).lower()
        if unit == "day":
            return dated(m, (today + timedelta(days=n)).isoformat())
        if unit == "week":
            return dated(m, (today + timedelta(weeks=n)).isoformat(), prefix="around")
        if unit == "month":
            return dated(m, _add_months(today, n).strftime("%Y-%m"), prefix="in")
        return dated(m, str(today.year + n), prefix="in")

    def span(m: re.Match[str]) -> str:
        which, unit = m.group(1).lower(), m.group(2).lower()
        offset = {"last": -1, "this": 0, "next": 1, "coming": 1}[which]
        if unit == "week":
            return dated(m, monday(today + timedelta(weeks=offset)).isoformat(), prefix="the week of")
        if unit == "weekend":
            saturday = monday(today + timedelta(weeks=offset)) + timedelta(days=5)
            return dated(m, saturday.isoformat(), prefix="the weekend of")
        if unit == "month":
            return dated(m, _add_months(today, offset).strftime("%Y-%m"), prefix="in")
        return dated(m, str(today.year + offset), prefix="in")

    rules: list[tuple[str, Callable[[re.Match[str]], str]]] = [
        (r"\bthe day before yesterday\b", lambda m: dated(m, (today - timedelta(days=2)).isoformat())),
        (r"\bthe day after tomorrow\b", lambda m: dated(m, (today + timedelta(days=2)).isoformat())),
        (r"\byesterday\b", lambda m: dated(m, (today - timedelta(days=1)).isoformat())),
        (r"\btomorrow\b", lambda m: dated(m, (today + timedelta(days=1)).isoformat())),
        (r"\b(?:today|tonight|this (?:morning|afternoon|evening))\b", lambda m: dated(m, today.isoformat())),
        (rf"\b(last|next|this|coming)\s+({'|'.join(_WEEKDAYS)})\b", weekday),
        (rf"\b{_NUM}\s+(day|week|month|year)s?\s+(ago)\b", ago),
        (rf"\bin\s+{_NUM}\s+(day|week|month|year)s?\b", in_n),
        (r"\b(last|this|next|coming)\s+(week|weekend|month|year)\b", span),
    ]
    for pattern, repl in rules:
        text = re.sub(pattern, repl, text, flags=re.IGNORECASE)
    return text, found
