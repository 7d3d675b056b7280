"""Logger, Tracer and Metrics for every function: one place, so no module imports HTTP code for them.

The Tracer is created on first use: it imports the X-Ray SDK (with botocore), which is half of
store_raw's import time, and store_raw makes one Redis call that gains nothing from subsegments.
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

    from memproc.drain import DrainReport
    from memproc.fanout import FanOut

os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "memproc")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Memproc")

logger = Logger()
metrics = Metrics()


@cache
def get_tracer() -> Tracer:
    from aws_lambda_powertools import Tracer

    return Tracer()


def drain_metrics(
    report: DrainReport, fan_out: FanOut, *, events: bool = False
) -> list[tuple[str, MetricUnit, float | None]]:
    """What one processor invocation publishes (namespace Memproc, dimension service); a None is
    not published. template.yaml's dashboard and alarms read these names (tests/test_template.py)."""
    return [
        ("SessionsProcessed", MetricUnit.Count, report.processed),
        ("SessionsRetried", MetricUnit.Count, report.retried),
        ("QueueDeadLettered", MetricUnit.Count, report.dead),
        ("RecordsLost", MetricUnit.Count, report.lost),
        ("MemoriesCreated", MetricUnit.Count, report.memories_created),
        ("LLMTokens", MetricUnit.Count, report.tokens_in + report.tokens_out),
        # The queue when the invocation started: items eligible, how long the oldest had been, and
        # the live processors (this one included).
        ("QueueBacklog", MetricUnit.Count, report.backlog),
        ("BacklogAgeSeconds", MetricUnit.Seconds, report.backlog_age_seconds),
        ("ProcessorsRunning", MetricUnit.Count, report.processors_running),
        # Submitted -> processed over this invocation's sessions (none processed: not published).
        ("QueueWaitP50Seconds", MetricUnit.Seconds, report.wait_p50),
        ("QueueWaitP95Seconds", MetricUnit.Seconds, report.wait_p95),
        ("FanOutInvocations", MetricUnit.Count, fan_out.started),
        ("FanOutFailures", MetricUnit.Count, fan_out.failed),
        # The shared LLM rate limit: requests that waited for it, how long, and the provider's 429s.
        ("RateLimitWaits", MetricUnit.Count, report.rate_limit_waits),
        ("RateLimitWaitSeconds", MetricUnit.Seconds, report.rate_limit_wait_seconds),
        ("LLMThrottled", MetricUnit.Count, report.llm_throttled),
        # SessionProcessed / SessionFailed events (EVENT_BUS_NAME set; else not published).
        ("EventsPublished", MetricUnit.Count, report.events_published if events else None),
        ("EventsRetried", MetricUnit.Count, report.events_retried if events else None),
        ("EventsFailed", MetricUnit.Count, report.events_failed if events else None),
    ]


def record_drain(report: DrainReport, fan_out: FanOut, *, events: bool = False) -> None:
    """One invocation's figures as EMF metrics (flushed by the handler's `log_metrics`)."""
    for name, unit, value in drain_metrics(report, fan_out, events=events):
        if value is not None:
            metrics.add_metric(name, unit, value)
