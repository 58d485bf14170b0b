"""``ETag`` and ``If-None-Match`` on the read routes whose answers a client may keep.

A cacheable read answers ``200`` with a strong ``ETag`` and ``Cache-Control:
private, no-cache`` (keep it, but ask before using it again: the stock moves
all day). Sent back in ``If-None-Match``, an ETag that still names the answer
gets ``304 Not Modified`` with no body.

The validator is strong (RFC 9110 §8.8.1): it changes whenever a byte of the
answer would. Where one number determines the answer the handler sets it
itself and the hub answers 304 before reading anything else — the catalog
(its version), the pages of the bundles (their version and the page:
``hub.bundles.page_etag``) and the OpenAPI document (a hash of its bytes,
made once). For the other reads no cheap number determines the answer: a count's
``last_count_at`` moves on a count that confirms the shelf, without a row on
the change feed, and the ledger and exceptions move with rejected resends and
the clock. There the middleware hashes the answer's bytes (BLAKE2b, 128 bits):
the hub still reads the page, but an unchanged page costs the client no
transfer and no parsing.

Only ``GET`` (and ``HEAD``) answers of the routes in ``CACHEABLE_ROUTES`` whose handler built
a whole body (``web.Response``) are tagged; a streamed answer (a CSV export,
the change stream) and any error are left alone.
"""

from __future__ import annotations

import base64
import hashlib

from aiohttp import web

from hub.auth import Handler

CACHEABLE_ROUTES = frozenset(
    {
        "location_counts", "sku_counts", "counts", "ledger", "exceptions", "agents", "divergence", "quarantine",
        "webhooks", "webhook_deliveries", "catalog", "openapi", "bundles", "bundle",
    }
)  # fmt: skip
CACHE_CONTROL = "private, no-cache"
VARY = "Accept"  # a list route answers CSV to Accept: text/csv (hub.csvexport)
ETAG_BYTES = 16


def tag_of(body: bytes) -> str:
    """The strong ETag of an answer's bytes."""
    digest = hashlib.blake2b(body, digest_size=ETAG_BYTES).digest()
    return '"' + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii") + '"'


def matches(if_none_match: str, tag: str) -> bool:
    """Whether an ``If-None-Match`` value names ``tag`` (RFC 9110 §13.1.2: ``*`` or a weak comparison)."""
    wanted = tag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def not_modified(tag: str, cache_control: str = CACHE_CONTROL) -> web.Response:
    """A 304 with the ``ETag``, ``Cache-Control`` and ``Vary`` its 200 has (RFC 9110 §15.4.5: a cache updates the
    answer it keeps with them)."""
    return web.Response(status=304, headers={"ETag": tag, "Cache-Control": cache_control, "Vary": VARY})


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tag the whole-body 200 answers of the cacheable GET routes; 304 when ``If-None-Match`` names the tag."""
    response = await handler(request)
    if (
        request.method not in ("GET", "HEAD")
        or response.status != 200
        or not isinstance(response, web.Response)
        or request.match_info.route.name not in CACHEABLE_ROUTES
    ):
        return response
    body = response.body
    if not isinstance(body, bytes):
        return response
    tag = response.headers.get("ETag") or tag_of(body)
    cache_control = response.headers.get("Cache-Control", CACHE_CONTROL)
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and matches(if_none_match, tag):
        return not_modified(tag, cache_control)
    response.headers["ETag"] = tag
    response.headers["Cache-Control"] = cache_control
    response.headers.add("Vary", VARY)
    return response
