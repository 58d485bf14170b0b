"""A Shopify shop's orders and its signed webhooks, beside the GraphQL Admin API stand-in (API version 2026-01).

Built from Shopify's public reference for that version:

* Order webhooks carry the REST ``Order`` resource: ``id`` (a number),
  ``admin_graphql_api_id``, ``created_at`` / ``updated_at`` / ``cancelled_at``
  / ``closed_at`` (ISO 8601 with the shop's offset), ``location_id`` (the POS
  location, null for online orders), ``line_items`` (``id``, ``variant_id``,
  ``sku``, ``quantity`` as ordered, ``current_quantity``,
  ``fulfillable_quantity``, ``fulfillment_status``, ``gift_card``),
  ``fulfillments`` (``id``, ``order_id``, ``location_id``, ``status`` —
  success, cancelled …, ``created_at``, ``updated_at``, ``line_items`` with
  the quantity of that fulfilment) and ``refunds`` (``id``, ``order_id``,
  ``created_at``, ``refund_line_items`` with ``id``, ``line_item_id``,
  ``quantity``, ``restock_type`` — no_restock, cancel, return — and
  ``location_id``). A local pickup is a shipping line whose ``code`` is the
  location's name: the REST order names no pickup location id; GraphQL
  ``order(id:) { fulfillmentOrders { assignedLocation deliveryMethod } }``
  does (``order_query``).
* ``orders(first:, after:, query:, sortKey: CREATED_AT)`` (GraphQL Admin API
  2026-01) lists the shop's orders oldest first, filtered by ``created_at:>=``
  (``orders_query``): ``id``, ``createdAt``, ``cancelledAt``,
  ``retailLocation``, ``fulfillmentOrders { assignedLocation lineItems {
  inventoryItemId totalQuantity } }``, costed as Shopify counts a connection.
  Creating an order here does not lower ``available``: a test lowers it
  (``drift``) as Shopify does when it takes the order. An order Shopify has
  not routed yet has no fulfilment orders (``create_order(routed=False)``,
  then ``route``): its lines are read by ``nodes(ids:) { ... on Order {
  lineItems(first:) { nodes { currentQuantity variant { inventoryItem { id }
  } } } } }`` (``order_nodes``).
* ``fulfillments/create`` carries the ``Fulfillment`` resource and
  ``refunds/create`` the ``Refund`` resource.
* Every delivery is a POST of the JSON body with ``X-Shopify-Topic``,
  ``X-Shopify-Hmac-Sha256`` (base64 HMAC-SHA256 of the raw body keyed with
  the app's client secret), ``X-Shopify-Shop-Domain``, ``X-Shopify-API-Version``,
  ``X-Shopify-Webhook-Id`` (the same on a retry of one delivery),
  ``X-Shopify-Event-Id`` and ``X-Shopify-Triggered-At``. A delivery may come
  twice, late or out of order: tests resend ``Delivery`` objects as they like.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from tests.channels.emulators.shopify import (
    API_VERSION,
    FIRST_RE,
    ShopifyEmulator,
    Variant,
    _arg,
    orders_cost,
)
from tests.channels.emulators.signing import SHOPIFY_HEADER, shopify_signature

ORDER_GID = "gid://shopify/Order/"
CREATED_SINCE_RE = re.compile(r"\bcreated_at:>=\s*'?([0-9T:.+\-Z]+)'?")


def _number(gid: str) -> int:
    return int(gid.rsplit("/", 1)[1])


def _utc(text: str) -> str:
    """A time of the REST payload (the shop's offset) as GraphQL's ``DateTime``: UTC, to the second, ``Z``."""
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery as Shopify sends it; sending it again is Shopify's retry."""

    topic: str
    body: bytes
    headers: dict[str, str] = field(hash=False)

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


class ShopifyOrdersEmulator(ShopifyEmulator):
    """The GraphQL stand-in plus a shop's orders, and webhooks signed like Shopify's."""

    def __init__(
        self,
        *args: Any,
        webhook_secret: str = "shpss_app_client_secret_0123",
        shop: str = "shelfsync-test.myshopify.com",
        now: Callable[[], datetime] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.webhook_secret = webhook_secret
        self.shop = shop
        self._now = now or (lambda: datetime.now(UTC))
        self.orders: dict[int, dict[str, Any]] = {}
        self.fulfilment_orders: dict[int, list[tuple[str, str]]] = {}  # order id -> [(location gid, method)]
        self.location_names: dict[str, str] = {}
        self.fail_orders = False  # the orders query answered as to an app without read_orders
        self._routes: dict[int, tuple[str, str]] = {}  # order id -> where ``route`` assigns it
        self._number = 1000

    # --- the shop's orders ----------------------------------------------------------

    def _id(self) -> int:
        self._next_id += 1
        return 5_940_000_000_000 + self._next_id

    def _time(self, shift_s: float = 0.0) -> str:
        return (self._now() + timedelta(seconds=shift_s)).astimezone().isoformat(timespec="seconds")

    def create_order(
        self,
        lines: Sequence[tuple[Variant | None, int]],
        *,
        pickup_at: str | None = None,
        pos_location: str | None = None,
        ship_from: str | None = None,
        routed: bool = True,
    ) -> dict[str, Any]:
        """A new order: ``pickup_at`` a location gid (local pickup), ``pos_location`` one for a POS order, else
        shipped (from ``ship_from`` or the first location). A line with no variant is a custom item. Not
        ``routed``: Shopify has made no fulfilment orders for it yet (``route`` makes them)."""
        order_id = self._id()
        self._number += 1
        now = self._time()
        items = []
        for variant, quantity in lines:
            line_id = self._id()
            items.append(
                {
                    "id": line_id, "admin_graphql_api_id": f"gid://shopify/LineItem/{line_id}",
                    "variant_id": _number(variant.variant_id) if variant else None,
                    "product_id": _number(variant.variant_id) + 1 if variant else None,
                    "sku": variant.sku if variant else "", "title": variant.title if variant else "Custom item",
                    "name": variant.title if variant else "Custom item", "quantity": quantity,
                    "current_quantity": quantity, "fulfillable_quantity": quantity, "fulfillment_status": None,
                    "gift_card": False, "requires_shipping": pickup_at is None, "price": "10.00",
                }
            )  # fmt: skip
        shipping = []
        if pickup_at is not None:
            name = self.location_names.get(pickup_at, f"Store {_number(pickup_at)}")
            shipping.append({"id": self._id(), "code": name, "title": name, "source": "shopify", "price": "0.00",
                             "carrier_identifier": uuid.uuid4().hex, "delivery_category": None})  # fmt: skip
        order = {
            "id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}", "name": f"#{self._number}",
            "order_number": self._number, "created_at": now, "updated_at": now, "processed_at": now,
            "cancelled_at": None, "cancel_reason": None, "closed_at": None,
            "location_id": _number(pos_location) if pos_location else None,
            "financial_status": "paid", "fulfillment_status": None, "currency": "USD", "test": False,
            "line_items": items, "fulfillments": [], "refunds": [], "shipping_lines": shipping,
        }  # fmt: skip
        self.orders[order_id] = order
        assigned = pickup_at or pos_location or ship_from or (self.locations[0] if self.locations else "")
        self._routes[order_id] = (assigned, "PICK_UP" if pickup_at else "SHIPPING")
        self.fulfilment_orders[order_id] = []
        if routed:
            self.route(order_id)
        return copy.deepcopy(order)

    def route(self, order_id: int) -> None:
        """Shopify makes the order's fulfilment order, at the location it was placed for."""
        self.fulfilment_orders[order_id] = [self._routes[order_id]]

    def _touch(self, order: dict[str, Any], shift_s: float) -> str:
        when = self._time(shift_s)
        order["updated_at"] = when
        for li in order["line_items"]:
            done = sum(fl["quantity"] for f in order["fulfillments"] if f["status"] == "success"
                       for fl in f["line_items"] if fl["id"] == li["id"])  # fmt: skip
            removed = li["quantity"] - li["current_quantity"]
            li["fulfillable_quantity"] = 0 if order["cancelled_at"] else max(0, li["quantity"] - done - removed)
            li["fulfillment_status"] = None if done == 0 else "fulfilled" if li["fulfillable_quantity"] == 0 else "partial"
        statuses = {li["fulfillment_status"] for li in order["line_items"]}
        order["fulfillment_status"] = (
            "fulfilled" if statuses == {"fulfilled"} else "partial" if statuses & {"fulfilled", "partial"} else None
        )
        return when

    def fulfil(
        self, order_id: int, location: str, quantities: dict[int, int] | None = None, *, shift_s: float = 1.0
    ) -> dict[str, Any]:
        """A fulfilment of ``quantities`` (line id -> units; default: all that is fulfillable) from ``location``."""
        order = self.orders[order_id]
        wanted = quantities or {li["id"]: li["fulfillable_quantity"] for li in order["line_items"]}
        when = self._time(shift_s)
        fid = self._id()
        lines = []
        for li in order["line_items"]:
            n = wanted.get(li["id"], 0)
            if n > li["fulfillable_quantity"]:
                raise ValueError(f"line {li['id']} has {li['fulfillable_quantity']} to fulfil, not {n}")
            if n:
                lines.append({"id": li["id"], "variant_id": li["variant_id"], "sku": li["sku"], "quantity": n,
                              "title": li["title"], "fulfillment_status": "fulfilled"})  # fmt: skip
        fulfilment = {
            "id": fid, "admin_graphql_api_id": f"gid://shopify/Fulfillment/{fid}", "order_id": order_id,
            "location_id": _number(location), "status": "success", "created_at": when, "updated_at": when,
            "name": f"{order['name']}.{len(order['fulfillments']) + 1}", "service": "manual", "line_items": lines,
        }  # fmt: skip
        order["fulfillments"].append(fulfilment)
        self._touch(order, shift_s)
        return copy.deepcopy(fulfilment)

    def cancel_fulfilment(self, order_id: int, fulfilment_id: int, *, shift_s: float = 2.0) -> dict[str, Any]:
        order = self.orders[order_id]
        (f,) = [f for f in order["fulfillments"] if f["id"] == fulfilment_id]
        f["status"] = "cancelled"
        f["updated_at"] = self._time(shift_s)
        self._touch(order, shift_s)
        return copy.deepcopy(f)

    def refund(
        self,
        order_id: int,
        lines: Sequence[tuple[int, int, str, str | None]],
        *,
        shift_s: float = 3.0,
        fulfilled_units: bool = False,
    ) -> dict[str, Any]:
        """A refund of (line id, units, restock_type, location gid or None) lines.

        ``cancel`` refunds unfulfilled units and ``return`` fulfilled ones; ``no_restock`` refunds unfulfilled
        units, or, with ``fulfilled_units``, fulfilled ones (money back, nothing comes back). Refunded unfulfilled
        units leave the order: its line's ``current_quantity`` drops (Shopify refuses more than are fulfillable).
        """
        order = self.orders[order_id]
        rid = self._id()
        by_id = {li["id"]: li for li in order["line_items"]}
        refund_lines = []
        for line_id, n, restock, location in lines:
            li = by_id[line_id]
            if restock == "cancel" or (restock == "no_restock" and not fulfilled_units):
                if n > li["fulfillable_quantity"]:
                    raise ValueError(f"line {line_id} has {li['fulfillable_quantity']} unfulfilled units, not {n}")
                li["current_quantity"] -= n  # unfulfilled units leave the order
                li["fulfillable_quantity"] -= n
            refund_lines.append({"id": self._id(), "line_item_id": line_id, "quantity": n, "restock_type": restock,
                                 "location_id": _number(location) if location and restock != "no_restock" else None,
                                 "subtotal": 10.0 * n, "total_tax": 0.0, "line_item": copy.deepcopy(li)})  # fmt: skip
        refund = {"id": rid, "admin_graphql_api_id": f"gid://shopify/Refund/{rid}", "order_id": order_id,
                  "created_at": self._time(shift_s), "processed_at": self._time(shift_s), "note": None,
                  "restock": any(r[2] != "no_restock" for r in lines), "refund_line_items": refund_lines,
                  "transactions": []}  # fmt: skip
        order["refunds"].append(refund)
        self._touch(order, shift_s)
        return copy.deepcopy(refund)

    def cancel(self, order_id: int, *, restock: bool = True, shift_s: float = 4.0) -> dict[str, Any]:
        """Cancel the order (Shopify refuses this once anything is fulfilled); with ``restock`` its refund
        restocks the unfulfilled units (``restock_type: cancel``) at the assigned location."""
        order = self.orders[order_id]
        if any(f["status"] == "success" for f in order["fulfillments"]):
            raise ValueError("Shopify cannot cancel an order with fulfilments")
        assigned, _ = self._routes[order_id]
        lines = [(li["id"], li["fulfillable_quantity"], "cancel" if restock else "no_restock", assigned)
                 for li in order["line_items"] if li["fulfillable_quantity"]]  # fmt: skip
        if lines:
            self.refund(order_id, lines, shift_s=shift_s)
        order["cancelled_at"] = self._time(shift_s)
        order["cancel_reason"] = "customer"
        order["closed_at"] = order["cancelled_at"]
        self._touch(order, shift_s)
        return copy.deepcopy(order)

    def close_order(self, order_id: int, *, shift_s: float = 5.0) -> dict[str, Any]:
        """Close (archive) the order: it leaves the open list; what it still owes can still be fulfilled."""
        order = self.orders[order_id]
        order["closed_at"] = self._time(shift_s)
        self._touch(order, shift_s)
        return copy.deepcopy(order)

    def reopen(self, order_id: int, *, shift_s: float = 6.0) -> dict[str, Any]:
        """Unarchive a closed order."""
        order = self.orders[order_id]
        order["closed_at"] = None
        self._touch(order, shift_s)
        return copy.deepcopy(order)

    def remove_units(self, order_id: int, line_id: int, n: int, *, shift_s: float = 3.0) -> dict[str, Any]:
        """An order edit removing ``n`` unfulfilled units of a line (``orderEditSetQuantity``), without a refund."""
        order = self.orders[order_id]
        (li,) = [li for li in order["line_items"] if li["id"] == line_id]
        if n > li["fulfillable_quantity"]:
            raise ValueError(f"line {line_id} has {li['fulfillable_quantity']} unfulfilled units, not {n}")
        li["current_quantity"] -= n
        self._touch(order, shift_s)
        return copy.deepcopy(order)

    def order_query(self, document: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        gid = _arg(document, "id", variables)
        order_id = _number(gid) if isinstance(gid, str) and gid.startswith("gid://shopify/Order/") else None
        if order_id not in self.orders:
            return {"order": None}, 1
        nodes = [
            {"assignedLocation": {"location": {"id": location}}, "deliveryMethod": {"methodType": method}}
            for location, method in self.fulfilment_orders[order_id]
        ]
        return {"order": {"fulfillmentOrders": {"nodes": nodes}}}, 2 + len(nodes)

    def orders_query(self, document: str, variables: dict[str, Any]) -> tuple[dict[str, Any] | web.Response, int]:
        """``orders(first:, after:, query:, sortKey: CREATED_AT)`` of 2026-01: the shop's orders (all of them, open,
        closed and cancelled: the GraphQL list has no default status filter) oldest first, ``query`` read for its
        ``created_at:>=<time>`` filter only (Shopify's search syntax, the time quoted or not). Each order answers
        ``id``, ``createdAt`` and ``cancelledAt`` (UTC, to the second), ``retailLocation { id }`` (a POS order's
        location, null online) and ``fulfillmentOrders(first:)``: per fulfilment order its ``assignedLocation {
        location { id } }`` and ``lineItems(first:)`` (``inventoryItemId``, ``totalQuantity``: the line's units
        still in the order), each connection with ``pageInfo { hasNextPage }``. ``fail_orders``: answered as to an
        app without the ``read_orders`` scope."""
        if self.fail_orders:
            denied = {"message": "Access denied for orders field. Required access: `read_orders` access scope.",
                      "extensions": {"code": "ACCESS_DENIED"}, "path": ["orders"]}  # fmt: skip
            self._bucket = min(self.maximum_available, self._bucket + orders_cost(document, variables) - 1)  # refunded
            return web.json_response({"errors": [denied], "data": None}), 1
        first = _arg(document, "first", variables)
        first = first if isinstance(first, int) else 0
        after = variables.get("after")
        search = str(variables.get("query") or "")
        since = CREATED_SINCE_RE.search(search)
        since_at = datetime.fromisoformat(since.group(1)) if since else None
        firsts = {m.group(1): int(m.group(2)) for m in FIRST_RE.finditer(document)}
        fo_first, li_first = firsts.get("fulfillmentOrders", 0), firsts.get("lineItems", 0)
        items = {_number(v.variant_id): v.item_id for v in self.variants}
        def created(o: dict[str, Any]) -> datetime:
            return datetime.fromisoformat(o["created_at"])

        listed = sorted((o for o in self.orders.values() if since_at is None or created(o) >= since_at), key=created)
        start = int(after.split(":", 1)[1]) if isinstance(after, str) and after.startswith("orders:") else 0
        page = listed[start : start + first]
        nodes, actual = [], 2
        for o in page:
            fos = self.fulfilment_orders.get(o["id"], [])
            fo_nodes = []
            for location, _method in fos[:fo_first]:
                lines = [{"inventoryItemId": items.get(li["variant_id"]), "totalQuantity": li["current_quantity"]}
                         for li in o["line_items"] if li["variant_id"] is not None]  # fmt: skip
                fo_nodes.append({"assignedLocation": {"location": {"id": location}},
                                 "lineItems": {"nodes": lines[:li_first],
                                               "pageInfo": {"hasNextPage": len(lines) > li_first}}})  # fmt: skip
                actual += 5 + len(lines[:li_first])
            actual += 4
            pos = o.get("location_id")
            nodes.append({
                "id": o["admin_graphql_api_id"], "createdAt": _utc(o["created_at"]),
                "cancelledAt": _utc(o["cancelled_at"]) if o["cancelled_at"] else None,
                "retailLocation": {"id": f"gid://shopify/Location/{pos}"} if pos else None,
                "fulfillmentOrders": {"nodes": fo_nodes, "pageInfo": {"hasNextPage": len(fos) > fo_first}},
            })  # fmt: skip
        end = start + len(page)
        info = {"hasNextPage": end < len(listed), "endCursor": f"orders:{end}" if page else None}
        return {"orders": {"nodes": nodes, "pageInfo": info}}, actual

    def order_nodes(self, document: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """``nodes(ids:) { ... on Order { id lineItems(first:) { nodes { currentQuantity variant { inventoryItem { id }
        } } pageInfo { hasNextPage } } } }`` of 2026-01: per id an order (null for one the shop does not have) with its
        first line items (``currentQuantity``: the line's units still in the order; ``variant`` null for a custom
        item)."""
        ids = _arg(document, "ids", variables)
        li_first = {m.group(1): int(m.group(2)) for m in FIRST_RE.finditer(document)}.get("lineItems", 0)
        items = {_number(v.variant_id): v.item_id for v in self.variants}
        nodes: list[dict[str, Any] | None] = []
        actual = 1
        for gid in ids if isinstance(ids, list) else []:
            order = self.orders.get(_number(gid)) if isinstance(gid, str) and gid.startswith(ORDER_GID) else None
            if order is None:
                nodes.append(None)
                continue
            lines = [
                {"currentQuantity": li["current_quantity"],
                 "variant": None if li["variant_id"] is None else {"inventoryItem": {"id": items.get(li["variant_id"])}}}
                for li in order["line_items"]
            ]  # fmt: skip
            nodes.append({"id": gid, "lineItems": {"nodes": lines[:li_first],
                                                   "pageInfo": {"hasNextPage": len(lines) > li_first}}})  # fmt: skip
            actual += 3 + 3 * len(lines[:li_first])
        return {"nodes": nodes}, actual

    # --- webhooks ----------------------------------------------------------------------

    def delivery(self, topic: str, payload: dict[str, Any], *, secret: str | None = None) -> Delivery:
        """A signed delivery of ``payload`` (an order, fulfilment or refund as returned above) for ``topic``."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            SHOPIFY_HEADER: shopify_signature(secret or self.webhook_secret, body),
            "X-Shopify-Shop-Domain": self.shop,
            "X-Shopify-API-Version": API_VERSION,
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Event-Id": str(uuid.uuid4()),
            "X-Shopify-Triggered-At": datetime.now(UTC).isoformat(),
            "User-Agent": "Shopify-Captain-Hook",
        }
        return Delivery(topic, body, headers)

    def order_delivery(self, topic: str, order_id: int) -> Delivery:
        return self.delivery(topic, copy.deepcopy(self.orders[order_id]))

    async def deliver(self, url: str, delivery: Delivery, timeout_s: float = 10.0) -> tuple[int, Any]:
        """POST one delivery to the subscription's address; the answer's status and JSON body."""
        async with aiohttp.ClientSession(trust_env=False) as session, session.post(
            url, data=delivery.body, headers=delivery.headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text
