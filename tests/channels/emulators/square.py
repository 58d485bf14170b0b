"""A Square API stand-in (Inventory and Catalog), following ``Square-Version: 2024-11-20``.

Built from Square's public reference for that version:

* ``Authorization: Bearer <token>``; otherwise HTTP 401 with
  ``{"errors": [{"category": "AUTHENTICATION_ERROR", "code": "UNAUTHORIZED", "detail": …}]}``.
  Every answer carries ``Square-Version``.
* ``POST /v2/inventory/changes/batch-create`` (BatchChangeInventory):
  ``idempotency_key`` (required, 1–128 characters), ``changes`` (at most 100,
  else ``ARRAY_LENGTH_TOO_LONG``), ``ignore_unchanged_counts``. Each change here
  is a ``PHYSICAL_COUNT`` with ``catalog_object_id``, ``location_id``,
  ``state`` (``IN_STOCK``), ``quantity`` (a decimal string) and
  ``occurred_at`` (RFC 3339; not in the future nor older than 24 hours at
  the request, else HTTP 400 ``INVALID_VALUE`` on its field). Counts are applied by the client's timestamp: a
  count older than the newest one already held for that item and location
  changes nothing. The request is all or nothing: any bad change is HTTP 400
  with an error naming its ``field``. A key seen before with the same body
  answers the first answer again and applies nothing; with another body, HTTP
  400 ``IDEMPOTENCY_KEY_REUSED``. The answer lists the current ``counts`` of
  every item and location in the request — so a count Square did not take
  (one it holds is stamped later) shows there as Square's own quantity, with
  ``calculated_at`` the time the count standing was received.
* ``POST /v2/inventory/counts/batch-retrieve`` (BatchRetrieveInventoryCounts):
  the current counts of ``catalog_object_ids`` at ``location_ids`` (each
  filter applies only when set), a page at a time: ``limit`` 1–1000 counts
  (else HTTP 400 ``INVALID_VALUE``), 100 when not given — the page Square
  answers with; a page that is not the last carries a ``cursor``, sent back
  with the same query for the next page (a cursor sent with another query is
  HTTP 400 ``INVALID_CURSOR``). An item and location without a count is not
  listed.
* ``POST /v2/catalog/search`` for ``ITEM_VARIATION`` objects (``sku``,
  ``upc``), ``limit`` 1–1000, paged with ``cursor``.
* Rate limiting: HTTP 429 with ``Retry-After`` (seconds) and
  ``{"errors": [{"category": "RATE_LIMIT_ERROR", "code": "RATE_LIMITED", …}]}``
  — on demand (the ``429`` fault) or above ``requests_per_s``.

A broken Square on demand: ``invent_count_pages`` pages of
``inventory/counts/batch-retrieve``, each one count made up for it (an item
nobody asked for) under a fresh cursor — as a Square inventing counts for
ever would.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from tests.channels.emulators.base import EmulatorServer, drop

SQUARE_VERSION = "2024-11-20"
CHANGES_MAX = 100
KEY_MAX_LEN = 128
COUNTS_PAGE = 100  # counts per batch-retrieve page when the request gives no limit
COUNTS_LIMIT_MAX = 1000


@dataclass
class Stats:
    requests: int = 0
    rate_limited: int = 0
    batches_applied: int = 0
    replays: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # changes per batch-create request, in arrival order
    keys: list[str] = field(default_factory=list)  # idempotency keys of batch-create requests, in arrival order
    count_pages: int = 0  # batch-retrieve answers given (one per page)
    count_cursors: int = 0  # of them, answers to a request that carried a cursor


def _error(category: str, code: str, detail: str, field_name: str | None = None) -> dict[str, Any]:
    e = {"category": category, "code": code, "detail": detail}
    if field_name:
        e["field"] = field_name
    return e


class SquareEmulator(EmulatorServer):
    def __init__(
        self,
        token: str = "EAAA-test-token-0123456789",
        *,
        requests_per_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_offset_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.token = token
        # Square's own clock against this machine's: its answers' Date header and its occurred_at window follow it
        self.wall_offset_s = wall_offset_s
        self.requests_per_s = requests_per_s
        self._clock = clock
        self._window: list[float] = []
        self.variations: dict[str, dict[str, str]] = {}  # id -> {"sku", "upc", "name"}
        self.locations: set[str] = set()
        self.counts: dict[tuple[str, str], tuple[Decimal, str]] = {}  # (object, location) -> (quantity, occurred_at)
        self.received: dict[tuple[str, str], str] = {}  # (object, location) -> when the count standing came in
        self.stats = Stats()
        self.invent_count_pages = 0  # batch-retrieve pages still to answer with one made-up count each
        self.invented = 0
        self._idempotent: dict[str, tuple[str, dict[str, Any]]] = {}
        self._next_id = 1
        for path, handler in (
            ("/v2/inventory/changes/batch-create", self._batch_create),
            ("/v2/inventory/counts/batch-retrieve", self._batch_retrieve),
            ("/v2/catalog/search", self._catalog_search),
        ):
            self.app.router.add_post(path, self._guarded(handler))

    @property
    def url(self) -> str:
        return self.base_url

    def add_location(self, location_id: str | None = None) -> str:
        lid = location_id or f"L{self._next_id:012d}"
        self._next_id += 1
        self.locations.add(lid)
        return lid

    def add_variation(self, sku: str, *, upc: str = "", name: str = "") -> str:
        vid = f"VAR{self._next_id:020d}"
        self._next_id += 1
        self.variations[vid] = {"sku": sku, "upc": upc, "name": name or f"Variation {sku}"}
        return vid

    def drift(self, object_id: str, location_id: str, quantity: int) -> None:
        """The count moves behind the hub's back (a sale rung up at a Square register, an edit in the dashboard)."""
        now = self._now().astimezone().isoformat()
        self.counts[(object_id, location_id)] = (Decimal(quantity), now)
        self.received[(object_id, location_id)] = now

    def quantity(self, object_id: str, location_id: str) -> int | None:
        held = self.counts.get((object_id, location_id))
        return None if held is None else int(held[0])

    # --- the plumbing ------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.wall_offset_s)

    def _answer(self, body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        date = format_datetime(self._now(), usegmt=True)  # as Square's servers: their clock, to the second
        return web.json_response(
            body, status=status, headers={"Square-Version": SQUARE_VERSION, "Date": date, **(headers or {})}
        )

    def _guarded(self, handler: Callable[[dict[str, Any]], web.Response]) -> Callable[[web.Request], Any]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            self.stats.requests += 1
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return self._answer(
                    {"errors": [_error("AUTHENTICATION_ERROR", "UNAUTHORIZED", "This request could not be authorized.")]},
                    401,
                )
            fault = self.faults.next()
            if fault == "drop":
                return await drop(request)
            if fault == "429" or self._over_rate():
                self.stats.rate_limited += 1
                return self._answer(
                    {"errors": [_error("RATE_LIMIT_ERROR", "RATE_LIMITED", "Rate limit exceeded, retry later.")]},
                    429,
                    {"Retry-After": str(self.faults.retry_after_s)},
                )
            if fault in ("http_500", "http_503"):
                status = 500 if fault == "http_500" else 503
                code = "INTERNAL_SERVER_ERROR" if status == 500 else "SERVICE_UNAVAILABLE"
                return self._answer({"errors": [_error("API_ERROR", code, "An internal error has occurred.")]}, status)
            if fault == "slow":
                await asyncio.sleep(self.faults.slow_s)
            try:
                body = json.loads(await request.read())
                if not isinstance(body, dict):
                    raise ValueError
            except ValueError:
                return self._answer(
                    {"errors": [_error("INVALID_REQUEST_ERROR", "INVALID_CONTENT_TYPE", "The body is not a JSON object.")]},
                    400,
                )
            answer = handler(body)
            if fault == "drop_after":
                return await drop(request)
            return answer

        return guarded

    def _over_rate(self) -> bool:
        if self.requests_per_s is None:
            return False
        now = self._clock()
        self._window = [t for t in self._window if now - t < 1.0]
        if len(self._window) >= self.requests_per_s:
            return True
        self._window.append(now)
        return False

    # --- endpoints ------------------------------------------------------------------------

    def _batch_create(self, body: dict[str, Any]) -> web.Response:
        key = body.get("idempotency_key")
        if not isinstance(key, str) or not 1 <= len(key) <= KEY_MAX_LEN:
            return self._answer(
                {"errors": [_error("INVALID_REQUEST_ERROR", "MISSING_REQUIRED_PARAMETER",
                                   "Field must be set", "idempotency_key")]}, 400
            )
        self.stats.keys.append(key)
        fingerprint = json.dumps(body, sort_keys=True)
        if key in self._idempotent:
            seen, answer = self._idempotent[key]
            if seen != fingerprint:
                return self._answer(
                    {"errors": [_error("INVALID_REQUEST_ERROR", "IDEMPOTENCY_KEY_REUSED",
                                       "The idempotency key can only be retried with the same request data.",
                                       "idempotency_key")]}, 400
                )
            self.stats.replays += 1
            return self._answer(copy.deepcopy(answer))
        changes = body.get("changes")
        if not isinstance(changes, list):
            return self._answer({"errors": [_error("INVALID_REQUEST_ERROR", "EXPECTED_ARRAY", "Expected an array.", "changes")]}, 400)
        self.stats.batch_sizes.append(len(changes))
        if len(changes) > CHANGES_MAX:
            return self._answer(
                {"errors": [_error("INVALID_REQUEST_ERROR", "ARRAY_LENGTH_TOO_LONG",
                                   f"Array length {len(changes)} exceeds the maximum of {CHANGES_MAX}.", "changes")]}, 400
            )
        parsed: list[tuple[str, str, Decimal, str]] = []
        for i, change in enumerate(changes):
            problem = self._check_change(i, change)
            if problem is not None:
                return self._answer({"errors": [problem]}, 400)
            pc = change["physical_count"]
            parsed.append((pc["catalog_object_id"], pc["location_id"], Decimal(pc["quantity"]), pc["occurred_at"]))
        now = self._now().astimezone().isoformat(timespec="milliseconds")
        for obj, loc, qty, occurred in parsed:
            held = self.counts.get((obj, loc))
            if held is None or _instant(occurred) >= _instant(held[1]):  # the latest occurred_at wins
                self.counts[(obj, loc)] = (qty, occurred)
                self.received[(obj, loc)] = now
        self.stats.batches_applied += 1
        pairs = list(dict.fromkeys((o, l) for o, l, _, _ in parsed))
        answer = {
            "counts": [self._count_json(o, l, now) for o, l in pairs],
            "changes": [{"type": "PHYSICAL_COUNT", "physical_count": dict(c["physical_count"], created_at=now)} for c in changes],
        }
        self._idempotent[key] = (fingerprint, copy.deepcopy(answer))
        return self._answer(answer)

    def _check_change(self, i: int, change: Any) -> dict[str, Any] | None:
        at = f"changes[{i}]"
        if not isinstance(change, dict) or change.get("type") != "PHYSICAL_COUNT" or not isinstance(change.get("physical_count"), dict):
            return _error("INVALID_REQUEST_ERROR", "INVALID_VALUE", "This emulator takes PHYSICAL_COUNT changes.", f"{at}.type")
        pc = change["physical_count"]
        if pc.get("catalog_object_id") not in self.variations:
            return _error("INVALID_REQUEST_ERROR", "NOT_FOUND", "Catalog object not found.", f"{at}.physical_count.catalog_object_id")
        if pc.get("location_id") not in self.locations:
            return _error("INVALID_REQUEST_ERROR", "NOT_FOUND", "Location not found.", f"{at}.physical_count.location_id")
        if pc.get("state") != "IN_STOCK":
            return _error("INVALID_REQUEST_ERROR", "INVALID_ENUM_VALUE", "Expected IN_STOCK.", f"{at}.physical_count.state")
        quantity = pc.get("quantity")
        try:
            if not isinstance(quantity, str):
                raise InvalidOperation
            value = Decimal(quantity)
            if not value.is_finite() or value < 0:
                raise InvalidOperation
        except InvalidOperation:
            return _error("INVALID_REQUEST_ERROR", "INVALID_VALUE", "Expected a non-negative decimal string.", f"{at}.physical_count.quantity")
        occurred = pc.get("occurred_at")
        try:
            if not isinstance(occurred, str):
                raise ValueError
            when = _instant(occurred)
        except ValueError:
            return _error("INVALID_REQUEST_ERROR", "INVALID_TIME", "Expected an RFC 3339 timestamp.", f"{at}.physical_count.occurred_at")
        now = self._now()
        if when > now or when < now - timedelta(hours=24):
            return _error("INVALID_REQUEST_ERROR", "INVALID_VALUE",
                          "occurred_at cannot be older than 24 hours or in the future.", f"{at}.physical_count.occurred_at")
        return None

    def _count_json(self, obj: str, loc: str, now: str) -> dict[str, Any]:
        qty = self.counts.get((obj, loc), (Decimal(0), now))[0]
        return {"catalog_object_id": obj, "catalog_object_type": "ITEM_VARIATION", "state": "IN_STOCK",
                "location_id": loc, "quantity": str(qty), "calculated_at": self.received.get((obj, loc), now)}

    def _batch_retrieve(self, body: dict[str, Any]) -> web.Response:
        limit = body.get("limit", COUNTS_PAGE)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= COUNTS_LIMIT_MAX:
            return self._answer({"errors": [_error("INVALID_REQUEST_ERROR", "INVALID_VALUE",
                                                   f"limit must be from 1 to {COUNTS_LIMIT_MAX}.", "limit")]}, 400)
        if self.invent_count_pages > 0:  # a broken Square: one made-up count, a fresh cursor, more to follow
            return self._invented_counts(body)
        query = json.dumps({k: v for k, v in body.items() if k != "cursor"}, sort_keys=True)
        start = 0
        cursor = body.get("cursor")
        if cursor is not None:
            offset, _, fingerprint = str(cursor).partition(":")
            if not offset.isdigit() or fingerprint != _fingerprint(query):
                return self._answer({"errors": [_error("INVALID_REQUEST_ERROR", "INVALID_CURSOR",
                                                       "The cursor does not belong to this query.", "cursor")]}, 400)
            start = int(offset)
            self.stats.count_cursors += 1
        objects = body.get("catalog_object_ids") or list(self.variations)
        locations = body.get("location_ids") or sorted(self.locations)
        now = self._now().astimezone().isoformat(timespec="milliseconds")
        pairs = [(o, l) for o in objects for l in locations if (o, l) in self.counts]
        answer: dict[str, Any] = {"counts": [self._count_json(o, l, now) for o, l in pairs[start : start + limit]]}
        if start + limit < len(pairs):
            answer["cursor"] = f"{start + limit}:{_fingerprint(query)}"
        self.stats.count_pages += 1
        return self._answer(answer)

    def _invented_counts(self, body: dict[str, Any]) -> web.Response:
        self.invent_count_pages -= 1
        self.invented += 1
        now = self._now().astimezone().isoformat(timespec="milliseconds")
        locations = body.get("location_ids") or sorted(self.locations)
        count = self._count_json(f"INVENTED-{self.invented}", locations[0], now)
        self.stats.count_pages += 1
        return self._answer({"counts": [count], "cursor": f"invented:{self.invented}"})

    def _catalog_search(self, body: dict[str, Any]) -> web.Response:
        if body.get("object_types") != ["ITEM_VARIATION"]:
            return self._answer({"errors": [_error("INVALID_REQUEST_ERROR", "INVALID_VALUE", "This emulator searches ITEM_VARIATION only.", "object_types")]}, 400)
        limit = body.get("limit", 100)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            return self._answer({"errors": [_error("INVALID_REQUEST_ERROR", "INVALID_VALUE", "limit must be from 1 to 1000.", "limit")]}, 400)
        start = int(body["cursor"]) if str(body.get("cursor", "")).isdigit() else 0
        ids = list(self.variations)[start : start + limit]
        objects = [
            {"type": "ITEM_VARIATION", "id": vid, "is_deleted": False, "version": 1,
             "item_variation_data": {"item_id": f"ITEM{vid[3:]}", "name": self.variations[vid]["name"],
                                     "sku": self.variations[vid]["sku"], "upc": self.variations[vid]["upc"] or None}}
            for vid in ids
        ]
        answer: dict[str, Any] = {"objects": objects}
        if start + limit < len(self.variations):
            answer["cursor"] = str(start + limit)
        return self._answer(answer)


def _fingerprint(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
