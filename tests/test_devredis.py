"""make dev's Redis: the one the environment names (REDIS_URL or the specification's REDIS_HOST /
REDIS_PORT / REDIS_DB), else one started with its data in this checkout (or MEMPROC_DEV_DATA)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import redis

from memproc_local import devredis
from tests.redis_server import ROOT, RedisServer


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkout of its own, so the real .dev/ of this one is left alone."""
    monkeypatch.setattr(devredis, "ROOT", tmp_path)
    for name in (*devredis.GIVEN, "MEMPROC_DEV_DATA"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_the_data_lives_in_the_checkout_unless_told_otherwise(
    checkout: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert devredis.data_dir() == checkout / ".dev" / "redis"
    assert (ROOT / ".gitignore").read_text().splitlines().count(".dev/") == 1
    monkeypatch.setenv("MEMPROC_DEV_DATA", str(tmp_path / "elsewhere"))
    assert devredis.data_dir() == tmp_path / "elsewhere"


@pytest.mark.parametrize("given", ["host_port_db", "url"])
def test_a_named_redis_is_used_and_none_is_started(
    checkout: Path, monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, given: str
) -> None:
    host, port = redis_server.url.removeprefix("redis://").split("/")[0].split(":")
    if given == "url":
        monkeypatch.setenv("REDIS_URL", f"redis://{host}:{port}/3")
    else:
        monkeypatch.setenv("REDIS_HOST", host)
        monkeypatch.setenv("REDIS_PORT", port)
        monkeypatch.setenv("REDIS_DB", "3")
    url, proc = devredis.start_dev_redis()
    assert proc is None and url == f"redis://{host}:{port}/3"
    assert (checkout / ".dev" / "redis.url").read_text().strip() == url
    assert not (checkout / ".dev" / "redis").exists()
    devredis.forget_url()
    assert not (checkout / ".dev" / "redis.url").exists()


def test_provisioning_skips_the_build_when_a_redis_is_named() -> None:
    out = subprocess.run(
        [str(ROOT / "scripts" / "provision_redis.sh")],
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "REDIS_PORT": "6390"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "" and "REDIS_HOST" in out.stderr


def test_a_started_redis_keeps_its_data_in_the_checkout(
    checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as spare:  # a port nothing uses, rather than 6379
        spare.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MEMPROC_DEV_REDIS_PORT", str(spare.getsockname()[1]))
    url, proc = devredis.start_dev_redis()
    assert proc is not None
    try:
        redis.Redis.from_url(url).set("kept", "1")
        assert (checkout / ".dev" / "redis.url").read_text().strip() == url
        assert (checkout / ".dev" / "redis" / "redis.log").exists()
    finally:
        proc.terminate()
        proc.wait(10)
