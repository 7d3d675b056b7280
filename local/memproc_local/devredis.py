"""The Redis behind ``memproc serve``: the one you name, else a redis-server started here.

- ``REDIS_URL``, or any of the specification's ``REDIS_HOST`` / ``REDIS_PORT`` / ``REDIS_DB``
  (memproc's settings build the URL from them, with ``REDIS_TLS`` and the rest): that server is
  used and nothing is started.
- Otherwise ``MEMPROC_REDIS_SERVER`` (``make dev`` provisions it) is started on 6379, or on a free
  port when 6379 is taken, keeping its data (append-only file) in this checkout's ``.dev/redis``
  (``MEMPROC_DEV_DATA`` to put it elsewhere), so memories survive a restart of ``make dev`` and
  two clones never share one. ``make dev-reset`` deletes it.

The URL in use is written to ``.dev/redis.url`` for ``make redis-cli``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]  # local/memproc_local/devredis.py -> the checkout
GIVEN = ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_DB")


def data_dir() -> Path:
    """Where the started server keeps its data: MEMPROC_DEV_DATA, else .dev/redis here."""
    return Path(os.environ.get("MEMPROC_DEV_DATA") or ROOT / ".dev" / "redis")


def url_file() -> Path:
    return ROOT / ".dev" / "redis.url"


def _free_port(preferred: int) -> int:
    """``preferred`` unless something answers there already; then any free port."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        return int(spare.getsockname()[1])


def given_url() -> str | None:
    """The Redis the environment names (REDIS_URL, or REDIS_HOST/PORT/DB), or None."""
    if not any(os.environ.get(name) for name in GIVEN):
        return None
    from memproc.dal.connection import redis_url
    from memproc.settings import load_settings

    return redis_url(load_settings())


def start_dev_redis() -> tuple[str, subprocess.Popen[bytes] | None]:
    """(URL, the process started here or None)."""
    url = given_url()
    proc = None
    if url is None:
        url, proc = _start()
    url_file().parent.mkdir(parents=True, exist_ok=True)
    url_file().write_text(url + "\n")
    return url, proc


def _start() -> tuple[str, subprocess.Popen[bytes]]:
    binary = os.environ.get("MEMPROC_REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        raise SystemExit(
            "memproc serve: set REDIS_URL (or REDIS_HOST/REDIS_PORT/REDIS_DB) or MEMPROC_REDIS_SERVER "
            "(make dev does)"
        )
    port = _free_port(int(os.environ.get("MEMPROC_DEV_REDIS_PORT", "6379")))
    data = data_dir()
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


def forget_url() -> None:
    """make dev has stopped: make redis-cli has nothing to talk to."""
    url_file().unlink(missing_ok=True)
