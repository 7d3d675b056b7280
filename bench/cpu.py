"""Section cpu: the processor's CPU per processed session and its sessions/s at concurrency 64 with
a 200 ms fake LLM, against the ideal 64 / 0.2 s = 320/s (issue 13: <= 3 ms, >= 90 %).

One process is one GIL: at c CPU-ms per session it cannot pass 1000 / c sessions/s, whatever the
concurrency. The fake LLM runs in its own process (bench.common.FakeLLM) and Redis in its own, so
`time.process_time()` of this process over a drain, divided by the sessions it processed, is the
processor's CPU alone (all its threads, user + system).

``make profile`` (bench/profile.py) says where that CPU goes.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.common import (
    Config,
    FakeLLM,
    SectionResult,
    Target,
    configure_env,
    fresh_redis,
    num,
    redis_cpu_seconds,
    repeat_summary,
    say,
    table,
)
from bench.process import VECTORSTORES, enqueue, session_pool, steady_rate, timed_processor

CONCURRENCY = 64
LATENCY = 0.2  # chat completion; embeddings answer at once (configuration (i) of bench.process)
IDEAL = CONCURRENCY / LATENCY
CPU_TARGET_MS = 3.0
EFFICIENCY_TARGET = 0.9


def reference_ms() -> float:
    """CPU ms of a fixed pure-Python loop (a million additions), measured beside every figure: on a
    shared or throttled machine everything is slower by about the same factor, so CPU per session
    is compared across runs in units of it."""
    started = time.process_time()
    total = 0
    for i in range(1_000_000):
        total += i
    return (time.process_time() - started) * 1000


def sessions_per_run(cfg: Config) -> int:
    """10 waves of 64 (25 FULL): at the ideal rate 2 s of drain, ramp and tail a small part of it."""
    return int(cfg.pick(10, 25)) * CONCURRENCY


class Bench:
    """A fresh Redis, the fake LLM in its own process and the real processor, warmed up."""

    def __init__(self, server: Any, fake: FakeLLM, seed: int) -> None:
        configure_env(server.url, fake.base_url, EMBEDDING_DIMENSIONS="1536", LLM_TIMEOUT_SECONDS="30")
        from memproc.dal.connection import get_store
        from memproc.settings import get_settings

        self.server, self.fake = server, fake
        self.settings = get_settings()
        self.r = get_store()
        self.admin = server.client()
        self.chats = session_pool(seed)
        self.proc = timed_processor(self.settings)
        # Open the HTTP connections and Redis pools, load the function library, find the index.
        fake.configure(0.05, 0.0)
        enqueue(self.r, self.settings, self.chats, 2 * CONCURRENCY, "warm")
        self.proc.drain(concurrency=CONCURRENCY, batch_size=CONCURRENCY)
        fake.configure(LATENCY, 0.0)

    def fill(self, n: int, tag: str) -> None:
        """A flushed store with n queued sessions."""
        self.admin.flushall()
        enqueue(self.r, self.settings, self.chats, n, tag, vectorstores=VECTORSTORES)

    def drain(self) -> dict[str, Any]:
        """Drain the queue at concurrency 64; the figures per processed session."""
        self.proc.finished.clear()
        f0, rc0 = self.fake.stats(), redis_cpu_seconds(self.admin)
        cpu0, t0 = time.process_time(), time.monotonic()
        report = self.proc.drain(concurrency=CONCURRENCY, batch_size=CONCURRENCY)
        cpu1, wall = time.process_time(), time.monotonic() - t0
        f1, rc1 = self.fake.stats(), redis_cpu_seconds(self.admin)
        done = max(report.processed, 1)
        return {
            "load": os.getloadavg()[0],
            "sessions": report.processed,
            "failed": report.retried + report.dead + report.stale,
            "wall": wall,
            "throughput": report.processed / wall,
            "steady": steady_rate(self.proc.finished),
            "cpu_ms": (cpu1 - cpu0) * 1000 / done,
            "cpu_ms_fake_llm": (f1["cpu_seconds"] - f0["cpu_seconds"]) * 1000 / done,
            "cpu_ms_redis": (rc1 - rc0) * 1000 / done,
            "chat_calls": (f1["chat_calls"] - f0["chat_calls"]) / done,
            "embedding_calls": (f1["embedding_calls"] - f0["embedding_calls"]) / done,
            "memories_created": report.memories_created / done,
        }

    def measure(self, n: int, tag: str) -> dict[str, Any]:
        self.fill(n, tag)
        return {**self.drain(), "reference_ms": reference_ms()}


def summarise(reps: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": reps, "sessions": reps[0]["sessions"]}
    for key in ("throughput", "steady", "cpu_ms", "cpu_ms_fake_llm", "cpu_ms_redis", "reference_ms", "load"):
        out[key] = repeat_summary([r[key] for r in reps])
    for key in ("chat_calls", "embedding_calls", "memories_created"):
        out[key] = repeat_summary([r[key] for r in reps])["median"]
    out["failed"] = sum(r["failed"] for r in reps)
    out["efficiency"] = out["throughput"]["median"] / IDEAL
    out["steady_efficiency"] = out["steady"]["median"] / IDEAL
    return out


def line(m: dict[str, Any]) -> str:
    cpu, fake, redis = (m[k]["median"] for k in ("cpu_ms", "cpu_ms_fake_llm", "cpu_ms_redis"))
    rate, share, steady = m["throughput"]["median"], m["efficiency"] * 100, m["steady_efficiency"] * 100
    return (
        f"c={CONCURRENCY}, LLM {LATENCY * 1000:.0f} ms: CPU {cpu:.2f} ms/session in the processor "
        f"(fake LLM {fake:.2f}, Redis {redis:.2f}); {num(rate)} sessions/s = {share:.0f}% of ideal "
        f"{num(IDEAL, 0)}/s (steady {steady:.0f}%); reference loop {m['reference_ms']['median']:.0f} ms, "
        f"load {m['load']['median']:.1f}"
    )


def run(cfg: Config) -> SectionResult:
    started = time.monotonic()
    n = sessions_per_run(cfg)
    with fresh_redis() as server, FakeLLM() as fake:
        bench = Bench(server, fake, cfg.seed)
        reps = [bench.measure(n, f"cpu{rep}") for rep in range(cfg.repeats)]
    m = summarise(reps)
    say(f"  cpu: {line(m)}")
    cpu, fake, redis = (m[k]["median"] for k in ("cpu_ms", "cpu_ms_fake_llm", "cpu_ms_redis"))
    total = cpu + fake + redis
    targets = [
        Target(
            f"processor CPU per session at concurrency {CONCURRENCY}, LLM {LATENCY * 1000:.0f} ms",
            f"<= {CPU_TARGET_MS:g} ms",
            f"{cpu:.2f} ms",
            cpu <= CPU_TARGET_MS,
            f"fake LLM {fake:.2f} ms, Redis {redis:.2f} ms per session in their own processes; reference "
            f"loop {m['reference_ms']['median']:.0f} ms",
            issue=13,
        ),
        Target(
            f"one processor at concurrency {CONCURRENCY}, LLM {LATENCY * 1000:.0f} ms",
            f">= {EFFICIENCY_TARGET * 100:.0f}% of {CONCURRENCY}/{LATENCY:g} s = {IDEAL:.0f} sessions/s",
            f"{num(m['throughput']['median'])} sessions/s = {m['efficiency'] * 100:.0f}%",
            m["efficiency"] >= EFFICIENCY_TARGET,
            f"steady {m['steady_efficiency'] * 100:.0f}%; caps: the GIL ~{1000 / max(cpu, 0.01):.0f}/s, "
            f"2 cores for processor + fake LLM + Redis ~{2000 / max(total, 0.01):.0f}/s; load "
            f"{m['load']['median']:.1f}",
            issue=13,
        ),
    ]
    headers = ["repeat", "sessions", "sessions/s", "steady /s", "CPU ms proc/fake/redis", "failed"]
    body = [
        [
            i + 1,
            r["sessions"],
            num(r["throughput"]),
            num(r["steady"]),
            f"{r['cpu_ms']:.2f} / {r['cpu_ms_fake_llm']:.2f} / {r['cpu_ms_redis']:.2f}",
            r["failed"],
        ]
        for i, r in enumerate(reps)
    ]
    markdown = "\n".join(
        [
            f"The real processor (`build_processor` + `drain(concurrency={CONCURRENCY})`, the real `openai` "
            f"client over HTTP) empties a queue of {n} realistic chats over {VECTORSTORES} vectorstores; the "
            f"fake LLM answers chat completions after {LATENCY * 1000:.0f} ms and embeddings at once. CPU is "
            "`time.process_time()` of the processor's process over the drain divided by the sessions; the "
            "fake LLM and Redis run in processes of their own (their CPU is shown apart). `make profile` "
            "samples the same drain with py-spy and lists the top functions.",
            "",
            line(m),
            "",
            table(headers, body),
            "",
            f"**Where the limit is.** One process's threads share one GIL: at {cpu:.1f} ms per session it "
            f"cannot pass ~{1000 / max(cpu, 0.01):.0f} sessions/s, and the whole machine, running the "
            f"processor ({cpu:.1f} ms), the fake LLM ({fake:.1f} ms) and Redis ({redis:.1f} ms), cannot pass "
            f"~{2000 / max(total, 0.01):.0f}/s on its 2 cores, against the ideal {IDEAL:.0f}/s. Below those "
            f"caps, a load average of {m['load']['median']:.1f} (runnable threads of every process on the "
            "machine, this one's 64 workers included) leaves each process less than its share of a core. "
            "`make profile` shows where the processor's CPU goes.",
        ]
    )
    return SectionResult(
        "cpu", "CPU per session (issue 13)", markdown, m, [], targets, time.monotonic() - started
    )
