"""``make openapi``: one OpenAPI document for the three API functions, from their resolvers.

Each function that template.yaml routes API events to is imported as Lambda would import it, and
its resolver describes its own routes (``memproc.api.Resolver.documented_schema``: Powertools'
schema, the query-string models and the error shape). Powertools' ``OpenAPIMerge`` joins them
(a route described twice is an error), and the document gets its title, version and the security
schemes of every AuthMode. It is written to ``docs/openapi.json`` (to read) and into the layer's
package (``memproc/openapi.json``, which the query function serves); ``--check`` only compares.

    python -m memproc_local.openapi [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler.openapi.merge import OpenAPIMerge

from memproc import openapi
from memproc_local.handlers import load_module
from memproc_local.template import load_routes

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = (ROOT / "docs" / "openapi.json", ROOT / "layers" / "common" / "memproc" / "openapi.json")
OPENAPI_VERSION = "3.1.0"
DESCRIPTION = """Asynchronous memory processing for chat applications: queue a whole chat session in one
call, read the memories, summaries and transcripts a scheduled processor makes of it, and erase them.

Every route needs the deployment's credentials (AuthMode): a SigV4-signed request (IAM), a Cognito ID
token whose custom:vectorstore claim names the path's vectorstore (COGNITO; members of the admin group
may use any), or an API key (API_KEY: throttling and quotas, not authorisation). Errors are
{"success": false, "error": {"code", "message"}} with a stable code; bad input is a 4xx and changes
nothing."""


def _project_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text(encoding="utf-8").splitlines():
        if line.startswith("version = "):
            return line.split("=", 1)[1].strip().strip('"')
    return "0"


def build(template: Path = ROOT / "template.yaml") -> dict[str, Any]:
    """The merged document of every function with API routes in ``template``."""
    routes = load_routes(template)
    merge = OpenAPIMerge(
        title="memproc memory API",
        version=_project_version(),
        openapi_version=OPENAPI_VERSION,
        description=DESCRIPTION,
        on_conflict="error",
    )
    seen: set[str] = set()
    for route in routes:
        if route.function in seen:
            continue
        seen.add(route.function)
        merge.add_schema(load_module(route, ROOT).app.documented_schema())
    doc = merge.get_openapi_schema()
    doc.pop("servers", None)  # the query function sets the caller's URL when it serves the document
    doc.setdefault("components", {})["securitySchemes"] = openapi.SECURITY_SCHEMES
    doc["security"] = [{name: []} for name in openapi.SECURITY_SCHEMES]  # one of them, per AuthMode
    return doc


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m memproc_local.openapi", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if a written document is out of date")
    args = parser.parse_args(argv)
    text = render(build())
    stale = [p for p in OUTPUTS if not p.is_file() or p.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run make openapi", file=sys.stderr)
        return 1 if stale else 0
    for path in OUTPUTS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
