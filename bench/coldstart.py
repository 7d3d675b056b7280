"""Section 4, cold start: import time of each function's handler module in fresh processes (with and
without a bytecode cache), import + first invocation, the heaviest imports, and the layer's size."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    Config,
    FakeLLM,
    SectionResult,
    Target,
    configure_env,
    fresh_redis,
    ms,
    say,
    summarize,
    table,
)

FUNCTIONS = ("store_raw", "process_queue", "query", "cleanup")

# Runs in a fresh interpreter: the clock starts after start-up, right before the handler module is
# imported the way Lambda does it (the function's directory on sys.path, module "app").
CHILD = r"""
import json, os, sys, time
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["dir"])
t0 = time.perf_counter()
import app
t1 = time.perf_counter()
out = {"import": t1 - t0, "has_handler": callable(getattr(app, "lambda_handler", None))}
if spec.get("event") is not None and out["has_handler"]:
    class Context:
        function_name = spec["function"]
        function_version = "$LATEST"
        memory_limit_in_mb = 512
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:" + spec["function"]
        aws_request_id = "bench-cold-start"
        log_group_name = "/aws/lambda/" + spec["function"]
        log_stream_name = "bench"
        _deadline = time.monotonic() + 60
        def get_remaining_time_in_millis(self):
            return int((self._deadline - time.monotonic()) * 1000)
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    os.dup2(devnull, 1)  # the handler's JSON logs / EMF metrics
    t2 = time.perf_counter()
    result = app.lambda_handler(spec["event"], Context())
    t3 = time.perf_counter()
    os.dup2(saved, 1)
    out["first_invocation"] = t3 - t2
    out["status"] = result.get("statusCode") if isinstance(result, dict) else None
    out["modules"] = len(sys.modules)
print(json.dumps(out))
"""


def _child(
    function: str, *, event: Any = None, pycache: str | None = None, importtime: bool = False
) -> tuple[dict[str, Any], str]:
    spec = {"dir": str(ROOT / "functions" / function), "function": function, "event": event}
    args = [sys.executable]
    if pycache:
        args += ["-X", f"pycache_prefix={pycache}"]
    if importtime:
        args += ["-X", "importtime"]
    out = subprocess.run(
        [*args, "-c", CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{function}: handler import failed: {out.stderr[-1500:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1])), out.stderr


def _events() -> dict[str, Any]:
    """One realistic event per function: API Gateway REST events from template.yaml's routes, the
    schedules' inputs for the scheduled ones."""
    from memproc_local.events import build_event
    from memproc_local.template import load_routes
    from tests.api_client import _table

    routes = load_routes(ROOT / "template.yaml")

    def api(method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        match = _table().match(method, path)
        assert match.route is not None, path
        return build_event(
            match.route, method, path, "", {"content-type": "application/json"}, body, match.path_params
        )

    del routes
    schedule = {"source": "memproc.schedule", "detail-type": "Scheduled Event"}
    return {
        "store_raw": api(
            "POST",
            "/api/memory/coldstart/store_raw",
            json.dumps({"session_data": "user: I live in Porto and I prefer green tea."}).encode(),
        ),
        "process_queue": {**schedule, "detail": {"task": "process_queue"}},
        "query": api("GET", "/api/memory/coldstart/stats"),
        "cleanup": {**schedule, "detail": {"task": "cleanup"}},
    }


def _importtime_breakdown(stderr: str) -> list[tuple[str, float]]:
    """Self import time per top-level package (ms), largest first."""
    per: dict[str, float] = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)", line)
        if m:
            name = m.group(3).split(".")[0]
            per[name] = per.get(name, 0.0) + int(m.group(1)) / 1000
    return sorted(per.items(), key=lambda kv: kv[1], reverse=True)


def _tree_bytes(path: Path) -> tuple[int, dict[str, int]]:
    """Apparent size in bytes (no __pycache__), total and per top-level entry of the package dir."""
    total = 0
    per: Counter[str] = Counter()
    base = path / "python" if (path / "python").is_dir() else path
    for f in path.rglob("*"):
        if f.is_file() and "__pycache__" not in f.parts:
            size = f.stat().st_size
            total += size
            rel = f.relative_to(base).parts if f.is_relative_to(base) else f.relative_to(path).parts
            name = re.sub(r"-[\d.]+(\.post\d+)?\.dist-info$", " (dist-info)", rel[0])
            per[name.split(" ")[0] if name.endswith("(dist-info)") else name] += size
    return total, dict(per)


def _zip_bytes(path: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "layer.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(path.rglob("*")):
                if f.is_file() and "__pycache__" not in f.parts:
                    z.write(f, f.relative_to(path))
        return target.stat().st_size


def _layer() -> dict[str, Any]:
    """The CommonLayer as `sam build` makes it: `pip install --target` of the layer's requirements
    (cached per requirements file) plus the memproc package of this checkout. A `.aws-sam` build, if
    one exists, is measured too as a cross-check."""
    reqs = ROOT / "layers/common/requirements.txt"
    digest = hashlib.sha256(reqs.read_bytes()).hexdigest()[:12]
    cache = (
        Path(os.environ.get("MEMPROC_CACHE", Path.home() / ".cache" / "memproc")) / f"bench-layer-{digest}"
    )
    if not (cache / ".complete").exists():
        say(f"  cold start: pip install --target {cache} (the layer's requirements; cached for later runs)")
        shutil.rmtree(cache, ignore_errors=True)
        pip = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-compile",
            "--target",
            str(cache),
            "-r",
            str(reqs),
        ]
        out = subprocess.run(pip, capture_output=True, text=True, cwd=ROOT, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"pip install --target failed: {out.stderr[-2000:]}")
        (cache / ".complete").touch()
    path = Path(tempfile.mkdtemp(prefix="memproc-layer-"))
    try:
        shutil.copytree(
            cache, path / "python", dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete")
        )
        shutil.copytree(
            ROOT / "layers/common/memproc",
            path / "python" / "memproc",
            ignore=shutil.ignore_patterns("__pycache__"),
            dirs_exist_ok=True,
        )
        total, per = _tree_bytes(path)
        zipped = _zip_bytes(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)
    result: dict[str, Any] = {
        "source": "`pip install --target` of `layers/common/requirements.txt` + `layers/common/memproc`",
        "bytes": total,
        "zip_bytes": zipped,
        "top": sorted(per.items(), key=lambda kv: kv[1], reverse=True)[:10],
    }
    built = ROOT / ".aws-sam" / "build" / "CommonLayer"
    if built.is_dir():
        result["sam_build_bytes"] = _tree_bytes(built)[0]
    return result


def run(cfg: Config) -> SectionResult:
    started = time.monotonic()
    runs = 10
    nocache_runs = cfg.pick(3, 10)
    invoke_runs = cfg.pick(5, 10)
    data: dict[str, Any] = {
        "runs": runs,
        "nocache_runs": nocache_runs,
        "invoke_runs": invoke_runs,
        "functions": {},
    }
    with fresh_redis() as server, FakeLLM() as fake:
        configure_env(server.url, fake.base_url, EMBEDDING_DIMENSIONS="256")
        os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "memproc")
        events = _events()
        for fn in FUNCTIONS:
            first, _ = _child(fn)  # writes the bytecode cache
            if not first["has_handler"]:
                data["functions"][fn] = {"has_handler": False}
                say(f"  cold start: {fn}: no lambda_handler yet, skipped")
                continue
            imports = [_child(fn)[0]["import"] for _ in range(runs)]
            nocache = []
            for _ in range(nocache_runs):
                with tempfile.TemporaryDirectory(prefix="memproc-pyc-") as tmp:
                    nocache.append(_child(fn, pycache=tmp)[0]["import"])
            invoked = [_child(fn, event=events[fn])[0] for _ in range(invoke_runs)]
            _, stderr = _child(fn, importtime=True)
            entry: dict[str, Any] = {
                "has_handler": True,
                "import": summarize(imports),
                "import_no_pyc": summarize(nocache),
                "first_invocation": summarize([x["first_invocation"] for x in invoked]),
                "import_plus_first": summarize([x["import"] + x["first_invocation"] for x in invoked]),
                "status": invoked[-1].get("status"),
                "modules": invoked[-1].get("modules"),
                "top_imports": _importtime_breakdown(stderr)[:6],
            }
            data["functions"][fn] = entry
            say(
                f"  cold start: {fn:<14} import {ms(entry['import']['p50'], 0)} ms (no .pyc "
                f"{ms(entry['import_no_pyc']['p50'], 0)} ms), import + first call "
                f"{ms(entry['import_plus_first']['p50'], 0)} ms"
            )
    data["layer"] = _layer()
    say(
        f"  cold start: layer {data['layer']['bytes'] / 2**20:.1f} MiB unzipped, "
        f"{data['layer']['zip_bytes'] / 2**20:.1f} MiB zipped"
    )

    f = data["functions"]
    targets = []
    if f.get("store_raw", {}).get("has_handler") and f.get("process_queue", {}).get("has_handler"):
        sr, pq = f["store_raw"]["import"]["p50"], f["process_queue"]["import"]["p50"]
        ratio = sr / pq
        sr1, pq1 = f["store_raw"]["import_plus_first"]["p50"], f["process_queue"]["import_plus_first"]["p50"]
        note = (
            f"import + first invocation: store_raw {ms(sr1, 0)} ms vs process_queue {ms(pq1, 0)} ms "
            f"({sr1 / pq1:.2f}x); store_raw has no X-Ray SDK (no Tracer) and process_queue imports "
            "openai at init"
        )
        if ratio >= 0.5:
            top = ", ".join(f"{n} {v:.0f} ms" for n, v in f["store_raw"]["top_imports"][:4])
            note = (
                f"missed: store_raw's import would have to drop to {ms(pq * 0.5, 0)} ms "
                f"({ms(sr - pq * 0.5, 0)} ms less); its heaviest imports (self time, -X importtime): {top}. "
                + note
            )
        targets.append(
            Target(
                "store_raw handler import vs process_queue's (median of 10 fresh processes)",
                "< 0.5x",
                f"{ms(sr, 0)} ms vs {ms(pq, 0)} ms = {ratio:.2f}x",
                ratio < 0.5,
                note,
            )
        )
    return SectionResult(
        "coldstart",
        "4. Cold start: handler imports and layer size",
        _markdown(data),
        data,
        [],
        targets,
        time.monotonic() - started,
    )


def _markdown(data: dict[str, Any]) -> str:
    rows = []
    for fn, e in data["functions"].items():
        if not e.get("has_handler"):
            rows.append([fn, "no handler yet", "", "", "", ""])
            continue
        rows.append(
            [
                f"`{fn}`",
                f"**{ms(e['import']['p50'], 0)}** ({ms(e['import']['min'], 0)}-{ms(e['import']['max'], 0)})",
                f"{ms(e['import_no_pyc']['p50'], 0)}",
                f"{ms(e['first_invocation']['p50'], 0)} (HTTP {e['status']})"
                if e["status"]
                else f"{ms(e['first_invocation']['p50'], 0)}",
                f"{ms(e['import_plus_first']['p50'], 0)}",
                ", ".join(f"{n} {v:.0f}" for n, v in e["top_imports"]),
            ]
        )
    layer = data["layer"]
    return "\n".join(
        [
            "Each measurement is a fresh `python` process; the clock starts after interpreter start-up, "
            "right "
            "before `import app` with the function's directory on `sys.path` (as Lambda imports the "
            "handler). "
            f"Import: median (range) of {data['runs']} processes with the bytecode cache warm. No .pyc: "
            f"{data['nocache_runs']} processes with an empty `-X pycache_prefix`, i.e. everything compiled "
            "on "
            "import, which is what a cold Lambda does when the layer ships no `__pycache__` (`/opt` is "
            f"read-only). First invocation: {data['invoke_runs']} processes calling `lambda_handler` once "
            "right after the import (store_raw: a POST; process_queue: a schedule event on an empty queue, "
            "which builds the processor and its OpenAI client; query: GET /stats; cleanup: the retention "
            "schedule) against a local Redis. Heaviest imports: self time per top-level package from "
            "`-X importtime` (ms, one process, inflated by the tracing itself).",
            "",
            table(
                [
                    "function",
                    "import ms",
                    "import, no .pyc ms",
                    "first invocation ms",
                    "import + first ms",
                    "heaviest imports (self ms)",
                ],
                rows,
            ),
            "",
            f"**Layer** ({layer['source']}, as `sam build` assembles it): "
            f"{layer['bytes'] / 2**20:.1f} MiB unzipped (without `__pycache__`), "
            f"{layer['zip_bytes'] / 2**20:.1f} MiB as a zip (Lambda allows 250 MiB unzipped for a function "
            "and its layers)"
            + (
                "; the `.aws-sam/build/CommonLayer` in this checkout: "
                f"{layer['sam_build_bytes'] / 2**20:.1f} MiB"
                if layer.get("sam_build_bytes")
                else ""
            )
            + ". Largest entries: "
            + ", ".join(f"{n} {b / 2**20:.1f} MiB" for n, b in layer["top"])
            + ". botocore (from `aws-xray-sdk`, pulled in by the Powertools `tracer` extra) is already in "
            "the Lambda Python runtime.",
        ]
    )
