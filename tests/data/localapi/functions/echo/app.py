"""Fixture handlers for tests/test_localapi.py (loaded by file path, never imported as a package)."""

from __future__ import annotations

import base64
import json
from typing import Any

MODULE_TAG = "echo"


def _context(context: Any) -> dict[str, Any]:
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Return the event it received, so tests can inspect exactly what API Gateway would send."""
    return {
        "statusCode": 200,
        "headers": {"X-Module": MODULE_TAG},
        "body": json.dumps({"event": event, "context": _context(context)}),
    }


def literal_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answers the literal routes, so precedence over `{param}` routes is visible."""
    return {
        "statusCode": 200,
        "body": json.dumps({"route": "literal", "resource": event["resource"], "context": _context(context)}),
    }


def boom_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Raises on /boom; on /malformed returns what API Gateway rejects (?kind=body|keys|type)."""
    if event["path"] == "/malformed":
        kind = (event["queryStringParameters"] or {}).get("kind", "body")
        if kind == "keys":
            return {"statusCode": 200, "body": "{}", "context": "extra key"}
        if kind == "type":
            return ["not", "a", "dict"]  # type: ignore[return-value]
        return {"statusCode": 200, "body": {"not": "a string"}}
    raise RuntimeError("boom from the fixture handler")


def binary_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """multiValueHeaders plus a base64 body, as Powertools returns for binary content."""
    return {
        "statusCode": 201,
        "headers": {"Content-Type": "application/octet-stream", "X-Single": "one", "Set-Cookie": "lost=1"},
        "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"], "X-Multi": ["x", "y"]},
        "body": base64.b64encode(b"\x00\x01\xfe\xff").decode("ascii"),
        "isBase64Encoded": True,
    }
