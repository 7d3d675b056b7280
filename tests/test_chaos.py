"""Short chaos rounds in `make test` (the long ones: `make chaos`): real processes killed at random,
Redis killed and restarted (AOF) and frozen mid-drain, an evicting store and a full one. See
tests/chaos.py for what is checked at the end of each round."""

from __future__ import annotations

import pytest

from tests import chaos

pytestmark = pytest.mark.timeout(240)


def test_processors_and_redis_fail_and_nothing_is_lost_or_duplicated() -> None:
    figures = chaos.run(10, processors=2, seed=7, faults=chaos.ALL_FAULTS)
    assert figures["accepted_sessions"] > 0 and figures["processed"] > 0
    assert sum(figures["faults"].values()) >= 3
    assert set(figures["answers"]) <= {"202", "store_unavailable"}


def test_an_evicting_store_accepts_no_session_it_could_lose() -> None:
    figures = chaos.run(2, processors=1, seed=8, faults=("kill_processor",), policy="allkeys-lru")
    assert figures["answers"].get("202", 0) == 0 and figures["answers"]["store_evicting"] > 0
    assert figures["accepted_sessions"] == 0


def test_a_full_store_answers_503_and_loses_nothing_once_freed() -> None:
    figures = chaos.run(4, processors=1, seed=9, faults=("kill_processor",), maxmemory_headroom=300_000)
    assert figures["answers"].get("store_full", 0) > 0 and figures["accepted_sessions"] > 0
    assert figures["records_lost"] == 0
