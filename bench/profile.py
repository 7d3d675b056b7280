"""``make profile`` (``python -m bench.profile DIR``): where the processor's CPU per session goes.

Three views of the drain bench.cpu measures (concurrency 64, fake LLM 200 ms, the fake and Redis
in processes of their own), written to ``DIR/profile.md``:

1. CPU ms per session and sessions/s of the drain (``time.process_time()`` over it), as bench.cpu.
2. The same sessions one at a time on this thread (fake LLM at 0 ms, no worker threads), under
   cProfile with a CPU clock: what each step of the pipeline costs. Deterministic profiling inflates
   code that makes many small calls, so the shares are indicative; the unprofiled CPU per session
   is measured first. The difference from (1) is what 64 threads add (GIL hand-offs, locks).
3. py-spy attached to this process for one more drain at concurrency 64 (200 Hz, the thread holding
   the GIL): collapsed stacks in ``DIR/stacks.txt`` (speedscope.app or flamegraph.pl read them) and
   the top functions. On a machine with more runnable threads than cores, a thread descheduled while
   holding the GIL keeps being sampled, so these shares follow wall time more than CPU.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import ROOT, Config, FakeLLM, fresh_redis, table
from bench.cpu import CONCURRENCY, LATENCY, Bench, line, reference_ms, sessions_per_run, summarise

TOP = 25


class Sampler:
    """py-spy recording this process (the thread holding the GIL) until ``stop``."""

    def __init__(self, out: Path, rate: int = 200) -> None:
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if spy is None:
            raise SystemExit("py-spy is not installed: make venv installs the dev extras")
        args = [spy, "record", "--pid", str(os.getpid()), "--rate", str(rate), "--format", "raw", "--gil"]
        self.proc = subprocess.Popen(
            [*args, "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.proc.stdout is not None
        for text in self.proc.stdout:  # "py-spy> Sampling process 200 times a second ..."
            if "Sampling process" in text:
                return
        raise SystemExit(f"py-spy did not start: {self.proc.wait()}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        self.proc.communicate(timeout=60)


_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def short(path: str) -> tuple[str, str]:
    """(short path, package) of a source file: memproc/llm/safety.py, openai/_base_client.py, ..."""
    parts = Path(path).parts
    if "site-packages" in parts:
        rel = parts[parts.index("site-packages") + 1 :]
        return "/".join(rel), rel[0] if rel else path
    if "memproc" in parts:
        rel = parts[parts.index("memproc") :]
        return "/".join(rel), "/".join(rel[:2]) if len(rel) > 2 else "memproc"
    if re.search(r"python3\.\d+$", str(Path(path).parent)):
        return parts[-1], "stdlib " + Path(path).stem
    return "/".join(parts[-2:]), parts[-2] if len(parts) > 1 else path


def top_sampled(stacks: Path, n: int = TOP) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and self shares per package."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for text in stacks.read_text().splitlines():
        stack, _, count = text.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            m = _FRAME_RE.match(frame)
            if m:
                where, package = short(m.group("file"))
                frames.append((f"{m.group('func')} ({where})", package))
        if not frames:
            continue
        k = int(count)
        samples += k
        own[frames[-1][0]] += k
        packages[frames[-1][1]] += k
        for func in {f for f, _ in frames}:
            total[func] += k
    share = 100.0 / max(samples, 1)
    return {
        "samples": samples,
        "self": [(f, c * share) for f, c in own.most_common(n)],
        "inclusive": [(f, c * share) for f, c in total.most_common(n)],
        "packages": [(p, c * share) for p, c in packages.most_common(15)],
    }


def one_at_a_time(bench: Bench, n: int, profiler: cProfile.Profile | None = None) -> float:
    """CPU ms per session of ``n`` queued sessions processed one after another on this thread."""
    from memproc.dal import queue as q

    proc, cpu, done = bench.proc, 0.0, 0
    while done < n:
        batch = q.claim(proc.store, proc.settings, min(CONCURRENCY, n - done))
        if not batch.items:
            break
        for item in batch.items:
            started = time.process_time()
            if profiler:
                profiler.enable()
            proc.process(item)
            if profiler:
                profiler.disable()
            cpu += time.process_time() - started
            done += 1
    return cpu * 1000 / max(done, 1)


def top_profiled(profiler: cProfile.Profile, sessions: int) -> dict[str, Any]:
    """All functions by self CPU, memproc's by cumulative CPU (its pipeline steps), per session."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = max(stats.total_tt, 1e-9)  # type: ignore[attr-defined]
    rows = []
    for (path, lineno, func), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((f"{func} ({short(path)[0]}:{lineno})", calls / sessions, own, cumulative))
    by_self = sorted(rows, key=lambda r: -r[2])[:TOP]
    ours = sorted((r for r in rows if r[0].split(" (")[1].startswith("memproc/")), key=lambda r: -r[3])
    return {
        "profiled_ms": total * 1000 / sessions,
        "self": [(name, calls, own * 100 / total) for name, calls, own, _ in by_self],
        "cumulative": [(name, calls, cum * 100 / total) for name, calls, _, cum in ours[:TOP]],
    }


def report(m: dict[str, Any], serial_ms: float, prof: dict[str, Any], spy: dict[str, Any], n: int) -> str:
    def shares(pairs: list[tuple[str, float]]) -> list[list[str]]:
        return [[f"`{f}`", f"{pct:.1f}%"] for f, pct in pairs]

    def calls(rows: list[tuple[str, float, float]]) -> list[list[str]]:
        return [[f"`{f}`", f"{c:,.1f}", f"{pct:.1f}%"] for f, c, pct in rows]

    return "\n".join(
        [
            f"# Processor profile: concurrency {CONCURRENCY}, fake LLM {LATENCY * 1000:.0f} ms",
            "",
            f"Reproduce: `make profile`. {n} sessions per drain (realistic chats over 64 vectorstores), "
            f"{len(m['reps'])} measured drains. What the views are: `bench/profile.py`.",
            "",
            "## 1. The drain at concurrency 64",
            "",
            line(m),
            "",
            "## 2. One session at a time (no threads, fake LLM 0 ms), under cProfile with a CPU clock",
            "",
            f"CPU per session unprofiled: **{serial_ms:.2f} ms** (reference loop {reference_ms():.0f} ms); "
            f"profiled: {prof['profiled_ms']:.1f} ms. Shares are of the profiled CPU.",
            "",
            "memproc's functions by cumulative CPU (the pipeline's steps):",
            "",
            table(["function", "calls/session", "share"], calls(prof["cumulative"])),
            "",
            "All functions by self CPU:",
            "",
            table(["function", "calls/session", "share"], calls(prof["self"])),
            "",
            f"## 3. py-spy over one drain at concurrency 64 ({spy['samples']:,} samples holding the GIL)",
            "",
            "Collapsed stacks: `stacks.txt` beside this file (speedscope.app reads them; git ignores them). "
            "Self samples by package (the frame on top of the stack):",
            "",
            table(["package", "share"], shares(spy["packages"])),
            "",
            "By function, self:",
            "",
            table(["function", "share"], shares(spy["self"])),
            "",
            "By function, inclusive:",
            "",
            table(["function", "share"], shares(spy["inclusive"])),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for profile.md and stacks.txt")
    parser.add_argument("--sessions", type=int, default=sessions_per_run(Config(False, ROOT)))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    n = args.sessions
    with fresh_redis() as server, FakeLLM() as fake:
        bench = Bench(server, fake, Config(False, ROOT).seed)
        m = summarise([bench.measure(n, f"cpu{rep}") for rep in range(args.repeats)])
        print(line(m), flush=True)
        fake.configure(0.0, 0.0)
        bench.fill(n, "serial")
        serial_ms = one_at_a_time(bench, n // 2)
        profiler = cProfile.Profile(time.process_time)
        one_at_a_time(bench, n // 2, profiler)
        prof = top_profiled(profiler, n // 2)
        fake.configure(LATENCY, 0.0)
        stacks = args.out / "stacks.txt"
        bench.fill(n, "sampled")
        sampler = Sampler(stacks)
        try:
            bench.proc.drain(concurrency=CONCURRENCY, batch_size=CONCURRENCY)
        finally:
            sampler.stop()
    text = report(m, serial_ms, prof, top_sampled(stacks), n)
    (args.out / "profile.md").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
