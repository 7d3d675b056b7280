"""The benchmarks' own machinery (bench/): what the sections set up and call is what the product
takes, so a whole make bench measures the product rather than its own mistakes."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import pytest

from bench.common import configure_env
from bench.query import VS, _endpoints
from memproc import settings as settings_module
from memproc.dal import connection
from tests.api_client import call
from tests.memory_helpers import drain, store


@pytest.fixture
def environment() -> Iterator[None]:
    """os.environ as it was, and memproc's cached settings and store dropped, after the test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()


@pytest.mark.one_backend  # no server: the environment alone
def test_a_section_does_not_inherit_an_earlier_sections_settings(environment: None) -> None:
    configure_env("redis://127.0.0.1:1", VECTOR_BACKEND="search", REDIS_SOCKET_TIMEOUT_SECONDS="120")
    assert os.environ["VECTOR_BACKEND"] == "search"
    configure_env("redis://127.0.0.1:2", EMBEDDING_DIMENSIONS="1536")
    assert os.environ.get("VECTOR_BACKEND") != "search" and "REDIS_SOCKET_TIMEOUT_SECONDS" not in os.environ
    assert os.environ["REDIS_URL"] == "redis://127.0.0.1:2" and os.environ["EMBEDDING_DIMENSIONS"] == "1536"


def test_every_call_of_the_query_benchmark_is_answered(fake_llm: Any, r: Any) -> None:
    store(VS, "user: I prefer green tea over coffee.", "s-1")
    assert drain().processed == 1
    endpoints = _endpoints(random.Random(1), ["s-1"], ["tea"])
    for name, make in endpoints.items():
        path, query = make()
        response = call("GET", path, query=query)
        assert response.status == 200, (name, response.body)
