"""The Redis behind ``memproc serve``: ``REDIS_URL`` when set, else a redis-server started here.

The server keeps its data (append-only file) in ``~/.cache/memproc/dev-data`` so memories survive
a restart of ``make dev``; it listens on 6379, or on a free port when 6379 is taken.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def _free_port(preferred: int) -> int:
    """``preferred`` unless something answers there already; then any free port."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        return int(spare.getsockname()[1])


def start_dev_redis() -> tuple[str, subprocess.Popen[bytes] | None]:
    """(URL, the process started here or None): REDIS_URL if set, else MEMPROC_REDIS_SERVER's binary."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"], None
    binary = os.environ.get("MEMPROC_REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        raise SystemExit("memproc serve: set REDIS_URL or MEMPROC_REDIS_SERVER (make dev does)")
    port = _free_port(int(os.environ.get("MEMPROC_DEV_REDIS_PORT", "6379")))
    data = Path(os.environ.get("MEMPROC_CACHE", Path.home() / ".cache/memproc")) / "dev-data"
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--logfile",
            str(data / "redis.log"),
        ],
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):  # up to 5 s for the server to accept connections
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return url, proc
