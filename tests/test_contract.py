"""Inputs that answered 5xx, and contract gaps (issue "Integrity", defects 11 and 12): bad input
gets a clear 4xx and changes nothing; what is stored can always be read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from memproc import keys
from memproc.observability import logger
from tests.api_client import call, mem_path
from tests.memory_helpers import drain, everything, store
from tests.redis_server import ROOT

U1 = keys.VectorstoreKeys("user1")
CHAT = "user: I prefer green tea over coffee.\n"


def post_raw(body: bytes, vs: str = "user1") -> Any:
    return call("POST", mem_path(vs, "/store_raw"), raw_body=body)


# -- 11. inputs that answered 5xx --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "query"),
    [
        ("/hierarchy", {"end_date": "9999-12-31"}),
        ("/hierarchy", {"start_date": "0001-01-01", "end_date": "9999-12-31T23:59:59Z"}),
        ("/search", {"q": "tea", "end_date": "9999-12-31"}),
    ],
)
def test_the_ends_of_the_calendar_are_valid_dates(fake_llm: Any, route: str, query: dict[str, str]) -> None:
    store("user1", CHAT, "s-1")
    drain()
    res = call("GET", mem_path("user1", route), query=query)
    assert res.status == 200, res.body


@pytest.mark.parametrize("route", ["/hierarchy", "/search"])
def test_a_date_outside_the_utc_calendar_is_a_400(env: Any, r: redis.Redis, route: str) -> None:
    query = {"start_date": "0001-01-01T00:00:00+01:00", **({"q": "tea"} if route == "/search" else {})}
    res = call("GET", mem_path("user1", route), query=query)
    assert res.status == 400 and res.error_code == "invalid_start_date"
    assert "years 1 to 9999" in res.body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "code", "reason"),
    [
        ('{"session_data": "user: hi"}'.encode("utf-16"), "invalid_encoding", "UTF-8"),
        (b'\xff\xfe{"session_data": "user: hi"}', "invalid_encoding", "UTF-8"),
        (b'{"session_data": "user: hi", "metadata": {"a": "\\ud800"}}', "malformed_json", "surrogate"),
        (b'{"session_data": "user: \\udc00 hi"}', "malformed_json", "surrogate"),
        (b'{"session_data": "user: hi", "metadata": {"n": ' + b"9" * 5000 + b"}}", "malformed_json", "2**53"),
        (b'{"session_data": "user: hi", "metadata": {"n": 9007199254740993}}', "malformed_json", "2**53"),
        (b'{"session_data": "user: hi", "metadata": {"n": 1e999}}', "malformed_json", "not finite"),
        (b'{"session_data": "user: hi", "metadata": {"n": NaN}}', "malformed_json", "NaN"),
        (b'{"session_data": "user: hi", "metadata": {"n": -Infinity}}', "malformed_json", "Infinity"),
        (
            b'{"session_data": "user: hi", "metadata": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}",
            "malformed_json",
            "nests deeper",
        ),
        (
            b'{"session_data": "user: hi", "metadata": ' + b'{"a": ' * 256 + b"1" + b"}" * 256 + b"}",
            "malformed_json",
            "nests deeper",
        ),
    ],
)
def test_bodies_that_could_not_be_stored_and_read_back_are_refused(
    env: Any, r: redis.Redis, body: bytes, code: str, reason: str
) -> None:
    res = post_raw(body)
    assert res.status == 400, res.body
    assert res.error_code == code and reason in res.body["error"]["message"]
    assert r.dbsize() == 0


def test_metadata_at_the_depth_limit_is_accepted_and_reads_back(fake_llm: Any, r: redis.Redis) -> None:
    meta: Any = "leaf"
    for _ in range(31):  # the metadata object itself is the 2nd level of the body
        meta = {"a": meta}
    res = post_raw(json.dumps({"session_data": CHAT, "session_id": "s-1", "metadata": meta}).encode())
    assert res.status == 202, res.body
    raw = call("GET", mem_path("user1", f"/raw/{res.body['raw_memory_id']}"))
    assert raw.status == 200 and raw.body["metadata"] == meta


def test_metadata_stored_too_deep_before_the_check_does_not_break_reads(
    fake_llm: Any, r: redis.Redis
) -> None:
    raw_id = store("user1", CHAT, "s-1")["raw_memory_id"]
    drain()
    deep = json.dumps(json.loads("[" * 256 + "]" * 256))
    r.hset(U1.raw(raw_id), "metadata", '{"a": ' + deep + "}")  # what the door once let in
    for path in (f"/raw/{raw_id}", "/session/s-1", "/hierarchy", "/dead_letters"):
        res = call("GET", mem_path("user1", path))
        assert res.status == 200, (path, res.body)
    assert call("GET", mem_path("user1", f"/raw/{raw_id}")).body["metadata"] is None


def test_an_invalid_date_names_the_value_it_refused(env: Any) -> None:
    res = call("GET", mem_path("user1", "/hierarchy"), query={"start_date": "yesterday"})
    assert res.status == 400 and "'yesterday' is not an ISO 8601 date" in res.body["error"]["message"]
    assert "{value" not in res.body["error"]["message"]


# -- 12. contract gaps -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/processing_status", "/raw/0123456789abcdef0123456789abcdef"])
def test_unknown_query_parameters_are_refused_everywhere(env: Any, path: str) -> None:
    res = call("GET", mem_path("user1", path), query={"verbose": "1"})
    assert res.status == 400 and res.error_code == "unknown_query_parameter"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/hierarchy"), ("GET", "/dead_letters"), ("POST", "/cleanup"), ("GET", "/search")],
)
def test_a_repeated_query_parameter_is_refused(env: Any, r: redis.Redis, method: str, path: str) -> None:
    before = everything(r)
    res = call(method, mem_path("user1", path), query={"limit": ["1", "2"], "q": "tea"})
    assert res.status == 400 and res.error_code == "repeated_query_parameter"
    assert "'limit'" in res.body["error"]["message"]
    assert everything(r) == before


def test_an_empty_session_id_is_refused_not_replaced(env: Any, r: redis.Redis) -> None:
    res = post_raw(json.dumps({"session_data": CHAT, "session_id": ""}).encode())
    assert res.status == 400 and res.error_code == "invalid_session_id"
    assert r.dbsize() == 0


def test_a_percent_encoded_vectorstore_name_means_the_decoded_name(fake_llm: Any, r: redis.Redis) -> None:
    res = call(
        "POST", "/api/memory/user%2E1/store_raw", json_body={"session_data": CHAT, "session_id": "s-1"}
    )
    assert res.status == 202, res.body
    assert res.body["vectorstore_name"] == "user.1"
    assert r.zcard(keys.VectorstoreKeys("user.1").raw_index) == 1
    drain()
    assert call("GET", "/api/memory/user%2E1/session/s-1").body["vectorstore_name"] == "user.1"


def test_a_processed_record_keeps_no_stale_error(fake_llm: Any, r: redis.Redis) -> None:
    raw_id = store("user1", CHAT, "s-1")["raw_memory_id"]
    fake_llm.fail_next("500", count=1)
    assert drain(llm_max_retries=0, retry_base_seconds=0, retry_max_seconds=0).processed == 1
    body = call("GET", mem_path("user1", f"/raw/{raw_id}")).body
    assert body["status"] == "processed" and body["processing_attempts"] == 2 and body["last_error"] is None


def test_a_scheduled_run_does_not_log_with_the_previous_requests_context(fake_llm: Any) -> None:
    from memproc_local.events import LambdaContext
    from memproc_local.handlers import load_handler
    from memproc_local.routing import Route

    store("user1", CHAT, "s-1")
    assert call("GET", mem_path("user1", "/processing_status")).status == 200
    assert logger.get_correlation_id()  # the API request's id (requestContext.requestId)
    handler = load_handler(
        Route("", "", "ProcessQueueFunction", Path("functions/process_queue"), "app.lambda_handler"), ROOT
    )
    handler({"source": "aws.scheduler"}, LambdaContext("ProcessQueueFunction", timeout_seconds=60))
    assert logger.get_correlation_id() is None
    assert logger.get_current_keys()["function_name"] == "ProcessQueueFunction"
