"""Fields and semantics as the product specification has them: a vectorstore never written, the
resolver's own 404 and 405, and a submission's transcript from GET raw/{id}."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import redis

from memproc import keys
from memproc_local.events import LambdaContext, build_event
from memproc_local.handlers import load_handler
from memproc_local.template import load_routes
from tests.api_client import api_routes, call, mem_path
from tests.memory_helpers import drain, everything, store
from tests.redis_server import ROOT

RAW_ID = "0" * 32
CHAT = "user: I moved to Lisbon and I cycle along the river every morning.\n"
FILLERS = {
    "{raw_memory_id}": RAW_ID,
    "{session_id}": "s-1",
    "{memory_id}": f"{RAW_ID}-0",
}
QUERIES = {"/search": {"q": "tea"}}


def concrete(resource: str, vs: str) -> str:
    path = resource.replace("/api/memory/{vectorstore_name}", mem_path(vs))
    for placeholder, value in FILLERS.items():
        path = path.replace(placeholder, value)
    return path


# -- a vectorstore never written ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "resource"),
    [r for r in api_routes() if "{vectorstore_name}" in r[1] and not r[1].endswith("/store_raw")],
    ids=str,
)
def test_a_vectorstore_never_written_is_404_on_every_route(
    env: Any, r: redis.Redis, method: str, resource: str
) -> None:
    store("user10", CHAT, "s-1")  # another vectorstore, whose name shares the prefix
    before = everything(r)
    suffix = resource.removeprefix("/api/memory/{vectorstore_name}")
    res = call(method, concrete(resource, "user1"), query=QUERIES.get(suffix))
    assert res.status == 404 and res.error_code == "unknown_vectorstore", res.body
    assert res.body["success"] is False and "'user1'" in res.body["error"]["message"]
    assert everything(r) == before


def test_a_vectorstore_exists_from_its_first_submission_until_it_is_erased(env: Any) -> None:
    store("user1", CHAT, "s-1")  # queued, not processed yet
    for suffix in ("/hierarchy", "/stats", "/dead_letters", "/processing_status"):
        assert call("GET", mem_path("user1", suffix)).status == 200, suffix
    assert call("GET", mem_path("user1", "/search"), query={"q": "tea"}).status == 200
    assert call("DELETE", mem_path("user1")).status == 200
    assert call("GET", mem_path("user1", "/hierarchy")).error_code == "unknown_vectorstore"


# -- the resolver's 404 and 405 -----------------------------------------------------------------------


def invoke(function: str, method: str, path: str) -> tuple[int, dict[str, str], Any]:
    """A request API Gateway would not route (or would route elsewhere), sent to a function."""
    import json

    route = next(r for r in load_routes(ROOT / "template.yaml") if r.function == function)
    event = build_event(route, method, path, "", {"content-type": "application/json"}, None, {})
    result = load_handler(route, ROOT)(event, LambdaContext(function))
    headers = dict(result.get("headers") or {})
    headers.update({k: v[-1] for k, v in (result.get("multiValueHeaders") or {}).items() if v})
    return int(result["statusCode"]), headers, json.loads(result["body"])


@pytest.mark.parametrize(
    ("function", "method", "path", "allowed"),
    [
        ("QueryFunction", "DELETE", "/api/memory/user1/stats", "GET"),
        ("QueryFunction", "POST", f"/api/memory/user1/raw/{RAW_ID}", "GET"),
        ("QueryFunction", "GET", f"/api/memory/user1/raw/{RAW_ID}/retry", "POST"),
        ("StoreRawFunction", "GET", "/api/memory/user1/store_raw", "POST"),
        ("CleanupFunction", "GET", "/api/memory/user1", "DELETE"),
        ("CleanupFunction", "GET", "/api/memory/user1/cleanup", "POST"),
    ],
)
def test_a_known_path_with_another_method_is_a_json_405(
    env: Any, function: str, method: str, path: str, allowed: str
) -> None:
    status, headers, body = invoke(function, method, path)
    assert status == 405 and headers["Allow"] == allowed
    assert body["success"] is False and body["error"]["code"] == "method_not_allowed"
    assert method in body["error"]["message"] and allowed in body["error"]["message"]


@pytest.mark.parametrize(
    ("function", "path"),
    [
        ("QueryFunction", "/api/memory/user1/nothing_here"),
        ("QueryFunction", "/api/memory/user1/stats/extra"),
        ("StoreRawFunction", "/api/memory/user1/store_raw/x"),
        ("CleanupFunction", "/api/memory"),
    ],
)
def test_an_unknown_path_is_a_json_404(env: Any, function: str, path: str) -> None:
    status, _, body = invoke(function, "GET", path)
    assert status == 404 and body == {
        "success": False,
        "error": {"code": "not_found", "message": f"no route for GET {path}"},
    }


# -- GET raw/{id}?include_transcript=true ------------------------------------------------------------


@pytest.mark.parametrize("size", [len(CHAT), 20_000], ids=["plain", "zlib"])
def test_raw_with_include_transcript_returns_the_transcript_while_retained(
    fake_llm: Any, r: redis.Redis, size: int
) -> None:
    text = (CHAT * (size // len(CHAT) + 1))[:size]
    raw_id = store("user1", text, "s-1")["raw_memory_id"]
    stored = r.hget(keys.VectorstoreKeys("user1").raw(raw_id), "session_data_encoding")
    assert stored == ("zlib" if size > 8192 else "utf-8")
    if stored == "zlib":  # what Redis holds is not the text
        kw = r.connection_pool.connection_kwargs
        rb = redis.Redis(host=kw["host"], port=kw["port"])
        packed = rb.hget(keys.VectorstoreKeys("user1").raw(raw_id), "session_data")
        assert isinstance(packed, bytes) and zlib.decompress(packed).decode() == text
    path = mem_path("user1", f"/raw/{raw_id}")
    assert call("GET", path).body["session_data"] is None  # not without asking
    res = call("GET", path, query={"include_transcript": "true"})
    assert res.status == 200 and res.body["session_data"] == text and res.body["status"] == "queued"
    drain()
    assert call("GET", path, query={"include_transcript": "true"}).body["session_data"] == text
    r.hdel(keys.VectorstoreKeys("user1").raw(raw_id), "session_data")  # as retention leaves a record
    assert call("GET", path, query={"include_transcript": "true"}).body["session_data"] is None


def test_raw_refuses_an_unknown_parameter(env: Any) -> None:
    raw_id = store("user1", CHAT, "s-1")["raw_memory_id"]
    res = call("GET", mem_path("user1", f"/raw/{raw_id}"), query={"include_transcripts": "true"})
    assert res.status == 400 and res.error_code == "unknown_query_parameter"
