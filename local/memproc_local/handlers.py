"""Load each function's handler from its file, as Lambda would, and serialise its invocations.

Each function gets its own module name (the four ``app.py`` files must not shadow each other),
and one lock, because a Lambda container serves one event at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from memproc_local.routing import Route

Handler = Callable[[dict[str, Any], Any], Any]


_module_cache: dict[tuple[str, Path], ModuleType] = {}
_handler_lock = threading.Lock()
_function_locks: dict[str, threading.Lock] = {}


def function_lock(function: str) -> threading.Lock:
    """The lock held while ``function`` runs: a Powertools resolver keeps per-request state on its
    app object, so two threads must never be inside one function's handler (nor are they on Lambda)."""
    with _handler_lock:
        return _function_locks.setdefault(function, threading.Lock())


def handler_file(route: Route, project_root: Path) -> tuple[Path, str]:
    """Where the handler's module lives and which attribute to call (``a/b.c.fn`` -> ``a/b/c.py``, ``fn``)."""
    module_part, sep, attr = route.handler.rpartition(".")
    if not sep or not module_part or not attr:
        raise ValueError(f"{route.function}: Handler {route.handler!r} is not 'module.function'")
    code_dir = route.code_uri if route.code_uri.is_absolute() else Path(project_root) / route.code_uri
    rel = Path(*module_part.replace("/", ".").split("."))
    candidate = code_dir / rel.with_suffix(".py")
    if not candidate.is_file() and (code_dir / rel / "__init__.py").is_file():
        candidate = code_dir / rel / "__init__.py"
    return candidate.resolve(), attr


def load_handler(route: Route, project_root: Path) -> Handler:
    """Import the route's handler by file path, once per function.

    Each function gets its own module name, so the four ``app.py`` files never shadow each other
    in ``sys.modules`` (which dataclasses and pydantic consult). The function's code directory is
    on ``sys.path`` while the module executes, as ``/var/task`` is on Lambda.
    """
    path, attr = handler_file(route, project_root)
    fn = getattr(load_module(route, project_root), attr, None)
    if not callable(fn):
        raise AttributeError(f"{route.function}: {path} has no callable {attr!r} (Handler {route.handler!r})")
    return fn


def load_module(route: Route, project_root: Path) -> ModuleType:
    """The module of the route's handler, imported once per function (see :func:`load_handler`)."""
    path, _ = handler_file(route, project_root)
    key = (route.function, path)
    with _handler_lock:
        module = _module_cache.get(key)
        if module is None:
            module = _module_cache[key] = _import_by_path(route.function, path)
        return module


def _import_by_path(function: str, path: Path) -> ModuleType:
    """Execute ``path`` as a fresh module with a name unique to the function and file."""
    if not path.is_file():
        raise FileNotFoundError(f"{function}: handler module {path} does not exist")
    safe = "".join(ch if ch.isalnum() else "_" for ch in function)
    digest = hashlib.sha1(str(path).encode(), usedforsecurity=False).hexdigest()[:8]
    name = f"_memproc_local_{safe}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{function}: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    code_dir = str(path.parent)
    added = code_dir not in sys.path
    if added:
        sys.path.insert(0, code_dir)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(code_dir)
    return module
