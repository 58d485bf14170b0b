"""Reconciliation: channel levels read back, divergences found, stored, listed and corrected.

The pushers here are not started: each test turns them by hand (``pusher.turn()``), so what the channel holds
at every step is known, and nothing waits on time. The emulators drift levels behind the hub's back.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from hub.channels import ChannelPusher, LevelKey, ShopifyConnector, SqliteChannelState, SquareConnector
from hub.channels import pusher as pusher_module
from hub.channels.connector import Moved
from hub.channels.pusher import Level
from hub.channels.reconcile import Reconciler, diverges, find_divergences, split_sold
from hub.channels.state import Divergence, Refusal
from hub.storage import open_store
from hub.storage.keys import exception_key
from hub.storage.postgres import PostgresHubStore
from protocol import Kind
from tests.channels.emulators.shopify import ShopifyEmulator
from tests.channels.emulators.square import SquareEmulator
from tests.channels.helpers import Hub, logged, one_sale_stands, settle, spec_of, wait_until
from tests.channels.test_square_push import CHANGES_PATH, book_square_order, past_the_change

K = LevelKey("item-1", "loc-1")


@asynccontextmanager
async def shop_pusher(hub: Hub, state: SqliteChannelState, emu: ShopifyEmulator, pool: dict[str, str],
                      **extra: Any) -> AsyncIterator[ChannelPusher]:  # fmt: skip
    spec = spec_of({"name": "web", "kind": "shopify", "url": emu.url, "pool": pool, "timeout_s": 5, **extra}, emu.token)
    async with aiohttp.ClientSession(trust_env=False) as session:
        yield ChannelPusher(spec, hub.store, state, ShopifyConnector(spec, session), hub.watch)


@asynccontextmanager
async def square_pusher(hub: Hub, state: SqliteChannelState, emu: SquareEmulator, pool: dict[str, str],
                        *, hooked: bool = False) -> AsyncIterator[ChannelPusher]:  # fmt: skip
    """``hooked``: the channel takes Square's order webhooks (a signature key and the notification URL)."""
    spec = spec_of({"name": "pos", "kind": "square", "url": emu.url, "pool": pool, "timeout_s": 5}, emu.token)
    if hooked:
        spec = replace(
            spec, webhook_secret="square-signature-key", notification_url="https://hub.test/v1/channels/pos/webhooks"
        )
    async with aiohttp.ClientSession(trust_env=False) as session:
        yield ChannelPusher(spec, hub.store, state, SquareConnector(spec, session), hub.watch)


# --- the rule, pure -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hub_level", "shown", "diverged"),
    [
        (100, 98, False),  # 2 units off, 2 % of 100: within both
        (100, 97, True),  # 3 units: more than 2
        (40, 38, False),  # 2 units is 5 % of 40: not above min(2, 2)
        (30, 32, True),  # 2 units is above 5 % of 30 (1.5)
        (10, 9, True),  # 1 unit is above 5 % of 10 (0.5)
        (0, 1, True),  # anything shown where the hub has none
        (7, 7, False),
    ],
)
def test_a_divergence_is_more_than_min_2_units_and_5_percent(hub_level: int, shown: int, diverged: bool) -> None:
    assert diverges(hub_level, shown) is diverged


def test_find_divergences_leaves_out_what_is_on_its_way_read_meanwhile_or_refused() -> None:
    k2, k3, k4, k5 = (LevelKey(f"item-{i}", "loc-1") for i in range(2, 6))
    expected = {k: Level("A", 10, 0) for k in (K, k2, k3, k4, k5)}
    read = {K: 3, k2: 3, k3: 3, k4: None, k5: 3}
    pushed = {K: 10, k2: 3, k3: 10, k5: 10}

    def find(behind: bool = False, skip: set[LevelKey] | None = None, refused: dict[LevelKey, Refusal] | None = None
             ) -> list[Divergence]:  # fmt: skip
        return find_divergences(
            expected, read, pushed, refused or {}, behind=behind, skip=skip or set(), feeder=lambda loc: "S1", at_ms=5
        )

    assert [d.key for d in find()] == [K, k2, k3, k5]  # k4: not stocked there, nothing to compare
    # behind: k2 still shows what it was last told (the newer level is on its way); K drifted all the same
    assert [d.key for d in find(behind=True)] == [K, k3, k5]
    assert [d.key for d in find(skip={K})] == [k2, k3, k5]  # confirmed while it was being read
    refused = {k3: Refusal("A", "S1", 10, "NON_MUTABLE_INVENTORY_ITEM", 1), k5: Refusal("A", "S1", 9, "x", 1)}
    assert [d.key for d in find(refused=refused)] == [K, k2, k5]  # k5 was refused at another level
    (d,) = [d for d in find() if d.key == K]
    assert (d.sku, d.location, d.hub_level, d.last_pushed, d.channel_level, d.found_at_ms) == ("A", "S1", 10, 10, 3, 5)


# --- against the emulators ------------------------------------------------------------------------------


async def test_a_shopify_level_drifted_behind_the_hubs_back_is_found_listed_and_corrected(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator
) -> None:
    online, outlet = shopify.add_location(), shopify.add_location()
    a = shopify.add_variant("A", stocked_at=[online, outlet])
    shopify.add_variant("B", stocked_at=[online, outlet])
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 100, "WH", "A"), (Kind.RECEIVE, 4, "S1", "B"))
    async with shop_pusher(hub, state, shopify, {"S1": online, "WH": outlet}) as pusher:
        await settle(pusher)
        assert (shopify.available(a.item_id, online), shopify.available(a.item_id, outlet)) == (10, 100)
        reconciler = Reconciler(pusher)
        first = await reconciler.reconcile()
        assert (first.done.checked, first.divergences) == (4, ())

        shopify.drift(a.item_id, online, 3)  # an edit in the Shopify admin
        shopify.drift(a.item_id, outlet, 98)  # within min(2 units, 5 %) of 100: left alone
        found = await reconciler.reconcile()
        (d,) = found.divergences
        assert (d.key, d.sku, d.location, d.hub_level, d.last_pushed, d.channel_level) == (
            LevelKey(a.item_id, online), "A", "S1", 10, 10, 3,
        )  # fmt: skip
        assert d.divergence_id == 1 and d.corrected_at_ms is None and found.done.diverged == 1
        assert await state.open_divergences("web") == 1
        (exc,) = [e for e in await hub.store.exceptions() if e.kind == "channel_divergence"]
        assert (exc.location, exc.sku, exc.data["channel_level"], exc.data["hub_level"]) == ("S1", "A", 3, 10)
        assert "showed 3 of A" in exc.detail and "is pushing its level there again" in exc.detail
        assert await hub.store.exceptions(location="WH") == []

        misses = shopify.stats.cas_misses
        await settle(pusher)  # the correction, from the channel's actual quantity: no compare-and-set miss
        assert shopify.available(a.item_id, online) == 10 and shopify.stats.cas_misses == misses
        assert shopify.available(a.item_id, outlet) == 98  # within tolerance: only the diverging level is set
        (stored,) = await state.divergences("web", 10)
        assert stored.corrected_at_ms is not None and await state.open_divergences("web") == 0
        (exc,) = [e for e in await hub.store.exceptions() if e.kind == "channel_divergence"]
        assert "the hub pushed its level there again at" in exc.detail
        assert (await reconciler.reconcile()).divergences == ()
    assert await state.reconciled("web") == reconciler.last


async def test_a_correction_found_before_a_restart_is_pushed_after_it(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator
) -> None:
    """A reconciliation stores the divergence, and the correction waits for the pusher's next turn; a hub stopped
    before that turn (the channel failing meanwhile, a deploy) kept it in memory only. Before, the hub started again
    pushed nothing there — no count had moved — and Shopify went on showing 3 where the hub has 10 until the next
    reconciliation, up to reconcile_s later, while the exception said the hub was pushing its level there again."""
    online = shopify.add_location()
    a = shopify.add_variant("A", stocked_at=[online])
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with shop_pusher(hub, state, shopify, {"S1": online}) as first:
        await settle(first)
        shopify.drift(a.item_id, online, 3)  # an edit in the Shopify admin
        (d,) = (await Reconciler(first).reconcile()).divergences
        assert (d.hub_level, d.channel_level) == (10, 3)
    async with shop_pusher(hub, state, shopify, {"S1": online}) as second:  # the hub started again
        misses = shopify.stats.cas_misses
        await settle(second)
        assert shopify.available(a.item_id, online) == 10 and shopify.stats.cas_misses == misses
    (stored,) = await state.divergences("web", 10)
    assert stored.corrected_at_ms is not None and await state.open_divergences("web") == 0


async def test_a_square_count_newer_than_the_hubs_is_corrected_with_the_time_of_the_correction(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    loc = square.add_location()
    a, b = square.add_variation("A"), square.add_variation("B")
    await hub.move((Kind.RECEIVE, 8, "S1", "A"), (Kind.RECEIVE, 5, "S1", "B"))
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)
        assert (square.quantity(a, loc), square.quantity(b, loc)) == (8, 5)
        square.drift(a, loc, 2)  # a sale rung up at a Square register the hub never heard of
        square.forget(b, loc)  # Square holds no count: it shows 0
        found = await Reconciler(pusher).reconcile()
        assert sorted((d.sku, d.channel_level, d.hub_level) for d in found.divergences) == [("A", 2, 8), ("B", 0, 5)]
        await settle(pusher)
    assert (square.quantity(a, loc), square.quantity(b, loc)) == (8, 5)  # a count older than Square's would not be
    assert await state.open_divergences("pos") == 0


async def test_levels_on_their_way_are_not_divergences_but_a_drift_meanwhile_is(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator
) -> None:
    loc = shopify.add_location()
    a, b = shopify.add_variant("A", stocked_at=[loc]), shopify.add_variant("B", stocked_at=[loc])
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 10, "S1", "B"))
    async with shop_pusher(hub, state, shopify, {"S1": loc}) as pusher:
        await settle(pusher)
        await hub.move((Kind.SALE, -6, "S1", "A"), (Kind.SALE, -6, "S1", "B"))  # not pushed yet: the pusher is behind
        shopify.drift(b.item_id, loc, 1)  # and B moved at Shopify meanwhile
        found = await Reconciler(pusher).reconcile()
        assert [(d.sku, d.channel_level, d.hub_level, d.last_pushed) for d in found.divergences] == [("B", 1, 4, 10)]
        await settle(pusher)
    assert (shopify.available(a.item_id, loc), shopify.available(b.item_id, loc)) == (4, 4)


async def test_a_level_refused_for_good_is_not_a_divergence_and_a_refresh_sends_it_again(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator
) -> None:
    loc = shopify.add_location()
    a, b = shopify.add_variant("A", stocked_at=[loc]), shopify.add_variant("B", stocked_at=[loc])
    shopify.non_mutable.add(a.item_id)  # a bundle's parent at Shopify: the API may not set it
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 7, "S1", "B"))
    async with shop_pusher(hub, state, shopify, {"S1": loc}) as pusher:
        await settle(pusher)
        assert (shopify.available(a.item_id, loc), shopify.available(b.item_id, loc)) == (0, 7)
        assert list(await state.refusals("web")) == [LevelKey(a.item_id, loc)]
        assert (await Reconciler(pusher).reconcile()).divergences == ()  # an exception of its own already
        shopify.non_mutable.clear()  # fixed at Shopify
        await pusher.refresh_mapping()
        await settle(pusher)
    assert shopify.available(a.item_id, loc) == 10 and await state.refusals("web") == {}


async def test_the_loop_reconciles_when_asked_and_its_last_time_survives_a_restart(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator
) -> None:
    loc = shopify.add_location()
    a = shopify.add_variant("A", stocked_at=[loc])
    await hub.move((Kind.RECEIVE, 5, "S1", "A"))
    async with shop_pusher(hub, state, shopify, {"S1": loc}, reconcile_s=3600) as pusher:
        await settle(pusher)
        shopify.drift(a.item_id, loc, 0)
        async with Reconciler(pusher) as reconciler:
            reconciler.request()  # due in an hour; asked now

            async def done() -> bool:
                return reconciler.last is not None

            await wait_until(done, "the loop reconciled")
        assert reconciler.last is not None and reconciler.last.diverged == 1
        await settle(pusher)
        assert shopify.available(a.item_id, loc) == 5
        again = Reconciler(pusher)
        async with again:
            await wait_until(lambda: _async(again.last is not None), "the stored reconciliation is read at start")
        assert again.last == reconciler.last


async def test_divergences_are_kept_per_channel_newest_first_across_a_reopen(hub: Hub) -> None:
    async with await SqliteChannelState.open(hub.db_path) as state:
        rows = [Divergence(LevelKey(f"i{n}", "L"), f"S{n}", None, 5, None, n, 1_000 + n) for n in range(5)]
        stored = await state.add_divergences("web", rows[:3])
        assert [d.divergence_id for d in stored] == [1, 2, 3]
        assert [d.divergence_id for d in await state.add_divergences("web", rows[3:])] == [4, 5]
        assert [d.divergence_id for d in await state.add_divergences("pos", rows[:1])] == [1]
        assert await state.close_divergences("web", [LevelKey("i1", "L")], 9_000) == 1
        assert await state.close_divergences("web", [LevelKey("i1", "L")], 9_500) == 0  # closed once
    async with await SqliteChannelState.open(hub.db_path) as state:
        page = await state.divergences("web", 2)
        assert [d.divergence_id for d in page] == [5, 4]
        rest = await state.divergences("web", 10, before_id=4)
        assert [(d.divergence_id, d.corrected_at_ms) for d in rest] == [(3, None), (2, 9_000), (1, None)]
        assert rest[1].key == LevelKey("i1", "L") and rest[1].channel_level == 1
        assert await state.open_divergences("web") == 4 and await state.open_divergences("pos") == 1


async def test_channel_exceptions_read_the_same_on_postgresql(pg_url: str) -> None:
    async with PostgresHubStore.open(pg_url) as store:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.executemany(
                "INSERT INTO channel_divergences (channel, divergence_id, level_key, sku, location, hub_level, "
                "last_pushed, channel_level, found_at_ms, corrected_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                [("web", n, f"item-{n}\tL1", "A", "S1" if n % 2 else None, 10, 10, 3, 5_000, None) for n in range(1, 4)],
            )
            await conn.execute(
                "INSERT INTO channel_refusals (channel, level_key, sku, location, quantity, detail, at_ms) "
                "VALUES ('web', $1, 'B', 'S1', 4, 'NON_MUTABLE_INVENTORY_ITEM: not adjustable.', 5000)",
                "item-9\tL1",
            )
        finally:
            await conn.close()
        listed = await store.exceptions()
        assert [(e.kind, e.data.get("id")) for e in listed] == [
            ("channel_divergence", 1), ("channel_divergence", 2), ("channel_divergence", 3), ("channel_refused", None),
        ]  # fmt: skip
        assert [e.kind for e in await store.exceptions(location="S1")] == ["channel_divergence"] * 2 + ["channel_refused"]
        after = await store.exceptions(after=exception_key(listed[1]))
        assert after == listed[2:]
        assert "refused to set B (item item-9) at its location L1 to 4" in listed[3].detail


async def test_channel_exceptions_page_the_same_on_sqlite(tmp_path: Any) -> None:
    db = tmp_path / "hub.db"
    async with open_store(db) as store, await SqliteChannelState.open(db) as state:
        await state.add_divergences("web", [Divergence(LevelKey(f"i{n}", "L"), "A", "S1", 5, 5, 1, 7_000) for n in range(3)])
        await state.refuse("web", {LevelKey("i9", "L"): Refusal("B", None, 4, "INVALID_INVENTORY_ITEM: gone.", 7_000)})
        listed = await store.exceptions()
        assert [e.kind for e in listed] == ["channel_divergence"] * 3 + ["channel_refused"]
        assert await store.exceptions(after=exception_key(listed[0]), limit=2) == listed[1:3]
        assert [e.kind for e in await store.exceptions(location="S1")] == ["channel_divergence"] * 3


async def _async(value: bool) -> bool:
    return value


async def test_a_sku_renamed_at_shopify_is_mapped_again_by_the_next_reconciliation(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    online = shopify.add_location()
    a = shopify.add_variant("A", stocked_at=[online])
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 3, "S1", "C"))
    async with shop_pusher(hub, state, shopify, {"S1": online}) as pusher:
        await settle(pusher)
        assert shopify.available(a.item_id, online) == 10
        a.sku = "C"  # the merchant renames the variant's SKU in the Shopify admin: it now sells C, of which 3
        (d,) = (await Reconciler(pusher).reconcile()).divergences  # the listing is read first: the item sells C
        assert pusher.items == {"C": a.item_id}
        assert (d.sku, d.hub_level, d.channel_level) == ("C", 3, 10)  # it showed A's 10 for C
        await settle(pusher)
        assert shopify.available(a.item_id, online) == 3  # not A's 10: no overselling C
    assert f"channel web: the channel's items changed since the mapping was loaded (SKU A no longer listed, SKU C now on item {a.item_id}); loading the mapping again" in caplog.text


async def test_a_square_variation_deleted_and_created_again_gets_the_hubs_level_after_a_reconciliation(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    loc = square.add_location()
    old = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 8, "S1", "A"))
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)
        del square.variations[old]  # deleted in the Square dashboard …
        square.forget(old, loc)
        new = square.add_variation("A")  # … and created again: a new id, no count (Square shows 0)
        await Reconciler(pusher).reconcile()
        assert pusher.items == {"A": new}
        await settle(pusher)
        assert square.quantity(new, loc) == 8


async def test_a_level_pushed_after_a_restart_with_the_clock_set_back_is_not_older_than_the_last_one(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Square keeps the count with the latest ``occurred_at``. A hub whose clock ran a minute ahead pushed the
    mapping's levels stamped with it; restarted with its clock set right (or taken over by a hub whose clock is
    behind), its next level must still be stamped after that push, or Square keeps the old count."""
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 8, "S1", "A"))
    ahead_ms = pusher_module.wall_ms_now() + 60_000
    monkeypatch.setattr(pusher_module, "wall_ms_now", lambda: ahead_ms)
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)  # the mapping's levels, stamped a minute ahead
    assert square.quantity(a, loc) == 8
    monkeypatch.undo()  # the clock is set right; the hub starts again
    await hub.move((Kind.SALE, -3, "S1", "A"))
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)
    assert square.quantity(a, loc) == 5  # not the 8 Square would keep as the newer count


async def test_a_mapping_refresh_keeps_the_stamps_square_needs_after_a_clock_set_back(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh forgot the stored stamps with the confirmed levels (and a push confirmed after it stored the
    clock's time, not the stamp it went out with): a hub restarted with its clock set back then stamped its next
    level before the count a clock running ahead had pushed, and Square kept that old count."""
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 8, "S1", "A"))
    ahead_ms = pusher_module.wall_ms_now() + 60_000
    monkeypatch.setattr(pusher_module, "wall_ms_now", lambda: ahead_ms)
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)  # the mapping's levels, stamped a minute ahead
    monkeypatch.undo()  # the clock is set right
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await pusher.refresh_mapping()  # its push does not get out before the next restart
    await hub.move((Kind.SALE, -3, "S1", "A"))
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)
    assert square.quantity(a, loc) == 5  # not the 8 Square would keep as the newer count
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await pusher.refresh_mapping()
        await settle(pusher)  # confirmed: what is stored is the stamp it went out with, not the clock's time
    await hub.move((Kind.SALE, -1, "S1", "A"))
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)
    assert square.quantity(a, loc) == 4


async def test_a_count_square_kept_over_the_push_is_not_confirmed_and_goes_out_again_stamped_after_it(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Square's answer to a push was not read: a count Square held stamped later than the push's occurred_at (a
    register edit made after the hub's change but before its push) stayed at Square, and the hub recorded its own
    level there as confirmed — the channel sold from a count the hub never saw until a reconciliation."""
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)
        await hub.move((Kind.SALE, -2, "S1", "A"))  # the hub's change: A is 8 …
        # … then an edit at a register, stamped later than that change: a millisecond on, as "now" could be the
        # change's own millisecond, and Square's tie goes to the push recorded after it
        square.register_count(a, loc, 7, occurred_at=datetime.now(UTC) + timedelta(milliseconds=1))
        pushes = square.stats.batches_applied
        await settle(pusher)
        assert square.quantity(a, loc) == 8  # the hub's level, not the register's 7
        assert square.stats.batches_applied == pushes + 2  # the push Square did not take, and the one after it
        assert pusher.pushed == {LevelKey(a, loc): 8}
        assert (await state.pushed("pos")) == {LevelKey(a, loc): 8}
    assert (
        "channel pos: Square kept its own count at 1 level(s) it holds stamped later than the push (first A at "
        f"{loc}: 7, not 8, its count of "
    ) in caplog.text
    assert "pushing the hub's level again at 1 of them, stamped after the channel's count" in caplog.text


async def test_a_count_square_keeps_whatever_the_stamp_is_left_to_reconciliation_after_two_pushes_more(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)
        square.register_count(a, loc, 7, occurred_at=datetime(2999, 1, 1, tzinfo=UTC))  # no push can be later
        await hub.move((Kind.SALE, -2, "S1", "A"))
        pushes = square.stats.batches_applied
        await settle(pusher)  # ends: the level is not pushed in a loop
        assert square.stats.batches_applied == pushes + 1 + pusher_module.KEPT_AGAIN_MAX
        assert square.quantity(a, loc) == 7 and pusher.pushed == {}
    assert "they are left to the next reconciliation (kept again after pushes stamped after it)" in caplog.text


# --- a sale at a Square register whose order has not reached the hub ---------------------------------------


def test_split_sold_leaves_what_the_channels_own_sales_explain_and_pushes_over_the_rest() -> None:
    k2, k3, k4 = (LevelKey(f"item-{i}", "loc-1") for i in range(2, 5))
    found = [
        Divergence(K, "A", "S1", 10, 10, 9, 5),  # counted 10, one sale since: 9, as the hub's 10 less that sale
        Divergence(k2, "B", "S1", 10, 10, 9, 5),  # no record of sales: a drift
        Divergence(k3, "C", "S1", 20, 10, 9, 5),  # counted 10, one sale since, but the hub's level is 20 now
        Divergence(k4, "D", "S1", 10, 10, 4, 5),  # counted 10, six sales since
    ]
    sold = {K: Moved(10, 9, 1), k3: Moved(10, 9, 1), k4: Moved(10, 4, 6)}
    drift, left = split_sold(found, sold, behind=False)
    assert ([d.sku for d in drift], [d.sku for d in left]) == (["B", "C"], ["A", "D"])
    drift, left = split_sold(found, sold, behind=True)  # C's newer level is on its way: the pusher is behind
    assert ([d.sku for d in drift], [d.sku for d in left]) == (["B"], ["A", "C", "D"])


async def test_a_register_sale_whose_order_has_not_reached_the_hub_is_not_pushed_over_by_a_reconciliation(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A sale rung up at a Square register after the hub's last count there: Square shows a unit less than the
    hub until the sale's order comes back. A reconciliation in between took that for a drift and pushed the hub's
    level over Square's: Square showed the sold unit for sale again (an oversell) until the order came back and the
    next push corrected it. Square's record says the count is the hub's own less a sale: it stands."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with square_pusher(hub, state, square, {"S1": loc}, hooked=True) as pusher:
        await settle(pusher)
        square.register_sale(a, loc, 1, order_id="ORDER-1")  # confirmed at Square; its order is on its way to the hub
        applied = square.stats.batches_applied
        found = await Reconciler(pusher).reconcile()
        assert (found.done.checked, found.divergences) == (1, ())
        await settle(pusher)
        assert square.quantity(a, loc) == 9 and square.stats.batches_applied == applied, "not pushed over"
        assert await state.open_divergences("pos") == 0
        assert [e for e in await hub.store.exceptions() if e.kind == "channel_divergence"] == []
        (query,) = square.stats.change_queries  # one read of Square's record, for the level that diverged
        assert (query["catalog_object_ids"], query["location_ids"]) == ([a], [loc])

        # the order comes back: the hub's level is Square's
        await book_square_order(hub, pusher, loc, [(a, 1)], order_id="ORDER-1")
        await settle(pusher)
        assert square.quantity(a, loc) == 9 and await hub.available("S1", "A") == 9
        assert len(square.stats.change_queries) == 2, "one read of Square's sales before the count of 9 went out"
        assert (await Reconciler(pusher).reconcile()).divergences == ()
        assert len(square.stats.change_queries) == 2, "nothing diverged: Square's record is not read"
    assert logged(caplog, "sold units after the hub's last count") == [one_sale_stands("pos", "Square", loc)]


async def test_a_count_kept_at_square_or_a_difference_no_sale_explains_is_still_pushed_over(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A sold at the register (left alone); B counted at the register, then sold there (the count standing is
    Square's own: a drift); C sold and two thrown away as waste (no sale explains the waste); D counted at the
    register stamped the very instant of the hub's count (Square keeps the one it received later: its own), then
    sold: B, C and D are divergences, said and pushed over as before."""
    loc = square.add_location()
    a, b, c, d = (square.add_variation(sku) for sku in "ABCD")
    await hub.move(*((Kind.RECEIVE, 10, "S1", sku) for sku in "ABCD"))
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)
        now = datetime.now(UTC)
        square.register_sale(a, loc, 1)
        square.register_count(b, loc, 7, occurred_at=now)
        square.register_sale(b, loc, 1, occurred_at=now + timedelta(milliseconds=1))
        square.register_sale(c, loc, 1)
        square.register_waste(c, loc, 2)
        ours = square.history[(d, loc)][-1]
        assert ours.reference_id is not None and ours.reference_id.startswith("shelfsync:")
        square.register_count(d, loc, 6, occurred_at=ours.occurred)
        square.register_sale(d, loc, 1)
        found = await Reconciler(pusher).reconcile()
        assert sorted((x.sku, x.channel_level) for x in found.divergences) == [("B", 6), ("C", 7), ("D", 5)]
        await settle(pusher)
        assert [square.quantity(v, loc) for v in (a, b, c, d)] == [9, 10, 10, 10]
        assert await state.open_divergences("pos") == 0
    assert "channel pos: Square showed 6 of B at" in caplog.text and "pushing the hub's level again" in caplog.text


async def test_a_register_sale_while_a_hub_change_waits_is_left_to_the_push_that_carries_it(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator
) -> None:
    """The hub received 5 more; before its push goes out, a sale at the register. The reconciliation's correction
    was stamped with its own time, after the sale: Square took the hub's 15 over it. The push that carries the
    receipt is stamped with the receipt's time, before the sale, and Square applies the sale on top of it."""
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)
        await hub.move((Kind.RECEIVE, 5, "S1", "A"))  # not pushed yet: the pusher is behind
        await past_the_change(hub, "S1", "A")
        square.register_sale(a, loc, 1)
        assert (await Reconciler(pusher).reconcile()).divergences == ()
        await settle(pusher)
        assert square.quantity(a, loc) == 14 and pusher.pushed == {LevelKey(a, loc): 14}


async def test_when_squares_record_cannot_be_read_a_reconciliation_pushes_over_as_before_said_once(
    hub: Hub, state: SqliteChannelState, square: SquareEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hub.channels")
    loc = square.add_location()
    a = square.add_variation("A")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with square_pusher(hub, state, square, {"S1": loc}) as pusher:
        await settle(pusher)
        for _ in range(2):  # twice: a sale at the register before each reconciliation, Square's record unreadable
            square.fault_at(CHANGES_PATH, "http_503")
            square.register_sale(a, loc, 1)
            (found,) = (await Reconciler(pusher).reconcile()).divergences
            assert (found.channel_level, found.hub_level) == (9, 10)
            await settle(pusher)
            assert square.quantity(a, loc) == 10  # as before: the hub's level, pushed over the sale
        square.register_sale(a, loc, 1)  # the record can be read again
        assert (await Reconciler(pusher).reconcile()).divergences == ()
        await settle(pusher)
        assert square.quantity(a, loc) == 9
    (stands,) = [r for r in caplog.records if "sold units after the hub's last count" in r.getMessage()]
    assert stands.levelno == logging.WARNING and stands.getMessage().endswith(
        "its count stands rather than being pushed over until the sales reach the hub; this channel takes no order "
        "webhooks, so only the store's own booking of them brings them there"
    )
    fell_back = [r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()]
    assert len(fell_back) == 1, "said once while it goes on"
    assert fell_back[0].startswith(
        "channel pos: Square's inventory changes could not be read to tell a sale at Square from a drift when "
        "reconciling (Square failed reading its inventory changes for channel pos (HTTP 503"
    )
    assert fell_back[0].endswith(
        "); until they can, every level that diverges is pushed over, a sale whose order has not reached the hub "
        "included"
    )
    assert sum("can be read again, so a reconciliation" in r.getMessage() for r in caplog.records) == 1
