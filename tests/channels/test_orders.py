"""Orders back, pure: channel webhooks → reserve / sale / release / return movements → the hub's resolution.

Payloads are built by the emulators' order models (REST 2026-01 for Shopify, Orders API 2024-11-20 for Square);
counts come from the hub's pure resolver, which refuses two events sharing an id with different content.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.channels.orders import (
    RELEASED_UNITS_MAX,
    Movement,
    OrderContext,
    OrderRefused,
    Translation,
    settle_keys,
    settle_movements,
    shopify_movements,
    shopify_pickup_lookup,
    shopify_signature_ok,
    square_movements,
    square_notice,
    square_signature_ok,
    to_events,
)
from hub.resolver import BundleBook, resolve
from protocol import Kind, StockEvent, unpack_hlc, wall_ms_now
from tests.channels.emulators.shopify_orders import ShopifyOrdersEmulator
from tests.channels.emulators.signing import shopify_signature, square_signature
from tests.channels.emulators.square_orders import SquareOrdersEmulator

WINDOW_MS = 24 * 3_600_000
AGENT = "channel:web"


class Shop:
    """A Shopify shop with a warehouse and two stores, three variants, and the hub's context for it."""

    def __init__(self, *, order_location: str = "WH1") -> None:
        self.emu = ShopifyOrdersEmulator()
        self.wh, self.s1, self.s2 = (self.emu.add_location() for _ in range(3))
        self.a, self.b, self.c = (self.emu.add_variant(sku) for sku in ("SKU-A", "SKU-B", "SKU-C"))
        self.ctx = OrderContext(
            "web", "shopify", {"WH1": self.wh, "S1": self.s1, "S2": self.s2},
            order_location=order_location, skus={v.variant_id: v.sku for v in (self.a, self.b, self.c)},
        )  # fmt: skip

    def translate(self, topic: str, payload: Any) -> Translation:
        lookup = shopify_pickup_lookup(self.ctx, topic, payload)
        pickup = None
        if lookup is not None:
            nodes = self.emu.order_query("order(id: $id)", {"id": f"gid://shopify/Order/{lookup}"})[0]["order"]
            pickup = next((n["assignedLocation"]["location"]["id"] for n in nodes["fulfillmentOrders"]["nodes"]
                           if n["deliveryMethod"]["methodType"] == "PICK_UP"), None)  # fmt: skip
        return shopify_movements(self.ctx, topic, payload, pickup)

    def events(self, topic: str, payload: Any) -> list[StockEvent]:
        return to_events(self.ctx, AGENT, self.translate(topic, payload), wall_ms_now(), WINDOW_MS)


def counts(events: Iterable[StockEvent]) -> dict[tuple[str, str], tuple[int, int]]:
    """(location, sku) -> (on_hand, reserved), for keys where either is not zero."""
    stock = resolve(events).stock
    return {k: (s.on_hand, s.reserved) for k, s in stock.items() if s.on_hand or s.reserved}


def kinds(events: Iterable[StockEvent]) -> Counter[tuple[str, str, int]]:
    return Counter((e.kind.value, e.location, e.qty) for e in events)


# --- signatures ---------------------------------------------------------------------------


def test_a_shopify_signature_is_checked_over_the_raw_body() -> None:
    body = b'{"id":1,"line_items":[]}'
    good = shopify_signature("secret", body)
    assert shopify_signature_ok("secret", body, good)
    assert not shopify_signature_ok("secret", body + b" ", good)  # re-serialised JSON is not the signed body
    assert not shopify_signature_ok("other", body, good)
    assert not shopify_signature_ok("secret", body, None)
    assert not shopify_signature_ok("secret", body, "not base64 ü")


def test_a_square_signature_covers_the_notification_url_and_the_body() -> None:
    url, body = "https://hub.example.com/v1/channels/pos/webhooks", b'{"type":"order.created"}'
    good = square_signature("key", url, body)
    assert square_signature_ok("key", url, body, good)
    assert not square_signature_ok("key", url + "/", body, good)
    assert not square_signature_ok("key", url, body[:-1], good)
    assert not square_signature_ok("", url, body, good)


# --- Shopify --------------------------------------------------------------------------------


@pytest.mark.parametrize("quantity", ["1" * 5000, "-" + "9" * 4400, "1e5000"])
def test_a_quantity_of_thousands_of_digits_is_refused_in_one_sentence(quantity: str) -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 1)], pickup_at=shop.s1)
    order["line_items"][0]["quantity"] = quantity
    with pytest.raises(OrderRefused, match=r"line_items\[0\]\.quantity") as info:
        shop.translate("orders/create", order)
    assert len(str(info.value)) <= 200


def test_a_fulfilment_of_a_line_the_order_does_not_have_is_refused_naming_it() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 2), (shop.b, 1)], pickup_at=shop.s1)
    shop.emu.fulfil(order["id"], shop.s1, {order["line_items"][0]["id"]: 1})
    payload = json.loads(json.dumps(shop.emu.orders[order["id"]]))
    payload["fulfillments"][0]["line_items"][0]["id"] = 777  # a line id the order's line_items do not carry
    with pytest.raises(OrderRefused, match=r"fulfillments\[0\]\.line_items\[0\]\.id 777 is not a line of"):
        shop.translate("orders/updated", payload)


def test_a_refund_of_a_line_the_order_does_not_have_is_refused_naming_it() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 2)], pickup_at=shop.s1)
    line = order["line_items"][0]["id"]
    shop.emu.fulfil(order["id"], shop.s1, {line: 2})
    shop.emu.refund(order["id"], [(line, 1, "return", shop.s1)], fulfilled_units=True)
    payload = json.loads(json.dumps(shop.emu.orders[order["id"]]))
    payload["refunds"][0]["refund_line_items"][0]["line_item_id"] = 778  # a line id the order does not carry
    with pytest.raises(OrderRefused, match=r"refunds\[0\]\.refund_line_items\[0\]\.line_item_id 778 is not a line"):
        shop.translate("orders/updated", payload)


def test_a_pickup_order_reserves_the_pickup_stores_unit_and_its_pickup_sells_it_there() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 2)], pickup_at=shop.s1)
    assert order["location_id"] is None  # Shopify's REST order names no pickup location: it is looked up
    created = shop.events("orders/create", order)
    assert kinds(created) == Counter({("reserve", "S1", 2): 1})
    assert counts(created) == {("S1", "SKU-A"): (0, 2)}
    fulfilment = shop.emu.fulfil(order["id"], shop.s1)
    picked = (
        created
        + shop.events("fulfillments/create", fulfilment)
        + shop.events("orders/fulfilled", shop.emu.orders[order["id"]])
    )
    assert counts(picked) == {("S1", "SKU-A"): (-2, 0)}  # sold at S1 and its reservation consumed
    assert all(e.ref == f"web:order:{order['id']}" and e.source == "api:channel:web" for e in picked)


def test_an_online_order_reserves_at_order_location_and_a_fulfilment_elsewhere_moves_the_reservation() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 3)], ship_from=shop.wh)
    events = shop.events("orders/create", order)
    assert counts(events) == {("WH1", "SKU-A"): (0, 3)}
    line = order["line_items"][0]["id"]
    shop.emu.fulfil(order["id"], shop.s2, {line: 1})  # one unit shipped from store S2
    events += shop.events("orders/updated", shop.emu.orders[order["id"]])
    assert counts(events) == {("WH1", "SKU-A"): (0, 2), ("S2", "SKU-A"): (-1, 0)}


def test_a_pos_order_names_its_location() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.b, 1)], pos_location=shop.s2)
    assert counts(shop.events("orders/create", order)) == {("S2", "SKU-B"): (0, 1)}


def test_a_cancellation_before_the_creation_emits_the_reserve_and_its_release() -> None:
    shop = Shop()
    created = shop.emu.create_order([(shop.a, 2), (shop.b, 1)], pickup_at=shop.s1)
    cancelled = shop.emu.cancel(created["id"])
    late = shop.events("orders/cancelled", cancelled)
    assert {("reserve", "S1", 2), ("reserve", "S1", 1)} <= set(kinds(late))
    assert counts(late) == {}
    early = shop.events("orders/create", created)
    assert {e.event_id for e in early} <= {e.event_id for e in late}  # the late creation: duplicates only
    assert counts(late + early) == {}


def test_the_same_webhook_twice_gives_identical_events() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 1)], pickup_at=shop.s1)
    shop.emu.fulfil(order["id"], shop.s1)
    payload = shop.emu.orders[order["id"]]
    first, again = (
        shop.events("orders/updated", payload),
        shop.events("orders/updated", json.loads(json.dumps(payload))),
    )
    assert first == again
    assert {e.occurred_at >> 16 for e in first} <= {
        _ms(payload["created_at"]),
        _ms(payload["fulfillments"][0]["created_at"]),
    }


def _ms(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_partial_fulfilment_then_a_returned_unit_and_a_cancelled_unit() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 4)], pickup_at=shop.s1)
    line = order["line_items"][0]["id"]
    shop.emu.fulfil(order["id"], shop.s1, {line: 2})
    shop.emu.refund(order["id"], [(line, 1, "return", shop.s1)])  # one of the two picked up comes back
    refund = shop.emu.refund(order["id"], [(line, 1, "cancel", shop.s1)])  # one of the two left is cancelled
    events = shop.events("orders/updated", shop.emu.orders[order["id"]])
    assert counts(events) == {("S1", "SKU-A"): (-1, 1)}  # 2 sold, 1 back; 1 still reserved for pickup
    alone = shop.events("refunds/create", refund)
    assert alone == []  # a cancel restock needs the order's reservation location: the order webhook brings it


def test_a_refund_with_restock_returns_the_unit_where_it_is_restocked() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 1)], ship_from=shop.wh)
    shop.emu.fulfil(order["id"], shop.wh)
    refund = shop.emu.refund(order["id"], [(order["line_items"][0]["id"], 1, "return", shop.s2)])
    assert kinds(shop.events("refunds/create", refund)) == Counter({("return", "S2", 1): 1})
    no_restock = shop.emu.refund(
        order["id"], [(order["line_items"][0]["id"], 1, "no_restock", None)], fulfilled_units=True
    )
    assert shop.events("refunds/create", no_restock) == []


def test_a_cancelled_fulfilment_puts_the_units_back_and_reserves_them_again() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 2)], pickup_at=shop.s1)
    f = shop.emu.fulfil(order["id"], shop.s1)
    cancelled = shop.emu.cancel_fulfilment(order["id"], f["id"])
    events = shop.events("orders/updated", shop.emu.orders[order["id"]]) + shop.events("fulfillments/update", cancelled)
    assert counts(events) == {("S1", "SKU-A"): (0, 2)}


def test_units_removed_without_a_restock_leave_the_reservation_at_once() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 5)], pickup_at=shop.s1)
    line = order["line_items"][0]["id"]
    shop.emu.fulfil(order["id"], shop.s1, {line: 2})
    refund = shop.emu.refund(
        order["id"], [(line, 1, "no_restock", None)]
    )  # an unfulfilled unit refunded, not restocked
    assert shop.events("refunds/create", refund) == []  # the refund alone cannot say which units: the order does
    first = shop.events("orders/updated", shop.emu.orders[order["id"]])
    assert counts(first) == {("S1", "SKU-A"): (-2, 2)}
    shop.emu.remove_units(order["id"], line, 1)  # an order edit takes one more away, without a refund
    second = shop.events("orders/updated", shop.emu.orders[order["id"]])
    assert counts(second) == counts(first + second) == {("S1", "SKU-A"): (-2, 1)}
    assert kinds(second)[("release", "S1", -1)] == 2  # one release per removed unit: the first one again, and the new
    assert {e.event_id for e in first} < {e.event_id for e in second}  # the earlier payload adds nothing new


def test_a_fulfilled_unit_refunded_without_a_restock_keeps_the_rest_reserved() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 3)], pickup_at=shop.s1)
    line = order["line_items"][0]["id"]
    shop.emu.fulfil(order["id"], shop.s1, {line: 2})
    shop.emu.refund(
        order["id"], [(line, 1, "no_restock", None)], fulfilled_units=True
    )  # money back for a picked-up unit
    assert counts(shop.events("orders/updated", shop.emu.orders[order["id"]])) == {("S1", "SKU-A"): (-2, 1)}


def test_closing_an_order_moves_nothing_and_what_it_still_owes_can_be_picked_up_after_reopening() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 3)], pickup_at=shop.s1)
    line = order["line_items"][0]["id"]
    shop.emu.fulfil(order["id"], shop.s1, {line: 1})
    events = shop.events("orders/updated", shop.emu.orders[order["id"]])
    closed = shop.emu.close_order(order["id"])  # archived: Shopify still owes 2 units and keeps them committed
    events += shop.events("orders/updated", closed)
    assert counts(events) == {("S1", "SKU-A"): (-1, 2)}
    events += shop.events("orders/updated", shop.emu.reopen(order["id"]))
    assert counts(events) == {("S1", "SKU-A"): (-1, 2)}  # reopened: the same 2 units, reserved all along
    shop.emu.fulfil(order["id"], shop.s1)
    events += shop.events("orders/updated", shop.emu.close_order(order["id"]))
    assert counts(events) == {("S1", "SKU-A"): (-3, 0)}


def test_a_cancelled_order_releases_every_unit_once_whatever_came_before() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 3)], pickup_at=shop.s1)
    line = order["line_items"][0]["id"]
    removed = shop.emu.refund(order["id"], [(line, 1, "cancel", shop.s1)])
    partly = shop.events("orders/updated", shop.emu.orders[order["id"]])
    cancelled = shop.events("orders/cancelled", shop.emu.cancel(order["id"]))
    assert shop.events("refunds/create", removed) == []
    assert counts(partly) == {("S1", "SKU-A"): (0, 2)}
    assert counts(cancelled) == counts(partly + cancelled) == {}
    assert kinds(cancelled)[("release", "S1", -1)] == 3  # the unit removed before is the same event in both


def test_a_payload_releasing_more_units_than_the_hub_releases_one_by_one_is_refused_whole() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, RELEASED_UNITS_MAX + 1)], pickup_at=shop.s1)
    with pytest.raises(OrderRefused, match="one by one"):
        shop.translate("orders/cancelled", shop.emu.cancel(order["id"]))
    assert len(shop.translate("orders/create", order).movements) == 1  # placing it is one reserve


def test_an_unmapped_line_refuses_the_whole_webhook_and_says_what_to_do() -> None:
    shop = Shop()
    stranger = shop.emu.add_variant("NOT-IN-MAPPING")
    order = shop.emu.create_order([(shop.a, 1), (stranger, 1)], pickup_at=shop.s1)
    with pytest.raises(OrderRefused) as info:
        shop.translate("orders/create", order)
    message = str(info.value)
    assert str(order["line_items"][1]["id"]) in message and "NOT-IN-MAPPING" in message
    assert "nothing of it was applied" in message and "mapping" in message and "\n" not in message


def test_a_custom_line_without_a_variant_is_left_out_and_named() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 1), (None, 1)], pickup_at=shop.s1)
    t = shop.translate("orders/create", order)
    assert [m.sku for m in t.movements] == ["SKU-A"]
    assert t.left_out == (f"line {order['line_items'][1]['id']} (no product variant)",)


def test_locations_outside_the_pool_or_shared_without_fulfil_from_are_refused_with_the_fix() -> None:
    shop = Shop()
    elsewhere = shop.emu.add_location()
    order = shop.emu.create_order([(shop.a, 1)], pos_location=elsewhere)
    with pytest.raises(OrderRefused, match="not in channel web's pool; add it to pool"):
        shop.translate("orders/create", order)
    shared = OrderContext("web", "shopify", {"S1": shop.s1, "S2": shop.s1}, skus=shop.ctx.skus)
    pos = shop.emu.create_order([(shop.a, 1)], pos_location=shop.s1)
    with pytest.raises(OrderRefused, match="fulfil_from"):
        shopify_movements(shared, "orders/create", pos)
    chosen = OrderContext("web", "shopify", shared.pool, {shop.s1: "S2"}, skus=shop.ctx.skus)
    assert [m.location for m in shopify_movements(chosen, "orders/create", pos).movements] == ["S2"]


def test_an_online_order_in_a_multi_location_channel_without_order_location_is_refused() -> None:
    shop = Shop(order_location="")
    order = shop.emu.create_order([(shop.a, 1)], ship_from=shop.wh)
    with pytest.raises(OrderRefused, match="set order_location"):
        shop.translate("orders/create", order)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": "2026-01-01T10:00:00"}, "UTC offset"),
        ({"line_items": "many"}, "line_items must be a JSON array"),
        ({"id": None}, "id"),
    ],
)
def test_a_malformed_order_is_refused_naming_the_field(change: dict[str, Any], match: str) -> None:
    shop = Shop()
    order = {**shop.emu.create_order([(shop.a, 1)], pickup_at=shop.s1), **change}
    with pytest.raises(OrderRefused, match=match):
        shop.translate("orders/create", order)


def test_a_stamp_ahead_of_the_clock_window_refuses_the_webhook() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 1)], pickup_at=shop.s1)
    order["created_at"] = "2099-01-01T00:00:00+00:00"
    with pytest.raises(OrderRefused, match="clock window"):
        shop.events("orders/create", order)


# --- any order of delivery, any duplicates: the same counts -------------------------------------

ACTIONS = st.lists(
    st.tuples(st.sampled_from(["fulfil", "unfulfil", "return", "cancel_units", "no_restock", "money_back", "edit",
                               "cancel", "close", "reopen"]),
              st.integers(0, 5), st.integers(1, 3), st.integers(0, 2)),
    max_size=8,
)  # fmt: skip


def _lifecycle(
    shop: Shop, pickup: bool, quantities: list[int], actions: list[tuple[str, int, int, int]]
) -> list[tuple[str, Any]]:
    """Run ``actions`` against the emulator's order; every webhook Shopify would send, in the order it sends them."""
    emu = shop.emu
    locations = [shop.wh, shop.s1, shop.s2]
    order = emu.create_order(list(zip((shop.a, shop.b, shop.c), quantities, strict=False)),
                             pickup_at=shop.s1 if pickup else None, ship_from=shop.wh)  # fmt: skip
    oid = order["id"]
    sent: list[tuple[str, Any]] = [("orders/create", order)]
    fulfilled_refunded: Counter[int] = Counter()  # fulfilled units refunded so far, by line id
    for step, (what, pick, n, where) in enumerate(actions, start=1):
        o = emu.orders[oid]
        if o["cancelled_at"]:
            break
        li = o["line_items"][pick % len(o["line_items"])]
        done = sum(fl["quantity"] for f in o["fulfillments"] if f["status"] == "success" for fl in f["line_items"]
                   if fl["id"] == li["id"])  # fmt: skip
        refunded = fulfilled_refunded[li["id"]]
        if what == "fulfil" and li["fulfillable_quantity"]:
            f = emu.fulfil(oid, locations[where], {li["id"]: min(n, li["fulfillable_quantity"])}, shift_s=step)
            sent += [("fulfillments/create", f), ("orders/updated", emu.orders[oid])]
        elif what == "unfulfil" and (live := [f for f in o["fulfillments"] if f["status"] == "success"]):
            f = emu.cancel_fulfilment(oid, live[pick % len(live)]["id"], shift_s=step)
            sent += [("fulfillments/update", f), ("orders/updated", emu.orders[oid])]
        elif what in ("return", "money_back") and done - refunded >= n:
            restock, location = ("return", locations[where]) if what == "return" else ("no_restock", None)
            r = emu.refund(oid, [(li["id"], n, restock, location)], shift_s=step, fulfilled_units=True)
            fulfilled_refunded[li["id"]] += n
            sent += [("refunds/create", r), ("orders/updated", emu.orders[oid])]
        elif what in ("cancel_units", "no_restock") and li["fulfillable_quantity"] >= n:
            restock = "cancel" if what == "cancel_units" else "no_restock"
            r = emu.refund(oid, [(li["id"], n, restock, shop.s1 if pickup else shop.wh)], shift_s=step)
            sent += [("refunds/create", r), ("orders/updated", emu.orders[oid])]
        elif what == "edit" and li["fulfillable_quantity"] >= n:
            sent.append(("orders/updated", emu.remove_units(oid, li["id"], n, shift_s=step)))
        elif what == "cancel" and not any(f["status"] == "success" for f in o["fulfillments"]):
            sent.append(("orders/cancelled", emu.cancel(oid, shift_s=step)))
        elif what == "close" and not o["closed_at"]:
            sent.append(("orders/updated", emu.close_order(oid, shift_s=step)))
        elif what == "reopen" and o["closed_at"]:
            sent.append(("orders/updated", emu.reopen(oid, shift_s=step)))
        sent[-1] = (sent[-1][0], json.loads(json.dumps(sent[-1][1])))  # each delivery is a snapshot
    return [(topic, json.loads(json.dumps(p))) for topic, p in sent]


def _expected(shop: Shop, pickup: bool) -> dict[tuple[str, str], tuple[int, int]]:
    """What the hub should hold once every webhook arrived: read off the final order, not off the events."""
    (order,) = shop.emu.orders.values()
    hub_of = {
        int(shop.wh.rsplit("/", 1)[1]): "WH1",
        int(shop.s1.rsplit("/", 1)[1]): "S1",
        int(shop.s2.rsplit("/", 1)[1]): "S2",
    }
    reserve_at = "S1" if pickup else "WH1"
    result: Counter[tuple[str, str, str]] = Counter()
    for li in order["line_items"]:
        sku = li["sku"]
        done = 0
        for f in order["fulfillments"]:
            for fl in f["line_items"]:
                if fl["id"] == li["id"] and f["status"] == "success":
                    result[(hub_of[f["location_id"]], sku, "on_hand")] -= fl["quantity"]
                    done += fl["quantity"]
        for rf in order["refunds"]:
            for r in rf["refund_line_items"]:
                if r["line_item_id"] == li["id"] and r["restock_type"] == "return":
                    result[(hub_of[r["location_id"]], sku, "on_hand")] += r["quantity"]
        if not order["cancelled_at"]:  # what the order still owes stays reserved, closed (archived) or not
            result[(reserve_at, sku, "reserved")] += max(0, li["current_quantity"] - done)
    keys = {(loc, sku) for loc, sku, _ in result}
    out = {(loc, sku): (result[(loc, sku, "on_hand")], result[(loc, sku, "reserved")]) for loc, sku in keys}
    return {k: v for k, v in out.items() if v != (0, 0)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pickup=st.booleans(),
    quantities=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    actions=ACTIONS,
    seed=st.integers(0, 2**32 - 1),
)
def test_any_delivery_order_with_duplicates_ends_in_the_same_true_counts(
    pickup: bool, quantities: list[int], actions: list[tuple[str, int, int, int]], seed: int
) -> None:
    shop = Shop()
    sent = _lifecycle(shop, pickup, quantities, actions)
    rng = random.Random(seed)
    deliveries = sent + rng.choices(sent, k=rng.randint(0, len(sent)))  # Shopify's retries: some come twice
    rng.shuffle(deliveries)  # … and in any order
    events: list[StockEvent] = []
    for topic, payload in deliveries:
        events += shop.events(topic, payload)
    in_order: list[StockEvent] = []
    for topic, payload in sent:
        in_order += shop.events(topic, payload)
    assert {e.event_id for e in events} == {e.event_id for e in in_order}  # the same events, whatever the order
    assert counts(events) == counts(in_order) == _expected(shop, pickup)  # resolve() refuses conflicting ids


# --- Square -------------------------------------------------------------------------------------


class Seller:
    def __init__(self) -> None:
        self.emu = SquareOrdersEmulator()
        self.s1 = self.emu.add_location()
        self.a = self.emu.add_variation("SKU-A")
        self.ctx = OrderContext("pos", "square", {"S1": self.s1}, skus={self.a: "SKU-A"})

    def events(self, order: Any) -> list[StockEvent]:
        return to_events(self.ctx, "channel:pos", square_movements(self.ctx, order), wall_ms_now(), WINDOW_MS)


def test_a_square_pickup_order_reserves_then_sells_at_its_location() -> None:
    seller = Seller()
    order = seller.emu.create_order(seller.s1, [(seller.a, 2)])
    open_events = seller.events(order)
    assert counts(open_events) == {("S1", "SKU-A"): (0, 2)}
    done = seller.emu.pick_up(order["id"])
    assert counts(open_events + seller.events(done)) == {("S1", "SKU-A"): (-2, 0)}
    assert counts(seller.events(done)) == {("S1", "SKU-A"): (-2, 0)}  # the completion alone brings the whole chain


def test_a_square_cancellation_releases_and_a_late_open_state_changes_nothing() -> None:
    seller = Seller()
    order = seller.emu.create_order(seller.s1, [(seller.a, 1)])
    cancelled = seller.emu.cancel(order["id"])
    events = seller.events(cancelled)
    assert counts(events) == {}
    assert {e.event_id for e in seller.events(order)} <= {e.event_id for e in events}


def test_a_square_in_person_sale_without_fulfilment_sells_when_completed() -> None:
    seller = Seller()
    order = seller.emu.create_order(seller.s1, [(seller.a, 3), (None, 1)], pickup=False)
    seller.emu.pick_up(order["id"])
    t = square_movements(seller.ctx, seller.emu.orders[order["id"]])
    assert counts(seller.events(seller.emu.orders[order["id"]])) == {("S1", "SKU-A"): (-3, 0)}
    assert len(t.left_out) == 1 and "no catalog item" in t.left_out[0]


def test_a_square_quantity_that_is_not_whole_units_is_refused() -> None:
    seller = Seller()
    order = seller.emu.create_order(seller.s1, [(seller.a, "1.5")])
    with pytest.raises(OrderRefused, match="whole units"):
        seller.events(order)


def test_a_square_notification_names_the_order_and_its_location() -> None:
    seller = Seller()
    order = seller.emu.create_order(seller.s1, [(seller.a, 1)])
    notice = square_notice(json.loads(seller.emu.notification("order.fulfillment.updated", order["id"])))
    assert (notice.event_type, notice.order_id, notice.location_id, notice.version) == (
        "order.fulfillment.updated", order["id"], seller.s1, 1,
    )  # fmt: skip
    with pytest.raises(OrderRefused, match="subscribe"):
        square_notice({"type": "payment.created", "data": {}})


@pytest.mark.parametrize("dots", [".", ".."])
def test_a_square_order_id_no_url_can_name_is_refused(dots: str) -> None:
    """An order id ``.`` or ``..`` was taken: refused for another reason, it was listed among the exceptions with a
    dismiss URL every browser and HTTP client rewrites (``/orders/../dismiss`` is ``/dismiss``), so the entry could
    not be dismissed. Such an id is refused as the other ids the hub cannot keep are."""
    seller = Seller()
    order = seller.emu.create_order(seller.s1, [(seller.a, 1)])
    body = json.loads(seller.emu.notification("order.updated", order["id"]))
    body["data"]["id"] = body["data"]["object"]["order_updated"]["order_id"] = dots
    with pytest.raises(OrderRefused, match=r"is not an id the hub can keep \(not '\.' or '\.\.'"):
        square_notice(body)
    with pytest.raises(OrderRefused, match="is not an id the hub can keep"):
        square_movements(seller.ctx, {**order, "id": dots})


def _settled(seller: Seller, events: list[StockEvent]) -> list[StockEvent]:
    """The order's events of every notice so far, then what settling its reservation adds (as the route does)."""
    (order,) = [o for o in seller.emu.orders.values() if o["line_items"]]
    t = square_movements(seller.ctx, order)
    ref = seller.ctx.ref(order["id"])
    rows = {(loc, sku): (r.reserved, r.consumed) for (loc, sku, rref), r in resolve(events).reservations.items()
            if rref == ref}  # fmt: skip
    moves = settle_movements(t, {}, rows)
    return events + to_events(seller.ctx, "channel:pos", Translation(t.order_id, moves), wall_ms_now(), WINDOW_MS)


def test_a_square_quantity_lowered_while_open_is_reserved_as_it_stands_and_nothing_stays_after_pickup() -> None:
    seller = Seller()
    order = seller.emu.create_order(seller.s1, [(seller.a, 3)])
    uid = order["line_items"][0]["uid"]
    events = _settled(seller, seller.events(order))
    assert counts(events) == {("S1", "SKU-A"): (0, 3)}
    lowered = seller.emu.set_quantity(order["id"], uid, 2)
    events = _settled(seller, events + seller.events(lowered))
    assert counts(events) == {("S1", "SKU-A"): (0, 2)}
    assert _settled(seller, events) == events  # settled: computing it again adds nothing
    raised = seller.emu.set_quantity(order["id"], uid, 4)
    events = _settled(seller, events + seller.events(raised))
    assert counts(events) == {("S1", "SKU-A"): (0, 4)}
    events = _settled(seller, events + seller.events(seller.emu.pick_up(order["id"])))
    assert counts(events) == {("S1", "SKU-A"): (-4, 0)}
    assert all(e.kind is not Kind.RELEASE or e.attrs["stage"] == "settle" for e in events)


def test_a_square_order_lowered_then_cancelled_holds_nothing_even_if_the_hub_missed_the_change() -> None:
    seller = Seller()
    order = seller.emu.create_order(seller.s1, [(seller.a, 3)])
    first = seller.events(order)  # the hub saw quantity 3 …
    seller.emu.set_quantity(order["id"], order["line_items"][0]["uid"], 1)
    events = _settled(seller, first + seller.events(seller.emu.cancel(order["id"])))  # … then only the end
    assert counts(events) == {}
    assert {e.event_id for e in first} <= {e.event_id for e in events}


def test_a_square_kit_whose_quantity_changed_is_settled_on_its_parts() -> None:
    seller = Seller()
    kit = seller.emu.add_variation("KIT")
    ctx = OrderContext("pos", "square", {"S1": seller.s1}, skus={seller.a: "SKU-A", kit: "KIT"})
    book = BundleBook(recipes={"KIT": {"SKU-A": 2, "SKU-B": 1}})
    order = seller.emu.create_order(seller.s1, [(kit, 3), (seller.a, 1)])
    lowered = seller.emu.set_quantity(order["id"], order["line_items"][0]["uid"], 1)
    events = [*to_events(ctx, "channel:pos", square_movements(ctx, order), wall_ms_now(), WINDOW_MS),
              *to_events(ctx, "channel:pos", square_movements(ctx, lowered), wall_ms_now(), WINDOW_MS)]  # fmt: skip
    t = square_movements(ctx, lowered)
    ref = ctx.ref(order["id"])
    rows = {(loc, sku): (r.reserved, r.consumed)
            for (loc, sku, rref), r in resolve(events, bundles=book).reservations.items() if rref == ref}  # fmt: skip
    assert settle_keys(t, book.recipes) == {("S1", "SKU-A"): 2 + 1, ("S1", "SKU-B"): 1}
    moves = settle_movements(t, book.recipes, rows)
    assert {(m.sku, m.kind, m.qty) for m in moves} == {("SKU-A", Kind.RELEASE, -6), ("SKU-B", Kind.RELEASE, -3)}
    settled = events + to_events(ctx, "channel:pos", Translation(t.order_id, moves), wall_ms_now(), WINDOW_MS)
    stock = resolve(settled, bundles=book).stock
    assert (stock[("S1", "SKU-A")].reserved, stock[("S1", "SKU-B")].reserved) == (3, 1)


def test_a_square_return_moves_nothing_and_says_the_store_records_the_unit() -> None:
    seller = Seller()
    order = seller.emu.create_order(seller.s1, [(seller.a, 2)], pickup=False)
    seller.emu.pick_up(order["id"])
    back = seller.emu.return_items(order["id"], [(order["line_items"][0]["uid"], 1)])
    t = square_movements(seller.ctx, back)
    assert t.movements == () and t.still_reserved == ()
    (note,) = t.left_out
    assert "return line" in note and "scans it back in" in note


def test_a_square_draft_moves_nothing() -> None:
    seller = Seller()
    order = {**seller.emu.create_order(seller.s1, [(seller.a, 1)]), "state": "DRAFT"}
    assert square_movements(seller.ctx, order).movements == ()


def test_every_stage_is_a_movement_of_the_right_kind() -> None:
    shop = Shop()
    order = shop.emu.create_order([(shop.a, 1)], ship_from=shop.wh)
    shop.emu.fulfil(order["id"], shop.s1)
    t = shop.translate("orders/updated", shop.emu.orders[order["id"]])
    assert {(m.stage, m.kind) for m in t.movements} == {
        ("reserve", Kind.RESERVE), ("sale", Kind.SALE), ("moved", Kind.RELEASE),
    }  # fmt: skip


def test_a_store_pcs_skew_beyond_the_clock_window_is_not_carried_into_a_channels_sale() -> None:
    """A channel's sale is stamped in its store PC's clock frame (the channel's time less the PC's measured skew), so
    it orders against that store's counts. A PC more than the clock window off has its own events held for an
    operator; carrying that skew made the channel's sale held too (ahead of the hub's clock, ``ahead``), where it
    was booked before. Past the window the sale keeps the channel's time."""
    ctx = OrderContext("pos", "square", {"S1": "L1"})
    now = wall_ms_now()
    sale = Movement("sale", "line-1", Kind.SALE, "S1", "SKU-A", -1, now, "line-1")
    t = Translation("ORDER-1", (sale,))
    minutes = 60_000
    near = to_events(ctx, AGENT, t, now, WINDOW_MS, {"S1": -10 * minutes})  # the PC 10 minutes ahead
    assert unpack_hlc(near[0].occurred_at)[0] == now + 10 * minutes
    far = to_events(ctx, AGENT, t, now, WINDOW_MS, {"S1": -WINDOW_MS - minutes})  # the PC past the window ahead
    assert unpack_hlc(far[0].occurred_at)[0] == now
    assert near[0].event_id == far[0].event_id  # the same sale either way
