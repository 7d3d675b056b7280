"""The process-wide Redis clients and the Lua function library every write goes through."""

from __future__ import annotations

import hashlib
import threading
from functools import cache
from importlib import resources
from typing import Any

import redis

from memproc.settings import Settings, get_settings

_LIBRARY_SOURCE = resources.files("memproc").joinpath("lua/memproc.lua").read_text()
LIBRARY_VERSION = hashlib.sha256(_LIBRARY_SOURCE.encode()).hexdigest()[:12]
LIBRARY = _LIBRARY_SOURCE.replace("__VERSION__", LIBRARY_VERSION)
_load_lock = threading.Lock()


def redis_url(settings: Settings) -> str:
    """REDIS_URL, else a Secrets Manager secret holding it, else REDIS_HOST/PORT/DB."""
    if settings.redis_url:
        return settings.redis_url
    if settings.redis_secret_arn:
        from aws_lambda_powertools.utilities.parameters import get_secret

        secret = get_secret(settings.redis_secret_arn, max_age=300)
        return secret.strip() if isinstance(secret, str) else secret.decode().strip()
    return f"redis://{settings.redis_host}:{settings.redis_port}/{settings.redis_db}"


@cache
def _clients(url: str, timeout: float) -> tuple[redis.Redis, redis.Redis]:
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        "max_connections": 512,
    }
    text = redis.Redis.from_url(url, decode_responses=True, **common)
    binary = redis.Redis.from_url(url, decode_responses=False, **common)
    return text, binary


def get_redis(settings: Settings | None = None) -> redis.Redis:
    """Client with str responses; reused across warm Lambda invocations."""
    s = settings or get_settings()
    return _clients(redis_url(s), s.redis_socket_timeout_seconds)[0]


def get_binary_redis(settings: Settings | None = None) -> redis.Redis:
    """Client with bytes responses, for transcripts (which may be stored compressed)."""
    s = settings or get_settings()
    return _clients(redis_url(s), s.redis_socket_timeout_seconds)[1]


def load_library(client: redis.Redis) -> None:
    client.function_load(LIBRARY, replace=True)


def fcall(client: redis.Redis, name: str, keys: list[str], args: list[Any]) -> Any:
    """Call a library function; the first call against a fresh server loads the library."""
    fn = f"{name}_{LIBRARY_VERSION}"
    try:
        return client.fcall(fn, len(keys), *keys, *args)
    except redis.ResponseError as exc:
        if "Function not found" not in str(exc):
            raise
    with _load_lock:
        load_library(client)
    return client.fcall(fn, len(keys), *keys, *args)


def fcall_ro(client: redis.Redis, name: str, keys: list[str], args: list[Any]) -> Any:
    """Read-only library call (FCALL_RO), so it can run on a replica."""
    fn = f"{name}_{LIBRARY_VERSION}"
    try:
        return client.fcall_ro(fn, len(keys), *keys, *args)
    except redis.ResponseError as exc:
        if "Function not found" not in str(exc):
            raise
    with _load_lock:
        load_library(client)
    return client.fcall_ro(fn, len(keys), *keys, *args)
