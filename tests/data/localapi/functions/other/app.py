"""A second fixture `app.py` with the same module and handler names as functions/echo/app.py."""

from __future__ import annotations

import json
from typing import Any

MODULE_TAG = "other"


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Says which file answered, so tests can tell the two `app.py` modules apart."""
    return {
        "statusCode": 200,
        "headers": {"X-Module": MODULE_TAG},
        "body": json.dumps({"module": MODULE_TAG, "path_parameters": event["pathParameters"]}),
    }
