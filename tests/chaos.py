"""Faults with real processes: a Redis that is killed and restarted on its port (its AOF replayed),
frozen (SIGSTOP) and thawed, or squeezed to a small maxmemory; processors that are SIGKILLed at
random and restarted; a client that keeps storing sessions through it all.

`run()` is one chaos round; `tests/test_chaos.py` runs a short one in `make test` and `make chaos`
a long one. At the end every submission the client saw accepted (202) or could not know about
(a 503 or a timeout: it sends those again, store_raw deduplicates) is processed exactly once or is a
visible dead letter with its reason, nothing is duplicated, and every store_raw answered within its
timeouts with 202, or a 503 and a stable code.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from tests.redis_server import ROOT, engine_binary, free_port

STORE_RAW_BUDGET_SECONDS = 6.0  # connect 1 s + read 2 s, one retry on a dropped connection


class ChaosRedis:
    """A Redis 8 with AOF (fsync always) on a fixed port, so a restart keeps everything written."""

    def __init__(self) -> None:
        self.binary = engine_binary("redis8")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="memproc-chaos-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False
        self.start()

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        args += ["--logfile", os.path.join(self.dir, "log")]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise RuntimeError("chaos redis did not start") from None
                time.sleep(0.05)  # readiness poll of a starting server, bounded

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def kill_and_restart(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.start()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self.proc is not None:
            if self.frozen:
                self.thaw()
            self.proc.kill()
            self.proc.wait()


def processor_env(redis_url: str, fake_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": fake_url,
        "EMBEDDING_DIMENSIONS": "64",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "ERROR",
        "LEASE_SECONDS": "5",
        "PROCESSING_INTERVAL_SECONDS": "1",
        "RETRY_BASE_SECONDS": "0.2",
        "RETRY_MAX_SECONDS": "1",
        "MAX_ATTEMPTS": "20",
        "LLM_TIMEOUT_SECONDS": "5",
        "AUTH_MODE": "NONE",  # the round's client calls the handlers as an unauthenticated local client
    }


def start_processor(redis_url: str, fake_url: str) -> subprocess.Popen[str]:
    """`memproc process` in its own process: it drains every second and waits out outages."""
    return subprocess.Popen(
        [sys.executable, "-m", "memproc_local.cli", "process", "--concurrency", "4"],
        cwd=ROOT,
        env=processor_env(redis_url, fake_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@dataclass
class Tally:
    """What the client saw."""

    accepted: dict[tuple[str, str], str] = field(default_factory=dict)  # (vs, session) -> raw id
    unknown: set[tuple[str, str, str]] = field(default_factory=set)  # (vs, session, text) to resend
    texts: dict[tuple[str, str], str] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0
    requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)


def _store(tally: Tally, vs: str, sid: str, text: str) -> None:
    from tests.api_client import call, mem_path

    started = time.monotonic()
    res = call("POST", mem_path(vs, "/store_raw"), json_body={"session_data": text, "session_id": sid})
    tally.slowest = max(tally.slowest, time.monotonic() - started)
    tally.requests += 1
    if res.status == 202:
        tally.accepted[(vs, sid)] = res.body["raw_memory_id"]
        tally.unknown.discard((vs, sid, text))
        tally.codes["202"] += 1
    else:
        assert res.status == 503, (res.status, res.body)
        tally.codes[res.error_code or "?"] += 1
        tally.unknown.add((vs, sid, text))  # maybe stored: sending it again is safe (deduplicated)


def run(
    seconds: float,
    *,
    processors: int,
    seed: int,
    faults: tuple[str, ...],
    policy: str = "noeviction",
    maxmemory_headroom: int | None = None,
    submissions_per_second: float = 30.0,
) -> dict[str, Any]:
    """One chaos round; returns its figures (asserting the invariants at the end). `policy` and
    `maxmemory_headroom` (bytes above what the empty store uses) squeeze the store; it is given its
    memory back before the processors settle, as an operator would.

    The client stops after `seconds x submissions_per_second` store_raw calls (faults go on until
    `seconds` are up): a vectorstore's sessions are processed one at a time, so an unbounded client
    would queue more work than the round's processors can drain on a loaded machine."""
    from tests.fake_openai import FakeOpenAI

    rng = random.Random(seed)
    server = ChaosRedis()
    admin = server.client()
    admin.config_set("maxmemory-policy", policy)
    if maxmemory_headroom is not None:
        admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) + maxmemory_headroom)
    tally = Tally()
    stop_faults = threading.Event()
    saved_env = dict(os.environ)
    workers: list[subprocess.Popen[str]] = []
    try:
        with FakeOpenAI(latency=0.05) as fake:
            os.environ.update(processor_env(server.url, fake.base_url))
            _reset_clients()
            workers += [start_processor(server.url, fake.base_url) for _ in range(processors)]

            def injector() -> None:
                while not stop_faults.wait(rng.uniform(0.5, 1.5)):
                    kind = rng.choice(faults)
                    tally.faults[kind] += 1
                    if kind == "kill_processor":
                        i = rng.randrange(len(workers))
                        workers[i].kill()
                        workers[i].wait()
                        workers[i] = start_processor(server.url, fake.base_url)
                    elif kind == "restart_redis":
                        server.kill_and_restart()
                    elif kind == "freeze_redis":
                        server.freeze()
                        stop_faults.wait(rng.uniform(2.5, 4))  # longer than the client's timeouts
                        server.thaw()

            thread = threading.Thread(target=injector, daemon=True)
            thread.start()
            deadline = time.monotonic() + seconds
            n, submissions = 0, max(1, round(seconds * submissions_per_second))
            try:
                while time.monotonic() < deadline and n < submissions:
                    vs, sid = f"chaos{rng.randrange(4)}", f"s-{rng.randrange(40)}"
                    text = tally.texts.get((vs, sid), "") + f"user: I noted fact {n} today.\n"
                    tally.texts[(vs, sid)] = text
                    n += 1
                    _store(tally, vs, sid, text)
                stop_faults.wait(max(0.0, deadline - time.monotonic()))  # faults while they drain
            finally:
                stop_faults.set()
                thread.join()
                if server.frozen:
                    server.thaw()
            admin.config_set("maxmemory", 0)  # the operator frees memory...
            if policy == "noeviction":  # ...and the store is healthy again: resend what was unknown
                for vs, sid, text in sorted(tally.unknown):
                    _store(tally, vs, sid, text)
                assert not tally.unknown, tally.unknown
            try:
                settle(admin, workers)
            except AssertionError:
                if os.environ.get("MEMPROC_CHAOS_DUMP"):  # where each processor is stuck
                    for w in workers:
                        subprocess.run(["py-spy", "dump", "--pid", str(w.pid)], check=False)
                raise
            assert all(w.poll() is None for w in workers), "a processor exited instead of waiting out a fault"
            for w in workers:
                w.kill()
                w.wait()
            figures = verify(admin, tally)
    finally:  # a failed round leaves no processor running and no environment of its own behind
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        server.stop()
        os.environ.clear()
        os.environ.update(saved_env)
        _reset_clients()
    return figures


def _reset_clients() -> None:
    from memproc import settings as settings_module
    from memproc.dal import connection

    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()


def settle(r: redis.Redis, workers: list[subprocess.Popen[str]]) -> None:
    """Wait until the processors have drained everything (bounded); leases of killed workers
    expire within LEASE_SECONDS."""
    deadline = time.monotonic() + 150  # a bound for a loaded machine, not a speed expectation
    while time.monotonic() < deadline:
        if r.zcard("RAW_MEMORY_QUEUE") == 0 and r.zcard("{RAW_MEMORY_QUEUE}:inflight") == 0:
            return
        time.sleep(0.2)  # polling the system under test for completion, bounded
    queued = r.zrange("RAW_MEMORY_QUEUE", 0, 20, withscores=True)
    ready = r.zrange("{RAW_MEMORY_QUEUE}:ready", 0, -1, withscores=True)
    inflight = r.zrange("{RAW_MEMORY_QUEUE}:inflight", 0, -1, withscores=True)
    raise AssertionError(f"the queue did not drain: queued {queued}, ready {ready}, in flight {inflight}")


def verify(r: redis.Redis, tally: Tally) -> dict[str, Any]:
    """Every accepted submission processed once or dead with a reason; no memory written twice."""
    from memproc import keys

    processed = dead = lost = 0
    for vs in {vs for vs, _ in tally.accepted}:
        vk = keys.VectorstoreKeys(vs)
        raw_ids = r.zrange(vk.raw_index, 0, -1)
        for rid in raw_ids:
            h = r.hgetall(vk.raw(rid))
            if h.get("status") == "processed":
                processed += 1
            else:
                assert h.get("status") == "error" and h.get("last_error"), (rid, h)
                dead += 1
                lost += bool(h.get("record_lost"))
        memories = r.zrange(vk.memory_index, 0, -1)
        assert len(memories) == len(set(memories))
        texts = Counter(
            json.loads(r.execute_command("VGETATTR", vs, m) or "{}").get("text") for m in memories
        )
        duplicated = {t: c for t, c in texts.items() if c > 1}
        assert not duplicated, duplicated  # the same fact twice: written twice or not reconciled
    for (vs, _sid), rid in tally.accepted.items():
        assert r.hget(keys.VectorstoreKeys(vs).raw(rid), "status") in ("processed", "error"), rid
    assert tally.slowest <= STORE_RAW_BUDGET_SECONDS, tally.slowest
    return {
        "requests": tally.requests,
        "answers": dict(tally.codes),
        "faults": dict(tally.faults),
        "accepted_sessions": len(tally.accepted),
        "processed": processed,
        "dead_letters": dead,
        "records_lost": lost,
        "slowest_store_raw_seconds": round(tally.slowest, 3),
    }


ALL_FAULTS = ("kill_processor", "restart_redis", "freeze_redis")


def main() -> int:
    """make chaos: long rounds of every fault, then the evicting and the full store."""
    seconds = float(os.environ.get("MEMPROC_CHAOS_SECONDS", "120"))
    seed = int(os.environ.get("MEMPROC_CHAOS_SEED", str(int(time.time()))))
    rounds = {
        "faults": run(seconds, processors=3, seed=seed, faults=ALL_FAULTS),
        "allkeys-lru": run(
            seconds / 4, processors=2, seed=seed, faults=("kill_processor",), policy="allkeys-lru"
        ),
        "full": run(seconds / 2, processors=2, seed=seed, faults=ALL_FAULTS, maxmemory_headroom=2_000_000),
    }
    print(json.dumps({"seed": seed, "seconds": seconds, "rounds": rounds}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
