"""make eval: replay the scripted cases through the real pipeline and measure what memory ends up as.

Two modes on the same cases (see eval/README.md): ``reconcile``, the model answers the scripted
operations against the memories the prompt shows (eval.scripted.reconcile_reply); ``naive``, a model
that ignores them (new memories only), so only the pipeline's backstop decides, swept over
MERGE_SIMILARITY_THRESHOLD. Each is compared with the committed figures of the old pipeline.

    python -m eval.run                       # what `make eval` runs: both modes, the sweep, results
    python -m eval.run --mode reconcile --no-write
    python -m eval.run --mode naive --no-sweep --threshold 0.90 --kind near_miss
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from eval.cases import KINDS, Case, load_cases
from eval.compare import comparison_rows, done_when, load_before
from eval.harness import run_cases
from eval.metrics import Metrics, compute_metrics, metrics_json
from eval.report import (
    RESULTS_DIR,
    ROOT,
    SWEEP_HEADERS,
    budget_section,
    git_revision,
    render_markdown,
    sweep_rows,
    text_table,
)
from eval.vectors import DIMENSIONS, MODEL, load_vectors

SWEEP = (0.90, 0.92, 0.95, 0.97, 0.99)
MAKE_EVAL_COMMAND = "python -m eval.run"  # what the Makefile's eval target runs
RESULT_NAMES = {"reconcile": "reconcile", "naive": "naive-backstop"}


def default_threshold() -> float:
    from memproc.settings import Settings

    return float(Settings.model_fields["merge_similarity_threshold"].default)


def _figures(m: Metrics) -> dict[str, Any]:
    return {k: v for k, v in metrics_json(m).items() if k != "details"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Memory-quality harness over eval/cases (see eval/README.md)."
    )
    parser.add_argument("--mode", choices=("both", "reconcile", "naive"), default="both")
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
    modes = ["reconcile", "naive"] if args.mode == "both" else [args.mode]
    before = load_before(cases)

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    results: dict[str, Metrics] = {}
    sweep: list[Metrics] = []
    server = RedisServer()
    # Handlers print to stdout as on Lambda (powertools even prints EMF metrics once 100 values have
    # piled up, POWERTOOLS_METRICS_DISABLED or not): stdout is for the tables alone.
    try:
        with FakeOpenAI() as fake, contextlib.redirect_stdout(io.StringIO()):
            fake.record_requests = False

            def run(mode: str, t: float, prefix: str, chosen: list[Case]) -> Metrics:
                runs = run_cases(
                    chosen,
                    mode=mode,
                    threshold=t,
                    redis_url=server.url,
                    fake=fake,
                    vectors=vectors,
                    prefix=prefix,
                )
                return compute_metrics(runs, mode=mode, threshold=t)

            for mode in modes:
                say(f"mode {mode}, threshold {threshold:g}: {len(cases)} cases")
                results[mode] = run(mode, threshold, f"eval-{mode}", cases)
            if "naive" in modes and not args.no_sweep:
                for t in SWEEP:
                    sweep.append(
                        results["naive"] if t == threshold else run("naive", t, f"sweep{t:.2f}", cases)
                    )
                    say(f"sweep {t:.2f}: {sweep[-1].memories_per_fact} memories per fact")
    finally:
        server.stop()

    ordered = [results[m] for m in modes]
    print(text_table(*comparison_rows(before, ordered)))
    if "reconcile" in results:
        print()
        print(text_table(["done-when", "figure", ""], done_when(results["reconcile"])))
        if results["reconcile"].budget:
            print()
            print("\n".join(budget_section(results["reconcile"].budget)[4:]))
    if sweep:
        print()
        print(text_table(SWEEP_HEADERS, sweep_rows(sweep)))
    if not args.no_write:
        date = datetime.now(UTC).strftime("%Y-%m-%d")
        command = " ".join(["python -m eval.run", *(argv if argv is not None else sys.argv[1:])])
        meta = {
            "date": date,
            "command": "make eval" if command == MAKE_EVAL_COMMAND else command,
            "revision": git_revision(),
            "seconds": time.monotonic() - started,
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        for mode, m in results.items():
            base = RESULTS_DIR / f"{date}-{RESULT_NAMES[mode]}"
            others = [x for x in ordered if x is not m]
            mode_sweep = sweep if mode == "naive" else []
            base.with_suffix(".md").write_text(
                render_markdown(m, mode_sweep, cases, vectors, meta, before, others)
            )
            doc = {
                **meta,
                "mode": mode,
                "embedding_model": MODEL,
                "dimensions": DIMENSIONS,
                "before": {k: v for k, v in before.items() if k != "details"},
                "main": metrics_json(m),
                "sweep": [_figures(s) for s in mode_sweep],  # figures only
            }
            base.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
            say(f"wrote {base.relative_to(ROOT)}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
