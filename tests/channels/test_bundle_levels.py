"""Bundles at a channel: what a channel shows for a bundle (pure), the pusher moving a bundle's level at the
Shopify emulator when one of its parts moves, and a Shopify order of a bundle booked on its parts."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from hub.channels import Buffer, LevelKey, SqliteChannelState, channel_levels
from hub.channels.levels import bundle_levels, sku_levels
from hub.channels.orders import OrderContext, shopify_movements, to_events
from hub.storage.base import AgentIdentity
from protocol import Kind, wall_ms_now
from tests.channels.emulators.shopify import ShopifyEmulator
from tests.channels.emulators.shopify_orders import ShopifyOrdersEmulator
from tests.channels.helpers import Hub, wait_until
from tests.channels.test_shopify_push import pushing, shop_spec, shows, variants

KIT = {"A": 2, "C": 1}


@dataclass(frozen=True)
class Row:
    location: str
    sku: str
    available: int


# --- what a channel shows for a bundle (pure) -------------------------------------------------------------


def test_a_bundle_shows_what_the_pools_parts_make_less_the_buffers() -> None:
    pool = {"S1": "online", "S2": "online", "WH": "outlet"}
    rows = [Row("S1", "A", 7), Row("S2", "A", 4), Row("S1", "C", 9), Row("WH", "A", 6), Row("WH", "C", 1),
            Row("OTHER", "C", 100), Row("S1", "KIT", 50)]  # fmt: skip
    # online: A 11 → ⌊11 ÷ 2⌋ = 5, C 9 → 9: 5 kits; outlet: A 3, C 1: 1 kit
    assert bundle_levels(rows, pool, Buffer(), "kit-item", "KIT", KIT) == {
        LevelKey("kit-item", "online"): 5, LevelKey("kit-item", "outlet"): 1}  # fmt: skip
    # a part's buffer holds its units back from the bundle too, then the bundle's own buffer applies
    buffer = Buffer(skus={"A": 3, "C": 0, "KIT": 1})  # online: ⌊(11 − 3) ÷ 2⌋ = 4, less 1: 3
    assert bundle_levels(rows, pool, buffer, "kit-item", "KIT", KIT) == {
        LevelKey("kit-item", "online"): 3, LevelKey("kit-item", "outlet"): 0}  # fmt: skip
    assert bundle_levels(rows, pool, Buffer(units=2), "kit-item", "KIT", KIT)[LevelKey("kit-item", "online")] == 2
    # a part with no row in the pool makes no bundle
    assert bundle_levels(rows, pool, Buffer(), "kit-item", "KIT", {"A": 1, "Z": 1}) == {
        LevelKey("kit-item", "online"): 0, LevelKey("kit-item", "outlet"): 0}  # fmt: skip


def test_sku_levels_is_channel_levels_for_a_plain_sku_and_bundle_levels_for_a_bundle() -> None:
    pool, items = {"S1": "online"}, {"A": "a-item", "C": "c-item", "KIT": "kit-item"}
    rows = [Row("S1", "A", 5), Row("S1", "C", 1)]
    assert sku_levels(rows, pool, Buffer(), items, "A") == channel_levels(rows, pool, Buffer(), items, ["A"])
    assert sku_levels(rows, pool, Buffer(), items, "KIT", KIT) == {LevelKey("kit-item", "online"): 1}


@given(
    a=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    c=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    units=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    held=st.integers(0, 10),
)
def test_a_bundle_level_is_never_more_than_any_part_allows(a: list[int], c: list[int], units: tuple[int, int],
                                                             held: int) -> None:  # fmt: skip
    rows = [Row(f"S{i}", "A", n) for i, n in enumerate(a)] + [Row(f"S{i}", "C", n) for i, n in enumerate(c)]
    pool = {f"S{i}": "online" for i in range(3)}
    parts = {"A": units[0], "C": units[1]}
    (level,) = bundle_levels(rows, pool, Buffer(units=held), "kit", "KIT", parts).values()
    assert level >= 0
    for sku, n in parts.items():
        usable = max(0, sum(r.available for r in rows if r.sku == sku) - held)
        assert level * n <= usable  # selling the level whole never takes more of a part than the channel shows
    made = min(max(0, sum(r.available for r in rows if r.sku == s) - held) // n for s, n in parts.items())
    assert level == max(0, made - held)


# --- the pusher ------------------------------------------------------------------------------------------


async def test_a_part_sold_alone_moves_the_bundles_level_at_shopify(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator
) -> None:
    online = shopify.add_location()
    v = variants(shopify, (online,), "A", "C", "KIT")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 3, "S2", "C"))  # the parts in two pool stores
    await hub.store.put_bundle("KIT", KIT, "admin-1")
    spec = shop_spec(shopify, {"S1": online, "S2": online})
    async with pushing(spec, hub, state) as pusher:
        kit = (v["KIT"].item_id, online)
        await wait_until(shows(shopify, {kit: 3, (v["A"].item_id, online): 10}), "the bundle's first level")
        await hub.move((Kind.SALE, -1, "S2", "C"))  # a part sold alone: no bundle row moves at S1 or S2 …
        await wait_until(shows(shopify, {kit: 2, (v["C"].item_id, online): 2}), "the bundle's level after a C sale")
        await hub.move((Kind.SALE, -7, "S1", "A"))  # … A becomes the part that limits
        await wait_until(shows(shopify, {kit: 1, (v["A"].item_id, online): 3}), "the bundle's level after A sales")
        await hub.move((Kind.RECEIVE, 2, "OTHER", "C"))  # outside the pool: the channel is not told
        assert pusher.status.failures == 0
    assert shopify.available(*kit) == 1


async def test_a_bundle_sold_moves_its_parts_levels_and_its_own(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator
) -> None:
    online = shopify.add_location()
    v = variants(shopify, (online,), "A", "C", "KIT")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 6, "S1", "C"))
    await hub.store.put_bundle("KIT", KIT, "admin-1")
    spec = shop_spec(shopify, {"S1": online}, buffer={"skus": {"KIT": 1}})
    async with pushing(spec, hub, state):
        kit, a, c = ((v[s].item_id, online) for s in ("KIT", "A", "C"))
        await wait_until(shows(shopify, {kit: 4, a: 10, c: 6}), "first levels (the bundle less its buffer of 1)")
        await hub.move((Kind.SALE, -2, "S1", "KIT"))
        await wait_until(shows(shopify, {kit: 2, a: 6, c: 4}), "levels after two kits sold")
        await hub.store.put_bundle("KIT", {"A": 1, "C": 1}, "admin-1")  # a new recipe: the level follows at once
        await wait_until(shows(shopify, {kit: 3, a: 6, c: 4}), "the level after the recipe changed")


async def test_a_new_recipe_that_leaves_every_stores_bundle_row_as_it_was_still_moves_the_pools_level(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator
) -> None:
    """A channel sums a part over its pool before dividing: 3 A at each of two stores make 1 kit of 2 A at each, and
    3 online. A recipe of 3 A still makes 1 kit at each store, so no bundle row moved and nothing went on the feed:
    Shopify went on selling 3 kits where the pool's 6 A make 2 (an oversell of 3 A)."""
    online = shopify.add_location()
    v = variants(shopify, (online,), "A", "KIT")
    await hub.move((Kind.RECEIVE, 3, "S1", "A"), (Kind.RECEIVE, 3, "S2", "A"))
    await hub.store.put_bundle("KIT", {"A": 2}, "admin-1")
    spec = shop_spec(shopify, {"S1": online, "S2": online})
    async with pushing(spec, hub, state) as pusher:
        kit = (v["KIT"].item_id, online)
        await wait_until(shows(shopify, {kit: 3, (v["A"].item_id, online): 6}), "the bundle's first level")
        await hub.store.put_bundle("KIT", {"A": 3}, "admin-1")
        assert {(r.location, r.available) for r in await hub.store.counts(sku="KIT")} == {("S1", 1), ("S2", 1)}
        await wait_until(shows(shopify, {kit: 2}), "the pool's level of the new recipe")
        assert pusher.status.failures == 0


# --- a channel's order of a bundle -----------------------------------------------------------------------


async def test_a_shopify_order_of_a_bundle_reserves_then_sells_its_parts_at_the_fulfilling_store(hub: Hub) -> None:
    emu = ShopifyOrdersEmulator()
    wh = emu.add_location()
    kit = emu.add_variant("KIT")
    ctx = OrderContext("web", "shopify", {"WH": wh}, order_location="WH", skus={kit.variant_id: "KIT"})
    channel = AgentIdentity("channel:web", frozenset({"WH"}))
    await hub.move((Kind.RECEIVE, 10, "WH", "A"), (Kind.RECEIVE, 5, "WH", "C"))
    await hub.store.put_bundle("KIT", KIT, "admin-1")

    async def deliver(topic: str, payload: object) -> None:
        events = to_events(ctx, channel.agent_id, shopify_movements(ctx, topic, payload), wall_ms_now(), 86_400_000)
        assert events and all(e.sku == "KIT" for e in events)
        result = await hub.store.ingest(channel, 0, events)
        assert result.rejected == ()

    async def shelf() -> dict[str, tuple[int, int]]:
        return {r.sku: (r.on_hand, r.reserved) for r in await hub.store.counts(location="WH")}

    order = emu.create_order([(kit, 2)], ship_from=wh)
    await deliver("orders/create", order)
    assert await shelf() == {"A": (10, 4), "C": (5, 2), "KIT": (5, 2)}
    await deliver("orders/create", order)  # Shopify sends it again: nothing more is reserved
    fulfilment = emu.fulfil(order["id"], wh)
    await deliver("fulfillments/create", fulfilment)
    assert await shelf() == {"A": (6, 0), "C": (3, 0), "KIT": (3, 0)}
    kit_rows = [r for r in await hub.store.ledger(sku="KIT")]
    assert {r.kind for r in kit_rows} == {"reserve", "sale"} and all(r.expansion is not None for r in kit_rows)

