"""The process-wide Redis clients, reused across warm Lambda invocations, bundled as a `Store`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterDownError, MovedError, ReadOnlyError
from redis.retry import Retry

from memproc.dal.batch import Client
from memproc.dal.primary import Primary, primary_client
from memproc.settings import Settings, get_settings

if TYPE_CHECKING:
    from memproc.dal.memory_index import MemoryIndex

# What a failed Redis call raises, for code above the data-access layer to catch.
StoreError = redis.RedisError


def store_failure(exc: Exception) -> tuple[str, str] | None:
    """What a failed Redis call means to a client: (code, reason) for a store that is down, busy or
    full (answered 503 with Retry-After), None for anything else (a bug: 5xx)."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "store_full", "the memory store is full"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
        return "store_unavailable", f"the memory store is unavailable ({type(exc).__name__})"
    if isinstance(exc, ReadOnlyError | MovedError | ClusterDownError):
        # A failover in progress: the old primary is a replica, or the shard has no primary yet.
        return "store_unavailable", "the memory store is failing over"
    return None


@dataclass(frozen=True)
class Store:
    """What data-access calls need: a client with str replies, one with bytes replies for
    transcripts (which may be stored compressed), and the memory index the server offers."""

    r: Client
    rb: Client
    vector_backend: str = "auto"
    dimensions: int = 1536

    @cached_property
    def index(self) -> MemoryIndex:
        """Resolved on first use (one COMMAND INFO for auto), so store_raw never pays for it."""
        from memproc.dal.memory_index import open_index

        return open_index(self)


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
def _store(url: str, connect_timeout: float, timeout: float, vector_backend: str, dimensions: int) -> Store:
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 30,
        "max_connections": 512,
        # One quick retry, for a pooled connection a restart or failover closed, or a command a
        # replica refused (MOVED, READONLY: it did not run; the retry's connection goes to the
        # primary found again, see dal/primary.py). Not on timeouts: redis-py's default (10
        # retries) turns a frozen store into a minute-long hang, and a retried write that did run
        # is answered by the library as a duplicate or as stale.
        "retry": Retry(
            ExponentialBackoff(cap=0.2, base=0.05),
            1,
            supported_errors=(redis.ConnectionError, MovedError, ReadOnlyError),
        ),
    }
    primary = Primary()  # both clients follow one primary, found once per process
    text = primary_client(url, primary, decode_responses=True, **common)
    binary = primary_client(url, primary, decode_responses=False, **common)
    return Store(text, binary, vector_backend, dimensions)


def get_store(settings: Settings | None = None) -> Store:
    s = settings or get_settings()
    return _store(
        redis_url(s),
        s.redis_connect_timeout_seconds,
        s.redis_socket_timeout_seconds,
        s.vector_backend,
        s.embedding_dimensions,
    )
