"""``python -m bench.batch [--rounds N] CHECKOUT...``: client CPU of one `Batch` of 8 commands.

The processor's batches (memproc.dal.batch) are a few commands of a session: the memory state
(HMGET, ZCARD, a library read), a VSIM per user turn. One batch of that shape (FCALL_RO, HMGET,
ZCARD, 5 VSIM ... WITHSCORES FILTER NOTHREAD on 64 vectors) and one of 8 PINGs, on 1 thread and
on 64 (each in held_connections, as the processor's workers), against one Redis;
`time.thread_time()` of the batches' threads per batch, in a child process per checkout
(PYTHONPATH=CHECKOUT/layers/common), alternated for `--rounds` rounds; the medians are printed,
with bench.cpu's reference loop (ms, the machine's speed) in each child beside them. Redis runs in
its own process: its CPU is not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from bench.common import ROOT, configure_env, fresh_redis, table
from bench.cpu import reference_ms

DIM = 256
MEMORIES = 64
LIBRARY = """#!lua name=benchbatch
redis.register_function{function_name='bench_state', callback=function(keys, args)
  return {'memories', '64', 'dimensions', '256', 'version', '7', 'updated', '1733000000.5'}
end, flags={'no-writes'}}
"""
THREADS = (1, 64)
BATCHES = 4000  # per measurement, over all threads


def vector(seed: int) -> bytes:
    return struct.pack(f"<{DIM}f", *(((seed * 7 + d * 13) % 17) / 17 for d in range(DIM)))


# The processor's related-memories batch (with the claim's library read), and 8 PINGs.
SHAPES: dict[str, list[tuple[Any, ...]]] = {
    "processor": [
        ("FCALL_RO", "bench_state", 0),
        ("HMGET", "h", "seq", "model", "dimensions"),
        ("ZCARD", "z"),
        *(
            (
                "VSIM",
                "vs",
                "FP32",
                vector(i),
                "COUNT",
                8,
                "WITHSCORES",
                "FILTER",
                '.status == "current"',
                "NOTHREAD",
            )
            for i in range(5)
        ),
    ],
    "ping": [("PING",)] * 8,
}


def setup(url: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    r.function_load(LIBRARY, replace=True)
    r.hset("h", mapping={"seq": "12", "model": "text-embedding-3-small", "dimensions": str(DIM)})
    r.zadd("z", {f"m{i}": i for i in range(MEMORIES)})
    for i in range(MEMORIES):
        r.execute_command("VADD", "vs", "FP32", vector(100 + i), f"m{i}", "SETATTR", '{"status":"current"}')


def run(client: Any, commands: list[tuple[Any, ...]]) -> None:
    batch = client.batch()
    for command in commands:
        batch.execute_command(*command)
    batch.execute()


def measure(shape: str, threads: int) -> float:
    """Client CPU us per batch: the batches' threads' thread_time over the batches they ran."""
    from memproc.dal.batch import held_connections
    from memproc.dal.connection import get_store

    client, commands = get_store().r, SHAPES[shape]
    each = BATCHES // threads
    cpu: list[float] = []
    start = threading.Barrier(threads)

    def worker() -> None:
        with held_connections():
            for _ in range(20):  # warm: connect, caches
                run(client, commands)
            start.wait()
            began = time.thread_time()
            for _ in range(each):
                run(client, commands)
            cpu.append(time.thread_time() - began)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(cpu) / (each * threads) * 1e6


def child(url: str) -> None:
    configure_env(url)
    print("reference-ms - ", f"{reference_ms():.1f}", flush=True)
    for shape in SHAPES:
        for threads in THREADS:
            print(shape, threads, f"{measure(shape, threads):.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkouts", nargs="+")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results: dict[tuple[str, str, str], list[float]] = {}
    with fresh_redis() as server:
        setup(server.url)
        for _ in range(args.rounds):
            for checkout in args.checkouts:
                env = {**os.environ, "PYTHONPATH": f"{checkout}/layers/common"}
                out = subprocess.run(
                    [sys.executable, "-m", "bench.batch", "--child", server.url],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                for row in out.splitlines():
                    shape, threads, us = row.split()
                    results.setdefault((checkout, shape, threads), []).append(float(us))
    rows = [
        [checkout, shape, threads, f"{statistics.median(v):.1f}", " ".join(f"{x:.1f}" for x in v)]
        for (checkout, shape, threads), v in results.items()
    ]
    print(table(["checkout", "batch", "threads", "median us/batch", "rounds"], rows))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
    else:
        main()
