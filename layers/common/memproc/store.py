"""Reads of the memory hierarchy: raw submissions, sessions, memories."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from array import array
from dataclasses import dataclass
from typing import Any

import redis

from memproc.connection import fcall_ro
from memproc.errors import Conflict, InvalidInput, NotFound, Unavailable
from memproc.models import (
    DailyStats,
    DeadLettersResponse,
    DiscreteMemory,
    EmbeddingConfig,
    HierarchyCounts,
    HierarchyFilters,
    HierarchyQuery,
    HierarchyResponse,
    RawMemoryInfo,
    RawMemoryStatus,
    RawStatusCounts,
    RetryResponse,
    SearchFilters,
    SearchQuery,
    SearchResponse,
    SearchResult,
    SessionDetails,
    SessionRawMemory,
    SessionSummary,
    StatsCounts,
    StatsResponse,
    StorageStats,
    TokenUsage,
)
from memproc.queue import (
    decode_transcript,
    iso,
    redrive,
    require_raw_id,
    require_session_id,
    require_vectorstore,
)
from memproc.settings import Settings

_STATUS_FIELDS = (
    "raw_memory_id",
    "session_id",
    "status",
    "created_at",
    "processing_attempts",
    "last_error",
    "next_attempt_at",
    "processed_at",
    "session_length",
    "metadata",
    "memories_created",
    "memories_merged",
    "memory_ids",
    "tokens_in",
    "tokens_out",
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
        raise NotFound(
            f"no raw memory {raw_id!r} in vectorstore {vectorstore!r}", code="raw_memory_not_found"
        )
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


# ---------------------------------------------------------------------------------------------
# Hierarchy, session details, statistics, search and dead letters.
#
# Every read is a constant number of round trips (pipelines, or one FCALL_RO) whose commands
# touch only this vectorstore's indexes: cost is O(log N + results), whatever else Redis holds.
# ---------------------------------------------------------------------------------------------

_RAW_FIELDS = (
    "raw_memory_id",
    "session_id",
    "status",
    "created_at",
    "session_length",
    "metadata",
    "processing_attempts",
    "last_error",
    "next_attempt_at",
    "processed_at",
    "dead_at",
    "redrive_count",
    "memories_created",
    "memories_merged",
    "memory_ids",
    "tokens_in",
    "tokens_out",
    "processing_ms",
    "extraction_mode",
)
_TRANSCRIPT_FIELDS = ("session_data", "session_data_encoding")
_GROUPS: dict[str, tuple[str, ...]] = {
    "all": ("discrete", "summary", "raw"),
    "discrete": ("discrete",),
    "summary": ("summary",),
    "raw": ("raw",),
}
SESSION_RAW_LIMIT = 100
# Entries sharing one score (one commit's memories) that a page may step over; see Position.
MAX_TIED = 10_000
STATS_DAYS = 7
STATS_SAMPLES = 5


def json_list(value: Any) -> list[Any]:
    """JSON lists as stored; Lua's cjson writes an empty list as {}."""
    return value if isinstance(value, list) else []


def _float(v: Any) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _text(v: Any) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


def _expiry(v: Any) -> str | None:
    return iso(v) if isinstance(v, int) and v > 0 else None


def _score(v: float | None, default: str) -> str:
    return default if v is None else repr(float(v))


def memory_from_attrs(memory_id: str, attrs: dict[str, Any]) -> DiscreteMemory:
    return DiscreteMemory(
        memory_id=memory_id,
        text=str(attrs.get("text") or ""),
        memory_type=attrs.get("memory_type"),
        confidence=_float(attrs.get("confidence")),
        tags=[str(t) for t in json_list(attrs.get("tags"))],
        session_id=attrs.get("session_id"),
        raw_memory_id=attrs.get("raw_memory_id") or None,
        source_sessions=[str(s) for s in json_list(attrs.get("source_sessions"))],
        merge_count=int(attrs.get("merge_count") or 0),
        created_at=iso(_float(attrs.get("created_at"))),
        updated_at=iso(_float(attrs.get("updated_at"))),
    )


def summary_from_json(session_id: str, data: dict[str, Any], expires: Any = None) -> SessionSummary:
    return SessionSummary(
        session_id=session_id,
        summary=data.get("summary"),
        topics=[str(t) for t in json_list(data.get("topics"))],
        memory_ids=[str(m) for m in json_list(data.get("memory_ids"))],
        memory_count=int(data.get("memory_count") or 0),
        raw_memory_ids=[str(m) for m in json_list(data.get("raw_memory_ids"))],
        created_at=iso(_float(data.get("created_at"))),
        updated_at=iso(_float(data.get("updated_at"))),
        processed_length=_int(data.get("processed_length")),
        tokens_in=int(data.get("tokens_in") or 0),
        tokens_out=int(data.get("tokens_out") or 0),
        expires_at=_expiry(expires),
    )


def raw_from_hash(raw_id: str, h: dict[str, Any], expires: Any = None) -> RawMemoryInfo:
    """A raw record's fields (HMGET of _RAW_FIELDS) as the API shows them."""
    metadata = _json(h.get("metadata"))
    memory_ids = _json(h.get("memory_ids"))
    return RawMemoryInfo(
        raw_memory_id=raw_id,
        session_id=h.get("session_id"),
        status=h["status"],
        created_at=iso(h.get("created_at")),
        session_length=int(h.get("session_length") or 0),
        metadata=metadata if isinstance(metadata, dict) else None,
        processing_attempts=int(h.get("processing_attempts") or 0),
        last_error=h.get("last_error") or None,
        next_attempt_at=iso(h.get("next_attempt_at")) if h["status"] == "queued" else None,
        processed_at=iso(h.get("processed_at")),
        dead_at=iso(h.get("dead_at")) if h["status"] == "error" else None,
        redrive_count=int(h.get("redrive_count") or 0),
        memories_created=_int(h.get("memories_created")),
        memories_merged=_int(h.get("memories_merged")),
        memory_ids=[str(m) for m in json_list(memory_ids)] if h.get("memory_ids") else None,
        tokens_in=_int(h.get("tokens_in")),
        tokens_out=_int(h.get("tokens_out")),
        processing_ms=_int(h.get("processing_ms")),
        extraction_mode=h.get("extraction_mode"),
        expires_at=_expiry(expires),
    )


# -- cursor pagination ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Position:
    """Where a group's page ended: the last index entry seen (score, member) and how many
    entries at that score were already passed (so the next page can step over ties)."""

    score: float
    member: str
    tied: int = 1


def _filters_digest(vectorstore: str, q: HierarchyQuery) -> str:
    basis = json.dumps(
        [vectorstore, q.session_id, q.memory_type, q.min_score, q.max_score], separators=(",", ":")
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
            if group not in _GROUPS["all"]:
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
            "cursor belongs to a query with other filters (session_id, memory_type, start_date, end_date)",
            code="invalid_cursor",
        )
    return positions


def _after(rows: list[tuple[str, float]], pos: Position | None) -> list[tuple[str, float]]:
    """Rows (newest first) strictly after a position."""
    if pos is None:
        return rows
    return [(m, s) for m, s in rows if s < pos.score or (s == pos.score and m < pos.member)]


def _page(
    rows: list[tuple[str, float]], pos: Position | None, limit: int
) -> tuple[list[tuple[str, float]], Position | None]:
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


def _zrange_desc(pipe: Any, key: str, q: HierarchyQuery, pos: Position | None, limit: int) -> None:
    """Newest-first index entries within the date range, from a position on (ties included,
    stepped over by _after)."""
    top = pos.score if pos is not None else q.max_score
    extra = pos.tied if pos is not None else 0
    pipe.zrange(
        key,
        _score(top, "+inf"),
        _score(q.min_score, "-inf"),
        desc=True,
        byscore=True,
        offset=0,
        num=limit + 1 + extra,
        withscores=True,
    )


def hierarchy(r: redis.Redis, vectorstore: str, q: HierarchyQuery) -> HierarchyResponse:
    """Memories, summaries and raw submissions, newest first, each group capped by `limit`.

    Two round trips: the index ranges, then the records. Index entries whose record has expired
    are skipped (and not counted); the cursor still moves past them.
    """
    vk = require_vectorstore(vectorstore)
    groups = _GROUPS[q.memory_type]
    digest = _filters_digest(vectorstore, q)
    positions: dict[str, Position | None] = decode_cursor(q.cursor, digest) if q.cursor else {}
    wanted = [g for g in groups if not (g in positions and positions[g] is None)]
    sid = q.session_id

    pipe = r.pipeline(transaction=False)
    plan: list[str] = []  # what each pipelined reply is
    for g in wanted:
        pos = positions.get(g)
        if g == "discrete" and sid:
            pipe.smembers(vk.session_memories(sid))
        elif g == "discrete":
            _zrange_desc(pipe, vk.memory_index, q, pos, q.limit)
        elif g == "summary" and sid:
            pipe.get(vk.session_summary(sid))
            pipe.expiretime(vk.session_summary(sid))
            plan += ["summary", "summary_ttl"]
            continue
        elif g == "summary":
            _zrange_desc(pipe, vk.session_index, q, pos, q.limit)
        else:
            _zrange_desc(pipe, vk.session_raws(sid) if sid else vk.raw_index, q, pos, q.limit)
        plan.append(g)
    first = dict(zip(plan, pipe.execute(), strict=True)) if plan else {}

    # Second round trip: the records behind the index entries on this page.
    pipe = r.pipeline(transaction=False)
    fetch: dict[str, list[str]] = {}
    next_pos: dict[str, Position | None] = {g: None for g in groups}
    if "discrete" in first:
        if sid:
            fetch["discrete"] = sorted(first["discrete"])
        else:
            page, next_pos["discrete"] = _page(first["discrete"], positions.get("discrete"), q.limit)
            fetch["discrete"] = [m for m, _ in page]
        for mid in fetch["discrete"]:
            pipe.execute_command("VGETATTR", vk.vectorset, mid)
    if "summary" in first and not sid:
        page, next_pos["summary"] = _page(first["summary"], positions.get("summary"), q.limit)
        fetch["summary"] = [m for m, _ in page]
        for s in fetch["summary"]:
            pipe.get(vk.session_summary(s))
            pipe.expiretime(vk.session_summary(s))
    if "raw" in first:
        page, next_pos["raw"] = _page(first["raw"], positions.get("raw"), q.limit)
        fetch["raw"] = [m for m, _ in page]
        for rid in fetch["raw"]:
            pipe.hmget(vk.raw(rid), _RAW_FIELDS)
            pipe.expiretime(vk.raw(rid))
    results = iter(pipe.execute() if len(pipe) else [])

    discrete: list[DiscreteMemory] = []
    if "discrete" in fetch:
        found = {mid: _json(next(results)) for mid in fetch["discrete"]}
        attrs = {mid: a for mid, a in found.items() if isinstance(a, dict)}  # skip erased ones
        ids = [mid for mid in fetch["discrete"] if mid in attrs]
        if sid:  # a session's memories come from its set: order, filter and page them here
            rows = [(mid, _float(a.get("created_at")) or 0.0) for mid, a in attrs.items()]
            rows = [row for row in rows if _in_range(row[1], q)]
            rows.sort(key=lambda row: (row[1], row[0]), reverse=True)
            page, next_pos["discrete"] = _page(rows, positions.get("discrete"), q.limit)
            ids = [mid for mid, _ in page]
        discrete = [memory_from_attrs(mid, attrs[mid]) for mid in ids]
    summaries: list[SessionSummary] = []
    if sid and "summary" in first:
        data = _json(first["summary"])
        if isinstance(data, dict) and _in_range(_float(data.get("updated_at")), q):
            summaries.append(summary_from_json(sid, data, first["summary_ttl"]))
    for s in fetch.get("summary", []):
        data, ttl = _json(next(results)), next(results)
        if isinstance(data, dict):
            summaries.append(summary_from_json(s, data, ttl))
    raws: list[RawMemoryInfo] = []
    for rid in fetch.get("raw", []):
        values, ttl = next(results), next(results)
        h = dict(zip(_RAW_FIELDS, values, strict=True))
        if h["status"]:
            raws.append(raw_from_hash(rid, h, ttl))

    counts = HierarchyCounts(discrete=len(discrete), summary=len(summaries), raw=len(raws))
    more = any(p is not None for p in next_pos.values())
    return HierarchyResponse(
        vectorstore_name=vectorstore,
        filters=HierarchyFilters(
            session_id=sid,
            memory_type=q.memory_type,
            start_date=iso(q.min_score),
            end_date=iso(q.max_score),
            limit=q.limit,
        ),
        discrete_memories=discrete,
        session_summaries=summaries,
        raw_memories=raws,
        total_count=counts.discrete + counts.summary + counts.raw,
        counts=counts,
        next_cursor=encode_cursor(digest, next_pos) if more else None,
    )


def session_details(
    r: redis.Redis, rb: redis.Redis, vectorstore: str, session_id: str, *, include_transcript: bool = False
) -> SessionDetails:
    """One session's summary, memories and submissions in two round trips (the second on the
    binary client, which reads transcripts that may be stored compressed)."""
    vk = require_vectorstore(vectorstore)
    sid = require_session_id(session_id)
    pipe = r.pipeline(transaction=False)
    pipe.get(vk.session_summary(sid))
    pipe.expiretime(vk.session_summary(sid))
    pipe.smembers(vk.session_memories(sid))
    pipe.zrange(vk.session_raws(sid), 0, SESSION_RAW_LIMIT - 1, desc=True)
    pipe.zcard(vk.session_raws(sid))
    summary_text, summary_ttl, member_ids, raw_ids, raw_total = pipe.execute()
    data = _json(summary_text)
    data = data if isinstance(data, dict) else None
    memory_ids = sorted(set(member_ids) | set(json_list(data.get("memory_ids")) if data else set()))
    if data is None and not memory_ids and not raw_total:
        raise NotFound(f"no session {sid!r} in vectorstore {vectorstore!r}", code="session_not_found")

    fields = _RAW_FIELDS + (_TRANSCRIPT_FIELDS if include_transcript else ())
    pipe = rb.pipeline(transaction=False)
    for mid in memory_ids:
        pipe.execute_command("VGETATTR", vk.vectorset, mid)
    for rid in raw_ids:
        pipe.hmget(vk.raw(rid), fields)
        pipe.expiretime(vk.raw(rid))
    results = iter(pipe.execute() if len(pipe) else [])
    memories = []
    for mid in memory_ids:
        attrs = _json(_text(next(results)))
        if isinstance(attrs, dict):
            memories.append(memory_from_attrs(mid, attrs))
    memories.sort(key=lambda m: (m.created_at or "", m.memory_id), reverse=True)
    raws: list[SessionRawMemory] = []
    for rid in raw_ids:
        values, ttl = next(results), next(results)
        h = dict(zip(fields, values, strict=True))
        if not h["status"]:
            continue  # expired since it was indexed
        transcript = None
        if include_transcript and h["session_data"] is not None:
            transcript = decode_transcript(h["session_data"], (_text(h["session_data_encoding"]) or ""))
        text = {k: _text(h[k]) for k in _RAW_FIELDS}
        raws.append(SessionRawMemory(**raw_from_hash(rid, text, ttl).model_dump(), session_data=transcript))
    summary = summary_from_json(sid, data, summary_ttl) if data else None
    if summary:
        usage = TokenUsage(tokens_in=summary.tokens_in, tokens_out=summary.tokens_out)
    else:
        usage = TokenUsage(
            tokens_in=sum(x.tokens_in or 0 for x in raws), tokens_out=sum(x.tokens_out or 0 for x in raws)
        )
    usage.total_tokens = usage.tokens_in + usage.tokens_out
    statuses = {x.status for x in raws}
    status = (
        "pending" if statuses & {"queued", "processing"} else "error" if "error" in statuses else "processed"
    )
    return SessionDetails(
        vectorstore_name=vectorstore,
        session_id=sid,
        status=status,
        summary=summary,
        memories=memories,
        memory_count=len(memories),
        raw_memories=raws,
        raw_memory_count=int(raw_total),
        token_usage=usage,
    )


def _pairs(flat: Any) -> dict[str, str]:
    """HGETALL as Lua returns it (a flat list; cjson writes an empty one as {})."""
    items = json_list(flat)
    return dict(zip(items[::2], items[1::2], strict=False))


def _day(date: str, h: dict[str, str]) -> DailyStats:
    processed, dead = int(h.get("processed_count", 0)), int(h.get("dead_count", 0))
    ms = int(h.get("processing_ms", 0))
    return DailyStats(
        date=date,
        processed=processed,
        errors=int(h.get("error_count", 0)),
        dead=dead,
        memories_created=int(h.get("memories_created", 0)),
        memories_merged=int(h.get("memories_merged", 0)),
        tokens_in=int(h.get("tokens_in", 0)),
        tokens_out=int(h.get("tokens_out", 0)),
        mean_processing_ms=round(ms / processed, 1) if processed else None,
        extraction_success_rate=round(processed / (processed + dead), 4) if processed + dead else None,
        last_processed_at=iso(h.get("last_processed_at")),
    )


def stats(r: redis.Redis, vectorstore: str) -> StatsResponse:
    """Counts, storage and the last 7 days' processing figures in one read-only call.

    Every figure is O(1) or O(days): cardinalities of the indexes, counters, MEMORY USAGE of a
    fixed set of keys, and estimates for raw memories and summaries from a few newest samples.
    """
    vk = require_vectorstore(vectorstore)
    s = json.loads(fcall_ro(r, "stats", [], [vectorstore, STATS_DAYS, STATS_SAMPLES]))
    pending, in_flight, dead, indexed = (
        int(s["pending"]),
        int(s["in_flight"]),
        int(s["dead"]),
        int(s["raw_index"]),
    )
    counters, config = _pairs(s["counters"]), _pairs(s["config"])
    days = [(d, _pairs(h)) for d, h in json_list(s["daily"])]
    daily = [_day(d, h) for d, h in days]
    totals: dict[str, str] = {}
    for _, h in days:
        for field, value in h.items():
            if field != "last_processed_at":
                totals[field] = str(int(totals.get(field, 0)) + int(value))
    last = max((d.last_processed_at for d in daily if d.last_processed_at), default=None)
    week = _day(f"{daily[0].date}..{daily[-1].date}", totals).model_copy(update={"last_processed_at": last})

    def estimate(sample: Any, count: int) -> int:
        total, n = [*json_list(sample), 0, 0][:2]
        return int(total / n * count) if n else 0

    sessions = int(s["sessions"])
    storage = {
        "vector_set_bytes": int(s["vector_set_bytes"]),
        "index_bytes": sum(int(v) for v in (s["index_bytes"] or {}).values()),
        "raw_memories_bytes": estimate(s["raw_sample"], indexed),
        "session_summaries_bytes": estimate(s["summary_sample"], sessions),
    }
    return StatsResponse(
        vectorstore_name=vk.name,
        generated_at=iso(s["now"]) or "",
        counts=StatsCounts(
            memories=int(s["memories"]),
            sessions=sessions,
            raw_memories=RawStatusCounts(
                queued=pending,
                processing=in_flight,
                error=dead,
                processed=max(0, indexed - pending - in_flight - dead),
                indexed=indexed,
            ),
            received_total=int(counters.get("received", 0)),
            processed_total=int(counters.get("processed", 0)),
        ),
        storage=StorageStats(**storage, total_bytes=sum(storage.values())),
        daily=daily,
        last_7_days=week,
        embedding=EmbeddingConfig(
            model=config.get("embedding_model"), dimensions=_int(config.get("dimensions"))
        )
        if config
        else None,
    )


# -- search ----------------------------------------------------------------------------------------

_provider: tuple[Settings, Any] | None = None


def embedding_provider(settings: Settings) -> Any:
    """The configured LLM provider for query embeddings, built once per process (the OpenAI
    client keeps its connection pool across warm invocations). Imported lazily: only /search
    needs it."""
    global _provider
    if _provider is None or _provider[0] is not settings:
        from memproc.llm import make_provider

        _provider = (settings, make_provider(settings))
    return _provider[1]


def vsim_filter(q: SearchQuery) -> str | None:
    """The vector-set FILTER expression, built only from validated, typed values: the memory
    type from a closed set and the session id (checked against SESSION_ID_RE, so it holds no
    quote or backslash) as JSON string literals, dates as numbers. No user text is interpolated."""
    parts: list[str] = []
    if q.memory_type is not None:
        parts.append(f".memory_type == {json.dumps(q.memory_type)}")
    if q.session_id is not None:
        parts.append(f"{json.dumps(require_session_id(q.session_id))} in .source_sessions")
    if q.min_score is not None:
        parts.append(f".created_at >= {q.min_score:.6f}")
    if q.max_score is not None:
        parts.append(f".created_at <= {q.max_score:.6f}")
    return " and ".join(parts) or None


def search(
    r: redis.Redis, settings: Settings, vectorstore: str, q: SearchQuery, provider: Any = None
) -> SearchResponse:
    """Semantic search over discrete memories: embed the query, VSIM with an in-Redis FILTER.

    Round trips: the vectorstore's state (config, size, queue), VSIM, the results' attributes.
    """
    vk = require_vectorstore(vectorstore)
    pipe = r.pipeline(transaction=False)
    pipe.hmget(vk.config, ["embedding_model", "dimensions"])
    pipe.execute_command("VCARD", vk.vectorset)
    pipe.zcard(vk.pending)
    pipe.zcard(vk.inflight)
    if q.session_id:
        pipe.zintercard(2, [vk.session_raws(q.session_id), vk.pending])
        pipe.zintercard(2, [vk.session_raws(q.session_id), vk.inflight])
    state = pipe.execute()
    (model, dims), size, pending, inflight = state[:4]
    session_pending = bool(state[4] or state[5]) if q.session_id else None
    waiting = int(pending) + int(inflight)
    filters = SearchFilters(
        session_id=q.session_id,
        memory_type=q.memory_type,
        start_date=iso(q.min_score),
        end_date=iso(q.max_score),
    )

    def respond(results: list[SearchResult]) -> SearchResponse:
        note = None
        if not results and session_pending:
            note = (
                f"session {q.session_id!r} has submissions queued or being processed; their memories "
                "become searchable once processed"
            )
        elif not results and waiting and not q.session_id:
            note = (
                f"{waiting} submission(s) of this vectorstore are queued or being processed; their "
                "memories become searchable once processed"
            )
        return SearchResponse(
            vectorstore_name=vectorstore,
            query=q.q,
            k=q.k,
            filters=filters,
            results=results,
            count=len(results),
            pending_sessions=waiting,
            session_pending=session_pending,
            note=note,
        )

    if not int(size):
        return respond([])  # nothing to search yet: no embedding call either
    provider = provider or embedding_provider(settings)
    if dims and (int(dims) != provider.dimensions or model != provider.embedding_model):
        raise Conflict(
            f"vectorstore {vectorstore!r} holds {dims}-dimension vectors from embedding model {model!r}, but "
            f"this deployment embeds queries with {provider.embedding_model!r} ({provider.dimensions} "
            "dimensions); set EMBEDDING_MODEL/EMBEDDING_DIMENSIONS to match",
            code="embedding_mismatch",
        )
    from memproc.llm import LLMError

    try:
        vectors, _ = provider.embed([q.q])
    except LLMError as exc:
        headers = {"Retry-After": str(max(1, int(exc.retry_after)))} if exc.retry_after else None
        raise Unavailable(
            f"the embedding service failed: {exc}", code="embedding_unavailable", headers=headers
        ) from None
    blob = array("f", vectors[0]).tobytes()
    args: list[Any] = ["VSIM", vk.vectorset, "FP32", blob, "COUNT", q.k, "WITHSCORES"]
    expr = vsim_filter(q)
    if expr:
        args += ["FILTER", expr]
    try:
        flat = r.execute_command(*args) or []
    except redis.ResponseError as exc:
        if "dimension" in str(exc).lower():
            raise Conflict(
                f"query vector does not fit vectorstore {vectorstore!r}: {exc}", code="embedding_mismatch"
            ) from None
        raise
    # redis-py parses VSIM ... WITHSCORES into {id: score}; a raw reply is [id, score, ...].
    pairs = list(flat.items()) if isinstance(flat, dict) else list(zip(flat[::2], flat[1::2], strict=True))
    hits = sorted(((_text(m) or "", float(s)) for m, s in pairs), key=lambda h: h[1], reverse=True)
    pipe = r.pipeline(transaction=False)
    for mid, _ in hits:
        pipe.execute_command("VGETATTR", vk.vectorset, mid)
    attrs = pipe.execute() if hits else []
    results = []
    for (mid, score), text in zip(hits, attrs, strict=True):
        a = _json(text)
        if not isinstance(a, dict):
            continue  # removed between the two calls
        m = memory_from_attrs(mid, a)
        results.append(
            SearchResult(
                memory_id=mid,
                text=m.text,
                memory_type=m.memory_type,
                session_id=m.session_id,
                source_sessions=m.source_sessions,
                tags=m.tags,
                created_at=m.created_at,
                similarity=round(2 * score - 1, 6),
                score=round(score, 6),
            )
        )
    return respond(results)


# -- dead letters ----------------------------------------------------------------------------------


def dead_letters(r: redis.Redis, vectorstore: str, limit: int) -> DeadLettersResponse:
    """Newest dead-lettered submissions first, with why they died (two round trips)."""
    vk = require_vectorstore(vectorstore)
    pipe = r.pipeline(transaction=False)
    pipe.zrange(vk.dead, 0, limit - 1, desc=True)
    pipe.zcard(vk.dead)
    ids, total = pipe.execute()
    pipe = r.pipeline(transaction=False)
    for rid in ids:
        pipe.hmget(vk.raw(rid), _RAW_FIELDS)
    rows = pipe.execute() if ids else []
    items = []
    for rid, values in zip(ids, rows, strict=True):
        h = dict(zip(_RAW_FIELDS, values, strict=True))
        if h["status"]:
            items.append(raw_from_hash(rid, h))
    return DeadLettersResponse(vectorstore_name=vectorstore, total=int(total), dead_letters=items)


def retry_dead_letter(r: redis.Redis, vectorstore: str, raw_id: str) -> RetryResponse:
    """Redrive one dead-lettered submission with a fresh attempt budget."""
    require_vectorstore(vectorstore)
    require_raw_id(raw_id)
    outcome, detail = redrive(r, vectorstore, raw_id)
    if outcome == "queued":
        return RetryResponse(vectorstore_name=vectorstore, raw_memory_id=raw_id, pending=int(detail))
    if not detail:
        raise NotFound(
            f"no raw memory {raw_id!r} in vectorstore {vectorstore!r}", code="raw_memory_not_found"
        )
    raise Conflict(
        f"raw memory {raw_id!r} is {detail}, not dead-lettered; only dead letters can be retried",
        code="not_dead",
        details={"status": detail},
    )
