"""Section 6, fairness: four small vectorstores (10 sessions each) queued behind one flooding
vectorstore; how long until the small ones are fully processed, with and without the flood."""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.common import (
    Config,
    FakeLLM,
    SectionResult,
    Target,
    configure_env,
    fresh_redis,
    median,
    num,
    repeat_summary,
    say,
    table,
)
from bench.process import enqueue, session_pool, timed_processor

SMALL = 4
PER_SMALL = 10
CONCURRENCY = 16
LATENCY = 0.02


def _one(r: Any, admin: Any, settings: Any, chats: list[str], flood: int, tag: str) -> dict[str, Any]:
    """Queue ``flood`` sessions of one vectorstore, then 4 x 10 of small ones; drain until the
    small ones are all processed."""
    admin.flushall()
    if flood:
        enqueue(r, settings, chats, flood, f"{tag}f", vectorstore="flood")
    for k in range(SMALL):
        enqueue(r, settings, chats[k * 7 :], PER_SMALL, f"{tag}s{k}", vectorstore=f"small{k}")
    queued = int(admin.zcard("RAW_MEMORY_QUEUE"))
    proc = timed_processor(settings)
    stop = threading.Event()
    started = time.monotonic()
    worker = threading.Thread(
        target=lambda: proc.drain(concurrency=CONCURRENCY, batch_size=CONCURRENCY, stop=stop)
    )
    worker.start()
    want = SMALL * PER_SMALL
    done_at: dict[str, float] = {}
    while True:
        finished = list(proc.finished)
        small = [(t, vs) for t, vs, result in finished if vs.startswith("small") and result == "processed"]
        for k in range(SMALL):
            name = f"small{k}"
            if name not in done_at and sum(1 for _, vs in small if vs == name) == PER_SMALL:
                done_at[name] = max(t for t, vs in small if vs == name) - started
        if len(small) >= want or not worker.is_alive():
            break
        time.sleep(0.005)
    elapsed = time.monotonic() - started
    stop.set()
    worker.join()
    finished = list(proc.finished)
    flood_before = sum(1 for t, vs, _ in finished if vs == "flood" and t - started <= elapsed)
    first_small = min((t - started for t, vs, _ in finished if vs.startswith("small")), default=float("nan"))
    return {
        "queued": queued,
        "all_small_done": elapsed,
        "per_small": done_at,
        "first_small_done": first_small,
        "flood_processed_meanwhile": flood_before,
        "rate": len([1 for t, *_ in finished if t - started <= elapsed]) / elapsed,
    }


def run(cfg: Config) -> SectionResult:
    started = time.monotonic()
    flood = cfg.pick(2000, 5000)
    data: dict[str, Any] = {
        "flood": flood,
        "small": SMALL,
        "per_small": PER_SMALL,
        "concurrency": CONCURRENCY,
        "latency": LATENCY,
        "repeats": cfg.repeats,
    }
    chats = session_pool(cfg.seed, 120)
    with fresh_redis() as server, FakeLLM(LATENCY) as fake:
        configure_env(server.url, fake.base_url, EMBEDDING_DIMENSIONS="1536", LLM_TIMEOUT_SECONDS="30")
        from memproc.dal.connection import get_store
        from memproc.settings import get_settings

        settings, r, admin = get_settings(), get_store(), server.client()
        _one(r, admin, settings, chats, 0, "warm")  # connections, library
        runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
        for rep in range(cfg.repeats):
            for label, n in (("without", 0), ("with", flood)):
                res = _one(r, admin, settings, chats, n, f"{label}{rep}")
                runs[label].append(res)
                say(
                    f"  fairness: {label} flood ({n} queued first): small vectorstores done in "
                    f"{res['all_small_done']:.2f} s ({res['flood_processed_meanwhile']} flood items "
                    "meanwhile)"
                )
    for label, reps in runs.items():
        data[label] = {
            "all_small_done": repeat_summary([x["all_small_done"] for x in reps]),
            "first_small_done": repeat_summary([x["first_small_done"] for x in reps]),
            "flood_processed_meanwhile": median([x["flood_processed_meanwhile"] for x in reps]),
            "rate": median([x["rate"] for x in reps]),
            "per_small": {
                f"small{k}": median([x["per_small"].get(f"small{k}", float("nan")) for x in reps])
                for k in range(SMALL)
            },
            "runs": reps,
        }
    w, wo = data["with"], data["without"]
    data["fifo_estimate"] = (flood + SMALL * PER_SMALL) / w["rate"]
    slowdown = w["all_small_done"]["median"] / wo["all_small_done"]["median"]
    data["slowdown"] = slowdown
    targets = [
        Target(
            f"fairness: 4 x 10 sessions queued behind a {flood:,}-session flood (c=16, LLM 20 ms)",
            "small vectorstores not starved (reported)",
            f"done in {w['all_small_done']['median']:.2f} s vs {wo['all_small_done']['median']:.2f} s "
            "without the "
            f"flood ({slowdown:.1f}x); FIFO would take ~{data['fifo_estimate']:.0f} s",
            None,
            "",
        )
    ]
    return SectionResult(
        "fairness",
        "6. Fairness under a flooding vectorstore",
        _markdown(data),
        data,
        [],
        targets,
        time.monotonic() - started,
    )


def _markdown(data: dict[str, Any]) -> str:
    rows = []
    for label in ("without", "with"):
        d = data[label]
        a = d["all_small_done"]
        rows.append(
            [
                f"{label} flood" + (f" ({data['flood']:,} queued first)" if label == "with" else ""),
                f"**{a['median']:.2f}** ({a['min']:.2f}-{a['max']:.2f})",
                f"{d['first_small_done']['median']:.2f}",
                ", ".join(f"{v:.2f}" for v in d["per_small"].values()),
                num(d["flood_processed_meanwhile"], 0),
                num(d["rate"]),
            ]
        )
    return "\n".join(
        [
            f"One vectorstore (`flood`) gets {data['flood']:,} sessions queued, then four others get "
            f"{data['per_small']} each (queued after the flood, the worst case for a FIFO). The real "
            "processor "
            f"drains at concurrency {data['concurrency']} with the fake LLM at "
            f"{data['latency'] * 1000:.0f} ms per "
            "call; the clock runs from the start of `drain` until the last small session is processed "
            "(then the "
            f"drain is stopped). {data['repeats']} repeats, median (range).",
            "",
            table(
                [
                    "queue",
                    "small vectorstores all done, s",
                    "first small done, s",
                    "each small vectorstore done, s",
                    "flood sessions processed meanwhile",
                    "sessions/s",
                ],
                rows,
            ),
            "",
            f"The flood costs the small vectorstores {data['slowdown']:.1f}x their time alone: claims take "
            "vectorstores round-robin (`{RAW_MEMORY_QUEUE}:ready`), so each claim of 16 serves the five "
            "vectorstores in turn and the small ones finish after about "
            f"{data['with']['flood_processed_meanwhile'] + data['small'] * data['per_small']:.0f} sessions "
            "instead "
            f"of {data['flood'] + data['small'] * data['per_small']:,}. A FIFO queue at the same rate "
            "would have "
            f"made them wait ~{data['fifo_estimate']:.0f} s.",
        ]
    )
