"""What every HTTP handler shares: the resolver with validation, error mapping, observability."""

from __future__ import annotations

import re
from typing import Any, TypeVar
from urllib.parse import unquote

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from memproc import request_body
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


def json_response(status: int, model: BaseModel) -> Response[Any]:
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=model.model_dump_json()
    )


def resolve(app: APIGatewayRestResolver, event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Screen the raw request, so an oversized or non-JSON body costs nothing and stores nothing,
    then let the resolver route and validate it."""
    problem = request_body.screen(event, get_settings().max_body_bytes)
    if problem is None:
        return app.resolve(event, context)
    status, code, message = problem
    body = ErrorResponse(error=ErrorBody(code=code, message=message)).model_dump_json(exclude_none=True)
    return {"statusCode": status, "headers": {"Content-Type": content_types.APPLICATION_JSON}, "body": body}


class Resolver(APIGatewayRestResolver):
    """Powertools' REST resolver, remembering each route's methods so that a known path asked for
    with another method is a 405 with ``Allow`` (Powertools answers any unmatched request 404)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.known_routes: list[tuple[re.Pattern[str], frozenset[str]]] = []

    def route(self, rule: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        methods = [method] if isinstance(method, str) else list(method)
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"<\w+>", rule.rstrip("/")))
        self.known_routes.append((re.compile(f"^{pattern}/?$"), frozenset(m.upper() for m in methods)))
        return super().route(rule, method, *args, **kwargs)

    def allowed_methods(self, path: str) -> list[str]:
        """The methods routed for `path` (empty: no route has this path)."""
        return sorted({m for pattern, methods in self.known_routes if pattern.match(path) for m in methods})


def make_resolver() -> Resolver:
    """A REST resolver whose every error is JSON with a stable code and a human message."""
    app = Resolver(enable_validation=True, json_body_deserializer=request_body.strict_json)

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
        method, path = app.current_event.http_method, app.current_event.path
        allowed = app.allowed_methods(path)
        if allowed:
            return error_response(
                405,
                "method_not_allowed",
                f"{method} is not allowed on {path}; allowed: {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        return error_response(404, "not_found", f"no route for {method} {path}")

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
