"""template.yaml per deployment scenario: what gets created, how it is secured, what the functions get.

Each scenario is the SAM-translated template with its Conditions evaluated for that scenario's
parameter values (tests/template_render.py), i.e. the resources CloudFormation would create.
"""

from __future__ import annotations

import json
import re
import string
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest

from memproc.schemas.errors import ErrorBody, ErrorResponse
from tests.api_client import api_routes
from tests.redis_server import ROOT
from tests.template_render import (
    AUTH_SCENARIOS,
    SCENARIOS,
    USER_POOL_ARN,
    render,
    rules_violated,
    source,
    translate,
)

MODES = {"ElastiCache", "MemoryDB", "External"}
FUNCTIONS = ["StoreRawFunction", "QueryFunction", "CleanupFunction", "ProcessQueueFunction"]
STORE_SECRET = {"Ref": "StoreSecret"}
# How SAM's AWSSecretsManagerGetSecretValuePolicy template names the OpenAI key's secret.
OPENAI_SECRET = {"Fn::Sub": ["${secretArn}", {"secretArn": {"Ref": "OpenAISecretArn"}}]}
DYNAMIC_PASSWORD = {"Fn::Sub": "{{resolve:secretsmanager:${StoreSecret}:SecretString}}"}
VPC_RESOURCES = {
    "Vpc",
    "PublicSubnet",
    "PrivateSubnetA",
    "PrivateSubnetB",
    "InternetGateway",
    "NatGateway",
    "NatAddress",
    "SecretsManagerEndpoint",
}
ELASTICACHE = {"ReplicationGroup", "ElastiCacheParameterGroup", "ElastiCacheSubnetGroup"}
MEMORYDB = {"MemoryDBCluster", "MemoryDBParameterGroup", "MemoryDBSubnetGroup", "MemoryDBUser", "MemoryDBAcl"}
# RedisProvisioning x (own subnets | none); the other scenarios flip the remaining conditions.
MAIN_SCENARIOS = [f"{m}{s}" for m in ("elasticache", "memorydb", "external") for s in ("", "-own-subnets")]


def scenario(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(parameter overrides, rendered template)."""
    return SCENARIOS[name], render(translate(SCENARIOS[name]), SCENARIOS[name])


def mode_of(overrides: dict[str, Any]) -> str:
    return str(overrides["RedisProvisioning"])


def environment(rendered: dict[str, Any], function: str) -> dict[str, Any]:
    return dict(rendered["Resources"][function]["Properties"]["Environment"]["Variables"])


def created(group: set[str], names: set[str]) -> bool:
    """Whether the whole group is there; a group that exists only in part fails the test."""
    found = group & names
    assert found in (set(), group), f"only part of {sorted(group)} exists: {sorted(found)}"
    return bool(found)


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a template with its path."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from strings(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from strings(v, f"{path}/{i}")
    elif isinstance(node, str):
        yield path, node


def test_the_scenarios_cover_every_mode_with_and_without_own_subnets() -> None:
    pairs = {(mode_of(SCENARIOS[n]), bool(SCENARIOS[n].get("SubnetIds"))) for n in MAIN_SCENARIOS}
    assert pairs == {(m, s) for m in MODES for s in (False, True)}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_passes_the_template_rules(name: str) -> None:
    assert rules_violated(translate(), SCENARIOS[name]) == []


@pytest.mark.parametrize(
    ("overrides", "broken"),
    [
        ({"RedisProvisioning": "External"}, "needs RedisSecretArn or RedisUrl"),
        ({"RedisProvisioning": "ElastiCache", "RedisUrl": "redis://x:6379"}, "External only"),
        ({"RedisProvisioning": "MemoryDB", "SubnetIds": ["subnet-0a1b2c3d4e5f60001"]}, "needs VpcId"),
        ({"RedisProvisioning": "ElastiCache", "SecurityGroupIds": ["sg-0a1b2c3d4e5f60000"]}, "only together"),
        (
            {"RedisProvisioning": "External", "RedisUrl": "redis://x", "SubnetIds": ["subnet-0a1b2c3d4e5f6"]},
            "need SecurityGroupIds",
        ),
    ],
)
def test_rules_refuse_misconfigurations(overrides: dict[str, Any], broken: str) -> None:
    assert any(broken in message for message in rules_violated(translate(), overrides))


@pytest.mark.parametrize("name", MAIN_SCENARIOS)
def test_the_resources_each_mode_creates(name: str) -> None:
    overrides, rendered = scenario(name)
    resources = set(rendered["Resources"])
    mode, own_subnets = mode_of(overrides), bool(overrides.get("SubnetIds"))
    managed = mode != "External"
    assert created(ELASTICACHE, resources) is (mode == "ElastiCache")
    assert created(MEMORYDB, resources) is (mode == "MemoryDB")
    assert created({"StoreSecret", "StoreSecurityGroup", "StoreClientSecurityGroup"}, resources) is managed
    assert created({"StoreEndpoint", "StoreSecretArn"}, set(rendered["Outputs"])) is managed
    # A VPC (and so a NAT gateway) only for a managed store that was given no subnets.
    assert created(VPC_RESOURCES, resources) is (managed and not own_subnets)
    # Everything that was there before stays.
    assert {*FUNCTIONS, "MemoryApi", "Dashboard", "DeadLetterAlarm"} <= resources
    assert any(r["Type"] == "AWS::Lambda::LayerVersion" for r in rendered["Resources"].values())
    assert {"ApiUrl", "AuthMode", "DashboardName"} <= set(rendered["Outputs"])


def test_the_created_vpc_has_private_subnets_in_two_azs_behind_a_nat() -> None:
    _, rendered = scenario("elasticache")
    res = rendered["Resources"]
    azs = [res[s]["Properties"]["AvailabilityZone"] for s in ("PrivateSubnetA", "PrivateSubnetB")]
    assert azs == [{"Fn::Select": [i, {"Fn::GetAZs": ""}]} for i in (0, 1)]
    assert res["NatGateway"]["Properties"]["SubnetId"] == {"Ref": "PublicSubnet"}
    assert res["PrivateDefaultRoute"]["Properties"]["NatGatewayId"] == {"Ref": "NatGateway"}
    assert res["PublicDefaultRoute"]["Properties"]["GatewayId"] == {"Ref": "InternetGateway"}
    endpoint = res["SecretsManagerEndpoint"]["Properties"]
    assert endpoint["VpcEndpointType"] == "Interface" and endpoint["PrivateDnsEnabled"] is True
    assert endpoint["ServiceName"] == {"Fn::Sub": "com.amazonaws.${AWS::Region}.secretsmanager"}


@pytest.mark.parametrize("name", [n for n in MAIN_SCENARIOS if not n.startswith("external")])
def test_the_store_admits_only_the_functions_group_on_the_redis_port(name: str) -> None:
    _, rendered = scenario(name)
    ingress = rendered["Resources"]["StoreSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [(r["IpProtocol"], r["FromPort"], r["ToPort"], r["SourceSecurityGroupId"]) for r in ingress] == [
        ("tcp", 6379, 6379, {"Fn::GetAtt": ["StoreClientSecurityGroup", "GroupId"]})
    ]
    store = "ReplicationGroup" if name.startswith("elasticache") else "MemoryDBCluster"
    props = rendered["Resources"][store]["Properties"]
    assert props["SecurityGroupIds"] == [{"Fn::GetAtt": ["StoreSecurityGroup", "GroupId"]}]
    assert props["Port"] == 6379


@pytest.mark.parametrize("name", ["elasticache", "elasticache-edges"])
def test_elasticache_replication_group(name: str) -> None:
    overrides, rendered = scenario(name)
    res = rendered["Resources"]
    group = res["ReplicationGroup"]["Properties"]
    assert (group["Engine"], group["ClusterMode"], group["NumNodeGroups"]) == ("valkey", "disabled", 1)
    assert group["TransitEncryptionEnabled"] is True and group["AtRestEncryptionEnabled"] is True
    assert group["AuthToken"] == DYNAMIC_PASSWORD
    replicas = overrides.get("StoreReplicas", "1") != "0"
    assert group["MultiAZEnabled"] is replicas and group["AutomaticFailoverEnabled"] is replicas
    params = res["ElastiCacheParameterGroup"]["Properties"]
    family = {"8.2": "valkey8", "9.0": "valkey9"}[overrides.get("ElastiCacheEngineVersion", "8.2")]
    assert params["CacheParameterGroupFamily"] == family
    assert params["Properties"]["maxmemory-policy"] == "noeviction"
    small = overrides.get("ElastiCacheNodeType") == "cache.t4g.small"
    assert params["Properties"].get("reserved-memory-percent") == ("30" if small else None)
    assert group["CacheParameterGroupName"] == {"Ref": "ElastiCacheParameterGroup"}


@pytest.mark.parametrize("name", ["memorydb", "memorydb-own-subnets", "memorydb-edges"])
def test_memorydb_cluster(name: str) -> None:
    overrides, rendered = scenario(name)
    res = rendered["Resources"]
    cluster = res["MemoryDBCluster"]["Properties"]
    assert (cluster["Engine"], cluster["NumShards"], cluster["TLSEnabled"]) == ("valkey", 1, True)
    assert cluster["NumReplicasPerShard"] == {"Ref": "StoreReplicas"}
    assert cluster["ACLName"] == {"Ref": "MemoryDBAcl"}
    assert res["MemoryDBAcl"]["Properties"]["UserNames"] == [{"Ref": "MemoryDBUser"}]
    user = res["MemoryDBUser"]["Properties"]
    assert user["AuthenticationMode"] == {"Type": "password", "Passwords": [DYNAMIC_PASSWORD]}
    params = res["MemoryDBParameterGroup"]["Properties"]
    assert params["Family"] == "memorydb_valkey7"
    assert params["Parameters"] == {"maxmemory-policy": "noeviction", "search-enabled": "yes"}
    created = [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
    subnets = {"Ref": "SubnetIds"} if "SubnetIds" in overrides else created
    assert res["MemoryDBSubnetGroup"]["Properties"]["SubnetIds"] == subnets


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_secret_value_is_written_down(name: str) -> None:
    overrides, rendered = scenario(name)
    # Dynamic references to the store's secret appear only where the store takes its password.
    dynamic = {path for path, s in strings(rendered["Resources"]) if "{{resolve:" in s}
    expected = {
        "ElastiCache": {"/ReplicationGroup/Properties/AuthToken/Fn::Sub"},
        "MemoryDB": {"/MemoryDBUser/Properties/AuthenticationMode/Passwords/0/Fn::Sub"},
        "External": set(),
    }[mode_of(overrides)]
    assert dynamic == expected
    # The functions get ARNs (references), never a password or token.
    for function in FUNCTIONS:
        env = environment(rendered, function)
        for var, value in env.items():
            # Whole words: LLM_TOKENS_PER_MINUTE is a rate, not a token.
            if {"PASSWORD", "TOKEN", "SECRET"} & set(var.split("_")):
                assert var.endswith("_ARN") and isinstance(value, dict) and set(value) == {"Ref"}, var
        assert not any("resolve:" in s for _, s in strings(env))
    if mode_of(overrides) != "External":
        secret = rendered["Resources"]["StoreSecret"]["Properties"]
        assert "SecretString" not in secret and "GenerateSecretString" in secret


def test_the_generated_password_fits_elasticache_auth_tokens() -> None:
    _, rendered = scenario("elasticache")
    spec = rendered["Resources"]["StoreSecret"]["Properties"]["GenerateSecretString"]
    assert 16 <= spec["PasswordLength"] <= 128
    # Of the punctuation, AUTH tokens allow only these; every other mark must be excluded.
    allowed = set("!&#$^<>-")
    assert set(spec["ExcludeCharacters"]) == set(string.punctuation) - allowed
    assert spec.get("IncludeSpace", False) is False


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_functions_join_the_vpc_whenever_the_store_is_private(name: str) -> None:
    overrides, rendered = scenario(name)
    managed, own_subnets = mode_of(overrides) != "External", bool(overrides.get("SubnetIds"))
    client_group = {"Fn::GetAtt": ["StoreClientSecurityGroup", "GroupId"]}
    for function in FUNCTIONS:
        vpc = rendered["Resources"][function]["Properties"].get("VpcConfig")
        if not (managed or own_subnets):
            assert vpc is None, function
            continue
        assert vpc is not None, function
        if own_subnets:
            assert vpc["SubnetIds"] == {"Ref": "SubnetIds"}
        else:
            assert vpc["SubnetIds"] == [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
        groups = vpc["SecurityGroupIds"]
        if managed and overrides.get("SecurityGroupIds"):  # yours plus the one the store admits
            joined = groups["Fn::Split"][1]["Fn::Join"][1]
            assert joined == [client_group, {"Fn::Join": [",", {"Ref": "SecurityGroupIds"}]}]
        elif managed:
            assert groups == [client_group]
        else:
            assert groups == {"Ref": "SecurityGroupIds"}
        role = rendered["Resources"][f"{function}Role"]["Properties"]
        assert any("AWSLambdaVPCAccessExecutionRole" in str(arn) for arn in role["ManagedPolicyArns"])


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_functions_receive_the_store_connection(name: str) -> None:
    overrides, rendered = scenario(name)
    mode = mode_of(overrides)
    for function in FUNCTIONS:
        env = environment(rendered, function)
        assert env["VECTOR_BACKEND"] == ("auto" if mode == "External" else "search")
        if mode == "External":
            assert not {"REDIS_HOST", "REDIS_PORT", "REDIS_TLS", "REDIS_PASSWORD_SECRET_ARN"} & set(env)
            assert env.get("REDIS_SECRET_ARN", env.get("REDIS_URL")) is not None
            continue
        store, endpoint = {
            "ElastiCache": ("ReplicationGroup", "PrimaryEndPoint"),
            "MemoryDB": ("MemoryDBCluster", "ClusterEndpoint"),
        }[mode]
        assert env["REDIS_HOST"] == {"Fn::GetAtt": [store, f"{endpoint}.Address"]}
        assert env["REDIS_PORT"] == {"Fn::GetAtt": [store, f"{endpoint}.Port"]}
        assert env["REDIS_TLS"] == "true"
        assert env["REDIS_USERNAME"] == ("default" if mode == "ElastiCache" else {"Ref": "MemoryDBUser"})
        assert env["REDIS_PASSWORD_SECRET_ARN"] == STORE_SECRET
        assert not {"REDIS_URL", "REDIS_SECRET_ARN"} & set(env)


def _granted(rendered: dict[str, Any], function: str, action: str) -> list[Any]:
    """The resources the function's role may `action`: inline, managed, and role policies on it."""
    res = rendered["Resources"]
    role_name = f"{function}Role"
    role = res[role_name]["Properties"]
    documents = [p["PolicyDocument"] for p in role.get("Policies", [])]
    documents += [
        res[arn["Ref"]]["Properties"]["PolicyDocument"]
        for arn in role["ManagedPolicyArns"]
        if isinstance(arn, dict) and "Ref" in arn
    ]
    documents += [
        r["Properties"]["PolicyDocument"]
        for r in res.values()
        if r["Type"] == "AWS::IAM::RolePolicy" and r["Properties"]["RoleName"] == {"Ref": role_name}
    ]
    granted: list[Any] = []
    for doc in documents:
        for statement in doc["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if action in actions:
                resources = statement["Resource"]
                granted += resources if isinstance(resources, list) else [resources]
    return granted


def _secret_reads(rendered: dict[str, Any], function: str) -> list[Any]:
    """The resources of every secretsmanager:GetSecretValue the function's role is granted."""
    return _granted(rendered, function, "secretsmanager:GetSecretValue")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_functions_may_read_exactly_the_store_secret(name: str) -> None:
    overrides, rendered = scenario(name)
    mode = mode_of(overrides)
    store_secret = STORE_SECRET if mode != "External" else {"Ref": "RedisSecretArn"}
    for function in FUNCTIONS:
        reads = _secret_reads(rendered, function)
        if mode == "External" and "RedisSecretArn" not in overrides:
            assert store_secret not in reads
        else:
            assert store_secret in reads, function
        # Nothing broader: only the store's secret and, where configured, the OpenAI key's.
        assert all(r in (store_secret, OPENAI_SECRET) for r in reads), reads


def test_the_processor_receives_the_shared_rate_limits() -> None:
    """The LLM limits reach the processor (and no other function) from parameters whose default,
    0, means unlimited, and each names a setting memproc reads."""
    from memproc.settings import Settings

    _, rendered = scenario("external")
    limits = {
        "LLM_REQUESTS_PER_MINUTE": "LlmRequestsPerMinute",
        "LLM_TOKENS_PER_MINUTE": "LlmTokensPerMinute",
        "EMBEDDING_REQUESTS_PER_MINUTE": "EmbeddingRequestsPerMinute",
        "EMBEDDING_TOKENS_PER_MINUTE": "EmbeddingTokensPerMinute",
    }
    env = environment(rendered, "ProcessQueueFunction")
    parameters = translate()["Parameters"]
    for variable, parameter in limits.items():
        assert env[variable] == {"Ref": parameter}
        assert str(parameters[parameter]["Default"]) == "0"
        assert variable.lower() in Settings.model_fields
    for function in FUNCTIONS[:-1]:
        assert not set(limits) & set(environment(rendered, function))


# ---------------------------------------------------------------- API access (AuthMode)

AUTH_SCHEME = {"IAM": "AWS_IAM", "COGNITO": "CognitoAuthorizer", "API_KEY": "api_key"}
API_FUNCTIONS = ["StoreRawFunction", "QueryFunction", "CleanupFunction"]
USAGE_PLAN = {"MemoryApiUsagePlan", "MemoryApiApiKey", "MemoryApiUsagePlanKey"}
USER_POOL = {"UserPool", "UserPoolClient"}


def auth_scenario(auth: str, store: str = "elasticache") -> tuple[dict[str, Any], dict[str, Any]]:
    return scenario(store if auth == "iam" else f"{store}+{auth}")


def auth_mode(overrides: dict[str, Any]) -> str:
    return str(overrides.get("AuthMode", "IAM"))


def api_body(rendered: dict[str, Any]) -> dict[str, Any]:
    return dict(rendered["Resources"]["MemoryApi"]["Properties"]["Body"])


def test_language_extensions_run_before_sam_and_deploys_may_expand_them() -> None:
    assert source()["Transform"] == ["AWS::LanguageExtensions", "AWS::Serverless-2016-10-31"]
    deploy = tomllib.loads((ROOT / "samconfig.toml").read_text())["default"]["deploy"]["parameters"]
    assert "CAPABILITY_AUTO_EXPAND" in deploy["capabilities"].split()


@pytest.mark.parametrize("auth", list(AUTH_SCENARIOS))
def test_every_route_requires_the_auth_modes_credentials(auth: str) -> None:
    overrides, rendered = auth_scenario(auth)
    body = api_body(rendered)
    scheme = AUTH_SCHEME[auth_mode(overrides)]
    assert set(body["components"]["securitySchemes"]) == {scheme}
    operations = {
        (method.upper(), path): op for path, item in body["paths"].items() for method, op in item.items()
    }
    # Every route of template.yaml, erasure included, and nothing else is open.
    assert set(operations) == set(api_routes())
    assert ("DELETE", "/api/memory/{vectorstore_name}") in operations
    for key, op in operations.items():
        assert op["security"] == [{scheme: []}], key
        # API Gateway invokes the functions through their resource policies, never with the
        # caller's credentials (SAM's AWS_IAM default would need lambda:InvokeFunction of callers).
        assert "credentials" not in op["x-amazon-apigateway-integration"], key


@pytest.mark.parametrize("auth", list(AUTH_SCENARIOS))
def test_a_usage_plan_only_with_api_keys(auth: str) -> None:
    overrides, rendered = auth_scenario(auth)
    api_keys = auth_mode(overrides) == "API_KEY"
    res = rendered["Resources"]
    assert created(USAGE_PLAN, set(res)) is api_keys
    assert created({"ApiKeyId", "ApiUsagePlanId"}, set(rendered["Outputs"])) is api_keys
    if not api_keys:
        return
    plan = res["MemoryApiUsagePlan"]["Properties"]
    assert plan["ApiStages"] == [{"ApiId": {"Ref": "MemoryApi"}, "Stage": {"Ref": "MemoryApiStage"}}]
    assert plan["Throttle"] == {
        "RateLimit": {"Ref": "ApiThrottlingRateLimit"},
        "BurstLimit": {"Ref": "ApiThrottlingBurstLimit"},
    }
    quota = overrides.get("ApiQuotaLimit", "0") != "0"
    assert plan.get("Quota") == (
        {"Limit": {"Ref": "ApiQuotaLimit"}, "Period": {"Ref": "ApiQuotaPeriod"}} if quota else None
    )
    key = res["MemoryApiUsagePlanKey"]["Properties"]
    assert key["KeyId"] == {"Ref": "MemoryApiApiKey"} and key["UsagePlanId"] == {"Ref": "MemoryApiUsagePlan"}


@pytest.mark.parametrize("auth", list(AUTH_SCENARIOS))
def test_cognito_uses_the_given_user_pool_or_creates_one(auth: str) -> None:
    overrides, rendered = auth_scenario(auth)
    res = rendered["Resources"]
    cognito = auth_mode(overrides) == "COGNITO"
    create = cognito and not overrides.get("CognitoUserPoolArn")
    assert created(USER_POOL, set(res)) is create
    assert created({"UserPoolId", "UserPoolClientId"}, set(rendered["Outputs"])) is create
    assert ("AdminUserGroup" in res) is (create and overrides.get("AdminGroup", "admin") != "")
    if not cognito:
        return
    authorizer = api_body(rendered)["components"]["securitySchemes"]["CognitoAuthorizer"]
    assert authorizer["x-amazon-apigateway-authorizer"]["type"] == "cognito_user_pools"
    pool = {"Fn::GetAtt": ["UserPool", "Arn"]} if create else overrides["CognitoUserPoolArn"]
    assert authorizer["x-amazon-apigateway-authorizer"]["providerARNs"] == [pool]
    if create:
        props = res["UserPool"]["Properties"]
        # Only administrators create users and set their vectorstore: the client cannot write it.
        assert props["AdminCreateUserConfig"] == {"AllowAdminCreateUserOnly": True}
        assert [a["Name"] for a in props["Schema"]] == ["vectorstore"]
        client = res["UserPoolClient"]["Properties"]
        assert "custom:vectorstore" in client["ReadAttributes"]
        assert "custom:vectorstore" not in client["WriteAttributes"]
        assert client["GenerateSecret"] is False
        assert res["AdminUserGroup"]["Properties"]["GroupName"] == {"Ref": "AdminGroup"}


@pytest.mark.parametrize("auth", list(AUTH_SCENARIOS))
def test_the_api_functions_know_how_callers_are_identified(auth: str) -> None:
    _, rendered = auth_scenario(auth)
    for function in API_FUNCTIONS:
        env = environment(rendered, function)
        assert env["AUTH_MODE"] == {"Ref": "AuthMode"}
        assert env["TENANT_CLAIM"] == {"Ref": "TenantClaim"}
        assert env["ADMIN_GROUP"] == {"Ref": "AdminGroup"}


def _gateway_body(spec: dict[str, Any]) -> dict[str, Any]:
    """A gateway response's JSON body as API Gateway renders it (the message a JSON string)."""
    template = spec["responseTemplates"]["application/json"]
    return dict(json.loads(template.replace("$context.error.messageString", '"m"')))


@pytest.mark.parametrize("auth", list(AUTH_SCENARIOS))
def test_refused_credentials_answer_in_the_error_shape(auth: str) -> None:
    """What API Gateway answers itself (authorizer refusals, throttling, no route) is the body the
    handlers send: memproc's ErrorResponse, ``"success": false`` included, and nothing else."""
    overrides, rendered = auth_scenario(auth)
    responses = api_body(rendered)["x-amazon-apigateway-gateway-responses"]
    handlers = json.loads(
        ErrorResponse(error=ErrorBody(code="c", message="m")).model_dump_json(exclude_none=True)
    )
    bodies = {name: _gateway_body(spec) for name, spec in responses.items()}
    for name, body in bodies.items():
        assert body.keys() == handlers.keys() and body["success"] is False, name
        assert body["error"].keys() == handlers["error"].keys(), name
        assert ErrorResponse.model_validate(body).error.message, name
    codes = {name: body["error"]["code"] for name, body in bodies.items()}
    assert codes["UNAUTHORIZED"] == "unauthenticated" and codes["ACCESS_DENIED"] == "forbidden"
    assert codes["API_KEY"] == "invalid_api_key"
    assert codes["THROTTLED"] == "throttled" and codes["QUOTA_EXCEEDED"] == "quota_exceeded"
    # API Gateway's own statuses stay: 401 / 403 from the authorizers, 429 when throttled.
    for name in ("UNAUTHORIZED", "ACCESS_DENIED", "API_KEY", "THROTTLED", "QUOTA_EXCEEDED"):
        assert "statusCode" not in responses[name], name
    assert responses["THROTTLED"]["responseParameters"] == {"gatewayresponse.header.Retry-After": "'1'"}
    missing = responses["MISSING_AUTHENTICATION_TOKEN"]
    if auth_mode(overrides) == "IAM":  # also the answer to an unsigned request: API Gateway's 403
        assert codes["MISSING_AUTHENTICATION_TOKEN"] == "missing_authentication_token"
        assert "statusCode" not in missing
    else:
        assert codes["MISSING_AUTHENTICATION_TOKEN"] == "not_found" and missing["statusCode"] == "404"


@pytest.mark.parametrize(
    ("overrides", "broken"),
    [
        ({"CognitoUserPoolArn": USER_POOL_ARN}, "AuthMode=COGNITO only"),
        ({"AuthMode": "API_KEY", "CognitoUserPoolArn": USER_POOL_ARN}, "AuthMode=COGNITO only"),
        ({"AuthMode": "COGNITO", "TenantClaim": "custom:tenant"}, "own CognitoUserPoolArn"),
    ],
)
def test_rules_refuse_auth_misconfigurations(overrides: dict[str, Any], broken: str) -> None:
    assert any(broken in message for message in rules_violated(source(), overrides))


# -- the queue processor at scale ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_processor_may_invoke_only_itself_and_only_to_fan_out(name: str) -> None:
    overrides, rendered = scenario(name)
    fans_out = overrides.get("MaxProcessors", "4") != "1"
    own_arn = {"Fn::GetAtt": ["ProcessQueueFunction", "Arn"]}
    assert _granted(rendered, "ProcessQueueFunction", "lambda:InvokeFunction") == (
        [own_arn] if fans_out else []
    )
    for function in FUNCTIONS[:-1]:
        assert _granted(rendered, function, "lambda:InvokeFunction") == [], function


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_processor_limit_and_its_reserved_concurrency(name: str) -> None:
    overrides, rendered = scenario(name)
    props = rendered["Resources"]["ProcessQueueFunction"]["Properties"]
    assert props["Environment"]["Variables"]["MAX_PROCESSORS"] == {"Ref": "MaxProcessors"}
    reserved = props.get("ReservedConcurrentExecutions")
    # Optional: an account near its unreserved minimum (or a new one, quota 10) cannot reserve.
    assert reserved == (
        {"Ref": "MaxProcessors"} if overrides.get("ReserveProcessorConcurrency") == "true" else None
    )
    assert translate()["Parameters"]["ReserveProcessorConcurrency"]["Default"] == "false"


def _dashboard(rendered: dict[str, Any]) -> dict[str, Any]:
    """The dashboard body as CloudWatch parses it, every ${...} replaced by a number."""
    body, _ = rendered["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    return dict(json.loads(re.sub(r"\$\{[^}]+\}", "1", body)))


def test_the_dashboard_shows_every_processor_metric_by_name() -> None:
    from memproc.drain import DrainReport
    from memproc.fanout import FanOut
    from memproc.observability import drain_metrics

    _, rendered = scenario("elasticache")
    shown = {
        m[1]
        for w in _dashboard(rendered)["widgets"]
        for m in w["properties"].get("metrics", [])
        if isinstance(m[0], str) and m[0] in ("Memproc", ".")
    }
    published = {name for name, _, _ in drain_metrics(DrainReport(), FanOut(), events=True)}
    assert published <= shown, published - shown
    body, _ = rendered["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert "${BacklogAgeAlarm.Arn}" in body and "${BacklogAgeAlarmSeconds}" in body  # its state, its line


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_an_alarm_on_backlog_age_with_a_period_of_at_least_one_tick(name: str) -> None:
    overrides, rendered = scenario(name)
    alarm = rendered["Resources"]["BacklogAgeAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (
        "Memproc",
        "BacklogAgeSeconds",
        "Maximum",
    )
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "memproc"}]
    assert alarm["Threshold"] == {"Ref": "BacklogAgeAlarmSeconds"}
    tick = rendered["Mappings"]["ProcessingInterval"][overrides.get("ProcessingIntervalMinutes", "1")]
    assert alarm["Period"] == tick["AlarmPeriod"] >= tick["Seconds"]  # each period has a tick's data
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (3, 2)


def _statements(rendered: dict[str, Any], function: str) -> list[dict[str, Any]]:
    """Every statement of the function role's inline policies."""
    role = rendered["Resources"][f"{function}Role"]["Properties"]
    return [st for p in role.get("Policies", []) for st in p["PolicyDocument"]["Statement"]]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_events_go_to_the_named_bus_only_when_one_is_named(name: str) -> None:
    overrides, rendered = scenario(name)
    bus = overrides.get("EventBusName")
    for function in FUNCTIONS:
        puts = [st for st in _statements(rendered, function) if "events:PutEvents" in str(st["Action"])]
        env = environment(rendered, function)
        if bus and function == "ProcessQueueFunction":
            assert env["EVENT_BUS_NAME"] == {"Ref": "EventBusName"}
            [statement] = puts
            assert statement["Action"] == "events:PutEvents"
            arn = "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/${EventBusName}"
            assert statement["Resource"] == {"Fn::Sub": arn}
        else:
            assert "EVENT_BUS_NAME" not in env and puts == [], function
    assert ("EventsFailedAlarm" in rendered["Resources"]) == bool(bus)
