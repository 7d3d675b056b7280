"""The figures of a run against the committed "before" (the old pipeline's 2026-12-01 results),
and the issue's done-when checks with their figures."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.cases import Case
from eval.metrics import Metrics, Ratio

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The old pipeline (merge into the nearest memory above the threshold), measured before 65a0c8d.
BEFORE_PATH = RESULTS_DIR / "2026-12-01-naive.json"
TOKEN_BUDGET = 2000
CANDIDATES = 30


def num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def pct(r: Ratio) -> str:
    return f"{r} ({r.value:.0%})" if r.value is not None else str(r)


@dataclass(frozen=True)
class Row:
    """One metric of the main table: its value in a run and in the old pipeline's committed figures."""

    label: str
    now: Callable[[Metrics], str]
    before: Callable[[dict[str, Any]], str]
    ideal: str


def _ratio(d: dict[str, Any]) -> Ratio:
    return Ratio(int(d["hits"]), int(d["total"]))


def _old(name: str) -> Callable[[dict[str, Any]], str]:
    return lambda b: pct(_ratio(b[name])) if name in b else "-"


def _none(_: dict[str, Any]) -> str:
    return "-"


ROWS = (
    Row(
        "memories per fact (paraphrase, current)",
        lambda m: f"{num(m.memories_per_fact)} ({m.paraphrase_memories} for {m.paraphrase_facts} facts)",
        lambda b: (
            f"{num(b['memories_per_fact'])} ({b['paraphrase_memories']} for {b['paraphrase_facts']} facts)"
        ),
        "1.00",
    ),
    Row("near-miss pairs wrongly merged", lambda m: pct(m.near_miss_merged), _old("near_miss_merged"), "0"),
    Row(
        "near-miss pairs kept as two current memories",
        lambda m: pct(m.near_miss_both_current),
        # The old pipeline had no statuses: a pair it did not merge was two current memories.
        lambda b: pct(
            Ratio(
                b["near_miss_merged"]["total"] - b["near_miss_merged"]["hits"], b["near_miss_merged"]["total"]
            )
        ),
        "-",
    ),
    Row(
        "latest fact first (update, default search)",
        lambda m: pct(m.latest_first),
        _old("latest_first"),
        "all",
    ),
    Row("stale fact first (update, default search)", lambda m: pct(m.stale_first), _old("stale_first"), "0"),
    Row(
        "stale fact returned at all (default search, top 5)",
        lambda m: pct(m.stale_returned),
        _old("stale_returned"),
        "0",
    ),
    Row("latest fact first with include_superseded=true", lambda m: pct(m.latest_first_all), _none, "-"),
    Row("recall@1 (retrieval)", lambda m: pct(m.recall_at_1), _old("recall_at_1"), "all"),
    Row("recall@5 (retrieval)", lambda m: pct(m.recall_at_5), _old("recall_at_5"), "all"),
    Row("statements lost", lambda m: pct(m.statements_lost), _old("statements_lost"), "0"),
    Row("facts lost", lambda m: pct(m.facts_lost), _old("facts_lost"), "0"),
    Row(
        "confirms committed (of them by the backstop)",
        lambda m: f"{m.confirms} ({m.backstop_confirms})",
        lambda b: f"{b['merges']} merges (text dropped)",
        "-",
    ),
    Row("memories left superseded / retracted", lambda m: f"{m.superseded} / {m.retracted}", _none, "-"),
    Row("targets not shown (candidate-retrieval misses)", lambda m: str(m.targets_not_shown), _none, "0"),
    Row("operations dropped by the pipeline", lambda m: str(m.ops_dropped), _none, "0"),
    Row(
        "chat calls per session (mean / max)",
        lambda m: f"{num(m.per_session(m.chat_calls))} / {m.max_chat_calls}",
        lambda b: f"{num(b['chat_calls_per_session'])} / -",
        "1",
    ),
    Row(
        "embedding calls per session (mean / max)",
        lambda m: f"{num(m.per_session(m.embedding_calls))} / {m.max_embedding_calls}",
        lambda b: f"{num(b['embedding_calls_per_session'])} / -",
        "≤ 2",
    ),
    Row(
        "tokens in / out per session (fake: chars/4)",
        lambda m: f"{num(m.per_session(m.tokens_in), 1)} / {num(m.per_session(m.tokens_out), 1)}",
        lambda b: f"{num(b['tokens_in_per_session'], 1)} / {num(b['tokens_out_per_session'], 1)}",
        "-",
    ),
)


def load_before(cases: list[Case], path: Path = BEFORE_PATH) -> dict[str, Any]:
    """The old pipeline's main figures, plus "stale fact returned at all", which its file did not
    report but its details hold (each update question's top results, from the same search)."""
    doc = json.loads(path.read_text())
    before: dict[str, Any] = dict(doc["main"])
    by_id = {c.id: c for c in cases}
    returned = Ratio()
    for case_id, detail in before.get("details", {}).items():
        case = by_id.get(case_id)
        if case is None or case.kind != "update":
            continue
        for q in detail.get("questions", []):
            stale = next(case.texts_of(x.stale) for x in case.questions if x.q == q["q"])
            returned.count(bool(stale & set(q["top"])))
    before["stale_returned"] = {"hits": returned.hits, "total": returned.total}
    before["label"] = f"old pipeline ({path.name}, threshold {before['threshold']:g})"
    return before


def column_label(m: Metrics) -> str:
    return f"{'reconcile' if m.mode == 'reconcile' else 'naive-backstop'} ({m.threshold:g})"


def comparison_rows(
    before: dict[str, Any] | None, runs: Sequence[Metrics]
) -> tuple[list[str], list[list[str]]]:
    headers = ["metric", *([before["label"]] if before else []), *(column_label(m) for m in runs), "ideal"]
    rows = [
        [r.label, *([r.before(before)] if before else []), *(r.now(m) for m in runs), r.ideal] for r in ROWS
    ]
    return headers, rows


def done_when(m: Metrics) -> list[list[str]]:
    """The issue's done-when, each with its figure and pass/fail (reconcile mode)."""
    b = m.budget or {}
    one = m.memories_per_fact == 1.0 and all(
        n == 1 for d in m.details.values() for n in d.get("memories_per_fact", {}).values()
    )
    lost = m.statements_lost.hits + len(b.get("statements_lost", []))
    calls_ok = m.max_chat_calls == 1 and b.get("max_chat_calls", 1) == 1
    embeds_ok = m.max_embedding_calls <= 2 and b.get("max_embedding_calls", 0) <= 2
    tokens_ok = b.get("shown_lines") == CANDIDATES and b.get("tokens", TOKEN_BUDGET + 1) <= TOKEN_BUDGET
    misses = m.targets_not_shown + len(b.get("targets_not_shown", []))

    def verdict(ok: bool) -> str:
        return "pass" if ok else "FAIL"

    return [
        [
            "paraphrases of one fact end as one current memory",
            f"{num(m.memories_per_fact)} per fact ({m.paraphrase_memories} for {m.paraphrase_facts})",
            verdict(one),
        ],
        [
            "no near-miss pair is merged",
            f"{m.near_miss_merged} merged",
            verdict(m.near_miss_merged.hits == 0),
        ],
        [
            "the latest fact ranks first for every update case",
            f"{m.latest_first} (stale returned at all: {m.stale_returned})",
            verdict(m.latest_first.total > 0 and m.latest_first.hits == m.latest_first.total),
        ],
        [
            "no statement is lost",
            f"{m.statements_lost} (+ {len(b.get('statements_lost', []))}/{b.get('statements', 0)} budget)",
            verdict(lost == 0),
        ],
        [
            "1 chat call per session, at most 2 embeddings calls",
            f"max {max(m.max_chat_calls, b.get('max_chat_calls', 0))} chat, "
            f"max {max(m.max_embedding_calls, b.get('max_embedding_calls', 0))} embeddings",
            verdict(calls_ok and embeds_ok),
        ],
        [
            f"tokens per session ≤ {TOKEN_BUDGET:,} (8 messages, ~1.1 kB, {CANDIDATES} candidates)",
            f"{b.get('tokens', '-')} ({b.get('shown_lines', '-')} candidates shown, "
            f"{b.get('messages', '-')} messages, {b.get('transcript_bytes', '-')} B); "
            f"+ schema {b.get('schema_tokens', '-')} = {b.get('tokens_with_schema', '-')}",
            verdict(tokens_ok),
        ],
        ["(no candidate-retrieval miss)", f"{misses} targets not shown", verdict(misses == 0)],
    ]
