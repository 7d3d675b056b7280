"""The API's OpenAPI document: the same routes as template.yaml, valid OpenAPI 3, every parameter
and error documented, committed up to date, and served (tailored to the caller and the AuthMode)
behind the same authentication as every route."""

from __future__ import annotations

import http.client
import json
import re
from functools import cache
from typing import Any

import pytest
from openapi_spec_validator import validate

from memproc import settings as settings_module
from memproc.api import QUERY_MODEL, Resolver
from memproc.schemas.errors import ErrorResponse
from memproc.schemas.requests import NoParams
from memproc_local import openapi as generator
from memproc_local.events import LambdaContext, build_event
from memproc_local.handlers import load_handler, load_module
from memproc_local.server import LocalApiServer
from memproc_local.template import load_routes
from tests.api_client import api_routes, call
from tests.redis_server import ROOT

DOCS = ROOT / "docs" / "openapi.json"
ERROR = {"$ref": "#/components/schemas/ErrorResponse"}


@cache
def committed() -> dict[str, Any]:
    return dict(json.loads(DOCS.read_text(encoding="utf-8")))


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()}


def test_the_document_and_template_yaml_have_the_same_routes_and_methods() -> None:
    assert set(operations(committed())) == set(api_routes())


def test_the_committed_document_is_valid_openapi_3() -> None:
    doc = committed()
    assert doc["openapi"].startswith("3.")
    validate(doc)


def test_the_committed_documents_are_what_make_openapi_writes() -> None:
    assert generator.main(["--check"]) == 0, "run make openapi"
    packaged = ROOT / "layers/common/memproc/openapi.json"
    assert packaged.read_text(encoding="utf-8") == DOCS.read_text(encoding="utf-8")


def _query_models() -> dict[tuple[str, str], type[Any]]:
    """Each route's query model, read from the resolvers themselves."""
    models = {}
    for route in load_routes(ROOT / "template.yaml"):
        app: Resolver = load_module(route, ROOT).app
        for r in app._static_routes + app._dynamic_routes:
            models[(r.method, r.openapi_path)] = getattr(r.func, QUERY_MODEL, NoParams)
    return models


def test_every_query_parameter_is_documented_with_its_constraints() -> None:
    ops = operations(committed())
    models = _query_models()
    assert set(models) == set(ops)
    documented = 0
    for key, model in models.items():
        query = {p["name"]: p for p in ops[key].get("parameters", []) if p["in"] == "query"}
        assert set(query) == set(model.model_fields), key
        for name, field in model.model_fields.items():
            assert query[name]["required"] is field.is_required(), (key, name)
            documented += 1
    assert documented >= 19
    hierarchy = {p["name"]: p for p in ops[("GET", "/api/memory/{vectorstore_name}/hierarchy")]["parameters"]}
    assert hierarchy["limit"]["schema"] == {"default": 50, "maximum": 1000, "minimum": 1, "type": "integer"}
    assert hierarchy["memory_type"]["schema"]["enum"] == ["discrete", "summary", "raw", "all"]
    search = {p["name"]: p for p in ops[("GET", "/api/memory/{vectorstore_name}/search")]["parameters"]}
    assert search["q"]["required"] is True and search["k"]["schema"]["maximum"] == 100


def test_every_route_is_summarised_every_error_has_the_error_shape_every_success_a_body() -> None:
    doc = committed()
    assert set(doc["components"]["schemas"]["ErrorResponse"]["properties"]) == {"success", "error"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # never sent
    for key, op in operations(doc).items():
        assert not op["summary"].startswith(key[0]), key  # the handler says what it does
        statuses = {int(s) for s in op["responses"]}
        assert {400, 401, 403, 429, 503} <= statuses, key  # 401/403/429 also API Gateway's own
        if "{vectorstore_name}" in key[1]:
            assert 404 in statuses, key
        if "requestBody" in op:
            assert {413, 415, 422} <= statuses, key
        for status, response in op["responses"].items():
            schema = response["content"][next(iter(response["content"]))]["schema"]
            if int(status) >= 400:
                assert schema == ERROR or ERROR in schema.get("oneOf", []), (key, status)
            else:
                assert schema.get("$ref") or schema.get("type"), (key, status)
        assert op["responses"]["503"]["headers"]["Retry-After"]


def test_the_error_shape_documented_is_the_one_the_handlers_send() -> None:
    schemas = committed()["components"]["schemas"]
    sent = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, schema in sent.pop("$defs").items():
        assert schemas[name] == schema, name
    assert schemas["ErrorResponse"] == sent


def test_every_auth_mode_has_a_security_scheme() -> None:
    doc = committed()
    assert set(doc["components"]["securitySchemes"]) == {"sigv4", "cognito", "api_key"}
    assert doc["security"] == [{"sigv4": []}, {"cognito": []}, {"api_key": []}]


def test_a_query_model_needs_its_parameter() -> None:
    app = Resolver()
    with pytest.raises(TypeError, match="annotated NoParams"):

        @app.query(NoParams)
        def handler(vectorstore_name: str) -> None:
            del vectorstore_name


# ---------------------------------------------------------------- served


def use_mode(env: pytest.MonkeyPatch, mode: str) -> None:
    env.setenv("AUTH_MODE", mode)
    settings_module.get_settings.cache_clear()


@pytest.mark.parametrize(
    ("mode", "scheme"), [("IAM", "sigv4"), ("COGNITO", "cognito"), ("API_KEY", "api_key")]
)
def test_the_served_document_is_for_this_deployment(env: pytest.MonkeyPatch, mode: str, scheme: str) -> None:
    use_mode(env, mode)
    identity = {"identity": {"userArn": "arn:aws:iam::1:user/a", "apiKey": "k", "apiKeyId": "i"}}
    auth = {"claims": {"sub": "s"}} if mode == "COGNITO" else identity
    assert call("GET", "/api/openapi.json").status == 401  # behind the same auth as every route
    res = call(
        "GET", "/api/openapi.json", headers={"Host": "abc123.execute-api.us-east-1.amazonaws.com"}, **auth
    )
    assert res.status == 200 and res.headers["Content-Type"].startswith("application/json")
    doc = res.body
    assert doc["security"] == [{scheme: []}] and set(doc["components"]["securitySchemes"]) == {scheme}
    # The URL the caller used, stage included (api_client builds events for stage "local").
    assert doc["servers"] == [{"url": "https://abc123.execute-api.us-east-1.amazonaws.com/local"}]
    assert doc["paths"] == committed()["paths"]


def test_swagger_ui_is_served_with_the_document_inline(env: pytest.MonkeyPatch) -> None:
    res = call("GET", "/api/docs")
    assert res.status == 200 and res.headers["Content-Type"].startswith("text/html")
    page = str(res.body)
    assert "SwaggerUIBundle(" in page and '"/api/memory/{vectorstore_name}/store_raw"' in page
    assert not re.search(r"<script[^>]+src=", page)  # nothing loaded from elsewhere
    assert "</script" not in page.split("spec: ", 1)[1].split("deepLinking", 1)[0]


def test_the_docs_take_no_parameters(env: pytest.MonkeyPatch) -> None:
    res = call("GET", "/api/docs", query={"format": "json"})
    assert res.status == 400 and res.error_code == "unknown_query_parameter"


def test_the_local_server_serves_the_document_for_its_own_url(env: pytest.MonkeyPatch) -> None:
    with LocalApiServer(ROOT / "template.yaml", ROOT, port=0) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        try:
            conn.request("GET", "/api/openapi.json")
            resp = conn.getresponse()
            doc = json.loads(resp.read())
        finally:
            conn.close()
    assert resp.status == 200
    assert doc["servers"] == [{"url": f"http://127.0.0.1:{srv.port}"}]  # no stage in a local URL
    assert "security" not in doc  # AUTH_MODE=NONE: nothing to send


def test_an_unknown_route_is_404_whatever_its_query(env: pytest.MonkeyPatch) -> None:
    """The resolver's own 404 (API Gateway answers first on AWS) does not judge query parameters."""
    route = next(r for r in load_routes(ROOT / "template.yaml") if r.resource == "/api/health")
    event = build_event(route, "GET", "/api/memory/u1/nope", "x=1", {}, None, {})
    result = load_handler(route, ROOT)(event, LambdaContext(route.function))
    assert result["statusCode"] == 404 and json.loads(result["body"])["error"]["code"] == "not_found"
