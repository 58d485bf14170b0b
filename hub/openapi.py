"""The hub's HTTP API as an OpenAPI 3.1 document, built from the code's own limits so the two cannot drift.

Every bound in the document — page sizes, body limits, the identifier rule of
``protocol.values``, the event kinds, the wire limits of ``protocol.codec`` —
is read from the constant the hub itself enforces. The hub serves the
document at ``GET /v1/openapi.json`` (public, with a strong ``ETag``), and
the repository keeps a copy in docs/openapi.json, regenerated with::

    python -m hub.openapi > docs/openapi.json

Tests check that every route of the application is in the document (and the
document names no route the hub lacks), that it is valid OpenAPI 3.1, that
docs/hub-api.md describes the same operations, and Schemathesis checks the
live hub's answers against it (tests/api/).

``/v1/sync``, ``/v1/observations`` and ``/v1/import-issues`` speak msgpack
(``application/msgpack``): their schemas describe the msgpack maps with the
same shapes JSON would have; a field marked ``x-msgpack: bin`` is a msgpack
``bin`` (raw bytes), not text.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiohttp import web

from hub import (
    bundles,
    catalog,
    catchup,
    csvexport,
    etag,
    events_api,
    feed,
    paging,
    problems,
    quarantine,
    ratelimit,
    reports,
    starting,
    webhooks,
)
from hub.auth import PUBLIC_ROUTES_KEY, ROLE_ADMIN, ROLE_AGENT, ROLE_READER, TOKEN_MAX_CHARS
from hub.channels import http as channel_http
from hub.channels import order_routes
from hub.channels.config import NAME_RE
from hub.config import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_RATE_LIMIT_BURST,
    DEFAULT_RATE_LIMIT_PER_S,
    DEFAULT_REFUSED_ATTEMPTS_BURST,
    DEFAULT_REFUSED_ATTEMPTS_PER_S,
)
from hub.dashboard import api as dashboard_api
from hub.dashboard.sessions import HTTPS_SESSION_COOKIE, SESSION_COOKIE
from hub.resolver import BUNDLE_PARTS_MAX, COMPONENT_UNITS_MAX, Effect
from hub.storage import findings, keys
from hub.storage.base import QUARANTINE_ACTIONS, QUARANTINE_STATUSES
from hub.storage.checks import CATALOG_ITEMS_MAX, DESCRIPTION_MAX_LEN, PACK_SIZE_MAX
from hub.storage.keys import WRITEOFF_KIND
from hub.storage.migrations import STARTING_PHASES
from hub.views import HLC_QUERY_MAX
from protocol import MSGPACK_CONTENT_TYPE, QTY_MAX, Kind, routes, values
from protocol import feed as wire
from protocol.catalog import BARCODE_MAX_LEN, UNKNOWN_SKU_PREFIX
from protocol.codec import CHAIN_BYTES, DISK_STATES, LOST_FOUND_MS_MAX, MAX_BATCH_EVENTS, MAX_COUNTS, WIRE_VERSION
from protocol.event import EPOCH_MAX, QTY_SIGN, REF_REQUIRED, SEQ_MAX
from protocol.hlc import HLC_MAX
from protocol.ids import EVENT_ID_BYTES
from protocol.reports import (
    ISSUE_FILE_MAX_LEN,
    ISSUE_LINE_MAX,
    ISSUE_RAW_MAX_LEN,
    ISSUE_REASON_MAX_LEN,
    MAX_REPORT_ITEMS,
    OBSERVED_AT_MS_MAX,
    REPORT_ID_MAX_LEN,
    SOURCE_FILE_MAX_LEN,
    SYSTEM_MAX_LEN,
)

JSON = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
# The contract's own version: 1.<minor>.<patch>. A minor step adds (fields, routes, optional parameters); a patch
# step only rewords. Anything that would break a client waits for /v2 (docs/hub-api.md, "API versions").
API_VERSION = "1.13.0"  # 1.1: format=csv on GET /v1/agents and /v1/quarantine; 1.2: SKUs are never "." or "..", 429 on CSV;
# 1.3: GET /v1/exceptions takes kind and since, and its cursors go with their filters
# downloads past their cap, and the 405, 408 and 417 every route can answer listed
# 1.4: the exception kind agent_copies (two copies of one agent sending at once)
# 1.5: 429 on the change feed past a credential's read budget (feed_read_rows_per_s, feed_read_burst), and the
# exception kind channel_order_refused (a channel's order whose webhook the hub refused for good)
# 1.6: POST /v1/channels/{name}/orders/{order_id}/dismiss (a refused order booked by hand), and a
# channel_order_refused exception's hub location and data.channel_location
# 1.7: 429 on the order webhooks past the client address's budget of refused attempts (refused_attempts_per_s); the
# outgoing webhook batches name the feed's history ("history"); POST /v1/events answers 409 conflicting_events to a
# request naming one movement twice with other content; POST /v1/channels/{name}/orders/{order_id}/undismiss (a
# dismissal undone)
# 1.8: GET /v1/channels answers each channel's settings; the dismiss and undismiss routes take order ids of up to
# 105 characters (a register sale's sale:<adjustment id>), and answer 400 to one no order can have;
# PUT /v1/catalog takes partial (a CSV body's good rows written, every refused row listed: rows, imported,
# refused_count, refused, refused_csv), and a refused CSV row names its column;
# 429 on every read with a credential past its budget of bytes read (read_bytes_per_s, read_burst_bytes)
# 1.9: PUT /v1/catalog reads a CSV body in the charset its Content-Type declares, and answers 415 with charsets (every
# charset it reads) to one it does not read
#      GET /v1/status answers hub_clock (the agents that synced lately agree the hub's own clock is off; null: no)
#      the exception kind transfer_shared_ref and data.shippers (a transfer is kept per ref, SKU and destination:
#      transfer_misdirected is found no more)
#      a sync request's disk report (disk), each agent's disk in GET /v1/agents, and the exception kind
#      agent_disk_full (a store agent's disk full, or its disk reserve in use)
#      a sync answer to an agent among them carries the header Shelfsync-Hub-Clock-Off-Ms (the hub's clock is off)
#      data.shipped_elsewhere of a transfer_unmatched and data.received_elsewhere of a transfer_overdue (a receipt at
#      the wrong store and the shipment it missed name each other)
# 1.10: a channel's settings in GET /v1/channels name mapping_encoding (the charset its mapping_csv is read in);
#      POST /v1/events answers 422 to a SKU the hub counts under no spelling yet that only looks like one it counts
#      (or one before it in the request): a zero-width character, a decomposed accent, a full-width letter;
#      a held event's hub_clock_off_ms (held while the hub's own clock was off its stores'), POST
#      /v1/quarantine/release (those released at their own time, all at once), and the header
#      Shelfsync-Hub-Clock-Agreed of a sync answer (the other stores agree with the hub's clock, not this store's);
#      a page of GET /v1/ledger ends once its body passes 4 MiB (with next), however many rows limit allows;
#      GET /v1/counts takes sku up to 500 times (the counts of any of those SKUs; more is 400);
#      data.returned of a transfer's exceptions (its shipper received units back: a receipt back counts against its
#      shipment elsewhere and a final one closes it) and data.booked_out of a transfer_unmatched (an adjust carrying
#      the ref booked units out again where they were received: what is booked out is no longer listed)
# 1.11: the header Shelfsync-Api-Version on every answer (this version);
#      POST /v1/quarantine/release takes {"wrong_clock": "hub" | "store", "agent_id"?}: the held events the hub could
#      not attribute to its own clock, of one store or all, released at their own time or at the hub's time of
#      receipt, answered with wrong_clock, agent_id and detail (409 when their stores disagree on the hub's clock);
#      the exception kind book_out_without_ref (a store booked out goods received by mistake naming no transfer,
#      while it lists an unmatched receipt of the SKU), and POST /v1/events answers 422 to such an adjust (reason
#      "received by mistake, sent on" and no ref);
#      GET /v1/reports/variance by=sku in pages (limit default 500, cursor, next) of the most shrinkage first, with
#      row_count and the totals of every row in each page;
#      GET /v1/quarantine's first page names pending: how many are held pending in all (total, hub_clock, and per
#      agent those not attributed to either clock), what a release takes;
#      the dashboard's session cookie is __Host-shelfsync_session when the dashboard is served over HTTPS
# 1.12: a held event's hub_clock_vouched (how many other stores put the hub's clock right when it was held), and
#      POST /v1/quarantine/release with {"wrong_clock": "hub"} answers 409 when any it would take has one;
#      {"wrong_clock": "hub", "agent_id", "override_vouched": true} on POST /v1/quarantine/release releases one
#      store's at their own time even those with a hub_clock_vouched (logged naming the admin); the quarantine
#      CSV's last column hub_clock_vouched;
#      a webhook's aside in GET /v1/webhooks and the status (this hub leaves it to hubs started with a newer entry);
#      GET /v1/quarantine's pending.vouched (per agent, the most hub_clock_vouched of its unattributed held events)
# 1.13: GET /v1/status answers settings_differ (the settings that judge events in which this hub differs from another
#      hub process running on the same PostgreSQL database; empty: none);
#      a sync request's report of movements the hub lacks for good (lost: acknowledged, then lost with a restore of
#      the hub's database, no longer in the agent's outbox), the exception kind agent_movements_lost, and
#      POST /v1/agents/{agent_id}/lost/dismiss (the store counted again);
#      the quarantine CSV's last columns hub_clock_off_ms, wall_ms, received_at_ms and resolved_at_ms: every field
#      of a held event as JSON is a column of its CSV row
PATH = "/v1/openapi.json"
ROUTE_NAME = "openapi"
JSON_TYPE = "application/json"
PROBLEM_TYPE = problems.CONTENT_TYPE
INT63_MAX = (1 << 63) - 1
COUNT_ABS_MAX = wire.COUNT_ABS_MAX
BEARER = "bearer"
SESSION = "dashboardSession"
SHOPIFY_SIGNATURE = "shopifySignature"
SQUARE_SIGNATURE = "squareSignature"
RATE_LIMIT_POLICY = ratelimit.POLICY  # the name of the one quota policy in RateLimit-Policy / RateLimit

# Routes of the application that are not part of the API: the dashboard's HTML pages and files, for a browser.
NOT_API_ROUTES: Mapping[str, str] = {
    "GET /": "redirects a browser to the dashboard (an HTML page, not an API)",
    "GET /dashboard": "redirects a browser to the dashboard (an HTML page, not an API)",
    "GET /dashboard/": "the dashboard's HTML page",
    "GET /dashboard/sign-in": "the dashboard's sign-in HTML page",
    "POST /dashboard/sign-in": "the dashboard's sign-in form (a browser form post answered with pages)",
    "POST /dashboard/sign-out": "the dashboard's sign-out form (a browser form post answered with a redirect)",
    "GET /dashboard/assets/{name}": "the dashboard's stylesheet and script",
}


# --- schema helpers ------------------------------------------------------------------------------------


def article(noun: str) -> str:
    """"A" or "An" before ``noun`` (a field's name or an event kind, all spelled in lower-case English)."""
    return "An" if noun[:1] in "aeiou" else "A"


def ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: JSON) -> JSON:
    """``schema`` or null (OpenAPI 3.1: a type list for a plain type, else ``anyOf``)."""
    kind = schema.get("type")
    if isinstance(kind, str) and "$ref" not in schema:
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def integer(lo: int | None = None, hi: int | None = None, description: str | None = None, **more: Any) -> JSON:
    schema: JSON = {"type": "integer"}
    if lo is not None:
        schema["minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    if description:
        schema["description"] = description
    return schema | more


def string(description: str | None = None, **more: Any) -> JSON:
    schema: JSON = {"type": "string"}
    if description:
        schema["description"] = description
    return schema | more


def obj(properties: Mapping[str, JSON], required: Iterable[str] = (), *, closed: bool = False, **more: Any) -> JSON:
    """An object schema. ``closed``: no other member (request bodies: the hub refuses unknown fields).
    Answers are open: a /v1 answer may gain fields (docs/hub-api.md, "API versions")."""
    schema: JSON = {"type": "object", "properties": dict(properties)}
    req = list(required)
    if req:
        schema["required"] = req
    if closed:
        schema["additionalProperties"] = False
    return schema | more


def array(items: JSON, lo: int | None = None, hi: int | None = None, **more: Any) -> JSON:
    schema: JSON = {"type": "array", "items": items}
    if lo is not None:
        schema["minItems"] = lo
    if hi is not None:
        schema["maxItems"] = hi
    return schema | more


def _excluded(refused: Any) -> str:
    """A character class body (for ``[^...]``) of the Basic Multilingual Plane's code points ``refused`` is true
    of, as ``\\uXXXX`` ranges; surrogates are left out, as no JSON Schema string can hold one."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x10000):
        if 0xD800 <= cp <= 0xDFFF or not refused(chr(cp)):
            continue
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    return "".join(f"\\u{lo:04x}" if lo == hi else f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in ranges)


@functools.cache
def text_pattern() -> str:
    """``protocol.values``' text rule as an ECMA-262 pattern: the characters ``values.is_text`` refuses, found by
    asking the rule itself about every code point of the Basic Multilingual Plane (the rule is a fixed list of
    them, none beyond it)."""
    return f"^[^{_excluded(lambda ch: not values.is_text(ch))}]*$"


@functools.cache
def source_pattern() -> str:
    """``values.SOURCE`` as one ECMA-262 pattern: its prefixes, a colon, then text without whitespace (as
    Python's ``\\s`` has it, which is what the hub checks)."""
    prefixes, _, rest = values.SOURCE_RE.pattern.partition(":")
    if rest != r"[^\s]+":
        raise AssertionError("protocol.values.SOURCE_RE changed shape: update hub.openapi.source_pattern")
    space = re.compile(r"\s")
    return f"^{prefixes}:[^{_excluded(lambda ch: not values.is_text(ch) or space.match(ch) is not None)}]+$"


def text(field: values.TextField, description: str | None = None, *, stored: bool = False, **more: Any) -> JSON:
    """A ``protocol.values.TextField``: 1 to ``max_len`` characters of text, with its own pattern if it has one;
    not ``.`` or ``..`` when the field is a path segment, unless ``stored`` (a query parameter that finds a value
    stored before that rule)."""
    words = f"{article(field.what)} {field.what}: {field.rule()}."
    schema = string(f"{description} {words}" if description else words, minLength=1, maxLength=field.max_len)
    if field is values.SOURCE:
        schema["pattern"] = source_pattern()
    elif field.pattern is not None:
        schema["pattern"] = f"^(?:{field.pattern.pattern})$"
    elif field.path_segment and not stored:
        schema["pattern"] = r"^(?!\.\.?$)" + text_pattern().removeprefix("^")
    else:
        schema["pattern"] = text_pattern()
    return schema | more


def any_text(max_len: int, description: str | None = None, *, min_len: int = 0, **more: Any) -> JSON:
    return string(description, minLength=min_len, maxLength=max_len, pattern=text_pattern()) | more


def binary(size: int, description: str) -> JSON:
    """A msgpack ``bin`` of ``size`` bytes (shown as a string of that many code points 0–255 to JSON tools)."""
    return {
        "type": "string",
        "contentMediaType": "application/octet-stream",
        "minLength": size,
        "maxLength": size,
        "description": f"{description} (msgpack bin, {size} bytes)",
        "x-msgpack": "bin",
    }


def movement_rules() -> list[JSON]:
    """``protocol.event``'s rules between an event's kind and its qty and ref, as ``if``/``then`` per kind: a count
    is the absolute quantity (0 or more), a delta is never 0 and has its kind's sign, a transfer needs its ref."""
    rules: list[JSON] = []
    for kind in Kind:
        sign = QTY_SIGN.get(kind)
        if kind is Kind.COUNT:
            qty = integer(0, QTY_MAX, "A count is the absolute quantity on the shelf.")
        elif sign == -1:
            qty = integer(-QTY_MAX, -1, f"{article(kind.value)} {kind.value} takes units away: negative.")
        elif sign == 1:
            qty = integer(1, QTY_MAX, f"{article(kind.value)} {kind.value} adds units: positive.")
        else:
            qty = integer(-QTY_MAX, QTY_MAX, f"{article(kind.value)} {kind.value} moves units either way, never 0.", **{"not": {"const": 0}})
        then: JSON = {"properties": {"qty": qty}}
        if kind in REF_REQUIRED:
            then["required"] = ["ref"]
            then["properties"]["ref"] = text(values.REF, "The transfer reference that pairs both sides.")
        rules.append({"if": {"properties": {"kind": {"const": kind.value}}, "required": ["kind"]}, "then": then})
    return rules


def known(names: Iterable[str], what: str = "") -> JSON:
    """A text field of an answer whose values are listed, not closed: a /v1 answer may gain a value (a new event
    kind, a new effect), and a client generated from this document must not fail on it."""
    listed = ", ".join(names)
    return string(f"{what + ': ' if what else ''}one of {listed}; more may come within /v1 (treat another as unknown).",
                  **{"x-known-values": list(names)})


def iso_time(what: str) -> JSON:
    return nullable(string(f"{what}, ISO 8601 UTC with milliseconds (null when absent)", format="date-time"))


# --- parameters ---------------------------------------------------------------------------------------


def query(name: str, schema: JSON, description: str, *, example: Any = None) -> JSON:
    param: JSON = {"name": name, "in": "query", "required": False, "description": description, "schema": schema}
    if example is not None:
        param["example"] = example
    return param


def path_param(name: str, schema: JSON, description: str, example: Any) -> JSON:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema,
            "example": example}  # fmt: skip


def limit_param(default: int, maximum: int) -> JSON:
    return query("limit", integer(1, maximum, default=default), f"At most this many rows (1 to {maximum}, default {default}).")


def cursor_param(what: str) -> JSON:
    return query(
        "cursor",
        string(minLength=1, maxLength=paging.CURSOR_MAX_CHARS, pattern="^[A-Za-z0-9_-]+$"),
        f"The `next` of the previous page of {what}, unchanged (an opaque cursor); leave it out for the first page.",
    )


# RFC 3339 (views.RFC3339_RE), from the year 1970 on: a time the hub's milliseconds since 1970 can name.
SINCE_PATTERN = r"^(19[7-9][0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
LOCATION_QUERY = query("location", ref("Location"), "Only this location.", example="S001")
SKU_QUERY = query("sku", text(values.SKU, "Also '.' or '..', stored by a hub from before that rule.", stored=True),
                  "Only this SKU.", example="SKU-1")
SKUS_QUERY = {
    **query("sku", array(text(values.SKU, "Also '.' or '..', stored by a hub from before that rule.", stored=True),
                         1, dashboard_api.COUNTS_SKUS_MAX),
            "Only these SKUs: the parameter repeated, once to 500 times (since 1.10; before, once).",
            example=["SKU-1", "SKU-2"]),
    "style": "form", "explode": True,
}  # fmt: skip
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "An ETag of an earlier answer: when the answer is still the same, the hub answers 304 with no body.",
    "schema": string(),
}


# --- answers ------------------------------------------------------------------------------------------


# A change feed cursor: <change_id>.<history><check>, <change_id>.<history>, or the change id alone (hub/feed.py).
CHANGE_CURSOR_PATTERN = r"^[0-9]{1,19}(\.[0-9a-f]{1,32})?$"

ERROR_STATUS: Mapping[int, tuple[str, str]] = {
    400: ("bad_request", ("The request is malformed: a query parameter unknown, repeated or out of range, a path "
          "parameter that is not text, a body that does not parse or has the wrong shape, more than one "
          "Authorization header, or a request that is not valid HTTP/1.1 (the connection is then closed).")),
    401: ("unauthorized", "No credential, a malformed one, or one unknown or revoked (with WWW-Authenticate: Bearer)."),
    403: ("forbidden", "The credential's role may not do this, or it names another agent than its own."),
    404: ("not_found", "There is no such resource (or no route for this path)."),
    405: ("method_not_allowed", "The route does not take this method; Allow lists the ones it takes."),
    408: ("request_timeout", ("The request head did not arrive whole within header_timeout_s, or its body within "
          "body_timeout_s; the connection is closed.")),
    409: ("conflict", "The request conflicts with what the hub holds; nothing was changed."),
    410: ("gone", ("The change feed cursor is of an earlier history of the feed (the hub's database was restored "
                   "from a backup, copied or moved since): read the feed again from the start, or from the newest "
                   "change.")),
    413: ("payload_too_large", (f"The body is larger than max_body_bytes ({DEFAULT_MAX_BODY_BYTES} bytes by default) "
          "or the route's own limit.")),
    415: ("unsupported_media_type", "The body was sent with another Content-Type than the route takes, or compressed."),
    417: ("http_417", "The request carries an Expect other than 100-continue, which the hub does not take."),
    422: ("invalid_events", ("The request is well-formed but some of its events break the contract; nothing was "
          "committed.")),
    429: ("rate_limited", ("This credential sent write requests faster than its quota, or already runs "
          "export_max_per_credential CSV downloads, or (POST /v1/sync) this hub already works on its most catch-up "
          "batches (bodies over 256 KiB) at once and its line of waiting ones is full (or this one waited 10 s in it), "
          "or it holds two of this agent's already (to a POST /v1/sync sent with Expect: 100-continue, either is answered "
          "from the head, before 100 Continue), or (the change feed) it read more changes from the database than "
          "feed_read_burst at once or feed_read_rows_per_s on average, or (any other read) it read more bytes of answers "
          "than read_burst_bytes at once or read_bytes_per_s on average, or (a route without a credential) its client "
          "address was refused more often than refused_attempts_per_s; nothing of the request was stored: wait "
          "Retry-After seconds and send it again.")),
    500: ("internal_error", "A bug: the hub logged the cause and keeps serving."),
    502: ("bad_gateway", "The sales channel refused the hub's call or answered it wrongly; nothing was changed."),
    503: ("unavailable", ("The hub is shutting down or its database is unavailable, it is still opening its database "
          "(migrating it at an upgrade; GET /livez says how far), or it already runs export_max CSV downloads; try "
          "again shortly (Retry-After).")),
}  # fmt: skip


def problem_schema() -> JSON:
    """RFC 9457 problem details, as hub.problems builds them."""
    codes = sorted({*problems.CODES.values(), *problems.TITLES})
    return obj(
        {
            "type": string(f"Names the problem: {problems.TYPE_PREFIX}<code>, a URN of this project.",
                           format="uri", pattern=f"^{problems.TYPE_PREFIX}[a-z0-9_]+$"),
            "title": string("A short summary of the problem type, the same for every occurrence of it."),
            "status": integer(400, 599, "The HTTP status code of this answer."),
            "detail": string("One sentence a person can act on: what was wrong with this request and what to do."),
            "code": known(codes, "The machine-readable reason, the last part of type"),
        },
        ["type", "title", "status", "detail", "code"],
        description="RFC 9457 problem details (application/problem+json); a route may add its own members.",
        example=problems.body(400, "limit must be a whole number from 1 to 10000, got '0'"),
    )


def error_content(schema: JSON | None = None) -> JSON:
    return {PROBLEM_TYPE: {"schema": schema or ref("Problem")}}


def error(status: int, description: str | None = None, schema: JSON | None = None, headers: JSON | None = None) -> JSON:
    answer: JSON = {"description": description or ERROR_STATUS[status][1], "content": error_content(schema)}
    if headers:
        answer["headers"] = headers
    return answer


def header(description: str, schema: JSON, *, required: bool = False) -> JSON:
    return {"description": description, "required": required, "schema": schema}


ETAG_HEADER = header(
    "A strong validator of this answer: send it back in If-None-Match to be answered 304 while it holds.",
    string(pattern='^"[^"]*"$'),
    required=True,
)
CACHE_CONTROL_HEADER = header("private, no-cache: keep the answer, but revalidate it (If-None-Match) before use.", string())
RATE_LIMIT_HEADERS: JSON = {
    "RateLimit-Policy": header(
        f'The quota of this route (draft-ietf-httpapi-ratelimit-headers-10): "{RATE_LIMIT_POLICY}";q=<burst>;w=<seconds> '
        f"— q requests at once per credential, refilled at rate_limit_per_s (by default q={DEFAULT_RATE_LIMIT_BURST}, "
        f"{DEFAULT_RATE_LIMIT_PER_S:g} a second, so w={ratelimit.window_s(DEFAULT_RATE_LIMIT_PER_S, DEFAULT_RATE_LIMIT_BURST)}); "
        f'on the change feed "{feed.READ_POLICY}";q=<feed_read_burst>;w=<seconds>, changes read from the database; '
        f'on the other reads "{ratelimit.READS_POLICY}";q=<read_burst_bytes>;w=<seconds>, bytes of answers.',
        string(),
        required=True,
    ),
    "RateLimit": header(
        f'What is left of it for this credential: "{RATE_LIMIT_POLICY}";r=<requests left>;t=<seconds until full again> '
        "(on the change feed, r counts changes; on the other reads, bytes).",
        string(),
        required=True,
    ),
}
RETRY_AFTER_HEADER = header("Whole seconds to wait before sending again.", integer(1), required=True)
REFUSALS_WINDOW_S = ratelimit.window_s(DEFAULT_REFUSED_ATTEMPTS_PER_S, DEFAULT_REFUSED_ATTEMPTS_BURST)
REFUSED_ATTEMPTS_429: JSON = error(
    429,
    "This client address was refused (a missing or bad signature, a failed sign-in) more than refused_attempts_burst "
    "times at once or refused_attempts_per_s a second for a while: every request it sends here is answered so, from "
    "its head and before its body is read, until Retry-After has passed; other addresses are served. Nothing was "
    "applied: send it again then.",
    headers={
        "Retry-After": RETRY_AFTER_HEADER,
        "RateLimit-Policy": header(
            f'"{ratelimit.REFUSALS_POLICY}";q=<burst>;w=<seconds> — q refused attempts at once per client address, '
            f"refilled at refused_attempts_per_s (by default q={DEFAULT_REFUSED_ATTEMPTS_BURST}, "
            f"{DEFAULT_REFUSED_ATTEMPTS_PER_S:g} a second, so w={REFUSALS_WINDOW_S}).",
            string(),
            required=True,
        ),
        "RateLimit": header(
            f'"{ratelimit.REFUSALS_POLICY}";r=0;t=<seconds until full again>: what is left for this address.',
            string(),
            required=True,
        ),
    },
)


def ok(description: str, schema: JSON, *, media: str = JSON_TYPE, example: Any = None, headers: JSON | None = None,
       links: JSON | None = None, extra_media: JSON | None = None) -> JSON:  # fmt: skip
    content: JSON = {"schema": schema}
    if example is not None:
        content["example"] = example
    answer: JSON = {"description": description, "content": {media: content, **(extra_media or {})}}
    if headers:
        answer["headers"] = headers
    if links:
        answer["links"] = links
    return answer


def cacheable(answer: JSON) -> JSON:
    """``answer`` with the ETag headers of a route the hub validates (hub.etag); a list that also answers CSV
    (streamed, so untagged) has them on its JSON answers only."""
    if CSV_TYPE not in answer["content"]:
        tag, cache = ETAG_HEADER, CACHE_CONTROL_HEADER
    else:
        tag = {**ETAG_HEADER, "description": f"JSON answers: {ETAG_HEADER['description']}", "required": False}
        cache = {**CACHE_CONTROL_HEADER, "description": f"JSON answers: {CACHE_CONTROL_HEADER['description']} "
                                                        "CSV answers (streamed, untagged): no-store."}
    return answer | {"headers": {**answer.get("headers", {}), "ETag": tag, "Cache-Control": cache}}


def with_csv(answer: JSON, columns: str) -> JSON:
    """A list's answer that is CSV when asked (``Accept: text/csv`` or ``format=csv``): the whole list, streamed."""
    csv = {"schema": string(f"RFC 4180 CSV with a header row: {columns}."), "example": columns.replace(" ", "") + "\r\n"}
    return answer | {"content": {**answer["content"], CSV_TYPE: csv},
                     "headers": {**answer.get("headers", {}), **CSV_HEADERS}}  # fmt: skip


def with_properties(schema: JSON, **more: JSON) -> JSON:
    """``schema`` (an object's) with optional properties ``more`` besides its own."""
    return {**schema, "properties": {**schema["properties"], **more}}


def page_of(key: str, item: JSON, **more: JSON) -> JSON:
    """A page of a paged read: its rows under ``key``, and ``next``."""
    page_next = nullable(string("The cursor of the next page, or null on the last page."))
    return obj({**more, key: array(item), "next": page_next}, [*more, key, "next"])


CSV_TYPE = csvexport.CSV_MEDIA_TYPE
CSV_LIMIT_MAX = csvexport.ROWS_MAX
CSV_HEADERS: JSON = {
    "Content-Disposition": header('CSV answers: attachment; filename="<list>-<filters>-<UTC time>.csv".', string()),
}
CSV_CONTENT: JSON = {"schema": string("RFC 4180 CSV with a header row (docs/hub-api.md, CSV).")}
FORMAT_QUERY = query(
    "format", string(enum=["csv"]),
    f"csv: the whole list as CSV (as Accept: text/csv), every page streamed; then limit caps the rows "
    f"(1 to {CSV_LIMIT_MAX}, default all) and cursor starts after a JSON page's next.",
)  # fmt: skip
PERIOD = {"anyOf": [string(format="date"), string(format="date-time")], "pattern": "^(19[7-9][0-9]|[2-5][0-9]{3})-"}
COUNT_COLUMNS = ", ".join(csvexport.COUNT_HEADER)
CHANNEL_NAME = string(minLength=1, pattern=f"^(?:{NAME_RE.pattern})$")
NOT_UNKNOWN_SKU: JSON = {"not": {"pattern": f"^{UNKNOWN_SKU_PREFIX}"}}  # the key of an unknown barcode is no SKU

NOT_MODIFIED: JSON = {
    "description": "Not modified: the answer is still the one whose ETag was sent in If-None-Match (no body).",
    "headers": {"ETag": ETAG_HEADER},
}


def link(operation_id: str, description: str, **parameters: str) -> JSON:
    return {"operationId": operation_id, "description": description, "parameters": parameters}


# --- operations ---------------------------------------------------------------------------------------


def operation(
    operation_id: str,
    summary: str,
    description: str,
    tag: str,
    responses: JSON,
    *,
    roles: Sequence[str] = (ROLE_AGENT, ROLE_READER, ROLE_ADMIN),
    parameters: Sequence[JSON] = (),
    body: JSON | None = None,
    security: list[JSON] | None = None,
    errors: Iterable[int] = (),
    cookie: bool = False,
) -> JSON:
    """One operation. Every authenticated one can answer 401 and 503; any operation can answer 400 (HTTP that
    does not parse, two Authorization headers), 405 (another method), 408 (a head that did not arrive in time),
    417 (an Expect but 100-continue) and 500 (a bug, which the tests hunt)."""
    public = security == []
    codes = set(errors) | {400, 405, 408, 417, 500, 503} | (set() if public else {401})
    if any(CSV_TYPE in r.get("content", {}) for r in responses.values()):
        codes.add(429)  # one CSV download more than export_max_per_credential (hub/exportslots.py)
    if set(roles) != {ROLE_AGENT, ROLE_READER, ROLE_ADMIN} and not public:
        codes.add(403)
    for code in sorted(codes):
        responses.setdefault(str(code), {"$ref": f"#/components/responses/E{code}"})
    op: JSON = {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "tags": [tag],
    }
    if parameters:
        op["parameters"] = list(parameters)
    if body is not None:
        op["requestBody"] = body
    op["responses"] = dict(sorted(responses.items()))
    if security is not None:
        op["security"] = security
    elif cookie:
        op["security"] = [{BEARER: []}, {SESSION: []}]
    if not public:
        op["x-shelfsync-roles"] = list(roles)
    return op


def json_body(schema: JSON, example: Any, description: str) -> JSON:
    return {"required": True, "description": description, "content": {JSON_TYPE: {"schema": schema, "example": example}}}


def msgpack_body(schema: JSON, description: str) -> JSON:
    return {"required": True, "description": description, "content": {MSGPACK_CONTENT_TYPE: {"schema": schema}}}


WRITE_ERRORS = (408, 413, 415)  # any request with a body (hub.app.body_middleware; from its head: hub.heads)
INGEST = (ROLE_AGENT, ROLE_ADMIN)


def _paths() -> dict[str, JSON]:
    counts_page_example = {"counts": [{"location": "S001", "sku": "SKU-1", "on_hand": 7, "reserved": 0, "available": 7,
                                       "in_transit": 0, "safety_stock": 0, "last_count_at": None, "last_count_time": None,
                                       "updated_at_ms": 1764061201000, "updated_at": "2025-11-25T09:00:01.000Z"}],
                           "next": None}  # fmt: skip
    next_page = "The answer's next, as cursor, for the page after it."
    paths: dict[str, JSON] = {}

    def add(path: str, method: str, op: JSON) -> None:
        if method == "get" and "x-shelfsync-roles" in op and "429" not in op["responses"]:  # a credential's read budget
            op["responses"] = dict(sorted({**op["responses"], "429": {"$ref": "#/components/responses/E429"}}.items()))
        paths.setdefault(path, {})[method] = op

    add(routes.HEALTH_PATH, "get", operation(
        "getHealth", "Readiness and database health",
        "For load balancers (readiness) and uptime checks; needs no credential. 503 when the database fails the "
        "check, the hub is shutting down, or it is still opening its database (migrating it, or waiting for another "
        "hub's migration): the body says which.",
        "Operations",
        {"200": ok("The hub and its database are healthy.", ref("Health"),
                   example={"status": "ok", "db": {"backend": "sqlite", "schema_version": 6}}),
         "503": error(503, "The database fails its check, the hub is shutting down, or it is still opening its "
                           "database: problem details with `health` (error, unavailable, opening, migrating or "
                           "waiting), `db.error` saying why, and `migration` while a step runs; Retry-After.",
                      ref("HealthProblem"), headers={"Retry-After": RETRY_AFTER_HEADER})},
        security=[],
    ))  # fmt: skip
    add(starting.LIVE_PATH, "get", operation(
        "getLive", "Liveness",
        "For liveness probes (a service manager or orchestrator restarting a hub that hangs); needs no credential "
        "and asks nothing of the database. 200 from the hub's start: while it opens its database, and migrates it on "
        "an upgrade (tens of seconds to minutes on a big ledger), `status` says so and every other route answers 503 "
        "with Retry-After.",
        "Operations",
        {"200": ok("The hub process answers.", ref("Live"),
                   example={"status": "migrating",
                            "detail": "the hub is migrating its database to schema version 10 (observations_newest): "
                                      "statement 4 of 13, 20 s so far",
                            "migration": {"schema_version": 10, "name": "observations_newest", "step": 1, "steps": 1,
                                          "statement": 4, "statements": 13, "elapsed_s": 20.3}})},
        security=[],
    ))  # fmt: skip
    add(PATH, "get", operation(
        "getOpenApiDocument", "This document",
        "The hub's API as OpenAPI 3.1 (this document); public, with a strong ETag.",
        "Operations",
        {"200": cacheable(ok("The OpenAPI document.", {"type": "object"})), "304": NOT_MODIFIED},
        parameters=[IF_NONE_MATCH],
        security=[],
    ))  # fmt: skip
    add("/metrics", "get", operation(
        "getMetrics", "Prometheus metrics",
        "This hub process's metrics in the Prometheus text exposition format (docs/hub-api.md lists them). Any "
        "credential; no query parameters.",
        "Operations",
        {"200": ok("The metrics.", string(), media="text/plain")},
    ))  # fmt: skip

    # --- sync and ingest
    add(routes.SYNC_PATH, "post", operation(
        "postSync", "Send a batch of an agent's events",
        f"An agent sends one batch of at most {MAX_BATCH_EVENTS} events from its outbox (msgpack) and learns its new "
        "high-water mark and the counts the batch touched. The hub checks the whole batch, then dedupes, orders, "
        "resolves and commits it with the mark in one transaction before it answers. The `agent_id` of the body must "
        "be the credential's own (else 403 with `credential_agent_id`). A catch-up batch (a body over "
        f"{routes.SYNC_CATCHUP_BYTES // 1024} KiB) sent with `Expect: 100-continue` and a Content-Length is given its slot "
        "from the head: the hub answers `100 Continue` once it has one (after a wait in line, if need be) or 429 with "
        "Retry-After and `Connection: close` before the body is sent; it keeps the slot while its body uploads at "
        f"{catchup.UPLOAD_MIN_BYTES_PER_S // 1024} KiB/s or faster, else gives it to the next and takes one again once "
        "the body has come; one still waiting when the hub starts shutting down is answered 503 then. Any sync sent "
        "with `Expect: 100-continue` is answered from its head too, with `Connection: close`, whatever the head alone "
        "condemns: 503 (the hub shutting down, or its database failing), 401 (a missing, unknown or revoked credential), 429 (past the rate "
        "limit), 415 (a compressed body, or not msgpack), 413 (a Content-Length over max_body_bytes), 403 (not an "
        "agent's credential).",
        "Sync",
        {"200": ok("Committed: the new mark, what was refused, and the counts touched.", ref("SyncResponse"),
                   media=MSGPACK_CONTENT_TYPE, headers=RATE_LIMIT_HEADERS),
         "422": error(422, "The envelope is sound but some events are not; nothing was committed. `rejected` lists "
                           "every bad event.", ref("InvalidSyncEvents")),
         "429": {"$ref": "#/components/responses/E429"}},
        roles=INGEST,
        body=msgpack_body(ref("SyncRequest"), "protocol.encode_sync_request(SyncRequest(...))."),
        errors=WRITE_ERRORS,
    ))  # fmt: skip
    add("/v1/events", "post", operation(
        "postEvents", "Push a channel connector's movements",
        f"A web shop or marketplace connector pushes 1 to {events_api.EVENTS_MAX} of its own movements (JSON) through "
        "the same validation, dedupe and resolution as an agent's events. Resending a movement with the same `id` "
        "and `occurred_at` is a duplicate, never a second movement.",
        "Sync",
        {"200": ok("Committed: each event's fate in request order, and the counts touched.", ref("EventsAnswer"),
                   headers=RATE_LIMIT_HEADERS,
                   links={"ChangesAfter": link("getChanges", "The change feed, where these movements show up.")}),
         "409": error(409, "Every event is valid alone, but some name a movement (`id` and `occurred_at`) an earlier one "
                      "of the request names with other content (code conflicting_events); nothing was committed. "
                      "`rejected` lists each later copy.", ref("InvalidApiEvents")),
         "422": error(422, "Some events break the contract; nothing was committed. `rejected` lists every bad one "
                      "(a SKU new to the hub that only looks like one it counts among them).",
                      ref("InvalidApiEvents")),
         "429": {"$ref": "#/components/responses/E429"}},
        roles=INGEST,
        body=json_body(ref("EventsRequest"), {"events": [
            {"id": "order-5531:reserve", "location": "WEB", "sku": "SKU-1", "kind": "reserve", "qty": 2,
             "occurred_at": "2025-11-25T09:00:00Z", "ref": "order-5531"}]}, "The movements."),
        errors=WRITE_ERRORS,
    ))  # fmt: skip
    add(routes.OBSERVATIONS_PATH, "post", operation(
        "postObservations", "Report other systems' on-hand figures",
        f"Snapshots another system (a web shop, a POS export) believed, never movements; at most {MAX_REPORT_ITEMS} "
        "per request (msgpack). Kept per (agent, id): a resend is accepted again, the same id with other content or "
        "another location than the credential's is rejected with a reason.",
        "Reports",
        {"200": ok("Each id accepted or rejected.", ref("ReportAnswer"), media=MSGPACK_CONTENT_TYPE,
                   headers=RATE_LIMIT_HEADERS),
         "429": {"$ref": "#/components/responses/E429"}},
        roles=INGEST,
        body=msgpack_body(ref("ObservationsRequest"), "protocol.reports.encode_observations(...)."),
        errors=WRITE_ERRORS,
    ))  # fmt: skip
    add(routes.IMPORT_ISSUES_PATH, "post", operation(
        "postImportIssues", "Report quarantined POS export rows",
        f"Rows of POS exports the agent could not import, at most {MAX_REPORT_ITEMS} per request (msgpack); each is "
        "listed in GET /v1/exceptions as import_quarantine.",
        "Reports",
        {"200": ok("Each id accepted or rejected.", ref("ReportAnswer"), media=MSGPACK_CONTENT_TYPE,
                   headers=RATE_LIMIT_HEADERS),
         "429": {"$ref": "#/components/responses/E429"}},
        roles=INGEST,
        body=msgpack_body(ref("ImportIssuesRequest"), "protocol.reports.encode_import_issues(...)."),
        errors=WRITE_ERRORS,
    ))  # fmt: skip

    # --- counts
    add("/v1/locations/{location}/counts", "get", operation(
        "getLocationCounts", "Counts of every SKU at one location",
        "By SKU, a page at a time. A location the hub has never seen answers an empty list.",
        "Counts",
        {"200": cacheable(with_csv(ok("A page of counts.", ref("LocationCountsPage"), example={"location": "S001", **counts_page_example},
                             links={"NextPage": link("getLocationCounts", next_page, location="$request.path.location",
                                                     cursor="$response.body#/next"),
                                    "LedgerHere": link("getLedger", "The ledger of this location.",
                                                       location="$request.path.location")}), COUNT_COLUMNS)),
         "304": NOT_MODIFIED},
        parameters=[path_param("location", ref("Location"), "The location code.", "S001"),
                    limit_param(dashboard_api.COUNTS_LIMIT_DEFAULT, dashboard_api.COUNTS_LIMIT_MAX),
                    cursor_param("counts"), FORMAT_QUERY, IF_NONE_MATCH],
        errors=(404,), cookie=True,
    ))  # fmt: skip
    add("/v1/skus/{sku}/counts", "get", operation(
        "getSkuCounts", "Counts of one SKU at every location",
        "By location, a page at a time. A SKU holding `/` is percent-encoded in the path (`SKU%2F1`).",
        "Counts",
        {"200": cacheable(with_csv(ok("A page of counts.", ref("SkuCountsPage"), example={"sku": "SKU-1", **counts_page_example},
                             links={"NextPage": link("getSkuCounts", next_page, sku="$request.path.sku",
                                                     cursor="$response.body#/next"),
                                    "LedgerOfSku": link("getLedger", "The ledger of this SKU.", sku="$request.path.sku")}),
                                   COUNT_COLUMNS)),
         "304": NOT_MODIFIED},
        parameters=[path_param("sku", ref("Sku"), "The SKU.", "SKU-1"),
                    limit_param(dashboard_api.COUNTS_LIMIT_DEFAULT, dashboard_api.COUNTS_LIMIT_MAX),
                    cursor_param("counts"), FORMAT_QUERY, IF_NONE_MATCH],
        errors=(404,), cookie=True,
    ))  # fmt: skip
    add("/v1/counts", "get", operation(
        "getCounts", "Counts of every (location, SKU)",
        "Optionally of one location or of one or more SKUs, a page at a time, by location then SKU. `sku` may be "
        f"given up to {dashboard_api.COUNTS_SKUS_MAX} times (since 1.10): the counts of any of them; more is 400, and a "
        "hub before 1.10 answers 400 to a repeated `sku`.",
        "Counts",
        {"200": cacheable(with_csv(ok("A page of counts.", ref("CountsPage"), example=counts_page_example,
                             links={"NextPage": link("getCounts", next_page, cursor="$response.body#/next")}),
                                   COUNT_COLUMNS)),
         "304": NOT_MODIFIED},
        parameters=[LOCATION_QUERY, SKUS_QUERY,
                    limit_param(dashboard_api.COUNTS_LIMIT_DEFAULT, dashboard_api.COUNTS_LIMIT_MAX),
                    cursor_param("counts"), FORMAT_QUERY, IF_NONE_MATCH],
        cookie=True,
    ))  # fmt: skip
    add("/v1/locations/{location}/skus/{sku}/safety-stock", "put", operation(
        "putSafetyStock", "Set a SKU's safety stock at a location",
        "Units held back from `available` so channels do not sell the last ones on the shelf (admin).",
        "Counts",
        {"200": ok("The count as it now stands.", obj({"count": ref("Count")}, ["count"]),
                   links={"CountsHere": link("getLocationCounts", "The counts of this location.",
                                             location="$request.path.location"),
                          "CountsOfSku": link("getSkuCounts", "The counts of this SKU.", sku="$request.path.sku")})},
        roles=(ROLE_ADMIN,),
        parameters=[path_param("location", ref("Location"), "The location code.", "S001"),
                    path_param("sku", ref("Sku"), "The SKU.", "SKU-1")],
        body=json_body(obj({"qty": integer(0, QTY_MAX)}, ["qty"], closed=True), {"qty": 5}, "The safety stock in units."),
        errors=(*WRITE_ERRORS, 404),
    ))  # fmt: skip

    # --- ledger, exceptions, agents, quarantine
    add("/v1/ledger", "get", operation(
        "getLedger", "Events, rejected attempts and transfer write-offs",
        "Newest first in resolution order (occurred_at, agent_id, seq, event_id), a page at a time. `before` (a packed "
        "HLC) only says where the first page starts; `cursor` and `before` together are 400. A page ends once its body "
        "passes 4 MiB (since 1.10), with `next`, however many rows `limit` allows.",
        "Ledger",
        {"200": cacheable(with_csv(ok("A page of the ledger.", ref("LedgerPage"),
                             links={"NextPage": link("getLedger", next_page, cursor="$response.body#/next")}),
                                   ", ".join(csvexport.LEDGER_HEADER))),
         "304": NOT_MODIFIED},
        parameters=[LOCATION_QUERY, SKU_QUERY, limit_param(1000, 10_000), cursor_param("the ledger"),
                    query("before", integer(1, HLC_QUERY_MAX), "A packed HLC: the first page holds events before it."),
                    FORMAT_QUERY, IF_NONE_MATCH],
        cookie=True,
    ))  # fmt: skip
    add("/v1/exceptions", "get", operation(
        "getExceptions", "What the operations team should look at",
        "Negative stock, transfer differences, held and rejected events, unknown barcodes, divergences and "
        "quarantined import rows, newest first, a page at a time; of one location, one kind and since a time "
        "(each optional, filtered by the hub, not in the page). A cursor goes with the filters it was given out for: "
        "the same location, kind and since, or 400.",
        "Ledger",
        {"200": cacheable(with_csv(ok("A page of exceptions.", ref("ExceptionsPage"),
                             links={"NextPage": link("getExceptions", next_page + " Send the same filters with it.",
                                                     cursor="$response.body#/next", location="$request.query.location",
                                                     kind="$request.query.kind", since="$request.query.since")}),
                                   ", ".join(csvexport.EXCEPTION_HEADER))),
         "304": NOT_MODIFIED},
        parameters=[query("location", ref("Location"), "Only the exceptions of this location: a transfer's at either "
                          "end, a transfer several locations shipped under one ref at each of them, a transfer to an "
                          "unknown location at its sender.",
                          example="S001"),
                    query("kind", {"type": "string", "enum": list(keys.EXCEPTION_KINDS)},
                          "Only exceptions of this kind (another is 400, naming the kinds).", example="negative_on_hand"),
                    query("since", string(format="date-time", pattern=SINCE_PATTERN),
                          "Only exceptions that arose at or after this time (their at_ms): RFC 3339 with its zone.",
                          example="2026-01-31T18:00:00Z"),
                    limit_param(1000, 10_000), cursor_param("the exceptions"), FORMAT_QUERY, IF_NONE_MATCH],
        cookie=True,
    ))  # fmt: skip
    add("/v1/agents", "get", operation(
        "getAgents", "Every credential's status",
        "Role, revocation, locations, last sync, high-water mark per epoch, clock skew and reported backlog.",
        "Agents",
        {"200": cacheable(with_csv(ok("Every credential.", obj({"agents": array(ref("AgentStatus"))}, ["agents"])),
                                   ", ".join(csvexport.AGENT_HEADER))),
         "304": NOT_MODIFIED},
        parameters=[FORMAT_QUERY, IF_NONE_MATCH],
        cookie=True,
    ))  # fmt: skip
    add(findings.LOST_DISMISS_PATH, "post", operation(
        "dismissAgentLost", "Dismiss an agent's lost movements once its store was counted again",
        "Admin only; no body (since 1.13). The agent's agent_movements_lost exceptions still listed (movements the "
        "hub had acknowledged and lacks since its database was restored from an older copy, which the store's PC no "
        "longer holds) leave the list: say so once the store's stock was counted again. The agent reporting them "
        "again changes nothing. 404 when none of the agent's is listed.",
        "Agents",
        {"200": ok("What was dismissed.", obj({
            "agent_id": ref("AgentId"),
            "dismissed": array(obj({
                "first_seq": integer(1, SEQ_MAX), "last_seq": integer(1, SEQ_MAX), "lost": integer(1, SEQ_MAX),
                "at_least": {"type": "boolean"},
            }, ["first_seq", "last_seq", "lost", "at_least"]), lo=1),
        }, ["agent_id", "dismissed"]), example={"agent_id": "agent-1a2b3c4d", "dismissed": [
            {"first_seq": 6, "last_seq": 9, "lost": 4, "at_least": False}]})},
        roles=(ROLE_ADMIN,),
        parameters=[path_param("agent_id", ref("AgentId"), "The agent that reported the movements lost (the "
                               "exception's data.agent_id).", "agent-1a2b3c4d")],
        errors=(404,),
    ))  # fmt: skip
    add("/v1/status", "get", operation(
        "getStatus", "The dashboard's operations summary",
        "The database, every agent (as in GET /v1/agents, plus online state), the feed's position and the webhooks. "
        "It holds the hub's clock, so it is never the same twice: no ETag.",
        "Agents",
        {"200": ok("The summary.", ref("Status"))},
        cookie=True,
    ))  # fmt: skip
    add("/v1/quarantine", "get", operation(
        "getQuarantine", "Events held for a clock outside the window",
        "Newest first, a page at a time. Reader or admin.",
        "Quarantine",
        {"200": cacheable(with_csv(ok("A page of held events.", ref("QuarantinePage"),
                             links={"NextPage": link("getQuarantine", next_page, cursor="$response.body#/next"),
                                    "Resolve": link("resolveQuarantined", "Resolve the first held event.",
                                                    quarantine_id="$response.body#/quarantine/0/id")}),
                                   ", ".join(csvexport.QUARANTINE_HEADER))),
         "304": NOT_MODIFIED},
        roles=tuple(sorted(quarantine.READ_ROLES)),
        parameters=[query("status", string(enum=[*QUARANTINE_STATUSES, "all"], default="pending"), "Which held events."),
                    LOCATION_QUERY, limit_param(quarantine.LIMIT_DEFAULT, quarantine.LIMIT_MAX),
                    cursor_param("the quarantine"), FORMAT_QUERY, IF_NONE_MATCH],
        cookie=True,
    ))  # fmt: skip
    add(quarantine.RELEASE_PATH, "post", operation(
        "releaseHubClockHeld", "Release the events held because of the hub's own clock",
        "Admin only. Every pending held event with a `hub_clock_off_ms` (held while the stores agreed the hub's clock "
        "was off, the sender's clock with them) whose time is inside the clock window by the corrected clock is "
        "applied at its own time (the ledger row's attrs name the admin in `released_by` and the offset in "
        "`hub_clock_off_ms`) and resolved `applied`; the others stay pending, for one by one. The hub does this "
        "itself once its clock looks right again. No body, or `{}`. With `{\"wrong_clock\": \"hub\"}` or "
        "`{\"wrong_clock\": \"store\"}` and an optional `agent_id` (since 1.11): the pending held events the hub "
        "could not attribute to its own clock (no `hub_clock_off_ms`: a lone store, stores that disagree), of that "
        "store or of all, as the admin found whose clock was wrong: `hub`, each at its own time when inside the "
        "window by the hub's clock corrected by its sender's skew then (409 when the stores of those of all put "
        "the hub's clock off by amounts more than a minute apart, and since 1.12 when any of them has a "
        "`hub_clock_vouched`: the other stores put the hub's clock right when it was held, nothing is changed, "
        "unless `override_vouched` is true with one store's `agent_id`, since 1.12); "
        "`store`, each at the hub's time of receipt, as "
        "`apply_at_receipt`. The answer then also says what was applied (`detail`); 404 for an `agent_id` this hub "
        "does not know.",
        "Quarantine",
        {"200": ok("How many were released, and how many stay pending.",
                   obj({"released": integer(0), "left": integer(0),
                        "wrong_clock": string("Whose clock the admin found wrong (since 1.11; only when given).",
                                              enum=["hub", "store"]),
                        "agent_id": {"type": ["string", "null"],
                                     "description": "The store whose held events were released; null: every store "
                                                    "(since 1.11; only with wrong_clock)."},
                        "detail": string("One sentence saying what was applied, how, and what stays (since 1.11; "
                                         "only with wrong_clock).")},
                       ["released", "left"]),
                   example={"released": 42, "left": 0})},
        roles=(ROLE_ADMIN,),
        body={"required": False, "description": f"None, `{{}}`, or whose clock was wrong (at most "
                                                f"{quarantine.BODY_MAX_BYTES} bytes).",
              "content": {JSON_TYPE: {"schema": obj({"wrong_clock": string(enum=["hub", "store"]),
                                                     "agent_id": ref("AgentId"),
                                                     "override_vouched": {
                                                         "type": "boolean", "const": True,
                                                         "description": "Since 1.12: release one store's at their "
                                                         "own time even those with a `hub_clock_vouched` (only with "
                                                         "`wrong_clock` `hub` and an `agent_id`; 400 otherwise); "
                                                         "logged naming the admin."}},
                                                    closed=True, dependentRequired={"agent_id": ["wrong_clock"]})
                                                | {"if": {"required": ["override_vouched"]},
                                                   "then": {"properties": {"wrong_clock": {"const": "hub"}},
                                                            "required": ["wrong_clock", "agent_id"]}},
                                      "example": {"wrong_clock": "hub"}}}},
        errors=(*WRITE_ERRORS, 404, 409),
    ))  # fmt: skip
    add("/v1/quarantine/{quarantine_id}", "post", operation(
        "resolveQuarantined", "Apply or discard one held event",
        "Admin only. `apply_at_receipt` ingests it as if it happened when the hub received it; `discard` keeps it as a "
        "rejected attempt. 409 when it was resolved already (nothing changed).",
        "Quarantine",
        {"200": ok("The held event as now resolved.", obj({"quarantine": ref("QuarantinedEvent")}, ["quarantine"]))},
        roles=(ROLE_ADMIN,),
        parameters=[path_param("quarantine_id", integer(1, 10**18 - 1), "The held event's id.", 3)],
        body=json_body(obj({"action": string(enum=list(QUARANTINE_ACTIONS))}, ["action"], closed=True,
                           maxProperties=1), {"action": "apply_at_receipt"},
                       f"What to do with it (at most {quarantine.BODY_MAX_BYTES} bytes)."),
        errors=(*WRITE_ERRORS, 404, 409),
    ))  # fmt: skip

    # --- catalog
    add(routes.CATALOG_PATH, "get", operation(
        "getCatalog", "The barcode catalog",
        "Every item and the catalog's version; the ETag is the version and the database's history (which a restore "
        "changes), so a copy is refreshed cheaply. As CSV when asked: the columns PUT /v1/catalog takes back.",
        "Catalog",
        {"200": cacheable(with_csv(ok("The catalog.", ref("Catalog"), example={"version": 7, "items": [
            {"barcode": "04006381333931", "sku": "SKU-1", "pack_size": 1, "description": "Pen"}]}),
                                   ", ".join(catalog.CSV_HEADER))),
         "304": NOT_MODIFIED},
        parameters=[FORMAT_QUERY, IF_NONE_MATCH],
        cookie=True,
    ))  # fmt: skip
    add(routes.CATALOG_PATH, "put", operation(
        "putCatalog", "Upsert catalog items by barcode",
        "Admin only. Then every stored scan of those barcodes made while they were unknown is re-booked onto the real "
        "SKU. A bad item is 400 naming it; nothing is written. The body may also be a CSV file (Content-Type "
        "text/csv, the columns of GET /v1/catalog as CSV; docs/hub-api.md): all or nothing, a 400 naming every bad "
        "row by line and column, or with partial=true its good rows written and the answer listing every refused "
        "row (refused) and holding them as a CSV file to fix and send again (refused_csv). A CSV body is read in "
        "the charset its Content-Type declares (text/csv; charset=windows-1252), else UTF-8 or UTF-16 with its "
        "byte-order mark; a charset the hub does not read (unknown, or hiding characters in plain ASCII as utf-7 "
        "does) is a 415 whose charsets lists every one it reads, and a body not valid in its charset a 400 naming "
        "its first bad byte.",
        "Catalog",
        {"200": ok("The new version; for a CSV body, also what became of its rows.", ref("CatalogWrite"),
                   headers={"ETag": ETAG_HEADER},
                   links={"Catalog": link("getCatalog", "The catalog as it now is.")})},
        parameters=[query(catalog.PARTIAL_PARAM, {"type": "boolean", "default": False},
                          "A CSV body: true writes its good rows and lists the refused ones (a 200); false, the "
                          "default, writes nothing if one row is bad (a 400 naming them). A JSON body is all or "
                          "nothing either way.")],
        roles=(ROLE_ADMIN,),
        body=json_body(obj({"items": array(ref("CatalogItemIn"), hi=CATALOG_ITEMS_MAX)}, ["items"], closed=True),
                       {"items": [{"barcode": "04006381333931", "sku": "SKU-1", "pack_size": 1, "description": "Pen"}]},
                       "The items to insert or change."),
        errors=WRITE_ERRORS,
    ))  # fmt: skip

    # --- reports
    add("/v1/divergence", "get", operation(
        "getDivergence", "Where another system's figures differ from the hub's",
        "For the newest observation of each (system, location, SKU), the hub's on_hand at that time next to the "
        "observed figure, where they differ by at least min(2, 5 % of the hub's). By location, SKU and system.",
        "Reports",
        {"200": cacheable(with_csv(ok("A page of divergences.", ref("DivergencePage"),
                             links={"NextPage": link("getDivergence", next_page, cursor="$response.body#/next")}),
                                   ", ".join(reports.DIVERGENCE_HEADER))),
         "304": NOT_MODIFIED},
        parameters=[LOCATION_QUERY, query("system", text(reports.SYSTEM), "Only this other system."),
                    limit_param(reports.LIMIT_DEFAULT, reports.LIMIT_MAX), cursor_param("divergence"), FORMAT_QUERY,
                    IF_NONE_MATCH],
        cookie=True,
    ))  # fmt: skip

    # --- change feed and webhooks
    add(routes.CHANGES_PATH, "get", operation(
        "getChanges", "A page of the change feed",
        "Every committed change of a count, oldest first, after `cursor`; with `wait`, a long-poll until one comes. "
        "A cursor is `<change_id>.<history><check>` (the check names the change); 410 for a cursor of an earlier "
        "history of the feed (the database was restored from a backup since), or whose change the hub no longer "
        "holds as it was (a restore that kept the history). A cursor of the older form, the decimal change id alone, "
        "is still taken and answered in that form.",
        "Change feed",
        {"200": ok("A page of changes.", ref("ChangesPage"),
                   headers={"Cache-Control": header("no-store", string())},
                   links={"Following": link("getChanges", "The changes after this page.",
                                            cursor="$response.body#/cursor")})},
        parameters=[
            query(wire.CURSOR_PARAM, string(pattern=CHANGE_CURSOR_PATTERN),
                  "Where to resume: the cursor of the previous page, as it was given, e.g. 1042.9e8c9d8bfa70 (left "
                  "out, or 0: from the start).", example="0"),
            query(wire.LIMIT_PARAM, integer(1, wire.CHANGES_LIMIT_MAX, default=feed.CHANGES_LIMIT_DEFAULT),
                  f"At most this many changes (1 to {wire.CHANGES_LIMIT_MAX}, default {feed.CHANGES_LIMIT_DEFAULT})."),
            query(wire.WAIT_PARAM, {"type": "number", "minimum": 0, "maximum": wire.WAIT_MAX_S, "default": 0},
                  f"Long-poll: wait up to this many seconds (0 to {wire.WAIT_MAX_S:g}) for a change when there is none."),
            LOCATION_QUERY, SKU_QUERY],
        errors=(410, 429),
        cookie=True,
    ))  # fmt: skip
    add("/v1/changes/stream", "get", operation(
        "streamChanges", "The change feed as server-sent events",
        "One `change` event per change (its `id` is its cursor) after Last-Event-ID, else after `cursor`, else from now "
        "on; a `ready` event first says where it starts (its `id` too, so a resume before any change starts there); a `: ping` comment every "
        f"{feed.STREAM_PING_S:g} s. The stream does not end while the hub runs. 410 for a cursor or Last-Event-ID of an "
        "earlier history of the feed, as for GET /v1/changes.",
        "Change feed",
        {"200": ok("The stream.", string(), media="text/event-stream",
                   example='event: ready\nid: 1042.9e8c9d8bfa70\nretry: 3000\ndata: {"cursor":"1042.9e8c9d8bfa70"}\n\n')},
        parameters=[query("cursor", string(pattern=CHANGE_CURSOR_PATTERN), "Where to start (a cursor of the feed)."),
                    LOCATION_QUERY, SKU_QUERY,
                    {"name": "Last-Event-ID", "in": "header", "required": False,
                     "schema": string(pattern=CHANGE_CURSOR_PATTERN),
                     "description": "The id of the last change event received (a reconnecting browser sends it)."}],
        errors=(410, 429),
        cookie=True,
    ))  # fmt: skip
    add("/v1/webhooks", "get", operation(
        "getWebhooks", "Every configured webhook and where it stands",
        "Its cursor, lag, failures and last error.",
        "Change feed",
        {"200": cacheable(ok("The webhooks.", obj({"webhooks": array(ref("WebhookStatus"))}, ["webhooks"]),
                             links={"Deliveries": link("getWebhookDeliveries", "The first webhook's delivery log.",
                                                       name="$response.body#/webhooks/0/name")})),
         "304": NOT_MODIFIED},
        parameters=[IF_NONE_MATCH],
        cookie=True,
    ))  # fmt: skip
    add("/v1/webhooks/{name}/deliveries", "get", operation(
        "getWebhookDeliveries", "A webhook's delivery log",
        "Newest first, one entry per attempt; an unknown name is 404.",
        "Change feed",
        {"200": cacheable(ok("A page of deliveries.", ref("DeliveriesPage"),
                             links={"NextPage": link("getWebhookDeliveries", next_page, name="$request.path.name",
                                                     cursor="$response.body#/next")})),
         "304": NOT_MODIFIED},
        parameters=[path_param("name", string(minLength=1), "The webhook's name.", "web-shop"),
                    limit_param(webhooks.DELIVERIES_LIMIT_DEFAULT, webhooks.DELIVERIES_LIMIT_MAX),
                    cursor_param("the deliveries"), IF_NONE_MATCH],
        errors=(404,), cookie=True,
    ))  # fmt: skip

    # --- bundles
    add("/v1/bundles", "get", operation(
        "getBundles", "Every bundle as it stands",
        "By SKU, a page at a time: each bundle's recipe in force and the plain SKUs one of it moves (`parts`). A "
        "page's ETag is made of the bundles' version (raised by every bundle change) and the page asked for, so an "
        "unchanged page is answered 304 without reading a bundle.",
        "Bundles",
        {"200": cacheable(ok("A page of bundles.", page_of("bundles", ref("Bundle")),
                             links={"NextPage": link("getBundles", next_page, cursor="$response.body#/next"),
                                    "FirstBundle": link("getBundle", "The first bundle and its recipe versions.",
                                                        sku="$response.body#/bundles/0/sku")})),
         "304": NOT_MODIFIED},
        parameters=[limit_param(bundles.LIMIT_DEFAULT, bundles.LIMIT_MAX), cursor_param("the bundles"), IF_NONE_MATCH],
        cookie=True,
    ))  # fmt: skip
    add("/v1/bundles/{sku}", "get", operation(
        "getBundle", "One bundle and every version of its recipe",
        "The recipe in force and every version of it, oldest first; 404 when the SKU is not a bundle.",
        "Bundles",
        {"200": cacheable(ok("The bundle.", obj({"bundle": ref("Bundle"), "versions": array(ref("BundleRecipe"))},
                                                ["bundle", "versions"]))),
         "304": NOT_MODIFIED},
        parameters=[path_param("sku", ref("Sku"), "The bundle's SKU.", "KIT-1"), IF_NONE_MATCH],
        errors=(404,), cookie=True,
    ))  # fmt: skip
    add("/v1/bundles/{sku}", "put", operation(
        "putBundle", "Set a bundle's recipe",
        "Admin only. Each change is a new recipe version for the movements stored from then on; the same recipe "
        "again changes nothing. 400 when a component is the bundle itself (a rule no schema can state: a component "
        "key other than the path's sku); 409 when the recipes would put a bundle inside itself through another, "
        "or the SKU holds stock of its own.",
        "Bundles",
        {"200": ok("The bundle as it now stands, and whether the recipe changed.",
                   obj({"bundle": ref("Bundle"), "changed": {"type": "boolean"}}, ["bundle", "changed"]),
                   links={"Bundle": link("getBundle", "The bundle and its versions.", sku="$request.path.sku")})},
        roles=(ROLE_ADMIN,),
        parameters=[path_param("sku", text(values.SKU, f"Not an {UNKNOWN_SKU_PREFIX}… key.", **NOT_UNKNOWN_SKU),
                               "The bundle's SKU.", "KIT-1")],
        body=json_body(obj({"components": obj({}, description="Component SKU -> units per bundle.", minProperties=1,
                                              maxProperties=BUNDLE_PARTS_MAX,
                                              propertyNames=text(values.SKU, f"Not an {UNKNOWN_SKU_PREFIX}… key.",
                                                                 **NOT_UNKNOWN_SKU),
                                              additionalProperties=integer(1, COMPONENT_UNITS_MAX))},
                           ["components"], closed=True),
                       {"components": {"A": 2, "C": 1}}, "The recipe: what one bundle is made of."),
        errors=(*WRITE_ERRORS, 409),
    ))  # fmt: skip

    # --- the shrinkage report
    add("/v1/reports/variance", "get", operation(
        "getVarianceReport", "The shrinkage report",
        "What cycle counts found missing or over in a period (default: the last 30 days), by SKU, by location, or "
        "each count (`by=count`, paged by `cursor`). By SKU (since 1.11) pages of the most shrinkage first, paged by "
        "`cursor`, each with the totals and `row_count` of every row; the CSV has every row.",
        "Reports",
        {"200": ok("The report.", ref("VarianceReport"), headers={**CSV_HEADERS}, extra_media={CSV_TYPE: CSV_CONTENT},
                   links={"NextPage": link("getVarianceReport", next_page, cursor="$response.body#/next",
                                           by="$request.query.by")})},
        parameters=[LOCATION_QUERY, SKU_QUERY,
                    query("from", PERIOD, "Start (included): a date (midnight UTC) or an ISO 8601 time with its "
                          "zone, 1970 to 5999; before `to`; default: 30 days before `to`.", example="2026-01-01"),
                    query("to", PERIOD, "End (excluded), the same forms; default: now.", example="2026-02-01T00:00:00Z"),
                    query("by", string(enum=list(reports.VARIANCE_BY), default="sku"), "How the rows are grouped."),
                    query("limit", integer(1, reports.LIMIT_MAX),
                          f"At most this many rows in JSON (1 to {reports.LIMIT_MAX}; default "
                          f"{reports.VARIANCE_SKU_LIMIT_DEFAULT} by=sku (since 1.11), "
                          f"{reports.VARIANCE_LIMIT_DEFAULT} by=count; by=location is one page)."),
                    cursor_param("the report (by=sku or by=count)"), FORMAT_QUERY],
        cookie=True,
    ))  # fmt: skip

    # --- channels
    add("/v1/channels", "get", operation(
        "getChannels", "Every configured sales channel and where it stands",
        "Connected, last push, lag, queue, throttle, last error, divergences open, refused levels, unmapped SKUs and "
        "the last reconciliation (the dashboard's Channels tab). Reader or admin.",
        "Channels",
        {"200": ok("The channels.", obj({"channels": array(ref("ChannelStatus"))}, ["channels"]),
                   links={"Divergences": link("getChannelDivergences", "The first channel's divergences.",
                                              name="$response.body#/channels/0/name")})},
        roles=tuple(sorted(channel_http.READ_ROLES)),
        cookie=True,
    ))  # fmt: skip
    add("/v1/channels/{name}/divergences", "get", operation(
        "getChannelDivergences", "The divergences reconciliation found on a channel",
        "Where the channel's level differed from what the hub pushed, newest first, a page at a time; an unknown "
        "channel is 404. Reader or admin.",
        "Channels",
        {"200": ok("A page of divergences.", ref("ChannelDivergencesPage"),
                   links={"NextPage": link("getChannelDivergences", next_page, name="$request.path.name",
                                           cursor="$response.body#/next")})},
        roles=tuple(sorted(channel_http.READ_ROLES)),
        parameters=[path_param("name", CHANNEL_NAME, "The channel's name in the hub's config.", "web"),
                    limit_param(channel_http.DIVERGENCES_LIMIT_DEFAULT, channel_http.DIVERGENCES_LIMIT_MAX),
                    cursor_param("the divergences")],
        errors=(404,), cookie=True,
    ))  # fmt: skip
    add("/v1/channels/{name}/mapping/refresh", "post", operation(
        "refreshChannelMapping", "Load a channel's SKU mapping again",
        "Admin only. Reads the mapping again (the channel's listing or its CSV) and pushes every mapped level once. "
        "422 when the mapping cannot be used, 502 when the channel refused, 503 when it did not answer.",
        "Channels",
        {"200": ok("The mapping as loaded.", ref("MappingRefreshAnswer"))},
        roles=(ROLE_ADMIN,),
        parameters=[path_param("name", CHANNEL_NAME, "The channel's name in the hub's config.", "web")],
        errors=(404, 422, 502),
    ))  # fmt: skip
    add("/v1/channels/{name}/reconcile", "post", operation(
        "reconcileChannel", "Read a channel's levels back now",
        "Admin only. Divergences are stored, listed and corrected as the reconciliation loop's are. 409 for a "
        "channel whose levels cannot be read back; 422, 502, 503 as for a mapping refresh.",
        "Channels",
        {"200": ok("What was checked and found.", ref("ReconcileAnswer"))},
        roles=(ROLE_ADMIN,),
        parameters=[path_param("name", CHANNEL_NAME, "The channel's name in the hub's config.", "web")],
        errors=(404, 409, 422, 502),
    ))  # fmt: skip
    refused_order_params = [  # the dismiss and undismiss routes'
        path_param("name", CHANNEL_NAME, "The channel's name in the hub's config.", "web"),
        path_param("order_id", text(channel_http.ORDER_ID, "Square's order id, or sale:<adjustment id> for a register "
                                     "sale, as the exception's data.order_id names it (percent-encoded)."),
                   "The refused order's id.", "D1CAFA84CB614476A09D4DCD"),
    ]
    add(channel_http.DISMISS_PATH, "post", operation(
        "dismissChannelOrder", "Dismiss a refused order booked by hand",
        "Admin only; no body. A Square order whose webhook the hub refused for good (a channel_order_refused "
        "exception) whose sale staff booked by hand leaves the exceptions list; it stays refused, so its register "
        "sales are still not taken off the counts pushed, and a later delivery of it (Square's retry) is answered "
        "{\"status\": \"dismissed\"} and not booked. 404 for an unknown channel or an order the channel does "
        "not hold as refused; 409 when it was dismissed already (nothing is changed).",
        "Channels",
        {"200": ok("The order as stored, dismissed.", obj({"order": ref("RefusedOrder")}, ["order"]))},
        roles=(ROLE_ADMIN,),
        parameters=refused_order_params,
        errors=(404, 409),
    ))  # fmt: skip
    add(channel_http.UNDISMISS_PATH, "post", operation(
        "undismissChannelOrder", "Undo the dismissal of a refused order",
        "Admin only; no body. A refused Square order (or a register sale listed as sale:<adjustment id>) dismissed "
        "by mistake, its sale not booked by hand: the dismissal is undone, the channel_order_refused exception is "
        "listed again, a later delivery of the order (Square's retry, the cause fixed) is booked as any, and a "
        "listed sale is taken off the counts pushed again. 404 for an unknown channel or an order the channel does "
        "not hold as refused; 409 when it is not dismissed (nothing is changed).",
        "Channels",
        {"200": ok("The order as stored, no longer dismissed.", obj({"order": ref("RefusedOrder")}, ["order"]))},
        roles=(ROLE_ADMIN,),
        parameters=refused_order_params,
        errors=(404, 409),
    ))  # fmt: skip
    add(order_routes.ROUTE, "post", operation(
        "postChannelWebhook", "A sales channel's signed order webhook",
        "Where Shopify or Square post their order webhooks; no bearer token: the channel's signature (checked in "
        "constant time before the body is read as JSON) authenticates. Becomes reserve, sale, release and return "
        "events at the fulfilling location.",
        "Channels",
        {"200": ok("Applied, a duplicate delivery, or nothing to do.", ref("ChannelWebhookAnswer"),
                   example={"status": "applied", "applied": 2, "duplicates": 1, "rejected": 0}),
         "401": error(401, "The signature does not match the channel's webhook secret; nothing was applied."),
         "404": error(404, "No channel of that name takes order webhooks here."),
         "429": REFUSED_ATTEMPTS_429,
         "422": error(422, "The payload cannot be applied (unusable_webhook); nothing of it was applied.")},
        parameters=[path_param("name", string(minLength=1), "The channel's name in the hub's config.", "web"),
                    {"name": order_routes.SHOPIFY_SIGNATURE, "in": "header", "required": False, "schema": string(),
                     "description": "Shopify: base64 HMAC-SHA256 of the raw body."},
                    {"name": order_routes.SQUARE_SIGNATURE, "in": "header", "required": False, "schema": string(),
                     "description": "Square: base64 HMAC-SHA256 of the notification URL and the raw body."},
                    {"name": "X-Shopify-Topic", "in": "header", "required": False, "schema": string(),
                     "description": "Shopify: the webhook's topic."}],
        body={"required": True, "description": f"The channel's payload as it sent it (at most "
                                               f"{order_routes.WEBHOOK_MAX_BYTES} bytes).",
              "content": {JSON_TYPE: {"schema": {}}}},
        security=[{SHOPIFY_SIGNATURE: []}, {SQUARE_SIGNATURE: []}],
        errors=(*WRITE_ERRORS, 400),
    ))  # fmt: skip
    for item in paths.values():
        for op in item.values():
            example = ANSWER_EXAMPLES.get(op["operationId"])
            if example is not None:
                first = next(iter(op["responses"]["200"]["content"].values()))
                first.setdefault("example", example)
    return paths


# --- examples of answers (tests/api/test_answers_documented.py checks each against its schema) ---------------

_AT_MS = 1764061201000  # 2025-11-25T09:00:01.000Z
_AT = "2025-11-25T09:00:01.000Z"
_EVENT_ID = "01a2b3c4-d5e6-7f80-9a1b-2c3d4e5f6a7b"
_AGENT = "agent-1a2b3c4d"
_ADMIN = "agent-9f8e7d6c"
_CURSOR = "WyJsZWRnZXIiLDEsMTE3NzMwMDUzODM1MDYzMjk2XQ"
_HELD = {"id": 3, "event_id": _EVENT_ID, "agent_id": _AGENT, "epoch": 1, "seq": 17, "location": "S001", "sku": "SKU-1",
         "kind": "adjust", "qty": 1, "occurred_at": 119796799097143296, "occurred": "2026-11-25T09:00:00.000Z",
         "wall_ms": 1795597200000, "source": "scanner:door", "ref": None, "reason": None, "attrs": {},
         "received_at_ms": _AT_MS, "received": _AT, "skew_ms": 31535999000,
         "detail": f"event {_EVENT_ID}: the event's time is 365.0 days ahead of the hub's clock, outside the hub's "
                   "clock window of 24.0 hours; it is held in the hub's quarantine for an operator to apply at its "
                   "receipt time or discard (GET /v1/quarantine), and this machine's clock should be checked",
         "attempts": 1, "status": "pending", "resolved_by": None, "resolved_at_ms": None,
         "hub_clock_off_ms": None, "hub_clock_vouched": None}  # fmt: skip
_AGENT_STATUS = {"agent_id": _AGENT, "role": "agent", "revoked": False, "locations": ["S001"],
                 "last_sync_ms": _AT_MS, "last_sync": _AT, "epochs": [{"epoch": 1, "epoch_text": "1", "hwm": 17}],
                 "clock_skew_ms": 120, "backlog": 0, "oldest_pending_ms": None, "oldest_pending": None,
                 "backlog_at_ms": _AT_MS, "backlog_at": _AT, "disk": {
                     "state": "ok", "since_ms": _AT_MS, "since": _AT, "reserve_bytes": 8 << 20,
                     "reserve_held_bytes": 8 << 20, "free_bytes": 41_943_040_000, "refused_ms": None, "refused": None,
                     "at_ms": _AT_MS, "at": _AT}}  # fmt: skip
_WEBHOOK = {"name": "web-shop", "url": "https://shop.example.com/hooks/stock", "deliverer": "this hub",
            "location": "WEB", "cursor": "1042", "lag": 0, "failures": 0, "last_error": None, "last_attempt_ms": _AT_MS, "last_attempt": _AT,
            "last_success_ms": _AT_MS, "last_success": _AT}  # fmt: skip
_RECIPE = {"sku": "KIT-1", "version": 1, "valid_from_ms": _AT_MS, "valid_from": _AT, "components": {"A": 2, "C": 1},
           "set_by": _ADMIN}  # fmt: skip
_BUNDLE = {**_RECIPE, "parts": {"A": 2, "C": 1}}
_COUNT = {"location": "S001", "sku": "SKU-1", "on_hand": 7, "reserved": 0, "available": 5, "in_transit": 0,
          "safety_stock": 2, "last_count_at": None, "last_count_time": None, "updated_at_ms": _AT_MS, "updated_at": _AT}
_CHANNEL_DIVERGENCE = {"id": 12, "sku": "SKU-1", "item_id": "gid://shopify/InventoryItem/1001",
                       "channel_location": "gid://shopify/Location/2", "location": "S001", "hub_level": 5,
                       "last_pushed": 5, "channel_level": 3, "difference": -2, "found_at_ms": _AT_MS, "found_at": _AT,
                       "corrected_at_ms": None, "corrected_at": None}  # fmt: skip
ANSWER_EXAMPLES: Mapping[str, Any] = {
    "getMetrics": "# HELP shelfsync_ingest_batches_total Batches ingested.\n"
                  "# TYPE shelfsync_ingest_batches_total counter\n"
                  'shelfsync_ingest_batches_total{route="sync"} 1042.0\n',
    "postSync": {"v": WIRE_VERSION, "agent_id": _AGENT, "epoch": 1, "hwm": 17, "rejected": [], "duplicates": 0,
                 "counts": [["S001", "SKU-1", 7, 0, 7, 0]], "server_time_ms": _AT_MS, "held": 0},
    "postEvents": {"events": [{"id": "order-5531:reserve", "event_id": _EVENT_ID, "status": "accepted"}],
                   "applied": 1, "duplicates": 0, "rejected": 0,
                   "counts": [{"location": "WEB", "sku": "SKU-1", "on_hand": 9, "reserved": 2, "available": 7,
                               "in_transit": 0}]},
    "postObservations": {"v": WIRE_VERSION, "accepted": ["obs-1"], "rejected": []},
    "postImportIssues": {"v": WIRE_VERSION, "accepted": ["sales-2025-11-25.csv:14"],
                         "rejected": [{"id": "sales-2025-11-25.csv:15",
                                       "reason": "location S002 is not this agent's"}]},
    "putSafetyStock": {"count": _COUNT},
    "getLedger": {"events": [{"event_id": _EVENT_ID, "agent_id": _AGENT, "epoch": 1, "seq": 17, "location": "S001",
                              "sku": "SKU-1", "kind": "sale", "qty": -2, "occurred_at": 115667019874304000,
                              "occurred_at_time": "2025-11-25T09:00:00.000Z", "wall_ms": 1764061200000,
                              "source": "pos:square", "ref": "receipt-8812", "reason": None, "attrs": {},
                              "effect": "applied", "variance": None, "duplicates": 0, "rejection": None,
                              "rejection_code": None, "expansion": None, "received_at_ms": _AT_MS,
                              "received_at": _AT}], "next": _CURSOR},
    "getExceptions": {"exceptions": [{"kind": "negative_on_hand", "location": "S001", "sku": "SKU-3",
                                      "detail": "SKU-3 at S001 stands at -1 on hand, below zero: a receipt is "
                                                "probably missing or a count was wrong, and nothing is shown as "
                                                "available until it is fixed.",
                                      "data": {"on_hand": -1}, "at_ms": _AT_MS, "at": _AT}],
                      "next": None},
    "getAgents": {"agents": [_AGENT_STATUS]},
    "getStatus": {"hub_time_ms": _AT_MS, "hub_time": _AT, "you": "agent-0c0d0e0f", "online_within_s": 300,
                  "db": {"ok": True}, "feed": {"cursor": "1042", "last_change_ms": _AT_MS, "last_change": _AT},
                  "agents": [{**_AGENT_STATUS, "last_sync_age_s": 0, "online": True, "events_last_hour": 312}],
                  "webhooks": [_WEBHOOK], "hub_clock": None, "settings_differ": []},
    "getQuarantine": {"quarantine": [_HELD], "next": None, "pending": {"total": 1, "hub_clock": 0, "unattributed": {_AGENT: 1}, "vouched": {}}},
    "resolveQuarantined": {"quarantine": {**_HELD, "status": "applied", "resolved_by": _ADMIN,
                                          "resolved_at_ms": _AT_MS + 60_000}},
    "putCatalog": {"version": 8, "updated": 1, "rebooked": 3},
    "getDivergence": {"divergence": [{"system": "shop", "location": "S001", "sku": "SKU-1", "observed": 40,
                                      "hub_on_hand": 10, "difference": 30, "observed_at_ms": _AT_MS,
                                      "observed_at": _AT, "agent_id": _AGENT, "id": "obs-1", "source_file": "inv.csv",
                                      "received_at_ms": _AT_MS, "received_at": _AT}], "next": None},
    # the first change of a feed: Schemathesis sends an answer's cursor as the cursor parameter, and a cursor past
    # the feed's newest change is refused (docs/hub-api.md, GET /v1/changes)
    "getChanges": {"changes": [{"change_id": 1, "location": "S001", "sku": "SKU-1", "on_hand": 5, "reserved": 0,
                                "available": 5, "in_transit": 0, "event_ids": [_EVENT_ID], "at_ms": _AT_MS,
                                "at": _AT}], "cursor": "1", "more": False},
    "getWebhooks": {"webhooks": [_WEBHOOK]},
    "getWebhookDeliveries": {"webhook": "web-shop", "deliveries": [
        {"delivery_id": 88, "first_change": 1040, "last_change": 1042, "status": "delivered", "http_status": 204,
         "error": None, "at_ms": _AT_MS, "at": _AT}], "next": None},
    "getBundles": {"bundles": [_BUNDLE], "next": None},
    "getBundle": {"bundle": _BUNDLE, "versions": [_RECIPE]},
    "putBundle": {"bundle": _BUNDLE, "changed": True},
    "getVarianceReport": {"from": "2025-10-26T09:00:01.000Z", "to": _AT, "by": "sku", "location": None, "sku": None,
                          "rows": [{"location": "S001", "sku": "SKU-1", "name": "Pen", "counts": 1, "shrinkage": 2,
                                    "overage": 0, "net_variance": -2, "first_count_time": _AT,
                                    "last_count_time": _AT}],
                          "totals": {"counts": 1, "shrinkage": 2, "overage": 0, "net_variance": -2},
                          "row_count": 1, "next": None},
    "getChannels": {"channels": [{
        "name": "web", "kind": "shopify", "url": "https://example.myshopify.com/admin/api/2026-01/graphql.json",
        "pusher": "this hub", "connected": True, "last_call_ms": _AT_MS, "last_call": _AT, "last_push_ms": _AT_MS,
        "last_push": _AT, "lag": {"last_ms": 412, "p50_ms": 380, "p99_ms": 2210, "samples": 1000}, "cursor": "1042",
        "queue": 0, "throttle": {"currently_available": 980.0, "maximum_available": 1000.0, "restore_rate": 100.0,
                                 "at_ms": _AT_MS, "at": _AT},
        "failures": 0, "last_error": None, "divergences_open": 0, "refused": 0, "mapped": 1250, "findings": 0,
        "unmapped": {"count": 0, "skus": []}, "reconcile_s": 900.0,
        "last_reconciliation": {"at_ms": _AT_MS, "at": _AT, "checked": 2500, "diverged": 0},
        "reconcile_error": None,
        "settings": {"pool": {"S001": "gid://shopify/Location/1"}, "buffer": {"units": 1, "percent": 0.0, "skus": {}},
                     "secret": "environment variable SHOPIFY_TOKEN",
                     "url": "https://example.myshopify.com/admin/api/2026-01/graphql.json", "api_version": "2026-01",
                     "mapping_csv": None, "mapping_encoding": None, "batch_max": 250, "timeout_s": 10.0, "retry_max_s": 300.0,
                     "reason": "correction", "coalesce_s": 0.25, "reconcile_s": 900.0, "webhook_secret": None,
                     "notification_url": None, "fulfil_from": {}, "order_location": None,
                     "unbooked_sale_wait_s": None, "order_match_window_s": None}}]},
    "getChannelDivergences": {"channel": "web", "divergences": [_CHANNEL_DIVERGENCE], "next": None},
    "refreshChannelMapping": {"channel": "web", "mapped": 1250, "unmapped": 1, "findings_total": 1, "findings": [
        {"kind": "unmapped_sku", "sku": "KIT-1", "detail": "SKU KIT-1 has stock in channel web's pool but no item "
                                                          "there carries it."}]},
    "reconcileChannel": {"channel": "web", "at_ms": _AT_MS, "at": _AT, "checked": 2500,
                         "divergences": [_CHANNEL_DIVERGENCE]},
}  # fmt: skip


# --- component schemas --------------------------------------------------------------------------------


def _schemas() -> dict[str, JSON]:
    int64 = integer(values.INT64_MIN, values.INT64_MAX)
    count_value = integer(-COUNT_ABS_MAX, COUNT_ABS_MAX)
    hlc = integer(1, HLC_MAX, "A packed hybrid logical clock: wall ms << 16 | counter; may exceed 2^53.")
    ms = integer(0, INT63_MAX, "Unix milliseconds.")
    seconds: JSON = {"type": "number", "minimum": 0}
    attr_value = {"anyOf": [string("Any Unicode text (control characters too: GS1 data carries them).",
                                   maxLength=values.ATTR_STR_MAX_LEN), int64, {"type": "number"}, {"type": "boolean"},
                            {"type": "null"}]}  # fmt: skip
    attrs = obj({}, description=f"A flat map: at most {values.ATTRS_MAX_KEYS} keys of 1 to {values.ATTR_KEY_MAX_LEN} "
                                "characters, each a short string, a 64-bit integer, a finite number, a boolean or null.",
                maxProperties=values.ATTRS_MAX_KEYS, additionalProperties=attr_value,
                propertyNames=text(values.ATTR_KEY))  # fmt: skip
    kinds = [k.value for k in Kind]
    uuid_text = string("An event id as UUID text.", format="uuid")
    page_next = nullable(string("The cursor of the next page, or null on the last page."))

    def page(key: str, item: JSON, **more: JSON) -> JSON:
        return obj({**more, key: array(item), "next": page_next}, [*more, key, "next"])

    schemas: dict[str, JSON] = {
        "Problem": problem_schema(),
        "Location": text(values.LOCATION, example="S001"),
        "Sku": text(values.SKU, example="SKU-1"),
        "AgentId": text(values.AGENT_ID, example="agent-1a2b3c4d"),
        "Attrs": attrs,
        "HealthProblem": {**problem_schema(), "properties": {**problem_schema()["properties"],
                          "health": known(["error", "unavailable", *STARTING_PHASES]),
                          "db": obj({"error": string()}, ["error"]), "migration": ref("MigrationStep")},
                          "required": [*problem_schema()["required"], "health", "db"]},
        "Live": obj({"status": known(["ok", *STARTING_PHASES],
                                     "ok: serving; else still opening its database, doing what it names"),
                     "detail": string("While it opens its database: what it does, one sentence."),
                     "migration": ref("MigrationStep")}, ["status"]),
        "MigrationStep": obj({
            "schema_version": integer(1, description="The schema version the step makes."),
            "name": string("What the step does (its migration's name)."),
            "step": integer(1, description="Which step of this start's migration it is."),
            "steps": integer(1, description="How many steps this start's migration takes."),
            "statement": nullable(integer(1, description="The statement running (SQLite)")),
            "statements": nullable(integer(1, description="The step's statements (SQLite)")),
            "elapsed_s": {"type": "number", "minimum": 0, "description": "Seconds since the step began."},
        }, ["schema_version", "name", "step", "steps", "statement", "statements", "elapsed_s"],
           description="The migration step under way while the hub opens its database."),
        "Health": obj({"status": known(["ok"]),
                       "db": obj({}, description="What the storage backend reports about itself; `error` when failing.")},
                      ["status", "db"]),
        "Count": obj({
            "location": ref("Location"), "sku": ref("Sku"),
            "on_hand": integer(description="The last count plus every delta ordered after it (may be negative)."),
            "reserved": integer(), "available": integer(0, description="max(0, on_hand - reserved - safety_stock)"),
            "in_transit": integer(), "safety_stock": integer(0, QTY_MAX),
            "last_count_at": nullable(hlc), "last_count_time": iso_time("The time of the last count"),
            "updated_at_ms": nullable(ms), "updated_at": iso_time("When the hub last changed this count"),
        }, ["location", "sku", "on_hand", "reserved", "available", "in_transit", "safety_stock", "last_count_at",
            "last_count_time", "updated_at_ms", "updated_at"]),
        "CountsPage": page("counts", ref("Count")),
        "LocationCountsPage": page("counts", ref("Count"), location=ref("Location")),
        "SkuCountsPage": page("counts", ref("Count"), sku=ref("Sku")),
        "LedgerRow": obj({
            "event_id": uuid_text, "agent_id": string(), "epoch": integer(0, EPOCH_MAX), "seq": integer(0, SEQ_MAX),
            "location": string(), "sku": string(), "kind": known([*kinds, WRITEOFF_KIND]), "qty": integer(),
            "occurred_at": integer(0, HLC_MAX), "occurred_at_time": iso_time("The wall-clock part of occurred_at"),
            "wall_ms": integer(0), "source": string(), "ref": nullable(string()), "reason": nullable(string()),
            "attrs": {"type": "object"}, "effect": known([e.value for e in Effect]),
            "variance": nullable(integer(description="Counts: counted - expected at the count's place in the order.")),
            "duplicates": integer(0), "rejection": nullable(string()), "rejection_code": nullable(string()),
            "expansion": nullable(obj({"recipe_version": integer(1),
                                       "parts": obj({}, additionalProperties=integer(1),
                                                    description="Plain SKU -> units each unit of qty moved.")},
                                      ["recipe_version", "parts"],
                                      description="A bundle's movement (effect expanded): how it was booked.")),
            "received_at_ms": integer(0), "received_at": iso_time("When the hub received it"),
        }, ["event_id", "agent_id", "epoch", "seq", "location", "sku", "kind", "qty", "occurred_at", "occurred_at_time",
            "wall_ms", "source", "ref", "reason", "attrs", "effect", "variance", "duplicates", "rejection",
            "rejection_code", "received_at_ms", "received_at"]),
        "LedgerPage": page("events", ref("LedgerRow")),
        "ExceptionRow": obj({
            "kind": known(keys.EXCEPTION_KINDS),
            "location": nullable(string()), "sku": nullable(string()), "detail": string("One sentence."),
            "data": {"type": "object"}, "at_ms": integer(0), "at": iso_time("When it arose"),
        }, ["kind", "location", "sku", "detail", "data", "at_ms", "at"]),
        "ExceptionsPage": page("exceptions", ref("ExceptionRow")),
        "AgentStatus": obj({
            "agent_id": string(), "role": known([ROLE_AGENT, ROLE_READER, ROLE_ADMIN]), "revoked": {"type": "boolean"},
            "locations": array(string()), "last_sync_ms": nullable(ms), "last_sync": iso_time("Its last sync"),
            "epochs": array(obj({"epoch": integer(0, EPOCH_MAX), "epoch_text": string(pattern="^[0-9]{1,19}$"),
                                 "hwm": integer(0, SEQ_MAX)}, ["epoch", "epoch_text", "hwm"])),
            "clock_skew_ms": nullable(integer()), "backlog": nullable(integer(0)), "oldest_pending_ms": nullable(ms),
            "oldest_pending": iso_time("The oldest pending event's wall clock"), "backlog_at_ms": nullable(ms),
            "backlog_at": iso_time("When the backlog report arrived"),
            "disk": nullable(obj({
                "state": known(DISK_STATES, "ok; reserve_in_use: the disk was full and the agent's disk reserve is not "
                               "whole; full: the disk refuses its writes, or the reserve is spent (scans are refused)"),
                "since_ms": ms, "since": iso_time("The first report of this state"),
                "reserve_bytes": integer(0, SEQ_MAX, "The disk reserve configured (0: none)."),
                "reserve_held_bytes": integer(0, SEQ_MAX, "How much of it is on disk."),
                "free_bytes": nullable(integer(0, SEQ_MAX, "The free bytes of the outbox's file system.")),
                "refused_ms": nullable(integer(0, SEQ_MAX, "The agent's clock when the disk refused a write.")),
                "refused": iso_time("That refusal"), "at_ms": ms, "at": iso_time("When the report arrived"),
            }, ["state", "since_ms", "since", "reserve_bytes", "reserve_held_bytes", "free_bytes", "refused_ms",
                "refused", "at_ms", "at"])),
        }, ["agent_id", "role", "revoked", "locations", "last_sync_ms", "last_sync", "epochs", "clock_skew_ms",
            "backlog", "oldest_pending_ms", "oldest_pending", "backlog_at_ms", "backlog_at", "disk"]),
        "Status": obj({
            "hub_time_ms": ms, "hub_time": iso_time("The hub's clock"), "you": string("The credential's agent id."),
            "online_within_s": integer(0), "db": obj({"ok": {"type": "boolean"}, "error": string()}, ["ok"]),
            "feed": obj({"cursor": string(pattern="^[0-9]{1,19}$"), "last_change_ms": nullable(ms),
                         "last_change": iso_time("The newest change")}, ["cursor", "last_change_ms", "last_change"]),
            "agents": array({"allOf": [ref("AgentStatus"), obj({"last_sync_age_s": nullable(integer(0)),
                                                                 "online": {"type": "boolean"},
                                                                 "events_last_hour": integer(0)},
                                                                ["last_sync_age_s", "online", "events_last_hour"])]}),
            "webhooks": array(ref("WebhookStatus")),
            "hub_clock": nullable(obj({
                "offset_ms": integer(description="The hub's clock minus its agents' (negative: behind them)."),
                "agents": array(string(), description="The agents that agree with each other."),
                "asked": integer(2, description="The agents that synced in the last 10 minutes."),
                "message": string("One sentence saying so, and what to do."),
            }, ["offset_ms", "agents", "asked", "message"])),
            "settings_differ": array(obj({
                "setting": string("The setting: a [hub] key, or `channel NAME buffer` / `channel NAME pool`."),
                "this_hub": string("Its value at this hub, as a text (`not set`: this hub has no such channel)."),
                "other_hub": string("Its value at the other hub."),
                "hub": string("The other hub process, `HOST:PID` (its PostgreSQL sessions' application_name)."),
                "message": string("One sentence saying so, and what to do."),
            }, ["setting", "this_hub", "other_hub", "hub", "message"]), description=(
                "Since 1.13: each setting that judges events in which this hub differs from another hub process "
                "running on the same PostgreSQL database; empty when none does (always, on SQLite)."
            )),
        }, ["hub_time_ms", "hub_time", "you", "online_within_s", "db", "feed", "agents", "webhooks", "hub_clock",
            "settings_differ"]),
        "QuarantinedEvent": obj({
            "id": integer(1), "event_id": uuid_text, "agent_id": string(), "epoch": integer(0), "seq": integer(0),
            "location": string(), "sku": string(), "kind": known(kinds), "qty": integer(),
            "occurred_at": integer(0), "occurred": iso_time("The stamp it carried"), "wall_ms": integer(0),
            "source": string(), "ref": nullable(string()), "reason": nullable(string()), "attrs": {"type": "object"},
            "received_at_ms": integer(0), "received": iso_time("When the hub received it"),
            "skew_ms": integer(description="The event's time minus the hub's clock when it arrived (positive: ahead)."),
            "detail": string(), "attempts": integer(0), "status": known(QUARANTINE_STATUSES),
            "resolved_by": nullable(string()), "resolved_at_ms": nullable(ms),
            "hub_clock_off_ms": nullable(integer(description=(
                "How far the hub's own clock was off its stores' when it held the event (positive: ahead), when they "
                "agreed with each other and the sender's clock with them: held because of the hub's clock, released "
                "at its own time once the hub's clock is right (POST /v1/quarantine/release); null: not known."))),
            "hub_clock_vouched": nullable(integer(1, description=(
                "Since 1.12. How many of the other stores that synced lately put the hub's clock right (within a "
                "minute) when it held the event, when they were more than half of them: the sender's clock was the "
                "odd one, and a release with {\"wrong_clock\": \"hub\"} taking it is refused (409); null: they did "
                "not, or there were none."))),
        }, ["id", "event_id", "agent_id", "location", "sku", "kind", "qty", "occurred_at", "received_at_ms", "skew_ms",
            "detail", "attempts", "status", "resolved_by", "resolved_at_ms", "hub_clock_off_ms", "hub_clock_vouched"]),
        "QuarantinePage": with_properties(page("quarantine", ref("QuarantinedEvent")), pending=obj({
            "total": integer(0, description="Every event held pending."),
            "hub_clock": integer(0, description="Of those, the ones held because of the hub's own clock (what "
                                 "POST /v1/quarantine/release takes)."),
            "unattributed": obj({}, additionalProperties=integer(1), description="Per agent id, the ones the hub "
                                "could not attribute to either clock (what a release with wrong_clock and "
                                "agent_id takes)."),
            "vouched": obj({}, additionalProperties=integer(1), description="Per agent id with any, of those "
                           "unattributed the most other stores that put the hub's clock right when one was held "
                           "(hub_clock_vouched): a release of that agent's with wrong_clock hub is refused (409) "
                           "without override_vouched."),
        }, ["total", "hub_clock", "unattributed", "vouched"], description="On the first page (no cursor) only: how many are "
            "held pending in all, whatever status, location and limit the page shows.")),
        "CatalogItem": obj({"barcode": string(maxLength=64), "sku": string(), "pack_size": integer(1),
                            "description": string()}, ["barcode", "sku", "pack_size", "description"]),
        "CatalogItemIn": obj({"barcode": any_text(BARCODE_MAX_LEN, "GTIN-8/12/13/14 digits (then with a valid GS1 "
                                                                   "check digit) or any other scanned text; unique "
                                                                   "within one request.", min_len=1),
                              "sku": text(values.SKU, f"Not an {UNKNOWN_SKU_PREFIX}… key.", **NOT_UNKNOWN_SKU),
                              "pack_size": integer(1, PACK_SIZE_MAX, "Base units per scan of this barcode.", default=1),
                              "description": any_text(DESCRIPTION_MAX_LEN, default="")},
                             ["barcode", "sku"], closed=True),
        "Catalog": obj({"version": integer(0), "items": array(ref("CatalogItem"))}, ["version", "items"]),
        "CatalogWrite": obj({
            "version": integer(0), "updated": integer(0, description="Items inserted or changed."),
            "rebooked": integer(0, description="Scans of barcodes that were unknown, moved onto their SKU now."),
            "rows": integer(0, description="A CSV body: its data rows (imported + refused_count)."),
            "imported": integer(0, description="A CSV body: its rows taken (a row the same as another is one item)."),
            "refused_count": integer(0, description="A CSV body: its rows refused."),
            "refused": array(ref("RefusedRow"), hi=catalog.REFUSED_MAX,
                             description="A CSV body: every refused row, by line."),
            "refused_csv": string("A CSV body: the refused rows as a CSV file (empty when none): a problem column "
                                  "saying why, then the row's barcode, sku, pack_size, description; fix them and "
                                  "send the file again (the problem column is left aside)."),
        }, ["version", "updated", "rebooked"]),
        "RefusedRow": obj({
            "line": integer(1, description="The line of the file the row starts on (1: the header)."),
            "column": nullable(known(list(catalog.CSV_HEADER), "The column at fault; null: the row as a whole")),
            "reason": string("Why, in one sentence."),
        }, ["line", "column", "reason"]),
        "Divergence": obj({
            "system": string(), "location": string(), "sku": string(), "observed": integer(), "hub_on_hand": integer(),
            "difference": integer(), "observed_at_ms": integer(0), "observed_at": iso_time("When it was observed"),
            "agent_id": string(), "id": string(), "source_file": string(), "received_at_ms": integer(0),
            "received_at": iso_time("When the hub received it"),
        }, ["system", "location", "sku", "observed", "hub_on_hand", "difference", "observed_at_ms", "agent_id", "id"]),
        "DivergencePage": page("divergence", ref("Divergence")),
        "Change": obj({
            wire.CHANGE_ID: integer(1, wire.CURSOR_MAX), wire.LOCATION: ref("Location"), wire.SKU: ref("Sku"),
            wire.ON_HAND: count_value, wire.RESERVED: count_value, wire.AVAILABLE: count_value,
            wire.IN_TRANSIT: count_value, wire.EVENT_IDS: array(uuid_text), wire.AT_MS: integer(0, wire.CURSOR_MAX),
            "at": iso_time("When the hub committed it"),
        }, [wire.CHANGE_ID, wire.LOCATION, wire.SKU, wire.ON_HAND, wire.RESERVED, wire.AVAILABLE, wire.IN_TRANSIT,
            wire.EVENT_IDS, wire.AT_MS, "at"]),
        "ChangesPage": obj({
            wire.CHANGES_FIELD: array(ref("Change"), hi=wire.CHANGES_LIMIT_MAX),
            wire.CURSOR_FIELD: string("Where to resume: send it back as cursor.", pattern=CHANGE_CURSOR_PATTERN),
            wire.MORE_FIELD: {"type": "boolean", "description": "True when the page is full: ask again at once."},
        }, [wire.CHANGES_FIELD, wire.CURSOR_FIELD, wire.MORE_FIELD]),
        "WebhookStatus": obj({
            "name": string(), "url": string(),
            "deliverer": known(["this hub", "another hub"], "Which hub process delivers it (several may share PostgreSQL)"),
            "aside": {"type": "boolean", "description": "This hub leaves the webhook to hubs started with a newer "
                      "[[webhooks]] entry for it (another url or location), and does not deliver it; last_error says "
                      "which. If no such hub runs, nobody delivers it."},
            "location": nullable(string()), "cursor": string(), "lag": integer(0),
            "failures": integer(0), "last_error": nullable(string()), "last_attempt_ms": nullable(ms),
            "last_attempt": iso_time("The last attempt"), "last_success_ms": nullable(ms),
            "last_success": iso_time("The last success"),
        }, ["name", "url", "deliverer", "cursor", "lag", "failures", "last_error"]),
        "Delivery": obj({
            "delivery_id": integer(1), "first_change": integer(0), "last_change": integer(0), "status": string(),
            "http_status": nullable(integer()), "error": nullable(string()), "at_ms": integer(0), "at": iso_time("When"),
        }, ["delivery_id", "first_change", "last_change", "status", "http_status", "error", "at_ms", "at"]),
        "DeliveriesPage": page("deliveries", ref("Delivery"), webhook=string()),
        "ApiEvent": obj({
            "id": text(events_api.API_ID, "The connector's own id of the movement."),
            "location": ref("Location"), "sku": ref("Sku"), "kind": string(enum=kinds),
            "qty": integer(-QTY_MAX, QTY_MAX, "Signed: a sale or release is negative, a count absolute."),
            "occurred_at": {"anyOf": [string("RFC 3339 (ISO 8601 with a UTC offset).", format="date-time"),
                                      integer(events_api.EARLIEST_MS, description="Unix milliseconds.")],
                            "description": "When it happened: not before 2000, not more than clock_window_s ahead."},
            "ref": nullable(text(values.REF)), "reason": nullable(text(values.REASON)), "attrs": nullable(ref("Attrs")),
        }, ["id", "location", "sku", "kind", "qty", "occurred_at"], closed=True, allOf=movement_rules()),
        "EventsRequest": obj({"events": array(ref("ApiEvent"), 1, events_api.EVENTS_MAX)}, ["events"], closed=True),
        "EventsAnswer": obj({
            "events": array(obj({"id": string(), "event_id": uuid_text, "status": known(["accepted", "rejected"]),
                                 "code": string(), "reason": string()}, ["id", "event_id", "status"])),
            "applied": integer(0), "duplicates": integer(0), "rejected": integer(0),
            "counts": array(obj({"location": string(), "sku": string(), "on_hand": integer(), "reserved": integer(),
                                 "available": integer(), "in_transit": integer()},
                                ["location", "sku", "on_hand", "reserved", "available", "in_transit"])),
        }, ["events", "applied", "duplicates", "rejected", "counts"]),
        "InvalidApiEvents": _with_rejected(array(obj({"index": integer(0), "id": nullable(string()),
                                                      "reason": string()}, ["index", "id", "reason"]))),
        "InvalidSyncEvents": _with_rejected(array(obj({"index": integer(0), "event_id": nullable(uuid_text),
                                                       "seq": nullable(integer()), "reason": string()},
                                                      ["index", "event_id", "seq", "reason"]))),
        "ChannelWebhookAnswer": obj({"status": known(["applied", "duplicate", "ignored", "dismissed"]),
                                     "applied": integer(0), "duplicates": integer(0), "rejected": integer(0)},
                                    ["status"]),
        # --- msgpack
        "SyncEvent": obj({
            "id": binary(EVENT_ID_BYTES, "The event id, a UUIDv7"), "seq": integer(1, SEQ_MAX),
            "location": ref("Location"), "sku": ref("Sku"), "kind": string(enum=kinds),
            "qty": integer(-QTY_MAX, QTY_MAX), "occurred_at": hlc, "wall_ms": integer(0, HLC_MAX),
            "source": text(values.SOURCE), "ref": nullable(text(values.REF)), "reason": nullable(text(values.REASON)),
            "attrs": ref("Attrs"),
        }, ["id", "seq", "location", "sku", "kind", "qty", "occurred_at", "source"], closed=True,
            allOf=movement_rules()),
        "SyncColumns": obj({
            name: array(schema, hi=MAX_BATCH_EVENTS) for name, schema in {
                "id": binary(EVENT_ID_BYTES, "The event id, a UUIDv7"), "seq": integer(1, SEQ_MAX),
                "location": ref("Location"), "sku": ref("Sku"), "kind": string(enum=kinds),
                "qty": integer(-QTY_MAX, QTY_MAX), "occurred_at": hlc, "source": text(values.SOURCE),
                "wall_ms": nullable(integer(0, HLC_MAX, "nil: the clock part of occurred_at")),
                "ref": nullable(text(values.REF)), "reason": nullable(text(values.REASON)),
                "attrs": nullable(ref("Attrs")),
            }.items()
        }, ["id", "seq", "location", "sku", "kind", "qty", "occurred_at", "source"], closed=True,
            description="The events as one list per field of SyncEvent, all of one length: the i-th value of each "
                        "is the i-th event's (the rules between kind, qty and ref hold for each). An optional "
                        "field's list may be left out when every event holds its default, and holds nil for each "
                        "event that does. Agents send this form; a hub reads either.",
            example={"id": ["0123456789abcdef"], "seq": [42], "location": ["S001"], "sku": ["SKU-1"],
                     "kind": ["receive"], "qty": [12], "occurred_at": [1_764_061_201_000 << 16],
                     "source": ["scanner:door"]}),
        "SyncRequest": obj({
            "v": integer(WIRE_VERSION, WIRE_VERSION, "The wire version."), "agent_id": ref("AgentId"),
            "epoch": integer(0, EPOCH_MAX), "acked_seq": integer(0, SEQ_MAX, default=0),
            "events": array(ref("SyncEvent"), hi=MAX_BATCH_EVENTS, description="seq strictly increasing."),
            "columns": ref("SyncColumns"),
            "backlog": integer(0, SEQ_MAX), "oldest_pending_ms": integer(0, SEQ_MAX),
            "chain": binary(CHAIN_BYTES, "The outbox's lineage digest at the last seq sent"),
            "epoch_base": integer(0, SEQ_MAX), "base_chain": binary(CHAIN_BYTES, "The digest at epoch_base"),
            "sent_ms": integer(0, SEQ_MAX, "The agent's wall clock when it sent the request."),
            "follows_feed": {"type": "boolean", "description": "Answer change_id (the agent follows the change feed)."},
            "after_seq": integer(0, SEQ_MAX, "The seq the events follow on from, a batch before them not yet "
                                 "answered: the mark moves over them only once it has reached it."),
            "disk": obj({
                "reserve_bytes": integer(0, SEQ_MAX),
                "reserve_held_bytes": integer(0, SEQ_MAX, "More than reserve_bytes counts as reserve_bytes."),
                "free_bytes": integer(0, SEQ_MAX), "refused_ms": integer(0, SEQ_MAX),
            }, ["reserve_bytes", "reserve_held_bytes"], closed=True,
                description="The disk the agent's outbox is on: its disk reserve, the free bytes, a write the full "
                            "disk refused (none since taken)."),
            "lost": obj({
                "first_seq": integer(1, SEQ_MAX), "last_seq": integer(1, SEQ_MAX, "At least first_seq."),
                "count": integer(1, SEQ_MAX, "At most last_seq - first_seq + 1."),
                "found_ms": integer(0, LOST_FOUND_MS_MAX, "The agent's wall clock when it found them lacking."),
                "epoch": integer(0, EPOCH_MAX, "The outbox epoch the seqs are of."),
                "at_least": {"type": "boolean", "description": "count is a lower bound (a rebind)."},
                "of_agent": ref("AgentId"),
            }, ["first_seq", "last_seq", "count", "found_ms", "epoch"], closed=True,
                description="Since 1.13: movements the hub had acknowledged and lacks for good (its database restored "
                            "from an older copy; the agent's outbox no longer holds them). of_agent: the agent id "
                            "they were acknowledged to, when not agent_id (a rebind). A hub before 1.13 answers 400."),
        }, ["v", "agent_id", "epoch"], closed=True,
            oneOf=[{"required": ["events"]}, {"required": ["columns"]}],
            description="The events as events (one map each) or as columns (one list per field), never both."),
        "SyncResponse": obj({
            "v": integer(WIRE_VERSION, WIRE_VERSION), "agent_id": string(), "epoch": integer(0, EPOCH_MAX),
            "hwm": integer(0, SEQ_MAX),
            "rejected": array(array({"anyOf": [string(), integer()]}, 4, 4,
                                    description="[event_id (msgpack bin, 16 bytes), seq, code, reason]")),
            "duplicates": integer(0), "server_time_ms": integer(0),
            "counts": array(array({"anyOf": [string(), integer()]}, 6, 6,
                                  description="[location, sku, on_hand, reserved, available, in_transit]"),
                            hi=MAX_COUNTS),
            "chain": binary(CHAIN_BYTES, "The hub's lineage digest at hwm"), "held": integer(0),
            "change_id": integer(0, SEQ_MAX),
        }, ["v", "agent_id", "epoch", "hwm", "rejected", "duplicates", "counts", "server_time_ms"]),
        "ObservationsRequest": obj({
            "v": integer(WIRE_VERSION, WIRE_VERSION), "agent_id": ref("AgentId"),
            "observations": array(obj({
                "id": any_text(REPORT_ID_MAX_LEN, min_len=1), "location": ref("Location"), "sku": ref("Sku"),
                "system": any_text(SYSTEM_MAX_LEN, min_len=1), "on_hand": integer(-QTY_MAX, QTY_MAX),
                "observed_at_ms": integer(0, OBSERVED_AT_MS_MAX), "source_file": any_text(SOURCE_FILE_MAX_LEN),
            }, ["id", "location", "sku", "system", "on_hand", "observed_at_ms"], closed=True), hi=MAX_REPORT_ITEMS),
        }, ["v", "agent_id", "observations"], closed=True),
        "ImportIssuesRequest": obj({
            "v": integer(WIRE_VERSION, WIRE_VERSION), "agent_id": ref("AgentId"),
            "issues": array(obj({
                "id": any_text(REPORT_ID_MAX_LEN, min_len=1), "location": ref("Location"),
                "file": any_text(ISSUE_FILE_MAX_LEN, min_len=1), "line": integer(0, ISSUE_LINE_MAX),
                "reason": any_text(ISSUE_REASON_MAX_LEN, min_len=1),
                "raw": string("The row as read: control characters are the evidence, so they stay.",
                              maxLength=ISSUE_RAW_MAX_LEN),
            }, ["id", "location", "file", "line", "reason"], closed=True), hi=MAX_REPORT_ITEMS),
        }, ["v", "agent_id", "issues"], closed=True),
        "BundleRecipe": obj({
            "sku": string(), "version": integer(1), "valid_from_ms": ms, "valid_from": iso_time("From when it applies"),
            "components": obj({}, additionalProperties=integer(1), description="Component SKU -> units per bundle."),
            "set_by": string("The admin credential that set it."),
        }, ["sku", "version", "valid_from_ms", "valid_from", "components", "set_by"]),
        "Bundle": {"allOf": [ref("BundleRecipe"), obj({"parts": obj({}, additionalProperties=integer(1),
                                                                    description="Plain SKU -> units one bundle moves.")},
                                                      ["parts"])]},
        "VarianceReport": obj({
            "from": iso_time("The period's start"), "to": iso_time("The period's end (excluded)"),
            "by": known(reports.VARIANCE_BY), "location": nullable(string()), "sku": nullable(string()),
            "rows": array({"type": "object"}, description="by=sku: location, sku, name, counts, shrinkage, overage, "
                          "net_variance, first_count_time, last_count_time; by=location: location, counts, skus, "
                          "shrinkage, overage, net_variance; by=count: each count with counted, expected, variance …"),
            "totals": obj({"counts": integer(0), "shrinkage": integer(0), "overage": integer(0),
                           "net_variance": integer()}),
            "row_count": integer(0, description="by=sku and by=location: how many rows the whole report holds, "
                                 "in every page (since 1.11)."),
            "next": nullable(string("by=count and by=sku (since 1.11; rows of the most shrinkage first): the cursor "
                                    "of the next page, or null. By SKU every page of a walk is of the report its "
                                    "first page read, kept 10 minutes: the same rows, totals and row_count.")),
        }, ["from", "to", "by", "rows"]),
        "ChannelStatus": obj({
            "name": string(), "kind": known(["shopify", "square", "webhook"]), "url": string(),
            "pusher": known(["this hub", "another hub"], "Which hub process pushes it (several may share PostgreSQL)"),
            "connected": nullable({"type": "boolean", "description": "null before the first call."}),
            "last_call_ms": nullable(ms), "last_call": iso_time("The last call to the channel"),
            "last_push_ms": nullable(ms), "last_push": iso_time("The last push"),
            "lag": obj({"last_ms": nullable(integer(0)), "p50_ms": nullable(integer(0)), "p99_ms": nullable(integer(0)),
                        "samples": integer(0)}, description="Store to channel, in ms, of the last 1,000 pushes."),
            "cursor": string(pattern="^[0-9]{1,19}$"), "queue": integer(0),
            "throttle": nullable(obj({}, description="The channel's rate limit as it last said (docs/hub-api.md).")),
            "failures": integer(0), "last_error": nullable(string()), "divergences_open": integer(0),
            "refused": integer(0), "mapped": integer(0), "findings": integer(0),
            "unmapped": obj({"count": integer(0), "skus": array(string())}),
            "reconcile_s": {"type": "number", "minimum": 0, "description": "How often levels are read back; 0: never."},
            "last_reconciliation": nullable(obj({"at_ms": ms, "at": iso_time("When"), "checked": integer(0),
                                                 "diverged": integer(0)}, ["at_ms", "at", "checked", "diverged"])),
            "reconcile_error": nullable(string()),
            "settings": ref("ChannelSettings"),
        }, ["name", "kind", "connected", "cursor", "queue", "failures", "last_error"]),
        "ChannelSettings": obj({
            "pool": obj({}, additionalProperties=string(), description="Hub location -> the channel's location id."),
            "buffer": obj({"units": integer(0), "percent": {"type": "number", "minimum": 0, "maximum": 100},
                           "skus": obj({}, additionalProperties=integer(0))}, ["units", "percent", "skus"]),
            "secret": string("Where the access token is read from (a file or an environment variable), never it."),
            "url": string(), "api_version": nullable(string()), "mapping_csv": nullable(string()),
            "mapping_encoding": nullable(string("The charset mapping_csv is read in; null: by its byte-order mark, "
                                                "else UTF-8.")),
            "batch_max": integer(1), "timeout_s": seconds, "retry_max_s": seconds,
            "reason": nullable(string("Shopify's reason for the quantities set; null for another kind.")),
            "coalesce_s": seconds,
            "reconcile_s": {**seconds, "description": "How often levels are read back; 0: never."},
            "webhook_secret": nullable(string("Where the order webhooks' signing secret is read from; null: the "
                                              "channel takes no order webhooks.")),
            "notification_url": nullable(string("Square: the URL its webhook subscription posts to.")),
            "fulfil_from": obj({}, additionalProperties=string(),
                               description="Channel location id -> the hub location fulfilling its orders."),
            "order_location": nullable(string()),
            "unbooked_sale_wait_s": nullable({**seconds, "description": "Square: how long a register sale taken off "
                                              "the counts waits for its order before it is listed; null otherwise."}),
            "order_match_window_s": nullable({**seconds, "description": "Square: how close in time an order the hub "
                                              "booked matches a register sale naming none; null otherwise."}),
        }, ["pool", "buffer", "secret", "url", "api_version", "mapping_csv", "mapping_encoding", "batch_max", "timeout_s", "retry_max_s",
            "reason", "coalesce_s", "reconcile_s", "webhook_secret", "notification_url", "fulfil_from",
            "order_location", "unbooked_sale_wait_s", "order_match_window_s"],
            description="Every key of the channel's [[channel]] table as the hub runs it, defaults filled in."),
        "ChannelDivergence": obj({
            "id": integer(1), "sku": string(), "item_id": string(), "channel_location": string(), "location": string(),
            "hub_level": integer(), "last_pushed": nullable(integer()), "channel_level": integer(),
            "difference": integer(), "found_at_ms": ms, "found_at": iso_time("When it was found"),
            "corrected_at_ms": nullable(ms), "corrected_at": iso_time("When it was corrected"),
        }, ["id", "sku", "hub_level", "channel_level", "difference", "found_at_ms"]),
        "ChannelDivergencesPage": page("divergences", ref("ChannelDivergence"), channel=string()),
        "MappingRefreshAnswer": obj({
            "channel": string(), "mapped": integer(0), "unmapped": integer(0), "findings_total": integer(0),
            "findings": array(obj({"kind": string(), "sku": nullable(string()), "detail": string()})),
        }, ["channel", "mapped", "unmapped", "findings", "findings_total"]),
        "RefusedOrder": obj({
            "channel": string(), "order_id": string(),
            "location": nullable(string("The hub location its Square location feeds (null: not said).")),
            "channel_location": nullable(string("The order's Square location (null: not known).")),
            "reason": string(), "refused_at_ms": ms, "refused_at": iso_time("When it was last refused"),
            "dismissed_at_ms": nullable(ms), "dismissed_at": iso_time("When it was dismissed"),
            "dismissed_by": nullable(string("The admin credential that dismissed it.")),
        }, ["channel", "order_id", "location", "channel_location", "reason", "refused_at_ms", "dismissed_at_ms",
            "dismissed_by"]),
        "ReconcileAnswer": obj({
            "channel": string(), "at_ms": ms, "at": iso_time("When"), "checked": integer(0),
            "divergences": array(ref("ChannelDivergence")),
        }, ["channel", "at_ms", "checked", "divergences"]),
        "ReportAnswer": obj({
            "v": integer(WIRE_VERSION, WIRE_VERSION), "accepted": array(string()),
            "rejected": array(obj({"id": string(), "reason": string()}, ["id", "reason"])),
        }, ["v", "accepted", "rejected"]),
    }
    return schemas


def _with_rejected(rejected: JSON) -> JSON:
    base = problem_schema()
    return {**base, "properties": {**base["properties"], "rejected": rejected},
            "required": [*base["required"], "rejected"]}  # fmt: skip


def _responses() -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    for status in ERROR_STATUS:
        headers: JSON = {}
        if status == 429:
            headers = {"Retry-After": RETRY_AFTER_HEADER, **RATE_LIMIT_HEADERS}
        elif status == 401:
            headers = {"WWW-Authenticate": header('Bearer realm="shelfsync-hub"', string())}
        elif status == 405:
            headers = {"Allow": header("The methods the route takes, e.g. GET, HEAD.", string())}
        elif status == 503:
            headers = {"Retry-After": {**RETRY_AFTER_HEADER, "required": False}}
        out[f"E{status}"] = error(status, headers=headers or None)
    return out


def _security_schemes() -> dict[str, JSON]:
    return {
        BEARER: {
            "type": "http", "scheme": "bearer",
            "description": f"A credential from `shelfsync-hub agent add` (at most {TOKEN_MAX_CHARS} characters): "
                           "Authorization: Bearer <token>. Its role (agent, reader, admin) decides what it may do; "
                           "each operation names its roles in x-shelfsync-roles.",
        },
        SESSION: {
            "type": "apiKey", "in": "cookie", "name": SESSION_COOKIE,
            "description": "The dashboard's session cookie (POST /dashboard/sign-in): read-only, accepted on GET and "
                           "HEAD only, and always a reader's. Over HTTPS (tls_cert, or an https public_url) it is "
                           f"named {HTTPS_SESSION_COOKIE} (since 1.11): Secure, Path=/, no Domain.",
        },
        SHOPIFY_SIGNATURE: {
            "type": "apiKey", "in": "header", "name": order_routes.SHOPIFY_SIGNATURE,
            "description": "Shopify's webhook signature: base64 HMAC-SHA256 of the raw body keyed with the channel's "
                           "webhook secret (not a key: the hub recomputes it).",
        },
        SQUARE_SIGNATURE: {
            "type": "apiKey", "in": "header", "name": order_routes.SQUARE_SIGNATURE,
            "description": "Square's webhook signature: base64 HMAC-SHA256 of the channel's notification_url followed "
                           "by the raw body, keyed with the channel's webhook secret.",
        },
    }  # fmt: skip


def build() -> JSON:
    """The whole document, freshly built."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "shelfsync hub API",
            "version": API_VERSION,
            "summary": "One central stock ledger for every store: sync, counts, ledger, change feed, catalog.",
            "description": "The readable guide is docs/hub-api.md; its section \"API versions\" says what may change "
                           "within /v1. Errors are one sentence a person can act on, with a machine code. A request "
                           "with a body sent with `Expect: 100-continue` is answered from its head, before `100 "
                           "Continue` and with `Connection: close`, whatever its head alone condemns (the hub shutting "
                           "down or its database failing, its credential or role, its size, its Content-Type, the rate "
                           "limit), with the answer it would get after its body.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": "/", "description": "The hub that serves this document."}],
        "security": [{BEARER: []}],
        "tags": [{"name": t} for t in ("Sync", "Counts", "Ledger", "Agents", "Quarantine", "Catalog", "Reports",
                                       "Change feed", "Bundles", "Channels", "Operations")],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _responses(),
            "securitySchemes": _security_schemes(),
        },
    }


@functools.cache
def document_bytes() -> bytes:
    """The document as served and as kept in docs/openapi.json."""
    return (json.dumps(build(), indent=2, ensure_ascii=False) + "\n").encode()


@functools.cache
def document_etag() -> str:
    return '"' + hashlib.blake2b(document_bytes(), digest_size=16).hexdigest() + '"'


def operations(doc: Mapping[str, Any] | None = None) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation of ``doc`` (default: this hub's)."""
    paths = (doc or build())["paths"]
    return {(method.upper(), path) for path, item in paths.items() for method in item if method != "parameters"}


# --- the route ----------------------------------------------------------------------------------------


async def get_document(request: web.Request) -> web.Response:
    """This hub's OpenAPI document; public, cacheable (a strong ETag of its bytes)."""
    tag = document_etag()
    headers = {"ETag": tag, "Cache-Control": "public, max-age=300"}
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and etag.matches(if_none_match, tag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=document_bytes(), content_type=JSON_TYPE, charset="utf-8", headers=headers)


def setup(app: web.Application) -> None:
    """Serve the document at ``GET /v1/openapi.json`` without a credential."""
    app[PUBLIC_ROUTES_KEY] = app[PUBLIC_ROUTES_KEY] | {ROUTE_NAME}
    app.router.add_get(PATH, get_document, name=ROUTE_NAME)


def main() -> None:
    sys.stdout.buffer.write(document_bytes())


if __name__ == "__main__":
    main()
