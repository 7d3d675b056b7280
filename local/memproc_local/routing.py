"""API Gateway's resource matching: which route of the template serves a method and a raw path.

``Route`` is one ``Api`` event of one function; ``RouteTable`` picks the most specific resource
for a request, with decoded path parameters, and knows the methods a resource allows (for 405).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MEMORY_MB = 128
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@dataclass(frozen=True)
class Route:
    """One ``Api`` event of one function: what API Gateway would route to which handler."""

    method: str  # upper case; "ANY" matches every method
    resource: str  # e.g. "/api/memory/{vectorstore_name}/raw/{raw_memory_id}"
    function: str  # logical id of the function resource
    code_uri: Path  # as written in the template (relative to the template's directory)
    handler: str  # "app.lambda_handler"
    timeout: float = DEFAULT_TIMEOUT_SECONDS  # seconds, from the function or Globals.Function
    memory_size: int = DEFAULT_MEMORY_MB


@dataclass(frozen=True)
class RouteMatch:
    """The outcome of routing one request: a route, or why there is none."""

    route: Route | None  # None: unknown path, or method not allowed
    resource: str | None  # the matched resource, even when the method is not allowed
    path_params: dict[str, str] = field(default_factory=dict)
    allowed: tuple[str, ...] = ()  # methods of the matched resource, for the Allow header


_LITERAL, _PARAM, _GREEDY = 0, 1, 2


class RouteTable:
    """API Gateway's resource matching: ``{param}`` is one non-empty segment, ``{param+}`` the rest.

    When several resources match a path, the most specific wins, segment by segment: a literal
    outranks ``{param}``, which outranks ``{param+}`` (so ``/raw/latest`` beats ``/raw/{id}``).
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self._by_resource: dict[str, dict[str, Route]] = {}
        self._patterns: list[tuple[str, list[tuple[int, str]]]] = []
        for route in routes:
            methods = self._by_resource.setdefault(route.resource, {})
            if not methods:
                self._patterns.append((route.resource, self._compile(route.resource)))
            methods.setdefault(route.method, route)

    @staticmethod
    def _compile(resource: str) -> list[tuple[int, str]]:
        """Resource segments as (kind, literal or parameter name)."""
        parts: list[tuple[int, str]] = []
        for seg in resource.strip("/").split("/") if resource != "/" else []:
            if seg.startswith("{") and seg.endswith("+}"):
                parts.append((_GREEDY, seg[1:-2]))
            elif seg.startswith("{") and seg.endswith("}"):
                parts.append((_PARAM, seg[1:-1]))
            else:
                parts.append((_LITERAL, seg))
        return parts

    @staticmethod
    def _try(
        pattern: list[tuple[int, str]], segs: list[str]
    ) -> tuple[tuple[int, ...], dict[str, str]] | None:
        """(specificity rank, decoded params) if the decoded segments fit the pattern."""
        rank: list[int] = []
        params: dict[str, str] = {}
        for i, (kind, text) in enumerate(pattern):
            if kind == _GREEDY:
                rest = segs[i:]
                if not rest or not any(rest):
                    return None
                params[text] = "/".join(rest)
                rank.append(_GREEDY)
                return tuple(rank), params
            if i >= len(segs):
                return None
            if kind == _LITERAL:
                if segs[i] != text:
                    return None
            elif not segs[i]:
                return None
            else:
                params[text] = segs[i]
            rank.append(kind)
        if len(segs) != len(pattern):
            return None
        return tuple(rank), params

    def resolve(self, path: str) -> tuple[str, dict[str, str]] | None:
        """The most specific resource matching a raw (percent-encoded) path, with decoded params."""
        trimmed = path.strip("/") if path != "/" else ""
        segs = [unquote(s) for s in trimmed.split("/")] if trimmed else []
        best: tuple[tuple[int, ...], str, dict[str, str]] | None = None
        for resource, pattern in self._patterns:
            hit = self._try(pattern, segs)
            if hit is not None and (best is None or hit[0] < best[0]):
                best = (hit[0], resource, hit[1])
        return None if best is None else (best[1], best[2])

    def methods(self, resource: str) -> dict[str, Route]:
        """Method -> route for one resource."""
        return dict(self._by_resource.get(resource, {}))

    def match(self, method: str, path: str) -> RouteMatch:
        """Route a request; ``ANY`` serves every method the resource does not declare itself."""
        found = self.resolve(path)
        if found is None:
            return RouteMatch(None, None)
        resource, params = found
        methods = self._by_resource[resource]
        route = methods.get(method.upper()) or methods.get("ANY")
        allowed = tuple(METHODS) if "ANY" in methods else tuple(m for m in METHODS if m in methods)
        return RouteMatch(route, resource, params if route else {}, allowed)
