"""template.yaml as CloudFormation receives it, per deployment scenario.

``translate`` does what the template's two transforms do for one set of parameter values: first
``AWS::LanguageExtensions``, which resolves the ``Fn::If`` SAM cannot take (the API's ``Auth`` and
``GatewayResponses`` follow AuthMode), then the real SAM translator (Globals merged into every
function, policy lists turned into IAM roles, the API's authorizers). ``render`` then evaluates the
template's Conditions and keeps what CloudFormation would create: conditional resources and outputs
dropped, every ``Fn::If`` replaced by its chosen branch, ``AWS::NoValue`` removed.
``rules_violated`` evaluates the ``Rules`` section the same way.

(LanguageExtensions resolves every ``Fn::If`` it can; resolving here only those in the API's
``Auth`` and ``GatewayResponses``, and leaving the others to CloudFormation, which picks the same
branches, keeps one translation per AuthMode variant, so cfn-lint still checks each one against
every storage scenario.)

``python -m tests.template_render DIR`` writes, per translation, the translated template and one
cfn-lint parameter file per scenario it serves into ``DIR/<variant>/``, so ``make lint`` lints every
AuthMode x deployment scenario with the values that select it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from collections.abc import Mapping
from copy import deepcopy
from functools import cache
from pathlib import Path
from typing import Any

import boto3
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

from memproc_local.template import Conditions, chosen, parameter_values
from memproc_local.template import read_template as _read_template  # reads the short-form tags (!Ref...)
from tests.redis_server import ROOT

TEMPLATE = ROOT / "template.yaml"

_SUBNETS = ["subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002"]
_OWN_NETWORK = {"SubnetIds": _SUBNETS, "SecurityGroupIds": ["sg-0a1b2c3d4e5f60000"]}
_VPC = {"VpcId": "vpc-0a1b2c3d4e5f60000"}
_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:memproc-AbCdEf"

# RedisProvisioning x (own subnets | none), then the other side of every remaining condition.
STORE_SCENARIOS: dict[str, dict[str, Any]] = {
    "elasticache": {"RedisProvisioning": "ElastiCache"},
    "elasticache-own-subnets": {"RedisProvisioning": "ElastiCache", **_OWN_NETWORK, **_VPC},
    "memorydb": {"RedisProvisioning": "MemoryDB"},
    "memorydb-own-subnets": {"RedisProvisioning": "MemoryDB", "SubnetIds": _SUBNETS, **_VPC},
    "external": {"RedisProvisioning": "External", "RedisSecretArn": _SECRET_ARN},
    "external-own-subnets": {
        "RedisProvisioning": "External",
        "RedisUrl": "rediss://r.example:6379",
        **_OWN_NETWORK,
    },
    "elasticache-edges": {
        "RedisProvisioning": "ElastiCache",
        "StoreReplicas": "0",
        "ElastiCacheNodeType": "cache.t4g.small",
        "ElastiCacheEngineVersion": "9.0",
        "MaxProcessors": "1",
        "ProcessingIntervalMinutes": "60",
    },
    "memorydb-edges": {"RedisProvisioning": "MemoryDB", "StoreReplicas": "0", "MemoryDBEngineVersion": "7.3"},
    "external-options": {
        "RedisProvisioning": "External",
        "RedisSecretArn": _SECRET_ARN,
        "OpenAISecretArn": _SECRET_ARN,
        "OpenAIBaseUrl": "https://llm.example/v1",
        "MaxProcessors": "2",
        "ReserveProcessorConcurrency": "true",
        "AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:alarms",
        "ApiLoggingLevel": "INFO",
        "ProcessingIntervalMinutes": "5",
        "EventBusName": "memproc-events",
    },
}

USER_POOL_ARN = "arn:aws:cognito-idp:us-east-1:123456789012:userpool/us-east-1_AbCdEfGhI"
# Each AuthMode, and the other side of the conditions that come with it.
AUTH_SCENARIOS: dict[str, dict[str, Any]] = {
    "iam": {},  # the default
    "cognito": {"AuthMode": "COGNITO"},  # a user pool created by the template
    "cognito-own-pool": {
        "AuthMode": "COGNITO",
        "CognitoUserPoolArn": USER_POOL_ARN,
        "TenantClaim": "custom:tenant",
        "AdminGroup": "",
    },
    "api-key": {"AuthMode": "API_KEY"},
    "api-key-quota": {"AuthMode": "API_KEY", "ApiQuotaLimit": "100000", "ApiQuotaPeriod": "DAY"},
}

# Every AuthMode variant with every storage scenario: what make lint checks.
SCENARIOS: dict[str, dict[str, Any]] = {
    (name if auth == "iam" else f"{name}+{auth}"): {**store, **auth_values}
    for auth, auth_values in AUTH_SCENARIOS.items()
    for name, store in STORE_SCENARIOS.items()
}


def source() -> dict[str, Any]:
    """template.yaml as written (short-form tags in their long form); a copy to change freely."""
    return deepcopy(_source())


@cache
def _source() -> dict[str, Any]:
    return _read_template(TEMPLATE)


def _refs(node: Any, doc: Mapping[str, Any], found: set[str]) -> set[str]:
    """The parameters ``node`` depends on: its Refs, its Fn::Sub variables, and those of the
    Conditions its Fn::If and Condition functions test (transitively)."""
    if isinstance(node, dict):
        for fn, arg in node.items():
            if fn == "Ref" and isinstance(arg, str) and arg in doc["Parameters"]:
                found.add(arg)
            elif fn == "Fn::Sub" and isinstance(arg, str):
                found.update(p for p in re.findall(r"\$\{([\w:]+)\}", arg) if p in doc["Parameters"])
            elif fn == "Fn::If" and isinstance(arg, list):
                _refs(doc["Conditions"][arg[0]], doc, found)
            elif fn == "Condition" and isinstance(arg, str):
                _refs(doc["Conditions"][arg], doc, found)
            _refs(arg, doc, found)
    elif isinstance(node, list):
        for item in node:
            _refs(item, doc, found)
    return found


# What SAM reads as literals, so AWS::LanguageExtensions must have resolved their Fn::If.
_LITERAL_API_PROPERTIES = ("Auth", "GatewayResponses")


def _literal_api_properties(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        resource.get("Properties", {})
        for resource in doc["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Api"
    ]


def variant(overrides: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Which translation serves these parameter values: the values of what the API's Auth and
    GatewayResponses depend on (they follow AuthMode; SAM also inlines the Refs in Auth)."""
    doc = source()
    names: set[str] = set()
    for props in _literal_api_properties(doc):
        for prop in _LITERAL_API_PROPERTIES:
            _refs(props.get(prop), doc, names)
    values = parameter_values(doc, overrides)
    return tuple((name, str(values[name])) for name in sorted(names))


def translate(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """template.yaml through both transforms for these parameter values (default: the defaults)."""
    return _translate(variant(overrides or {}))


@cache
def _translate(api_values: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    doc = source()
    values = parameter_values(doc, dict(api_values))
    ev = Conditions(doc, values)
    for resource in doc["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            props["CodeUri"] = "s3://placeholder/code.zip"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = "s3://placeholder/layer.zip"
        elif resource["Type"] == "AWS::Serverless::Api":  # what AWS::LanguageExtensions resolves
            if "Auth" in props:
                props["Auth"] = chosen(props["Auth"], ev)
            responses = props.get("GatewayResponses") or {}
            props["GatewayResponses"] = {name: chosen(spec, ev) for name, spec in responses.items()}
    translator = Translator(None, Parser(), boto_session=boto3.Session(region_name="us-east-1"))
    return translator.translate(doc, parameter_values=values, get_managed_policy_map=dict)


_DROP = object()  # what AWS::NoValue becomes until its parent removes it


def _choose_branches(node: Any, ev: Conditions, *, find_in_map: bool = False) -> Any:
    """``node`` with every Fn::If replaced by its chosen branch and AWS::NoValue removed."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (walk(i) for i in node) if v is not _DROP]
        if not isinstance(node, dict):
            return node
        if node == {"Ref": "AWS::NoValue"}:
            return _DROP
        if set(node) == {"Fn::If"}:
            name, yes, no = node["Fn::If"]
            return walk(yes if ev.condition(name) else no)
        if find_in_map and set(node) == {"Fn::FindInMap"}:
            return ev.value(node)
        return {k: v for k, v in ((k, walk(v)) for k, v in node.items()) if v is not _DROP}

    return walk(node)


def render(template: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """What CloudFormation creates from ``template`` with these parameter values."""
    ev = Conditions(template, parameter_values(template, overrides))

    def walk(node: Any) -> Any:
        return _choose_branches(node, ev, find_in_map=True)

    out = deepcopy(dict(template))
    for section in ("Resources", "Outputs"):
        out[section] = {
            name: walk(body)
            for name, body in template.get(section, {}).items()
            if "Condition" not in body or ev.condition(body["Condition"])
        }
    out["Conditions"] = {name: ev.condition(name) for name in template["Conditions"]}
    return out


def rules_violated(template: Mapping[str, Any], overrides: Mapping[str, Any]) -> list[str]:
    """The AssertDescriptions of the Rules these parameter values break (deploy would refuse them)."""
    ev = Conditions(template, parameter_values(template, overrides))
    broken: list[str] = []
    for rule in template.get("Rules", {}).values():
        if "RuleCondition" in rule and not ev.value(rule["RuleCondition"]):
            continue
        broken += [a["AssertDescription"] for a in rule["Assertions"] if not ev.value(a["Assert"])]
    return broken


def main(out_dir: str) -> None:
    """Per translation variant, the translated template and a cfn-lint parameter file per scenario
    it serves (``DIR/<n>/``), for ``make lint``."""
    logging.getLogger("samtranslator").setLevel(logging.ERROR)  # its feature-toggle chatter
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    folders: dict[tuple[tuple[str, str], ...], Path] = {}
    for name, overrides in SCENARIOS.items():
        key = variant(overrides)
        if key not in folders:
            folders[key] = out / f"variant-{len(folders) + 1}"
            folders[key].mkdir(parents=True)
            (folders[key] / "template.json").write_text(json.dumps(translate(overrides), indent=1))
            (folders[key] / "variant.txt").write_text(json.dumps(dict(key), indent=1) + "\n")
        entries = [{"ParameterKey": k, "ParameterValue": v} for k, v in overrides.items()]
        (folders[key] / f"params-{name}.json").write_text(json.dumps(entries, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
