"""Real Redis servers for tests and benchmarks, started on free ports from the provisioned binary."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def redis_binary() -> str:
    """MEMPROC_REDIS_SERVER (set by `make test`), else whatever scripts/provision_redis.sh finds."""
    path = os.environ.get("MEMPROC_REDIS_SERVER")
    if path:
        return path
    out = subprocess.run(
        [str(ROOT / "scripts/provision_redis.sh"), "--binary"], check=True, capture_output=True, text=True
    )
    os.environ["MEMPROC_REDIS_SERVER"] = out.stdout.strip()
    return os.environ["MEMPROC_REDIS_SERVER"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process with its own port and directory; no persistence."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or redis_binary()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="memproc-redis-")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--logfile",
                os.path.join(self.dir, "log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {self.log()}") from None
                time.sleep(0.02)

    def client(self, decode: bool = True) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=decode)

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
    def requests(self) -> Iterator[list[str]]:
        """Collect the top-level commands clients send while the block runs (MONITOR, which
        marks commands run inside Lua as such, so those are left out)."""
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
                        seen.append(cmd["command"].split(" ", 1)[0].upper())

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
