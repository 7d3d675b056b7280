"""Who is calling, as API Gateway authenticated them, and whether they may act on a vectorstore.

API Gateway (REST, v1 events) does the authentication: SigV4 for ``AUTH_MODE=IAM``, a Cognito user
pool token for ``COGNITO``, an API key for ``API_KEY``. Its verdict reaches the function in the
event's ``requestContext``: ``identity`` (the IAM caller, the API key) or ``authorizer.claims`` (the
token's claims). :func:`caller` reads it, the same way for every handler; :func:`authorize` checks
a caller against the vectorstore of the request. The resolver (``memproc.api``) calls both, so no
handler does.

Only ``COGNITO`` isolates tenants here: the vectorstore in the path must equal the token's tenant
claim (``TENANT_CLAIM``), unless the caller is in ``ADMIN_GROUP``. With ``IAM`` the caller's IAM
policy decides which paths they may invoke; an API key (``API_KEY``) identifies a client for
throttling and says nothing about which vectorstores it may use. ``NONE`` (local development)
requires no identity at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from memproc.errors import Forbidden, Unauthenticated
from memproc.settings import Settings

# How the 401 tells a client what to send (RFC 9110 requires the header on a 401).
_CHALLENGE = {"IAM": "AWS4-HMAC-SHA256", "COGNITO": "Bearer", "API_KEY": 'ApiKey header="x-api-key"'}
_WHAT = {
    "IAM": "a SigV4-signed request (AWS_IAM)",
    "COGNITO": "a Cognito user pool token in the Authorization header",
    "API_KEY": "an x-api-key header",
}
# API Gateway hands a REST API's Lambda every claim as a string: a list claim such as
# cognito:groups arrives as "admin" or "admin,ops" (sometimes "[admin, ops]"); group names hold no
# whitespace, commas or brackets (settings refuse an ADMIN_GROUP that does).
_LIST_SEPARATORS = re.compile(r"[\s,]+")

__all__ = ["Caller", "Forbidden", "Unauthenticated", "authenticate", "authorize", "caller", "claim_values"]


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. ``principal`` names them (IAM user/role ARN, Cognito ``sub``, API
    key id); ``tenant`` is the tenant claim's value (COGNITO only), ``admin`` membership of
    ADMIN_GROUP."""

    mode: str
    principal: str | None = None
    tenant: str | None = None
    admin: bool = False


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def claim_values(value: Any) -> list[str]:
    """A list claim (``cognito:groups``) as API Gateway delivers it, or as a JSON list."""
    if isinstance(value, list | tuple):
        return [str(v) for v in value if str(v)]
    if not isinstance(value, str):
        return []
    return [v for v in _LIST_SEPARATORS.split(value.strip().strip("[]")) if v]


def caller(event: Mapping[str, Any], settings: Settings) -> Caller | None:
    """The caller of a REST (v1) proxy event, or None when the event carries no identity of the
    configured mode (which then refuses the request)."""
    mode = settings.auth_mode
    if mode == "NONE":
        return Caller(mode)
    context = event.get("requestContext")
    context = context if isinstance(context, Mapping) else {}
    if mode == "COGNITO":
        authorizer = context.get("authorizer")
        claims = authorizer.get("claims") if isinstance(authorizer, Mapping) else None
        if not isinstance(claims, Mapping) or not claims:
            return None
        groups = claim_values(claims.get("cognito:groups"))
        return Caller(
            mode,
            principal=_text(claims.get("sub")) or _text(claims.get("cognito:username")),
            tenant=_text(claims.get(settings.tenant_claim)),
            admin=bool(settings.admin_group) and settings.admin_group in groups,
        )
    identity = context.get("identity")
    identity = identity if isinstance(identity, Mapping) else {}
    if mode == "IAM":
        principal = _text(identity.get("userArn")) or _text(identity.get("caller"))
    else:  # API_KEY
        principal = _text(identity.get("apiKeyId")) or ("api-key" if _text(identity.get("apiKey")) else None)
    return Caller(mode, principal=principal) if principal else None


def authenticate(event: Mapping[str, Any], settings: Settings) -> Caller:
    """The caller, or a 401 saying what the configured mode expects."""
    found = caller(event, settings)
    if found is None:
        mode = settings.auth_mode
        raise Unauthenticated(
            f"authentication required: send {_WHAT[mode]}", headers={"WWW-Authenticate": _CHALLENGE[mode]}
        )
    return found


def authorize(who: Caller, vectorstore: str | None, settings: Settings) -> None:
    """Refuse (403) a COGNITO caller acting on a vectorstore other than their tenant claim's, unless
    they are an admin. Routes without a vectorstore (health, the API description) need only a caller."""
    if who.mode != "COGNITO" or vectorstore is None or who.admin:
        return
    claim = settings.tenant_claim
    if who.tenant is None:
        raise Forbidden(f"the token has no {claim!r} claim, so it may use no vectorstore")
    if who.tenant != vectorstore:
        raise Forbidden(f"the token's {claim!r} claim does not grant vectorstore {vectorstore!r}")
