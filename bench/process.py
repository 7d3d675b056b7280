"""Section 2, processing: sessions/s at concurrency 1/4/16/64 with a 200 ms fake LLM, against the
ideal concurrency / latency; Redis round trips, LLM calls, tokens and CPU per session."""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from bench.common import (
    Config,
    FakeLLM,
    SectionResult,
    Target,
    app_commands,
    chat_size,
    commandstats,
    configure_env,
    fresh_redis,
    make_chat,
    num,
    redis_cpu_seconds,
    repeat_summary,
    say,
    summarize,
    table,
)
from tests.round_trips import RoundTrips

CONCURRENCY = (1, 4, 16, 64)
LLM_LATENCY = 0.2
# (key, label, chat latency, embeddings latency)
CONFIGS = (
    ("i", "chat 200 ms + embeddings 0 ms", LLM_LATENCY, 0.0),
    ("ii", "chat 200 ms + embeddings 200 ms", LLM_LATENCY, LLM_LATENCY),
)
VECTORSTORES = 64


def timed_processor(settings: Any) -> Any:
    """The real processor (build_processor), recording when each item finishes."""
    from memproc.drain import Outcome
    from memproc.processor import Processor, build_processor

    class TimedProcessor(Processor):
        def __init__(self, base: Processor) -> None:
            super().__init__(base.store, base.settings, base.provider)
            self.finished: list[tuple[float, str, str]] = []

        def process(self, item: Any) -> Outcome:
            outcome = super().process(item)
            self.finished.append((time.monotonic(), item.vectorstore, outcome.result))
            return outcome

    return TimedProcessor(build_processor(settings))


def session_pool(seed: int, n: int = 300) -> list[str]:
    """Realistic chats (1-8 KB, median ~2.8 KB), 30 % as JSON message lists."""
    rng = random.Random(seed)
    return [make_chat(rng, chat_size(rng), "json" if rng.random() < 0.3 else "text") for _ in range(n)]


def enqueue(
    r: Any,
    settings: Any,
    chats: list[str],
    n: int,
    tag: str,
    vectorstores: int = VECTORSTORES,
    vectorstore: str | None = None,
) -> None:
    """n sessions through submissions.submit (the store_raw path minus HTTP), spread over ``vectorstores``
    vectorstores ``user000``... (or all into ``vectorstore``)."""
    from memproc import submissions
    from memproc.schemas.requests import StoreRawRequest

    meta = {"source": "bench", "session_timestamp": "2026-03-10T12:00:00Z"}
    for i in range(n):
        request = StoreRawRequest(session_data=chats[i % len(chats)], session_id=f"{tag}-{i}", metadata=meta)
        submissions.submit(r, settings, vectorstore or f"user{i % vectorstores:03d}", request)


def steady_rate(finished: list[tuple[float, str, str]]) -> float:
    """Sessions/s between the 10th and 90th percentile completions (no ramp-up or drain tail)."""
    times = sorted(t for t, _, _ in finished)
    if len(times) < 10:
        return float("nan")
    lo, hi = int(len(times) * 0.1), int(len(times) * 0.9)
    return (hi - lo) / (times[hi] - times[lo]) if times[hi] > times[lo] else float("nan")


def sessions_per_run(cfg: Config, c: int) -> int:
    """Enough that ramp-up and drain tail are small: 10 waves quick (3 at concurrency 64, which is
    CPU-bound here, so its steady rate is reported too), 25 waves FULL; at least 12."""
    waves = cfg.pick(3 if c >= 64 else 10, 25)
    return max(waves * c, 12)


_FIELDS = (
    "round_trips",
    "commands",
    "chat_calls",
    "embedding_calls",
    "tokens_in",
    "tokens_out",
    "memories_created",
    "memories_merged",
    "cpu_ms_processor",
    "cpu_ms_fake_llm",
    "cpu_ms_redis",
)


def measure_point(
    cfg: Config, ctx: dict[str, Any], proc: Any, key: str, label: str, c: int, per_call: float
) -> dict[str, Any]:
    """``cfg.repeats`` drains of a freshly filled queue at concurrency ``c``."""
    admin, fake, trips, r, settings, chats = (
        ctx[k] for k in ("admin", "fake", "trips", "r", "settings", "chats")
    )
    n = sessions_per_run(cfg, c)
    reps: list[dict[str, Any]] = []
    for rep in range(cfg.repeats):
        admin.flushall()
        enqueue(r, settings, chats, n, f"{key}{c}r{rep}")
        proc.finished.clear()
        f0, s0, cpu0, rc0 = fake.stats(), commandstats(admin), time.process_time(), redis_cpu_seconds(admin)
        trips.reset()
        t0 = time.monotonic()
        report = proc.drain(concurrency=c, batch_size=c)
        wall = time.monotonic() - t0
        f1, s1, cpu1, rc1 = fake.stats(), commandstats(admin), time.process_time(), redis_cpu_seconds(admin)
        done = max(report.processed, 1)
        cmds = app_commands(s0, s1)
        reps.append(
            {
                "sessions": report.processed,
                "failed": report.retried + report.dead + report.stale,
                "wall": wall,
                "throughput": report.processed / wall,
                "steady": steady_rate(proc.finished),
                "round_trips": trips.count / done,
                "commands": sum(cmds.values()) / done,
                "commands_by_name": {k: v / done for k, v in cmds.items()},
                "chat_calls": (f1["chat_calls"] - f0["chat_calls"]) / done,
                "embedding_calls": (f1["embedding_calls"] - f0["embedding_calls"]) / done,
                "tokens_in": report.tokens_in / done,
                "tokens_out": report.tokens_out / done,
                "memories_created": report.memories_created / done,
                "memories_merged": report.memories_merged / done,
                "cpu_ms_processor": (cpu1 - cpu0) * 1000 / done,
                "cpu_ms_fake_llm": (f1["cpu_seconds"] - f0["cpu_seconds"]) * 1000 / done,
                "cpu_ms_redis": (rc1 - rc0) * 1000 / done,
            }
        )
    ideal = c / per_call
    point: dict[str, Any] = {
        "config": key,
        "label": label,
        "concurrency": c,
        "sessions_per_run": n,
        "ideal": ideal,
        "throughput": repeat_summary([x["throughput"] for x in reps]),
        "steady": repeat_summary([x["steady"] for x in reps]),
        "reps": reps,
    }
    point["efficiency"] = point["throughput"]["median"] / ideal
    point["steady_efficiency"] = point["steady"]["median"] / ideal
    for field in _FIELDS:
        point[field] = repeat_summary([x[field] for x in reps])["median"]
    point["failed"] = sum(x["failed"] for x in reps)
    say(
        f"  processing ({label}) c={c:<3} {num(point['throughput']['median'])} sessions/s "
        f"= {point['efficiency'] * 100:.0f}% of ideal {num(ideal)}/s (steady "
        f"{point['steady_efficiency'] * 100:.0f}%), "
        f"CPU {point['cpu_ms_processor']:.1f} ms/session in the processor"
    )
    return point


def float_embeddings_processor(settings: Any) -> Any | None:
    """The processor with ``EMBEDDING_ENCODING=float`` (embeddings as JSON numbers, which the openai SDK
    turns into model fields one float at a time), for comparison with the shipped base64; None when
    the setting does not exist."""
    from memproc.settings import Settings

    if "embedding_encoding" not in Settings.model_fields:
        return None
    return timed_processor(settings.model_copy(update={"embedding_encoding": "float"}))


def run(cfg: Config) -> SectionResult:
    started = time.monotonic()
    data: dict[str, Any] = {"repeats": cfg.repeats, "vectorstores": VECTORSTORES, "runs": {}, "what_if": {}}
    data["sessions_per_run"] = {c: sessions_per_run(cfg, c) for c in CONCURRENCY}
    chats = session_pool(cfg.seed)
    data["session_bytes"] = summarize([len(c.encode()) for c in chats])
    with fresh_redis() as server, FakeLLM() as fake:
        configure_env(server.url, fake.base_url, EMBEDDING_DIMENSIONS="1536", LLM_TIMEOUT_SECONDS="30")
        from memproc.dal.connection import get_store
        from memproc.settings import get_settings

        settings = get_settings()
        r = get_store()
        admin = server.client()
        proc = timed_processor(settings)
        trips = RoundTrips()
        trips.instrument(get_store().r)
        trips.instrument(get_store().rb)
        ctx = {"admin": admin, "fake": fake, "trips": trips, "r": r, "settings": settings, "chats": chats}

        # Warm up: open the HTTP connections (up to 64) and Redis pools, load the Lua library.
        fake.configure(0.05, 0.0)
        enqueue(r, settings, chats, 2 * max(CONCURRENCY), "warm")
        proc.drain(concurrency=max(CONCURRENCY), batch_size=max(CONCURRENCY))

        # Round trips and top-level commands per session, watched with MONITOR on a short run.
        admin.flushall()
        enqueue(r, settings, chats, 32, "probe")
        trips.reset()
        with server.requests() as seen:
            probe = proc.drain(concurrency=4, batch_size=4)
        data["monitor_probe"] = {
            "sessions": probe.processed,
            "round_trips_per_session": trips.count / probe.processed,
            "round_trip_kinds": dict(trips.kinds),
            "top_level_commands_per_session": len(seen) / probe.processed,
            "top_level_commands": dict(Counter(c.lower() for c in seen)),
        }

        for key, label, chat_latency, emb_latency in CONFIGS:
            fake.configure(chat_latency, emb_latency)
            for c in CONCURRENCY:
                data["runs"][f"{key} c={c}"] = measure_point(
                    cfg, ctx, proc, key, label, c, chat_latency + emb_latency
                )

        # Comparison: embeddings as JSON floats (EMBEDDING_ENCODING=float) instead of base64.
        alt = float_embeddings_processor(settings)
        data["encoding"] = getattr(settings, "embedding_encoding", "float")
        if alt is not None and data["encoding"] != "float":
            fake.configure(0.05, 0.0)
            enqueue(r, settings, chats, 2 * max(CONCURRENCY), "warmf")
            alt.drain(concurrency=max(CONCURRENCY), batch_size=max(CONCURRENCY))
            for key, label, chat_latency, emb_latency in CONFIGS[:1]:
                fake.configure(chat_latency, emb_latency)
                for c in (16,):
                    data["what_if"][f"{key} c={c}"] = measure_point(
                        cfg,
                        ctx,
                        alt,
                        key,
                        f"{label}, EMBEDDING_ENCODING=float",
                        c,
                        chat_latency + emb_latency,
                    )

    plots = [_plot(cfg, data)]
    i16, i1 = data["runs"]["i c=16"], data["runs"]["i c=1"]
    ii16 = data["runs"]["ii c=16"]
    met = i16["efficiency"] >= 0.7
    note = (
        f"c=1: {i1['efficiency'] * 100:.0f}% of 5/s. Both calls at 200 ms (ii): "
        f"{ii16['efficiency'] * 100:.0f}% of 16/0.4 s ({num(ii16['throughput']['median'])}/s)."
    )
    alt = data["what_if"].get("i c=16")
    if alt:
        note += (
            f" With EMBEDDING_ENCODING=float (same run): {num(alt['throughput']['median'])}/s = "
            f"{alt['efficiency'] * 100:.0f}%, {alt['cpu_ms_processor']:.0f} ms CPU/session instead of "
            f"{i16['cpu_ms_processor']:.0f}."
        )
    if not met:
        note = f"missed by {(0.7 - i16['efficiency']) * 100:.0f} points; " + note
    targets = [
        Target(
            "processing throughput at concurrency 16, LLM 200 ms (chat 200 ms + embeddings 0 ms)",
            ">= 70% of 16/0.2 s = 80 sessions/s",
            f"{num(i16['throughput']['median'])} sessions/s = {i16['efficiency'] * 100:.0f}%",
            met,
            note,
        ),
        Target(
            "Redis round trips per processed session (c=16)",
            "constant (reported)",
            f"{i16['round_trips']:.2f}",
            None,
            "2 per session + the batch's claim + heartbeats; independent of the vectorstore's size",
        ),
    ]
    return SectionResult(
        "process",
        "2. Processing throughput",
        _markdown(data),
        data,
        plots,
        targets,
        time.monotonic() - started,
    )


def _row(run: dict[str, Any]) -> list[Any]:
    t = run["throughput"]
    return [
        run["config"],
        run["concurrency"],
        run["sessions_per_run"],
        num(run["ideal"]),
        f"{num(t['median'])} ({num(t['min'])}-{num(t['max'])})",
        f"**{run['efficiency'] * 100:.0f}%**",
        f"{num(run['steady']['median'])} ({run['steady_efficiency'] * 100:.0f}%)",
        f"{run['round_trips']:.2f}",
        f"{run['commands']:.1f}",
        f"{run['chat_calls']:.2f} / {run['embedding_calls']:.2f}",
        f"{run['tokens_in']:,.0f} / {run['tokens_out']:,.0f}",
        f"{run['memories_created']:.1f} / {run['memories_merged']:.1f}",
        f"{run['cpu_ms_processor']:.1f} / {run['cpu_ms_fake_llm']:.1f} / {run['cpu_ms_redis']:.2f}",
        run["failed"],
    ]


_HEADERS = [
    "cfg",
    "concurrency",
    "sessions/run",
    "ideal /s",
    "sessions/s (range)",
    "of ideal",
    "steady /s",
    "round trips/session",
    "Redis commands/session",
    "LLM calls chat/emb",
    "tokens in/out",
    "memories new/merged",
    "CPU ms proc/fake/redis",
    "failed",
]


def _markdown(data: dict[str, Any]) -> str:
    p = data["monitor_probe"]
    runs = data["runs"]
    worst = runs.get("i c=64") or next(iter(runs.values()))  # the saturated point
    cpu = worst["cpu_ms_processor"] + worst["cpu_ms_fake_llm"] + worst["cpu_ms_redis"]
    spr = data["sessions_per_run"]
    lines = [
        "Each session makes **two sequential HTTP calls** to the fake LLM: one chat completion (extraction + "
        "summary, structured output), then one embeddings call for all its memories (1536 dimensions). So "
        "there are two configurations: **(i)** chat 200 ms, embeddings 0 ms: ideal = concurrency / 0.2 s; "
        "**(ii)** both 200 ms: ideal = concurrency / 0.4 s. The issue's target (70 % of 16 / 0.2 s) is "
        "judged "
        "on (i); under (ii), 16 / 0.2 s is out of reach by construction (at most 50 %).",
        "",
        f"Queue: {VECTORSTORES} vectorstores; sessions are realistic chats (median "
        f"{num(data['session_bytes']['p50'], 0)} bytes) enqueued with `submissions.submit` before each "
        "run; the real "
        "processor (`build_processor` + `drain(concurrency=c, batch_size=c)`, the real `openai` client over "
        f"HTTP) empties the queue. Sessions per run: {', '.join(f'{v} at c={k}' for k, v in spr.items())} "
        "(10 waves or more below 64, so ramp-up and drain tail are under a tenth of a run; at 64 the run is "
        f"CPU-bound and lasts many per-session latencies). {data['repeats']} repeats per point, Redis "
        "flushed "
        "between them. Throughput = processed / wall time of `drain` (median over repeats, range in "
        "brackets); "
        "steady = the rate between the 10th and 90th percentile completions, i.e. without ramp and tail. "
        "Round "
        "trips are counted in the client (a pipeline is one), commands by INFO commandstats (those run "
        "inside "
        "Lua included). CPU per session: processor (this process) / fake LLM process / Redis.",
        "",
        table(_HEADERS, [_row(run) for run in runs.values()]),
        "",
        f"**Redis round trips per session** (MONITOR probe, {p['sessions']} sessions at concurrency 4): "
        f"{p['round_trips_per_session']:.2f} round trips "
        f"({', '.join(f'{k} {v}' for k, v in p['round_trip_kinds'].items())}), "
        f"{p['top_level_commands_per_session']:.2f} top-level commands "
        f"({', '.join(f'{k} {v}' for k, v in p['top_level_commands'].items())}). Per session: one pipelined "
        "load (HMGET + GET) and one commit (FCALL), plus a share of its batch's claim and of the drain's two "
        "heartbeats, so 2 + 1/batch + 2/sessions: nothing depends on how many memories the vectorstore holds "
        "(the nearest-neighbour check for merging runs inside the commit).",
        "",
        f"**Where the limit is** (at concurrency 64): the processor spends {worst['cpu_ms_processor']:.0f} "
        "ms of CPU per session "
        f"(the fake LLM {worst['cpu_ms_fake_llm']:.1f} ms, Redis {worst['cpu_ms_redis']:.1f} ms), and its "
        f"threads share one GIL: at most ~{1000 / max(worst['cpu_ms_processor'], 0.01):.0f} sessions/s per "
        f"process, whatever the concurrency (all of it on 2 cores: ~{2000 / cpu:.0f}/s). Embeddings travel "
        f"as {data.get('encoding', 'float')} (`EMBEDDING_ENCODING`).",
    ]
    if data["what_if"]:
        lines += [
            "",
            "**For comparison, `EMBEDDING_ENCODING=float`** (embeddings as JSON numbers, the encoding "
            "memproc "
            "used before base64): the openai SDK then builds the response models one float at a time "
            "(`openai._models.construct_type`, ~18,000 calls per session for ~11 memories x 1536 floats), "
            "which multiplies the processor's CPU per session; the vectors are identical:",
            "",
            table(_HEADERS, [_row(run) for run in data["what_if"].values()]),
        ]
    return "\n".join(lines)


def _plot(cfg: Config, data: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    xs = list(CONCURRENCY)
    for (key, label, chat_latency, emb_latency), color in zip(CONFIGS, ("C0", "C1"), strict=True):
        runs = [data["runs"][f"{key} c={c}"] for c in xs]
        ax.plot(
            xs,
            [c / (chat_latency + emb_latency) for c in xs],
            linestyle="--",
            color=color,
            alpha=0.6,
            label=f"ideal ({key}): c / {chat_latency + emb_latency:g} s",
        )
        med = [x["throughput"]["median"] for x in runs]
        lo = [x["throughput"]["median"] - x["throughput"]["min"] for x in runs]
        hi = [x["throughput"]["max"] - x["throughput"]["median"] for x in runs]
        ax.errorbar(
            xs, med, yerr=[lo, hi], marker="o", color=color, capsize=3, label=f"measured ({key}): {label}"
        )
        for x, run in zip(xs, runs, strict=True):
            ax.annotate(
                f"{run['efficiency'] * 100:.0f}%",
                (x, run["throughput"]["median"]),
                textcoords="offset points",
                xytext=(6, -12),
                fontsize=8,
                color=color,
            )
    if data["what_if"]:
        pts = list(data["what_if"].values())
        ax.plot(
            [x["concurrency"] for x in pts],
            [x["throughput"]["median"] for x in pts],
            marker="*",
            markersize=11,
            linestyle="none",
            color="C2",
            label="(i) with EMBEDDING_ENCODING=float",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("processor concurrency")
    ax.set_ylabel("sessions / s (log scale)")
    ax.set_title("Processing throughput vs concurrency (fake LLM 200 ms per call, 2 cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = cfg.out / "process_throughput.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path.name
