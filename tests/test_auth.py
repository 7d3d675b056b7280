"""Who may call what: every route of template.yaml x {no identity, tenant A on A, tenant A on B, an
admin} in every AuthMode, through the real handlers with the REST events API Gateway would send;
then memproc.auth's reading of those events, and the local server's stand-ins for API Gateway's
authentication over real HTTP.

An admitted caller gets exactly what an unauthenticated local caller (AUTH_MODE=NONE) gets for the
same request; a refused one gets a 401/403 JSON error and changes nothing in Redis.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from memproc import settings as settings_module
from memproc.auth import Caller, Forbidden, authorize, caller, claim_values
from memproc.settings import ConfigurationError, load_settings
from memproc_local.events import build_event
from memproc_local.gateway_auth import CLAIMS_HEADER, LocalAuth
from memproc_local.routing import Route
from memproc_local.server import LocalApiServer
from tests.api_client import ApiResponse, api_routes, call
from tests.memory_helpers import store
from tests.redis_server import ROOT

TENANT_A, TENANT_B = "tenant-a", "tenant-b"
IDS = {
    "raw_memory_id": "0123456789abcdef0123456789abcdef",
    "session_id": "s-1",
    "memory_id": "0123456789abcdef0123456789abcdef-0",
}
MODES = ("IAM", "COGNITO", "API_KEY")

# What API Gateway puts in requestContext for each kind of caller, per mode.
CALLERS: dict[str, dict[str, dict[str, Any]]] = {
    "IAM": {
        "tenant": {"identity": {"userArn": "arn:aws:iam::123456789012:user/app-a", "caller": "AIDAAPPA"}},
        "admin": {"identity": {"userArn": "arn:aws:sts::123456789012:assumed-role/ops/x", "caller": "AROAX"}},
    },
    "COGNITO": {
        "tenant": {"claims": {"sub": "u-a", "custom:vectorstore": TENANT_A, "cognito:groups": "users"}},
        "admin": {"claims": {"sub": "u-ops", "cognito:groups": "ops,admin"}},
        "no_claim": {"claims": {"sub": "u-x", "email": "x@example.com"}},
    },
    "API_KEY": {
        "tenant": {"identity": {"apiKey": "key-a", "apiKeyId": "id-a"}},
        "admin": {"identity": {"apiKey": "key-ops", "apiKeyId": "id-ops"}},
    },
}


def path_for(resource: str, vectorstore: str) -> str:
    values = {**IDS, "vectorstore_name": vectorstore}
    return re.sub(r"\{(\w+)\}", lambda m: quote(values[m.group(1)], safe=""), resource)


def request(method: str, resource: str, vectorstore: str, **auth: Any) -> ApiResponse:
    """A valid request for the route (what it needs to do its job), as one caller."""
    query = {"q": "tea"} if resource.endswith("/search") else None
    body = {"session_data": "user: I prefer green tea."} if resource.endswith("/store_raw") else None
    return call(method, path_for(resource, vectorstore), json_body=body, query=query, **auth)


def use_mode(env: pytest.MonkeyPatch, mode: str) -> None:
    env.setenv("AUTH_MODE", mode)
    settings_module.get_settings.cache_clear()


def exist(env: pytest.MonkeyPatch, *vectorstores: str) -> None:
    """Write each vectorstore once (one never written is 404 unknown_vectorstore on every read)."""
    use_mode(env, "NONE")
    for vs in vectorstores:
        store(vs, "user: I like tea.")


def changes(r: redis.Redis) -> int:
    return int(r.info("persistence")["rdb_changes_since_last_save"])


def outcome(res: ApiResponse) -> tuple[int, str | None]:
    return res.status, res.error_code


ROUTES = api_routes()


def fresh(env: pytest.MonkeyPatch, r: redis.Redis) -> None:
    """Both vectorstores with a queued session s-1, so reads and erasures have something to act on."""
    r.flushall()
    use_mode(env, "NONE")
    for vs in (TENANT_A, TENANT_B):
        body = {"session_id": IDS["session_id"], "session_data": f"user: I am {vs} and I like tea."}
        assert call("POST", f"/api/memory/{vs}/store_raw", json_body=body).status == 202


def answer(
    env: pytest.MonkeyPatch, r: redis.Redis, mode: str, method: str, resource: str, vs: str, **auth: Any
) -> tuple[ApiResponse, bool]:
    """The response to one request from the same starting state, and whether it changed Redis."""
    fresh(env, r)
    use_mode(env, mode)
    before = changes(r)
    res = request(method, resource, vs, **auth)
    return res, changes(r) != before


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("method", "resource"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_who_may_call_each_route(
    env: pytest.MonkeyPatch, r: redis.Redis, mode: str, method: str, resource: str
) -> None:
    tenant_route = "{vectorstore_name}" in resource
    callers = CALLERS[mode]

    def check(vs: str, refused: tuple[int, str] | None = None, **auth: Any) -> None:
        res, wrote = answer(env, r, mode, method, resource, vs, **auth)
        if refused is None:  # admitted: exactly what the handler answers without authentication
            baseline, baseline_wrote = answer(env, r, "NONE", method, resource, vs)
            assert outcome(res) == outcome(baseline), (vs, auth, res.body)
            assert wrote == baseline_wrote
        else:  # refused before the handler ran: nothing changed
            assert outcome(res) == refused, (vs, auth, res.body)
            assert not wrote

    # No identity: 401 with a challenge, on every vectorstore.
    for vs in (TENANT_A, TENANT_B):
        check(vs, (401, "unauthenticated"))
    res, _ = answer(env, r, mode, method, resource, TENANT_A)
    assert res.headers["WWW-Authenticate"]
    # Tenant A on its own vectorstore, and an admin on another's.
    check(TENANT_A, **callers["tenant"])
    check(TENANT_B, **callers["admin"])
    # Tenant A on B's vectorstore: refused where the token names the tenant (COGNITO); with IAM
    # and API keys that is API Gateway's decision (IAM policy; keys grant every vectorstore).
    if mode == "COGNITO" and tenant_route:
        check(TENANT_B, (403, "forbidden"), **callers["tenant"])
        check(TENANT_A, (403, "forbidden"), **callers["no_claim"])  # no tenant claim: no vectorstore
    else:
        check(TENANT_B, **callers["tenant"])


def test_the_matrix_covers_every_route_and_the_erasure_routes() -> None:
    assert len(ROUTES) >= 13
    erasure = {(m, p) for m, p in ROUTES if m == "DELETE"}
    assert ("DELETE", "/api/memory/{vectorstore_name}") in erasure and len(erasure) == 3


def test_a_body_that_fails_validation_is_still_401_without_identity(env: pytest.MonkeyPatch) -> None:
    use_mode(env, "COGNITO")
    res = call("POST", "/api/memory/tenant-a/store_raw", raw_body=b"{not json")
    assert outcome(res) == (401, "unauthenticated")


def test_a_percent_encoded_vectorstore_is_compared_decoded(env: pytest.MonkeyPatch) -> None:
    """The tenant check sees the name the handler acts on (the path's segment, decoded)."""
    exist(env, "team.a", "team.b")
    use_mode(env, "COGNITO")
    token = {"claims": {"sub": "u", "custom:vectorstore": "team.a"}}
    assert call("GET", "/api/memory/team%2Ea/stats", **token).status == 200
    assert outcome(call("GET", "/api/memory/team%2Eb/stats", **token)) == (403, "forbidden")


def test_the_tenant_claim_and_admin_group_are_configurable(env: pytest.MonkeyPatch) -> None:
    env.setenv("TENANT_CLAIM", "custom:tenant")
    env.setenv("ADMIN_GROUP", "memproc-ops")
    exist(env, TENANT_A, TENANT_B)
    use_mode(env, "COGNITO")
    own = {"claims": {"sub": "u", "custom:tenant": TENANT_A, "custom:vectorstore": TENANT_B}}
    assert call("GET", f"/api/memory/{TENANT_A}/stats", **own).status == 200
    assert outcome(call("GET", f"/api/memory/{TENANT_B}/stats", **own)) == (403, "forbidden")
    ops = {"claims": {"sub": "o", "cognito:groups": "[memproc-ops, users]"}}
    assert call("GET", f"/api/memory/{TENANT_B}/stats", **ops).status == 200
    not_ops = {"claims": {"sub": "o", "cognito:groups": "admin"}}  # the default group means nothing now
    assert outcome(call("GET", f"/api/memory/{TENANT_B}/stats", **not_ops)) == (403, "forbidden")


# ---------------------------------------------------------------- reading the event


def settings_for(mode: str, **extra: str) -> settings_module.Settings:
    return load_settings(auth_mode=mode, **extra)


def event(**auth: Any) -> dict[str, Any]:
    route = Route("GET", "/api/memory/{vectorstore_name}/stats", "F", Path("functions/query"), "app.handler")
    path = "/api/memory/u1/stats"
    return build_event(route, "GET", path, "", {}, None, {"vectorstore_name": "u1"}, **auth)


def test_callers_are_read_from_the_rest_event() -> None:
    iam = caller(event(identity={"userArn": "arn:aws:iam::1:user/a"}), settings_for("IAM"))
    assert iam == Caller("IAM", principal="arn:aws:iam::1:user/a")
    key = caller(event(identity={"apiKey": "secret", "apiKeyId": "abc123"}), settings_for("API_KEY"))
    assert key == Caller("API_KEY", principal="abc123")  # the key id, never the key
    token = caller(
        event(claims={"sub": "s", "custom:vectorstore": "u1", "cognito:groups": ["a", "admin"]}),
        settings_for("COGNITO"),
    )
    assert token == Caller("COGNITO", principal="s", tenant="u1", admin=True)
    assert caller(event(), settings_for("NONE")) == Caller("NONE")


@pytest.mark.parametrize("mode", MODES)
def test_an_event_without_the_modes_identity_has_no_caller(mode: str) -> None:
    assert caller(event(), settings_for(mode)) is None
    # Another mode's identity is no identity: an API key does not pass for a token.
    other = {"identity": {"apiKey": "k", "apiKeyId": "i"}} if mode != "API_KEY" else {"claims": {"sub": "s"}}
    assert caller(event(**other), settings_for(mode)) is None


@pytest.mark.parametrize(
    ("value", "groups"),
    [
        ("admin", ["admin"]),
        ("ops,admin", ["ops", "admin"]),
        ("[ops, admin]", ["ops", "admin"]),
        (["ops", "admin"], ["ops", "admin"]),
        ("", []),
        (None, []),
    ],
)
def test_group_claims_in_every_shape_api_gateway_sends(value: Any, groups: list[str]) -> None:
    assert claim_values(value) == groups


def test_admins_need_the_exact_group() -> None:
    settings = settings_for("COGNITO")
    for groups in ("administrators", "Admin", "admins,ops"):
        who = caller(event(claims={"sub": "s", "cognito:groups": groups}), settings)
        assert who is not None and not who.admin
    with pytest.raises(Forbidden, match="claim"):
        authorize(Caller("COGNITO", principal="s"), "u1", settings)


def test_an_admin_group_that_could_never_match_is_refused_at_start() -> None:
    with pytest.raises(ConfigurationError, match="ADMIN_GROUP"):
        load_settings(admin_group="ops,admin")


# ---------------------------------------------------------------- the local server's checks


def test_local_auth_from_the_environment() -> None:
    assert LocalAuth.from_env({}).auth_mode == "NONE"
    assert LocalAuth.from_env({"MEMPROC_LOCAL_API_KEY": "k"}).auth_mode == "API_KEY"
    assert LocalAuth.from_env({"MEMPROC_LOCAL_AUTH": "Cognito"}).auth_mode == "COGNITO"
    with pytest.raises(ValueError, match="MEMPROC_LOCAL_AUTH"):
        LocalAuth.from_env({"MEMPROC_LOCAL_AUTH": "iam"})
    with pytest.raises(ValueError, match="choose one"):
        LocalAuth.from_env({"MEMPROC_LOCAL_API_KEY": "k", "MEMPROC_LOCAL_AUTH": "cognito"})


def send(server: LocalApiServer, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


@pytest.fixture
def local_server(env: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[LocalApiServer]:
    auth: LocalAuth = request.param
    exist(env, "u1", "u2")
    use_mode(env, auth.auth_mode)  # as memproc serve sets it
    with LocalApiServer(ROOT / "template.yaml", ROOT, port=0, auth=auth) as srv:
        yield srv


@pytest.mark.parametrize("local_server", [LocalAuth(api_key="dev-key")], indirect=True)
def test_local_api_key(local_server: LocalApiServer) -> None:
    status, body = send(local_server, "GET", "/api/memory/u1/stats")
    assert (status, body["error"]["code"]) == (403, "invalid_api_key")  # the template's API_KEY response
    status, body = send(local_server, "GET", "/api/memory/u1/stats", {"x-api-key": "wrong"})
    assert status == 403
    status, body = send(local_server, "GET", "/api/memory/u1/stats", {"x-api-key": "dev-key"})
    assert status == 200 and body["vectorstore_name"] == "u1"


@pytest.mark.parametrize("local_server", [LocalAuth(cognito=True)], indirect=True)
def test_local_cognito_claims(local_server: LocalApiServer) -> None:
    status, body = send(local_server, "GET", "/api/memory/u1/stats")
    assert (status, body["error"]["code"]) == (401, "unauthenticated")  # the template's UNAUTHORIZED
    status, body = send(local_server, "GET", "/api/memory/u1/stats", {CLAIMS_HEADER: "not json"})
    assert status == 401
    mine = {CLAIMS_HEADER: json.dumps({"custom:vectorstore": "u1"})}
    assert send(local_server, "GET", "/api/memory/u1/stats", mine)[0] == 200
    status, body = send(local_server, "GET", "/api/memory/u2/stats", mine)
    assert (status, body["error"]["code"]) == (403, "forbidden")  # the handler's tenant check
    admin = {CLAIMS_HEADER: json.dumps({"custom:vectorstore": "u1", "cognito:groups": ["admin"]})}
    assert send(local_server, "GET", "/api/memory/u2/stats", admin)[0] == 200


@pytest.mark.parametrize("local_server", [LocalAuth()], indirect=True)
def test_local_server_without_checks_answers_as_deployed_by_default(local_server: LocalApiServer) -> None:
    assert send(local_server, "GET", "/api/memory/u1/stats")[0] == 200
    status, body = send(local_server, "GET", "/api/memory/u1/no_such_route")
    # AuthMode=IAM (the default): API Gateway's 403 for a missing route or signature.
    assert (status, body["error"]["code"]) == (403, "missing_authentication_token")
