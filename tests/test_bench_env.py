"""The benchmarks' sections start from the environment the run began with (bench/common.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bench.common import configure_env
from memproc import settings as settings_module
from memproc.dal import connection

pytestmark = pytest.mark.one_backend  # no server: the environment alone


@pytest.fixture
def environment() -> Iterator[None]:
    """os.environ as it was, and memproc's cached settings and store dropped, after the test."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
    settings_module.get_settings.cache_clear()
    connection._store.cache_clear()


def test_a_section_does_not_inherit_an_earlier_sections_settings(environment: None) -> None:
    configure_env("redis://127.0.0.1:1", VECTOR_BACKEND="search", REDIS_SOCKET_TIMEOUT_SECONDS="120")
    assert os.environ["VECTOR_BACKEND"] == "search"
    configure_env("redis://127.0.0.1:2", EMBEDDING_DIMENSIONS="1536")
    assert os.environ.get("VECTOR_BACKEND") != "search" and "REDIS_SOCKET_TIMEOUT_SECONDS" not in os.environ
    assert os.environ["REDIS_URL"] == "redis://127.0.0.1:2" and os.environ["EMBEDDING_DIMENSIONS"] == "1536"
