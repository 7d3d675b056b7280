"""Read routes: processing status, submission status, hierarchy, sessions, stats, search, dead
letters (and redriving one)."""

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from memproc import submissions
from memproc.api import json_response, make_resolver, parse_query, path_arg, resolve
from memproc.dal.connection import get_store
from memproc.observability import get_tracer, logger, metrics
from memproc.reads import dead_letters, hierarchy, search, sessions, stats, status
from memproc.schemas.requests import DeadLettersQuery, HierarchyQuery, NoParams, SearchQuery, TranscriptQuery
from memproc.settings import get_settings

tracer = get_tracer()

app = make_resolver()


@app.get("/api/memory/<vectorstore_name>/processing_status")
@tracer.capture_method
def processing_status(vectorstore_name: str) -> Response[Any]:
    parse_query(NoParams, app)
    return json_response(
        200, status.processing_status(get_store(), get_settings(), path_arg(vectorstore_name))
    )


@app.get("/api/memory/<vectorstore_name>/raw/<raw_memory_id>")
@tracer.capture_method
def raw_status(vectorstore_name: str, raw_memory_id: str) -> Response[Any]:
    q = parse_query(TranscriptQuery, app)
    found = status.raw_status(
        get_store(),
        path_arg(vectorstore_name),
        path_arg(raw_memory_id),
        include_transcript=q.include_transcript,
    )
    return json_response(200, found)


@app.get("/api/memory/<vectorstore_name>/hierarchy")
@tracer.capture_method
def get_hierarchy(vectorstore_name: str) -> Response[Any]:
    q = parse_query(HierarchyQuery, app)
    return json_response(200, hierarchy.hierarchy(get_store(), path_arg(vectorstore_name), q))


@app.get("/api/memory/<vectorstore_name>/session/<session_id>")
@tracer.capture_method
def session(vectorstore_name: str, session_id: str) -> Response[Any]:
    q = parse_query(TranscriptQuery, app)
    details = sessions.session_details(
        get_store(), path_arg(vectorstore_name), path_arg(session_id), include_transcript=q.include_transcript
    )
    return json_response(200, details)


@app.get("/api/memory/<vectorstore_name>/stats")
@tracer.capture_method
def get_stats(vectorstore_name: str) -> Response[Any]:
    parse_query(NoParams, app)
    return json_response(200, stats.stats(get_store(), path_arg(vectorstore_name)))


@app.get("/api/memory/<vectorstore_name>/search")
@tracer.capture_method
def get_search(vectorstore_name: str) -> Response[Any]:
    q = parse_query(SearchQuery, app)
    return json_response(200, search.search(get_store(), get_settings(), path_arg(vectorstore_name), q))


@app.get("/api/memory/<vectorstore_name>/dead_letters")
@tracer.capture_method
def get_dead_letters(vectorstore_name: str) -> Response[Any]:
    q = parse_query(DeadLettersQuery, app)
    return json_response(200, dead_letters.dead_letters(get_store(), path_arg(vectorstore_name), q.limit))


@app.post("/api/memory/<vectorstore_name>/raw/<raw_memory_id>/retry")
@tracer.capture_method
def retry(vectorstore_name: str, raw_memory_id: str) -> Response[Any]:
    parse_query(NoParams, app)
    result = submissions.retry_dead_letter(get_store(), path_arg(vectorstore_name), path_arg(raw_memory_id))
    logger.info("dead letter redriven", extra={"raw_memory_id": result.raw_memory_id})
    return json_response(200, result)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolve(app, event, context)
