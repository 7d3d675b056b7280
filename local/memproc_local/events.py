"""The Lambda proxy integration of a REST (v1) API: the event a handler gets, its ``context``, and
how API Gateway turns the handler's return value into an HTTP response.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from memproc_local.routing import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_SECONDS, Route

ACCOUNT_ID = "123456789012"
API_ID = "local"
# Months in English whatever the locale: API Gateway's requestTime is always "26/Nov/2026:05:28:00 +0000".
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_HOP_BY_HOP = {"connection", "content-length", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"}
# The only keys API Gateway accepts in a proxy response; anything else is "Malformed Lambda proxy response".
_RESPONSE_KEYS = frozenset({"statusCode", "headers", "multiValueHeaders", "body", "isBase64Encoded"})


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


def _request_time(moment: datetime) -> str:
    """API Gateway's ``requestTime``: ``26/Nov/2026:05:28:00 +0000``, English month whatever the locale."""
    moment = moment.astimezone(UTC)
    return f"{moment.day:02d}/{_MONTHS[moment.month - 1]}/{moment.year}:{moment:%H:%M:%S} +0000"


def _header_pairs(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Header (name, value) pairs in arrival order; ``HTTPMessage.items()`` keeps repeated names."""
    items = headers.items() if hasattr(headers, "items") else headers
    return [(str(k), str(v)) for k, v in items]


def authorizer_claims(claims: Mapping[str, Any]) -> dict[str, str]:
    """Token claims as a REST API's Cognito authorizer hands them to Lambda: every value a string.
    A list (``cognito:groups``) is joined with commas, one of the renderings API Gateway produces
    (``memproc.auth.claim_values`` also reads the bracketed one)."""
    out: dict[str, str] = {}
    for name, value in claims.items():
        if isinstance(value, list | tuple):
            out[str(name)] = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            out[str(name)] = "true" if value else "false"
        else:
            out[str(name)] = str(value)
    return out


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
    identity: Mapping[str, Any] | None = None,
    claims: Mapping[str, Any] | None = None,
    base_path: str | None = None,
) -> dict[str, Any]:
    """The API Gateway REST (v1) Lambda proxy event for one request.

    ``path`` is the raw request path (percent-encoding kept, as REST APIs deliver it), ``query``
    the raw query string without ``?``, ``path_params`` already decoded. ``headers`` may be a
    mapping or (name, value) pairs; repeated names end up in ``multiValueHeaders``.

    What API Gateway's authentication adds: ``identity`` fields of ``requestContext.identity``
    (``userArn``/``caller`` for AWS_IAM, ``apiKey``/``apiKeyId`` for API keys), and ``claims``, the
    verified token's claims a Cognito authorizer puts in ``requestContext.authorizer.claims``, every
    value a string as API Gateway renders them (see :func:`authorizer_claims`).

    ``requestContext.path`` is the path the client requested: ``/<stage>`` and ``path`` on an
    execute-api domain (the default), ``base_path`` and ``path`` where the URL has no stage (the
    local server, a custom domain).
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
        "path": f"{f'/{stage}' if base_path is None else base_path}{path}",
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
            **(identity or {}),
        },
        "domainName": host,
        "apiId": API_ID,
    }
    if claims is not None:
        request_context["authorizer"] = {"claims": authorizer_claims(claims)}
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


class MalformedResponse(Exception):
    """The handler returned something API Gateway would reject as a proxy response."""


def to_http(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Translate a Lambda proxy response into status, header lines and body, as API Gateway does
    (the server adds API Gateway's default ``Content-Type: application/json`` when there is none)."""
    if not isinstance(result, dict):
        raise MalformedResponse(f"handler returned {type(result).__name__}, not a proxy response dict")
    extra = set(result) - _RESPONSE_KEYS
    if extra:
        raise MalformedResponse(
            f"unexpected keys {sorted(map(str, extra))} (allowed: {sorted(_RESPONSE_KEYS)})"
        )
    try:
        status = int(result.get("statusCode"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MalformedResponse(f"statusCode {result.get('statusCode')!r} is not an integer") from None
    if not 100 <= status <= 599:
        raise MalformedResponse(f"statusCode {status} is out of range")
    single = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(single, dict) or not isinstance(multi, dict):
        raise MalformedResponse("headers/multiValueHeaders must be objects")
    lines: list[tuple[str, str]] = []
    multi_names = {str(k).lower() for k in multi}
    for name, value in single.items():
        if str(name).lower() not in multi_names:  # API Gateway: multiValueHeaders wins on a clash
            lines.append((str(name), str(value)))
    for name, values in multi.items():
        if not isinstance(values, list):
            raise MalformedResponse(f"multiValueHeaders[{name!r}] must be a list")
        lines.extend((str(name), str(v)) for v in values)
    lines = [(k, v) for k, v in lines if k.lower() not in _HOP_BY_HOP]
    body = result.get("body")
    if body is None:
        data = b""
    elif not isinstance(body, str):
        raise MalformedResponse(f"body must be a string, got {type(body).__name__}")
    elif result.get("isBase64Encoded"):
        try:
            data = base64.b64decode(body, validate=False)
        except ValueError as exc:
            raise MalformedResponse(f"isBase64Encoded body is not base64: {exc}") from None
    else:
        data = body.encode("utf-8")
    return status, lines, data
