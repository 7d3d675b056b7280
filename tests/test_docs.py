"""What the README promises about the tooling stays true: its make-target list is `make help`."""

from __future__ import annotations

import re
import subprocess

from tests.redis_server import ROOT


def test_the_readme_lists_the_make_targets_make_help_shows() -> None:
    help_run = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True)
    shown = help_run.stdout
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = re.search(r"\$ make help\n(.*?)```", readme, re.S)
    assert listed is not None and listed.group(1) == shown
