"""make eval: replay the scripted cases through the real pipeline and measure what memory ends up as.

Real parts only: a real Redis 8, the real store_raw handler (API Gateway events), the real processor
and the real `openai` client, talking over HTTP to tests/fake_openai.py, which answers each chat call
with the case's scripted extraction and each embeddings call with the committed all-MiniLM-L6-v2
vectors (eval/vectors.json). Each case gets its own vectorstore; every session is stored and drained
before the next, as a user's sessions would arrive. Results are read back through the API
(hierarchy, search). See eval/README.md for the cases and the definition of every metric.

    python -m eval.run --mode naive            # what `make eval` runs
    python -m eval.run --mode naive --no-sweep --threshold 0.85 --no-write
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eval.cases import KINDS, MODES, Case, Session, load_cases
from eval.similarity import similarity_groups
from eval.vectors import DIMENSIONS, EMBEDDING_MODEL, MODEL, load_vectors

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "eval" / "results"
SWEEP = (0.80, 0.85, 0.90, 0.92, 0.95, 0.97)
SEARCH_K = 5
MAKE_EVAL_COMMAND = "python -m eval.run --mode naive"  # what the Makefile's eval target runs
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


class EvalError(RuntimeError):
    """The harness could not measure a case (a session failed, a script is missing): not a metric."""


# -------------------------------------------------------------------------------------------------
# The fake LLM's answers
# -------------------------------------------------------------------------------------------------


def reconcile_reply(session: Session, transcript: str) -> dict[str, Any]:
    """EXTENSION POINT for --mode reconcile: the chat answer of a reconciling extractor.

    The data is ready: ``session.reconcile`` holds ``operations`` ({op, text?, target?, memory_type})
    plus summary and topics, where ``target`` is the exact text of the earlier memory an op refers to.
    What is missing is the pipeline: its prompt will show the user's related memories with short ids,
    and this function must map each ``target`` text to the id that prompt shows, in the reconciling
    response schema. That needs the whole user message (the fake's ``extraction_for`` hook passes only
    the ``<transcript>`` block today), so the hook grows when the prompt format exists.
    """
    raise NotImplementedError(
        "--mode reconcile: the reconciling extraction pipeline and its prompt format do not exist yet; "
        "implement eval.run.reconcile_reply (map each operation's target text to the prompt's short id)"
    )


class ScriptedLLM:
    """The fake's two hooks for one run: the scripted answer for the transcript of the current case's
    session, and the committed vector of a text (None, so HTTP 400, for a text without one).

    Hooks run on the fake's threads; an exception there becomes an HTTP 500, so it is also kept here
    for the harness to raise in its own thread with the real traceback.
    """

    def __init__(self, mode: str, vectors: dict[str, list[float]]) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.vectors = vectors
        self.case: Case | None = None
        self.errors: list[BaseException] = []
        self.missing_vectors: list[str] = []

    def extraction_for(self, transcript: str) -> dict[str, Any]:
        try:
            session = self._session(transcript)
            if self.mode == "naive":
                return json.loads(json.dumps(session.naive))
            return reconcile_reply(session, transcript)
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def embedding_for(self, text: str) -> list[float] | None:
        vector = self.vectors.get(text)
        if vector is None:
            self.missing_vectors.append(text)
        return vector

    def _session(self, transcript: str) -> Session:
        if self.case is None:
            raise EvalError("a chat call arrived outside a case")
        for session in self.case.sessions:
            if session.transcript.strip() == transcript.strip():
                return session
        raise EvalError(f"case {self.case.id!r} has no session with transcript {transcript[:80]!r}")


# -------------------------------------------------------------------------------------------------
# Running cases
# -------------------------------------------------------------------------------------------------


@dataclass
class SessionCost:
    """What processing one session cost: calls the fake saw, tokens the processor recorded from the
    fake's `usage` (its estimate is characters / 4, so compare runs with each other, not with a bill)."""

    chat_calls: int
    embedding_calls: int
    tokens_in: int
    tokens_out: int


@dataclass
class CaseRun:
    """What one case left behind, as the API shows it."""

    case: Case
    memories: list[dict[str, Any]]  # hierarchy discrete_memories (text, and history once it exists)
    searches: dict[str, list[str]]  # question -> texts of the top SEARCH_K results, best first
    costs: list[SessionCost]
    merged: int  # merges the processor reported


@contextlib.contextmanager
def eval_environment(redis_url: str, openai_base_url: str, threshold: float) -> Iterator[None]:
    """Point memproc (settings, Redis clients) at this run's Redis, the fake and the threshold, and put
    the process environment back afterwards. LLM_MAX_RETRIES=0: a scripted answer never fails by
    chance, so a failure is a harness problem and must surface at once rather than after backoff."""
    from memproc import settings as settings_module
    from memproc.dal import connection

    values = {
        "REDIS_URL": redis_url,
        "OPENAI_API_KEY": "eval-key",
        "OPENAI_BASE_URL": openai_base_url,
        "EMBEDDING_MODEL": EMBEDDING_MODEL,
        "EMBEDDING_DIMENSIONS": str(DIMENSIONS),
        "MERGE_SIMILARITY_THRESHOLD": f"{threshold:g}",
        "LLM_MAX_RETRIES": "0",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "AUTH_MODE": "NONE",  # the harness calls the handlers directly, as an unauthenticated local client
    }
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        settings_module.get_settings.cache_clear()
        connection._store.cache_clear()


def _get(path: str, query: dict[str, Any]) -> Any:
    from tests.api_client import call

    res = call("GET", path, query=query)
    if res.status != 200:
        raise EvalError(f"GET {path} {query}: HTTP {res.status}: {res.body}")
    return res.body


def list_memories(vectorstore: str) -> list[dict[str, Any]]:
    """Every discrete memory of the vectorstore, through the hierarchy API (all pages)."""
    from tests.api_client import mem_path

    memories: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {"memory_type": "discrete", "limit": 1000}
        if cursor:
            query["cursor"] = cursor
        body = _get(mem_path(vectorstore, "/hierarchy"), query)
        memories += body["discrete_memories"]
        cursor = body.get("next_cursor")
        if not cursor:
            return memories


def search(vectorstore: str, q: str) -> list[str]:
    from tests.api_client import mem_path

    body = _get(mem_path(vectorstore, "/search"), {"q": q, "k": SEARCH_K})
    return [r["text"] for r in body["results"]]


def run_case(case: Case, vectorstore: str, llm: ScriptedLLM, fake: Any, processor: Any) -> CaseRun:
    """Store and drain the case's sessions one at a time, then read memories and search results."""
    from tests.api_client import call, mem_path

    llm.case = case
    costs: list[SessionCost] = []
    merged = 0
    try:
        for s in case.sessions:
            chat_before, embed_before = fake.chat_calls, fake.embedding_calls
            body = {
                "session_data": s.transcript,
                "session_id": s.session_id,
                "metadata": {"session_timestamp": s.timestamp},
            }
            res = call("POST", mem_path(vectorstore, "/store_raw"), json_body=body)
            if res.status != 202:
                raise EvalError(f"store_raw {s.session_id}: HTTP {res.status}: {res.body}")
            report = processor.drain()
            if llm.errors:
                raise llm.errors[0]
            if llm.missing_vectors:
                raise EvalError(f"no committed vector for {llm.missing_vectors[0]!r}: run make eval-vectors")
            if report.processed != 1 or report.handled != 1:
                raise EvalError(
                    f"session {s.session_id}: drain handled {report.handled}, processed {report.processed}"
                )
            merged += report.memories_merged
            costs.append(
                SessionCost(
                    fake.chat_calls - chat_before,
                    fake.embedding_calls - embed_before,
                    report.tokens_in,
                    report.tokens_out,
                )
            )
        searches = {q.q: search(vectorstore, q.q) for q in case.questions}
        if llm.missing_vectors:
            raise EvalError(f"no committed vector for {llm.missing_vectors[0]!r}: run make eval-vectors")
        return CaseRun(case, list_memories(vectorstore), searches, costs, merged)
    finally:
        llm.case = None


def run_cases(
    cases: list[Case],
    *,
    mode: str,
    threshold: float,
    redis_url: str,
    fake: Any,
    vectors: dict[str, list[float]],
    prefix: str = "eval",
    progress: Callable[[str], None] | None = None,
) -> list[CaseRun]:
    """Every case through the pipeline with the fake's hooks set, each in vectorstore <prefix>-<case id>."""
    from memproc.processor import build_processor
    from memproc.settings import get_settings

    llm = ScriptedLLM(mode, vectors)
    hooks = (fake.extraction_for, fake.embedding_for)
    fake.extraction_for, fake.embedding_for = llm.extraction_for, llm.embedding_for
    try:
        with eval_environment(redis_url, fake.base_url, threshold):
            processor = build_processor(get_settings())
            try:
                runs = []
                for case in cases:
                    runs.append(run_case(case, f"{prefix}-{case.id}", llm, fake, processor))
                    if progress:
                        progress(f"{case.kind}/{case.id}: {len(runs[-1].memories)} memories")
                return runs
            finally:
                close = getattr(processor.provider, "close", None)
                if close is not None:
                    close()
    finally:
        fake.extraction_for, fake.embedding_for = hooks


# -------------------------------------------------------------------------------------------------
# Metrics
# -------------------------------------------------------------------------------------------------


def history_texts(memory: dict[str, Any]) -> list[str]:
    """Earlier texts a memory keeps (strings, or objects with a `text`); memories have none today."""
    out = []
    for entry in memory.get("history") or []:
        text = entry if isinstance(entry, str) else entry.get("text") if isinstance(entry, dict) else None
        if isinstance(text, str):
            out.append(text)
    return out


def surviving(memories: list[dict[str, Any]]) -> set[str]:
    """Texts still in the store: every memory's text and every text in a memory's history."""
    return {m["text"] for m in memories} | {t for m in memories for t in history_texts(m)}


@dataclass
class Ratio:
    hits: int
    total: int

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None

    def __str__(self) -> str:
        return f"{self.hits}/{self.total}" if self.total else "-"


@dataclass
class Metrics:
    """The figures of one run; `details` says which case produced which figure."""

    mode: str
    threshold: float
    sessions: int = 0
    paraphrase_facts: int = 0
    paraphrase_memories: int = 0
    near_miss_merged: Ratio = field(default_factory=lambda: Ratio(0, 0))
    latest_first: Ratio = field(default_factory=lambda: Ratio(0, 0))
    stale_first: Ratio = field(default_factory=lambda: Ratio(0, 0))
    recall_at_1: Ratio = field(default_factory=lambda: Ratio(0, 0))
    recall_at_5: Ratio = field(default_factory=lambda: Ratio(0, 0))
    statements_lost: Ratio = field(default_factory=lambda: Ratio(0, 0))
    facts_lost: Ratio = field(default_factory=lambda: Ratio(0, 0))
    merges: int = 0
    chat_calls: int = 0
    embedding_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def memories_per_fact(self) -> float | None:
        return self.paraphrase_memories / self.paraphrase_facts if self.paraphrase_facts else None

    def per_session(self, value: int) -> float | None:
        return value / self.sessions if self.sessions else None


def _count(ratio: Ratio, hit: bool) -> None:
    ratio.total += 1
    ratio.hits += int(hit)


def compute_metrics(runs: list[CaseRun], *, mode: str, threshold: float) -> Metrics:
    """Every figure of the README's metrics table from what the runs left behind."""
    m = Metrics(mode, threshold)
    for run in runs:
        case = run.case
        kept = surviving(run.memories)
        texts = sorted(mem["text"] for mem in run.memories)
        submitted = [t for s in case.sessions for t in s.submitted(mode)]
        stated = sorted({f for t in submitted if (f := case.fact_of(t)) is not None})
        lost_facts = [f for f in stated if not set(case.facts[f]) & kept]
        lost_texts = [t for t in submitted if t not in kept]
        for t in submitted:
            _count(m.statements_lost, t in lost_texts)
        for f in stated:
            _count(m.facts_lost, f in lost_facts)
        m.sessions += len(run.costs)
        m.merges += run.merged
        m.chat_calls += sum(c.chat_calls for c in run.costs)
        m.embedding_calls += sum(c.embedding_calls for c in run.costs)
        m.tokens_in += sum(c.tokens_in for c in run.costs)
        m.tokens_out += sum(c.tokens_out for c in run.costs)
        detail: dict[str, Any] = {
            "kind": case.kind,
            "memories": texts,
            "lost_statements": lost_texts,
            "lost_facts": lost_facts,
        }
        if case.kind == "paraphrase":
            m.paraphrase_facts += len(case.facts)
            m.paraphrase_memories += len(run.memories)
            detail["memories_per_fact"] = {f: sum(1 for t in texts if t in case.facts[f]) for f in case.facts}
        elif case.kind == "near_miss":
            wrong = any(f in lost_facts for f in case.pair)
            _count(m.near_miss_merged, wrong)
            detail["wrongly_merged"] = wrong
        questions = []
        for q in case.questions:
            found = run.searches[q.q]
            answers = case.texts_of(q.answer)
            top = found[0] if found else None
            if case.kind == "update":
                _count(m.latest_first, top in answers)
                _count(m.stale_first, top in case.texts_of(q.stale))
            elif case.kind == "retrieval":
                _count(m.recall_at_1, top in answers)
                _count(m.recall_at_5, bool(answers & set(found[:5])))
            questions.append({"q": q.q, "top": found, "answer_rank": _rank(found, answers)})
        if questions:
            detail["questions"] = questions
        m.details[case.id] = detail
    return m


def _rank(found: list[str], answers: set[str]) -> int | None:
    return next((i + 1 for i, text in enumerate(found) if text in answers), None)


# -------------------------------------------------------------------------------------------------
# Reporting
# -------------------------------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(r: Ratio) -> str:
    return f"{r} ({r.value:.0%})" if r.value is not None else str(r)


def figures_rows(m: Metrics) -> list[tuple[str, str, str]]:
    """(metric, value, ideal) rows of the main table."""
    return [
        (
            "memories per fact (paraphrase)",
            f"{_f(m.memories_per_fact)} ({m.paraphrase_memories} for {m.paraphrase_facts} facts)",
            "1.00",
        ),
        ("near-miss pairs wrongly merged", _pct(m.near_miss_merged), "0"),
        ("latest fact first (update)", _pct(m.latest_first), "all"),
        ("stale fact first (update)", _pct(m.stale_first), "0"),
        ("recall@1 (retrieval)", _pct(m.recall_at_1), "all"),
        ("recall@5 (retrieval)", _pct(m.recall_at_5), "all"),
        ("statements lost (all cases)", _pct(m.statements_lost), "0"),
        ("facts lost (all cases)", _pct(m.facts_lost), "0"),
        ("merges reported by the processor", str(m.merges), "-"),
        ("chat calls per session", _f(m.per_session(m.chat_calls)), "1.00"),
        ("embedding calls per session", _f(m.per_session(m.embedding_calls)), "1.00"),
        ("tokens in per session (fake: chars/4)", _f(m.per_session(m.tokens_in), 1), "-"),
        ("tokens out per session (fake: chars/4)", _f(m.per_session(m.tokens_out), 1), "-"),
    ]


def sweep_rows(sweep: list[Metrics]) -> list[list[str]]:
    return [
        [
            f"{s.threshold:.2f}",
            _f(s.memories_per_fact),
            str(s.near_miss_merged),
            str(s.latest_first),
            str(s.recall_at_1),
            str(s.statements_lost),
            str(s.facts_lost),
        ]
        for s in sweep
    ]


SWEEP_HEADERS = [
    "threshold",
    "memories per fact",
    "near-miss wrongly merged",
    "latest first",
    "recall@1",
    "statements lost",
    "facts lost",
]


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    )


def _git_revision() -> str:
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


def render_markdown(
    main: Metrics,
    sweep: list[Metrics],
    cases: list[Case],
    vectors: dict[str, list[float]],
    meta: dict[str, Any],
) -> str:
    counts = {k: sum(1 for c in cases if c.kind == k) for k in KINDS}
    sessions = {k: sum(len(c.sessions) for c in cases if c.kind == k) for k in KINDS}
    out = [
        f"# Memory quality, mode {main.mode}: {meta['date']}",
        "",
        f"Reproduce: `{meta['command']}` (on code at {meta['revision']}).",
        f"Embeddings: {MODEL}, {DIMENSIONS} dimensions, from eval/vectors.json. MERGE_SIMILARITY_THRESHOLD "
        f"{main.threshold:g}. Cases: "
        + ", ".join(f"{k} {counts[k]} ({sessions[k]} sessions)" for k in KINDS)
        + f". {meta['seconds']:.1f} s.",
        "",
        md_table(["metric", "value", "ideal"], [list(r) for r in figures_rows(main)]),
        "",
    ]
    d = main.details
    para = [c for c in cases if c.kind == "paraphrase"]
    if para:
        out += ["## Paraphrases: memories per fact", ""]
        for c in para:
            out.append(
                md_table(["fact", "memories"], [[f, str(n)] for f, n in d[c.id]["memories_per_fact"].items()])
            )
        out.append("")
    near = [c for c in cases if c.kind == "near_miss"]
    if near:
        out += ["## Near-miss pairs", ""]
        rows = []
        for c in near:
            a, b = (c.facts[f][0] for f in c.pair)
            cos = _cosine(vectors, a, b)
            rows.append(
                [
                    c.id,
                    f"{cos:.3f}",
                    "merged: lost " + "; ".join(d[c.id]["lost_statements"])
                    if d[c.id]["wrongly_merged"]
                    else "kept apart",
                ]
            )
        out += [md_table(["pair", "cosine", "outcome"], rows), ""]
    upd = [c for c in cases if c.kind == "update"]
    if upd:
        out += ["## Updates: top search result for the question", ""]
        rows = []
        for c in upd:
            for q in d[c.id]["questions"]:
                top = q["top"][0] if q["top"] else "-"
                verdict = (
                    "latest"
                    if top in _answers(c, q["q"])
                    else "stale"
                    if top in _stale(c, q["q"])
                    else "other"
                )
                rows.append([c.id, q["q"], top, verdict])
        out += [md_table(["case", "question", "rank 1", "is"], rows), ""]
    ret = [c for c in cases if c.kind == "retrieval"]
    if ret:
        out += ["## Retrieval: rank of the answer", ""]
        rows = [[q["q"], str(q["answer_rank"] or "not in top 5")] for c in ret for q in d[c.id]["questions"]]
        out += [md_table(["question", "answer rank"], rows), ""]
    if sweep:
        out += [
            "## MERGE_SIMILARITY_THRESHOLD sweep (naive mode)",
            "",
            md_table(SWEEP_HEADERS, sweep_rows(sweep)),
            "",
        ]
    out += ["## Cosine similarity of the naive memory texts", "", similarity_table(cases, vectors), ""]
    return "\n".join(out)


def similarity_table(cases: list[Case], vectors: dict[str, list[float]]) -> str:
    rows = []
    for g in similarity_groups(cases, vectors):
        s = g.summary()
        if s["pairs"]:
            rows.append([g.name, str(s["pairs"]), f"{s['min']:.2f}", f"{s['mean']:.2f}", f"{s['max']:.2f}"])
    return md_table(["pairs", "n", "min", "mean", "max"], rows)


def _cosine(vectors: dict[str, list[float]], a: str, b: str) -> float:
    from eval.vectors import cosine

    return cosine(vectors[a], vectors[b])


def _answers(case: Case, q: str) -> set[str]:
    return next(case.texts_of(x.answer) for x in case.questions if x.q == q)


def _stale(case: Case, q: str) -> set[str]:
    return next(case.texts_of(x.stale) for x in case.questions if x.q == q)


def metrics_json(m: Metrics) -> dict[str, Any]:
    data = asdict(m)
    for name, value in list(data.items()):
        if isinstance(value, dict) and set(value) == {"hits", "total"}:
            data[name] = {**value, "rate": value["hits"] / value["total"] if value["total"] else None}
    data["memories_per_fact"] = m.memories_per_fact
    for name in ("chat_calls", "embedding_calls", "tokens_in", "tokens_out"):
        data[f"{name}_per_session"] = m.per_session(getattr(m, name))
    return data


# -------------------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------------------


def default_threshold() -> float:
    from memproc.settings import Settings

    return float(Settings.model_fields["merge_similarity_threshold"].default)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Memory-quality harness over eval/cases (see eval/README.md)."
    )
    parser.add_argument("--mode", choices=MODES, default="naive")
    parser.add_argument(
        "--threshold", type=float, default=None, help="MERGE_SIMILARITY_THRESHOLD (default: the setting's)"
    )
    parser.add_argument("--no-sweep", action="store_true", help="skip the threshold sweep (naive mode)")
    parser.add_argument("--kind", action="append", choices=KINDS, help="only these kinds (repeatable)")
    parser.add_argument("--no-write", action="store_true", help="print only; write nothing to eval/results")
    args = parser.parse_args(argv)

    from tests.fake_openai import FakeOpenAI
    from tests.redis_server import RedisServer

    started = time.monotonic()
    threshold = default_threshold() if args.threshold is None else args.threshold
    cases = [c for c in load_cases() if not args.kind or c.kind in args.kind]
    vectors = load_vectors()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    server = RedisServer()
    # Handlers print to stdout as on Lambda (powertools even prints EMF metrics once 100 values have
    # piled up, POWERTOOLS_METRICS_DISABLED or not): stdout is for the table alone.
    try:
        with FakeOpenAI() as fake, contextlib.redirect_stdout(io.StringIO()):
            fake.record_requests = False

            def run(t: float, prefix: str) -> Metrics:
                runs = run_cases(
                    cases,
                    mode=args.mode,
                    threshold=t,
                    redis_url=server.url,
                    fake=fake,
                    vectors=vectors,
                    prefix=prefix,
                )
                return compute_metrics(runs, mode=args.mode, threshold=t)

            say(f"mode {args.mode}, threshold {threshold:g}: {len(cases)} cases")
            main_metrics = run(threshold, "eval")
            sweep: list[Metrics] = []
            if args.mode == "naive" and not args.no_sweep:
                for t in SWEEP:
                    sweep.append(main_metrics if t == threshold else run(t, f"sweep{t:.2f}"))
                    say(
                        f"sweep {t:.2f}: {_f(sweep[-1].memories_per_fact)} memories per fact, "
                        f"{sweep[-1].near_miss_merged} near-miss pairs merged"
                    )
    finally:
        server.stop()

    print(text_table(["metric", "value", "ideal"], [list(r) for r in figures_rows(main_metrics)]))
    if sweep:
        print()
        print(text_table(SWEEP_HEADERS, sweep_rows(sweep)))
    if not args.no_write:
        date = datetime.now(UTC).strftime("%Y-%m-%d")
        command = " ".join(["python -m eval.run", *(argv if argv is not None else sys.argv[1:])])
        meta = {
            "date": date,
            "command": "make eval" if command == MAKE_EVAL_COMMAND else command,
            "revision": _git_revision(),
            "seconds": time.monotonic() - started,
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        base = RESULTS_DIR / f"{date}-{args.mode}"
        base.with_suffix(".md").write_text(render_markdown(main_metrics, sweep, cases, vectors, meta))
        doc = {
            **meta,
            "embedding_model": MODEL,
            "dimensions": DIMENSIONS,
            "main": metrics_json(main_metrics),
            "sweep": [
                {k: v for k, v in metrics_json(s).items() if k != "details"} for s in sweep
            ],  # figures only
        }
        base.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
        say(f"wrote {base.relative_to(ROOT)}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
