"""template.yaml as CloudFormation receives it, per deployment scenario.

``translate`` runs the real SAM translator (Globals merged into every function, policy lists turned
into IAM roles); ``render`` then evaluates the template's Conditions for one set of parameter values
and keeps what CloudFormation would create: conditional resources and outputs dropped, every
``Fn::If`` replaced by its chosen branch, ``AWS::NoValue`` removed. ``rules_violated`` evaluates the
``Rules`` section the same way.

``python -m tests.template_render DIR`` writes the translated template and one cfn-lint parameter
file per scenario into DIR, so ``make lint`` lints every scenario with the values that select it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from copy import deepcopy
from functools import cache
from pathlib import Path
from typing import Any

import boto3
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

from memproc_local.template import read_template as _read_template  # reads the short-form tags (!Ref...)
from tests.redis_server import ROOT

TEMPLATE = ROOT / "template.yaml"

_SUBNETS = ["subnet-0a1b2c3d4e5f60001", "subnet-0a1b2c3d4e5f60002"]
_OWN_NETWORK = {"SubnetIds": _SUBNETS, "SecurityGroupIds": ["sg-0a1b2c3d4e5f60000"]}
_VPC = {"VpcId": "vpc-0a1b2c3d4e5f60000"}
_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:memproc-AbCdEf"

# RedisProvisioning x (own subnets | none), then the other side of every remaining condition.
SCENARIOS: dict[str, dict[str, Any]] = {
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

_PSEUDO = {"AWS::Region": "us-east-1", "AWS::Partition": "aws", "AWS::AccountId": "123456789012"}


@cache
def translate() -> dict[str, Any]:
    """template.yaml through the SAM translator (local code paths swapped for S3 placeholders)."""
    doc = _read_template(TEMPLATE)
    for resource in doc["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            props["CodeUri"] = "s3://placeholder/code.zip"
        elif resource["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = "s3://placeholder/layer.zip"
    translator = Translator(None, Parser(), boto_session=boto3.Session(region_name="us-east-1"))
    return translator.translate(doc, parameter_values={}, get_managed_policy_map=dict)


def parameter_values(template: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``overrides``; CommaDelimitedList values as lists."""
    values: dict[str, Any] = {}
    for name, spec in template["Parameters"].items():
        value = overrides.get(name, spec.get("Default", ""))
        if spec["Type"] == "CommaDelimitedList" and isinstance(value, str):
            value = value.split(",")
        values[name] = value if isinstance(value, list) else str(value)
    unknown = set(overrides) - set(values)
    assert not unknown, f"not parameters of the template: {unknown}"
    return values


class _Evaluator:
    """The intrinsic functions of Conditions and Rules, over known parameter values."""

    def __init__(self, template: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        self.template = template
        self.params = {**_PSEUDO, **params}
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.value(self.template["Conditions"][name]))
        return self._conditions[name]

    def value(self, node: Any) -> Any:
        if not (isinstance(node, dict) and len(node) == 1):
            return node
        ((fn, arg),) = node.items()
        match fn:
            case "Ref":
                return self.params[arg]
            case "Condition":
                return self.condition(arg)
            case "Fn::Equals":
                left, right = (self.value(a) for a in arg)
                return str(left) == str(right)
            case "Fn::Not":
                return not self.value(arg[0])
            case "Fn::And":
                return all(self.value(a) for a in arg)
            case "Fn::Or":
                return any(self.value(a) for a in arg)
            case "Fn::Join":
                items = self.value(arg[1])
                return arg[0].join(str(self.value(i)) for i in items)
            case "Fn::Select":
                return self.value(arg[1])[int(self.value(arg[0]))]
            case "Fn::FindInMap":
                name, key, attr = (self.value(a) for a in arg)
                return self.template["Mappings"][name][key][attr]
            case "Fn::EachMemberEquals":
                return all(str(m) == str(self.value(arg[1])) for m in self.value(arg[0]))
            case _:
                return node


_DROP = object()  # what AWS::NoValue becomes until its parent removes it


def render(template: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """What CloudFormation creates from ``template`` with these parameter values."""
    ev = _Evaluator(template, parameter_values(template, overrides))

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
        if set(node) == {"Fn::FindInMap"}:
            return ev.value(node)
        return {k: v for k, v in ((k, walk(v)) for k, v in node.items()) if v is not _DROP}

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
    ev = _Evaluator(template, parameter_values(template, overrides))
    broken: list[str] = []
    for rule in template.get("Rules", {}).values():
        if "RuleCondition" in rule and not ev.value(rule["RuleCondition"]):
            continue
        broken += [a["AssertDescription"] for a in rule["Assertions"] if not ev.value(a["Assert"])]
    return broken


def main(out_dir: str) -> None:
    """The translated template and a cfn-lint parameter file per scenario, for ``make lint``."""
    logging.getLogger("samtranslator").setLevel(logging.ERROR)  # its feature-toggle chatter
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("params-*.json"):
        stale.unlink()
    (out / "template.json").write_text(json.dumps(translate(), indent=1))
    for name, overrides in SCENARIOS.items():
        entries = [{"ParameterKey": k, "ParameterValue": v} for k, v in overrides.items()]
        (out / f"params-{name}.json").write_text(json.dumps(entries, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
