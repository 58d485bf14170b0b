"""A Shopify GraphQL Admin API stand-in, following API version 2026-01.

Built from Shopify's public reference for that version:

* ``POST /admin/api/2026-01/graphql.json`` with ``X-Shopify-Access-Token``; a
  wrong token is HTTP 401 ``{"errors": "[API] Invalid API key or access token
  (unrecognized login or wrong password)"}``, another version HTTP 404.
* ``inventorySetQuantities(input: InventorySetQuantitiesInput!)`` with the
  ``@idempotent(key:)`` directive: ``name`` (``available`` | ``on_hand``),
  ``reason`` (one of Shopify's reasons), ``referenceDocumentUri``,
  ``quantities[{inventoryItemId, locationId, quantity, changeFromQuantity}]``
  (at most 250). ``changeFromQuantity`` is compare-and-set (``null`` skips it);
  without it, 2026-01's older ``compareQuantity`` / ``ignoreCompareQuantity``
  rules apply (``COMPARE_QUANTITY_REQUIRED``). Any user error applies nothing:
  ``inventoryAdjustmentGroup`` is null and ``userErrors`` carry ``code``,
  ``field`` (e.g. ``["input", "quantities", "3", "changeFromQuantity"]``) and
  ``message``. A key seen before with the same input answers the first result
  again without applying anything; with another input,
  ``IDEMPOTENCY_KEY_PARAMETER_MISMATCH``; while the first is still running,
  ``IDEMPOTENCY_CONCURRENT_REQUEST``. An applied call answers its
  ``inventoryAdjustmentGroup`` with one of ``changes`` per quantity: ``name``,
  ``delta``, ``quantityAfterChange`` (null for ``available``), ``item { id
  sku }`` (the variant's SKU as it stands now) and ``location { id }``.
* ``productVariants(first:, after:)`` (``nodes { id sku barcode title
  inventoryItem { id } }``, ``pageInfo``) and ``nodes(ids:)`` of inventory
  items with ``inventoryLevel(locationId:) { quantities(names:) }``.
* ``productVariantsCount(limit:)``, asked beside ``productVariants`` in one
  document: a ``Count`` (``count``, ``precision`` ``EXACT`` | ``AT_LEAST``);
  ``limit`` defaults to 10,000 and ``null`` is no limit; a count past the
  limit is the limit, ``AT_LEAST``. It costs 1 point (an object).
* Cost-based throttling: a leaky bucket of ``maximum_available`` points (1,000
  by default) refilled at ``restore_rate`` points per second (100: standard
  plans; 1,000: Plus). A call is charged its requested cost up front and
  refunded the difference to its actual cost; a mutation costs 10, a
  connection ``2 + first × 2`` (each variant and its inventory item), a node 2.
  A connection costs 2 plus its ``first`` argument times what each of its
  nodes selects (an object 1, a scalar 0), nested connections multiplied
  through (``orders_cost``, ``order_nodes_cost``). A query asking for more
  than ``SINGLE_QUERY_MAX`` points (1,000, whatever the plan), or than the
  bucket can ever hold, is refused before it runs: HTTP 200 with
  ``errors[].extensions.code = "MAX_COST_EXCEEDED"`` (``cost``, ``maxCost``).
  When the bucket holds less than the requested cost the answer is HTTP 200
  with ``errors[].extensions.code = "THROTTLED"`` and nothing is executed;
  every answer carries ``extensions.cost`` (``requestedQueryCost``,
  ``actualQueryCost``, ``throttleStatus``); ``Stats.costs`` keeps each
  query's requested cost.

A broken shop on demand: ``invent_pages`` pages of ``productVariants``, each
one new variant made up for it under a fresh cursor and "more follow", none of
them in the shop (nor its count) — as a shop inventing items for ever would.

What it does not do: validate a document against the full schema or shape the
answer by the selection set (it answers the fields the connector asks for).
Arguments are read from ``variables`` (the connector sends no inline
arguments); a document it does not understand is a GraphQL error.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.channels.emulators.base import EmulatorServer, drop

API_VERSION = "2026-01"
REASONS = frozenset(
    {
        "correction", "cycle_count_available", "damaged", "movement_created", "movement_updated",
        "movement_received", "movement_canceled", "other", "promotion", "quality_control", "received",
        "reservation_created", "reservation_deleted", "reservation_updated", "restock", "safety_stock", "shrinkage",
    }
)
QUANTITIES_MAX = 250
QUANTITY_MAX = 1_000_000_000
MUTATION_COST = 10
SINGLE_QUERY_MAX = 1000  # the most one query may ask for, whatever the plan's bucket
DOC_URL = "https://shopify.dev/api/usage/rate-limits"
ROOT_RE = re.compile(r"\b(inventorySetQuantities|productVariants|nodes|orders|order)\s*\(")
COUNT_RE = re.compile(r"\bproductVariantsCount\s*(\(([^)]*)\))?")
COUNT_LIMIT_DEFAULT = 10_000
IDEMPOTENT_RE = re.compile(r"@idempotent\s*\(\s*key\s*:\s*(\$\w+|\"[^\"]*\")\s*\)")


FIRST_RE = re.compile(r"\b(fulfillmentOrders|lineItems)\s*\(\s*first\s*:\s*(\d+)")
ORDER_NODES_RE = re.compile(r"\.\.\.\s*on\s+Order\b")


def orders_cost(document: str, variables: dict[str, Any]) -> int:
    """The requested cost of ``orders(first:)`` as Shopify counts it: 2 for the connection and, per order, 1 for the
    order, 1 for its ``retailLocation``, and its ``fulfillmentOrders(first:)`` connection (2, and per fulfilment
    order 1, 1 for ``assignedLocation``, 1 for its ``location`` and its ``lineItems(first:)``: 2 + 1 a line)."""
    first = _arg(document, "first", variables)
    firsts = {m.group(1): int(m.group(2)) for m in FIRST_RE.finditer(document)}
    per_fo = 3 + 2 + firsts.get("lineItems", 0)
    per_order = 2 + 2 + firsts.get("fulfillmentOrders", 0) * per_fo
    return 2 + (first if isinstance(first, int) else 0) * per_order


def order_nodes_cost(document: str, variables: dict[str, Any]) -> int:
    """The requested cost of ``nodes(ids:) { ... on Order { lineItems(first:) { nodes { currentQuantity variant {
    inventoryItem { id } } } } } }`` as Shopify counts it: 1 for the list and, per id, 1 for the order and its
    ``lineItems(first:)`` connection (2, and per line 1, 1 for its ``variant``, 1 for the variant's
    ``inventoryItem``)."""
    ids = _arg(document, "ids", variables)
    firsts = {m.group(1): int(m.group(2)) for m in FIRST_RE.finditer(document)}
    per_order = 1 + 2 + firsts.get("lineItems", 0) * 3
    return 1 + (len(ids) if isinstance(ids, list) else 0) * per_order


def _arg(document: str, name: str, variables: dict[str, Any]) -> Any:
    """The value of argument ``name`` in ``document``: a ``$variable`` (looked up) or an int / string literal."""
    m = re.search(rf"\b{name}\s*:\s*(\$\w+|-?\d+|\"[^\"]*\")", document)
    if m is None:
        return None
    raw = m.group(1)
    if raw.startswith("$"):
        return variables.get(raw[1:])
    if raw.startswith('"'):
        return raw[1:-1]
    return int(raw)


@dataclass
class Variant:
    variant_id: str
    item_id: str
    sku: str
    barcode: str = ""
    title: str = ""


@dataclass
class Stats:
    requests: int = 0
    throttled: int = 0
    mutations_applied: int = 0
    replays: int = 0
    cas_misses: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)  # idempotency keys of inventorySetQuantities, in arrival order
    history: list[dict[tuple[str, str], int]] = field(default_factory=list)  # levels set by each applied mutation
    inputs: list[dict[str, Any]] = field(default_factory=list)  # the ``input`` of each applied mutation
    costs: list[tuple[str, int]] = field(default_factory=list)  # (operation, requested cost) of each call costed


class ShopifyEmulator(EmulatorServer):
    def __init__(
        self,
        token: str = "shpat_test_token_0123456789",
        *,
        maximum_available: float = 1000.0,
        restore_rate: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.token = token
        self.maximum_available = maximum_available
        self.restore_rate = restore_rate
        self._clock = clock
        self._bucket = maximum_available
        self._bucket_at = clock()
        self.variants: list[Variant] = []
        self.locations: list[str] = []
        self.levels: dict[tuple[str, str], int] = {}  # (inventory item gid, location gid) -> available
        self.non_mutable: set[str] = set()  # inventory items the API may not adjust (NON_MUTABLE_INVENTORY_ITEM)
        self.invent_pages = 0  # pages of productVariants still to answer with one made-up variant each
        self.invented = 0
        # awaited before an operation (``orders``, ``nodes`` …) is answered, once each: a test moves the hub between
        # two of the connector's reads (an order booked while Shopify answers its orders)
        self.before: dict[str, Callable[[], Awaitable[Any]]] = {}
        self.stats = Stats()
        self._idempotent: dict[str, tuple[str, dict[str, Any]]] = {}
        self._running: set[str] = set()
        self._next_id = 1000
        self.app.router.add_post("/admin/api/{version}/graphql.json", self._graphql)

    @property
    def url(self) -> str:
        return f"{self.base_url}/admin/api/{API_VERSION}/graphql.json"

    # --- the shop's data -------------------------------------------------------------

    def _gid(self, kind: str) -> str:
        self._next_id += 1
        return f"gid://shopify/{kind}/{self._next_id}"

    def add_location(self) -> str:
        gid = self._gid("Location")
        self.locations.append(gid)
        return gid

    def add_variant(
        self, sku: str, *, barcode: str = "", title: str = "", stocked_at: Iterable[str] = (), available: int = 0
    ) -> Variant:
        v = Variant(self._gid("ProductVariant"), self._gid("InventoryItem"), sku, barcode, title or f"Variant {sku}")
        self.variants.append(v)
        for location in stocked_at:
            self.levels[(v.item_id, location)] = available
        return v

    def available(self, item_id: str, location_id: str) -> int | None:
        return self.levels.get((item_id, location_id))

    def drift(self, item_id: str, location_id: str, available: int) -> None:
        """The level moves behind the hub's back (an edit in the Shopify admin, another app)."""
        self.levels[(item_id, location_id)] = available

    def drain(self, points: float) -> None:
        """Another app spent ``points`` of the shop's bucket."""
        self._refill()
        self._bucket = max(0.0, self._bucket - points)

    # --- the throttle ------------------------------------------------------------------

    def _refill(self) -> None:
        now = self._clock()
        self._bucket = min(self.maximum_available, self._bucket + (now - self._bucket_at) * self.restore_rate)
        self._bucket_at = now

    def _cost(self, requested: int, actual: int | None) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": {
                "maximumAvailable": float(self.maximum_available),
                "currentlyAvailable": int(self._bucket),
                "restoreRate": float(self.restore_rate),
            },
        }

    # --- the endpoint --------------------------------------------------------------------

    async def _graphql(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        if request.headers.get("X-Shopify-Access-Token") != self.token:
            return web.json_response(
                {"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}, status=401
            )
        if request.match_info["version"] != API_VERSION:
            return web.json_response({"errors": "Not Found"}, status=404)
        fault = self.faults.next()
        if fault == "drop":
            return await drop(request)
        if fault in ("http_500", "http_503"):
            status = 500 if fault == "http_500" else 503
            return web.json_response({"errors": "Internal Server Error" if status == 500 else "Unavailable"}, status=status)
        if fault == "429":  # the app-wide request limit: 429 with Retry-After (none when retry_after_s is None)
            wait = self.faults.retry_after_s
            headers = {} if wait is None else {"Retry-After": str(wait)}
            return web.json_response({"errors": "Exceeded 2 calls per second for api client."}, status=429, headers=headers)
        try:
            body = json.loads(await request.read())
            document, variables = body["query"], body.get("variables") or {}
            if not isinstance(document, str) or not isinstance(variables, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"errors": {"query": "Required parameter missing or invalid"}}, status=400)
        root = ROOT_RE.search(document)
        if root is None:
            return web.json_response({"errors": [{"message": "this emulator does not know the operation asked for"}]})
        operation = root.group(1)
        if fault == "slow":  # a slow answer: a mutation's key is "in progress" meanwhile
            key_match = IDEMPOTENT_RE.search(document)
            key = None if key_match is None else str(variables.get(key_match.group(1)[1:], key_match.group(1)))
            if key is not None:
                self._running.add(key)
            try:
                await asyncio.sleep(self.faults.slow_s)
            finally:
                self._running.discard(key or "")
        self.stats.by_operation[operation] = self.stats.by_operation.get(operation, 0) + 1
        requested = self._requested_cost(operation, document, variables)
        self.stats.costs.append((operation, requested))
        self._refill()
        max_cost = int(min(SINGLE_QUERY_MAX, self.maximum_available))
        if requested > max_cost:
            return web.json_response(
                {
                    "errors": [
                        {
                            "message": f"Query cost is {requested}, which exceeds the single query max cost limit "
                            f"({max_cost}).",
                            "extensions": {"code": "MAX_COST_EXCEEDED", "cost": requested,
                                           "maxCost": max_cost, "documentation": DOC_URL},
                        }
                    ]
                }
            )
        if fault in ("throttle", "throttle_bare") or requested > self._bucket:
            self.stats.throttled += 1
            cost = {} if fault == "throttle_bare" else {"extensions": {"cost": self._cost(requested, None)}}
            return web.json_response(
                {
                    "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED", "documentation": DOC_URL}}],
                    **cost,
                }
            )
        self._bucket -= requested
        hook = self.before.pop(operation, None)
        if hook is not None:
            await hook()
        if operation == "inventorySetQuantities":
            data, actual = self._set_quantities(document, variables, cas_miss=fault == "cas_miss")
        elif operation == "productVariants":
            data, actual = self._product_variants(document, variables)
        elif operation == "order":
            data, actual = self.order_query(document, variables)
        elif operation == "orders":
            data, actual = self.orders_query(document, variables)
        elif ORDER_NODES_RE.search(document):
            data, actual = self.order_nodes(document, variables)
        else:
            data, actual = self._nodes(document, variables)
        if isinstance(data, web.Response):
            return data
        self._bucket = min(self.maximum_available, self._bucket + requested - actual)
        if fault == "drop_after":
            return await drop(request)
        return web.json_response({"data": data, "extensions": {"cost": self._cost(requested, actual)}})

    def _requested_cost(self, operation: str, document: str, variables: dict[str, Any]) -> int:
        if operation == "inventorySetQuantities":
            return MUTATION_COST
        if operation == "productVariants":
            first = _arg(document, "first", variables)
            counted = 1 if COUNT_RE.search(document) else 0
            return 2 + 2 * (first if isinstance(first, int) else 0) + counted
        if operation == "order":
            first = _arg(document, "first", variables)
            return 2 + (first if isinstance(first, int) else 0)
        if operation == "orders":
            return orders_cost(document, variables)
        if ORDER_NODES_RE.search(document):
            return order_nodes_cost(document, variables)
        ids = _arg(document, "ids", variables)
        return 1 + 2 * (len(ids) if isinstance(ids, list) else 0)

    # --- operations -------------------------------------------------------------------------

    def _set_quantities(
        self, document: str, variables: dict[str, Any], *, cas_miss: bool
    ) -> tuple[dict[str, Any] | web.Response, int]:
        given = _arg(document, "input", variables)
        if not isinstance(given, dict) or not isinstance(given.get("quantities"), list):
            return web.json_response({"errors": [{"message": "Variable $input of type InventorySetQuantitiesInput! was provided invalid value"}]}), MUTATION_COST
        quantities = given["quantities"]
        if len(quantities) > QUANTITIES_MAX:
            return web.json_response(
                {"errors": [{"message": f"The input array size of {len(quantities)} is greater than the maximum allowed of {QUANTITIES_MAX}.",
                             "extensions": {"code": "MAX_INPUT_SIZE_EXCEEDED"}}]}
            ), MUTATION_COST
        key_match = IDEMPOTENT_RE.search(document)
        key: str | None = None
        if key_match is not None:
            raw = key_match.group(1)
            key = str(variables.get(raw[1:])) if raw.startswith("$") else raw[1:-1]
            self.stats.keys.append(key)
        fingerprint = json.dumps(given, sort_keys=True)
        if key is not None:
            if key in self._running:
                return self._payload(None, [self._error("IDEMPOTENCY_CONCURRENT_REQUEST", None, "This request is currently in progress, please try again.")]), MUTATION_COST
            if key in self._idempotent:
                seen_fingerprint, seen_payload = self._idempotent[key]
                if seen_fingerprint != fingerprint:
                    return self._payload(None, [self._error("IDEMPOTENCY_KEY_PARAMETER_MISMATCH", None, "The same idempotency key cannot be used with different operation parameters.")]), MUTATION_COST
                self.stats.replays += 1
                return copy.deepcopy(seen_payload), MUTATION_COST
        if cas_miss and quantities and isinstance(quantities[0], dict):
            pair = (str(quantities[0].get("inventoryItemId")), str(quantities[0].get("locationId")))
            if pair in self.levels:
                self.levels[pair] = max(0, self.levels[pair] - 1)  # a sale at Shopify, just before this call
        errors = self._check(given)
        if errors:
            if any(e["code"] in ("CHANGE_FROM_QUANTITY_STALE", "COMPARE_QUANTITY_STALE") for e in errors):
                self.stats.cas_misses += 1
            return self._payload(None, errors), MUTATION_COST
        changes = []
        applied: dict[tuple[str, str], int] = {}
        for q in quantities:
            pair = (q["inventoryItemId"], q["locationId"])
            before = self.levels[pair]
            self.levels[pair] = q["quantity"]
            applied[pair] = q["quantity"]
            sku = next((v.sku for v in self.variants if v.item_id == q["inventoryItemId"]), "")
            changes.append({"name": given["name"], "delta": q["quantity"] - before, "quantityAfterChange": None,
                            "item": {"id": q["inventoryItemId"], "sku": sku or None},
                            "location": {"id": q["locationId"]}})
        self.stats.mutations_applied += 1
        self.stats.history.append(applied)
        self.stats.inputs.append(copy.deepcopy(given))
        group = {
            "createdAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reason": given["reason"],
            "referenceDocumentUri": given.get("referenceDocumentUri"),
            "changes": changes,
        }
        payload = self._payload(group, [])
        if key is not None:
            self._idempotent[key] = (fingerprint, copy.deepcopy(payload))
        return payload, MUTATION_COST

    def _check(self, given: dict[str, Any]) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        if given.get("name") not in ("available", "on_hand"):
            return [self._error("INVALID_NAME", ["input", "name"], "The quantity name must be either 'available' or 'on_hand'.")]
        if given.get("reason") not in REASONS:
            return [self._error("INVALID_REASON", ["input", "reason"], "The specified reason is invalid.")]
        ignore = bool(given.get("ignoreCompareQuantity"))
        items = {v.item_id for v in self.variants}
        for i, q in enumerate(given["quantities"]):
            at = ["input", "quantities", str(i)]
            if not isinstance(q, dict) or not isinstance(q.get("quantity"), int):
                errors.append(self._error("INVALID_QUANTITY_NEGATIVE", [*at, "quantity"], "The quantity must be a whole number."))
                continue
            item, location, quantity = q.get("inventoryItemId"), q.get("locationId"), q["quantity"]
            if item not in items:
                errors.append(self._error("INVALID_INVENTORY_ITEM", [*at, "inventoryItemId"], "The specified inventory item could not be found."))
                continue
            if location not in self.locations:
                errors.append(self._error("INVALID_LOCATION", [*at, "locationId"], "The specified location could not be found."))
                continue
            if item in self.non_mutable:
                errors.append(self._error("NON_MUTABLE_INVENTORY_ITEM", [*at, "inventoryItemId"], "The specified inventory item is not allowed to be adjusted via API."))
                continue
            if (item, location) not in self.levels:
                errors.append(self._error("ITEM_NOT_STOCKED_AT_LOCATION", [*at, "locationId"], "The specified inventory item is not stocked at the location."))
                continue
            if quantity < 0:
                errors.append(self._error("INVALID_QUANTITY_NEGATIVE", [*at, "quantity"], "The quantity can't be negative."))
                continue
            if quantity > QUANTITY_MAX:
                errors.append(self._error("INVALID_QUANTITY_TOO_HIGH", [*at, "quantity"], "The total quantity can't be higher than 1,000,000,000."))
                continue
            current = self.levels[(item, location)]
            if "changeFromQuantity" in q:
                if q["changeFromQuantity"] is not None and q["changeFromQuantity"] != current:
                    errors.append(self._error("CHANGE_FROM_QUANTITY_STALE", [*at, "changeFromQuantity"], "The changeFromQuantity value does not match persisted value."))
            elif not ignore:
                if "compareQuantity" not in q:
                    errors.append(self._error("COMPARE_QUANTITY_REQUIRED", [*at, "compareQuantity"], "The compareQuantity argument must be given to each quantity or ignored using ignoreCompareQuantity."))
                elif q["compareQuantity"] != current:
                    errors.append(self._error("COMPARE_QUANTITY_STALE", [*at, "compareQuantity"], "The compareQuantity value does not match persisted value."))
        return errors

    @staticmethod
    def _error(code: str, field_path: list[str] | None, message: str) -> dict[str, Any]:
        return {"code": code, "field": field_path, "message": message}

    @staticmethod
    def _payload(group: dict[str, Any] | None, errors: list[dict[str, Any]]) -> dict[str, Any]:
        return {"inventorySetQuantities": {"inventoryAdjustmentGroup": group, "userErrors": errors}}

    def _product_variants(self, document: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        answer, cost = self._variants_page(document, variables)
        count = COUNT_RE.search(document)
        if count is not None:
            answer["productVariantsCount"] = self._variants_count(count.group(2) or "", variables)
            cost += 1
        return answer, cost

    def _variants_count(self, arguments: str, variables: dict[str, Any]) -> dict[str, Any]:
        """``productVariantsCount(limit:)``: the shop's variants, at most ``limit`` (``AT_LEAST`` when cut)."""
        m = re.search(r"\blimit\s*:\s*(null|\d+|\$\w+)", arguments)
        raw = None if m is None else m.group(1)
        if raw is None:
            limit: int | None = COUNT_LIMIT_DEFAULT
        elif raw == "null":
            limit = None
        elif raw.startswith("$"):
            limit = variables.get(raw[1:], COUNT_LIMIT_DEFAULT)
        else:
            limit = int(raw)
        n = len(self.variants)
        if limit is not None and n > limit:
            return {"count": limit, "precision": "AT_LEAST"}
        return {"count": n, "precision": "EXACT"}

    def _variants_page(self, document: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        first = _arg(document, "first", variables)
        after = _arg(document, "after", variables)
        if self.invent_pages > 0:  # a broken shop: one made-up variant, a fresh cursor, "more follow"
            self.invent_pages -= 1
            self.invented += 1
            v = Variant(self._gid("ProductVariant"), self._gid("InventoryItem"), f"INVENTED-{self.invented}")
            node = {
                "id": v.variant_id,
                "sku": v.sku,
                "barcode": None,
                "title": v.title,
                "inventoryItem": {"id": v.item_id},
            }
            info = {"hasNextPage": True, "endCursor": f"invented:{self.invented}:{len(self.variants)}"}
            return {"productVariants": {"nodes": [node], "pageInfo": info}}, 4
        first = first if isinstance(first, int) and 0 < first <= 250 else 50
        start = int(after.rsplit(":", 1)[1]) if isinstance(after, str) and ":" in after else 0
        page = self.variants[start : start + first]
        nodes = [
            {"id": v.variant_id, "sku": v.sku or None, "barcode": v.barcode or None, "title": v.title,
             "inventoryItem": {"id": v.item_id}}
            for v in page
        ]
        end = start + len(page)
        info = {"hasNextPage": end < len(self.variants), "endCursor": f"cursor:{end}" if page else None}
        return {"productVariants": {"nodes": nodes, "pageInfo": info}}, 2 + 2 * len(page)

    def order_query(self, document: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """``order(id:)``: this emulator keeps no orders (tests.channels.emulators.shopify_orders does)."""
        return {"order": None}, 1

    def orders_query(self, document: str, variables: dict[str, Any]) -> tuple[dict[str, Any] | web.Response, int]:
        """``orders(first:, query:)``: this emulator keeps no orders (tests.channels.emulators.shopify_orders does)."""
        return {"orders": {"nodes": [], "pageInfo": {"hasNextPage": False, "endCursor": None}}}, 2

    def order_nodes(self, document: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """``nodes(ids:)`` of orders: this emulator keeps no orders (tests.channels.emulators.shopify_orders does)."""
        ids = _arg(document, "ids", variables)
        return {"nodes": [None for _ in ids] if isinstance(ids, list) else []}, 1

    def _nodes(self, document: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        ids = _arg(document, "ids", variables)
        location = _arg(document, "locationId", variables)
        ids = ids if isinstance(ids, list) else []
        items = {v.item_id for v in self.variants}
        nodes: list[dict[str, Any] | None] = []
        for gid in ids:
            if gid not in items:
                nodes.append(None)
                continue
            level = self.levels.get((gid, location))
            nodes.append(
                {
                    "id": gid,
                    "inventoryLevel": None
                    if level is None
                    else {"quantities": [{"name": "available", "quantity": level}]},
                }
            )
        return {"nodes": nodes}, 1 + 2 * len(ids)
