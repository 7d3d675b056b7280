"""The Lambda layer stays free of local-only code: everything under layers/common/ is built into
CommonLayer, while the dev server, the CLI and their dependencies live in local/memproc_local.

Read statically (no import), so the check is fast and sees imports inside functions too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.redis_server import ROOT

LAYER = ROOT / "layers" / "common"
LOCAL_ONLY_MODULES = {"yaml", "werkzeug", "argparse", "memproc_local"}
LOCAL_ONLY_REQUIREMENTS = {"pyyaml", "werkzeug"}


def _imported_modules(source: Path) -> set[str]:
    """Top-level names of every module a file imports, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), filename=str(source))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_layer_library_imports_nothing_local_only() -> None:
    sources = sorted((LAYER / "memproc").rglob("*.py"))
    assert sources, f"no Python sources under {LAYER / 'memproc'}"
    offenders = {}
    for path in sources:
        if found := _imported_modules(path) & LOCAL_ONLY_MODULES:
            offenders[str(path.relative_to(ROOT))] = sorted(found)
    assert offenders == {}, "the layer's library imports local-only modules"


def test_layer_holds_only_the_library() -> None:
    assert not (LAYER / "memproc_local").exists()
    assert (ROOT / "local" / "memproc_local" / "server.py").is_file()


def test_layer_requirements_have_no_local_only_packages() -> None:
    lines = (LAYER / "requirements.txt").read_text(encoding="utf-8").splitlines()
    names = {
        re.split(r"[\s\[<>=!~;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
        for line in lines
        if line.strip() and not line.strip().startswith("#")
    }
    assert names, "layers/common/requirements.txt lists nothing"
    assert names & LOCAL_ONLY_REQUIREMENTS == set()
