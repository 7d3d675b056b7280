"""The process-wide Redis clients, reused across warm Lambda invocations, bundled as a `Store`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import quote

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


def _secret_value(arn: str) -> str:
    """A Secrets Manager secret's string, cached for five minutes (warm invocations reuse it)."""
    from aws_lambda_powertools.utilities.parameters import get_secret

    secret = get_secret(arn, max_age=300)
    return secret.strip() if isinstance(secret, str) else secret.decode().strip()


def redis_url(settings: Settings) -> str:
    """REDIS_URL, else a Secrets Manager secret holding it, else one built from REDIS_HOST/PORT/DB,
    REDIS_TLS (``rediss://``) and, when REDIS_PASSWORD_SECRET_ARN is set, REDIS_USERNAME (optional)
    with the password that secret holds.

    Username and password are percent-encoded: redis-py decodes them again, and a generated
    password may hold ``#``, ``&`` or ``$``, which would otherwise end or corrupt the URL.
    """
    if settings.redis_url:
        return settings.redis_url
    if settings.redis_secret_arn:
        return _secret_value(settings.redis_secret_arn)
    scheme = "rediss" if settings.redis_tls else "redis"
    userinfo = ""
    if settings.redis_password_secret_arn:
        password = quote(_secret_value(settings.redis_password_secret_arn), safe="")
        userinfo = f"{quote(settings.redis_username or '', safe='')}:{password}@"
    return f"{scheme}://{userinfo}{settings.redis_host}:{settings.redis_port}/{settings.redis_db}"


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
