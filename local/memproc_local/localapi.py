"""Serve the API routes of ``template.yaml`` locally by calling the real Lambda handlers.

``sam local start-api`` needs Docker; this module does the same job in-process for ``make dev``
and the end-to-end tests. It reads the ``AWS::Serverless::Function`` resources and their ``Api``
events from the SAM template, imports each function's handler module by file path, and turns
every HTTP request into the API Gateway REST (v1) proxy event the handler receives on AWS.

Faithful to API Gateway where a client or a handler could tell the difference:

- ``path`` keeps the request's percent-encoding (as REST APIs deliver it), while
  ``pathParameters`` and the query string parameters are URL-decoded. Powertools' resolver
  passes route arguments from ``path``, so handlers must decode them (or read
  ``pathParameters``) exactly as they must on AWS.
- ``queryStringParameters``/``headers`` keep the last value, ``multiValue*`` keep all of them,
  and empty collections are ``None``.
- Bodies that are not UTF-8 arrive base64-encoded with ``isBase64Encoded: true``.
- A request body over 10 MiB is refused with 413 before any handler runs; a handler that raises
  or returns a malformed proxy response yields 502 ``{"message": "Internal server error"}``.
- Errors API Gateway produces itself (413, unknown route) are rendered from the template's
  ``GatewayResponses`` (``REQUEST_TOO_LARGE``, ``MISSING_AUTHENTICATION_TOKEN``, ``DEFAULT_4XX``)
  when it customises them, so clients see the production error bodies locally.

Deliberate differences, chosen for clearer local errors:

- An unknown path is 404 ``{"error": {"code": "not_found", ...}}`` unless the template customises
  ``MISSING_AUTHENTICATION_TOKEN``; stock API Gateway answers 403
  ``{"message": "Missing Authentication Token"}``.
- A known path with a method it lacks is 405 ``{"error": {"code": "method_not_allowed", ...}}``
  with an ``Allow`` header; API Gateway treats it like an unknown path.
- All handlers share one process, so per-function environment variables from the template are
  not applied; a handler running past its ``Timeout`` (or API Gateway's 29 s) only logs a warning;
  API keys and usage plans are not enforced (as with ``sam local start-api``).

Run it directly with ``python -m memproc_local.localapi --template template.yaml --port 5001``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import secrets
import socket
import socketserver
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_TIMEOUT_SECONDS",
    "LambdaContext",
    "LocalApiServer",
    "Route",
    "RouteMatch",
    "RouteTable",
    "build_event",
    "load_handler",
    "load_routes",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's hard payload limit
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MEMORY_MB = 128
API_GATEWAY_TIMEOUT_SECONDS = 29.0  # REST API integration timeout, whatever the function's Timeout
ACCOUNT_ID = "123456789012"
API_ID = "local"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Months in English whatever the locale: API Gateway's requestTime is always "26/Nov/2026:05:28:00 +0000".
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_HOP_BY_HOP = {"connection", "content-length", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"}
_DRAIN_CAP_BYTES = 256 * 1024 * 1024
# The only keys API Gateway accepts in a proxy response; anything else is "Malformed Lambda proxy response".
_RESPONSE_KEYS = frozenset({"statusCode", "headers", "multiValueHeaders", "body", "isBase64Encoded"})

Handler = Callable[[dict[str, Any], Any], Any]


# --------------------------------------------------------------------------- template


@dataclass(frozen=True)
class Route:
    """One ``Api`` event of one function: what API Gateway would route to which handler."""

    method: str  # upper case; "ANY" matches every method
    resource: str  # e.g. "/api/memory/{vectorstore_name}/raw/{raw_memory_id}"
    function: str  # logical id of the function resource
    code_uri: Path  # as written in the template (relative to the template's directory)
    handler: str  # "app.lambda_handler"
    timeout: float = DEFAULT_TIMEOUT_SECONDS  # seconds, from the function or Globals.Function
    memory_size: int = DEFAULT_MEMORY_MB


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that reads CloudFormation short-form tags (``!Ref``...) instead of failing on them."""


def _construct_cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    """Turn ``!Name value`` into the long form CloudFormation itself uses (``{"Fn::Name": value}``)."""
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_cfn_tag)


def _read_template(template_path: Path) -> dict[str, Any]:
    """Parse a SAM/CloudFormation template (YAML or JSON) with intrinsic tags tolerated."""
    with Path(template_path).open(encoding="utf-8") as fh:
        doc = yaml.load(fh, Loader=_CfnLoader)  # a SafeLoader subclass
    if not isinstance(doc, dict):
        raise ValueError(f"{template_path}: not a CloudFormation template (top level is not a mapping)")
    return doc


def _resolve_number(value: Any, parameters: Mapping[str, Any], default: float) -> float:
    """A literal number, or ``!Ref Param`` resolved to the parameter's Default; else ``default``."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        param = parameters.get(value["Ref"])
        value = param.get("Default") if isinstance(param, dict) else None
    if isinstance(value, bool):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def _normalise_resource(path: str) -> str:
    """``/a/b/`` and ``a/b`` both mean resource ``/a/b`` to API Gateway."""
    path = "/" + path.strip().strip("/")
    return path


def load_routes(template_path: Path) -> list[Route]:
    """Every ``Api`` event of every ``AWS::Serverless::Function``, in template order.

    CodeUri, Handler, Timeout and MemorySize fall back to ``Globals.Function`` as in SAM. Other
    event types (schedules, queues, ``HttpApi``) are ignored; functions whose code is not a local
    directory (S3 location, inline code, images) are skipped with a warning.
    """
    doc = _read_template(template_path)
    return _routes_from_template(doc, str(template_path))


def _routes_from_template(doc: Mapping[str, Any], source: str) -> list[Route]:
    """The route extraction of :func:`load_routes`, on an already parsed template."""
    glob = doc.get("Globals")
    globals_fn = glob.get("Function") if isinstance(glob, dict) else None
    globals_fn = globals_fn if isinstance(globals_fn, dict) else {}
    parameters = doc.get("Parameters") or {}
    resources = doc.get("Resources") or {}
    routes: list[Route] = []
    seen: dict[tuple[str, str], str] = {}
    for logical_id, resource in resources.items():
        if not isinstance(resource, dict) or resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties")
        events = props.get("Events") if isinstance(props, dict) else None
        if not isinstance(props, dict) or not isinstance(events, dict):
            continue
        api_events = [
            ev["Properties"]
            for ev in events.values()
            if isinstance(ev, dict) and ev.get("Type") == "Api" and isinstance(ev.get("Properties"), dict)
        ]
        if not api_events:
            continue
        code_uri = props.get("CodeUri", globals_fn.get("CodeUri"))
        handler = props.get("Handler", globals_fn.get("Handler"))
        if not isinstance(code_uri, str) or not isinstance(handler, str):
            logger.warning(
                "%s: %s has no local CodeUri/Handler; its API routes are skipped", source, logical_id
            )
            continue
        timeout = _resolve_number(
            props.get("Timeout", globals_fn.get("Timeout")), parameters, DEFAULT_TIMEOUT_SECONDS
        )
        memory = int(
            _resolve_number(
                props.get("MemorySize", globals_fn.get("MemorySize")), parameters, DEFAULT_MEMORY_MB
            )
        )
        for ev in api_events:
            path, method = ev.get("Path"), ev.get("Method")
            if not isinstance(path, str) or not isinstance(method, str):
                logger.warning("%s: %s has an Api event without literal Path/Method", source, logical_id)
                continue
            method = method.strip().upper()
            method = "ANY" if method in ("ANY", "X-AMAZON-APIGATEWAY-ANY-METHOD") else method
            resource_path = _normalise_resource(path)
            key = (method, resource_path)
            if key in seen:
                logger.warning(
                    "%s: %s %s is declared by both %s and %s; %s wins",
                    source, method, resource_path, seen[key], logical_id, seen[key],
                )  # fmt: skip
                continue
            seen[key] = logical_id
            routes.append(
                Route(
                    method=method,
                    resource=resource_path,
                    function=str(logical_id),
                    code_uri=Path(code_uri),
                    handler=handler,
                    timeout=timeout,
                    memory_size=memory,
                )
            )
    return routes


def _strip_quotes(value: Any) -> str | None:
    """SAM's Cors values are quoted strings (``"'*'"``); anything else (an intrinsic) is unusable here."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        value = value[1:-1]
    return value


def _cors_from_template(doc: Mapping[str, Any]) -> dict[str, str] | None:
    """The CORS preflight headers API Gateway would answer OPTIONS with (SAM ``Cors`` property)."""
    candidates: list[Any] = []
    glob = doc.get("Globals")
    if isinstance(glob, dict) and isinstance(glob.get("Api"), dict):
        candidates.append(glob["Api"].get("Cors"))
    for resource in (doc.get("Resources") or {}).values():
        if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::Api":
            candidates.append((resource.get("Properties") or {}).get("Cors"))
    for cors in candidates:
        if isinstance(cors, str):
            cors = {"AllowOrigin": cors}
        if not isinstance(cors, dict):
            continue
        origin = _strip_quotes(cors.get("AllowOrigin"))
        if not origin:
            continue
        headers = {"Access-Control-Allow-Origin": origin}
        for key, header in (
            ("AllowMethods", "Access-Control-Allow-Methods"),
            ("AllowHeaders", "Access-Control-Allow-Headers"),
            ("MaxAge", "Access-Control-Max-Age"),
        ):
            value = cors.get(key)
            text = (
                str(value) if isinstance(value, int) and not isinstance(value, bool) else _strip_quotes(value)
            )
            if text:
                headers[header] = text
        if cors.get("AllowCredentials") is True:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers
    return None


def _gateway_responses_from_template(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``GatewayResponses`` of the template's ``AWS::Serverless::Api`` (the first that has any).

    API Gateway renders its own errors (413, unknown route...) from these, so the local server
    does too, and clients see the same error bodies locally as in production.
    """
    for resource in (doc.get("Resources") or {}).values():
        if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::Api":
            responses = (resource.get("Properties") or {}).get("GatewayResponses")
            if isinstance(responses, dict) and responses:
                return {str(k): v for k, v in responses.items() if isinstance(v, dict)}
    return {}


_VTL_REF = re.compile(r"\$\{context\.(\w+(?:\.\w+)*)\}|\$context\.(\w+(?:\.\w+)*)")


def _render_gateway_response(
    spec: Mapping[str, Any], response_type: str, default_status: int, message: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of one gateway response, with the ``$context`` values it may use."""
    request_id = str(uuid.uuid4())
    values = {
        "error.messageString": json.dumps(message),
        "error.message": message,
        "error.responseType": response_type,
        "requestId": request_id,
        "extendedRequestId": request_id,
    }
    status = default_status
    raw_status = spec.get("StatusCode")
    if isinstance(raw_status, int | str) and str(raw_status).isdigit():
        status = int(raw_status)
    templates = spec.get("ResponseTemplates") or {}
    template = templates.get("application/json") if isinstance(templates, dict) else None
    if isinstance(template, str):
        body = _VTL_REF.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), template)
    else:
        body = json.dumps({"message": message})
    headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    params = spec.get("ResponseParameters") or {}
    for name, value in ((params.get("Headers") or {}) if isinstance(params, dict) else {}).items():
        literal = _strip_quotes(value)
        if literal is not None and str(value).strip().startswith("'"):
            headers.append((str(name), literal))
    headers.append(("x-amzn-ErrorType", response_type))
    return status, headers, body.encode("utf-8")


# --------------------------------------------------------------------------- handlers

_handler_cache: dict[tuple[str, Path, str], Handler] = {}
_handler_lock = threading.Lock()
_function_locks: dict[str, threading.Lock] = {}


def _function_lock(function: str) -> threading.Lock:
    with _handler_lock:
        return _function_locks.setdefault(function, threading.Lock())


def _handler_file(route: Route, project_root: Path) -> tuple[Path, str]:
    """Where the handler's module lives and which attribute to call (``a/b.c.fn`` -> ``a/b/c.py``, ``fn``)."""
    module_part, sep, attr = route.handler.rpartition(".")
    if not sep or not module_part or not attr:
        raise ValueError(f"{route.function}: Handler {route.handler!r} is not 'module.function'")
    code_dir = route.code_uri if route.code_uri.is_absolute() else Path(project_root) / route.code_uri
    rel = Path(*module_part.replace("/", ".").split("."))
    candidate = code_dir / rel.with_suffix(".py")
    if not candidate.is_file() and (code_dir / rel / "__init__.py").is_file():
        candidate = code_dir / rel / "__init__.py"
    return candidate.resolve(), attr


def load_handler(route: Route, project_root: Path) -> Handler:
    """Import the route's handler by file path, once per function.

    Each function gets its own module name, so the four ``app.py`` files never shadow each other
    in ``sys.modules`` (which dataclasses and pydantic consult). The function's code directory is
    on ``sys.path`` while the module executes, as ``/var/task`` is on Lambda.
    """
    path, attr = _handler_file(route, project_root)
    key = (route.function, path, attr)
    with _handler_lock:
        cached = _handler_cache.get(key)
        if cached is not None:
            return cached
        module = _import_by_path(route.function, path)
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise AttributeError(
                f"{route.function}: {path} has no callable {attr!r} (Handler {route.handler!r})"
            )
        _handler_cache[key] = fn
        return fn


def _import_by_path(function: str, path: Path) -> ModuleType:
    """Execute ``path`` as a fresh module with a name unique to the function and file."""
    if not path.is_file():
        raise FileNotFoundError(f"{function}: handler module {path} does not exist")
    safe = "".join(ch if ch.isalnum() else "_" for ch in function)
    digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:8]
    name = f"_memproc_local_{safe}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{function}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    code_dir = str(path.parent)
    added = code_dir not in sys.path
    if added:
        sys.path.insert(0, code_dir)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(code_dir)
    return module


class LambdaContext:
    """The ``context`` object a Python Lambda handler receives, with a real deadline."""

    def __init__(
        self,
        function_name: str,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        memory_limit_in_mb: int = DEFAULT_MEMORY_MB,
        region: str | None = None,
    ) -> None:
        region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        now = datetime.now(UTC)
        self.function_name: str = function_name
        self.function_version: str = "$LATEST"
        self.invoked_function_arn: str = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{function_name}"
        self.memory_limit_in_mb: int = memory_limit_in_mb
        self.aws_request_id: str = str(uuid.uuid4())
        self.log_group_name: str = f"/aws/lambda/{function_name}"
        self.log_stream_name: str = f"{now:%Y/%m/%d}/[$LATEST]{secrets.token_hex(16)}"
        self.identity: Any = None
        self.client_context: Any = None
        self.tenant_id: str | None = None
        self.timeout_seconds: float = timeout_seconds
        self._deadline: float = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds until Lambda would stop this invocation (never negative)."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def __repr__(self) -> str:
        return f"LambdaContext(function_name={self.function_name!r}, aws_request_id={self.aws_request_id!r})"


# --------------------------------------------------------------------------- events


def _request_time(moment: datetime) -> str:
    """API Gateway's ``requestTime``: ``26/Nov/2026:05:28:00 +0000``, English month whatever the locale."""
    moment = moment.astimezone(UTC)
    return f"{moment.day:02d}/{_MONTHS[moment.month - 1]}/{moment.year}:{moment:%H:%M:%S} +0000"


def _header_pairs(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header (name, value) pairs in arrival order; ``HTTPMessage.items()`` keeps repeated names."""
    items = headers.items() if hasattr(headers, "items") else headers
    return [(str(k), str(v)) for k, v in items]


def build_event(
    route: Route,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes | None,
    path_params: dict[str, str],
    stage: str = "local",
    *,
    source_ip: str = "127.0.0.1",
    request_time: datetime | None = None,
) -> dict[str, Any]:
    """The API Gateway REST (v1) Lambda proxy event for one request.

    ``path`` is the raw request path (percent-encoding kept, as REST APIs deliver it), ``query``
    the raw query string without ``?``, ``path_params`` already decoded. ``headers`` may be a
    mapping or (name, value) pairs; repeated names end up in ``multiValueHeaders``.
    """
    pairs = _header_pairs(headers)
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    names: dict[str, str] = {}  # lower-case -> first spelling seen, so "x-a" and "X-A" merge
    for name, value in pairs:
        canonical = names.setdefault(name.lower(), name)
        single[canonical] = value
        multi.setdefault(canonical, []).append(value)

    qs_single: dict[str, str] = {}
    qs_multi: dict[str, list[str]] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        qs_single[key] = value
        qs_multi.setdefault(key, []).append(value)

    is_b64 = False
    text: str | None = None
    if body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = base64.b64encode(body).decode("ascii")
            is_b64 = True

    moment = request_time or datetime.now(UTC)
    host = single.get(names.get("host", "Host"), "localhost")
    user_agent = multi.get(names.get("user-agent", "User-Agent"), [None])[-1]
    resource_id = hashlib.sha1(
        f"{route.method} {route.resource}".encode(), usedforsecurity=False
    ).hexdigest()[:6]
    request_context: dict[str, Any] = {
        "resourceId": resource_id,
        "resourcePath": route.resource,
        "httpMethod": method,
        "extendedRequestId": base64.b64encode(secrets.token_bytes(12)).decode("ascii"),
        "requestTime": _request_time(moment),
        "path": f"/{stage}{path}",
        "accountId": ACCOUNT_ID,
        "protocol": "HTTP/1.1",
        "stage": stage,
        "domainPrefix": host.split(".", 1)[0].split(":", 1)[0],
        "requestTimeEpoch": int(moment.timestamp() * 1000),
        "requestId": str(uuid.uuid4()),
        "identity": {
            "cognitoIdentityPoolId": None,
            "accountId": None,
            "cognitoIdentityId": None,
            "caller": None,
            "sourceIp": source_ip,
            "principalOrgId": None,
            "accessKey": None,
            "cognitoAuthenticationType": None,
            "cognitoAuthenticationProvider": None,
            "userArn": None,
            "userAgent": user_agent,
            "user": None,
            "apiKey": None,
            "apiKeyId": None,
            "clientCert": None,
        },
        "domainName": host,
        "apiId": API_ID,
    }
    return {
        "resource": route.resource,
        "path": path,
        "httpMethod": method,
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": qs_single or None,
        "multiValueQueryStringParameters": qs_multi or None,
        "pathParameters": dict(path_params) or None,
        "stageVariables": None,
        "requestContext": request_context,
        "body": text,
        "isBase64Encoded": is_b64,
    }


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class RouteMatch:
    """The outcome of routing one request: a route, or why there is none."""

    route: Route | None  # None: unknown path, or method not allowed
    resource: str | None  # the matched resource, even when the method is not allowed
    path_params: dict[str, str] = field(default_factory=dict)
    allowed: tuple[str, ...] = ()  # methods of the matched resource, for the Allow header


_LITERAL, _PARAM, _GREEDY = 0, 1, 2


class RouteTable:
    """API Gateway's resource matching: ``{param}`` is one non-empty segment, ``{param+}`` the rest.

    When several resources match a path, the most specific wins, segment by segment: a literal
    outranks ``{param}``, which outranks ``{param+}`` (so ``/raw/latest`` beats ``/raw/{id}``).
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self._by_resource: dict[str, dict[str, Route]] = {}
        self._patterns: list[tuple[str, list[tuple[int, str]]]] = []
        for route in routes:
            methods = self._by_resource.setdefault(route.resource, {})
            if not methods:
                self._patterns.append((route.resource, self._compile(route.resource)))
            methods.setdefault(route.method, route)

    @staticmethod
    def _compile(resource: str) -> list[tuple[int, str]]:
        """Resource segments as (kind, literal or parameter name)."""
        parts: list[tuple[int, str]] = []
        for seg in resource.strip("/").split("/") if resource != "/" else []:
            if seg.startswith("{") and seg.endswith("+}"):
                parts.append((_GREEDY, seg[1:-2]))
            elif seg.startswith("{") and seg.endswith("}"):
                parts.append((_PARAM, seg[1:-1]))
            else:
                parts.append((_LITERAL, seg))
        return parts

    @staticmethod
    def _try(
        pattern: list[tuple[int, str]], segs: list[str]
    ) -> tuple[tuple[int, ...], dict[str, str]] | None:
        """(specificity rank, decoded params) if the decoded segments fit the pattern."""
        rank: list[int] = []
        params: dict[str, str] = {}
        for i, (kind, text) in enumerate(pattern):
            if kind == _GREEDY:
                rest = segs[i:]
                if not rest or not any(rest):
                    return None
                params[text] = "/".join(rest)
                rank.append(_GREEDY)
                return tuple(rank), params
            if i >= len(segs):
                return None
            if kind == _LITERAL:
                if segs[i] != text:
                    return None
            elif not segs[i]:
                return None
            else:
                params[text] = segs[i]
            rank.append(kind)
        if len(segs) != len(pattern):
            return None
        return tuple(rank), params

    def resolve(self, path: str) -> tuple[str, dict[str, str]] | None:
        """The most specific resource matching a raw (percent-encoded) path, with decoded params."""
        trimmed = path.strip("/") if path != "/" else ""
        segs = [unquote(s) for s in trimmed.split("/")] if trimmed else []
        best: tuple[tuple[int, ...], str, dict[str, str]] | None = None
        for resource, pattern in self._patterns:
            hit = self._try(pattern, segs)
            if hit is not None and (best is None or hit[0] < best[0]):
                best = (hit[0], resource, hit[1])
        return None if best is None else (best[1], best[2])

    def methods(self, resource: str) -> dict[str, Route]:
        """Method -> route for one resource."""
        return dict(self._by_resource.get(resource, {}))

    def match(self, method: str, path: str) -> RouteMatch:
        """Route a request; ``ANY`` serves every method the resource does not declare itself."""
        found = self.resolve(path)
        if found is None:
            return RouteMatch(None, None)
        resource, params = found
        methods = self._by_resource[resource]
        route = methods.get(method.upper()) or methods.get("ANY")
        allowed = tuple(METHODS) if "ANY" in methods else tuple(m for m in METHODS if m in methods)
        return RouteMatch(route, resource, params if route else {}, allowed)


# --------------------------------------------------------------------------- server


class _BodyTooLarge(Exception):
    """The request body is over the limit; ``remaining`` bytes of it are still unread (-1: unknown)."""

    def __init__(self, remaining: int) -> None:
        super().__init__(remaining)
        self.remaining = remaining


class _BadRequest(Exception):
    """The request framing is unusable (bad Content-Length, broken chunking)."""


class _MalformedResponse(Exception):
    """The handler returned something API Gateway would reject as a proxy response."""


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def _to_http(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Translate a Lambda proxy response into status, header lines and body, as API Gateway does."""
    if not isinstance(result, dict):
        raise _MalformedResponse(f"handler returned {type(result).__name__}, not a proxy response dict")
    extra = set(result) - _RESPONSE_KEYS
    if extra:
        raise _MalformedResponse(
            f"unexpected keys {sorted(map(str, extra))} (allowed: {sorted(_RESPONSE_KEYS)})"
        )
    try:
        status = int(result.get("statusCode"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _MalformedResponse(f"statusCode {result.get('statusCode')!r} is not an integer") from None
    if not 100 <= status <= 599:
        raise _MalformedResponse(f"statusCode {status} is out of range")
    single = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(single, dict) or not isinstance(multi, dict):
        raise _MalformedResponse("headers/multiValueHeaders must be objects")
    lines: list[tuple[str, str]] = []
    multi_names = {str(k).lower() for k in multi}
    for name, value in single.items():
        if str(name).lower() not in multi_names:  # API Gateway: multiValueHeaders wins on a clash
            lines.append((str(name), str(value)))
    for name, values in multi.items():
        if not isinstance(values, list):
            raise _MalformedResponse(f"multiValueHeaders[{name!r}] must be a list")
        lines.extend((str(name), str(v)) for v in values)
    lines = [(k, v) for k, v in lines if k.lower() not in _HOP_BY_HOP]
    if not any(k.lower() == "content-type" for k, _ in lines):
        lines.append(("Content-Type", "application/json"))
    body = result.get("body")
    if body is None:
        data = b""
    elif not isinstance(body, str):
        raise _MalformedResponse(f"body must be a string, got {type(body).__name__}")
    elif result.get("isBase64Encoded"):
        try:
            data = base64.b64decode(body, validate=False)
        except ValueError as exc:
            raise _MalformedResponse(f"isBase64Encoded body is not base64: {exc}") from None
    else:
        data = body.encode("utf-8")
    return status, lines, data


class _HTTPServer(ThreadingHTTPServer):
    """One thread per connection; threads are daemons so idle keep-alive clients never block exit."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # socketserver's 5 resets simultaneous connects from busy clients

    def __init__(self, address: tuple[str, int], app: LocalApiServer) -> None:
        self.app = app
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        """Bind without ``HTTPServer``'s reverse-DNS ``getfqdn`` (slow or hanging offline)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


@dataclass
class _Reply:
    """A response decided but not yet written; logged first so the log line never trails the client."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    function: str | None = None
    close: bool = False
    drain: int = 0  # bytes of a refused request body still to read and discard


class _RequestHandler(BaseHTTPRequestHandler):
    """Turns each HTTP request into a handler invocation; every response carries Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = "memproc-localapi"
    # Headers and body leave in two writes; with Nagle on, the body waits for the client's delayed
    # ACK of the headers (~40 ms per keep-alive request on Linux).
    disable_nagle_algorithm = True
    timeout = 120  # idle keep-alive connections are dropped eventually
    server: _HTTPServer

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: one concise line per request is written by ``_dispatch`` instead."""

    def log_message(self, format: str, *args: Any) -> None:
        self.server.app._log(f"localapi: {self.address_string()} {format % args}")

    def handle_expect_100(self) -> bool:
        """Refuse an oversized body before the client sends it (curl asks for bodies over 1 MiB)."""
        length = self._content_length()
        if length is not None and length > self.server.app.max_body_bytes:
            reply = self.server.app._too_large()
            reply.close = True
            self._finish(reply, time.perf_counter())
            return False
        return super().handle_expect_100()

    def _content_length(self) -> int | None:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        try:
            value = int(raw.strip())
        except ValueError:
            return None
        return value if value >= 0 else None

    def _read_body(self) -> bytes | None:
        """The request body within the size limit; chunked transfer encoding is accepted."""
        limit = self.server.app.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        length = self._content_length()
        if length is None:
            raise _BadRequest(f"invalid Content-Length {raw!r}")
        if length > limit:
            raise _BodyTooLarge(length)
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            raise _BadRequest("request body shorter than Content-Length")
        return data

    def _read_chunked(self, limit: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("malformed chunk size") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > limit:
                raise _BodyTooLarge(-1)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _BadRequest("truncated chunk")
            chunks.append(chunk)
            self.rfile.readline(3)

    def _drain(self, remaining: int) -> None:
        """Read and discard the rest of a refused body so the client sees our 413, not a reset."""
        if remaining <= 0 or remaining > _DRAIN_CAP_BYTES:
            return
        try:
            self.connection.settimeout(5)
            while remaining > 0:
                got = self.rfile.read(min(remaining, 1 << 20))
                if not got:
                    return
                remaining -= len(got)
        except OSError:
            return

    def _finish(self, reply: _Reply, start: float) -> None:
        """Log the request line, then write the response (and drain a refused body)."""
        ms = (time.perf_counter() - start) * 1000
        suffix = f" {reply.function}" if reply.function else ""
        self.server.app._log(f"localapi: {self.command} {self.path} {reply.status} {ms:.1f}ms{suffix}")
        self.send_response(reply.status)
        headers = reply.headers
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers = [*headers, ("Content-Type", "application/json")]
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)
        self.wfile.flush()
        self._drain(reply.drain)

    def _dispatch(self) -> None:
        start = time.perf_counter()
        self._finish(self._serve(), start)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    def _split_target(self) -> tuple[str, str]:
        """(raw path, raw query) from the request target; absolute-form targets are accepted."""
        target = self.path
        if not target.startswith("/"):
            parts = urlsplit(target)
            return parts.path or "/", parts.query
        path, _, query = target.partition("?")
        return path, query.partition("#")[0]

    def _serve(self) -> _Reply:
        """Decide the response to one request."""
        app = self.server.app
        try:
            body = self._read_body()
        except _BodyTooLarge as exc:
            reply = app._too_large()
            reply.close, reply.drain = True, exc.remaining
            return reply
        except _BadRequest as exc:
            error = {"error": {"code": "bad_request", "message": str(exc)}}
            return _Reply(400, [], _json_bytes(error), close=True)

        method = self.command.upper()
        raw_path, query = self._split_target()
        match = app.table.match(method, raw_path)
        if match.resource is None:
            return app._not_found(method, raw_path)
        methods = app.table.methods(match.resource)
        if method == "OPTIONS" and "OPTIONS" not in methods and app.cors is not None:
            cors = dict(app.cors)
            cors.setdefault("Access-Control-Allow-Methods", ",".join((*match.allowed, "OPTIONS")))
            return _Reply(200, list(cors.items()), b"")
        route = match.route
        if route is None:
            allowed = ", ".join(match.allowed)
            message = f"{method} is not allowed on {match.resource}; allowed: {allowed}"
            error = {"error": {"code": "method_not_allowed", "message": message}}
            return _Reply(405, [("Allow", allowed)], _json_bytes(error))

        event = build_event(
            route,
            method,
            raw_path,
            query,
            self._forwarded_headers(),
            body,
            match.path_params,
            app.stage,
            source_ip=self.client_address[0],
        )
        status, headers, data = self._invoke(route, event)
        return _Reply(status, headers, data, function=route.function)

    def _forwarded_headers(self) -> list[tuple[str, str]]:
        """The client's headers plus the X-Forwarded-* ones API Gateway adds."""
        pairs = [(k, v) for k, v in self.headers.items()]
        lower = {k.lower() for k, _ in pairs}
        client_ip = self.client_address[0]
        if "x-forwarded-for" in lower:
            pairs = [(k, f"{v}, {client_ip}" if k.lower() == "x-forwarded-for" else v) for k, v in pairs]
        else:
            pairs.append(("X-Forwarded-For", client_ip))
        if "x-forwarded-port" not in lower:
            pairs.append(("X-Forwarded-Port", str(self.server.server_port)))
        if "x-forwarded-proto" not in lower:
            pairs.append(("X-Forwarded-Proto", "http"))
        if "x-amzn-trace-id" not in lower:
            pairs.append(("X-Amzn-Trace-Id", f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)}"))
        return pairs

    def _invoke(self, route: Route, event: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
        """Call the handler like Lambda + API Gateway would; failures become API Gateway's 502."""
        app = self.server.app
        started = time.monotonic()
        try:
            handler = load_handler(route, app.project_root)
            context = LambdaContext(route.function, route.timeout, route.memory_size)
            # Like a Lambda container, one function serves one event at a time: a Powertools
            # resolver keeps per-request state on the app object, so threads must not share it.
            with _function_lock(route.function):
                result = handler(event, context)
        except (Exception, SystemExit):
            app._log(
                f"localapi: {route.function} ({route.handler}) raised for {event['httpMethod']} "
                f"{event['path']}:\n{traceback.format_exc().rstrip()}"
            )
            return 502, [], _json_bytes({"message": "Internal server error"})
        elapsed = time.monotonic() - started
        if elapsed > route.timeout:
            app._log(
                f"localapi: WARNING {route.function} ran {elapsed:.1f}s, over its Timeout of "
                f"{route.timeout:g}s: Lambda would have stopped it (API Gateway: 504)"
            )
        elif elapsed > API_GATEWAY_TIMEOUT_SECONDS:
            app._log(
                f"localapi: WARNING {route.function} ran {elapsed:.1f}s; API Gateway gives up after "
                f"{API_GATEWAY_TIMEOUT_SECONDS:g}s and answers 504"
            )
        try:
            return _to_http(result)
        except _MalformedResponse as exc:
            app._log(f"localapi: {route.function} returned a malformed Lambda proxy response: {exc}")
            return 502, [], _json_bytes({"message": "Internal server error"})


class LocalApiServer:
    """The API of a SAM template on a local port, without Docker.

    ``port=0`` binds a free port (read it back from ``port``/``url``). ``max_body_bytes``
    defaults to API Gateway's 10 MiB; ``stage`` shows up in ``requestContext``.
    """

    def __init__(
        self,
        template_path: Path,
        project_root: Path,
        host: str = "127.0.0.1",
        port: int = 5001,
        *,
        stage: str = "local",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.template_path = Path(template_path)
        self.project_root = Path(project_root)
        doc = _read_template(self.template_path)
        self.routes: list[Route] = _routes_from_template(doc, str(self.template_path))
        self.cors: dict[str, str] | None = _cors_from_template(doc)
        self.gateway_responses: dict[str, dict[str, Any]] = _gateway_responses_from_template(doc)
        self.table = RouteTable(self.routes)
        self.stage = stage
        self.max_body_bytes = max_body_bytes
        self._log_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._serving = False
        self._closed = False
        self._thread: threading.Thread | None = None
        server_cls = _HTTPServer6 if ":" in host else _HTTPServer
        self._httpd = server_cls((host, port), self)
        self.host = host
        self.port: int = int(self._httpd.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        self.url: str = f"http://{shown}:{self.port}"

    def _gateway(
        self, response_type: str, default_status: int, message: str, fallback: str | None
    ) -> _Reply | None:
        """The template's gateway response for this error (or its DEFAULT_4XX/5XX), if it has one."""
        spec = self.gateway_responses.get(response_type)
        if spec is None and fallback is not None:
            spec = self.gateway_responses.get(fallback)
        if spec is None:
            return None
        status, headers, body = _render_gateway_response(spec, response_type, default_status, message)
        return _Reply(status, headers, body)

    def _too_large(self) -> _Reply:
        """413 as API Gateway answers it (REQUEST_TOO_LARGE), rendered from the template if customised."""
        custom = self._gateway("REQUEST_TOO_LARGE", 413, "Request Too Long", "DEFAULT_4XX")
        return custom or _Reply(413, [], _json_bytes({"message": "Request Too Long"}))

    def _not_found(self, method: str, path: str) -> _Reply:
        """An unknown route: the template's MISSING_AUTHENTICATION_TOKEN response, else a plain 404."""
        custom = self._gateway("MISSING_AUTHENTICATION_TOKEN", 403, "Missing Authentication Token", None)
        if custom is not None:
            return custom
        message = (
            f"No route for {method} {path} in {self.template_path.name} "
            "(API Gateway would answer 403 Missing Authentication Token)"
        )
        return _Reply(404, [], _json_bytes({"error": {"code": "not_found", "message": message}}))

    def _log(self, line: str) -> None:
        """One line (or a traceback) to stderr; looked up per call so test capture sees it."""
        with self._log_lock:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`shutdown` is called from another thread."""
        with self._state_lock:
            if self._closed:
                raise RuntimeError("LocalApiServer is shut down")
            self._serving = True
        self._httpd.serve_forever(poll_interval=0.1)

    def start_in_thread(self) -> None:
        """Serve from a daemon thread (tests, and ``make dev`` next to the processor loop)."""
        with self._state_lock:
            if self._closed:
                raise RuntimeError("LocalApiServer is shut down")
            if self._thread is not None:
                return
            self._serving = True  # before the thread runs, so shutdown() cannot miss it
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="localapi", daemon=True
            )
        self._thread.start()

    def shutdown(self) -> None:
        """Stop serving and release the port; safe to call twice or without ever serving."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            serving = self._serving
        if serving:
            self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> LocalApiServer:
        self.start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def describe(self) -> str:
        """The route list, one per line, as printed at start-up."""
        width = max((len(r.method) for r in self.routes), default=3)
        lines = [f"  {r.method:<{width}} {self.url}{r.resource}  -> {r.function}" for r in self.routes]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m memproc_local.localapi``: serve a template's API until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--template", type=Path, default=Path("template.yaml"))
    parser.add_argument("--project-root", type=Path, default=None, help="default: the template's directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--stage", default="local")
    args = parser.parse_args(argv)
    root = args.project_root or args.template.resolve().parent
    server = LocalApiServer(args.template, root, args.host, args.port, stage=args.stage)
    sys.stderr.write(f"localapi: serving {len(server.routes)} routes on {server.url}\n{server.describe()}\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
