"""``httpx.Client.send`` for the SDK's requests, without the work they do not need.

For each request httpx's ``send`` runs an auth flow (a generator, even for no auth), a redirect
loop, event hooks, a timing stream around the body, and reads the body through a decoder and two
chunkers inside three context managers: ~25 us of CPU per request. The SDK's requests have no
httpx auth (the key is a header), no hooks, and an identity-encoded reply that is not a redirect:
``send`` here hands such a request to the client's transport and reads the body in one join.
Everything else goes httpx's own way. Before sending: ``stream=True``, an auth, hooks, httpx's
INFO log on (it logs each request), a client not yet opened or already closed, a request httpx
would refuse. After: a redirect or a Content-Encoding in the reply, where httpx's redirect loop
and decoders carry on with the response as they would have it. Either way the caller gets what
httpx's ``send`` returns (status, headers, content, request, ``elapsed``, closed, history,
extensions, default encoding, cookies kept in the client's jar) or raises what it raises.

It relies on these private parts of httpx, each pinned by ``tests/test_llm_send.py``: the
client's ``_state``, ``_auth``, ``_event_hooks``, ``_default_encoding``, ``_transport_for_url``,
``_build_redirect_request`` and ``_send_handling_redirects``; ``ClientState``, ``BoundSyncStream``
and the logger of the ``_client`` module; a response's ``_content`` and ``_num_bytes_downloaded``;
the headers' ``_list``. See: https://www.python-httpx.org/advanced/clients/#request-instances
"""

from __future__ import annotations

import datetime
import importlib
import logging
import time
from contextlib import suppress
from typing import Any

from memproc.llm.http_pool import httpx

_client = importlib.import_module(f"{httpx.__name__}._client")
_OPENED = _client.ClientState.OPENED
_DEFAULT = _client.USE_CLIENT_DEFAULT
_logger: logging.Logger = _client.logger
# Headers that ask for more than this does: cookies to keep, a redirect, an encoded body.
_NOTED = frozenset((b"set-cookie", b"set-cookie2", b"location", b"content-encoding"))


def send(
    fallback: Any,
    client: Any,
    request: Any,
    *,
    stream: bool = False,
    auth: Any = _DEFAULT,
    follow_redirects: Any = _DEFAULT,
) -> Any:
    """``client.send(request, ...)`` as httpx answers it; ``fallback`` is httpx's own send (the
    client's ``super().send``), for the cases this leaves to it."""
    if (
        stream
        or client._state is not _OPENED
        or (auth is not None and (auth is not _DEFAULT or client._auth is not None))
        or request.url.userinfo  # httpx's basic auth from the URL
        or client._event_hooks["request"]
        or client._event_hooks["response"]
        or "timeout" not in request.extensions
        or not isinstance(request.stream, httpx.SyncByteStream)
        or _logger.isEnabledFor(logging.INFO)
        or client.max_redirects < 0  # httpx raises TooManyRedirects before sending
    ):
        return fallback(request, stream=stream, auth=auth, follow_redirects=follow_redirects)
    transport = client._transport_for_url(request.url)
    start = time.perf_counter()
    try:
        response = transport.handle_request(request)
    except httpx.RequestError as exc:
        exc.request = request
        raise
    assert isinstance(response.stream, httpx.SyncByteStream)
    response.request = request
    response.default_encoding = client._default_encoding
    if any(name in _NOTED for _, name, _ in response.headers._list):
        client.cookies.extract_cookies(response)
        if response.has_redirect_location or "content-encoding" in response.headers:
            follow = client.follow_redirects if follow_redirects is _DEFAULT else follow_redirects
            return _by_httpx(client, request, response, start, follow)
    body = response.stream
    response.is_stream_consumed = True
    try:
        try:
            content = b"".join(body)
        finally:
            response.is_closed = True
            response.elapsed = datetime.timedelta(seconds=time.perf_counter() - start)
            body.close()
    except httpx.RequestError as exc:
        exc.request = request
        raise
    response._content = content
    response._num_bytes_downloaded = len(content)
    return response


def _by_httpx(client: Any, request: Any, response: Any, start: float, follow_redirects: bool) -> Any:
    """The rest of httpx's send for a response just received: its redirect loop and its read
    (decoders), as ``_send_single_request`` would have left the response."""
    response.stream = _client.BoundSyncStream(response.stream, start=start)
    try:
        if response.has_redirect_location:
            if follow_redirects:
                next_request = client._build_redirect_request(request, response)
                response.read()
                response = client._send_handling_redirects(
                    next_request, follow_redirects=True, history=[response]
                )
            else:
                with suppress(httpx.RemoteProtocolError):
                    response.next_request = client._build_redirect_request(request, response)
        response.read()
    except BaseException:
        response.close()
        raise
    return response
