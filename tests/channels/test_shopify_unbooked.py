"""A reconciliation right after a sale at Shopify whose order webhook has not reached the hub yet.

Shopify lowers ``available`` when an order is placed (online or at Shopify POS); the hub learns of it only from the
order's ``orders/create`` webhook. A reconciliation in between took Shopify's lower level for a drift and pushed the
hub's higher one over it: Shopify showed the sold unit for sale again (an oversell) until the webhook came. The
connector lists Shopify's orders made since the hub's last push there (``orders``, ``created_at:>=``), leaves out
those the hub booked, and counts the rest's units at the location each was taken from: a level that is the hub's
less those units stands. The pushers are turned by hand; the emulator lowers ``available`` only when told
(``drift``), as Shopify does when it takes the order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from hub.channels import ChannelPusher, LevelKey, ShopifyConnector, SqliteChannelState
from hub.channels import shopify as shopify_module
from hub.channels.orders import shopify_movements
from hub.channels.reconcile import Reconciler
from protocol import Kind
from tests.channels.emulators.shopify import Variant
from tests.channels.emulators.shopify_orders import ShopifyOrdersEmulator
from tests.channels.helpers import Hub, book_order, logged, one_sale_stands, settle, spec_of, store_moves

SECRET = "shpss_app_client_secret_0123"


@pytest.fixture
async def shop() -> AsyncIterator[ShopifyOrdersEmulator]:
    async with ShopifyOrdersEmulator(webhook_secret=SECRET) as emu:
        yield emu


@asynccontextmanager
async def hooked_pusher(
    hub: Hub, state: SqliteChannelState, emu: ShopifyOrdersEmulator, pool: dict[str, str]
) -> AsyncIterator[ChannelPusher]:
    """A Shopify channel taking Shopify's order webhooks (its app's client secret set)."""
    spec = spec_of({"name": "web", "kind": "shopify", "url": emu.url, "pool": pool, "timeout_s": 5}, emu.token)
    spec = replace(spec, webhook_secret=SECRET)
    async with aiohttp.ClientSession(trust_env=False) as session:
        yield ChannelPusher(spec, hub.store, state, ShopifyConnector(spec, session), hub.watch)


@asynccontextmanager
async def pushing_a(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator, units: int = 10
) -> AsyncIterator[tuple[ChannelPusher, str, Variant]]:
    """A location at Shopify stocking A, ``units`` of A received at the hub's S1, and the hooked pusher selling S1
    there, turned until it has nothing left to do."""
    online = shop.add_location()
    a = shop.add_variant("A", stocked_at=[online])
    await hub.move((Kind.RECEIVE, units, "S1", "A"))
    async with hooked_pusher(hub, state, shop, {"S1": online}) as pusher:
        await settle(pusher)
        yield pusher, online, a


def sell(emu: ShopifyOrdersEmulator, variant: Variant, location: str, units: int, **kw: Any) -> dict[str, Any]:
    """An order placed at Shopify taking ``units`` of ``variant`` at ``location``: Shopify lowers ``available``."""
    order = emu.create_order([(variant, units)], ship_from=location, **kw)
    emu.drift(variant.item_id, location, (emu.available(variant.item_id, location) or 0) - units)
    return order


async def book(hub: Hub, pusher: ChannelPusher, emu: ShopifyOrdersEmulator, order: dict[str, Any]) -> None:
    """The order's ``orders/create`` webhook reaches the hub and is booked, as the order route books it."""
    payload = emu.order_delivery("orders/create", order["id"]).payload
    await book_order(hub, pusher, "shopify", lambda ctx: shopify_movements(ctx, "orders/create", payload))


async def test_a_shopify_sale_whose_webhook_has_not_arrived_is_not_pushed_over_by_a_reconciliation(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hub.channels")
    async with pushing_a(hub, state, shop) as (pusher, online, a):
        order = sell(shop, a, online, 1)  # its orders/create webhook is on its way
        found = await Reconciler(pusher).reconcile()
        assert (found.done.checked, found.divergences) == (1, ())
        await settle(pusher)
        assert shop.available(a.item_id, online) == 9, "not pushed over"
        assert await state.open_divergences("web") == 0
        assert shop.stats.by_operation.get("orders") == 1, "one read of Shopify's orders, for the diverging level"

        await book(hub, pusher, shop, order)  # the webhook arrives: the hub's level is Shopify's
        await settle(pusher)
        assert shop.available(a.item_id, online) == 9
        # the hub's 9 went out from the 10 last confirmed: answered stale, Shopify's orders were read once more
        # (the order booked: nothing taken off)
        assert shop.stats.by_operation.get("orders") == 2
        assert (await Reconciler(pusher).reconcile()).divergences == ()
        assert shop.stats.by_operation.get("orders") == 2, "nothing diverged: no orders read"
    assert logged(caplog, "sold units after the hub's last count") == [one_sale_stands("web", "Shopify", online)]


async def test_a_shopify_pos_sale_counts_at_its_retail_location(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator
) -> None:
    """Two locations: a POS sale at the outlet explains the outlet's level only; an edit online is a drift."""
    online, outlet = shop.add_location(), shop.add_location()
    a = shop.add_variant("A", stocked_at=[online, outlet])
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 20, "S2", "A"))
    async with hooked_pusher(hub, state, shop, {"S1": online, "S2": outlet}) as pusher:
        await settle(pusher)
        shop.create_order([(a, 2)], pos_location=outlet)
        shop.drift(a.item_id, outlet, 18)
        shop.drift(a.item_id, online, 8)  # an edit in the admin: no order explains it
        (d,) = (await Reconciler(pusher).reconcile()).divergences
        assert (d.key, d.channel_level, d.hub_level) == (LevelKey(a.item_id, online), 8, 10)
        await settle(pusher)
        assert (shop.available(a.item_id, online), shop.available(a.item_id, outlet)) == (10, 18)


async def test_a_real_drift_beside_a_sale_is_still_pushed_over(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator
) -> None:
    """One unit sold, and four more gone by an edit in the admin: the sale does not explain Shopify's level."""
    async with pushing_a(hub, state, shop) as (pusher, online, a):
        sell(shop, a, online, 1)
        shop.drift(a.item_id, online, 5)
        (d,) = (await Reconciler(pusher).reconcile()).divergences
        assert (d.channel_level, d.hub_level) == (5, 10)
        await settle(pusher)
        assert shop.available(a.item_id, online) == 10


async def test_an_order_the_hub_booked_is_not_counted_twice(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator
) -> None:
    """Two orders since the push, the first booked (the hub's level is 9), the second not: Shopify's 7 is the hub's
    9 less the second's 2 units, and stands. Counting the booked one again would make it 6 and push 9 over."""
    async with pushing_a(hub, state, shop) as (pusher, online, a):
        first = sell(shop, a, online, 1)
        # Shopify's clock a few seconds ahead of the hub's: the booked order is dated after the push of 9 below
        ahead = datetime.now(UTC) + timedelta(seconds=5)
        shop.orders[first["id"]]["created_at"] = ahead.isoformat(timespec="seconds")
        await book(hub, pusher, shop, first)
        await settle(pusher)
        assert await hub.available("S1", "A") == 9 and shop.available(a.item_id, online) == 9
        sell(shop, a, online, 2)
        found = await Reconciler(pusher).reconcile()
        assert found.divergences == ()
        assert shop.available(a.item_id, online) == 7


async def test_when_shopifys_orders_cannot_be_read_a_reconciliation_pushes_over_as_before_said_once(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hub.channels")
    async with pushing_a(hub, state, shop) as (pusher, online, a):
        sold = []
        for _ in range(2):
            sold.append(sell(shop, a, online, 1))
            shop.fail_orders = True
            (d,) = (await Reconciler(pusher).reconcile()).divergences
            assert (d.channel_level, d.hub_level) == (9, 10)
            shop.fail_orders = False
            await settle(pusher)
            assert shop.available(a.item_id, online) == 10  # as before: pushed over the sale
        for order in sold:  # their webhooks arrive: the hub's level is 8, pushed
            await book(hub, pusher, shop, order)
        await settle(pusher)
        assert shop.available(a.item_id, online) == 8
        sell(shop, a, online, 1)  # readable again
        assert (await Reconciler(pusher).reconcile()).divergences == ()
        await settle(pusher)
        assert shop.available(a.item_id, online) == 7
    failed = [r for r in caplog.records if "orders could not be read" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING, "said once while it goes on"
    said = failed[0].getMessage()
    assert said.startswith(
        "channel web: Shopify's orders could not be read to tell a sale at Shopify from a drift when reconciling "
        "(Shopify refused a request of channel web: Access denied for orders field."
    )
    assert sum("Shopify's orders can be read again" in r.getMessage() for r in caplog.records) == 1


async def test_more_orders_than_three_pages_since_the_push_are_read_as_failed_and_the_level_pushed_over(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """25 orders since the push (3 pages of 8 hold 24): the read is bounded, so it fails and the level is pushed over
    as before, said in the warning."""
    async with pushing_a(hub, state, shop, 100) as (pusher, online, a):
        for _ in range(25):
            sell(shop, a, online, 1)
        (d,) = (await Reconciler(pusher).reconcile()).divergences
        assert (d.channel_level, d.hub_level) == (75, 100)
        assert shop.stats.by_operation["orders"] == 3, "three pages, no more"
    assert "Shopify has more than 24 orders since" in caplog.text


def test_an_order_is_counted_where_shopify_took_its_units() -> None:
    """Per inventory item at the fulfilment order's assigned location; the order's retailLocation when that names
    none (a deleted location); a custom line is nothing of the hub's; a connection cut short is unreadable."""
    retail = {"id": "gid://shopify/Location/2"}

    def fo(location: str | None, lines: list[tuple[str | None, int]], more: bool = False) -> dict[str, Any]:
        return {
            "assignedLocation": {"location": {"id": location} if location else None},
            "lineItems": {"nodes": [{"inventoryItemId": i, "totalQuantity": n} for i, n in lines],
                          "pageInfo": {"hasNextPage": more}},
        }  # fmt: skip

    def node(*fos: dict[str, Any], more: bool = False) -> dict[str, Any]:
        return {"id": "gid://shopify/Order/7", "createdAt": "2026-12-06T22:00:01Z", "cancelledAt": None,
                "retailLocation": retail, "fulfillmentOrders": {"nodes": list(fos), "pageInfo": {"hasNextPage": more}}}  # fmt: skip

    order = shopify_module._order(
        node(fo("gid://shopify/Location/1", [("I1", 2), (None, 1)]), fo(None, [("I1", 1), ("I2", 3)]))
    )
    assert order is not None and (order.order_id, order.created_ms, order.cancelled) == ("7", 1796594401000, False)
    assert order.units == {("I1", "gid://shopify/Location/1"): 2, ("I1", retail["id"]): 1, ("I2", retail["id"]): 3}
    assert shopify_module._order(node(fo("L", [("I1", 1)], more=True))) is None
    assert shopify_module._order(node(fo("L", [("I1", 1)]), more=True)) is None
    assert shopify_module._order(node(fo("L", [("I1", -1)]))) is None
    assert shopify_module._order({"id": "gid://shopify/Order/7", "createdAt": "yesterday"}) is None


async def test_a_stale_push_after_a_shopify_sale_goes_out_less_the_sale_until_its_order_is_booked(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A push answered CHANGE_FROM_QUANTITY_STALE because Shopify took an order the hub has not booked sets the
    hub's level less that order's units: set at the hub's level, the sold unit would be for sale again until the
    webhook came. The take-off is kept (pushes after it, a restart) until the order is booked, then never again."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    async with pushing_a(hub, state, shop) as (pusher, online, a):
        order = sell(shop, a, online, 1)  # Shopify 9; its orders/create webhook is on its way
        await hub.move((Kind.SALE, -2, "S1", "A"))  # the hub 8: the push (from 10) is answered stale
        await settle(pusher)
        assert shop.available(a.item_id, online) == 7, "the hub's 8 less the unit Shopify sold"
        assert pusher.pushed == {LevelKey(a.item_id, online): 7}
        assert pusher.less_unbooked == {LevelKey(a.item_id, online): 1}
        assert shop.stats.by_operation.get("orders") == 1
        assert (await Reconciler(pusher).reconcile()).divergences == ()

        await hub.move((Kind.SALE, -1, "S1", "A"))  # the hub 7, the order still on its way: not stale, still less
        await settle(pusher)
        assert shop.available(a.item_id, online) == 6

    async with hooked_pusher(hub, state, shop, {"S1": online}) as pusher:  # a restart keeps what was taken off
        await pusher.ready()
        assert pusher.less_unbooked == {LevelKey(a.item_id, online): 1}
        await book(hub, pusher, shop, order)  # the webhook arrives: the hub's 6 is Shopify's
        await settle(pusher)
        assert shop.available(a.item_id, online) == 6, "the sale is not taken off twice"
        assert pusher.less_unbooked == {}
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await settle(pusher)
        assert shop.available(a.item_id, online) == 5
        assert (await Reconciler(pusher).reconcile()).divergences == ()
    said = [r.getMessage() for r in caplog.records if "whose orders have not reached the hub" in r.getMessage()]
    assert said[0] == (
        f"channel web: Shopify sold 1 unit(s) at 1 level(s) whose orders have not reached the hub (first inventory "
        f"item {a.item_id} at {online}: the hub's level 8, 1 sold, 7 set); the levels are set less them, so those "
        "sales stay sold until their orders come"
    ), said


async def test_a_stale_push_whose_orders_cannot_be_read_sets_the_hubs_level_and_the_next_reads_from_as_far(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Shopify's orders unreadable (a token without read_orders) when a push is answered stale: the hub's level goes
    out as before, said once; the next push of the level reads them from the same start, so the sale is taken off
    then, until its order is booked."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    async with pushing_a(hub, state, shop) as (pusher, online, a):
        order = sell(shop, a, online, 1)
        shop.fail_orders = True
        await hub.move((Kind.SALE, -2, "S1", "A"))
        await settle(pusher)
        assert shop.available(a.item_id, online) == 8, "the hub's level, as before the read existed"
        assert pusher.less_unbooked == {}
        shop.fail_orders = False
        await hub.move((Kind.SALE, -1, "S1", "A"))  # not answered stale (Shopify 8): the orders read all the same
        await settle(pusher)
        assert shop.available(a.item_id, online) == 6, "the hub's 7 less the unit sold before the failed read"
        assert pusher.less_unbooked == {LevelKey(a.item_id, online): 1}
        await book(hub, pusher, shop, order)
        await settle(pusher)
        assert shop.available(a.item_id, online) == 6
        assert pusher.less_unbooked == {}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        (
            "channel web: Shopify's orders could not be read to tell a sale at Shopify from a drift when a push was "
            "answered stale (Shopify refused a request of channel web: Access denied for orders field. Required access: "
            "`read_orders` access scope.); until they can, a level set again goes out at the hub's level, a sale whose "
            "order has not reached the hub included"
        )
    ], warned


def _costs_within_one_query(shop: ShopifyOrdersEmulator) -> None:
    """Every query the connector sent asked for at most Shopify's 1,000 points (the stand-in refuses more)."""
    assert shop.stats.costs and max(cost for _, cost in shop.stats.costs) <= 1000, shop.stats.costs


async def test_an_order_shopify_has_not_routed_yet_counts_by_its_line_items(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator
) -> None:
    """An order without fulfilment orders yet (Shopify makes them just after the order) took its units all the same:
    its line items are read by a second, narrower query (at most 8 such orders of 25 lines: 625 points), and
    counted at the channel's only location. A reconciliation leaves the level standing; a push answered stale sets
    the hub's level less them."""
    async with pushing_a(hub, state, shop) as (pusher, online, a):
        order = shop.create_order([(a, 1), (None, 1)], ship_from=online, routed=False)  # and a custom item
        shop.drift(a.item_id, online, 9)
        assert (await Reconciler(pusher).reconcile()).divergences == (), "the unrouted order explains Shopify's 9"
        await settle(pusher)
        assert shop.available(a.item_id, online) == 9, "not pushed over"

        await hub.move((Kind.SALE, -2, "S1", "A"))  # the hub 8: the push (from 10) is answered stale
        await settle(pusher)
        assert shop.available(a.item_id, online) == 7, "the hub's 8 less the unit of the unrouted order"
        assert pusher.less_unbooked == {LevelKey(a.item_id, online): 1}

        shop.route(order["id"])  # routed now: counted by its fulfilment order, the same unit
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await settle(pusher)
        assert shop.available(a.item_id, online) == 6
        await book(hub, pusher, shop, order)
        await settle(pusher)
        assert shop.available(a.item_id, online) == 6 and pusher.less_unbooked == {}
    _costs_within_one_query(shop)
    assert ("nodes", 1 + 78) in shop.stats.costs, "one order of at most 25 lines: 78 points, and 1 for the list"


async def test_an_unrouted_order_counts_at_its_retail_location_or_the_order_location(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator
) -> None:
    """Two locations: an unrouted POS order counts at its retail location; an unrouted online order at the Shopify
    location of the channel's ``order_location`` (where the hub books such an order), and without one nowhere."""
    online, outlet = shop.add_location(), shop.add_location()
    a = shop.add_variant("A", stocked_at=[online, outlet])
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 20, "S2", "A"))
    pool = {"S1": online, "S2": outlet}
    spec = spec_of({"name": "web", "kind": "shopify", "url": shop.url, "pool": pool, "timeout_s": 5,
                    "order_location": "S1"}, shop.token)  # fmt: skip
    spec = replace(spec, webhook_secret=SECRET)
    async with aiohttp.ClientSession(trust_env=False) as session:
        pusher = ChannelPusher(spec, hub.store, state, ShopifyConnector(spec, session), hub.watch)
        await settle(pusher)
        shop.create_order([(a, 2)], pos_location=outlet, routed=False)
        shop.drift(a.item_id, outlet, 18)
        shop.create_order([(a, 3)], routed=False)  # online, not routed: Shopify took it from the online location
        shop.drift(a.item_id, online, 7)
        assert (await Reconciler(pusher).reconcile()).divergences == ()
        await settle(pusher)
        assert (shop.available(a.item_id, online), shop.available(a.item_id, outlet)) == (7, 18)

        pusher.connector.spec = replace(spec, order_location="")  # no order_location: nowhere to count it
        shop.drift(a.item_id, online, 6)
        shop.create_order([(a, 1)], routed=False)
        (d,) = (await Reconciler(pusher).reconcile()).divergences
        assert (d.key, d.channel_level, d.hub_level) == (LevelKey(a.item_id, online), 6, 10)
    _costs_within_one_query(shop)


async def test_an_order_booked_while_a_push_reads_shopifys_orders_is_not_set_one_sale_too_high(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator
) -> None:
    """The pusher reads the hub's level (8), the push is answered stale, and Shopify's order is booked at the hub
    while Shopify answers the orders read: the hub's level is 7 now and the order booked. Taken with the level read
    before, the order would be in neither (8 set, a sale too high until the next turn); the connector reads the
    orders the hub booked between two reads of its levels that agree, and sets 7 in the same turn."""
    async with pushing_a(hub, state, shop) as (pusher, online, a):
        order = sell(shop, a, online, 1)  # Shopify 9; its orders/create webhook is on its way
        await hub.move((Kind.SALE, -2, "S1", "A"))  # the hub 8: the push (from 10) is answered stale

        async def booked_meanwhile() -> None:
            await book(hub, pusher, shop, order)

        shop.before["orders"] = booked_meanwhile
        applied = len(shop.stats.history)
        assert await pusher.turn()
        assert "orders" not in shop.before, "the order was booked while Shopify answered the orders read"
        assert await hub.available("S1", "A") == 7
        assert [h[(a.item_id, online)] for h in shop.stats.history[applied:]] == [7], "never 8"
        assert pusher.less_unbooked == {}
        await settle(pusher)
        assert shop.available(a.item_id, online) == 7
        assert (await Reconciler(pusher).reconcile()).divergences == ()


# --- the store's stock count against Shopify's orders: the hub's clock, not the store PC's ---------------------------


async def next_second() -> None:
    """Until the wall clock's next whole second: Shopify stamps an order to the second, so an order placed before
    this and a count made after it are a second apart at Shopify too."""
    await asyncio.sleep(1.01 - time.time() % 1)


@pytest.mark.parametrize("skew_min", [10, -10], ids=["store-clock-ahead", "store-clock-behind"])
async def test_shopifys_orders_are_told_from_the_stores_count_by_the_hubs_clock_not_the_store_pcs(
    hub: Hub, state: SqliteChannelState, shop: ShopifyOrdersEmulator, skew_min: int
) -> None:
    """A stale push read Shopify's orders from no earlier than the stamp of the hub's last stock count, the store
    PC's clock: a PC 10 minutes behind read an order placed just before the count (after the last push), which the
    count saw, and took it off again (Shopify showed 8 of the 9 counted); one 10 minutes ahead left out an order
    just after the count (Shopify showed 8 where 7 are left). The count is placed on the hub's clock now
    (``ChannelPusher._count_times``, as for Square's register sales)."""
    online = shop.add_location()
    a = shop.add_variant("A", stocked_at=[online])
    key = LevelKey(a.item_id, online)
    await store_moves(hub, skew_min, (Kind.RECEIVE, 10, "S1", "A", 0))
    async with hooked_pusher(hub, state, shop, {"S1": online}) as pusher:
        await settle(pusher)
        sell(shop, a, online, 1)  # Shopify 9, after the last push: the store then counts 9, the unit already gone
        await next_second()
        await store_moves(hub, skew_min, (Kind.COUNT, 9, "S1", "A", 0))  # the push from 10 is answered stale
        await settle(pusher)
        assert shop.available(a.item_id, online) == 9, f"Shopify shows {shop.available(a.item_id, online)} of 9"
        assert pusher.less_unbooked == {}
        sell(shop, a, online, 1)  # Shopify 8, just after the count
        await store_moves(hub, skew_min, (Kind.SALE, -1, "S1", "A", 0))  # a sale at a till: the hub's 8, stale
        await settle(pusher)
        assert shop.available(a.item_id, online) == 7, f"Shopify shows {shop.available(a.item_id, online)} of 7"
        assert pusher.less_unbooked == {key: 1}
        assert (await Reconciler(pusher).reconcile()).divergences == ()
        assert shop.available(a.item_id, online) == 7
