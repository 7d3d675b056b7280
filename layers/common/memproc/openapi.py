"""The API's OpenAPI description: the pieces memproc adds to Powertools' schema of each resolver,
and serving the merged document of all three API functions (GET /api/openapi.json, GET /api/docs).

The document is generated from the handlers by ``make openapi`` (``memproc_local.openapi``, which
imports every function's resolver) and ships in this package as ``openapi.json``: a function sees
only its own routes at run time. Serving it tailors two things to the request: ``servers`` (the URL
the caller used, stage included) and ``security`` (the deployment's AuthMode).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from pydantic import BaseModel

# How a caller authenticates, per AUTH_MODE (the document's components.securitySchemes).
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "sigv4": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "AuthMode=IAM: an AWS Signature Version 4 signed request (service execute-api); "
        "the caller's IAM policy must allow execute-api:Invoke on the route",
    },
    "cognito": {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": "AuthMode=COGNITO: the user pool ID token. Its TENANT_CLAIM (custom:vectorstore) "
        "must name the path's vectorstore, unless the user is in ADMIN_GROUP",
    },
    "api_key": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "AuthMode=API_KEY: a key of the usage plan (throttling and quotas per client; any "
        "key reaches every vectorstore)",
    },
}
SCHEME_OF_MODE = {"IAM": "sigv4", "COGNITO": "cognito", "API_KEY": "api_key"}
_UNUSED = ("HTTPValidationError", "ValidationError", "ResponseValidationError")


def as_dict(schema: Any) -> dict[str, Any]:
    """A Powertools OpenAPI model as the JSON document it describes."""
    if isinstance(schema, BaseModel):
        return dict(json.loads(schema.model_dump_json(by_alias=True, exclude_none=True)))
    return dict(schema)


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema without its ``null`` branch: an absent parameter is the null."""
    branches = schema.get("anyOf")
    if isinstance(branches, list):
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            return {**kept[0], **rest}
    return schema


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The query-string parameters of a model (memproc.schemas.requests) as OpenAPI parameters."""
    js = model.model_json_schema()
    required = set(js.get("required", []))
    params = []
    for name, prop in js.get("properties", {}).items():
        schema = _not_null(dict(prop))
        schema.pop("title", None)
        if schema.get("default", 0) is None:  # absent is the default; null is not a query value
            del schema["default"]
        description = schema.pop("description", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": schema}
        if description:
            param["description"] = description
        params.append(param)
    return params


def document_errors(operation: dict[str, Any], meanings: Mapping[int, str], statuses: Iterable[int]) -> None:
    """Give an operation's error statuses (these, and those it declares) the ErrorResponse body.
    A status whose body the route declares itself (GET /api/health's 503) may be either."""
    responses = operation.setdefault("responses", {})
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for status in sorted({*statuses, *(int(s) for s in responses if int(s) >= 400)}):
        entry = responses.setdefault(str(status), {"description": meanings[status]})
        content = entry.setdefault("content", {}).setdefault("application/json", {})
        declared = content.get("schema")
        content["schema"] = {"oneOf": [declared, error]} if declared and declared != error else error
        if status == 503:
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
            }


def add_error_schemas(schema: dict[str, Any], error: type[BaseModel]) -> None:
    """The error body's schemas in components; Powertools' 422 shapes, which memproc never sends, out."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    js = error.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(js.pop("$defs", {}))
    components[error.__name__] = js
    for name in _UNUSED:
        components.pop(name, None)


@cache
def _packaged() -> str:
    return resources.files("memproc").joinpath("openapi.json").read_text(encoding="utf-8")


def base_url(event: Mapping[str, Any]) -> str:
    """The URL the caller reached the API at, up to the routes: scheme, host and the path before
    the route (the stage on an execute-api domain, a custom domain's base path)."""
    context = event.get("requestContext") or {}
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    scheme = str(headers.get("x-forwarded-proto", "https")).split(",")[0].strip()
    host = headers.get("host") or context.get("domainName") or "localhost"
    full, path = str(context.get("path") or ""), str(event.get("path") or "")
    prefix = full[: len(full) - len(path)] if path and full.endswith(path) else ""
    return f"{scheme}://{host}{prefix.rstrip('/')}"


def document(event: Mapping[str, Any], auth_mode: str) -> dict[str, Any]:
    """The API's description as served: the packaged document for this request's URL and AuthMode."""
    doc = json.loads(_packaged())
    doc["servers"] = [{"url": base_url(event)}]
    scheme = SCHEME_OF_MODE.get(auth_mode)
    schemes = doc.get("components", {}).get("securitySchemes", {})
    if scheme is None:  # NONE: the local server without checks
        doc.pop("security", None)
        schemes.clear()
    else:
        doc["security"] = [{scheme: []}]
        for name in list(schemes):
            if name != scheme:
                del schemes[name]
    return doc


@cache
def _swagger_assets() -> tuple[str, str]:
    """Swagger UI as Powertools ships it: served from here, no CDN (the page holds credentials)."""
    folder = resources.files("aws_lambda_powertools.event_handler.openapi.swagger_ui")
    return (
        folder.joinpath("swagger-ui-bundle.min.js").read_text(encoding="utf-8"),
        folder.joinpath("swagger-ui.min.css").read_text(encoding="utf-8"),
    )


def swagger_page(doc: Mapping[str, Any]) -> str:
    """Swagger UI with the document inline, so one authenticated request loads everything."""
    js, css = _swagger_assets()
    spec = json.dumps(doc).replace("</", "<\\/")
    title = str(doc.get("info", {}).get("title", "API")).replace("<", "&lt;")
    return f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<div id="swagger-ui"></div>
<script>{js}</script>
<script>
SwaggerUIBundle({{dom_id: "#swagger-ui", spec: {spec}, deepLinking: true, docExpansion: "list",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset], layout: "BaseLayout"}});
</script>
</body>
</html>
"""


def _body(media_type: str, kind: str) -> dict[str, Any]:
    return {media_type: {"schema": {"type": kind}}}


def serve(app: APIGatewayRestResolver) -> None:
    """GET /api/openapi.json and GET /api/docs on `app` (the query function's resolver), behind the
    same auth as every route."""
    from memproc.settings import get_settings

    @app.get(
        "/api/openapi.json",
        summary="This API's OpenAPI document",
        responses={
            200: {
                "description": "OpenAPI 3.1",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
    def get_openapi() -> Response[Any]:
        doc = document(app.current_event.raw_event, get_settings().auth_mode)
        return Response(200, content_types.APPLICATION_JSON, json.dumps(doc))

    @app.get(
        "/api/docs",
        summary="Swagger UI for this API",
        responses={
            200: {"description": "Swagger UI", "content": {"text/html": {"schema": {"type": "string"}}}}
        },
    )
    def get_docs() -> Response[Any]:
        doc = document(app.current_event.raw_event, get_settings().auth_mode)
        return Response(200, "text/html; charset=utf-8", swagger_page(doc))
