"""The process-wide Redis clients, reused across warm Lambda invocations, bundled as a `Store`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import redis

from memproc.settings import Settings, get_settings

# What a failed Redis call raises, for code above the data-access layer to catch.
StoreError = redis.RedisError


@dataclass(frozen=True)
class Store:
    """What data-access calls need: a client with str replies, and one with bytes replies for
    transcripts (which may be stored compressed)."""

    r: redis.Redis
    rb: redis.Redis


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
def _store(url: str, timeout: float) -> Store:
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        "max_connections": 512,
    }
    text = redis.Redis.from_url(url, decode_responses=True, **common)
    binary = redis.Redis.from_url(url, decode_responses=False, **common)
    return Store(text, binary)


def get_store(settings: Settings | None = None) -> Store:
    s = settings or get_settings()
    return _store(redis_url(s), s.redis_socket_timeout_seconds)
