"""Call the real Lambda handlers with API Gateway REST events built from template.yaml's routes,
in-process (the same events `memproc serve` builds for HTTP requests)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import quote, urlencode

from memproc_local.events import LambdaContext, build_event
from memproc_local.handlers import load_handler
from memproc_local.routing import RouteTable
from memproc_local.template import load_routes
from tests.redis_server import ROOT


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def error_code(self) -> str | None:
        return self.body.get("error", {}).get("code") if isinstance(self.body, dict) else None


@cache
def api_routes() -> list[tuple[str, str]]:
    """(method, resource) of every API route in template.yaml."""
    return sorted({(r.method, r.resource) for r in load_routes(ROOT / "template.yaml")})


@cache
def _table() -> RouteTable:
    return RouteTable(load_routes(ROOT / "template.yaml"))


def call(
    method: str,
    path: str,
    *,
    json_body: Any = None,
    raw_body: bytes | None = None,
    query: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    identity: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> ApiResponse:
    """One request through the route's real handler. ``identity`` and ``claims`` are what API
    Gateway's authentication would add to ``requestContext`` (the IAM caller or API key; a Cognito
    token's claims)."""
    match = _table().match(method, path)
    if match.route is None:
        raise AssertionError(f"no route for {method} {path} in template.yaml")
    body = (
        raw_body
        if raw_body is not None
        else (json.dumps(json_body).encode() if json_body is not None else None)
    )
    hdrs = {"content-type": "application/json", **(headers or {})}
    event = build_event(
        match.route,
        method,
        path,
        urlencode(query or {}, doseq=True),
        hdrs,
        body,
        match.path_params,
        identity=identity,
        claims=claims,
    )
    handler = load_handler(match.route, ROOT)
    result = handler(event, LambdaContext(match.route.function))
    text = result.get("body") or ""
    try:
        parsed = json.loads(text) if text else None
    except json.JSONDecodeError:
        parsed = text
    hdrs_out = dict(result.get("headers") or {})
    hdrs_out.update({k: v[-1] for k, v in (result.get("multiValueHeaders") or {}).items() if v})
    return ApiResponse(int(result["statusCode"]), hdrs_out, parsed)


def mem_path(vectorstore: str, suffix: str = "") -> str:
    """/api/memory/<vs><suffix>, with the name percent-encoded as a client would send it."""
    return f"/api/memory/{quote(vectorstore, safe='')}{suffix}"
