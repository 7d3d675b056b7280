"""Scheduled (EventBridge Scheduler) and fanned out: drain the queue within this invocation's time
budget, a schedule tick first starting the processors a backlog needs (memproc.fanout)."""

from typing import Any

# The processor reaches the LLM through the openai SDK; importing it here, in Lambda's init phase,
# keeps that work out of the first scheduled invocation's time budget.
import openai  # noqa: F401
from aws_lambda_powertools.utilities.typing import LambdaContext

from memproc import fanout
from memproc.observability import get_tracer, logger, metrics, record_drain
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
    run = fanout.run(
        get_processor(),
        event,
        function_name=context.function_name,
        request_id=context.aws_request_id,
        remaining_seconds=lambda: context.get_remaining_time_in_millis() / 1000,
    )
    record_drain(run.report, run.fan_out, events=bool(get_settings().event_bus_name))
    summary = run.summary()
    logger.info("queue drained", extra=summary)
    return summary
