"""Scheduled (EventBridge Scheduler): drain the queue within this invocation's time budget."""

from dataclasses import asdict
from typing import Any

# The processor reaches the LLM through the openai SDK; importing it here, in Lambda's init phase,
# keeps that work out of the first scheduled invocation's time budget.
import openai  # noqa: F401
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from memproc.observability import get_tracer, logger, metrics
from memproc.processor import Processor, build_processor
from memproc.settings import get_settings

tracer = get_tracer()

_processor: Processor | None = None


def get_processor() -> Processor:
    """Built once per container: warm invocations reuse the Redis pools and the HTTP client."""
    global _processor
    if _processor is None:
        _processor = build_processor(get_settings())
    return _processor


@logger.inject_lambda_context(log_event=False, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    report = get_processor().drain(remaining_seconds=lambda: context.get_remaining_time_in_millis() / 1000)
    metrics.add_metric("SessionsProcessed", MetricUnit.Count, report.processed)
    metrics.add_metric("SessionsRetried", MetricUnit.Count, report.retried)
    metrics.add_metric("QueueDeadLettered", MetricUnit.Count, report.dead)
    metrics.add_metric("RecordsLost", MetricUnit.Count, report.lost)
    metrics.add_metric("MemoriesCreated", MetricUnit.Count, report.memories_created)
    metrics.add_metric("LLMTokens", MetricUnit.Count, report.tokens_in + report.tokens_out)
    if get_settings().event_bus_name:  # EventBusName: SessionProcessed / SessionFailed events
        metrics.add_metric("EventsPublished", MetricUnit.Count, report.events_published)
        metrics.add_metric("EventsRetried", MetricUnit.Count, report.events_retried)
        metrics.add_metric("EventsFailed", MetricUnit.Count, report.events_failed)
    summary = {**asdict(report), "rate_per_second": report.rate}
    logger.info("queue drained", extra=summary)
    return summary
