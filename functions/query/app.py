"""Read routes: processing status, submission status, hierarchy, sessions, stats, search."""


from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from memproc import queue, store
from memproc.api import json_response, logger, make_resolver, metrics, tracer
from memproc.connection import get_redis
from memproc.settings import get_settings

app = make_resolver()


@app.get("/api/memory/<vectorstore_name>/processing_status")
@tracer.capture_method
def processing_status(vectorstore_name: str) -> Response[Any]:
    return json_response(200, queue.processing_status(get_redis(), get_settings(), vectorstore_name))


@app.get("/api/memory/<vectorstore_name>/raw/<raw_memory_id>")
@tracer.capture_method
def raw_status(vectorstore_name: str, raw_memory_id: str) -> Response[Any]:
    return json_response(200, store.raw_status(get_redis(), vectorstore_name, raw_memory_id))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
