"""Scale-out: how many more processors a backlog needs, and starting them as asynchronous
invocations of this same function, each marked so that it never starts more.

One scheduled invocation drains about `rate` sessions a second; when the eligible backlog is more
than that covers before the next schedule tick, the tick starts up to MAX_PROCESSORS - 1 more
(and no more than the shared LLM_REQUESTS_PER_MINUTE limit can keep busy).
The live processors (scheduled, overlapping and fanned out) are counted in Redis by their
heartbeats, so the limit holds across ticks; on AWS the function's reserved concurrency can make
it a hard one. Failing to start one is logged and counted, never a failed drain: the next tick
decides again.
See: https://docs.aws.amazon.com/lambda/latest/dg/invocation-async.html
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from memproc.dal.queue import Beat
from memproc.processor import DrainReport, Processor
from memproc.settings import Settings

log = logging.getLogger("memproc.fanout")


class ScheduledEvent(BaseModel):
    """A schedule tick (the template's EventBridge Scheduler input, or `make dev`'s): it may fan out."""

    model_config = ConfigDict(extra="allow", frozen=True)
    source: Literal["memproc.schedule", "aws.scheduler", "aws.events"]


class FanOutEvent(BaseModel):
    """The payload a tick sends the processors it starts. Its source marks them: never a tick."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: Literal["memproc.fanout"] = "memproc.fanout"
    parent: str = Field(min_length=1, max_length=256, description="the starting invocation's request id")
    index: int = Field(ge=1, le=1000, description="1..n among the processors that tick started")


_TRIGGER: TypeAdapter[ScheduledEvent | FanOutEvent] = TypeAdapter(
    Annotated[ScheduledEvent | FanOutEvent, Field(discriminator="source")]
)


def may_fan_out(event: Any) -> bool:
    """Only a schedule tick starts more processors: a fanned-out invocation, a malformed marker or
    any other event (a manual test invoke) drains without starting any."""
    try:
        return isinstance(_TRIGGER.validate_python(event), ScheduledEvent)
    except ValidationError:
        return False


def extra_processors(
    *,
    backlog: int,
    rate: float,
    interval: float,
    running: int,
    limit: int,
    vectorstores: int,
    per_vectorstore: int,
    concurrency: int,
    requests_per_second: float = 0.0,
) -> int:
    """How many processors to start beside the `running` ones (this one included).

    ceil(backlog / (rate x interval)) processors drain the backlog before the next tick, at most
    `limit`, and no more than the waiting vectorstores can keep busy: a vectorstore's sessions are
    decided `per_vectorstore` at a time, so more processors than that fills would only wait. Nor
    more than the shared LLM limit feeds (`requests_per_second`, 0: unlimited): a session is at
    least one chat request, so ceil(limit / rate) processors already reach it and any more would
    only wait for the limiter. (Under a binding limit the measured rate is the limit's share of
    each processor, so the count stays where it is.)
    """
    if backlog <= 0 or limit <= 1:
        return 0
    needed = math.ceil(backlog / max(rate * interval, 1.0))
    useful = math.ceil(vectorstores * per_vectorstore / concurrency)
    fed = math.ceil(requests_per_second / rate) if requests_per_second > 0 and rate > 0 else limit
    return max(0, min(needed, useful, fed, limit) - running)


@dataclass(frozen=True)
class Plan:
    admitted: bool  # False: MAX_PROCESSORS were running already; this one leaves at once
    extra: int  # processors to start


def plan(beat: Beat, settings: Settings, *, scheduled: bool) -> Plan:
    """What the first heartbeat's figures call for: drain or leave, and how many to start."""
    if beat.processors > settings.max_processors:
        return Plan(admitted=False, extra=0)
    if not scheduled:
        return Plan(admitted=True, extra=0)
    extra = extra_processors(
        backlog=beat.backlog,
        rate=beat.rate or settings.default_rate_per_second,
        interval=settings.processing_interval_seconds,
        running=beat.processors,
        limit=settings.max_processors,
        vectorstores=beat.vectorstores,
        per_vectorstore=settings.vectorstore_concurrency,
        concurrency=settings.concurrency,
        requests_per_second=settings.llm_requests_per_minute / settings.llm_rate_window_seconds,
    )
    return Plan(admitted=True, extra=extra)


@dataclass
class FanOut:
    """What a run asked for and got."""

    requested: int = 0
    started: int = 0

    @property
    def failed(self) -> int:
        return self.requested - self.started


@cache
def lambda_client() -> Any:
    """One Lambda client per container, imported on first use (boto3 costs cold-start time).
    Short timeouts and one retry: a fan-out must not eat the drain's time budget."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2, "mode": "standard"})
    return boto3.client("lambda", config=config)


def start(function_name: str, events: list[FanOutEvent]) -> int:
    """Invoke `function_name` asynchronously once per event; how many Lambda accepted.

    Accepted means HTTP 202 without a FunctionError: an emulator (or a misconfigured invocation
    type) may answer otherwise. The first failure stops the rest: the next tick decides again.
    """
    for started, event in enumerate(events):
        try:
            res = lambda_client().invoke(
                FunctionName=function_name, InvocationType="Event", Payload=event.model_dump_json().encode()
            )
            ok = res.get("StatusCode") == 202 and not res.get("FunctionError")
            detail = (
                "" if ok else f"status {res.get('StatusCode')}, FunctionError {res.get('FunctionError')!r}"
            )
        except Exception as exc:  # whatever it is, the drain goes on
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            log.warning(
                "fan-out: invoking %s failed (%s); %d of %d processors not started",
                function_name,
                detail,
                len(events) - started,
                len(events),
            )
            return started
    return len(events)


@dataclass
class Run:
    """One invocation of the processor: its drain and what it started."""

    report: DrainReport
    fan_out: FanOut

    def summary(self) -> dict[str, Any]:
        return {
            **self.report.summary(),
            "fanned_out": self.fan_out.started,
            "fan_out_failed": self.fan_out.failed,
        }


def run(
    processor: Processor,
    event: Any,
    *,
    function_name: str,
    request_id: str,
    remaining_seconds: Callable[[], float],
) -> Run:
    """Drain as one of at most MAX_PROCESSORS, first starting the processors a tick's backlog needs."""
    scheduled = may_fan_out(event)
    fan_out = FanOut()

    def admit(beat: Beat) -> bool:
        decision = plan(beat, processor.settings, scheduled=scheduled)
        if not decision.admitted:
            log.info(
                "%d processors running (MAX_PROCESSORS %d): leaving",
                beat.processors - 1,
                processor.settings.max_processors,
            )
        elif decision.extra:
            fan_out.requested = decision.extra
            events = [FanOutEvent(parent=request_id, index=i) for i in range(1, decision.extra + 1)]
            fan_out.started = start(function_name, events)
            log.info(
                "fan-out: backlog %d (oldest %.0f s), %d running: started %d of %d",
                beat.backlog,
                beat.backlog_age,
                beat.processors,
                fan_out.started,
                decision.extra,
            )
        return decision.admitted

    report = processor.drain(remaining_seconds=remaining_seconds, admit=admit)
    return Run(report, fan_out)
