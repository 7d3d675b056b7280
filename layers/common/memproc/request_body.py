"""What a request body must be before anything reads it: small enough, UTF-8, and JSON that can be
stored and read back (finite numbers that fit a double, valid Unicode, bounded nesting).

Anything else is refused at the door with a 4xx: a value accepted here is one every later read
(Python, Lua's cjson, a client's JSON parser) can handle, so stored data never turns a read into a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

MAX_DEPTH = 32
# Integers beyond 2**53 lose precision in JavaScript and in Lua's cjson (doubles).
MAX_SAFE_INTEGER = 2**53


def screen(event: dict[str, Any], max_bytes: int) -> tuple[int, str, str] | None:
    """(status, code, message) for a raw request that must be refused before parsing, else None."""
    body = event.get("body") or ""
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    if body and content_type and not (content_type == "application/json" or content_type.endswith("+json")):
        # Otherwise the validator would read e.g. curl's default form encoding as form fields.
        return 415, "unsupported_media_type", f"send the body as application/json, not {content_type}"
    size = len(body.encode()) if isinstance(body, str) else len(body)
    if event.get("isBase64Encoded"):
        size = size * 3 // 4
    if size > max_bytes:
        return 413, "payload_too_large", f"request body is {size} bytes; the limit is {max_bytes} bytes"
    if event.get("isBase64Encoded") and body:
        # API Gateway base64-encodes a body that is not valid UTF-8 (UTF-16 JSON, binary).
        try:
            base64.b64decode(body, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return 400, "invalid_encoding", "send the body as UTF-8 encoded JSON"
    return None


def _refuse(reason: str, text: str) -> json.JSONDecodeError:
    return json.JSONDecodeError(reason, text, 0)


def strict_json(text: str) -> Any:
    """json.loads for request bodies; a value it cannot accept raises JSONDecodeError saying why."""

    def parse_int(digits: str) -> int:
        if len(digits) > 17 or abs(value := int(digits)) > MAX_SAFE_INTEGER:
            raise _refuse(f"integer {digits[:20]}… is larger than 2**53", text)
        return value

    def parse_float(digits: str) -> float:
        value = float(digits)
        if not math.isfinite(value):
            raise _refuse(f"number {digits[:20]} is not finite", text)
        return value

    def parse_constant(name: str) -> Any:
        raise _refuse(f"{name} is not a JSON number", text)

    try:
        value = json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
    except RecursionError:
        raise _refuse(f"JSON nests deeper than {MAX_DEPTH} levels", text) from None
    problem = unstorable(value)
    if problem:
        raise _refuse(problem, text)
    return value


def unstorable(value: Any) -> str | None:
    """Why a parsed value cannot be stored, walking it without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return f"JSON nests deeper than {MAX_DEPTH} levels"
            children = list(item.items()) if isinstance(item, dict) else [(None, v) for v in item]
            for key, child in children:
                if key is not None and not _valid_text(key):
                    return "a key is not valid Unicode (a lone surrogate)"
                stack.append((child, depth + 1))
        elif isinstance(item, str) and not _valid_text(item):
            return "a string is not valid Unicode (a lone surrogate)"
    return None


def _valid_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
