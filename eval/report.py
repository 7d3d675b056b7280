"""Tables and result files: the before/after table and done-when (eval.compare), the prompt budget,
per-case details and the threshold sweep, as markdown (eval/results/*.md) and plain text."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.cases import KINDS, Case
from eval.compare import BEFORE_PATH, CANDIDATES, TOKEN_BUDGET, comparison_rows, done_when, num
from eval.metrics import Metrics
from eval.similarity import similarity_groups
from eval.vectors import DIMENSIONS, MODEL, cosine

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "eval" / "results"
# What a result depends on: changes here, uncommitted, make a result unreproducible from its commit.
MEASURED_PATHS = (
    "layers",
    "functions",
    "tests",
    "template.yaml",
    "eval/cases",
    "eval/vectors.json",
    "eval/*.py",
)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    )


SWEEP_HEADERS = [
    "threshold",
    "memories per fact",
    "near-miss merged",
    "latest first",
    "stale returned",
    "recall@1",
    "statements lost",
    "backstop confirms",
]


def sweep_rows(sweep: list[Metrics]) -> list[list[str]]:
    return [
        [
            f"{s.threshold:.2f}",
            num(s.memories_per_fact),
            str(s.near_miss_merged),
            str(s.latest_first),
            str(s.stale_returned),
            str(s.recall_at_1),
            str(s.statements_lost),
            str(s.backstop_confirms),
        ]
        for s in sweep
    ]


def budget_section(b: dict[str, Any]) -> list[str]:
    rows = [
        [
            "memories stored before it / current after / all after",
            f"{b['memories_before']} / {b['current_memories']} / {b['memories']}",
        ],
        ["measured session", f"{b['session']}: {b['messages']} messages, {b['transcript_bytes']} bytes"],
        ["candidates shown ([mN] lines in the prompt)", str(b["shown_lines"])],
        ["chat prompt tokens (system + user message, chars/4)", str(b["prompt_tokens"])],
        ["  system prompt / user message characters", f"{b['system_chars']} / {b['user_chars']}"],
        ["chat completion tokens", str(b["completion_tokens"])],
        ["**tokens per session (prompt + completion)**", f"**{b['tokens']}** (budget {TOKEN_BUDGET:,})"],
        ["response_format schema (chars, chars/4)", f"{b['schema_chars']}, {b['schema_tokens']}"],
        ["tokens + schema", str(b["tokens_with_schema"])],
        ["embeddings input tokens (lookup + new texts)", str(b["embedding_tokens"])],
        [
            "processor's tokens in / out (chat + embeddings)",
            f"{b['processor_tokens_in']} / {b['processor_tokens_out']}",
        ],
        ["chat / embeddings calls", f"{b['chat_calls']} / {b['embedding_calls']}"],
        ["targets not shown", str(len(b["targets_not_shown"]))],
        ["operations dropped", str(b["ops_dropped"])],
        ["statements lost", f"{len(b['statements_lost'])}/{b['statements']}"],
    ]
    return [
        f"## Prompt budget: {CANDIDATES} candidates (case {b['case']})",
        "",
        "The fake counts tokens as characters / 4 of the messages' contents (prompt) and of its reply "
        "(completion); a real request also carries the `response_format` JSON schema, counted here the "
        "same way.",
        "",
        md_table(["figure", "value"], rows),
        "",
    ]


def render_markdown(
    main: Metrics,
    sweep: list[Metrics],
    cases: list[Case],
    vectors: dict[str, list[float]],
    meta: dict[str, Any],
    before: dict[str, Any] | None,
    others: Sequence[Metrics] = (),
) -> str:
    counts = {k: sum(1 for c in cases if c.kind == k) for k in KINDS}
    sessions = {k: sum(len(c.sessions) for c in cases if c.kind == k) for k in KINDS}
    mode = "reconcile" if main.mode == "reconcile" else "naive-backstop"
    headers, rows = comparison_rows(before, [main, *others])
    out = [
        f"# Memory quality, mode {mode}: {meta['date']}",
        "",
        f"Reproduce: `{meta['command']}` (on code at {meta['revision']}). Mode `--mode {main.mode}`: "
        + (
            "the model answers the scripted reconcile operations against the memories the prompt shows."
            if main.mode == "reconcile"
            else "a model that ignores the shown memories (new memories only); the backstop alone decides."
        ),
        f"Embeddings: {MODEL}, {DIMENSIONS} dimensions, from eval/vectors.json. MERGE_SIMILARITY_THRESHOLD "
        f"{main.threshold:g}. Cases: "
        + ", ".join(f"{k} {counts[k]} ({sessions[k]} sessions)" for k in KINDS)
        + f". {meta['seconds']:.1f} s.",
        "",
        "## Before / after",
        "",
        "Before: the old pipeline (merge into the nearest memory above the threshold, text dropped), "
        f"read from `eval/results/{BEFORE_PATH.name}`. Quality figures are over the paraphrase, "
        "near-miss, update and retrieval cases (87 sessions); the budget case is reported below.",
        "",
        md_table(headers, rows),
        "",
    ]
    if main.mode == "reconcile":
        out += ["## Done-when", "", md_table(["item", "figure", ""], done_when(main)), ""]
    if main.budget:
        out += budget_section(main.budget)
    out += details_sections(main, cases, vectors)
    if sweep:
        out += [
            "## MERGE_SIMILARITY_THRESHOLD sweep (naive-backstop mode)",
            "",
            md_table(SWEEP_HEADERS, sweep_rows(sweep)),
            "",
        ]
        if not any(s.backstop_confirms for s in sweep):
            low = min(s.threshold for s in sweep)
            out += [
                "The backstop confirmed no add at any threshold: it judges an add only against the current "
                f"memories the prompt did not show, and no add here came within {low:g} of one of those. "
                "A model that ignores the shown memories gets no deduplication from the pipeline.",
                "",
            ]
    out += ["## Cosine similarity of the naive memory texts", "", similarity_table(cases, vectors), ""]
    return "\n".join(out)


def details_sections(m: Metrics, cases: list[Case], vectors: dict[str, list[float]]) -> list[str]:
    d, out = m.details, []
    for c in (c for c in cases if c.kind == "paraphrase"):
        out += ["## Paraphrases: current memories per fact", ""]
        out += [
            md_table(["fact", "memories"], [[f, str(n)] for f, n in d[c.id]["memories_per_fact"].items()]),
            "",
        ]
    near = [c for c in cases if c.kind == "near_miss"]
    if near:
        rows = []
        for c in near:
            a, b = (c.facts[f][0] for f in c.pair)
            x = d[c.id]
            outcome = (
                "merged: " + "; ".join(x["lost_statements"] or ["a statement kept only in history"])
                if x["wrongly_merged"]
                else "two current memories"
                if x["both_current"]
                else "kept: " + "; ".join(t for t in x["memories"] if not t.endswith("[current]"))
            )
            rows.append([c.id, f"{cosine(vectors[a], vectors[b]):.3f}", outcome])
        out += ["## Near-miss pairs", "", md_table(["pair", "cosine", "outcome"], rows), ""]
    upd = [c for c in cases if c.kind == "update"]
    if upd:
        rows = []
        for c in upd:
            for q, question in zip(d[c.id]["questions"], c.questions, strict=True):
                top = q["top"][0] if q["top"] else "-"
                is_ = (
                    "latest"
                    if top in c.texts_of(question.answer)
                    else "stale"
                    if top in c.texts_of(question.stale)
                    else "other"
                )
                stale = "yes" if c.texts_of(question.stale) & set(q["top"]) else "no"
                with_all = q["top_with_superseded"][0] if q["top_with_superseded"] else "-"
                rows.append([c.id, q["q"], top, is_, stale, with_all])
        headers = ["case", "question", "rank 1", "is", "stale in top 5", "rank 1 with include_superseded"]
        out += ["## Updates: search for the question", "", md_table(headers, rows), ""]
    for c in (c for c in cases if c.kind == "retrieval"):
        rows = [[q["q"], str(q["answer_rank"] or "not in top 5")] for q in d[c.id]["questions"]]
        out += ["## Retrieval: rank of the answer", "", md_table(["question", "answer rank"], rows), ""]
    misses = [x for dd in d.values() for x in dd.get("targets_not_shown", [])]
    misses += (m.budget or {}).get("targets_not_shown", [])
    out += ["## Targets not shown (candidate-retrieval misses)", ""]
    if misses:
        rows = [[x["session_id"], x["op"], x["target"], x["answered_as"]] for x in misses]
        out += [md_table(["session", "op", "target", "answered as"], rows), ""]
    else:
        out += ["None: every operation's target was among the memories the prompt showed.", ""]
    return out


def similarity_table(cases: list[Case], vectors: dict[str, list[float]]) -> str:
    rows = []
    for g in similarity_groups(cases, vectors):
        s = g.summary()
        if s["pairs"]:
            rows.append([g.name, str(s["pairs"]), f"{s['min']:.2f}", f"{s['mean']:.2f}", f"{s['max']:.2f}"])
    return md_table(["pairs", "n", "min", "mean", "max"], rows)


def git_revision() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *MEASURED_PATHS],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}{' (uncommitted changes)' if dirty else ''}"
