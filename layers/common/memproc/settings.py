"""All configuration in one validated model, read from the environment once per process."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# What the offline provider (no OpenAI key) calls its hashing embeddings.
OFFLINE_EMBEDDING_MODEL = "offline-hashing"


class ConfigurationError(RuntimeError):
    """A configuration value is invalid; the message names the environment variable."""


class Settings(BaseSettings):
    """Environment variables are the field names in upper case (``REDIS_URL``, ``MAX_ATTEMPTS``...)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # Redis: REDIS_URL wins, then REDIS_SECRET_ARN (a secret holding the URL); otherwise the URL is
    # built from host/port/db, TLS and an optional username and password. The managed stores the
    # template creates (ElastiCache, MemoryDB) use the latter: REDIS_PASSWORD_SECRET_ARN names a
    # secret whose value is the password itself, so it never sits in the environment.
    redis_url: str | None = None
    redis_host: str = "localhost"
    redis_port: int = Field(6379, ge=1, le=65535)
    redis_db: int = Field(0, ge=0)
    redis_tls: bool = False
    redis_username: str | None = None
    redis_password_secret_arn: str | None = None
    redis_secret_arn: str | None = None
    # Bounded, so an unreachable or frozen store is a fast 503, not a request that hangs.
    redis_connect_timeout_seconds: float = Field(1.0, gt=0)
    redis_socket_timeout_seconds: float = Field(2.0, gt=0)

    # LLM: without a key (or secret) the offline provider is used.
    openai_api_key: SecretStr | None = None
    openai_secret_arn: str | None = None
    openai_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int = Field(1536, ge=2, le=4096)
    embedding_encoding: Literal["base64", "float"] = "base64"
    # "lean": llm/transport.py under the openai client; "httpx": httpx's own transport (as with a proxy).
    llm_http_transport: Literal["lean", "httpx"] = "lean"
    llm_timeout_seconds: float = Field(60.0, gt=0)
    llm_max_retries: int = Field(2, ge=0, le=10)
    llm_chunk_chars: int = Field(48_000, ge=1_000)
    # The shared rate limit of every processor together (one limiter in Redis), per
    # LLM_RATE_WINDOW_SECONDS: the chat (extraction) model's and the embedding model's, each its
    # own, as OpenAI limits each model separately. 0 or empty: unlimited.
    llm_requests_per_minute: int = Field(0, ge=0)
    llm_tokens_per_minute: int = Field(0, ge=0)
    embedding_requests_per_minute: int = Field(0, ge=0)
    embedding_tokens_per_minute: int = Field(0, ge=0)
    # 60 for the providers' per-minute limits; tests and benchmarks shorten it.
    llm_rate_window_seconds: float = Field(60.0, gt=0)
    # How much later than its booking a request may reach the provider (client, network): the
    # limiter's window is this much longer, so the provider never sees more than the limit.
    llm_rate_margin_seconds: float = Field(1.0, ge=0)
    # A backstop for near-identical restatements the LLM was not shown (make eval measures it).
    merge_similarity_threshold: float = Field(0.97, ge=0.0, le=1.0)
    # Memories: a vector set (Redis 8) or the Query Engine (ElastiCache for Valkey, MemoryDB).
    vector_backend: Literal["auto", "vectorset", "search"] = "auto"

    # Events: SessionProcessed / SessionFailed to this EventBridge bus after each commit (empty: none).
    event_bus_name: str | None = None

    # Retention.
    raw_retention_days: int = Field(30, ge=1)
    session_retention_days: int = Field(365, ge=1)

    # Queue.
    max_attempts: int = Field(5, ge=1, le=100)
    # Renewed every third of it while a worker lives; after a crash the item is back within it.
    lease_seconds: int = Field(60, ge=5)
    retry_base_seconds: float = Field(5.0, ge=0)
    retry_max_seconds: float = Field(900.0, ge=0)
    max_queue_size: int = Field(1_000_000, ge=1)
    max_pending_per_vectorstore: int = Field(100_000, ge=1)

    # Processor.
    batch_size: int = Field(16, ge=1, le=1000)
    concurrency: int = Field(8, ge=1, le=256)
    # Sessions of one vectorstore in flight at once. 1 decides each against the memories the
    # previous one left (exact, one LLM call per session); more run in parallel, and a session whose
    # related memories changed meanwhile is decided again (an extra LLM call).
    vectorstore_concurrency: int = Field(1, ge=1, le=64)
    processing_interval_seconds: int = Field(60, ge=1)
    default_rate_per_second: float = Field(1.0, gt=0)
    # Processors at once, scheduled and fanned out: a scheduled run that finds the backlog too large
    # for one starts up to MAX_PROCESSORS - 1 more (memproc.fanout); a run over the limit leaves at
    # once. 1 (the default off AWS) never fans out; the template sets it from MaxProcessors.
    max_processors: int = Field(1, ge=1, le=1000)

    # Who may call the API (memproc.auth). The template sets AUTH_MODE from its AuthMode parameter;
    # unset it fails closed (IAM: every request needs an IAM caller). NONE, no identity at all, is
    # for the local server and the tests.
    auth_mode: Literal["IAM", "COGNITO", "API_KEY", "NONE"] = "IAM"
    # COGNITO: the claim naming the caller's vectorstore, and the group that may use every one
    # (empty: no admin group).
    tenant_claim: str = Field("custom:vectorstore", min_length=1)
    admin_group: str = "admin"

    # Request limits.
    max_body_bytes: int = Field(1_048_576, ge=1_024)
    max_metadata_bytes: int = Field(16_384, ge=2)
    # zlib-6 halves realistic chat text from about 8 KB up (make bench, storage section).
    compress_min_bytes: int = Field(8_192, ge=0)

    @field_validator(
        "llm_requests_per_minute",
        "llm_tokens_per_minute",
        "embedding_requests_per_minute",
        "embedding_tokens_per_minute",
        mode="before",
    )
    @classmethod
    def _unlimited(cls, value: Any) -> Any:
        """None or an empty value (a blank template parameter) means no limit."""
        return 0 if value is None or (isinstance(value, str) and not value.strip()) else value

    @field_validator("admin_group")
    @classmethod
    def _group_name(cls, v: str) -> str:
        # API Gateway joins a token's groups into one string; a name with these could not be found.
        if any(ch.isspace() or ch in ",[]" for ch in v):
            raise ValueError("ADMIN_GROUP must not contain whitespace, commas or brackets")
        return v

    @model_validator(mode="after")
    def _retry_bounds(self) -> Settings:
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError("RETRY_MAX_SECONDS must be >= RETRY_BASE_SECONDS")
        return self

    @property
    def embeddings(self) -> tuple[str, int]:
        """(model, dimensions) of the vectors this deployment's processor makes: the OpenAI model
        when a key is configured (OPENAI_API_KEY or OPENAI_SECRET_ARN), else the offline one. store_raw
        compares it with the vectorstore's, without reading the key."""
        has_key = bool(self.openai_secret_arn) or bool(
            self.openai_api_key and self.openai_api_key.get_secret_value().strip()
        )
        return (self.embedding_model if has_key else OFFLINE_EMBEDDING_MODEL), self.embedding_dimensions

    @property
    def raw_retention_seconds(self) -> int:
        return self.raw_retention_days * 86_400

    @property
    def session_retention_seconds(self) -> int:
        return self.session_retention_days * 86_400


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning pydantic's error into one that names the environment variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper() or 'SETTINGS'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached: Lambda reuses them across warm invocations)."""
    return load_settings()
