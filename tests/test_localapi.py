"""memproc_local: the SAM template's API served locally over real HTTP, no mocks.

The fixture template under tests/data/localapi uses short-form intrinsic tags (also in Globals)
and its handlers echo the event they get, so each test sees exactly what a Lambda would see.
"""

from __future__ import annotations

import ast
import base64
import http.client
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from memproc_local.events import LambdaContext, build_event
from memproc_local.handlers import handler_file, load_handler
from memproc_local.routing import Route, RouteTable
from memproc_local.server import DEFAULT_MAX_BODY_BYTES, LocalApiServer
from memproc_local.template import load_routes, read_template

FIXTURE = Path(__file__).parent / "data" / "localapi"
TEMPLATE = FIXTURE / "template.yaml"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
REAL_TEMPLATE = PROJECT_ROOT / "template.yaml"

pytestmark = pytest.mark.timeout(60)


class Reply:
    """A finished HTTP exchange: status, headers (repeats kept) and raw body."""

    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.status = resp.status
        self.headers = resp.headers
        self.body = resp.read()

    def json(self) -> Any:
        return json.loads(self.body)

    def event(self) -> dict[str, Any]:
        """The event the echo handler received."""
        return self.json()["event"]


def call(
    server: LocalApiServer,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Reply:
    """One request on a fresh connection; ``target`` is sent byte-for-byte (no re-quoting)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers or []:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        return Reply(conn.getresponse())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server() -> Iterator[LocalApiServer]:
    srv = LocalApiServer(TEMPLATE, FIXTURE, port=0)
    srv.start_in_thread()
    yield srv
    srv.shutdown()


# --------------------------------------------------------------------------- template


def test_load_routes_reads_api_events_and_ignores_the_rest() -> None:
    routes = load_routes(TEMPLATE)
    got = [(r.method, r.resource, r.function, r.handler) for r in routes]
    assert got == [
        ("POST", "/api/memory/{vectorstore_name}/store_raw", "EchoFunction", "app.lambda_handler"),
        ("GET", "/api/memory/{vectorstore_name}/raw/{raw_memory_id}", "EchoFunction", "app.lambda_handler"),
        (
            "DELETE",
            "/api/memory/{vectorstore_name}/raw/{raw_memory_id}",
            "EchoFunction",
            "app.lambda_handler",
        ),
        ("ANY", "/proxy/{proxy+}", "EchoFunction", "app.lambda_handler"),
        ("GET", "/api/memory/{vectorstore_name}/raw/latest", "LiteralFunction", "app.literal_handler"),
        (
            "POST",
            "/api/memory/{vectorstore_name}/raw/{raw_memory_id}/retry",
            "LiteralFunction",
            "app.literal_handler",
        ),
        ("GET", "/boom", "BoomFunction", "app.boom_handler"),
        ("GET", "/malformed", "BoomFunction", "app.boom_handler"),
        ("GET", "/binary", "BinaryFunction", "app.binary_handler"),
        ("GET", "/api/memory/{vectorstore_name}/stats", "OtherFunction", "app.lambda_handler"),
    ]
    by_fn = {r.function: r for r in routes}
    assert "WorkerFunction" not in by_fn  # schedules only
    assert by_fn["EchoFunction"].code_uri == Path("functions/echo")  # from Globals
    assert by_fn["OtherFunction"].code_uri == Path("functions/other")
    assert by_fn["EchoFunction"].timeout == 12  # Globals `!Ref FunctionTimeout` -> parameter default
    assert by_fn["EchoFunction"].memory_size == 128  # `!If` cannot be resolved locally -> default
    assert (by_fn["BinaryFunction"].timeout, by_fn["BinaryFunction"].memory_size) == (7, 512)


def test_short_form_tags_become_long_form() -> None:
    doc = read_template(TEMPLATE)
    env = doc["Globals"]["Function"]["Environment"]["Variables"]
    assert env["STAGE"] == {"Ref": "Stage"}
    assert env["QUEUE_NAME"] == {"Fn::Sub": "${AWS::StackName}-queue"}
    assert env["ALARM_TOPIC"] == {"Fn::GetAtt": ["AlarmTopic", "TopicName"]}
    assert env["REDIS_URL"] == {"Fn::If": ["HasRedisUrl", {"Ref": "RedisUrl"}, {"Ref": "AWS::NoValue"}]}
    assert env["AZ"] == {"Fn::Select": [0, {"Fn::GetAZs": ""}]}
    assert doc["Conditions"]["ProdWithRedis"] == {
        "Fn::And": [{"Condition": "IsProd"}, {"Condition": "HasRedisUrl"}]
    }
    assert doc["Outputs"]["EchoArn"]["Value"] == {"Fn::GetAtt": ["EchoFunction", "Arn"]}
    assert doc["Resources"]["Alarm"]["Properties"]["Cidr"] == {"Fn::Cidr": ["10.0.0.0/16", 4, 8]}


# --------------------------------------------------------------------------- events


def test_get_event_has_api_gateway_v1_shape(server: LocalApiServer) -> None:
    before_ms = int(time.time() * 1000)
    reply = call(
        server,
        "GET",
        "/api/memory/user%201/raw/x?a=1&a=2&b=",
        headers=[("X-Multi", "one"), ("X-Multi", "two"), ("User-Agent", "localapi-test/1")],
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"  # default when the handler sets none
    assert reply.headers["X-Module"] == "echo"
    event = reply.event()
    assert set(event) == {
        "resource", "path", "httpMethod", "headers", "multiValueHeaders", "queryStringParameters",
        "multiValueQueryStringParameters", "pathParameters", "stageVariables", "requestContext",
        "body", "isBase64Encoded",
    }  # fmt: skip
    assert event["resource"] == "/api/memory/{vectorstore_name}/raw/{raw_memory_id}"
    assert event["path"] == "/api/memory/user%201/raw/x"  # REST APIs keep the encoding in `path`
    assert event["httpMethod"] == "GET"
    assert event["pathParameters"] == {"vectorstore_name": "user 1", "raw_memory_id": "x"}
    assert event["queryStringParameters"] == {"a": "2", "b": ""}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": [""]}
    assert event["headers"]["X-Multi"] == "two"
    assert event["multiValueHeaders"]["X-Multi"] == ["one", "two"]
    assert event["headers"]["User-Agent"] == "localapi-test/1"
    assert event["headers"]["Host"] == f"127.0.0.1:{server.port}"
    assert event["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert event["headers"]["X-Forwarded-Proto"] == "http"
    assert event["stageVariables"] is None
    assert event["body"] is None
    assert event["isBase64Encoded"] is False

    ctx = event["requestContext"]
    assert ctx["resourcePath"] == event["resource"]
    assert ctx["httpMethod"] == "GET"
    assert ctx["stage"] == "local"
    assert ctx["path"] == "/api/memory/user%201/raw/x"  # as requested: the local URL has no stage
    assert ctx["accountId"] == "123456789012"
    assert ctx["apiId"] == "local"
    assert ctx["protocol"] == "HTTP/1.1"
    assert ctx["domainName"] == f"127.0.0.1:{server.port}"
    assert ctx["identity"]["sourceIp"] == "127.0.0.1"
    assert ctx["identity"]["userAgent"] == "localapi-test/1"
    uuid.UUID(ctx["requestId"])
    assert ctx["extendedRequestId"]
    assert re.fullmatch(r"\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000", ctx["requestTime"])
    assert before_ms - 1000 <= ctx["requestTimeEpoch"] <= int(time.time() * 1000) + 1000

    lambda_ctx = reply.json()["context"]
    assert lambda_ctx["function_name"] == "EchoFunction"
    assert lambda_ctx["function_version"] == "$LATEST"
    assert lambda_ctx["invoked_function_arn"].endswith(":123456789012:function:EchoFunction")
    assert lambda_ctx["memory_limit_in_mb"] == 128
    assert lambda_ctx["log_group_name"] == "/aws/lambda/EchoFunction"
    assert 10_000 < lambda_ctx["remaining_ms"] <= 12_000  # Timeout 12 s from the template
    uuid.UUID(lambda_ctx["aws_request_id"])


def test_request_without_query_or_params_uses_none(server: LocalApiServer) -> None:
    event = call(server, "GET", "/api/memory/vs/raw/r1").event()
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None
    assert event["pathParameters"] == {"vectorstore_name": "vs", "raw_memory_id": "r1"}


def test_post_body_passes_through(server: LocalApiServer) -> None:
    payload = json.dumps({"session_id": "s1", "session_data": "héllo → wörld"}, ensure_ascii=False)
    reply = call(
        server,
        "POST",
        "/api/memory/vs/store_raw",
        body=payload.encode("utf-8"),
        headers=[("Content-Type", "application/json; charset=utf-8")],
    )
    assert reply.status == 200
    event = reply.event()
    assert event["body"] == payload
    assert event["isBase64Encoded"] is False
    assert event["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert event["pathParameters"] == {"vectorstore_name": "vs"}


def test_binary_body_arrives_base64(server: LocalApiServer) -> None:
    raw = b"\xff\x00\xfe binary"
    event = call(server, "POST", "/api/memory/vs/store_raw", body=raw).event()
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw


def test_chunked_body_is_read(server: LocalApiServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", "/api/memory/vs/store_raw", body=iter([b'{"a":', b"1}"]), encode_chunked=True)
        event = Reply(conn.getresponse()).event()
    finally:
        conn.close()
    assert event["body"] == '{"a":1}'


def test_build_event_directly() -> None:
    route = Route("POST", "/api/memory/{vectorstore_name}/store_raw", "Fn", Path("functions/x"), "app.h")
    moment = datetime(2026, 11, 26, 5, 28, 0, tzinfo=UTC)
    event = build_event(
        route,
        "POST",
        "/api/memory/a%2Fb/store_raw",
        "",
        [("Host", "example.test"), ("x-a", "1"), ("X-A", "2")],
        b"",
        {"vectorstore_name": "a/b"},
        stage="Prod",
        request_time=moment,
    )
    assert event["body"] is None  # an empty body is null, as on API Gateway
    assert event["headers"] == {"Host": "example.test", "x-a": "2"}
    assert event["multiValueHeaders"] == {"Host": ["example.test"], "x-a": ["1", "2"]}
    assert event["requestContext"]["requestTime"] == "26/Nov/2026:05:28:00 +0000"
    assert event["requestContext"]["requestTimeEpoch"] == int(moment.timestamp() * 1000)
    assert event["requestContext"]["path"] == "/Prod/api/memory/a%2Fb/store_raw"
    assert event["requestContext"]["domainName"] == "example.test"
    assert event["pathParameters"] == {"vectorstore_name": "a/b"}
    assert build_event(route, "POST", "/x", "", {}, None, {})["headers"] is None


def test_lambda_context_deadline() -> None:
    ctx = LambdaContext("Fn", timeout_seconds=0.2, memory_limit_in_mb=256)
    assert 0 < ctx.get_remaining_time_in_millis() <= 200
    assert ctx.memory_limit_in_mb == 256
    assert LambdaContext("Fn", timeout_seconds=0).get_remaining_time_in_millis() == 0  # never negative
    assert LambdaContext("Fn").aws_request_id != LambdaContext("Fn").aws_request_id


# --------------------------------------------------------------------------- routing


def test_literal_segment_outranks_param(server: LocalApiServer) -> None:
    literal = call(server, "GET", "/api/memory/vs/raw/latest").json()
    assert literal["route"] == "literal"
    assert literal["resource"] == "/api/memory/{vectorstore_name}/raw/latest"
    assert call(server, "GET", "/api/memory/vs/raw/latest/").json()["route"] == "literal"
    param = call(server, "GET", "/api/memory/vs/raw/other").event()
    assert param["pathParameters"]["raw_memory_id"] == "other"
    retry = call(server, "POST", "/api/memory/vs/raw/x/retry").json()
    assert retry["resource"] == "/api/memory/{vectorstore_name}/raw/{raw_memory_id}/retry"


def test_route_table_precedence_is_segment_by_segment() -> None:
    def route(resource: str) -> Route:
        return Route("GET", resource, resource, Path("f"), "app.h")

    table = RouteTable([route("/a/{x}/c"), route("/a/b/{y}"), route("/a/{p+}"), route("/a/b/c/{z}")])
    assert table.match("GET", "/a/b/c").resource == "/a/b/{y}"
    assert table.match("GET", "/a/q/c").path_params == {"x": "q"}
    assert table.match("GET", "/a/q/d").path_params == {"p": "q/d"}
    assert table.match("GET", "/a/b/c/%7Bz%7D").path_params == {"z": "{z}"}
    assert table.match("GET", "/b").resource is None


def test_greedy_proxy_with_any_method(server: LocalApiServer) -> None:
    event = call(server, "PATCH", "/proxy/a/b%20c").event()
    assert event["resource"] == "/proxy/{proxy+}"
    assert event["httpMethod"] == "PATCH"
    assert event["pathParameters"] == {"proxy": "a/b c"}
    assert call(server, "GET", "/proxy").status == 404  # a greedy parameter needs a segment


def test_each_function_gets_its_own_app_module(server: LocalApiServer) -> None:
    other = call(server, "GET", "/api/memory/vs/stats")
    assert other.headers["X-Module"] == "other"
    assert other.json() == {"module": "other", "path_parameters": {"vectorstore_name": "vs"}}
    assert call(server, "GET", "/api/memory/vs/raw/r").headers["X-Module"] == "echo"

    routes = {r.function: r for r in load_routes(TEMPLATE)}
    echo = load_handler(routes["EchoFunction"], FIXTURE)
    assert load_handler(routes["EchoFunction"], FIXTURE) is echo  # cached
    other_fn = load_handler(routes["OtherFunction"], FIXTURE)
    assert echo.__module__ != other_fn.__module__
    assert echo.__name__ == other_fn.__name__ == "lambda_handler"


def test_unknown_path_is_404_json(server: LocalApiServer) -> None:
    for target in ("/nope", "/api/memory/vs/raw", "/api/memory//raw/x", "/"):
        reply = call(server, "GET", target)
        assert reply.status == 404, target
        assert reply.headers["Content-Type"] == "application/json"
        error = reply.json()["error"]
        assert error["code"] == "not_found"
        assert "No route for GET" in error["message"]


def test_wrong_method_is_405_with_allow(server: LocalApiServer) -> None:
    reply = call(server, "PUT", "/api/memory/vs/store_raw", body=b"{}")
    assert reply.status == 405
    assert reply.headers["Allow"] == "POST"
    assert reply.json()["error"]["code"] == "method_not_allowed"
    reply = call(server, "POST", "/api/memory/vs/raw/x")
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, DELETE"


def test_cors_preflight_from_globals_api(server: LocalApiServer) -> None:
    reply = call(server, "OPTIONS", "/api/memory/vs/raw/x", headers=[("Origin", "http://localhost:3000")])
    assert reply.status == 200
    assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert reply.headers["Access-Control-Allow-Headers"] == "Content-Type,Authorization"
    assert reply.headers["Access-Control-Max-Age"] == "600"
    assert reply.headers["Access-Control-Allow-Methods"] == "GET,DELETE,OPTIONS"


# --------------------------------------------------------------------------- responses


def test_handler_exception_is_502_with_traceback_logged(
    server: LocalApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    reply = call(server, "GET", "/boom")
    assert reply.status == 502
    assert reply.json() == {"message": "Internal server error"}
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: boom from the fixture handler" in err
    assert re.search(r"GET /boom 502 \d+\.\dms BoomFunction", err)


@pytest.mark.parametrize("kind", ["body", "keys", "type"])
def test_malformed_proxy_response_is_502(
    server: LocalApiServer, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    reply = call(server, "GET", f"/malformed?kind={kind}")
    assert reply.status == 502
    assert reply.json() == {"message": "Internal server error"}
    assert "malformed Lambda proxy response" in capsys.readouterr().err


def test_multi_value_headers_and_base64_body(server: LocalApiServer) -> None:
    reply = call(server, "GET", "/binary")
    assert reply.status == 201
    assert reply.body == b"\x00\x01\xfe\xff"
    assert reply.headers["Content-Length"] == "4"
    assert reply.headers["Content-Type"] == "application/octet-stream"
    assert reply.headers.get_all("Set-Cookie") == ["a=1", "b=2"]  # multiValueHeaders wins on a clash
    assert reply.headers.get_all("X-Multi") == ["x", "y"]
    assert reply.headers["X-Single"] == "one"


def test_one_log_line_per_request(server: LocalApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    call(server, "GET", "/api/memory/vs/raw/x?q=1")
    call(server, "GET", "/nope")
    err = capsys.readouterr().err
    assert re.search(r"^localapi: GET /api/memory/vs/raw/x\?q=1 200 \d+\.\dms EchoFunction$", err, re.M)
    assert re.search(r"^localapi: GET /nope 404 \d+\.\dms$", err, re.M)


def test_concurrent_requests(server: LocalApiServer) -> None:
    statuses: list[int] = []
    ids: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        reply = call(server, "GET", f"/api/memory/vs/raw/r{i}")
        with lock:
            statuses.append(reply.status)
            ids.append(reply.event()["pathParameters"]["raw_memory_id"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == [200] * 16
    assert sorted(ids) == sorted(f"r{i}" for i in range(16))


# --------------------------------------------------------------------------- limits and lifecycle


def test_body_over_limit_is_413_before_the_handler() -> None:
    with LocalApiServer(TEMPLATE, FIXTURE, port=0, max_body_bytes=1024) as srv:
        assert call(srv, "POST", "/api/memory/vs/store_raw", body=b"a" * 1024).status == 200
        reply = call(srv, "POST", "/api/memory/vs/store_raw", body=b"a" * 4096)
        assert reply.status == 413  # the echo handler would have answered 200
        # rendered from the template's GatewayResponses.REQUEST_TOO_LARGE, as API Gateway does
        assert reply.json() == {"error": {"code": "payload_too_large", "message": "Request Too Long"}}
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
        assert reply.headers["x-amzn-ErrorType"] == "REQUEST_TOO_LARGE"
        assert reply.headers["Connection"] == "close"


def test_chunked_body_over_limit_is_413() -> None:
    """werkzeug stops reading a chunked body at its limit; the server must still refuse it."""

    def post_chunked(srv: LocalApiServer, size: int) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            chunks = iter([b"a" * (size // 2), b"a" * (size - size // 2)])
            conn.request("POST", "/api/memory/vs/store_raw", body=chunks, encode_chunked=True)
            return Reply(conn.getresponse())
        finally:
            conn.close()

    with LocalApiServer(TEMPLATE, FIXTURE, port=0, max_body_bytes=1024) as srv:
        at_limit = post_chunked(srv, 1024)
        assert at_limit.status == 200
        assert at_limit.event()["body"] == "a" * 1024
        over = post_chunked(srv, 1025)
        assert over.status == 413
        assert over.json() == {"error": {"code": "payload_too_large", "message": "Request Too Long"}}


def test_413_without_gateway_responses_is_api_gateways_default(tmp_path: Path) -> None:
    doc = read_template(TEMPLATE)
    del doc["Resources"]["FixtureApi"]
    bare = tmp_path / "template.yaml"
    bare.write_text(yaml.safe_dump(doc))
    with LocalApiServer(bare, FIXTURE, port=0, max_body_bytes=10) as srv:
        reply = call(srv, "POST", "/api/memory/vs/store_raw", body=b"a" * 11)
        assert (reply.status, reply.json()) == (413, {"message": "Request Too Long"})


def test_default_limit_is_api_gateways_10_mib(server: LocalApiServer) -> None:
    assert server.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 10 * 1024 * 1024
    reply = call(server, "POST", "/api/memory/vs/store_raw", body=b"a" * (DEFAULT_MAX_BODY_BYTES + 1))
    assert reply.status == 413
    assert call(server, "GET", "/api/memory/vs/raw/x").status == 200  # the server is still fine


@pytest.mark.timeout(20)
def test_free_port_start_and_shutdown_do_not_hang() -> None:
    srv = LocalApiServer(TEMPLATE, FIXTURE, port=0)
    assert srv.port > 0
    assert srv.url == f"http://127.0.0.1:{srv.port}"
    srv.start_in_thread()
    idle = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    idle.request("GET", "/api/memory/vs/raw/x")
    assert Reply(idle.getresponse()).status == 200  # the client keeps its end of the connection open
    srv.shutdown()  # with an idle keep-alive client still connected (the test's timeout bounds it)
    assert srv._thread is not None and not srv._thread.is_alive()
    srv.shutdown()  # idempotent
    idle.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()

    never_started = LocalApiServer(TEMPLATE, FIXTURE, port=0)
    never_started.shutdown()
    with pytest.raises(OSError):  # its port is released too
        socket.create_connection(("127.0.0.1", never_started.port), timeout=2).close()


# --------------------------------------------------------------------------- the real template

SPEC_ROUTES = [
    ("POST", "/api/memory/vs/store_raw"),
    ("GET", "/api/memory/vs/processing_status"),
    ("GET", "/api/memory/vs/hierarchy"),
    ("GET", "/api/memory/vs/session/s1"),
    ("GET", "/api/memory/vs/stats"),
    ("POST", "/api/memory/vs/cleanup"),
]


def _defines(module_file: Path, name: str) -> bool:
    """Whether a module defines ``name`` at top level, read statically (importing needs Redis config)."""
    tree = ast.parse(module_file.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return True
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
            return True
        if isinstance(node, ast.ImportFrom | ast.Import) and any(
            (alias.asname or alias.name) == name for alias in node.names
        ):
            return True
    return False


def test_real_template_routes_all_have_handlers() -> None:
    routes = load_routes(REAL_TEMPLATE)
    assert routes, "template.yaml declares no Api events"
    for route in routes:
        module_file, attr = handler_file(route, PROJECT_ROOT)
        rel = module_file.relative_to(PROJECT_ROOT)
        assert rel.parts[0] == "functions" and rel.name == "app.py", (route, rel)
        assert module_file.is_file(), f"{route.function}: {rel} is missing"
        assert _defines(module_file, attr), f"{route.function}: {rel} does not define {attr}"
    table = RouteTable(routes)
    for method, path in SPEC_ROUTES:
        assert table.match(method, path).route is not None, f"{method} {path} is not routed by template.yaml"


def test_real_template_serves_its_own_error_shapes() -> None:
    """Errors API Gateway produces itself follow the template's GatewayResponses (no handler runs)."""
    with LocalApiServer(REAL_TEMPLATE, PROJECT_ROOT, port=0, max_body_bytes=64) as srv:
        assert srv.routes
        missing = call(srv, "GET", "/api/memory/vs/no_such_route")
        # The default AuthMode (IAM) cannot tell an unknown route from an unsigned request: 403.
        assert (missing.status, missing.json()["error"]["code"]) == (403, "missing_authentication_token")
        too_big = call(srv, "POST", "/api/memory/vs/store_raw", body=b"x" * 65)
        assert too_big.status == 413
        for reply in (missing, too_big):  # DESIGN: errors are JSON with a stable code and a message
            assert reply.json()["success"] is False, reply.body  # the handlers' ErrorResponse
            error = reply.json()["error"]
            assert error["code"] and error["message"], reply.body
