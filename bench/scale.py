"""Section 8, scale: a backlog drained by 1, 4 and 8 processor processes (local stand-ins for
fanned-out Lambda invocations) within one shared LLM rate limit; sessions/s against the ideal
min(processors x concurrency / latency, limit), and the limiter's accuracy: the most chat requests
the fake server saw in any window, against the limit."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    Config,
    FakeLLM,
    SectionResult,
    Target,
    configure_env,
    fresh_redis,
    num,
    say,
    table,
)
from bench.process import enqueue, session_pool

PROCESSORS = (1, 4, 8)
CONCURRENCY = 8
LATENCY = 1.0  # chat completions; embeddings answer at once
# The shared limit: chat requests per window. A 10 s window instead of OpenAI's 60 s, so that even
# the quick run spans several windows (the algorithm does not depend on the window's length).
WINDOW = 10.0
LIMIT = 200  # = 20 requests/s = 1,200 per minute
# LLM_RATE_MARGIN_SECONDS: the limiter counts 10.5 s windows. Generous for loopback, but on 2
# shared cores a process may wait that long for a CPU between its booking and its request.
MARGIN = 0.5
VECTORSTORES = 500


def _limit_rate() -> float:
    return LIMIT / WINDOW


def _window_counts(times: list[float], window: float) -> list[int]:
    """Requests in each window of the run that follows a request, (t - window, t] for every t."""
    ordered, first, counts = sorted(times), 0, []
    for last, t in enumerate(ordered):
        while ordered[first] <= t - window:
            first += 1
        counts.append(last - first + 1)
    return counts


def _steady_rate(done: list[float]) -> float:
    """Sessions/s between the 10th and 90th percentile completions (no ramp-up or drain tail).
    The limiter paces requests evenly, so any such span measures its rate."""
    if len(done) < 10:
        return math.nan
    ordered = sorted(done)
    lo, hi = int(len(ordered) * 0.1), int(len(ordered) * 0.9)
    return (hi - lo) / (ordered[hi] - ordered[lo]) if ordered[hi] > ordered[lo] else math.nan


def _processor(env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """`memproc process --run-once`: one drain, as a fanned-out invocation would run it."""
    with log.open("w") as err:  # its HTTP log lines; a pipe left unread would block it
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memproc_local.cli",
                "process",
                "--run-once",
                "--concurrency",
                str(CONCURRENCY),
                "--batch-size",
                str(CONCURRENCY),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def _point(ctx: dict[str, Any], n: int, processors: int) -> dict[str, Any]:
    """Queue n sessions, drain them with `processors` processes; what the run and the fake saw."""
    admin, r, settings, fake, env, chats, logs = (
        ctx[k] for k in ("admin", "r", "settings", "fake", "env", "chats", "logs")
    )
    admin.flushall()
    enqueue(r, settings, chats, n, f"p{processors}", vectorstores=VECTORSTORES)
    fake.reset()
    fake.limit_rate(LIMIT, WINDOW, "chat")  # the provider enforces the same limit
    t0 = time.monotonic()
    workers = [_processor(env, logs / f"p{processors}-{i}.log") for i in range(processors)]
    summaries = []
    for w in workers:
        out, _ = w.communicate()
        if w.returncode != 0:
            raise RuntimeError(f"a processor exited with {w.returncode}; see {logs}")
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.monotonic() - t0
    seen = fake.arrivals()
    rows = _raw_records(admin)
    done = [float(p) for s, p, _ in rows if s == "processed" and p]
    claimed = [float(c) for _, _, c in rows if c]
    statuses: dict[str, int] = {}
    for s, _, _ in rows:
        statuses[s] = statuses.get(s, 0) + 1
    ideal = min(processors * CONCURRENCY / LATENCY, _limit_rate())
    counts = _window_counts(seen["chat"], WINDOW)
    span = max(done) - min(claimed) if done and claimed else math.nan
    point = {
        "processors": processors,
        "sessions": n,
        "processed": len(done),
        "statuses": statuses,
        "dead": int(admin.zcard("{RAW_MEMORY_QUEUE}:dead")),
        "left_in_queue": int(admin.zcard("RAW_MEMORY_QUEUE")),
        "wall": wall,
        "span": span,
        "overall": len(done) / span if span > 0 else math.nan,
        "steady": _steady_rate(done),
        "ideal": ideal,
        "chat_requests": len(seen["chat"]),
        "embedding_requests": len(seen["embeddings"]),
        "max_in_window": max(counts, default=0),
        "throttled": seen["throttled"],
        "rate_limit_waits": sum(s["rate_limit_waits"] for s in summaries),
        "rate_limit_wait_seconds": sum(s["rate_limit_wait_seconds"] for s in summaries),
        "llm_throttled": sum(s["llm_throttled"] for s in summaries),
        "retried": sum(s["retried"] for s in summaries),
        "per_window": _per_window_series(seen["chat"]),
    }
    point["efficiency"] = point["steady"] / ideal
    say(
        f"  scale: {processors} processor(s) x {CONCURRENCY}: {num(point['steady'])} sessions/s steady "
        f"({point['efficiency'] * 100:.0f}% of ideal {num(ideal)}/s), {num(point['overall'])}/s overall; "
        f"max {point['max_in_window']} chat requests in any {WINDOW:g} s window (limit {LIMIT}), "
        f"{point['throttled']} refused by the fake; {point['processed']}/{n} processed, "
        f"{point['dead']} dead"
    )
    return point


def _raw_records(admin: Any) -> list[tuple[str, str, str]]:
    """(status, processed_at, claimed_at) of every submission, read through the vectorstores'
    raw indexes."""
    from memproc.keys import VectorstoreKeys

    pipe = admin.pipeline(transaction=False)
    for i in range(VECTORSTORES):
        pipe.zrange(VectorstoreKeys(f"user{i:03d}").raw_index, 0, -1)
    ids = pipe.execute()
    for i, raw_ids in enumerate(ids):
        vk = VectorstoreKeys(f"user{i:03d}")
        for raw_id in raw_ids:
            pipe.hmget(vk.raw(raw_id), "status", "processed_at", "claimed_at")
    return [tuple(row) for row in pipe.execute()]


def _per_window_series(times: list[float]) -> list[tuple[float, int]]:
    """(seconds since the first request, requests in the window ending then), sampled every 0.5 s."""
    if not times:
        return []
    ordered, origin = sorted(times), min(times)
    out, t, first, last = [], origin, 0, 0
    while t <= ordered[-1] + 0.5:
        while last < len(ordered) and ordered[last] <= t:
            last += 1
        while first < last and ordered[first] <= t - WINDOW:
            first += 1
        out.append((round(t - origin, 2), last - first))
        t += 0.5
    return out


def run(cfg: Config) -> SectionResult:
    started = time.monotonic()
    n = cfg.pick(1000, 5000)
    data: dict[str, Any] = {
        "sessions": n,
        "processors": list(PROCESSORS),
        "concurrency": CONCURRENCY,
        "latency": LATENCY,
        "window": WINDOW,
        "limit": LIMIT,
        "margin": MARGIN,
        "vectorstores": VECTORSTORES,
        "points": {},
    }
    chats = session_pool(cfg.seed, 300)
    with fresh_redis() as server, FakeLLM(LATENCY, 0.0) as fake, tempfile.TemporaryDirectory() as tmp:
        configure_env(server.url, fake.base_url, EMBEDDING_DIMENSIONS="1536", LLM_TIMEOUT_SECONDS="30")
        from memproc.dal.connection import get_store
        from memproc.settings import get_settings

        settings, r, admin = get_settings(), get_store(), server.client()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "POWERTOOLS_METRICS_DISABLED": "true",
            "LLM_REQUESTS_PER_MINUTE": str(LIMIT),
            "LLM_RATE_WINDOW_SECONDS": str(WINDOW),
            "LLM_RATE_MARGIN_SECONDS": str(MARGIN),
        }
        ctx = {"admin": admin, "r": r, "settings": settings, "fake": fake, "env": env, "chats": chats}
        ctx["logs"] = Path(tmp)
        for p in PROCESSORS:
            data["points"][str(p)] = _point(ctx, n, p)
    plots = [_plot(cfg, data)]
    targets = _targets(data)
    return SectionResult(
        "scale",
        "8. Scale: processors sharing one rate limit",
        _markdown(data),
        data,
        plots,
        targets,
        time.monotonic() - started,
    )


def _targets(data: dict[str, Any]) -> list[Target]:
    """Issue 13: with 4 processors and a shared limit, within 10% of the limit and never above it
    (the most requests the fake server saw in any window, and none it had to refuse)."""
    four, n = data["points"]["4"], data["sessions"]
    within = four["steady"] >= 0.9 * _limit_rate()
    never_above = four["max_in_window"] <= LIMIT and four["throttled"] == 0
    others = "; ".join(
        f"{pt['processors']} processor(s): {num(pt['steady'])}/s = {pt['efficiency'] * 100:.0f}% of ideal "
        f"{num(pt['ideal'])}/s, max {pt['max_in_window']} per window, {pt['throttled']} refused"
        for pt in data["points"].values()
        if pt["processors"] != 4
    )
    return [
        Target(
            f"4 processors under a shared limit of {LIMIT} chat requests / {WINDOW:g} s "
            f"(= {_limit_rate():g}/s), fake LLM {LATENCY:g} s, {n:,} sessions",
            "within 10% of the limit, never above it",
            f"{num(four['steady'])} sessions/s = {four['steady'] / _limit_rate() * 100:.0f}% of the limit; "
            f"max {four['max_in_window']} requests in any window, {four['throttled']} refused",
            within and never_above,
            f"{others}. The limiter's window is {MARGIN:g} s longer (LLM_RATE_MARGIN_SECONDS): at most "
            f"{WINDOW / (WINDOW + MARGIN) * 100:.0f}% of the limit.",
            issue=13,
        )
    ]


def _markdown(data: dict[str, Any]) -> str:
    rows = []
    for pt in data["points"].values():
        rows.append(
            [
                pt["processors"],
                f"{pt['processed']:,} / {pt['sessions']:,}",
                num(pt["ideal"]),
                f"**{num(pt['steady'])}**",
                f"{pt['efficiency'] * 100:.0f}%",
                num(pt["overall"]),
                f"{pt['max_in_window']} / {LIMIT}",
                pt["throttled"],
                f"{pt['rate_limit_waits']:,} ({pt['rate_limit_wait_seconds']:,.0f} s)",
                pt["dead"],
                f"{pt['chat_requests']:,} / {pt['embedding_requests']:,}",
                f"{pt['wall']:.0f}",
            ]
        )
    headers = [
        "processors",
        "processed",
        "ideal /s",
        "steady sessions/s",
        "of ideal",
        "overall /s",
        "max chat requests in a window / limit",
        "429s from the fake",
        "waits for the limit (total)",
        "dead",
        "requests chat / embeddings",
        "wall s",
    ]
    return "\n".join(
        [
            f"{data['sessions']:,} sessions (realistic chats, as in section 2) queued across "
            f"{data['vectorstores']} vectorstores, then drained by 1, 4 or 8 `memproc process --run-once "
            f"--concurrency {data['concurrency']}` processes started together (local stand-ins for "
            "fanned-out Lambda invocations, each with its own Redis pools and openai client), all against "
            "one Redis and the fake LLM in its own process (chat completions 1 s, embeddings at once). A "
            "vectorstore is one user's memory and its sessions are processed one at a time "
            "(`VECTORSTORE_CONCURRENCY=1`): spread over many vectorstores, the backlog never lacks "
            "sessions that may run in parallel.",
            "",
            f"The shared limit: `LLM_REQUESTS_PER_MINUTE={data['limit']}` per "
            f"`LLM_RATE_WINDOW_SECONDS={data['window']:g}` (= {_limit_rate():g} chat requests/s; a "
            f"{data['window']:g} s window so that even the quick run spans several windows; the limiter "
            "is the same at 60 s), "
            f"`LLM_RATE_MARGIN_SECONDS={data['margin']:g}`. The fake server enforces the same limit "
            "itself (429 with Retry-After past it) and records when each request arrived: the limiter's "
            "accuracy is the most chat requests it saw in any window of "
            f"{data['window']:g} s, (t - {data['window']:g} s, t] for every arrival t. One chat "
            "completion per session, so the limit is also "
            f"{_limit_rate():g} sessions/s; ideal = min(processors x {data['concurrency']} / "
            f"{data['latency']:g} s, {_limit_rate():g}/s).",
            "",
            table(headers, rows),
            "",
            "Steady = sessions/s between the 10th and 90th percentile completions (the limiter paces "
            "requests one per window / limit, so any such span measures its rate). Overall = processed "
            "/ (last completion - first claim), both in Redis time, ramp-up and tail included. Wall "
            "includes starting the processes (Python and openai imports, a few seconds for 8 on 2 cores).",
        ]
    )


def _plot(cfg: Config, data: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    points = list(data["points"].values())
    xs = [pt["processors"] for pt in points]
    left.plot(xs, [pt["ideal"] for pt in points], "--", color="C0", alpha=0.6, label="ideal")
    left.plot(xs, [pt["steady"] for pt in points], "o-", color="C0", label="measured (steady)")
    left.axhline(_limit_rate(), color="C3", linestyle=":", label=f"limit {_limit_rate():g}/s")
    left.set_xticks(xs)
    left.set_xlabel("processor processes (concurrency 8 each)")
    left.set_ylabel("sessions / s")
    left.set_title(f"Throughput, fake LLM {data['latency']:g} s")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    for pt, color in zip(points, ("C0", "C1", "C2"), strict=False):
        series = pt["per_window"]
        label = f"{pt['processors']} proc."
        right.plot([t for t, _ in series], [c for _, c in series], color=color, label=label)
    right.axhline(data["limit"], color="C3", linestyle=":", label=f"limit {data['limit']}")
    right.set_xlabel("seconds since the first request")
    right.set_ylabel(f"chat requests in the last {data['window']:g} s")
    right.set_title("The fake server's count per window")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    path = cfg.out / "scale.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name
