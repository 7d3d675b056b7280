"""Fan-out: a schedule tick with a backlog starts more processors as asynchronous invocations of
its own function, which never start more; the live-processor limit holds; a failed invocation
never fails the drain. Lambda is moto's, without Docker: what reached it is read off the requests
the real boto3 client sent."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

from memproc import fanout, keys, submissions
from memproc.dal.connection import get_store
from memproc.schemas.requests import StoreRawRequest
from memproc.settings import get_settings
from memproc_local.events import LambdaContext
from tests.memory_helpers import process_queue_handler

# Fan-out is about processors and the queue: the memory-index backend does not matter.
pytestmark = pytest.mark.one_backend

FUNCTION = "memproc-process-queue"
TICK = {"source": "memproc.schedule", "detail-type": "Scheduled Event", "detail": {"task": "process_queue"}}


@dataclass
class Invocation:
    function: str
    invocation_type: str
    payload: dict[str, Any]


@dataclass
class Lambda:
    """moto's Lambda and the Invoke requests memproc's client sent it."""

    invocations: list[Invocation] = field(default_factory=list)

    def record(self, request: Any, **_: Any) -> None:
        # .../2015-03-31/functions/<name>/invocations
        name = request.url.rsplit("/", 2)[-2]
        kind = request.headers["X-Amz-Invocation-Type"]
        self.invocations.append(
            Invocation(name, kind.decode() if isinstance(kind, bytes) else kind, json.loads(request.body))
        )


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("app.py", "def lambda_handler(event, context):\n    return event\n")
    return buf.getvalue()


def _aws(monkeypatch: pytest.MonkeyPatch, config: dict[str, Any] | None, create: bool) -> Iterator[Lambda]:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fanout.lambda_client.cache_clear()
    with mock_aws(config=config):  # type: ignore[arg-type]
        if create:
            role = boto3.client("iam").create_role(RoleName="processor", AssumeRolePolicyDocument="{}")
            boto3.client("lambda").create_function(
                FunctionName=FUNCTION,
                Runtime="python3.13",
                Role=role["Role"]["Arn"],
                Handler="app.lambda_handler",
                Code={"ZipFile": _zip()},
            )
        aws = Lambda()
        fanout.lambda_client().meta.events.register_first("before-send.lambda.Invoke", aws.record)
        yield aws
    fanout.lambda_client.cache_clear()


@pytest.fixture
def aws(env: pytest.MonkeyPatch) -> Iterator[Lambda]:
    """moto's Lambda without Docker (invocations are accepted, not run) and the processor's function."""
    yield from _aws(env, {"lambda": {"use_docker": False}}, create=True)


@pytest.fixture
def aws_without_the_function(env: pytest.MonkeyPatch) -> Iterator[Lambda]:
    """moto's Lambda where the function does not exist: every Invoke is refused."""
    yield from _aws(env, None, create=False)


@pytest.fixture
def handler(env: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """The real process_queue handler, built afresh for this test's settings: up to 4 processors
    of concurrency 2, a one-minute schedule."""
    env.setenv("MAX_PROCESSORS", "4")
    env.setenv("CONCURRENCY", "2")
    env.setenv("PROCESSING_INTERVAL_SECONDS", "60")
    fn = process_queue_handler(env)

    def invoke(event: dict[str, Any], *, timeout: float = 5) -> dict[str, Any]:
        # 5 s: the drain claims nothing (it keeps 10 s in hand), so only the fan-out is seen.
        context = LambdaContext(FUNCTION, timeout_seconds=timeout)
        invoke.context = context  # type: ignore[attr-defined]
        return dict(fn(event, context))

    return invoke


def backlog(r: redis.Redis, sessions: int, vectorstores: int, rate: float) -> None:
    """`sessions` queued over `vectorstores`, and a processor that measured `rate` sessions/s."""
    settings = get_settings()
    for i in range(sessions):
        request = StoreRawRequest(session_data=f"user: I collect stamp number {i}.", session_id=f"s-{i}")
        submissions.submit(get_store(), settings, f"vs{i % vectorstores}", request)
    r.hset(keys.PROCESSOR_STATUS, "rate_per_second", f"{rate}")


# -- the decision ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backlog_", "rate", "running", "vectorstores", "expected"),
    [
        (50, 1.0, 1, 100, 0),  # one processor drains 60 before the next tick
        (61, 1.0, 1, 100, 1),  # 61 needs two
        (1000, 1.0, 1, 100, 3),  # needs 17: capped at 4 processors, one of them this
        (1000, 1.0, 3, 100, 1),  # two more were already running
        (1000, 1.0, 5, 100, 0),  # more than the limit running: none
        (1000, 1.0, 1, 8, 0),  # 8 vectorstores keep one processor of concurrency 8 busy
        (1000, 1.0, 1, 17, 2),  # 17 keep three busy
        (0, 1.0, 1, 0, 0),
        (10, 0.0001, 1, 100, 3),  # a tiny measured rate still drains one a tick
    ],
)
def test_extra_processors_drain_the_backlog_before_the_next_tick(
    backlog_: int, rate: float, running: int, vectorstores: int, expected: int
) -> None:
    extra = fanout.extra_processors(
        backlog=backlog_,
        rate=rate,
        interval=60,
        running=running,
        limit=4,
        vectorstores=vectorstores,
        per_vectorstore=1,
        concurrency=8,
    )
    assert extra == expected


def test_a_limit_of_one_processor_never_fans_out() -> None:
    kw = {
        "rate": 0.1,
        "interval": 60,
        "running": 1,
        "vectorstores": 100,
        "per_vectorstore": 1,
        "concurrency": 1,
    }
    assert fanout.extra_processors(backlog=10**6, limit=1, **kw) == 0


@pytest.mark.parametrize(
    ("rate", "requests_per_second", "expected"),
    [
        (1.0, 0.0, 3),  # unlimited: the limit of 4 processors
        (1.0, 2.0, 1),  # two processors of 1 session/s reach 2 requests/s
        (1.0, 2.5, 2),  # three reach it (a little over: the limiter holds them to it)
        (1.0, 0.5, 0),  # one already has more than the limit lets through
        (0.5, 1.2, 2),  # the measured rate is per processor: three of 0.5/s
    ],
)
def test_no_more_processors_than_the_shared_llm_limit_feeds(
    rate: float, requests_per_second: float, expected: int
) -> None:
    extra = fanout.extra_processors(
        backlog=10**6,
        rate=rate,
        interval=60,
        running=1,
        limit=4,
        vectorstores=100,
        per_vectorstore=1,
        concurrency=8,
        requests_per_second=requests_per_second,
    )
    assert extra == expected


@pytest.mark.parametrize(
    ("event", "fans_out"),
    [
        (TICK, True),
        ({"source": "aws.scheduler", "detail-type": "Scheduled Event", "detail": {}}, True),  # make dev
        (fanout.FanOutEvent(parent="req-1", index=1).model_dump(), False),
        ({"source": "memproc.fanout"}, False),  # a malformed marker is still no tick
        ({"source": "memproc.fanout", "parent": "r", "index": 1, "extra": True}, False),
        ({}, False),  # a manual test invoke
        ([], False),
    ],
)
def test_only_a_schedule_tick_may_fan_out(event: Any, fans_out: bool) -> None:
    assert fanout.may_fan_out(event) is fans_out


# -- against moto's Lambda ------------------------------------------------------------------------------


def test_a_tick_with_a_backlog_starts_marked_asynchronous_invocations_of_itself(
    aws: Lambda, handler: Callable[..., dict[str, Any]], r: redis.Redis
) -> None:
    # 40 sessions at 0.1/s: one processor drains 6 a minute, so 7 are needed; 8 vectorstores keep
    # 4 processors of concurrency 2 busy; the limit is 4, this one included: 3 more.
    backlog(r, sessions=40, vectorstores=8, rate=0.1)
    summary = handler(TICK)
    assert summary["fanned_out"] == 3 and summary["fan_out_failed"] == 0, json.dumps(summary)
    assert summary["backlog"] == 40 and summary["processors_running"] == 1
    request_id = handler.context.aws_request_id  # type: ignore[attr-defined]
    assert [(i.function, i.invocation_type) for i in aws.invocations] == [(FUNCTION, "Event")] * 3
    payloads = [fanout.FanOutEvent.model_validate(i.payload) for i in aws.invocations]
    assert [(p.source, p.parent, p.index) for p in payloads] == [
        ("memproc.fanout", request_id, n) for n in (1, 2, 3)
    ]
    assert r.zcard(keys.PROCESSORS) == 0  # the tick left the live set when it ended


def test_a_tick_starts_only_the_processors_the_shared_llm_limit_can_feed(
    aws: Lambda, handler: Callable[..., dict[str, Any]], r: redis.Redis, env: pytest.MonkeyPatch
) -> None:
    # As above, 3 more would be started; at 12 requests a minute (0.2/s) two processors of 0.1
    # sessions/s reach the limit: one more.
    env.setenv("LLM_REQUESTS_PER_MINUTE", "12")
    get_settings.cache_clear()
    backlog(r, sessions=40, vectorstores=8, rate=0.1)
    summary = handler(TICK)
    assert summary["fanned_out"] == 1 and summary["fan_out_failed"] == 0, json.dumps(summary)
    assert [i.payload["index"] for i in aws.invocations] == [1]


def test_a_fanned_out_invocation_never_fans_out_again(
    aws: Lambda, handler: Callable[..., dict[str, Any]], r: redis.Redis
) -> None:
    backlog(r, sessions=40, vectorstores=8, rate=0.1)
    handler(TICK)
    started = [i.payload for i in aws.invocations]
    aws.invocations.clear()
    for payload in started:  # what Lambda delivers to each started invocation
        summary = handler(payload)
        assert summary["admitted"] and summary["fanned_out"] == 0
    assert aws.invocations == []


def test_the_processor_limit_holds_across_ticks(
    aws: Lambda, handler: Callable[..., dict[str, Any]], r: redis.Redis
) -> None:
    backlog(r, sessions=40, vectorstores=8, rate=0.1)
    now = float(r.time()[0])
    r.zadd(keys.PROCESSORS, {"earlier-tick": now + 300, "its-fan-out": now + 300})
    summary = handler(TICK)
    assert summary["processors_running"] == 3 and summary["fanned_out"] == 1  # 2 running + this + 1
    r.zadd(keys.PROCESSORS, {"third": now + 300, "fourth": now + 300})
    declined = handler(TICK, timeout=120)  # time enough to drain, but 4 already run
    assert not declined["admitted"] and declined["processed"] == 0 and declined["fanned_out"] == 0
    assert r.zcard(keys.RAW_MEMORY_QUEUE) == 40
    assert set(r.zrange(keys.PROCESSORS, 0, -1)) == {"earlier-tick", "its-fan-out", "third", "fourth"}
    # A processor that died drops out at its deadline: the next tick counts only the live ones.
    r.zadd(keys.PROCESSORS, {"third": now - 1, "fourth": now - 1})
    assert handler(TICK)["processors_running"] == 3


def test_a_failed_invocation_is_logged_and_counted_and_the_drain_goes_on(
    aws_without_the_function: Lambda,
    handler: Callable[..., dict[str, Any]],
    r: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backlog(r, sessions=8, vectorstores=8, rate=0.001)
    with caplog.at_level(logging.WARNING, logger="memproc.fanout"):
        summary = handler(TICK, timeout=120)
    assert summary["fanned_out"] == 0 and summary["fan_out_failed"] == 3
    # Lambda refused the first (no such function): the others were not tried this tick.
    assert len(aws_without_the_function.invocations) == 1
    assert any("ResourceNotFoundException" in rec.getMessage() for rec in caplog.records)
    assert summary["processed"] == 8 and r.zcard(keys.RAW_MEMORY_QUEUE) == 0


def test_no_reachable_lambda_api_at_all_still_drains(
    handler: Callable[..., dict[str, Any]], r: redis.Redis, env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No region anywhere: building the Lambda client itself fails (botocore's NoRegionError).
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        env.delenv(name, raising=False)
    env.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    fanout.lambda_client.cache_clear()
    backlog(r, sessions=8, vectorstores=8, rate=0.001)
    summary = handler(TICK, timeout=120)
    fanout.lambda_client.cache_clear()
    assert summary["fanned_out"] == 0 and summary["fan_out_failed"] == 3
    assert summary["processed"] == 8
