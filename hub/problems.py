"""Every error answer of the hub, as RFC 9457 problem details (``application/problem+json``).

::

    HTTP/1.1 400 Bad Request
    Content-Type: application/problem+json

    {"type": "urn:shelfsync:problem:bad_request", "title": "Bad request", "status": 400,
     "detail": "limit must be a whole number from 1 to 10000, got '0'", "code": "bad_request"}

``detail`` is the one sentence a person can act on; ``code`` is the machine-readable reason, the same word as
the end of ``type``, which is a URN of this project (``urn:shelfsync:problem:<code>``): it names the problem,
is stable, and points nowhere outside the project (docs/hub-api.md, "Errors", lists them). ``title`` is the
same for every occurrence of a code. A route adds its own members beside them (``rejected``,
``credential_agent_id``, ``problems`` …), as RFC 9457 allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from hub import views
from protocol import answers

CONTENT_TYPE = answers.PROBLEM_CONTENT_TYPE
TYPE_PREFIX = answers.PROBLEM_TYPE_PREFIX
MEMBERS = answers.PROBLEM_MEMBERS  # an extra member may not take these

CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: answers.INVALID_EVENTS_CODE,
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "unavailable",
}
TITLES: Mapping[str, str] = {
    "bad_request": "The request is malformed",
    "unauthorized": "A credential is missing or refused",
    "forbidden": "This credential may not do this",
    "not_found": "There is no such resource",
    "method_not_allowed": "The route does not take this method",
    "request_timeout": "The request body did not arrive in time",
    "conflict": "The request conflicts with what the hub holds",
    "gone": "What the request names is gone for good",
    "payload_too_large": "The request body is too large",
    "unsupported_media_type": "The request body's media type is not the route's",
    "invalid_events": "Some events break the contract; nothing was committed",
    "conflicting_events": "Some events name a movement of the request again with other content; nothing was committed",
    "unusable_webhook": "The channel's webhook cannot be applied",
    "rate_limited": "Too many requests from this credential or address",
    "internal_error": "The hub failed to handle the request",
    "bad_gateway": "The sales channel refused or failed the hub's call",
    "unavailable": "The hub cannot answer right now",
}


def code_of(status: int) -> str:
    return CODES.get(status, f"http_{status}")


def title_of(code: str, status: int) -> str:
    if code in TITLES:
        return TITLES[code]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def body(status: int, detail: str, code: str | None = None, **extra: Any) -> dict[str, Any]:
    """The problem details of an error answer (``protocol.answers``); ``extra`` members go beside the standard ones."""
    code = code or code_of(status)
    return answers.problem_body(status, detail, code, title_of(code, status), **extra)


def response(
    status: int, detail: str, *, code: str | None = None, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    """An error answer: ``status`` with its problem details (strict JSON, ``hub.views.dumps``)."""
    return web.json_response(
        body(status, detail, code, **extra), status=status, headers=headers, dumps=views.dumps, content_type=CONTENT_TYPE
    )
