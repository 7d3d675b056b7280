"""Read routes: health, the API's description, processing status, submission status, hierarchy,
sessions, stats, search, dead letters (and redriving one)."""

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from memproc import openapi, submissions
from memproc.api import json_response, make_resolver, ok, path_arg, resolve
from memproc.dal.connection import get_store
from memproc.observability import get_tracer, logger, metrics
from memproc.reads import dead_letters, hierarchy, search, sessions, stats, status
from memproc.schemas import responses as r
from memproc.schemas.requests import DeadLettersQuery, HierarchyQuery, SearchQuery, TranscriptQuery
from memproc.schemas.submissions import RetryResponse
from memproc.settings import get_settings

tracer = get_tracer()

app = make_resolver()
openapi.serve(app)  # GET /api/openapi.json and /api/docs


@app.get(
    "/api/health",
    summary="Whether the service can accept and process sessions",
    responses={
        **ok(r.HealthResponse, description="Healthy"),
        503: {
            "description": "Degraded: the reasons say why",
            "content": {"application/json": {"model": r.HealthResponse}},
        },
    },
)
@tracer.capture_method
def get_health() -> Response[Any]:
    result, headers = status.health(get_store(), get_settings())
    return json_response(200 if result.success else 503, result, headers)


@app.get("/api/memory/<vectorstore_name>/processing_status", responses=ok(r.ProcessingStatus))
@tracer.capture_method
def processing_status(vectorstore_name: str) -> Response[Any]:
    """The processor and the queue: heartbeat, sizes, interval, retention, health, this vectorstore's work."""
    return json_response(
        200, status.processing_status(get_store(), get_settings(), path_arg(vectorstore_name))
    )


@app.get("/api/memory/<vectorstore_name>/raw/<raw_memory_id>", responses=ok(r.RawMemoryResponse))
@app.query(TranscriptQuery)
@tracer.capture_method
def raw_status(vectorstore_name: str, raw_memory_id: str, q: TranscriptQuery) -> Response[Any]:
    """One submission: status, attempts, last error, result counts; its transcript on request."""
    found = status.raw_status(
        get_store(),
        path_arg(vectorstore_name),
        path_arg(raw_memory_id),
        include_transcript=q.include_transcript,
    )
    return json_response(200, found)


@app.get("/api/memory/<vectorstore_name>/hierarchy", responses=ok(r.HierarchyResponse))
@app.query(HierarchyQuery)
@tracer.capture_method
def get_hierarchy(vectorstore_name: str, q: HierarchyQuery) -> Response[Any]:
    """Discrete memories, session summaries and raw submissions, newest first, one page per cursor."""
    return json_response(200, hierarchy.hierarchy(get_store(), path_arg(vectorstore_name), q))


@app.get("/api/memory/<vectorstore_name>/session/<session_id>", responses=ok(r.SessionDetails))
@app.query(TranscriptQuery)
@tracer.capture_method
def session(vectorstore_name: str, session_id: str, q: TranscriptQuery) -> Response[Any]:
    """Everything about one session: summary, memories, submissions, token usage."""
    details = sessions.session_details(
        get_store(), path_arg(vectorstore_name), path_arg(session_id), include_transcript=q.include_transcript
    )
    return json_response(200, details)


@app.get("/api/memory/<vectorstore_name>/stats", responses=ok(r.StatsResponse))
@tracer.capture_method
def get_stats(vectorstore_name: str) -> Response[Any]:
    """Counts per level, approximate storage and the last 7 days of processing figures."""
    return json_response(200, stats.stats(get_store(), path_arg(vectorstore_name)))


@app.get("/api/memory/<vectorstore_name>/search", responses=ok(r.SearchResponse, 200, 409))
@app.query(SearchQuery)
@tracer.capture_method
def get_search(vectorstore_name: str, q: SearchQuery) -> Response[Any]:
    """Semantic search over the discrete memories, with cosine similarity."""
    return json_response(200, search.search(get_store(), get_settings(), path_arg(vectorstore_name), q))


@app.get("/api/memory/<vectorstore_name>/dead_letters", responses=ok(r.DeadLettersResponse))
@app.query(DeadLettersQuery)
@tracer.capture_method
def get_dead_letters(vectorstore_name: str, q: DeadLettersQuery) -> Response[Any]:
    """Dead-lettered submissions with their last error, newest first."""
    return json_response(200, dead_letters.dead_letters(get_store(), path_arg(vectorstore_name), q.limit))


@app.post("/api/memory/<vectorstore_name>/raw/<raw_memory_id>/retry", responses=ok(RetryResponse, 200, 409))
@tracer.capture_method
def retry(vectorstore_name: str, raw_memory_id: str) -> Response[Any]:
    """Redrive a dead-lettered submission (409 when it is not dead)."""
    result = submissions.retry_dead_letter(get_store(), path_arg(vectorstore_name), path_arg(raw_memory_id))
    logger.info("dead letter redriven", extra={"raw_memory_id": result.raw_memory_id})
    return json_response(200, result)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolve(app, event, context)
