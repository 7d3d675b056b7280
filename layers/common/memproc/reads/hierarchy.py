"""GET hierarchy: memories, summaries and raw submissions, newest first, with cursor pagination.

Two round trips whatever the data's size: the index ranges of the page with the number of entries
matching the filters (ZCOUNT over the same date range: O(log N)), then the page's records. Index
entries whose record has expired are skipped on the page; the cursor still moves past them.
`limit` applies to each group; `category` narrows discrete memories through their category listing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass

from memproc.dal import reads
from memproc.dal.connection import Store
from memproc.errors import InvalidInput
from memproc.mappers import memory_view, raw_view, summary_view
from memproc.records import MemoryRecord
from memproc.schemas.requests import HierarchyQuery
from memproc.schemas.responses import (
    DiscreteMemory,
    HierarchyCounts,
    HierarchyFilters,
    HierarchyResponse,
    RawMemory,
    SessionSummary,
)
from memproc.timeutil import iso_datetime
from memproc.validation import require_vectorstore
from memproc.vectorstores import require_known

GROUPS: dict[str, tuple[str, ...]] = {
    "all": ("discrete", "summary", "raw"),
    "discrete": ("discrete",),
    "summary": ("summary",),
    "raw": ("raw",),
}
# Entries sharing one score (one commit's memories) that a page may step over; see Position.
MAX_TIED = 10_000

Rows = list[tuple[str, float]]


@dataclass(frozen=True)
class Position:
    """Where a group's page ended: the last index entry seen (score, member) and how many
    entries at that score were already passed (so the next page can step over ties)."""

    score: float
    member: str
    tied: int = 1


def _said_at(m: MemoryRecord) -> float:
    return m.valid_from or m.created_at or 0.0


def _filters_digest(vectorstore: str, q: HierarchyQuery) -> str:
    basis = json.dumps(
        [vectorstore, q.session_id, q.memory_type, q.category, q.min_score, q.max_score],
        separators=(",", ":"),
    )
    return hashlib.sha256(basis.encode()).hexdigest()[:16]


def encode_cursor(digest: str, positions: dict[str, Position | None]) -> str:
    body = {
        "v": 1,
        "f": digest,
        "p": {g: [repr(p.score), p.member, p.tied] if p else None for g, p in positions.items()},
    }
    return base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, digest: str) -> dict[str, Position | None]:
    """The positions a next_cursor holds; a group absent starts from the top, None is done."""
    bad = InvalidInput("cursor is not a next_cursor of this endpoint", code="invalid_cursor")
    try:
        body = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(body, dict) or body.get("v") != 1 or not isinstance(body.get("p"), dict):
            raise bad
        positions: dict[str, Position | None] = {}
        for group, p in body["p"].items():
            if group not in GROUPS["all"]:
                raise bad
            if p is None:
                positions[group] = None
                continue
            pos = Position(float(p[0]), str(p[1]), int(p[2]))
            # A cursor is client input: an absurd position must not turn into a huge range read.
            if not math.isfinite(pos.score) or not 0 <= pos.tied <= MAX_TIED or len(pos.member) > 300:
                raise bad
            positions[group] = pos
    except (ValueError, TypeError, IndexError, KeyError, AttributeError):
        raise bad from None
    if body.get("f") != digest:
        raise InvalidInput(
            "cursor belongs to a query with other filters (session_id, memory_type, category, start_date, "
            "end_date)",
            code="invalid_cursor",
        )
    return positions


def _after(rows: Rows, pos: Position | None) -> Rows:
    """Rows (newest first) strictly after a position."""
    if pos is None:
        return rows
    return [(m, s) for m, s in rows if s < pos.score or (s == pos.score and m < pos.member)]


def _page(rows: Rows, pos: Position | None, limit: int) -> tuple[Rows, Position | None]:
    """The next `limit` rows after `pos` and the position to continue from (None: done)."""
    rows = _after(rows, pos)
    page = rows[:limit]
    if len(rows) <= limit or not page:
        return page, None
    last_member, last_score = page[-1]
    tied = sum(1 for _, s in page if s == last_score)
    if pos is not None and pos.score == last_score:
        tied += pos.tied
    return page, Position(last_score, last_member, min(tied, MAX_TIED))


def _in_range(score: float | None, q: HierarchyQuery) -> bool:
    return (
        score is not None
        and (q.min_score is None or score >= q.min_score)
        and (q.max_score is None or score <= q.max_score)
    )


def _newest(key: str, q: HierarchyQuery, pos: Position | None) -> reads.Newest:
    """Newest-first index entries within the date range, from a position on (ties included, stepped
    over by _after)."""
    top = pos.score if pos is not None else q.max_score
    extra = pos.tied if pos is not None else 0
    return reads.Newest(key, top, q.min_score, q.limit + 1 + extra)


def hierarchy(store: Store, vectorstore: str, q: HierarchyQuery) -> HierarchyResponse:
    """Memories, summaries and raw submissions, newest first, each group capped by `limit`."""
    vk = require_vectorstore(vectorstore)
    groups = GROUPS[q.memory_type]
    digest = _filters_digest(vectorstore, q)
    positions: dict[str, Position | None] = decode_cursor(q.cursor, digest) if q.cursor else {}
    wanted = [g for g in groups if not (g in positions and positions[g] is None)]
    sid = q.session_id

    memories = vk.category_index(q.category) if q.category else vk.memory_index
    # First round trip: the index entries of this page, and how many match in each group (a
    # session's memories and summary are counted from what the page reads anyway).
    plan: dict[str, reads.IndexRead] = {}
    for g in wanted:
        pos = positions.get(g)
        if g == "discrete":
            plan[g] = reads.Members(vk.session_memories(sid)) if sid else _newest(memories, q, pos)
        elif g == "summary":
            plan[g] = reads.Summary(sid) if sid else _newest(vk.session_index, q, pos)
        else:
            plan[g] = _newest(vk.session_raws(sid) if sid else vk.raw_index, q, pos)
    indexed = {"discrete": memories, "summary": vk.session_index, "raw": vk.raw_index}
    if sid:
        indexed = {"raw": vk.session_raws(sid)}
        # A session's group already paged to its end is still read: it is counted from its records.
        if "discrete" in groups:
            plan.setdefault("discrete", reads.Members(vk.session_memories(sid)))
        if "summary" in groups:
            plan.setdefault("summary", reads.Summary(sid))
    for g in groups:
        if g in indexed:
            plan[f"count:{g}"] = reads.Count(indexed[g], q.max_score, q.min_score)
    first = reads.index_entries(store, vk, plan)

    # Second round trip: the records behind the entries on this page.
    next_pos: dict[str, Position | None] = {g: None for g in groups}
    fetch: dict[str, list[str]] = {}
    for g in ("discrete", "summary", "raw"):
        if g not in first or (g == "summary" and sid):
            continue
        if g == "discrete" and sid:
            fetch[g] = sorted(first[g])
        else:
            page, next_pos[g] = _page(first[g], positions.get(g), q.limit)
            fetch[g] = [m for m, _ in page]
    found = reads.records(
        store,
        vk,
        memory_ids=fetch.get("discrete", []),
        session_ids=fetch.get("summary", []),
        raw_ids=fetch.get("raw", []),
    )

    totals = {g: int(first[f"count:{g}"]) for g in groups if f"count:{g}" in first}
    discrete: list[DiscreteMemory] = []
    if "discrete" in fetch:
        ids = [mid for mid in fetch["discrete"] if mid in found.memories]  # skip erased ones
        if sid:  # a session's memories come from its set: filter, order, count and page them here,
            # by the time the memory index orders by (when it was said)
            rows = [
                (mid, _said_at(found.memories[mid]))
                for mid in ids
                if q.category is None or found.memories[mid].memory_type == q.category
            ]
            rows = [row for row in rows if _in_range(row[1], q)]
            rows.sort(key=lambda row: (row[1], row[0]), reverse=True)
            totals["discrete"] = len(rows)
            done = "discrete" in positions and positions["discrete"] is None  # counted, not listed
            page, pos = _page(rows, positions.get("discrete"), q.limit)
            next_pos["discrete"] = None if done else pos
            ids = [] if done else [mid for mid, _ in page]
        discrete = [memory_view(found.memories[mid]) for mid in ids]
    summaries: list[SessionSummary] = []
    summary = first.get("summary") if sid else None
    if summary is not None and _in_range(summary.updated_at, q):
        totals["summary"] = 1
        if not ("summary" in positions and positions["summary"] is None):
            summaries.append(summary_view(summary))
    summaries += [summary_view(s) for s in found.summaries]
    raws: list[RawMemory] = [raw_view(r) for r in found.raws]

    counts = HierarchyCounts(discrete=len(discrete), summary=len(summaries), raw=len(raws))
    if not (discrete or summaries or raws or q.cursor):
        require_known(store, vk)
    more = any(p is not None for p in next_pos.values())
    return HierarchyResponse(
        vectorstore_name=vectorstore,
        filters=HierarchyFilters(
            session_id=sid,
            memory_type=q.memory_type,
            category=q.category,
            start_date=iso_datetime(q.start_date),
            end_date=iso_datetime(q.end_date),
            limit=q.limit,
        ),
        discrete_memories=discrete,
        session_summaries=summaries,
        raw_memories=raws,
        total_count=sum(totals.values()),
        totals=HierarchyCounts(**totals),
        counts=counts,
        next_cursor=encode_cursor(digest, next_pos) if more else None,
    )
