"""The openai SDK's client, building the provider's requests from copies of its own.

For every attempt the SDK builds its request anew: it merges and validates the headers, renders the
timeouts, joins the URL to its base and parses it, merges cookies and query parameters, and httpx
normalises every header again (~85 us of CPU a request, about half of the SDK's own). For the
provider's two endpoints all of that is the same on every call but the body: `client_type` keeps
the first request the SDK builds for an endpoint and attempt as a `RequestTemplate`, and builds the
next ones from it, the body and the client's cookies (which its answers may have set) added as
httpx adds them. Everything else still takes the SDK's own way: an options object that differs from
the endpoint's in any field but the body, an empty or non-bytes body, an idempotency header.

It assumes what the provider does: the client is not reconfigured once built (its base URL, default
headers, timeout, auth headers); a changed `api_key` is part of the template's key.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from typing import Any

from memproc.llm.http_pool import httpx

# Templates a client keeps: (endpoint, attempt, API key); the provider's two endpoints and their
# retries take a dozen.
TEMPLATES = 64
# Headers a request gets from its body and its client's cookies, not from the template.
_PER_REQUEST = frozenset((b"content-length", b"cookie"))


class RequestTemplate:
    """A request the SDK built, without its body and cookies."""

    def __init__(self, request: Any) -> None:
        self.method: str = request.method
        self.url: Any = request.url  # immutable: one serves every request
        # Normalised once; each request copies the list (httpx's copy of a Headers).
        self.headers = httpx.Headers(
            [(k, v) for k, v in request.headers.raw if k.lower() not in _PER_REQUEST]
        )
        # The charset httpx finds by decoding every header (on first use, per request), also that of
        # these headers with a Content-Length added; a Cookie header may change it.
        self.encoding: str = self.headers.encoding
        self.extensions: dict[str, Any] = dict(request.extensions)

    def build(self, body: bytes, cookies: Any) -> Any:
        """The request httpx builds for this body: ``Content-Length`` after the other headers, a
        ``Cookie`` header before it when the client holds cookies for the URL, the body read."""
        extensions = dict(self.extensions)
        timeout = extensions.get("timeout")
        if isinstance(timeout, dict):
            extensions["timeout"] = dict(timeout)  # as each `build_request` makes its own
        request = httpx.Request(
            self.method, self.url, headers=self.headers, stream=httpx.ByteStream(body), extensions=extensions
        )
        if cookies:
            cookies.set_cookie_header(request)
        else:
            request.headers.encoding = self.encoding
        request.headers["Content-Length"] = str(len(body))
        request.read()
        return request


@functools.cache
def client_type(openai: Any) -> Any:
    """``openai.OpenAI`` whose `_build_request` builds from templates for the endpoints given to
    `use_templates` (see the module docstring)."""
    from openai._models import FinalRequestOptions

    # Every field of the options that shapes a request, but the body (content) and the idempotency
    # key (sent only with an idempotency header, which the OpenAI client has none of).
    fixed = operator.attrgetter(
        *(name for name in FinalRequestOptions.model_fields if name not in ("content", "idempotency_key"))
    )

    class OpenAI(openai.OpenAI):  # the name: the SDK sends it in its User-Agent
        _endpoints: Mapping[str, Any] = {}
        _templates: dict[tuple[str, int, str], RequestTemplate]

        def use_templates(self, endpoints: Mapping[str, Any]) -> None:
            """Build the requests of these options (by URL) from templates."""
            self._endpoints = {url: fixed(options) for url, options in endpoints.items()}
            self._templates = {}

        def _idempotency_key(self) -> str:
            """A fresh key (a uuid4: a getrandom system call) only where it is sent: in the
            idempotency header, which the OpenAI client has none of."""
            return super()._idempotency_key() if self._idempotency_header else "unsent"

        def _build_request(self, options: Any, *, retries_taken: int = 0) -> Any:
            body = options.content
            endpoint = self._endpoints.get(options.url)
            if (
                endpoint is None
                or type(body) is not bytes
                or not body
                or self._idempotency_header is not None
                or fixed(options) != endpoint
            ):
                return super()._build_request(options, retries_taken=retries_taken)
            key = (options.url, retries_taken, self.api_key)
            template = self._templates.get(key)
            if template is None:
                request = super()._build_request(options, retries_taken=retries_taken)
                if len(self._templates) < TEMPLATES:
                    self._templates[key] = RequestTemplate(request)
                return request
            return template.build(body, self._client.cookies)

    return OpenAI
