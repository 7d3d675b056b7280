"""Read the SAM template the way SAM does: routes, CORS and API Gateway's own error responses.

PyYAML with CloudFormation's short-form tags (``!Ref``, ``!Sub``...) turned into their long form;
``Globals.Function`` fills in what a function leaves out. ``GatewayResponses`` are rendered here so
the local server answers its own errors (413, unknown route, refused credentials) with the
production bodies; where the template chooses one with ``Fn::If`` (by AuthMode), :class:`Conditions`
decides it for the parameter values the server runs with.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from memproc_local.routing import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_SECONDS, Route

logger = logging.getLogger(__name__)


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that reads CloudFormation short-form tags (``!Ref``...) instead of failing on them."""


def _construct_cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    """Turn ``!Name value`` into the long form CloudFormation itself uses (``{"Fn::Name": value}``)."""
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _construct_cfn_tag)


def read_template(template_path: Path) -> dict[str, Any]:
    """Parse a SAM/CloudFormation template (YAML or JSON) with intrinsic tags tolerated."""
    with Path(template_path).open(encoding="utf-8") as fh:
        doc = yaml.load(fh, Loader=_CfnLoader)  # a SafeLoader subclass
    if not isinstance(doc, dict):
        raise ValueError(f"{template_path}: not a CloudFormation template (top level is not a mapping)")
    return doc


# Pseudo parameters, as a deployment in us-east-1 of account 123456789012 would see them.
PSEUDO_PARAMETERS = {"AWS::Region": "us-east-1", "AWS::Partition": "aws", "AWS::AccountId": "123456789012"}


def parameter_values(template: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The template's parameter defaults overlaid with ``overrides``; CommaDelimitedList values as lists."""
    values: dict[str, Any] = {}
    for name, spec in (template.get("Parameters") or {}).items():
        value = overrides.get(name, spec.get("Default", ""))
        if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
            value = value.split(",")
        values[name] = value if isinstance(value, list) else str(value)
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"not parameters of the template: {sorted(unknown)}")
    return values


class Conditions:
    """The template's Conditions (and the intrinsic functions of Conditions and Rules), evaluated
    over known parameter values (:func:`parameter_values`)."""

    def __init__(self, template: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        self.template = template
        self.params = {**PSEUDO_PARAMETERS, **params}
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


def chosen(node: Any, conditions: Conditions) -> Any:
    """A value that is an ``Fn::If`` (of ``Fn::If``...) as its chosen branch, the way
    ``AWS::LanguageExtensions`` hands it to SAM. An ``Fn::If`` inside that branch stays."""
    while isinstance(node, dict) and set(node) == {"Fn::If"}:
        name, yes, no = node["Fn::If"]
        node = yes if conditions.condition(name) else no
    return node


def _resolve_number(value: Any, parameters: Mapping[str, Any], default: float) -> float:
    """A literal number, or ``!Ref Param`` resolved to the parameter's Default; else ``default``."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        param = parameters.get(value["Ref"])
        value = param.get("Default") if isinstance(param, dict) else None
    if isinstance(value, bool):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


def _normalise_resource(path: str) -> str:
    """``/a/b/`` and ``a/b`` both mean resource ``/a/b`` to API Gateway."""
    path = "/" + path.strip().strip("/")
    return path


def load_routes(template_path: Path) -> list[Route]:
    """Every ``Api`` event of every ``AWS::Serverless::Function``, in template order.

    CodeUri, Handler, Timeout and MemorySize fall back to ``Globals.Function`` as in SAM. Other
    event types (schedules, queues, ``HttpApi``) are ignored; functions whose code is not a local
    directory (S3 location, inline code, images) are skipped with a warning.
    """
    doc = read_template(template_path)
    return routes_from_template(doc, str(template_path))


def routes_from_template(doc: Mapping[str, Any], source: str) -> list[Route]:
    """The route extraction of :func:`load_routes`, on an already parsed template."""
    glob = doc.get("Globals")
    globals_fn = glob.get("Function") if isinstance(glob, dict) else None
    globals_fn = globals_fn if isinstance(globals_fn, dict) else {}
    parameters = doc.get("Parameters") or {}
    resources = doc.get("Resources") or {}
    routes: list[Route] = []
    seen: dict[tuple[str, str], str] = {}
    for logical_id, resource in resources.items():
        if not isinstance(resource, dict) or resource.get("Type") != "AWS::Serverless::Function":
            continue
        props = resource.get("Properties")
        events = props.get("Events") if isinstance(props, dict) else None
        if not isinstance(props, dict) or not isinstance(events, dict):
            continue
        api_events = [
            ev["Properties"]
            for ev in events.values()
            if isinstance(ev, dict) and ev.get("Type") == "Api" and isinstance(ev.get("Properties"), dict)
        ]
        if not api_events:
            continue
        code_uri = props.get("CodeUri", globals_fn.get("CodeUri"))
        handler = props.get("Handler", globals_fn.get("Handler"))
        if not isinstance(code_uri, str) or not isinstance(handler, str):
            logger.warning(
                "%s: %s has no local CodeUri/Handler; its API routes are skipped", source, logical_id
            )
            continue
        timeout = _resolve_number(
            props.get("Timeout", globals_fn.get("Timeout")), parameters, DEFAULT_TIMEOUT_SECONDS
        )
        memory = int(
            _resolve_number(
                props.get("MemorySize", globals_fn.get("MemorySize")), parameters, DEFAULT_MEMORY_MB
            )
        )
        for ev in api_events:
            path, method = ev.get("Path"), ev.get("Method")
            if not isinstance(path, str) or not isinstance(method, str):
                logger.warning("%s: %s has an Api event without literal Path/Method", source, logical_id)
                continue
            method = method.strip().upper()
            method = "ANY" if method in ("ANY", "X-AMAZON-APIGATEWAY-ANY-METHOD") else method
            resource_path = _normalise_resource(path)
            key = (method, resource_path)
            if key in seen:
                logger.warning(
                    "%s: %s %s is declared by both %s and %s; %s wins",
                    source, method, resource_path, seen[key], logical_id, seen[key],
                )  # fmt: skip
                continue
            seen[key] = logical_id
            routes.append(
                Route(
                    method=method,
                    resource=resource_path,
                    function=str(logical_id),
                    code_uri=Path(code_uri),
                    handler=handler,
                    timeout=timeout,
                    memory_size=memory,
                )
            )
    return routes


def _strip_quotes(value: Any) -> str | None:
    """SAM's Cors values are quoted strings (``"'*'"``); anything else (an intrinsic) is unusable here."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        value = value[1:-1]
    return value


def cors_from_template(doc: Mapping[str, Any]) -> dict[str, str] | None:
    """The CORS preflight headers API Gateway would answer OPTIONS with (SAM ``Cors`` property)."""
    candidates: list[Any] = []
    glob = doc.get("Globals")
    if isinstance(glob, dict) and isinstance(glob.get("Api"), dict):
        candidates.append(glob["Api"].get("Cors"))
    for resource in (doc.get("Resources") or {}).values():
        if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::Api":
            candidates.append((resource.get("Properties") or {}).get("Cors"))
    for cors in candidates:
        if isinstance(cors, str):
            cors = {"AllowOrigin": cors}
        if not isinstance(cors, dict):
            continue
        origin = _strip_quotes(cors.get("AllowOrigin"))
        if not origin:
            continue
        headers = {"Access-Control-Allow-Origin": origin}
        for key, header in (
            ("AllowMethods", "Access-Control-Allow-Methods"),
            ("AllowHeaders", "Access-Control-Allow-Headers"),
            ("MaxAge", "Access-Control-Max-Age"),
        ):
            value = cors.get(key)
            text = (
                str(value) if isinstance(value, int) and not isinstance(value, bool) else _strip_quotes(value)
            )
            if text:
                headers[header] = text
        if cors.get("AllowCredentials") is True:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers
    return None


def gateway_responses_from_template(
    doc: Mapping[str, Any], parameters: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """``GatewayResponses`` of the template's ``AWS::Serverless::Api`` (the first that has any),
    each one chosen for these parameter values (defaults for the rest) where it is an ``Fn::If``.

    API Gateway renders its own errors (413, unknown route...) from these, so the local server
    does too, and clients see the same error bodies locally as in production.
    """
    for resource in (doc.get("Resources") or {}).values():
        if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::Api":
            responses = (resource.get("Properties") or {}).get("GatewayResponses")
            if isinstance(responses, dict) and responses:
                conditions = Conditions(doc, parameter_values(doc, parameters or {}))
                picked = {str(k): chosen(v, conditions) for k, v in responses.items()}
                return {k: v for k, v in picked.items() if isinstance(v, dict)}
    return {}


_VTL_REF = re.compile(r"\$\{context\.(\w+(?:\.\w+)*)\}|\$context\.(\w+(?:\.\w+)*)")


def render_gateway_response(
    spec: Mapping[str, Any], response_type: str, default_status: int, message: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body of one gateway response, with the ``$context`` values it may use."""
    request_id = str(uuid.uuid4())
    values = {
        "error.messageString": json.dumps(message),
        "error.message": message,
        "error.responseType": response_type,
        "requestId": request_id,
        "extendedRequestId": request_id,
    }
    status = default_status
    raw_status = spec.get("StatusCode")
    if isinstance(raw_status, int | str) and str(raw_status).isdigit():
        status = int(raw_status)
    templates = spec.get("ResponseTemplates") or {}
    template = templates.get("application/json") if isinstance(templates, dict) else None
    if isinstance(template, str):
        body = _VTL_REF.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), template)
    else:
        body = json.dumps({"message": message})
    headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
    params = spec.get("ResponseParameters") or {}
    for name, value in ((params.get("Headers") or {}) if isinstance(params, dict) else {}).items():
        literal = _strip_quotes(value)
        if literal is not None and str(value).strip().startswith("'"):
            headers.append((str(name), literal))
    headers.append(("x-amzn-ErrorType", response_type))
    return status, headers, body.encode("utf-8")
