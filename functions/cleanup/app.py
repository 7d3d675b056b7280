"""Retention and erasure: the scheduled cleanup, POST .../cleanup and the DELETE routes.

A scheduled invocation (EventBridge Scheduler; it has no `httpMethod`) walks every vectorstore
within the invocation's time budget; API invocations do one bounded step and answer within API
Gateway's 29 s.
"""

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from memproc import retention
from memproc.api import json_response, make_resolver, ok, path_arg, resolve
from memproc.dal.connection import get_store
from memproc.observability import get_tracer, logger, metrics
from memproc.schemas.requests import CleanupQuery, EraseMemoryQuery
from memproc.schemas.retention import CleanupReceipt, ErasureReceipt
from memproc.settings import get_settings

tracer = get_tracer()

app = make_resolver()


@app.post("/api/memory/<vectorstore_name>/cleanup", responses=ok(CleanupReceipt))
@app.query(CleanupQuery)
@tracer.capture_method
def cleanup(vectorstore_name: str, q: CleanupQuery) -> Response[Any]:
    """Delete processed transcripts past retention, trim indexes, reconcile; call again while incomplete."""
    receipt = retention.cleanup(get_store(), get_settings(), path_arg(vectorstore_name), q)
    logger.info(
        "cleanup",
        extra={
            "vectorstore": vectorstore_name,
            "dry_run": q.dry_run,
            "deleted": receipt.deleted_count,
            "complete": receipt.complete,
        },
    )
    return json_response(200, receipt)


@app.delete("/api/memory/<vectorstore_name>/memories/<memory_id>", responses=ok(ErasureReceipt))
@app.query(EraseMemoryQuery)
@tracer.capture_method
def delete_memory(vectorstore_name: str, memory_id: str, q: EraseMemoryQuery) -> Response[Any]:
    """Erase one memory and every reference to it."""
    receipt = retention.erase_memory(
        get_store(), path_arg(vectorstore_name), path_arg(memory_id), purge_sources=q.purge_sources
    )
    return json_response(200, receipt)


@app.delete("/api/memory/<vectorstore_name>/session/<session_id>", responses=ok(ErasureReceipt))
@tracer.capture_method
def delete_session(vectorstore_name: str, session_id: str) -> Response[Any]:
    """Erase a session: transcripts, summary, references and the memories only it stated."""
    return json_response(
        200, retention.erase_session(get_store(), path_arg(vectorstore_name), path_arg(session_id))
    )


@app.delete(
    "/api/memory/<vectorstore_name>",
    responses={
        **ok(ErasureReceipt, description="Erased"),
        **ok(ErasureReceipt, 202, description="Partly erased (complete: false): DELETE again to finish"),
    },
)
@tracer.capture_method
def delete_vectorstore(vectorstore_name: str) -> Response[Any]:
    """Erase everything of the vectorstore (202 while a huge one needs another call)."""
    receipt = retention.erase_vectorstore(get_store(), path_arg(vectorstore_name))
    # 202: a vectorstore too large for one request is partly erased; DELETE again to finish.
    return json_response(200 if receipt.complete else 202, receipt)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if "httpMethod" not in event:  # the retention schedule
        report = retention.run_scheduled(
            get_store(),
            get_settings(),
            remaining_seconds=lambda: context.get_remaining_time_in_millis() / 1000,
        )
        metrics.add_metric("RawMemoriesExpired", MetricUnit.Count, report.deleted_raw_memories)
        metrics.add_metric("IndexEntriesTrimmed", MetricUnit.Count, report.trimmed_index_entries)
        metrics.add_metric("QueueItemsReconciled", MetricUnit.Count, report.reconciled)
        logger.info("scheduled cleanup", extra=report.model_dump())
        return report.model_dump()
    return resolve(app, event, context)
