"""memproc_local: memproc on a workstation, without Docker or AWS (``make dev``, the tests).

It lives beside the library, not under ``layers/common/``: everything there is built into the
Lambda layer, and Lambda needs none of this (nor its PyYAML and werkzeug). ``memproc serve``
(:mod:`memproc_local.cli`) serves the API routes of ``template.yaml`` by calling the real handlers.

``sam local start-api`` needs Docker; this package does the same job in-process for ``make dev``
and the end-to-end tests. It reads the ``AWS::Serverless::Function`` resources and their ``Api``
events from the SAM template, imports each function's handler module by file path, and turns
every HTTP request into the API Gateway REST (v1) proxy event the handler receives on AWS.

Faithful to API Gateway where a client or a handler could tell the difference:

- ``path`` keeps the request's percent-encoding (as REST APIs deliver it), while
  ``pathParameters`` and the query string parameters are URL-decoded. Powertools' resolver
  passes route arguments from ``path``, so handlers must decode them (or read
  ``pathParameters``) exactly as they must on AWS.
- ``queryStringParameters``/``headers`` keep the last value, ``multiValue*`` keep all of them,
  and empty collections are ``None``.
- Bodies that are not UTF-8 arrive base64-encoded with ``isBase64Encoded: true``.
- A request body over 10 MiB is refused with 413 before any handler runs; a handler that raises
  or returns a malformed proxy response yields 502 ``{"message": "Internal server error"}``.
- Errors API Gateway produces itself (413, unknown route) are rendered from the template's
  ``GatewayResponses`` (``REQUEST_TOO_LARGE``, ``MISSING_AUTHENTICATION_TOKEN``, ``DEFAULT_4XX``)
  when it customises them, so clients see the production error bodies locally.

Deliberate differences, chosen for clearer local errors:

- An unknown path is 404 ``{"success": false, "error": {"code": "not_found", ...}}`` unless the
  template customises ``MISSING_AUTHENTICATION_TOKEN``; stock API Gateway answers 403
  ``{"message": "Missing Authentication Token"}``.
- A known path with a method it lacks is 405
  ``{"success": false, "error": {"code": "method_not_allowed", ...}}`` with an ``Allow`` header;
  API Gateway treats it like an unknown path.
- All handlers share one process, so per-function environment variables from the template are
  not applied; a handler running past its ``Timeout`` (or API Gateway's 29 s) only logs a warning;
  API keys and usage plans are not enforced (as with ``sam local start-api``).

Modules: ``template`` (the SAM template), ``routing`` (the route table), ``events`` (the proxy
event, ``context`` and response), ``handlers`` (loading them), ``server`` (HTTP, on werkzeug),
``devredis`` (the Redis behind ``memproc serve``) and ``cli`` (the ``memproc`` command).
"""
