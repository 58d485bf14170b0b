"""A Square seller's orders, the Orders API's batch-retrieve and signed order webhooks (``Square-Version: 2024-11-20``).

Built from Square's public reference for that version:

* ``POST /v2/orders/batch-retrieve`` with ``location_id`` and ``order_ids``
  (at most 100) answers ``{"orders": [Order]}``; unknown ids are left out.
  An ``Order`` has ``id``, ``location_id``, ``state`` (OPEN, COMPLETED,
  CANCELED, DRAFT), ``version``, ``created_at`` / ``updated_at`` /
  ``closed_at`` (RFC 3339, ``closed_at`` once terminal), ``line_items``
  (``uid``, ``catalog_object_id``, ``quantity`` as a decimal string, ``name``)
  and ``fulfillments`` (``uid``, ``type`` PICKUP …, ``state`` PROPOSED,
  RESERVED, PREPARED, COMPLETED, CANCELED, FAILED, ``line_item_application``
  ALL or ENTRY_LIST with ``entries``, ``pickup_details`` with ``placed_at``,
  ``picked_up_at``, ``canceled_at``); an itemized refund is an order of its own
  whose ``returns`` list ``return_line_items`` (``source_line_item_uid``,
  ``catalog_object_id``, ``quantity``). UpdateOrder changes an OPEN order (a
  line's quantity, say) and bumps its ``version``. An order paid at a register
  lists its ``tenders`` (``id``, the same as its ``payment_id``: the Payment's;
  ``transaction_id``: the Transaction's, which is the order's own ``id``), and
  each sale it makes in the inventory (``IN_STOCK`` to ``SOLD``) carries that
  ``transaction_id``.
* Webhooks ``order.created``, ``order.updated`` and ``order.fulfillment.updated``:
  ``{"merchant_id", "type", "event_id", "created_at", "data": {"type", "id",
  "object": {"order_created" | "order_updated" | "order_fulfillment_updated":
  {"order_id", "version", "location_id", "state", "created_at", "updated_at"
  …}}}}`` — the order's id and state, never its lines. The header
  ``x-square-hmacsha256-signature`` is base64 of HMAC-SHA256, keyed with the
  subscription's signature key, of the notification URL followed by the body.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web

from tests.channels.emulators.signing import square_webhook_headers
from tests.channels.emulators.square import SquareEmulator, _error

ORDER_IDS_MAX = 100


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class SquareOrdersEmulator(SquareEmulator):
    """The Square stand-in plus orders, the Orders API and signed order webhooks."""

    def __init__(self, *args: Any, signature_key: str = "sq-signature-key-0123", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signature_key = signature_key
        self.merchant_id = "ML0SHELFSYNC"
        self.orders: dict[str, dict[str, Any]] = {}
        self.app.router.add_post("/v2/orders/batch-retrieve", self._guarded(self._batch_retrieve_orders))
        self._clock_s = 0.0

    def _stamp(self, shift_s: float = 0.0) -> str:
        return _rfc3339(datetime.now(UTC) + timedelta(seconds=shift_s))

    def create_order(
        self, location_id: str, lines: Sequence[tuple[str | None, int | str]], *, pickup: bool = True
    ) -> dict[str, Any]:
        order_id = uuid.uuid4().hex[:24].upper()
        now = self._stamp()
        items = [
            {"uid": uuid.uuid4().hex[:22], "catalog_object_id": variation, "catalog_version": 1,
             "quantity": str(quantity), "name": self.variations[variation]["name"] if variation else "Custom amount",
             "base_price_money": {"amount": 1000, "currency": "USD"}}
            for variation, quantity in lines
        ]  # fmt: skip
        for item in items:
            if item["catalog_object_id"] is None:
                del item["catalog_object_id"], item["catalog_version"]
        fulfillments = (
            [{"uid": uuid.uuid4().hex[:22], "type": "PICKUP", "state": "PROPOSED", "line_item_application": "ALL",
              "pickup_details": {"recipient": {"display_name": "Jane Doe"}, "schedule_type": "ASAP", "placed_at": now}}]
            if pickup else []
        )  # fmt: skip
        order = {"id": order_id, "location_id": location_id, "state": "OPEN", "version": 1, "created_at": now,
                 "updated_at": now, "line_items": items, "fulfillments": fulfillments,
                 "source": {"name": "Square Online"}}  # fmt: skip
        self.orders[order_id] = order
        return copy.deepcopy(order)

    def _bump(self, order: dict[str, Any], shift_s: float) -> str:
        when = self._stamp(shift_s)
        order["version"] += 1
        order["updated_at"] = when
        return when

    def pick_up(self, order_id: str, *, shift_s: float = 1.0) -> dict[str, Any]:
        """The customer picked the order up: its pickup fulfilment COMPLETED, the order COMPLETED."""
        order = self.orders[order_id]
        when = self._bump(order, shift_s)
        for f in order["fulfillments"]:
            f["state"] = "COMPLETED"
            f["pickup_details"]["picked_up_at"] = when
        order["state"], order["closed_at"] = "COMPLETED", when
        return copy.deepcopy(order)

    def sell_at_register(
        self, location_id: str, lines: Sequence[tuple[str, int]], *, paid: bool = True
    ) -> dict[str, Any]:
        """An in-person sale rung up at a register: an order paid by card (one tender: its ``payment_id`` the
        payment's, its ``transaction_id`` the order's id) and COMPLETED at once, and Square's inventory of each line
        one sale (IN_STOCK to SOLD) whose ``transaction_id`` is the tender's. ``paid=False``: an order completed
        without a payment (no tenders), whose sales carry no ``transaction_id``."""
        order = self.create_order(location_id, lines, pickup=False)
        if not paid:
            done = self.pick_up(order["id"], shift_s=0.0)
            for variation, quantity in lines:
                self.register_sale(variation, location_id, quantity, unpaid=True)
            return done
        payment_id = uuid.uuid4().hex[:27].upper()
        amount = sum(1000 * int(quantity) for _, quantity in lines)
        tender = {"id": payment_id, "location_id": location_id, "transaction_id": order["id"],
                  "created_at": order["created_at"], "amount_money": {"amount": amount, "currency": "USD"},
                  "type": "CARD", "card_details": {"status": "CAPTURED", "entry_method": "EMV"},
                  "payment_id": payment_id}  # fmt: skip
        self.orders[order["id"]]["tenders"] = [tender]
        done = self.pick_up(order["id"], shift_s=0.0)
        for variation, quantity in lines:
            self.register_sale(variation, location_id, quantity, order_id=tender["transaction_id"])
        return done

    def set_quantity(self, order_id: str, line_uid: str, quantity: int, *, shift_s: float = 0.5) -> dict[str, Any]:
        """UpdateOrder on an OPEN order: a line's quantity changed (a new version)."""
        order = self.orders[order_id]
        if order["state"] != "OPEN":
            raise ValueError("Square updates OPEN orders only")
        (line,) = [li for li in order["line_items"] if li["uid"] == line_uid]
        line["quantity"] = str(quantity)
        self._bump(order, shift_s)
        return copy.deepcopy(order)

    def return_items(self, source_order_id: str, lines: Sequence[tuple[str, int]], *, shift_s: float = 3.0) -> dict[str, Any]:
        """An itemized refund at the register: a new COMPLETED order whose ``returns`` name the source order's
        lines (``source_line_item_uid``) and quantities; whether the unit went back to stock is not in it."""
        source = self.orders[source_order_id]
        by_uid = {li["uid"]: li for li in source["line_items"]}
        when = self._stamp(shift_s)
        order_id = uuid.uuid4().hex[:24].upper()
        order = {
            "id": order_id, "location_id": source["location_id"], "state": "COMPLETED", "version": 1,
            "created_at": when, "updated_at": when, "closed_at": when, "line_items": [], "fulfillments": [],
            "returns": [{"uid": uuid.uuid4().hex[:22], "source_order_id": source_order_id, "return_line_items": [
                {"uid": uuid.uuid4().hex[:22], "source_line_item_uid": uid, "quantity": str(n),
                 "catalog_object_id": by_uid[uid].get("catalog_object_id"), "name": by_uid[uid]["name"]}
                for uid, n in lines]}],
        }  # fmt: skip
        self.orders[order_id] = order
        return copy.deepcopy(order)

    def cancel(self, order_id: str, *, shift_s: float = 2.0) -> dict[str, Any]:
        order = self.orders[order_id]
        when = self._bump(order, shift_s)
        for f in order["fulfillments"]:
            if f["state"] != "COMPLETED":
                f["state"] = "CANCELED"
                f["pickup_details"]["canceled_at"] = when
        order["state"], order["closed_at"] = "CANCELED", when
        return copy.deepcopy(order)

    # --- the Orders API ----------------------------------------------------------------

    def _batch_retrieve_orders(self, body: dict[str, Any]) -> web.Response:
        ids = body.get("order_ids")
        if not isinstance(ids, list) or not ids:
            return self._answer({"errors": [_error("INVALID_REQUEST_ERROR", "MISSING_REQUIRED_PARAMETER",
                                                   "Field must be set", "order_ids")]}, 400)  # fmt: skip
        if len(ids) > ORDER_IDS_MAX:
            return self._answer({"errors": [_error("INVALID_REQUEST_ERROR", "ARRAY_LENGTH_TOO_LONG",
                                                   f"Array length {len(ids)} exceeds the maximum of {ORDER_IDS_MAX}.",
                                                   "order_ids")]}, 400)  # fmt: skip
        location = body.get("location_id")
        found = [copy.deepcopy(self.orders[i]) for i in ids if i in self.orders
                 and (location is None or self.orders[i]["location_id"] == location)]  # fmt: skip
        return self._answer({"orders": found} if found else {})

    # --- webhooks -------------------------------------------------------------------------

    def notification(self, event_type: str, order_id: str) -> bytes:
        """The body Square posts for ``event_type`` about the order as it stands now."""
        order = self.orders[order_id]
        inner_name = {"order.created": "order_created", "order.updated": "order_updated"}.get(
            event_type, "order_fulfillment_updated"
        )
        inner: dict[str, Any] = {"order_id": order_id, "version": order["version"], "location_id": order["location_id"],
                                 "state": order["state"], "created_at": order["created_at"]}  # fmt: skip
        if event_type != "order.created":
            inner["updated_at"] = order["updated_at"]
        if event_type == "order.fulfillment.updated":
            inner["fulfillment_update"] = [{"fulfillment_uid": f["uid"], "old_state": "PROPOSED", "new_state": f["state"]}
                                           for f in order["fulfillments"]]  # fmt: skip
        body = {"merchant_id": self.merchant_id, "type": event_type, "event_id": str(uuid.uuid4()),
                "created_at": self._stamp(), "data": {"type": inner_name, "id": order_id,
                                                      "object": {inner_name: inner}}}  # fmt: skip
        return json.dumps(body, separators=(",", ":")).encode()

    async def deliver(
        self, notification_url: str, body: bytes, *, post_to: str | None = None, timeout_s: float = 10.0
    ) -> tuple[int, Any]:
        """POST a signed notification; ``post_to`` (default: ``notification_url``) is where it actually goes."""
        headers = square_webhook_headers(self.signature_key, notification_url, body)
        async with aiohttp.ClientSession(trust_env=False) as session, session.post(
            post_to or notification_url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text
