"""``python -m bench.run [--full] [--only a,b]``: run the benchmark sections and write the report.

Writes ``bench/results/<YYYY-MM-DD>/`` (quick) or ``bench/results/<YYYY-MM-DD>-full/`` (``--full``):
``results.md`` (headline targets, machine facts, parameters, one part per section), the PNG plots
and ``results.json``. ``--only`` runs some sections and merges them into that day's existing
results, which is handy while working on one section; a full run replaces everything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    Config,
    SectionResult,
    Target,
    fresh_redis,
    machine_facts,
    say,
    silence_stdout,
    table,
)

SECTIONS = ("ingest", "process", "cpu", "query", "coldstart", "storage", "fairness", "backends", "scale")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _section_json(res: SectionResult) -> dict[str, Any]:
    return {
        "title": res.title,
        "seconds": round(res.seconds, 1),
        "markdown": res.markdown,
        "plots": res.plots,
        "targets": [t.__dict__ for t in res.targets],
        "data": res.data,
    }


def _targets_table(sections: dict[str, dict[str, Any]]) -> str:
    rows = []
    for key in SECTIONS:
        for t in (sections.get(key) or {}).get("targets", []):
            verdict = {True: "**met**", False: "**missed**", None: "reported"}[t["met"]]
            rows.append(
                [str(t.get("issue", 5)), t["name"], t["goal"], t["value"], verdict, t.get("note", "")]
            )
    return (
        table(["issue", "target", "goal", "this run", "verdict", "note"], rows)
        if rows
        else "(no targets measured)"
    )


def _parameters(meta: dict[str, Any], sections: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The sizes each section ran with, read back from its data."""
    from bench import cpu, ingest, process, query

    p = meta["parameters"]
    rows = [
        ["mode", str(p["mode"])],
        ["repeats of every measurement", str(p["repeats"])],
        ["seed", str(p["seed"])],
    ]

    def data(key: str) -> dict[str, Any]:
        return dict((sections.get(key) or {}).get("data") or {})

    if d := data("ingest"):
        rows.append(
            [
                "ingestion",
                f"clients {', '.join(map(str, ingest.CLIENTS))}; {d['requests_per_repeat']:,} "
                f"requests or {d['max_seconds_per_round']:g} s per level and repeat; baseline at chat "
                f"latency {' and '.join(f'{x:g} s' for x in ingest.BASELINE_LATENCIES)}, embeddings 0 ms",
            ]
        )
    if d := data("process"):
        spr = ", ".join(f"{v} at c={k}" for k, v in d["sessions_per_run"].items())
        rows.append(
            [
                "processing",
                f"concurrency {', '.join(map(str, process.CONCURRENCY))}; fake LLM 200 ms; "
                f"sessions per run {spr}; {d['vectorstores']} vectorstores; 1536 dimensions",
            ]
        )
    if d := data("cpu"):
        rows.append(
            [
                "CPU per session",
                f"concurrency {cpu.CONCURRENCY}; fake LLM {cpu.LATENCY * 1000:.0f} ms (embeddings 0 ms); "
                f"{d['sessions']} sessions per drain; {process.VECTORSTORES} vectorstores",
            ]
        )
    if d := data("query"):
        rows.append(
            [
                "queries",
                f"other-vectorstore keys {', '.join(f'{k:,}' for k in query.KEYSPACES)}; "
                f"queried vectorstore 1,000 and {d['big_memories']:,} memories; {d['dimensions']} "
                f"dimensions; {d['calls_per_repeat']} calls per endpoint and repeat",
            ]
        )
    if d := data("coldstart"):
        rows.append(
            [
                "cold start",
                f"{d['runs']} imports, {d['nocache_runs']} without bytecode cache, "
                f"{d['invoke_runs']} import + first invocation, per function",
            ]
        )
    if d := data("storage"):
        rows.append(
            [
                "storage",
                f"{d['study']['n']} chats per codec bucket, {d['redis']['n']} sessions per "
                "size stored in Redis",
            ]
        )
    if d := data("fairness"):
        rows.append(
            [
                "fairness",
                f"flood {d['flood']:,} sessions, {d['small']} x {d['per_small']} small; "
                f"concurrency {d['concurrency']}; fake LLM {d['latency'] * 1000:.0f} ms",
            ]
        )
    if d := data("backends"):
        b = d["backends"]
        rows.append(
            [
                "backends",
                ", ".join(f"{n} on {v['engine']}" for n, v in b.items())
                + f"; processing {next(iter(b.values()))['processing']['sessions_per_run']} sessions a run; "
                f"queries up to {max(v['queries']['big_memories'] for v in b.values()):,} memories and "
                f"{max(v['queries']['other_vectorstores'] for v in b.values()):,} other vectorstores",
            ]
        )
    if d := data("scale"):
        rows.append(
            [
                "scale",
                f"{d['sessions']:,} sessions over {d['vectorstores']} vectorstores; "
                f"{', '.join(map(str, d['processors']))} processes x concurrency {d['concurrency']}; fake "
                f"LLM {d['latency']:g} s; limit {d['limit']} chat requests per {d['window']:g} s",
            ]
        )
    return rows


def write_report(out: Path, meta: dict[str, Any], sections: dict[str, dict[str, Any]]) -> Path:
    """results.md and results.json from the collected sections."""
    (out / "results.json").write_text(json.dumps(_clean({"meta": meta, "sections": sections}), indent=1))
    m = meta["machine"]
    lines = [
        f"# memproc benchmarks - {meta['date']} ({'FULL' if meta['full'] else 'quick'})",
        "",
        f"Reproduce: `{meta['command']}` (from a fresh clone, `make bench` provisions Redis 8, Redis Stack "
        "and the venv). "
        f"Run time: {meta['duration_seconds'] / 60:.1f} min. Every figure is repeated (median and p95/p99 "
        "over the repeats' pooled samples, or the median of per-repeat figures with their range); nothing "
        "here is asserted by the test suite. The machine may be shared: each section notes the load average "
        "around it (2 cores; a load well above the benchmark's own means other work competed for them).",
        "",
        "## Headline: the issues' targets",
        "",
        _targets_table(sections),
        "",
        "## Machine and software",
        "",
        table(
            ["", ""],
            [
                ["CPU", f"{m.get('cpu_model')} - {m.get('cores')} cores"],
                ["RAM", f"{m.get('ram_gib')} GiB"],
                ["OS", m.get("os")],
                ["Python", m.get("python")],
                ["Redis", m.get("redis", "?")],
                ["packages", ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())],
                [
                    "git commit",
                    f"{m.get('git_commit', '?')[:12]}"
                    + (
                        f" (+{m['git_dirty_paths']} uncommitted paths in the checkout)"
                        if m.get("git_dirty_paths")
                        else ""
                    ),
                ],
            ],
        ),
        "",
        "Everything runs on this one machine over loopback: Redis (a fresh `redis-server` per section, no "
        "persistence), the fake OpenAI-compatible server (`tests/fake_openai.py`, in its own process, "
        "latency injected per request) and the memproc code under test, sharing the cores.",
        "",
        "## Parameters",
        "",
        table(["parameter", "value"], _parameters(meta, sections)),
        "",
    ]
    for key in SECTIONS:
        s = sections.get(key)
        if not s:
            continue
        load = s.get("load_average")
        loadtxt = f"; 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after" if load else ""
        lines += [
            f"## {s['title']}",
            "",
            f"_Section time: {s['seconds']:.0f} s{loadtxt}._",
            "",
            s["markdown"],
            "",
        ]
        lines += [f"![{p}]({p})" for p in s.get("plots", [])]
        lines.append("")
    path = out / "results.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="larger sizes (make bench FULL=1)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, help="output directory (default bench/results/<date>[-full])")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every measurement (default 3)")
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    selected = only or list(SECTIONS)

    today = dt.date.today().isoformat()
    out = args.out or ROOT / "bench" / "results" / (today + ("-full" if args.full else ""))
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config(full=args.full, out=out, repeats=max(1, args.repeats))

    silence_stdout()  # handlers log JSON lines and EMF metrics to stdout, as on Lambda
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    started = time.monotonic()
    say(f"memproc benchmarks ({'FULL' if cfg.full else 'quick'}): {', '.join(selected)} -> {out}")

    previous: dict[str, Any] = {}
    if only and (out / "results.json").exists():
        previous = json.loads((out / "results.json").read_text()).get("sections", {})
    sections: dict[str, dict[str, Any]] = dict(previous)
    with fresh_redis() as server:
        facts = machine_facts(server.client())
    command = "make bench" + (" FULL=1" if cfg.full else "")
    if only or args.repeats != 3:  # a partial run names itself
        command = ".venv/bin/python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    meta: dict[str, Any] = {
        "date": today,
        "full": cfg.full,
        "command": command,
        "machine": facts,
        "duration_seconds": 0.0,
        "sections_run": selected,
        "parameters": {
            "repeats": cfg.repeats,
            "seed": cfg.seed,
            "mode": "FULL" if cfg.full else "quick",
        },
    }
    failed = []
    for key in selected:
        say(f"== section {key}")
        t0 = time.monotonic()
        load0 = os.getloadavg()[0]
        try:
            module = importlib.import_module(f"bench.{key}")
            res: SectionResult = module.run(cfg)
        except Exception:
            failed.append(key)
            tb = traceback.format_exc()
            say(f"section {key} FAILED:\n{tb}")
            res = SectionResult(
                key,
                f"{key}: failed",
                f"The section raised:\n\n```\n{tb}\n```",
                {},
                [],
                [Target(f"{key} section", "runs", "failed", False)],
            )
        res.seconds = time.monotonic() - t0
        sections[key] = _section_json(res)
        sections[key]["load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        meta["duration_seconds"] = time.monotonic() - started
        path = write_report(out, meta, sections)
        say(f"== section {key} done in {res.seconds:.0f} s")
    meta["duration_seconds"] = time.monotonic() - started
    path = write_report(out, meta, sections)
    say(f"done in {meta['duration_seconds'] / 60:.1f} min: {path}")
    for key in SECTIONS:
        for t in (sections.get(key) or {}).get("targets", []):
            mark = {True: "met   ", False: "MISSED", None: "report"}[t["met"]]
            say(f"  [{mark}] {t['name']}: {t['value']} (goal {t['goal']}) {t.get('note', '')}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
