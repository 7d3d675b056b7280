"""What every HTTP handler shares: the resolver with validation, error mapping, observability,
the caller's identity, query-string models, and the OpenAPI description of all of it."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
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
from memproc.schemas.errors import ErrorBody, ErrorResponse
from memproc.schemas.requests import NoParams
from memproc.settings import get_settings

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R")
# The attribute of a route function naming its query-string model (Resolver.query).
QUERY_MODEL = "memproc_query_model"
# What each error status means on every route, as the OpenAPI description says it.
ERRORS = {
    400: "Invalid input: a path value or query parameter (the code names which), or a body that is "
    "not JSON (code malformed_json)",
    401: "No caller identity for the deployment's AuthMode (code unauthenticated)",
    403: "Refused: the IAM policy does not allow this route, the API key is not valid (code "
    "invalid_api_key), or the Cognito token may not use this vectorstore (code forbidden)",
    404: "No such vectorstore, session, memory or raw memory",
    409: "Conflicts with what is stored: the record's state, or (store_raw) a vectorstore embedded with "
    "another model (code embedding_mismatch)",
    413: "The body is larger than MAX_BODY_BYTES",
    415: "The body is not application/json",
    422: "The body is JSON but not a valid request (code validation_error)",
    429: "Throttled by API Gateway: the stage's rate or burst limit, or the API key's usage plan "
    "(code throttled or quota_exceeded); retry later",
    503: "The store is unavailable, busy or full, or the queue is full; retry after Retry-After",
}
_ALWAYS = (400, 401, 403, 429, 503)  # 401/403/429 may come from API Gateway itself
_OF_A_VECTORSTORE = (404,)
_WITH_BODY = (413, 415, 422)


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


def _admit(app: APIGatewayRestResolver, next_middleware: NextMiddleware) -> Response[Any]:
    """Every route: the caller `resolve` identified may act on the vectorstore of the path (403);
    then the query string must fit the route's model (400), which the handler receives."""
    caller = app.context.get("caller")
    if not isinstance(caller, auth.Caller):  # resolved without `resolve`: identify here, fail closed
        caller = auth.authenticate(app.current_event.raw_event, get_settings())
    vectorstore = (app.context.get("_route_args") or {}).get("vectorstore_name")
    auth.authorize(caller, path_arg(vectorstore) if isinstance(vectorstore, str) else None, get_settings())
    model = getattr(getattr(app.context.get("_route"), "func", None), QUERY_MODEL, None)
    if model is not None:  # None: no route matched; the not-found handler answers
        app.append_context(query=parse_query(model, app))
    return next_middleware(app)


def ok(model: type[BaseModel], status: int = 200, *errors: int, description: str = "") -> dict[int, Any]:
    """A route's documented responses: its body model, and errors beyond those of every route."""
    responses: dict[int, Any] = {
        status: {
            "description": description or model.__doc__ or "OK",
            "content": {"application/json": {"model": model}},
        }
    }
    for code in errors:
        responses[code] = {"description": ERRORS[code]}
    return responses


class Resolver(APIGatewayRestResolver):
    """Powertools' REST resolver with what memproc adds: every route's query string validated
    against its model (:meth:`query`; none declared: no parameters at all), an OpenAPI schema
    that documents those parameters and the error shape of every status (:meth:`documented_schema`),
    and each route's methods remembered, so that a known path asked for with another method is a
    405 with ``Allow`` (Powertools answers any unmatched request 404)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.known_routes: list[tuple[re.Pattern[str], frozenset[str]]] = []

    def route(self, rule: str, method: Any, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        """Powertools' route registration; a route that declared no query model takes none."""
        methods = [method] if isinstance(method, str) else list(method)
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"<\w+>", rule.rstrip("/")))
        self.known_routes.append((re.compile(f"^{pattern}/?$"), frozenset(m.upper() for m in methods)))
        register = super().route(rule, method, *args, **kwargs)

        def decorate(fn: Callable[..., Any]) -> Any:
            if not hasattr(fn, QUERY_MODEL):
                setattr(fn, QUERY_MODEL, NoParams)
            return register(fn)

        return decorate

    def query(self, model: type[Q]) -> Callable[[Callable[..., R]], Callable[..., R]]:
        """Declare a route's query-string model: the handler gets the validated instance in its
        parameter annotated with the model (validated by ``parse_query``'s rules, after the caller
        is admitted)."""

        def decorate(fn: Callable[..., R]) -> Callable[..., R]:
            signature = inspect.signature(fn)
            names = [n for n, p in signature.parameters.items() if p.annotation in (model, model.__name__)]
            if len(names) != 1:
                raise TypeError(f"{fn.__name__} needs exactly one parameter annotated {model.__name__}")

            @functools.wraps(fn)
            def handler(*args: Any, **kwargs: Any) -> R:
                return fn(*args, **kwargs, **{names[0]: self.context["query"]})

            # Powertools reads the route's parameters from the signature: the query model is ours.
            params = [p for n, p in signature.parameters.items() if n != names[0]]
            handler.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
            setattr(handler, QUERY_MODEL, model)
            return handler

        return decorate

    def allowed_methods(self, path: str) -> list[str]:
        """The methods routed for `path` (empty: no route has this path)."""
        return sorted({m for pattern, methods in self.known_routes if pattern.match(path) for m in methods})

    def documented_schema(self) -> dict[str, Any]:
        """Powertools' OpenAPI schema of these routes, plus each route's query parameters (from its
        model's JSON schema: types, defaults, bounds, enums, descriptions) and the ErrorResponse of
        every error status it can answer."""
        from memproc import openapi

        schema = openapi.as_dict(self.get_openapi_schema())
        operations = schema.get("paths", {})
        for route in self._static_routes + self._dynamic_routes:
            operation = operations[route.openapi_path][route.method.lower()]
            operation.get("responses", {}).pop("422", None)  # Powertools' shape; memproc's is below
            summary = (inspect.getdoc(route.func) or "").strip().split("\n", 1)[0]
            if summary and operation.get("summary", "").startswith(route.method.upper()):
                operation["summary"] = summary  # the handler's docstring, not Powertools' "GET /path"
            model = getattr(route.func, QUERY_MODEL, NoParams)
            operation.setdefault("parameters", []).extend(openapi.query_parameters(model))
            statuses = [*_ALWAYS]
            if "{vectorstore_name}" in route.openapi_path:
                statuses += _OF_A_VECTORSTORE
            if "requestBody" in operation:
                statuses += _WITH_BODY
            openapi.document_errors(operation, ERRORS, statuses)
        openapi.add_error_schemas(schema, ErrorResponse)
        return schema


def make_resolver() -> Resolver:
    """A REST resolver whose every error is JSON with a stable code and a human message."""
    app = Resolver(enable_validation=True, json_body_deserializer=request_body.strict_json)
    app.use(middlewares=[_admit])

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
