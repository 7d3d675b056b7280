"""The provider's requests built from templates (llm/sdk_client.py) are the requests the SDK builds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai._models import FinalRequestOptions

from memproc.llm.http_pool import httpx
from memproc.llm.openai_provider import OpenAIProvider
from memproc.llm.sdk_client import client_type
from memproc.llm.transport import LeanTransport
from tests.fake_openai import FakeOpenAI

ENDPOINTS = ("/chat/completions", "/embeddings")


@pytest.fixture
def provider(provider_factory: Callable[..., OpenAIProvider]) -> OpenAIProvider:
    return provider_factory()


@pytest.fixture
def sdk_builds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(URL, attempt) of every request the SDK itself builds."""
    built: list[tuple[str, int]] = []
    build = openai.OpenAI._build_request

    def counted(self: Any, options: Any, *, retries_taken: int = 0) -> Any:
        built.append((options.url, retries_taken))
        return build(self, options, retries_taken=retries_taken)

    monkeypatch.setattr(openai.OpenAI, "_build_request", counted)
    return built


def snapshot(request: Any) -> tuple[Any, ...]:
    """All of a request that reaches the wire or the transport, and what it sends there."""
    head, chunked, close = LeanTransport._head(request)
    return (
        request.method,
        str(request.url),
        request.headers.raw,
        request.headers.encoding,
        request.extensions,
        request.read(),
        b"".join(request.stream),
        head,
        chunked,
        close,
    )


def options(provider: OpenAIProvider, path: str, body: bytes, **changes: Any) -> FinalRequestOptions:
    """What `request` hands `_build_request` for a provider's call: its options copied, the body in."""
    return provider._options[path].model_copy(update={"content": body, "idempotency_key": "k", **changes})


def sdk_request(client: Any, opts: FinalRequestOptions, attempt: int) -> Any:
    return openai.OpenAI._build_request(client, opts, retries_taken=attempt)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    calls=st.lists(
        st.tuples(st.sampled_from(ENDPOINTS), st.integers(0, 2), st.binary(min_size=1, max_size=300)),
        min_size=1,
        max_size=8,
    ),
    cookie=st.none() | st.text("abcxyz0123", min_size=1, max_size=8),
)
def test_template_requests_equal_what_the_sdk_builds(
    provider: OpenAIProvider, calls: list[tuple[str, int, bytes]], cookie: str | None
) -> None:
    client = provider._client
    client.use_templates(provider._options)  # fresh templates per example
    client._client.cookies.clear()
    if cookie is not None:
        client._client.cookies.set("session", cookie, domain="127.0.0.1")
    for path, attempt, body in calls:
        opts = options(provider, path, body)
        made = client._build_request(opts, retries_taken=attempt)
        assert snapshot(made) == snapshot(sdk_request(client, opts, attempt))
        assert (b"Cookie" in dict(made.headers.raw)) == (cookie is not None)


def test_the_sdk_builds_each_endpoints_request_once_per_attempt(
    fake: FakeOpenAI, provider: OpenAIProvider, sdk_builds: list[tuple[str, int]]
) -> None:
    for text in ("one", "two", "three"):
        provider.embed([text])
    fake.fail_next("500", path="embeddings", retry_after_ms=1)
    provider.embed(["four"])  # attempt 1 is new
    provider.embed(["five"])
    assert sdk_builds == [("/embeddings", 0), ("/embeddings", 1)]
    retry_counts = [q.headers["x-stainless-retry-count"] for q in fake.requests]
    assert retry_counts == ["0", "0", "0", "0", "1", "0"]
    inputs = [q.body["input"][0] for q in fake.requests]
    assert inputs == ["one", "two", "three", "four", "four", "five"]


def test_cookies_the_client_holds_are_sent_with_templated_requests(
    fake: FakeOpenAI, provider: OpenAIProvider
) -> None:
    provider.embed(["one"])  # the template is built
    provider._client._client.cookies.set("affinity", "node-7", domain="127.0.0.1")
    provider.embed(["two"])
    assert "cookie" not in fake.requests[0].headers
    assert fake.requests[1].headers["cookie"] == "affinity=node-7"


def test_a_rotated_api_key_is_sent(fake: FakeOpenAI, provider: OpenAIProvider) -> None:
    provider.embed(["one"])
    provider._client.api_key = "rotated"
    provider.embed(["two"])
    assert [q.headers["authorization"] for q in fake.requests] == ["Bearer test", "Bearer rotated"]


@pytest.mark.parametrize(
    "changes",
    [
        {"headers": {"X-Extra": "1"}},
        {"timeout": 1.5},
        {"params": {"q": "1"}},
        {"max_retries": 0},
        {"url": "/embeddings/other"},
        {"content": b""},
        {"content": "{}"},
    ],
    ids=repr,
)
def test_options_the_template_does_not_describe_take_the_sdks_way(
    provider: OpenAIProvider, sdk_builds: list[tuple[str, int]], changes: dict[str, Any]
) -> None:
    client = provider._client
    client._build_request(options(provider, "/embeddings", b"{}"))  # the template is built
    opts = options(provider, "/embeddings", b"{}", **changes)
    made = client._build_request(opts)
    assert sdk_builds == [("/embeddings", 0), (opts.url, 0)]
    assert snapshot(made) == snapshot(sdk_request(client, opts, 0))


def test_a_client_with_an_idempotency_header_takes_the_sdks_way(
    provider: OpenAIProvider, sdk_builds: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = provider._client
    monkeypatch.setattr(client, "_idempotency_header", "Idempotency-Key")
    for _ in range(2):
        made = client._build_request(options(provider, "/embeddings", b"{}"))
    assert made.headers["idempotency-key"] == "k"
    assert sdk_builds == [("/embeddings", 0)] * 2


def test_a_client_without_templates_is_the_sdks_client(fake: FakeOpenAI) -> None:
    make: Callable[..., Any] = client_type(openai)
    with make(api_key="k", base_url=fake.base_url, max_retries=0) as client:
        reply = client.post("/embeddings", cast_to=httpx.Response, body={"input": ["x"], "model": "m"})
    assert reply.status_code == 200
    assert fake.requests[0].headers["user-agent"].startswith("OpenAI/Python ")


def test_idempotency_keys_are_fresh_per_call_where_a_header_sends_them(
    fake: FakeOpenAI, provider: OpenAIProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider.embed(["one"])
    monkeypatch.setattr(provider._client, "_idempotency_header", "Idempotency-Key")
    fake.fail_next("500", path="embeddings", retry_after_ms=1)
    provider.embed(["two"])  # two attempts, one key
    provider.embed(["three"])
    keys = [q.headers.get("idempotency-key") for q in fake.requests]
    assert keys[0] is None and keys[1] == keys[2] != keys[3]
    assert all(key.startswith("stainless-python-retry-") for key in keys[1:])
