"""Real servers for tests and benchmarks, started on free ports from the provisioned binaries.

Engines: Redis 8 (vector sets, what the product uses today), Valkey 9 (what ElastiCache and
MemoryDB run) and Redis Stack 7.4 with RediSearch (the FT.* query engine those services offer);
any of them as a one-node cluster holding all 16384 slots, as MemoryDB always runs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import redis
from redis.cluster import RedisCluster

ROOT = Path(__file__).resolve().parent.parent

Engine = Literal["redis8", "valkey9", "stack"]
# The variable `make test` exports each engine's binary in.
BINARY_ENV: dict[Engine, str] = {
    "redis8": "MEMPROC_REDIS_SERVER",
    "valkey9": "MEMPROC_VALKEY_SERVER",
    "stack": "MEMPROC_STACK_SERVER",
}


def engine_binary(engine: Engine) -> str:
    """The engine's variable (set by `make test`), else what scripts/provision_engines.sh finds
    (from the cache once provisioned)."""
    var = BINARY_ENV[engine]
    path = os.environ.get(var)
    if path:
        return path
    out = subprocess.run(
        [str(ROOT / "scripts/provision_engines.sh"), engine], check=True, capture_output=True, text=True
    )
    os.environ[var] = out.stdout.strip()
    return os.environ[var]


def redis_binary() -> str:
    return engine_binary("redis8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One server process of `engine` with its own port and directory; no persistence. With
    `cluster`, a one-node cluster that owns `slots` (every slot unless told; ready once CLUSTER
    INFO says ok), or none (`slots=None`: a node to join to another, see `replicate` and `meet`)."""

    def __init__(
        self,
        binary: str | None = None,
        *,
        engine: Engine = "redis8",
        cluster: bool = False,
        slots: tuple[int, int] | None = (0, 16383),
    ) -> None:
        self.engine = engine
        self.cluster = cluster
        self.binary = binary or engine_binary(engine)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=f"memproc-{engine}-")
        log = os.path.join(self.dir, "log")
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", self.dir, "--logfile", log]
        if cluster:
            # An explicit bus port: the default (port + 10000) may be taken or past 65535.
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-port", str(free_port())]
            # A replica's first sync starts at once, not after the default 5 s wait for others.
            args += ["--repl-diskless-sync-delay", "0"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        client = self.client()
        self._wait(client.ping, "did not start")
        if cluster and slots is not None:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", *slots)
        if cluster and slots == (0, 16383):
            # A master reports ok only ~2 s after it started (Redis' and Valkey's rejoin delay).
            self._wait(lambda: client.cluster("INFO")["cluster_state"] == "ok", "cluster_state stayed fail")
        info = client.info("server")
        # Valkey reports redis_version 7.2.4 for client compatibility and its own in valkey_version.
        self.server_name: str = info.get("server_name", "redis")
        self.version: str = str(info.get("valkey_version", info["redis_version"]))

    def _wait(self, ready: Callable[[], object], what: str) -> None:
        """Poll a starting server until `ready()` is true, bounded (10 s)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                if ready():
                    return
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log()
                self.stop()
                raise RuntimeError(f"{self.engine} {what}: {log}")
            time.sleep(0.02)

    def meet(self, other: RedisServer) -> str:
        """Join `other`'s cluster and wait (bounded) until this node knows it; `other`'s node id."""
        client = self.client()
        other_id = str(other.client().cluster("MYID"))
        bus_port = int(str(other.client().config_get("cluster-port")["cluster-port"]))
        client.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port, bus_port)
        self._wait(lambda: other_id in client.execute_command("CLUSTER", "NODES"), "never met the other node")
        return other_id

    def replicate(self, primary: RedisServer) -> None:
        """Become `primary`'s replica in its cluster, once the replication link is up and the
        primary lists it as its replica (a failover needs both; bounded)."""
        client = self.client()
        primary_id = self.meet(primary)
        client.execute_command("CLUSTER", "REPLICATE", primary_id)
        self._wait(
            lambda: client.info("replication").get("master_link_status") == "up", "replica link stayed down"
        )
        own_id = str(client.cluster("MYID"))
        replicas = lambda: str(primary.client().execute_command("CLUSTER", "REPLICAS", primary_id))  # noqa: E731
        self._wait(lambda: own_id in replicas(), "the primary never listed its replica")

    def client(self, decode: bool = True) -> redis.Redis:
        """A plain connection to the node (in a one-node cluster every key is local to it)."""
        return redis.Redis.from_url(self.url, decode_responses=decode)

    def cluster_client(self, decode: bool = True) -> RedisCluster:
        """The cluster-aware client, as an application on MemoryDB would connect."""
        if not self.cluster:
            raise ValueError("not started with cluster=True")
        return RedisCluster.from_url(self.url, decode_responses=decode)

    def log(self) -> str:
        try:
            return Path(self.dir, "log").read_text()[-2000:]
        except OSError:
            return ""

    def commands_seen(self) -> dict[str, int]:
        """Calls per command since the last reset (includes calls made inside Lua)."""
        stats = self.client().info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    @contextmanager
    def requests(self, whole: bool = False) -> Iterator[list[str]]:
        """Collect the top-level commands clients send while the block runs (MONITOR, which
        marks commands run inside Lua as such, so those are left out): their names, or with
        `whole` each command with its arguments as MONITOR shows them."""
        seen: list[str] = []
        marker = f"memproc-marker-{uuid.uuid4().hex}"
        marker_client = self.client()
        marker_client.ping()
        with self.client().monitor() as m:
            # MONITOR is registered once its OK arrived; the block's commands come after.
            def collect() -> None:
                for cmd in m.listen():
                    if marker in cmd["command"]:
                        return
                    if cmd.get("client_type") != "lua" and "monitor" not in cmd["command"].lower():
                        seen.append(cmd["command"] if whole else cmd["command"].split(" ", 1)[0].upper())

            thread = threading.Thread(target=collect, daemon=True)
            thread.start()
            try:
                yield seen
            finally:
                marker_client.echo(marker)
                thread.join(10)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
