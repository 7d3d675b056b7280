"""Read routes: processing status, submission status, hierarchy, sessions, stats, search, dead
letters (and redriving one)."""

from typing import Any

from aws_lambda_powertools import Tracer
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from memproc import queue, store
from memproc.api import json_response, logger, make_resolver, metrics, parse_query, path_arg, resolve
from memproc.connection import get_binary_redis, get_redis
from memproc.models import DeadLettersQuery, HierarchyQuery, NoParams, SearchQuery, SessionQuery
from memproc.settings import get_settings

tracer = Tracer()

app = make_resolver()


@app.get("/api/memory/<vectorstore_name>/processing_status")
@tracer.capture_method
def processing_status(vectorstore_name: str) -> Response[Any]:
    return json_response(200, queue.processing_status(get_redis(), get_settings(), vectorstore_name))


@app.get("/api/memory/<vectorstore_name>/raw/<raw_memory_id>")
@tracer.capture_method
def raw_status(vectorstore_name: str, raw_memory_id: str) -> Response[Any]:
    return json_response(200, store.raw_status(get_redis(), vectorstore_name, path_arg(raw_memory_id)))


@app.get("/api/memory/<vectorstore_name>/hierarchy")
@tracer.capture_method
def hierarchy(vectorstore_name: str) -> Response[Any]:
    q = parse_query(HierarchyQuery, app)
    return json_response(200, store.hierarchy(get_redis(), vectorstore_name, q))


@app.get("/api/memory/<vectorstore_name>/session/<session_id>")
@tracer.capture_method
def session(vectorstore_name: str, session_id: str) -> Response[Any]:
    q = parse_query(SessionQuery, app)
    details = store.session_details(
        get_redis(),
        get_binary_redis(),
        vectorstore_name,
        path_arg(session_id),
        include_transcript=q.include_transcript,
    )
    return json_response(200, details)


@app.get("/api/memory/<vectorstore_name>/stats")
@tracer.capture_method
def stats(vectorstore_name: str) -> Response[Any]:
    parse_query(NoParams, app)
    return json_response(200, store.stats(get_redis(), vectorstore_name))


@app.get("/api/memory/<vectorstore_name>/search")
@tracer.capture_method
def search(vectorstore_name: str) -> Response[Any]:
    q = parse_query(SearchQuery, app)
    return json_response(200, store.search(get_redis(), get_settings(), vectorstore_name, q))


@app.get("/api/memory/<vectorstore_name>/dead_letters")
@tracer.capture_method
def dead_letters(vectorstore_name: str) -> Response[Any]:
    q = parse_query(DeadLettersQuery, app)
    return json_response(200, store.dead_letters(get_redis(), vectorstore_name, q.limit))


@app.post("/api/memory/<vectorstore_name>/raw/<raw_memory_id>/retry")
@tracer.capture_method
def retry(vectorstore_name: str, raw_memory_id: str) -> Response[Any]:
    parse_query(NoParams, app)
    result = store.retry_dead_letter(get_redis(), vectorstore_name, path_arg(raw_memory_id))
    logger.info("dead letter redriven", extra={"raw_memory_id": result.raw_memory_id})
    return json_response(200, result)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return resolve(app, event, context)
