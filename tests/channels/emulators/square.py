"""A Square API stand-in (Inventory and Catalog), following ``Square-Version: 2024-11-20``.

Built from Square's public reference for that version (its OpenAPI specification, release 2024-11-20):

* ``Authorization: Bearer <token>``; otherwise HTTP 401 with
  ``{"errors": [{"category": "AUTHENTICATION_ERROR", "code": "UNAUTHORIZED", "detail": …}]}``.
  Every answer carries ``Square-Version``.
* ``POST /v2/inventory/changes/batch-create`` (BatchChangeInventory):
  ``idempotency_key`` (required, 1–128 characters), ``changes`` (at most 100,
  else ``ARRAY_LENGTH_TOO_LONG``), ``ignore_unchanged_counts``. Each change here
  is a ``PHYSICAL_COUNT`` with ``catalog_object_id``, ``location_id``,
  ``state`` (``IN_STOCK``), ``quantity`` (a decimal string), ``occurred_at``
  (RFC 3339; not in the future nor older than 24 hours at the request, else
  HTTP 400 ``INVALID_VALUE`` on its field) and an optional ``reference_id``
  (at most 255 characters, else ``VALUE_TOO_LONG``). The request is all or
  nothing: any bad change is HTTP 400 with an error naming its ``field``. A
  key seen before with the same body answers the first answer again and
  applies nothing; with another body, HTTP 400 ``IDEMPOTENCY_KEY_REUSED``.
  The answer lists the current ``counts`` of every item and location in the
  request, and the ``changes`` created, each with its ``id`` and
  ``created_at``.
* What a count is: every physical count and adjustment is kept in the item's
  history at that location, stamped ``occurred_at`` (the client's) and
  ``created_at`` (when Square received it), with its ``source`` (a push:
  ``EXTERNAL_API`` and the application's id; the register: ``SQUARE_POS``).
  ``IN_STOCK`` is the physical count with the latest ``occurred_at`` (the one
  received later at the same instant) plus every adjustment that occurred
  after it — a sale (``IN_STOCK`` to ``SOLD``) less, a restock (to
  ``IN_STOCK``) more — so a count older than the newest one already held
  changes nothing, and a sale rung up after a pushed count's ``occurred_at``
  is applied on top of it, whenever it arrives. ``calculated_at`` is when the
  newest change behind the count was received.
* ``POST /v2/inventory/counts/batch-retrieve`` (BatchRetrieveInventoryCounts):
  the current counts of ``catalog_object_ids`` at ``location_ids`` (each
  filter applies only when set), a page at a time: ``limit`` 1–1000 counts
  (else HTTP 400 ``INVALID_VALUE``), 100 when not given — the page Square
  answers with; a page that is not the last carries a ``cursor``, sent back
  with the same query for the next page (a cursor sent with another query is
  HTTP 400 ``INVALID_CURSOR``). An item and location without a count is not
  listed.
* ``POST /v2/inventory/changes/batch-retrieve`` (BatchRetrieveInventoryChanges):
  the history above, filtered by ``catalog_object_ids``, ``location_ids``
  (each only when set), ``types`` (``PHYSICAL_COUNT`` and ``ADJUSTMENT``, both
  when not set; ``TRANSFER`` is HTTP 400 ``INVALID_VALUE``, anything else
  ``INVALID_ENUM_VALUE``), ``states`` (adjustments from or to one of them;
  counts are not filtered by it), ``updated_after`` (received after) and
  ``updated_before`` (received strictly before; RFC 3339, else HTTP 400
  ``INVALID_TIME``), sorted by ``occurred_at``, oldest first. Each change is
  ``{"type", "physical_count" | "adjustment"}`` with ``id``,
  ``reference_id`` (when given), ``catalog_object_id``,
  ``catalog_object_type``, ``location_id``, ``quantity``, ``state`` (a count)
  or ``from_state`` / ``to_state`` (an adjustment), ``source``,
  ``occurred_at`` and ``created_at``; a sale (``IN_STOCK`` to ``SOLD``) also
  ``total_price_money`` and ``transaction_id``: the id of the Transaction
  that sold it, which for an order paid at a register is the order's id (the
  order's tenders carry it as their ``transaction_id``; the payment's id is
  another). ``transaction_id`` is "only relevant for payment-related state
  transitions" (InventoryAdjustment, 2024-11-20): a sale without a payment
  (an order completed with no tender) carries none. Paged as the counts are: ``limit``
  1–1000 (100 when not given), a ``cursor`` while more follow, bound to the
  query. Square promises no page size: ``changes_page_max`` makes its pages
  smaller than asked for.
* ``POST /v2/catalog/search`` for ``ITEM_VARIATION`` objects (``sku``,
  ``upc``), ``limit`` 1–1000, paged with ``cursor``.
* Rate limiting: HTTP 429 with ``Retry-After`` (seconds) and
  ``{"errors": [{"category": "RATE_LIMIT_ERROR", "code": "RATE_LIMITED", …}]}``
  — on demand (the ``429`` fault) or above ``requests_per_s``.

Faults on demand for every endpoint (``faults``), or for one path alone
(``faults_at[path]``, served first while it holds any). Two of them break
the reference's promise for BatchChangeInventory ("On success: returns the
current calculated counts for all objects referenced in the request. On
failure: returns a list of related errors."): ``ok_no_counts`` answers HTTP
200 without ``counts`` and ``ok_errors`` HTTP 200 with ``errors``; both apply
nothing.

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

from tests.channels.emulators.base import EmulatorServer, Faults, drop

SQUARE_VERSION = "2024-11-20"
CHANGES_MAX = 100
KEY_MAX_LEN = 128
REFERENCE_MAX_LEN = 255
COUNTS_PAGE = 100  # counts per batch-retrieve page when the request gives no limit
COUNTS_LIMIT_MAX = 1000
CHANGES_PAGE = 100  # changes per changes/batch-retrieve page when the request gives no limit
CHANGE_TYPES = ("PHYSICAL_COUNT", "ADJUSTMENT")
INVENTORY_STATES = (
    "CUSTOM", "IN_STOCK", "SOLD", "RETURNED_BY_CUSTOMER", "RESERVED_FOR_SALE", "SOLD_ONLINE", "ORDERED_FROM_VENDOR",
    "RECEIVED_FROM_VENDOR", "IN_TRANSIT_TO", "NONE", "WASTE", "UNLINKED_RETURN", "COMPOSED", "DECOMPOSED",
    "SUPPORTED_BY_NEWER_VERSION", "IN_TRANSIT",
)  # fmt: skip
APPLICATION_ID = "sq0idp-shelfsync-test-app"  # the application the test token belongs to
REGISTER = {"product": "SQUARE_POS", "name": "Square Point of Sale 6.52"}


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
    change_pages: int = 0  # changes/batch-retrieve answers given (one per page)
    change_cursors: int = 0  # of them, answers to a request that carried a cursor
    change_queries: list[dict[str, Any]] = field(default_factory=list)  # their requests, in arrival order


@dataclass
class Change:
    """One physical count or adjustment in an item's history at a location."""

    id: str
    type: str  # PHYSICAL_COUNT | ADJUSTMENT
    catalog_object_id: str
    location_id: str
    quantity: Decimal
    occurred: datetime
    created: datetime
    seq: int  # arrival order
    source: dict[str, str]
    reference_id: str | None = None
    from_state: str | None = None  # an adjustment's
    to_state: str | None = None
    transaction_id: str | None = None  # a sale's: the id of the order that sold it (Square's transaction is its order)
    unpaid: bool = False  # a sale without a payment: Square gives it no transaction_id

    @property
    def in_stock(self) -> Decimal:
        """What an adjustment does to IN_STOCK."""
        if self.to_state == self.from_state:
            return Decimal(0)
        if self.to_state == "IN_STOCK":
            return self.quantity
        return -self.quantity if self.from_state == "IN_STOCK" else Decimal(0)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id}
        if self.reference_id is not None:
            body["reference_id"] = self.reference_id
        body |= {"catalog_object_id": self.catalog_object_id, "catalog_object_type": "ITEM_VARIATION"}
        if self.type == "PHYSICAL_COUNT":
            body["state"] = "IN_STOCK"
        else:
            body |= {"from_state": self.from_state, "to_state": self.to_state}
        body |= {"location_id": self.location_id, "quantity": str(self.quantity), "source": dict(self.source),
                 "occurred_at": _rfc3339(self.occurred), "created_at": _rfc3339(self.created)}  # fmt: skip
        if self.type == "ADJUSTMENT" and self.to_state == "SOLD":
            body["total_price_money"] = {"amount": 1000 * int(self.quantity), "currency": "USD"}
            if not self.unpaid:  # "only relevant for payment-related state transitions" (2024-11-20)
                body["transaction_id"] = self.transaction_id or f"TX{self.id}"
        return {"type": self.type, "physical_count" if self.type == "PHYSICAL_COUNT" else "adjustment": body}


def _error(category: str, code: str, detail: str, field_name: str | None = None) -> dict[str, Any]:
    e = {"category": category, "code": code, "detail": detail}
    if field_name:
        e["field"] = field_name
    return e


def _invalid(code: str, detail: str, field_name: str | None = None) -> tuple[dict[str, Any], int]:
    return {"errors": [_error("INVALID_REQUEST_ERROR", code, detail, field_name)]}, 400


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
        self.history: dict[tuple[str, str], list[Change]] = {}  # (object, location) -> counts and adjustments
        self.stats = Stats()
        self.faults_at: dict[str, Faults] = {}  # faults for one path, served before the general ones
        self.changes_page_max: int | None = None  # at most this many changes a page, whatever the limit asked
        self.invent_count_pages = 0  # batch-retrieve pages still to answer with one made-up count each
        self.invented = 0
        self._idempotent: dict[str, tuple[str, dict[str, Any]]] = {}
        self._next_id = 1
        self._seq = 0
        for path, handler in (
            ("/v2/inventory/changes/batch-create", self._batch_create),
            ("/v2/inventory/counts/batch-retrieve", self._batch_retrieve),
            ("/v2/inventory/changes/batch-retrieve", self._changes_retrieve),
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

    def fault_at(self, path: str, *faults: str) -> Faults:
        """Queue faults for requests to ``path`` alone (``/v2/inventory/changes/batch-retrieve``)."""
        at = self.faults_at.setdefault(path, Faults())
        at.queue(*faults)
        return at

    def drift(self, object_id: str, location_id: str, quantity: int) -> None:
        """The count moves behind the hub's back: a physical count entered at a Square register, now."""
        self.register_count(object_id, location_id, quantity)

    def register_count(
        self, object_id: str, location_id: str, quantity: int, *, occurred_at: datetime | None = None
    ) -> Change:
        """A physical count entered at a Square register (or in the dashboard), occurred ``occurred_at`` (now)."""
        return self._record("PHYSICAL_COUNT", object_id, location_id, Decimal(quantity), occurred_at, REGISTER)

    def register_sale(
        self, object_id: str, location_id: str, quantity: int = 1, *, occurred_at: datetime | None = None,
        order_id: str | None = None, unpaid: bool = False,
    ) -> Change:  # fmt: skip
        """A sale rung up at a Square register: an adjustment from IN_STOCK to SOLD, occurred ``occurred_at``, its
        ``transaction_id`` the order that sold it (``order_id``; one made up when not given); ``unpaid``: a sale
        without a payment (an order completed with no tender), which carries no ``transaction_id`` at all."""
        change = self._record(
            "ADJUSTMENT", object_id, location_id, Decimal(quantity), occurred_at, REGISTER, states=("IN_STOCK", "SOLD")
        )
        change.transaction_id = order_id
        change.unpaid = unpaid
        return change

    def register_waste(
        self, object_id: str, location_id: str, quantity: int = 1, *, occurred_at: datetime | None = None
    ) -> Change:
        """Units thrown away, recorded at a Square register: an adjustment from IN_STOCK to WASTE."""
        return self._record(
            "ADJUSTMENT", object_id, location_id, Decimal(quantity), occurred_at, REGISTER, states=("IN_STOCK", "WASTE")
        )

    def forget(self, object_id: str, location_id: str) -> None:
        """Square holds no count of the item there (it shows 0)."""
        self.history.pop((object_id, location_id), None)

    def quantity(self, object_id: str, location_id: str) -> int | None:
        held = self._count(object_id, location_id)
        return None if held is None else int(held[0])

    # --- the plumbing ------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.wall_offset_s)

    def _record(
        self, kind: str, obj: str, loc: str, quantity: Decimal, occurred: datetime | None, source: dict[str, str],
        *, reference_id: str | None = None, states: tuple[str, str] | None = None, created: datetime | None = None,
    ) -> Change:  # fmt: skip
        now = _ms(created or self._now())
        self._seq += 1
        change = Change(
            id=f"{'PC' if kind == 'PHYSICAL_COUNT' else 'ADJ'}{self._seq:020d}", type=kind, catalog_object_id=obj,
            location_id=loc, quantity=quantity, occurred=_ms(occurred or now), created=now, seq=self._seq,
            source=dict(source), reference_id=reference_id,
            from_state=states[0] if states else None, to_state=states[1] if states else None,
        )  # fmt: skip
        self.history.setdefault((obj, loc), []).append(change)
        return change

    def _count(self, obj: str, loc: str) -> tuple[Decimal, datetime] | None:
        """IN_STOCK now: the physical count with the latest occurred_at plus the adjustments that occurred after it,
        and when the newest change behind it was received; None when Square holds no count."""
        changes = self.history.get((obj, loc))
        if not changes:
            return None
        counts = [c for c in changes if c.type == "PHYSICAL_COUNT"]
        base = max(counts, key=lambda c: (c.occurred, c.seq), default=None)
        applied = [
            c for c in changes
            if c.type == "ADJUSTMENT" and c.in_stock and (base is None or c.occurred > base.occurred)
        ]  # fmt: skip
        behind = ([base] if base is not None else []) + applied
        if not behind:
            return None
        quantity = (base.quantity if base is not None else Decimal(0)) + sum((c.in_stock for c in applied), Decimal(0))
        return quantity, max(c.created for c in behind)

    def _answer(self, body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
        date = format_datetime(self._now(), usegmt=True)  # as Square's servers: their clock, to the second
        return web.json_response(
            body, status=status, headers={"Square-Version": SQUARE_VERSION, "Date": date, **(headers or {})}
        )

    def _guarded(
        self, handler: Callable[[dict[str, Any]], tuple[dict[str, Any], int] | web.Response]
    ) -> Callable[[web.Request], Any]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            self.stats.requests += 1
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return self._answer(
                    {"errors": [_error("AUTHENTICATION_ERROR", "UNAUTHORIZED", "This request could not be authorized.")]},
                    401,
                )
            at = self.faults_at.get(request.path)
            faults = at if at is not None and at.pending else self.faults
            fault = faults.next()
            if fault == "drop":
                return await drop(request)
            if fault == "429" or self._over_rate():
                self.stats.rate_limited += 1
                retry_after = faults.retry_after_s if fault == "429" else self.faults.retry_after_s
                return self._answer(
                    {"errors": [_error("RATE_LIMIT_ERROR", "RATE_LIMITED", "Rate limit exceeded, retry later.")]},
                    429,
                    {} if retry_after is None else {"Retry-After": str(retry_after)},
                )
            if fault in ("http_500", "http_503"):
                status = 500 if fault == "http_500" else 503
                code = "INTERNAL_SERVER_ERROR" if status == 500 else "SERVICE_UNAVAILABLE"
                return self._answer({"errors": [_error("API_ERROR", code, "An internal error has occurred.")]}, status)
            if fault == "ok_no_counts":  # a 200 that confirms nothing: not what the reference promises, on purpose
                return self._answer({"changes": []}, 200)
            if fault == "ok_errors":
                return self._answer({"errors": [_error("API_ERROR", "INTERNAL_SERVER_ERROR", "Something went wrong.")]}, 200)
            if fault == "slow":
                await asyncio.sleep(faults.slow_s)
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
            return answer if isinstance(answer, web.StreamResponse) else self._answer(*answer)

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

    def _batch_create(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        key = body.get("idempotency_key")
        if not isinstance(key, str) or not 1 <= len(key) <= KEY_MAX_LEN:
            return _invalid("MISSING_REQUIRED_PARAMETER", "Field must be set", "idempotency_key")
        self.stats.keys.append(key)
        fingerprint = json.dumps(body, sort_keys=True)
        if key in self._idempotent:
            seen, answer = self._idempotent[key]
            if seen != fingerprint:
                return _invalid(
                    "IDEMPOTENCY_KEY_REUSED", "The idempotency key can only be retried with the same request data.",
                    "idempotency_key",
                )  # fmt: skip
            self.stats.replays += 1
            return copy.deepcopy(answer), 200
        changes = body.get("changes")
        if not isinstance(changes, list):
            return _invalid("EXPECTED_ARRAY", "Expected an array.", "changes")
        self.stats.batch_sizes.append(len(changes))
        if len(changes) > CHANGES_MAX:
            return _invalid(
                "ARRAY_LENGTH_TOO_LONG", f"Array length {len(changes)} exceeds the maximum of {CHANGES_MAX}.", "changes"
            )
        for i, change in enumerate(changes):
            problem = self._check_change(i, change)
            if problem is not None:
                return {"errors": [problem]}, 400
        now = self._now()
        source = {"product": "EXTERNAL_API", "application_id": APPLICATION_ID, "name": "shelfsync hub"}
        created = [
            self._record(
                "PHYSICAL_COUNT", pc["catalog_object_id"], pc["location_id"], Decimal(pc["quantity"]),
                _instant(pc["occurred_at"]), source, reference_id=pc.get("reference_id"), created=now,
            )
            for pc in (c["physical_count"] for c in changes)
        ]  # fmt: skip
        self.stats.batches_applied += 1
        pairs = list(dict.fromkeys((c.catalog_object_id, c.location_id) for c in created))
        answer = {"counts": [self._count_json(o, l) for o, l in pairs], "changes": [c.as_json() for c in created]}
        self._idempotent[key] = (fingerprint, copy.deepcopy(answer))
        return answer, 200

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
        reference = pc.get("reference_id")
        if reference is not None and (not isinstance(reference, str) or len(reference) > REFERENCE_MAX_LEN):
            return _error(
                "INVALID_REQUEST_ERROR",
                "VALUE_TOO_LONG",
                f"Expected a string of at most {REFERENCE_MAX_LEN} characters.",
                f"{at}.physical_count.reference_id",
            )
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

    def _count_json(self, obj: str, loc: str) -> dict[str, Any]:
        held = self._count(obj, loc)
        qty, at = held if held is not None else (Decimal(0), self._now())
        return {"catalog_object_id": obj, "catalog_object_type": "ITEM_VARIATION", "state": "IN_STOCK",
                "location_id": loc, "quantity": str(qty), "calculated_at": _rfc3339(at)}  # fmt: skip

    def _batch_retrieve(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        limit = body.get("limit", COUNTS_PAGE)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= COUNTS_LIMIT_MAX:
            return _invalid("INVALID_VALUE", f"limit must be from 1 to {COUNTS_LIMIT_MAX}.", "limit")
        if self.invent_count_pages > 0:  # a broken Square: one made-up count, a fresh cursor, more to follow
            return self._invented_counts(body)
        start, problem = _cursor_start(body)
        if problem is not None:
            return problem
        if "cursor" in body:
            self.stats.count_cursors += 1
        objects = body.get("catalog_object_ids") or list(self.variations)
        locations = body.get("location_ids") or sorted(self.locations)
        pairs = [(o, l) for o in objects for l in locations if self._count(o, l) is not None]
        answer: dict[str, Any] = {"counts": [self._count_json(o, l) for o, l in pairs[start : start + limit]]}
        if start + limit < len(pairs):
            answer["cursor"] = _next_cursor(body, start + limit)
        self.stats.count_pages += 1
        return answer, 200

    def _changes_retrieve(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        for name in ("catalog_object_ids", "location_ids", "types", "states"):
            value = body.get(name)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                return _invalid("EXPECTED_ARRAY", "Expected an array of strings.", name)
        types = body.get("types") or list(CHANGE_TYPES)
        for i, kind in enumerate(types):
            if kind == "TRANSFER":
                return _invalid("INVALID_VALUE", "TRANSFER changes cannot be retrieved here.", f"types[{i}]")
            if kind not in CHANGE_TYPES:
                return _invalid("INVALID_ENUM_VALUE", f"Expected one of {', '.join(CHANGE_TYPES)}.", f"types[{i}]")
        states = body.get("states")
        for i, state in enumerate(states or ()):
            if state not in INVENTORY_STATES:
                return _invalid("INVALID_ENUM_VALUE", "Expected an inventory state.", f"states[{i}]")
        bounds: dict[str, datetime] = {}
        for name in ("updated_after", "updated_before"):
            value = body.get(name)
            if value is None:
                continue
            try:
                bounds[name] = _instant(value) if isinstance(value, str) else _instant("")
            except ValueError:
                return _invalid("INVALID_TIME", "Expected an RFC 3339 timestamp.", name)
        limit = body.get("limit", CHANGES_PAGE)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= COUNTS_LIMIT_MAX:
            return _invalid("INVALID_VALUE", f"limit must be from 1 to {COUNTS_LIMIT_MAX}.", "limit")
        start, problem = _cursor_start(body)
        if problem is not None:
            return problem
        self.stats.change_queries.append(copy.deepcopy(body))
        if "cursor" in body:
            self.stats.change_cursors += 1
        objects, locations = body.get("catalog_object_ids"), body.get("location_ids")
        after, before = bounds.get("updated_after"), bounds.get("updated_before")
        found = sorted(
            (
                c for (obj, loc), changes in self.history.items()
                if (not objects or obj in objects) and (not locations or loc in locations)
                for c in changes
                if c.type in types
                and (c.type != "ADJUSTMENT" or not states or c.from_state in states or c.to_state in states)
                and (after is None or c.created > after) and (before is None or c.created < before)
            ),
            key=lambda c: (c.occurred, c.seq),
        )  # fmt: skip
        size = min(limit, self.changes_page_max or limit)
        answer: dict[str, Any] = {"changes": [c.as_json() for c in found[start : start + size]]}
        if start + size < len(found):
            answer["cursor"] = _next_cursor(body, start + size)
        self.stats.change_pages += 1
        return answer, 200

    def _invented_counts(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        self.invent_count_pages -= 1
        self.invented += 1
        locations = body.get("location_ids") or sorted(self.locations)
        count = {"catalog_object_id": f"INVENTED-{self.invented}", "catalog_object_type": "ITEM_VARIATION",
                 "state": "IN_STOCK", "location_id": locations[0], "quantity": "0",
                 "calculated_at": _rfc3339(self._now())}  # fmt: skip
        self.stats.count_pages += 1
        return {"counts": [count], "cursor": f"invented:{self.invented}"}, 200

    def _catalog_search(self, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        if body.get("object_types") != ["ITEM_VARIATION"]:
            return _invalid("INVALID_VALUE", "This emulator searches ITEM_VARIATION only.", "object_types")
        limit = body.get("limit", 100)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            return _invalid("INVALID_VALUE", "limit must be from 1 to 1000.", "limit")
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
        return answer, 200


def _query(body: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in body.items() if k != "cursor"}, sort_keys=True)


def _fingerprint(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:16]


def _next_cursor(body: dict[str, Any], offset: int) -> str:
    """The cursor of the page at ``offset`` of this query: good for this query alone."""
    return f"{offset}:{_fingerprint(_query(body))}"


def _cursor_start(body: dict[str, Any]) -> tuple[int, tuple[dict[str, Any], int] | None]:
    """Where the page a request's cursor names starts (0 without one), or the 400 a cursor of another query gets."""
    cursor = body.get("cursor")
    if cursor is None:
        return 0, None
    offset, _, fingerprint = str(cursor).partition(":")
    if not offset.isdigit() or fingerprint != _fingerprint(_query(body)):
        return 0, _invalid("INVALID_CURSOR", "The cursor does not belong to this query.", "cursor")
    return int(offset), None


def _instant(text: str) -> datetime:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("an RFC 3339 time names its offset")
    return when


def _ms(when: datetime) -> datetime:
    """Square keeps times to the millisecond."""
    return when.replace(microsecond=when.microsecond // 1000 * 1000)


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
