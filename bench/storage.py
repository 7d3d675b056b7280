"""Section 5, storage: Redis bytes per stored transcript byte and per memory (MEMORY USAGE), and the
compression study behind COMPRESS_MIN_BYTES (zlib levels 1/6/9, zstd when importable)."""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable
from typing import Any

from bench.common import (
    Config,
    FakeLLM,
    SectionResult,
    Target,
    configure_env,
    fresh_redis,
    make_chat,
    median,
    num,
    say,
    table,
)
from memproc.settings import Settings

SIZES_KB = (1, 2, 4, 8, 16, 64)
FORMATS = ("text", "json")

DEFAULT_THRESHOLD: int = Settings.model_fields["compress_min_bytes"].default


def _codecs() -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]:
    def zlib_at(level: int) -> Callable[[bytes], bytes]:
        def compress(data: bytes) -> bytes:
            return zlib.compress(data, level)

        return compress

    codecs: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        f"zlib-{level}": (zlib_at(level), zlib.decompress) for level in (1, 6, 9)
    }
    try:
        import zstandard  # optional: not a memproc dependency

        for level in (3, 9, 19):
            c = zstandard.ZstdCompressor(level=level)
            d = zstandard.ZstdDecompressor()
            codecs[f"zstd-{level}"] = (c.compress, d.decompress)
    except ImportError:
        pass
    return codecs


def _per_kb(fn: Callable[[bytes], bytes], data: bytes) -> float:
    """CPU microseconds per KB of input: the best of 5 timings of enough calls to last ~5 ms."""
    calls = max(1, int(5e-3 / max(1e-7, _once(fn, data))))
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(calls):
            fn(data)
        best = min(best, (time.process_time() - t0) / calls)
    return best * 1e6 / (len(data) / 1024)


def _once(fn: Callable[[bytes], bytes], data: bytes) -> float:
    t0 = time.perf_counter()
    fn(data)
    return time.perf_counter() - t0


def compression_study(cfg: Config, rng: random.Random) -> dict[str, Any]:
    n = cfg.pick(12, 40)
    codecs = _codecs()
    out: dict[str, Any] = {"n": n, "codecs": list(codecs), "rows": []}
    for kb in SIZES_KB:
        for fmt in FORMATS:
            texts = [make_chat(rng, kb * 1024, fmt).encode() for _ in range(n)]
            row: dict[str, Any] = {
                "kb": kb,
                "format": fmt,
                "bytes": median([len(t) for t in texts]),
                "codecs": {},
            }
            for name, (comp, decomp) in codecs.items():
                ratios = [len(t) / len(comp(t)) for t in texts]
                sample = texts[: min(5, n)]
                row["codecs"][name] = {
                    "ratio": median(ratios),
                    "ratio_min": min(ratios),
                    "compress_us_per_kb": median([_per_kb(comp, t) for t in sample]),
                    "decompress_us_per_kb": median([_per_kb(decomp, comp(t)) for t in sample]),
                }
            out["rows"].append(row)
    return out


def redis_bytes(cfg: Config, rng: random.Random) -> dict[str, Any]:
    """MEMORY USAGE of raw records stored through store_raw with the shipped COMPRESS_MIN_BYTES, with
    every transcript compressed and with none; then the per-memory footprint after processing."""
    from tests.api_client import call, mem_path

    n = cfg.pick(30, 100)
    out: dict[str, Any] = {"n": n, "sizes": []}
    with fresh_redis() as server, FakeLLM() as fake:
        admin = server.client()
        samples = {
            kb: [make_chat(rng, kb * 1024, "json" if i % 10 < 3 else "text") for i in range(n)]
            for kb in SIZES_KB
        }
        per_size: dict[int, dict[str, Any]] = {kb: {"kb": kb} for kb in SIZES_KB}
        for label, threshold in (("compressed", None), ("always", "0"), ("plain", str(10**12))):
            extra = {"EMBEDDING_DIMENSIONS": "1536"}
            if threshold:
                extra["COMPRESS_MIN_BYTES"] = threshold
            configure_env(server.url, fake.base_url, **extra)
            for kb, chats in samples.items():
                vs = f"{label}{kb}"
                ids = []
                for i, chat in enumerate(chats):
                    res = call(
                        "POST",
                        mem_path(vs, "/store_raw"),
                        json_body={
                            "session_data": chat,
                            "session_id": f"{vs}-{i}",
                            "metadata": {"source": "bench"},
                        },
                    )
                    ids.append(res.body["raw_memory_id"])
                raw_bytes = [
                    int(admin.memory_usage("{" + vs + "}:raw_memory:" + rid, samples=0)) for rid in ids
                ]
                text_bytes = sum(len(c.encode()) for c in chats)
                per_size[kb][label] = {
                    "transcript_bytes": text_bytes / n,
                    "raw_hash_bytes": median(raw_bytes),
                    "per_transcript_byte": sum(raw_bytes) / text_bytes,
                }
        for kb in SIZES_KB:
            e = per_size[kb]
            e["cut"] = e["plain"]["raw_hash_bytes"] / e["compressed"]["raw_hash_bytes"]
            e["cut_always"] = e["plain"]["raw_hash_bytes"] / e["always"]["raw_hash_bytes"]
            out["sizes"].append(e)

        # Per memory: 4 KB sessions stored with the shipped settings into an empty Redis, then processed
        # (1536-dimension embeddings, the default).
        admin.flushall()
        configure_env(server.url, fake.base_url, EMBEDDING_DIMENSIONS="1536")
        from memproc.processor import build_processor
        from memproc.settings import get_settings

        vs = "memories4"
        for i, chat in enumerate(samples[4]):
            call("POST", mem_path(vs, "/store_raw"), json_body={"session_data": chat, "session_id": f"m-{i}"})
        report = build_processor(get_settings()).drain(concurrency=8, batch_size=8)
        t = "{" + vs + "}"
        memories = int(admin.execute_command("VCARD", vs))
        sessions = admin.zrange(t + ":session_index", 0, -1)

        def usage(key: str) -> int:
            return int(admin.memory_usage(key, samples=0) or 0)

        vset = usage(vs)
        index = usage(t + ":memory_index")
        summaries = sum(usage(f"{t}:session_summary:{s}") for s in sessions)
        sets = sum(usage(f"{t}:session_memories:{s}") for s in sessions)
        raw_ids = admin.zrange(t + ":raw_index", 0, -1)
        raw_after = median([usage(f"{t}:raw_memory:{r}") for r in raw_ids])
        out["per_memory"] = {
            "sessions_processed_total": report.processed,
            "vectorstore": vs,
            "memories": memories,
            "sessions": len(sessions),
            "dimensions": 1536,
            "vector_set_per_memory": vset / memories,
            "memory_index_per_memory": index / memories,
            "summary_per_session": summaries / len(sessions),
            "session_set_per_session": sets / len(sessions),
            "total_per_memory": (vset + index + summaries + sets) / memories,
            "raw_hash_before": per_size[4]["compressed"]["raw_hash_bytes"],
            "raw_hash_after": raw_after,
        }
    return out


def run(cfg: Config) -> SectionResult:
    started = time.monotonic()
    rng = random.Random(cfg.seed)
    study = compression_study(cfg, rng)
    say(
        f"  storage: compression study over {len(SIZES_KB) * len(FORMATS)} size/format buckets, "
        f"codecs {', '.join(study['codecs'])}"
    )
    rb = redis_bytes(cfg, rng)
    for e in rb["sizes"]:
        say(
            f"  storage: {e['kb']:>2} KB sessions: raw record {num(e['plain']['raw_hash_bytes'], 0)} B "
            "plain, "
            f"{num(e['always']['raw_hash_bytes'], 0)} B compressed ({e['cut_always']:.2f}x), "
            f"{num(e['compressed']['raw_hash_bytes'], 0)} B as stored ({e['cut']:.2f}x)"
        )
    pm = rb["per_memory"]
    say(f"  storage: {num(pm['total_per_memory'], 0)} B per memory ({pm['memories']} memories, 1536 dims)")
    data: dict[str, Any] = {"study": study, "redis": rb, "chosen": _choose(study)}
    # Verdict on the >= 2x cut: where compressing every transcript would reach it, and whether every
    # transcript the shipped threshold compresses gets it.
    threshold_kb = DEFAULT_THRESHOLD / 1024
    sizes = rb["sizes"]
    holds_from = next(
        (e["kb"] for e in sizes if all(x["cut_always"] >= 2 for x in sizes if x["kb"] >= e["kb"])), None
    )
    data["cut_holds_from_kb"] = holds_from
    data["threshold_bytes"] = DEFAULT_THRESHOLD
    compressed = [e for e in sizes if e["kb"] >= threshold_kb]
    met = bool(compressed) and all(e["cut"] >= 2 for e in compressed)
    targets = [
        Target(
            f"transcripts compressed (zlib-6 from COMPRESS_MIN_BYTES = {threshold_kb:g} KB) cut Redis memory "
            ">= 2x on realistic chat text",
            ">= 2x",
            "as stored: " + ", ".join(f"{e['cut']:.2f}x at {e['kb']} KB" for e in compressed),
            met,
            (
                "compressing every size would give "
                + ", ".join(f"{e['cut_always']:.2f}x at {e['kb']} KB" for e in sizes)
                + f": >= 2x from {holds_from} KB up; smaller transcripts are stored plain"
            )
            if holds_from
            else "does not hold at any size",
        )
    ]
    return SectionResult(
        "storage",
        "5. Storage: bytes per transcript byte and per memory",
        _markdown(data),
        data,
        [],
        targets,
        time.monotonic() - started,
    )


def _choose(study: dict[str, Any]) -> dict[str, Any]:
    """The cheapest zlib level whose ratio is within 3 % of the best zlib level, over 4-16 KB text."""
    rows = [r for r in study["rows"] if 4 <= r["kb"] <= 16]
    levels = ["zlib-1", "zlib-6", "zlib-9"]
    ratio = {lv: median([r["codecs"][lv]["ratio"] for r in rows]) for lv in levels}
    cost = {lv: median([r["codecs"][lv]["compress_us_per_kb"] for r in rows]) for lv in levels}
    best = max(ratio.values())
    ok = [lv for lv in levels if ratio[lv] >= 0.97 * best]
    chosen = min(ok, key=lambda lv: cost[lv])
    return {"level": chosen, "ratio": ratio, "compress_us_per_kb": cost}


def _markdown(data: dict[str, Any]) -> str:
    study, rb, chosen = data["study"], data["redis"], data["chosen"]
    codecs = study["codecs"]
    rows = []
    for r in study["rows"]:
        row = [f"{r['kb']} KB {r['format']}", num(r["bytes"], 0)]
        for name in codecs:
            c = r["codecs"][name]
            row.append(f"{c['ratio']:.2f}x / {c['compress_us_per_kb']:.0f} / {c['decompress_us_per_kb']:.1f}")
        rows.append(row)
    size_rows = []
    for e in rb["sizes"]:
        size_rows.append(
            [
                f"{e['kb']} KB",
                num(e["plain"]["transcript_bytes"], 0),
                num(e["plain"]["raw_hash_bytes"], 0),
                f"{e['plain']['per_transcript_byte']:.2f}",
                num(e["always"]["raw_hash_bytes"], 0),
                f"{e['cut_always']:.2f}x",
                num(e["compressed"]["raw_hash_bytes"], 0),
                f"{e['compressed']['per_transcript_byte']:.2f}",
                f"**{e['cut']:.2f}x**",
            ]
        )
    pm = rb["per_memory"]
    zstd = any(c.startswith("zstd") for c in codecs)
    holds = data["cut_holds_from_kb"]
    return "\n".join(
        [
            "Realistic chats (user turns with personal facts in varied wording, assistant turns of "
            "English prose "
            "from the interpreter's documentation, never a repeated string), as `role: text` lines or, 30 "
            "% of "
            "them, OpenAI-style JSON message lists.",
            "",
            f"**Codecs on realistic chat text** (median over {study['n']} chats per bucket): ratio / "
            "compress CPU "
            "µs per KB / decompress CPU µs per KB."
            + (
                ""
                if zstd
                else " `zstandard` is not importable here "
                "(and is not a memproc dependency), so zstd is not measured."
            ),
            "",
            table(["bucket", "bytes", *codecs], rows),
            "",
            f"Chosen level: **{chosen['level']}**, the cheapest zlib level within 3 % of the best ratio on "
            "4-16 KB chats ("
            + ", ".join(
                f"{lv}: {chosen['ratio'][lv]:.2f}x at {chosen['compress_us_per_kb'][lv]:.0f} µs/KB"
                for lv in chosen["ratio"]
            )
            + "). memproc uses "
            "zlib level 6 (`transcript.encode_transcript`).",
            "",
            f"**Redis bytes per raw record** stored through the store_raw handler ({rb['n']} sessions per "
            "size, "
            "`MEMORY USAGE … SAMPLES 0` of the raw hash, median, jemalloc size classes included): plain = "
            "`COMPRESS_MIN_BYTES` above every size, always compressed = `COMPRESS_MIN_BYTES=0`, as stored = "
            f"the shipped default {DEFAULT_THRESHOLD:,} bytes (zlib-6 from there, when that is smaller).",
            "",
            table(
                [
                    "size",
                    "transcript B",
                    "plain raw hash B",
                    "B per transcript B",
                    "always compressed B",
                    "cut",
                    "as stored raw hash B",
                    "B per transcript B",
                    "cut as stored",
                ],
                size_rows,
            ),
            "",
            (
                "The >= 2x cut **holds from " + f"{holds} KB** up"
                if holds
                else "The >= 2x cut **does not hold** at any size"
            )
            + " on this text when every transcript is compressed (below it the hash's other fields and "
            "Redis' per-key overhead weigh more); the shipped threshold compresses from "
            f"{DEFAULT_THRESHOLD / 1024:g} KB. Reads stay transparent (`decode_transcript`).",
            "",
            f"**Per memory** ({pm['memories']} memories from {pm['sessions']} processed 4 KB sessions, "
            f"{pm['dimensions']}-dimension embeddings stored by `VADD` with its default int8 quantisation): "
            f"vector set {num(pm['vector_set_per_memory'], 0)} B per memory (vector, HNSW links, JSON "
            "attributes), "
            f"memory index {num(pm['memory_index_per_memory'], 0)} B, plus per session a summary of "
            f"{num(pm['summary_per_session'], 0)} B and a memory-id set of "
            f"{num(pm['session_set_per_session'], 0)} "
            f"B: **{num(pm['total_per_memory'], 0)} B per memory** in all. A raw record grows from "
            f"{num(pm['raw_hash_before'], 0)} B to {num(pm['raw_hash_after'], 0)} B when it is marked "
            "processed.",
        ]
    )
