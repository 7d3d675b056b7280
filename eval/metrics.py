"""The figures of a run, from what its cases left behind (see eval/README.md, "Metrics").

Memories come from the hierarchy API with their ``status`` (current, superseded, retracted) and
``history`` (restatements a confirm kept, texts an update replaced, a retraction). A text
*survives* when it is some memory's text, whatever its status, or in some memory's history.
The budget case (kind ``budget``) is measured apart: it is not in the quality figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from eval.harness import CaseRun

QUALITY_KINDS = ("paraphrase", "near_miss", "update", "retrieval")


def history_texts(memory: dict[str, Any]) -> list[str]:
    """Earlier texts a memory keeps (entries are objects with a `text`, or strings)."""
    out = []
    for entry in memory.get("history") or []:
        text = entry if isinstance(entry, str) else entry.get("text") if isinstance(entry, dict) else None
        if isinstance(text, str):
            out.append(text)
    return out


def is_current(memory: dict[str, Any]) -> bool:
    return memory.get("status", "current") == "current"


def own_texts(memories: list[dict[str, Any]], *, current_only: bool = False) -> set[str]:
    """Texts that are a memory of their own (any status, or current ones only)."""
    return {m["text"] for m in memories if is_current(m) or not current_only}


def surviving(memories: list[dict[str, Any]]) -> set[str]:
    """Texts still in the store: every memory's text and every text in a memory's history."""
    return own_texts(memories) | {t for m in memories for t in history_texts(m)}


@dataclass
class Ratio:
    hits: int = 0
    total: int = 0

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None

    def count(self, hit: bool) -> None:
        self.total += 1
        self.hits += int(hit)

    def __str__(self) -> str:
        return f"{self.hits}/{self.total}" if self.total else "-"


@dataclass
class Metrics:
    """The figures of one run; `details` says which case produced which figure."""

    mode: str
    threshold: float
    sessions: int = 0
    paraphrase_facts: int = 0
    paraphrase_memories: int = 0  # current ones
    near_miss_merged: Ratio = field(default_factory=Ratio)
    near_miss_both_current: Ratio = field(default_factory=Ratio)
    latest_first: Ratio = field(default_factory=Ratio)
    stale_first: Ratio = field(default_factory=Ratio)
    stale_returned: Ratio = field(default_factory=Ratio)  # anywhere in the default top SEARCH_K
    latest_first_all: Ratio = field(default_factory=Ratio)  # with include_superseded=true
    recall_at_1: Ratio = field(default_factory=Ratio)
    recall_at_5: Ratio = field(default_factory=Ratio)
    statements_lost: Ratio = field(default_factory=Ratio)
    facts_lost: Ratio = field(default_factory=Ratio)
    confirms: int = 0  # confirms the processor committed (memories_merged)
    backstop_confirms: int = 0  # ... of them not answered by the model: the backstop's
    superseded: int = 0  # memories left superseded / retracted
    retracted: int = 0
    chat_calls: int = 0
    embedding_calls: int = 0
    max_chat_calls: int = 0
    max_embedding_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    targets_not_shown: int = 0
    ops_dropped: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] | None = None

    @property
    def memories_per_fact(self) -> float | None:
        return self.paraphrase_memories / self.paraphrase_facts if self.paraphrase_facts else None

    def per_session(self, value: int) -> float | None:
        return value / self.sessions if self.sessions else None


def _rank(found: list[str], answers: set[str]) -> int | None:
    return next((i + 1 for i, text in enumerate(found) if text in answers), None)


@dataclass
class _Tally:
    """Figures every case contributes the same way (quality cases and the budget case alike)."""

    submitted: list[str] = field(default_factory=list)
    lost_texts: list[str] = field(default_factory=list)
    stated: list[str] = field(default_factory=list)
    lost_facts: list[str] = field(default_factory=list)
    misses: list[dict[str, str]] = field(default_factory=list)
    confirms_answered: int = 0


def _tally(run: CaseRun) -> _Tally:
    case, t = run.case, _Tally()
    kept = surviving(run.memories)
    for s in case.sessions:
        answer = run.answers[s.session_id]
        t.submitted += answer.submitted
        t.confirms_answered += answer.ops["confirm"]
        t.misses += [asdict(m) for m in answer.misses]
    t.lost_texts = [x for x in t.submitted if x not in kept]
    t.stated = sorted({f for x in t.submitted if (f := case.fact_of(x)) is not None})
    t.lost_facts = [f for f in t.stated if not set(case.facts[f]) & kept]
    return t


def _questions(m: Metrics, run: CaseRun, detail: dict[str, Any]) -> None:
    case = run.case
    questions = []
    for q in case.questions:
        found = [r["text"] for r in run.searches[q.q]]
        found_all = [(r["text"], r.get("status", "current")) for r in run.searches_all[q.q]]
        answers, stale = case.texts_of(q.answer), case.texts_of(q.stale)
        top = found[0] if found else None
        if case.kind == "update":
            m.latest_first.count(top in answers)
            m.stale_first.count(top in stale)
            m.stale_returned.count(bool(stale & set(found)))
            m.latest_first_all.count(bool(found_all) and found_all[0][0] in answers)
        elif case.kind == "retrieval":
            m.recall_at_1.count(top in answers)
            m.recall_at_5.count(bool(answers & set(found[:5])))
        questions.append(
            {
                "q": q.q,
                "top": found,
                "answer_rank": _rank(found, answers),
                "top_with_superseded": [f"{text} [{status}]" for text, status in found_all],
            }
        )
    if questions:
        detail["questions"] = questions


def compute_metrics(runs: list[CaseRun], *, mode: str, threshold: float) -> Metrics:
    """Every figure of the README's metrics table from what the runs left behind."""
    m = Metrics(mode, threshold)
    for run in runs:
        if run.case.kind not in QUALITY_KINDS:
            if run.case.kind == "budget":
                m.budget = budget_figures(run)
            continue
        case, t = run.case, _tally(run)
        for x in t.submitted:
            m.statements_lost.count(x in t.lost_texts)
        for f in t.stated:
            m.facts_lost.count(f in t.lost_facts)
        m.sessions += len(run.costs)
        m.confirms += sum(c.confirmed for c in run.costs)
        m.backstop_confirms += sum(c.confirmed for c in run.costs) - t.confirms_answered
        m.chat_calls += sum(c.chat_calls for c in run.costs)
        m.embedding_calls += sum(c.embedding_calls for c in run.costs)
        m.max_chat_calls = max([m.max_chat_calls, *(c.chat_calls for c in run.costs)])
        m.max_embedding_calls = max([m.max_embedding_calls, *(c.embedding_calls for c in run.costs)])
        m.tokens_in += sum(c.tokens_in for c in run.costs)
        m.tokens_out += sum(c.tokens_out for c in run.costs)
        m.ops_dropped += sum(c.dropped for c in run.costs)
        m.targets_not_shown += len(t.misses)
        m.superseded += sum(1 for mem in run.memories if mem.get("status") == "superseded")
        m.retracted += sum(1 for mem in run.memories if mem.get("status") == "retracted")
        own, current = own_texts(run.memories), own_texts(run.memories, current_only=True)
        detail: dict[str, Any] = {
            "kind": case.kind,
            "memories": sorted(f"{mem['text']} [{mem.get('status', 'current')}]" for mem in run.memories),
            "lost_statements": t.lost_texts,
            "lost_facts": t.lost_facts,
            "targets_not_shown": t.misses,
        }
        if case.kind == "paraphrase":
            m.paraphrase_facts += len(case.facts)
            m.paraphrase_memories += len(current)
            detail["memories_per_fact"] = {f: len(current & set(case.facts[f])) for f in case.facts}
        elif case.kind == "near_miss":
            # Merged: a statement of the pair is no memory of its own (it survives only in another
            # memory's history, or not at all). A superseded memory is its own memory.
            merged = any(not set(case.facts[f]) & own for f in case.pair)
            both = all(set(case.facts[f]) & current for f in case.pair)
            m.near_miss_merged.count(merged)
            m.near_miss_both_current.count(both)
            detail["wrongly_merged"] = merged
            detail["both_current"] = both
        _questions(m, run, detail)
        m.details[case.id] = detail
    return m


def budget_figures(run: CaseRun) -> dict[str, Any]:
    """The budget case: its measured session's prompt and cost, and the case's own checks."""
    t = _tally(run)
    measured = run.costs[-1]
    p = run.prompt
    if p is None:
        raise ValueError(f"budget case {run.case.id} has no measured prompt")
    return {
        "case": run.case.id,
        "memories_before": sum(len(run.answers[s.session_id].submitted) for s in run.case.sessions[:-1]),
        "session": p.session_id,
        "transcript_bytes": p.transcript_bytes,
        "messages": p.messages,
        "shown_lines": p.shown_lines,
        "prompt_tokens": p.prompt_tokens,
        "completion_tokens": p.completion_tokens,
        "tokens": p.tokens,
        "embedding_tokens": p.embedding_tokens,
        "system_chars": p.system_chars,
        "user_chars": p.user_chars,
        "schema_chars": p.schema_chars,
        "schema_tokens": p.schema_tokens,
        "tokens_with_schema": p.tokens + p.schema_tokens,
        "processor_tokens_in": measured.tokens_in,
        "processor_tokens_out": measured.tokens_out,
        "chat_calls": measured.chat_calls,
        "embedding_calls": measured.embedding_calls,
        "max_chat_calls": max(c.chat_calls for c in run.costs),
        "max_embedding_calls": max(c.embedding_calls for c in run.costs),
        "ops_dropped": sum(c.dropped for c in run.costs),
        "targets_not_shown": t.misses,
        "statements_lost": t.lost_texts,
        "statements": len(t.submitted),
        "current_memories": sum(1 for mem in run.memories if is_current(mem)),
        "memories": len(run.memories),
    }


def metrics_json(m: Metrics) -> dict[str, Any]:
    data = asdict(m)
    for name, value in list(data.items()):
        if isinstance(value, dict) and set(value) == {"hits", "total"}:
            data[name] = {**value, "rate": value["hits"] / value["total"] if value["total"] else None}
    data["memories_per_fact"] = m.memories_per_fact
    for name in ("chat_calls", "embedding_calls", "tokens_in", "tokens_out"):
        data[f"{name}_per_session"] = m.per_session(getattr(m, name))
    return data
