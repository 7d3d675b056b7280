"""What every HTTP handler shares: the resolver with validation, error mapping, observability."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import unquote

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from memproc import auth, request_body
from memproc.dal.connection import StoreError, store_failure
from memproc.errors import ApiError, InvalidInput
from memproc.observability import logger
from memproc.schemas.responses import ErrorBody, ErrorResponse
from memproc.settings import get_settings

Q = TypeVar("Q", bound=BaseModel)


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response[Any]:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details))
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=body.model_dump_json(exclude_none=True),
        headers=headers,
    )


def json_response(status: int, model: BaseModel, headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=model.model_dump_json(),
        headers=headers,
    )


def _refused(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A refusal as a Lambda proxy response, for requests turned away before the resolver runs."""
    body = ErrorResponse(error=ErrorBody(code=code, message=message)).model_dump_json(exclude_none=True)
    return {
        "statusCode": status,
        "headers": {"Content-Type": content_types.APPLICATION_JSON, **(headers or {})},
        "body": body,
    }


def resolve(app: APIGatewayRestResolver, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Identify the caller (401 without one), screen the raw request, so an oversized or non-JSON
    body costs nothing and stores nothing, then let the resolver route, validate and authorize it."""
    settings = get_settings()
    try:
        caller = auth.authenticate(event, settings)
    except auth.Unauthenticated as exc:
        return _refused(exc.status, exc.code, exc.message, exc.headers)
    problem = request_body.screen(event, settings.max_body_bytes)
    if problem is not None:
        return _refused(*problem)
    logger.append_keys(caller=caller.principal)
    app.append_context(caller=caller)
    return app.resolve(event, context)


def _authorize(app: APIGatewayRestResolver, next_middleware: NextMiddleware) -> Response[Any]:
    """Every route: the caller `resolve` identified may act on the vectorstore of the path (403)."""
    caller = app.context.get("caller")
    if not isinstance(caller, auth.Caller):  # resolved without `resolve`: identify here, fail closed
        caller = auth.authenticate(app.current_event.raw_event, get_settings())
    vectorstore = (app.context.get("_route_args") or {}).get("vectorstore_name")
    auth.authorize(caller, path_arg(vectorstore) if isinstance(vectorstore, str) else None, get_settings())
    return next_middleware(app)


def make_resolver() -> APIGatewayRestResolver:
    """A REST resolver whose every error is JSON with a stable code and a human message."""
    app = APIGatewayRestResolver(enable_validation=True, json_body_deserializer=request_body.strict_json)
    app.use(middlewares=[_authorize])

    @app.exception_handler(ApiError)
    def _api_error(exc: ApiError) -> Response[Any]:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    def _invalid(exc: RequestValidationError) -> Response[Any]:
        errors = exc.errors()
        invalid = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if invalid is not None:
            reason = (invalid.get("ctx") or {}).get("error")
            message = "the request body is not valid JSON" + (f": {reason}" if reason else "")
            return error_response(400, "malformed_json", message)
        details = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in errors
        ]
        summary = "; ".join(f"{d['location']}: {d['message']}" for d in details)
        return error_response(422, "validation_error", f"invalid request: {summary}", details)

    @app.exception_handler(StoreError)
    def _store_error(exc: StoreError) -> Response[Any]:
        failure = store_failure(exc)
        if failure is None:
            raise exc  # a bug, not a store condition: Lambda reports it
        code, reason = failure
        logger.warning("store failure", extra={"code": code, "error": str(exc)[:300]})
        # A store_raw whose answer was lost may be sent again safely: it is deduplicated.
        retry_after = "5" if code == "store_unavailable" else "30"
        return error_response(503, code, f"{reason}; retry later", headers={"Retry-After": retry_after})

    @app.not_found
    def _not_found(exc: Exception) -> Response[Any]:
        return error_response(
            404, "not_found", f"no route for {app.current_event.http_method} {app.current_event.path}"
        )

    return app


def path_arg(value: str) -> str:
    """A route argument as the client meant it: Powertools reads route arguments from the raw
    ``path``, which API Gateway (REST) delivers percent-encoded."""
    return unquote(value)


def parse_query(model: type[Q], app: APIGatewayRestResolver) -> Q:
    """Validate the current request's query-string parameters into ``model``; any problem is a 400
    that names the parameter (code ``invalid_<name>``, or the validator's own code for cross-field
    rules). A parameter given twice is refused: which value was meant is the client's to say."""
    repeated = sorted(
        k for k, v in (app.current_event.multi_value_query_string_parameters or {}).items() if len(v) > 1
    )
    if repeated:
        raise InvalidInput(
            f"query parameter {repeated[0]!r} is given more than once", code="repeated_query_parameter"
        )
    try:
        return model.model_validate(app.current_event.query_string_parameters or {})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        details = [
            {"parameter": ".".join(str(p) for p in e["loc"]) or None, "message": e["msg"]} for e in errors
        ]
        first = errors[0]
        if first["type"] == "extra_forbidden":
            code = "unknown_query_parameter"
            expected = ", ".join(model.model_fields) or "none"
            message = f"unknown query parameter {first['loc'][0]!r} (expected: {expected})"
        else:
            code = f"invalid_{first['loc'][0]}" if first["loc"] else first["type"]
            message = "; ".join(
                f"{d['parameter']}: {d['message']}" if d["parameter"] else str(d["message"]) for d in details
            )
        raise InvalidInput(message, code=code, details=details) from None
