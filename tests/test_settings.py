"""Configuration: one validated model, secrets from Secrets Manager (moto), clear failures."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
import redis
from moto import mock_aws

from memproc import llm
from memproc.dal import connection
from memproc.settings import ConfigurationError, get_settings, load_settings
from tests.api_client import call, mem_path
from tests.redis_server import RedisServer

# Settings and clients: the memory-index backend does not matter.
pytestmark = pytest.mark.one_backend


@pytest.fixture
def aws(env: pytest.MonkeyPatch) -> Iterator[None]:
    env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_ATTEMPTS", "many"), ("REDIS_PORT", "70000"), ("RAW_RETENTION_DAYS", "0"), ("CONCURRENCY", "-1")],
)
def test_a_bad_value_fails_fast_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=name):
        load_settings()


def test_retry_bounds_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_BASE_SECONDS", "10")
    monkeypatch.setenv("RETRY_MAX_SECONDS", "5")
    with pytest.raises(ConfigurationError, match="RETRY_MAX_SECONDS"):
        load_settings()


def test_redis_url_from_secrets_manager(
    aws: None, env: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    arn = boto3.client("secretsmanager").create_secret(Name="memproc/redis", SecretString=redis_server.url)[
        "ARN"
    ]
    env.delenv("REDIS_URL")
    env.setenv("REDIS_HOST", "unreachable.invalid")
    env.setenv("REDIS_SECRET_ARN", arn)
    get_settings.cache_clear()
    connection._store.cache_clear()
    res = call("POST", mem_path("user123", "/store_raw"), json_body={"session_data": "user: hi"})
    assert res.status == 202
    assert redis_server.client().zcard("RAW_MEMORY_QUEUE") == 1


# Every character an ElastiCache AUTH token may hold besides letters and digits (the template's
# generated secret keeps to them): the URL must carry them through percent-encoding.
PASSWORD = "Pw-16+chars!&#$^<>-x9Z"


def _password_secret(value: str = PASSWORD) -> str:
    return str(boto3.client("secretsmanager").create_secret(Name="memproc/store", SecretString=value)["ARN"])


def test_managed_store_settings_give_a_tls_client_with_username_and_password(
    aws: None, env: pytest.MonkeyPatch
) -> None:
    """What the template hands the functions for ElastiCache/MemoryDB: host, port, TLS, username and
    the ARN of the secret that holds the password."""
    env.delenv("REDIS_URL")
    env.setenv("REDIS_HOST", "master.memproc.abc123.use1.cache.amazonaws.com")
    env.setenv("REDIS_PORT", "6379")
    env.setenv("REDIS_TLS", "true")
    env.setenv("REDIS_USERNAME", "default")
    env.setenv("REDIS_PASSWORD_SECRET_ARN", _password_secret())
    get_settings.cache_clear()
    settings = get_settings()

    url = connection.redis_url(settings)
    assert url.startswith("rediss://default:")
    assert PASSWORD not in url  # percent-encoded, so '#' cannot end the URL early
    store = connection.get_store(settings)
    for client in (store.r, store.rb):
        # TLS, primary-seeking
        assert issubclass(client.connection_pool.connection_class, redis.SSLConnection)
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == (settings.redis_host, 6379, 0)
        assert (kwargs["username"], kwargs["password"]) == ("default", PASSWORD)


def test_without_tls_or_password_the_url_is_plain(env: pytest.MonkeyPatch) -> None:
    settings = load_settings(redis_url=None, redis_host="10.0.0.5", redis_port=6380, redis_db=2)
    assert connection.redis_url(settings) == "redis://10.0.0.5:6380/2"


def test_password_from_secrets_manager_authenticates_an_acl_user(
    aws: None, env: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    """The whole path against a real server: an ACL user whose password only the secret knows."""
    admin = redis_server.client()
    admin.acl_setuser("memproc-app", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"])
    try:
        env.delenv("REDIS_URL")
        env.setenv("REDIS_HOST", "127.0.0.1")
        env.setenv("REDIS_PORT", str(redis_server.port))
        env.setenv("REDIS_USERNAME", "memproc-app")
        env.setenv("REDIS_PASSWORD_SECRET_ARN", _password_secret())
        get_settings.cache_clear()
        connection._store.cache_clear()
        res = call("POST", mem_path("user123", "/store_raw"), json_body={"session_data": "user: hi"})
        assert res.status == 202
        assert admin.zcard("RAW_MEMORY_QUEUE") == 1
        assert connection.get_store().r.acl_whoami() == "memproc-app"
    finally:
        admin.acl_deluser("memproc-app")


def test_openai_key_from_secrets_manager(aws: None, env: pytest.MonkeyPatch) -> None:
    arn = boto3.client("secretsmanager").create_secret(Name="memproc/openai", SecretString="sk-test\n")["ARN"]
    provider = llm.make_provider(load_settings(openai_secret_arn=arn))
    assert provider.name == "openai"
    assert llm.make_provider(load_settings()).name == "offline"


def test_memproc_process_takes_the_environment_unless_a_flag_is_given(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Integrity defect 8: argparse defaults used to override PROCESSING_INTERVAL_SECONDS, and
    `process --retention-days` set an expiry the scheduled cleanup then contradicted."""
    from memproc_local.cli import main as cli_main

    env.setenv("PROCESSING_INTERVAL_SECONDS", "7")
    env.setenv("CONCURRENCY", "3")
    env.setenv("RAW_RETENTION_DAYS", "45")
    get_settings.cache_clear()
    assert cli_main(["process", "--run-once"]) == 0
    banner = capsys.readouterr().err
    assert "concurrency=3 " in banner and "interval=7s" in banner and "retention=45d" in banner
    assert cli_main(["process", "--run-once", "--concurrency", "2", "--interval", "9"]) == 0
    banner = capsys.readouterr().err
    assert "concurrency=2 " in banner and "interval=9s" in banner
    with pytest.raises(SystemExit) as refused:  # one retention: RAW_RETENTION_DAYS, for both
        cli_main(["process", "--run-once", "--retention-days", "60"])
    assert refused.value.code == 2
