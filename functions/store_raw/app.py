"""POST /api/memory/{vectorstore_name}/store_raw: queue one chat session (one Redis round trip).

Imports nothing that the processor needs (no openai), so this function starts fast. For the same
reason it has no Powertools Tracer: the X-Ray SDK (with botocore) is half of this function's
import time, and a handler that makes one Redis call gains nothing from subsegments; with
`Tracing: Active` Lambda still traces every invocation.
"""

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from memproc import submissions
from memproc.api import json_response, make_resolver, ok, path_arg, resolve
from memproc.dal.connection import get_store
from memproc.observability import logger, metrics
from memproc.schemas.requests import StoreRawRequest
from memproc.schemas.submissions import StoreRawResponse
from memproc.settings import get_settings

app = make_resolver()


@app.post("/api/memory/<vectorstore_name>/store_raw", responses=ok(StoreRawResponse, 202, 409))
def store_raw(vectorstore_name: str, request: Annotated[StoreRawRequest, Body()]) -> Response[Any]:
    """Queue one complete chat session for processing (one Redis round trip)."""
    result = submissions.submit(get_store(), get_settings(), path_arg(vectorstore_name), request)
    logger.info(
        "stored raw memory",
        extra={
            "raw_memory_id": result.raw_memory_id,
            "duplicate": result.duplicate,
            "queue_position": result.queue_position,
        },
    )
    metrics.add_metric("RawMemoryDuplicate" if result.duplicate else "RawMemoryQueued", MetricUnit.Count, 1)
    return json_response(202, result)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolve(app, event, context)
