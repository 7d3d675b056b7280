"""The local server's stand-in for API Gateway's authentication, for development only.

On AWS, API Gateway authenticates a request before any function runs and hands the function its
verdict in ``requestContext``. Locally there is no SigV4 and no Cognito, so two optional checks
take their place (``memproc serve`` reads them from the environment):

- ``MEMPROC_LOCAL_API_KEY=<key>``: requests need ``x-api-key: <key>`` (else the template's 403
  ``API_KEY`` response), and the event's ``requestContext.identity`` carries the key, as with
  ``AuthMode=API_KEY``.
- ``MEMPROC_LOCAL_AUTH=cognito``: requests need ``x-memproc-claims: {"custom:vectorstore": "user1",
  "cognito:groups": ["admin"]}`` (else the template's 401 ``UNAUTHORIZED`` response); the JSON object
  becomes ``requestContext.authorizer.claims``, as a Cognito authorizer would fill it from a
  verified token. Nothing is verified: anyone can claim anything, which is the point in
  development and the reason this never runs on AWS.

The handlers then run with ``AUTH_MODE`` matching (:attr:`LocalAuth.auth_mode`), so their tenant
checks are the production ones.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CLAIMS_HEADER = "x-memproc-claims"
API_KEY_HEADER = "x-api-key"
LOCAL_API_KEY_ID = "local-api-key"


@dataclass(frozen=True)
class Refusal:
    """What API Gateway would answer instead of invoking the function: the gateway response type
    the template may customise, its default status, and a message."""

    response_type: str
    status: int
    message: str


@dataclass(frozen=True)
class Admission:
    """What API Gateway adds to the event of an admitted request."""

    identity: dict[str, Any] | None = None
    claims: dict[str, Any] | None = None


@dataclass(frozen=True)
class LocalAuth:
    api_key: str | None = None
    cognito: bool = False

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key:
            raise ValueError("MEMPROC_LOCAL_API_KEY must not be empty")
        if self.api_key and self.cognito:
            raise ValueError("MEMPROC_LOCAL_API_KEY and MEMPROC_LOCAL_AUTH=cognito: choose one (as AuthMode)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LocalAuth:
        env = os.environ if environ is None else environ
        mode = env.get("MEMPROC_LOCAL_AUTH", "").strip().lower()
        if mode not in ("", "none", "cognito"):
            raise ValueError(f"MEMPROC_LOCAL_AUTH={mode!r}: expected cognito (or none)")
        return cls(api_key=env.get("MEMPROC_LOCAL_API_KEY") or None, cognito=mode == "cognito")

    @property
    def auth_mode(self) -> str:
        """The AUTH_MODE the handlers run with."""
        return "COGNITO" if self.cognito else "API_KEY" if self.api_key else "NONE"

    def template_parameters(self, template: Mapping[str, Any]) -> dict[str, str]:
        """The AuthMode the template's choices (its gateway responses) are made for: the one this
        simulates, or the template's default when nothing is checked (what a default deployment
        answers)."""
        if "AuthMode" not in (template.get("Parameters") or {}) or self.auth_mode == "NONE":
            return {}
        return {"AuthMode": self.auth_mode}

    def describe(self) -> str:
        if self.cognito:
            return f"simulated Cognito claims from the {CLAIMS_HEADER} header (dev only, nothing verified)"
        if self.api_key:
            return f"{API_KEY_HEADER} required (MEMPROC_LOCAL_API_KEY)"
        return "none (set MEMPROC_LOCAL_API_KEY or MEMPROC_LOCAL_AUTH=cognito to check callers)"

    def admit(self, headers: Iterable[tuple[str, str]]) -> Admission | Refusal:
        """Admit a request by its headers, or say how API Gateway would refuse it."""
        values: dict[str, str] = {}
        for name, value in headers:
            values.setdefault(name.lower(), value)
        if self.api_key:
            given = values.get(API_KEY_HEADER, "")
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return Refusal("API_KEY", 403, "Forbidden")
            return Admission(identity={"apiKey": given, "apiKeyId": LOCAL_API_KEY_ID})
        if self.cognito:
            raw = values.get(CLAIMS_HEADER)
            if raw is None:
                return Refusal("UNAUTHORIZED", 401, f"Unauthorized: send {CLAIMS_HEADER} (local Cognito)")
            try:
                claims = json.loads(raw)
            except json.JSONDecodeError:
                claims = None
            if not isinstance(claims, dict) or not claims:
                return Refusal("UNAUTHORIZED", 401, f"Unauthorized: {CLAIMS_HEADER} must be a JSON object")
            return Admission(claims={"sub": "local-user", **claims})
        return Admission()
