"""The adversarial corpus (tests/data/adversarial.json) sent to every route of template.yaml:
names and ids with glob/tag/FILTER metacharacters, braces, colons, quotes, NUL, CR/LF,
percent-encodings, homoglyphs and 10 KB lengths; odd dates, numbers and cursors; bodies at and
over every limit. No answer is a 5xx, a refused request writes nothing (Redis' own count of
changes, `rdb_changes_since_last_save`, stays put), and an accepted one touches no other
vectorstore."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from memproc.validation import vectorstore_problem
from tests.api_client import ApiResponse, api_routes, call
from tests.memory_helpers import drain, snapshot, store

CORPUS = Path(__file__).parent / "data" / "adversarial.json"
VALID = {
    "vectorstore_name": "user1",
    "raw_memory_id": "0123456789abcdef0123456789abcdef",
    "session_id": "s-1",
    "memory_id": "0123456789abcdef0123456789abcdef-0",
}
BYSTANDERS = ("user1", "bob")
QUERY = {  # every query parameter a route takes, and which corpus list probes it
    "start_date": "dates",
    "end_date": "dates",
    "limit": "numbers",
    "k": "numbers",
    "retention_days": "numbers",
    "cursor": "cursors",
    "session_id": "names",
    "memory_type": "names",
    "q": "names",
    "dry_run": "numbers",
    "include_transcript": "numbers",
}


def _value(spec: Any) -> Any:
    if isinstance(spec, dict) and "repeat" in spec:
        return spec["repeat"] * spec["times"]
    if isinstance(spec, dict):
        return {k: _value(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_value(v) for v in spec]
    return spec


@cache
def corpus() -> dict[str, list[Any]]:
    data = json.loads(CORPUS.read_text())
    return {k: [_value(v) for v in vs] for k, vs in data.items() if isinstance(vs, list)}


def changes(r: redis.Redis) -> int:
    return int(r.info("persistence")["rdb_changes_since_last_save"])


def path_for(resource: str, **params: str) -> str:
    values = {**VALID, **params}
    return re.sub(r"\{(\w+)\}", lambda m: quote(values[m.group(1)], safe=""), resource)


@pytest.fixture
def seeded(fake_llm: Any, r: redis.Redis) -> dict[str, Any]:
    for vs in BYSTANDERS:
        store(vs, "user: I prefer green tea.\nuser: I live in Porto.\n", "s-1")
    drain()
    return {vs: snapshot(r, vs) for vs in BYSTANDERS}


def check(
    r: redis.Redis, seeded: dict[str, Any], res: ApiResponse, target: str, before: int, what: str
) -> str:
    assert res.status < 500, (what, res.status, res.body)
    if res.status >= 400:
        assert isinstance(res.body, dict) and res.error_code, (what, res.body)
        assert changes(r) == before, f"refused but wrote: {what}"
        return "refused"
    for vs, snap in seeded.items():
        if vs != target:
            assert snapshot(r, vs) == snap, f"{what} changed {vs}"
    return "accepted"


@pytest.mark.one_backend
def test_hostile_path_values_on_every_route(seeded: dict[str, Any], r: redis.Redis) -> None:
    outcomes = {"refused": 0, "accepted": 0}
    for method, resource in api_routes():
        for param in re.findall(r"\{(\w+)\}", resource):
            for name in corpus()["names"]:
                if param == "vectorstore_name" and not vectorstore_problem(name) and method == "DELETE":
                    continue  # a valid name may be erased: that is the route's job, not a leak
                before = changes(r)
                res = call(
                    method, path_for(resource, **{param: name}), json_body={"session_data": "user: hi"}
                )
                target = name if param == "vectorstore_name" else VALID["vectorstore_name"]
                outcomes[
                    check(r, seeded, res, target, before, f"{method} {resource} {param}={name[:40]!r}")
                ] += 1
    assert outcomes["refused"] > 500  # the corpus is mostly hostile: proof it was sent


def odd_queries(seeded: dict[str, Any], r: redis.Redis, routes: list[tuple[str, str]]) -> int:
    """Every odd value of every query parameter sent to `routes`: each refused or answered without
    change. How many requests were sent."""
    tried = 0
    for method, resource in routes:
        if method == "DELETE":
            continue
        for param, kind in QUERY.items():
            for value in corpus()[kind]:
                query = {param: value, **({"q": "tea"} if param != "q" else {})}
                before = changes(r)
                res = call(method, path_for(resource), query=query, json_body={"session_data": "user: hi"})
                check(
                    r,
                    seeded,
                    res,
                    VALID["vectorstore_name"],
                    before,
                    f"{method} {resource} ?{param}={value[:40]!r}",
                )
                tried += 1
    return tried


@pytest.mark.one_backend
def test_odd_query_values_on_every_route(seeded: dict[str, Any], r: redis.Redis) -> None:
    assert odd_queries(seeded, r, api_routes()) > 1000


def test_odd_query_values_on_the_search_route_of_each_backend(seeded: dict[str, Any], r: redis.Redis) -> None:
    """The filters become a VSIM FILTER expression or a Query Engine query: each backend's escaping
    meets every odd value (a session id of one underscore once broke the Query Engine's)."""
    routes = [(m, res) for m, res in api_routes() if res.endswith("/search")]
    assert routes and odd_queries(seeded, r, routes) > 100


def _body(spec: dict[str, Any]) -> bytes:
    if "json" in spec:
        return json.dumps(spec["json"]).encode()
    if "raw" in spec:
        return spec["raw"].encode("utf-8", "surrogatepass")
    if "deep" in spec:
        n = spec["deep"]
        return b'{"session_data": "user: hi", "metadata": ' + b'{"a": ' * n + b"1" + b"}" * n + b"}"
    if "bytes" in spec:
        return bytes.fromhex(spec["bytes"])
    return json.dumps({"session_data": "x" * spec["oversize"]}).encode()


@pytest.mark.one_backend
@pytest.mark.parametrize("spec", corpus()["bodies"], ids=lambda s: json.dumps(s)[:60])
def test_hostile_bodies_for_store_raw(seeded: dict[str, Any], r: redis.Redis, spec: dict[str, Any]) -> None:
    before = changes(r)
    res = call("POST", path_for("/api/memory/{vectorstore_name}/store_raw"), raw_body=_body(spec))
    assert check(r, seeded, res, "user1", before, json.dumps(spec)[:80]) == "refused"
