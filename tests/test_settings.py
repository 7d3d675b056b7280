"""Configuration: one validated model, secrets from Secrets Manager (moto), clear failures."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from memproc import llm
from memproc.dal import connection
from memproc.settings import ConfigurationError, get_settings, load_settings
from tests.api_client import call, mem_path
from tests.redis_server import RedisServer


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


def test_openai_key_from_secrets_manager(aws: None, env: pytest.MonkeyPatch) -> None:
    arn = boto3.client("secretsmanager").create_secret(Name="memproc/openai", SecretString="sk-test\n")["ARN"]
    provider = llm.make_provider(load_settings(openai_secret_arn=arn))
    assert provider.name == "openai"
    assert llm.make_provider(load_settings()).name == "offline"
