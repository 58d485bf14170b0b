"""The Shopify pusher against the Shopify emulator, with a real hub store and its real change feed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.channels import Backoff, ChannelPusher, ChannelSpec, LevelKey, ShopifyConnector, SqliteChannelState
from hub.channels.connector import ChannelUnavailable, Target
from hub.channels.shopify import THROTTLED_BLIND_WAIT_S
from protocol import Kind, wall_ms_now
from protocol.retry import PEER_RETRY_AFTER_DEFAULT_S, PEER_RETRY_AFTER_MAX_S
from tests.channels.emulators.shopify import ShopifyEmulator, Variant
from tests.channels.helpers import Hub, pushed_to_head, spec_of, wait_until

FAST = Backoff(base_s=0.02, max_s=0.2)


def shop_spec(emu: ShopifyEmulator, pool: dict[str, str], **extra: Any) -> ChannelSpec:
    return spec_of({"name": "web", "kind": "shopify", "url": emu.url, "pool": pool, "timeout_s": 2, **extra}, emu.token)


@asynccontextmanager
async def pushing(
    spec: ChannelSpec, hub: Hub, state: SqliteChannelState, **connector_kw: Any
) -> AsyncIterator[ChannelPusher]:
    async with aiohttp.ClientSession() as session:
        connector = ShopifyConnector(spec, session, **connector_kw)
        async with ChannelPusher(spec, hub.store, state, connector, hub.watch, backoff=FAST) as pusher:
            yield pusher


def shows(emu: ShopifyEmulator, expected: dict[tuple[str, str], int]) -> Callable[[], Any]:
    async def check() -> bool:
        return all(emu.available(item, loc) == q for (item, loc), q in expected.items())

    return check


@pytest.fixture
def web(shopify: ShopifyEmulator) -> tuple[str, str]:
    return shopify.add_location(), shopify.add_location()  # the web shop's two Shopify locations


def variants(emu: ShopifyEmulator, locations: tuple[str, str], *skus: str) -> dict[str, Variant]:
    return {sku: emu.add_variant(sku, stocked_at=locations, available=0) for sku in skus}


async def test_levels_are_right_after_a_burst(hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]) -> None:
    online, outlet = web
    v = variants(shopify, web, "A", "B", "C")
    spec = shop_spec(shopify, {"S1": online, "S2": online, "WH": outlet}, buffer={"units": 1, "skus": {"C": 0}})
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 5, "S2", "A"), (Kind.RECEIVE, 7, "WH", "A"))
    await hub.move((Kind.RECEIVE, 3, "S1", "B"), (Kind.RECEIVE, 2, "S1", "C"), (Kind.RECEIVE, 50, "OTHER", "C"))
    async with pushing(spec, hub, state):
        for i in range(30):  # a burst of sales while the pusher runs
            await hub.move((Kind.SALE, -1, "S1" if i % 2 else "S2", "A"), (Kind.SALE, -1, "WH", "A"))
        await hub.move((Kind.SALE, -3, "S1", "B"))
        # A: S1 10-15+20 = 15, S2 5-15 = -10 (available 0, never below), WH 7-30+40 = 17; B: 3-3 = 0
        await hub.move((Kind.RECEIVE, 20, "S1", "A"), (Kind.RECEIVE, 40, "WH", "A"))
        assert await hub.available("S2", "A") == 0
        expected = {
            (v["A"].item_id, online): 15 + 0 - 1,  # the pool's available minus a buffer of 1
            (v["A"].item_id, outlet): 17 - 1,
            (v["B"].item_id, online): 0,
            (v["C"].item_id, online): 2,  # OTHER is not in the pool; C's buffer is 0
            (v["C"].item_id, outlet): 0,
        }
        await wait_until(shows(shopify, expected), "Shopify shows the hub's levels minus the buffer")
    assert shopify.stats.throttled == 0


async def test_a_mutation_sets_available_with_compare_and_set_an_idempotency_key_a_reason_and_a_reference(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    online, _ = web
    v = variants(shopify, web, "A")
    await hub.move((Kind.RECEIVE, 6, "S1", "A"))
    async with pushing(shop_spec(shopify, {"S1": online}), hub, state):
        await wait_until(shows(shopify, {(v["A"].item_id, online): 6}), "the first level")
        await hub.move((Kind.SALE, -2, "S1", "A"))
        await wait_until(shows(shopify, {(v["A"].item_id, online): 4}), "the level after the sale")
    first, second = shopify.stats.inputs
    for given in (first, second):
        assert (given["name"], given["reason"], given["referenceDocumentUri"]) == (
            "available", "correction", "shelfsync://hub/channel/web",
        )  # fmt: skip
    assert first["quantities"] == [{"inventoryItemId": v["A"].item_id, "locationId": online, "quantity": 6,
                                    "changeFromQuantity": 0}]  # fmt: skip
    assert second["quantities"][0]["changeFromQuantity"] == 6  # what Shopify last confirmed
    assert len(shopify.stats.keys) == 2 and all(len(k) == 36 for k in shopify.stats.keys)  # a UUID each


async def test_a_burst_of_1000_sales_costs_a_handful_of_calls_and_the_last_value_wins(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    online, _ = web
    v = variants(shopify, web, "A")
    spec = shop_spec(shopify, {"S1": online}, coalesce_s=0.25)
    await hub.move((Kind.RECEIVE, 1500, "S1", "A"))
    async with pushing(spec, hub, state) as pusher:
        await wait_until(shows(shopify, {(v["A"].item_id, online): 1500}), "the first level is out")
        before = shopify.stats.mutations_applied
        for _ in range(1000):  # 1,000 sales, each its own sync and its own change in the feed
            await hub.move((Kind.SALE, -1, "S1", "A"))
        await wait_until(shows(shopify, {(v["A"].item_id, online): 500}), "the last value is out")
        await asyncio.sleep(0)
        calls = shopify.stats.mutations_applied - before
        assert 1 <= calls <= 50, f"1,000 sales cost {calls} calls"
        assert shopify.stats.history[-1] == {(v["A"].item_id, online): 500}
        latest = await hub.store.latest_change_id()
        await wait_until(lambda: _async(pusher.status.cursor == latest), "the cursor is past the last sale")
        assert shopify.stats.history[-1] == {(v["A"].item_id, online): 500}, "nothing more went out"


async def test_a_backlog_read_at_once_is_one_call(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    online, _ = web
    v = variants(shopify, web, "A")
    await hub.move((Kind.RECEIVE, 1000, "S1", "A"))
    for _ in range(999):
        await hub.move((Kind.SALE, -1, "S1", "A"))
    spec = shop_spec(shopify, {"S1": online})
    async with pushing(spec, hub, state):
        await wait_until(shows(shopify, {(v["A"].item_id, online): 1}), "the level is out")
    assert shopify.stats.mutations_applied == 1
    assert shopify.stats.history == [{(v["A"].item_id, online): 1}]


async def test_throttling_is_paced_by_the_leaky_bucket_not_a_storm_of_throttled(
    hub: Hub, state: SqliteChannelState, web: tuple[str, str]
) -> None:
    async with ShopifyEmulator(maximum_available=60.0, restore_rate=100.0) as shop:
        loc = shop.add_location()
        skus = [f"T{i:02d}" for i in range(25)]
        v = {sku: shop.add_variant(sku, stocked_at=[loc]) for sku in skus}
        shop.drain(60.0)  # another app just emptied the bucket: the first call is THROTTLED
        await hub.move(*[(Kind.RECEIVE, i + 1, "S1", sku) for i, sku in enumerate(skus)])
        spec = shop_spec(shop, {"S1": loc}, batch_max=1)  # one call per level: 25 mutations of 10 points
        async with pushing(spec, hub, state) as pusher:
            await wait_until(
                shows(shop, {(v[s].item_id, loc): i + 1 for i, s in enumerate(skus)}), "every level is out"
            )
        assert shop.stats.mutations_applied == 25
        assert shop.stats.throttled <= 2, f"{shop.stats.throttled} THROTTLED answers"
        assert isinstance(pusher.connector, ShopifyConnector) and pusher.connector.throttle is not None


async def test_a_throttled_answer_waits_for_the_missing_points_and_sends_the_same_mutation_again(
    hub: Hub, state: SqliteChannelState
) -> None:
    async with ShopifyEmulator(restore_rate=20.0) as shopify:  # refills slower than a coalesced turn comes
        await _throttled_once(hub, state, shopify)


async def test_a_throttled_answer_without_its_throttle_status_waits_before_the_same_mutation_goes_again(
    shopify: ShopifyEmulator,
) -> None:
    online = shopify.add_location()
    item = shopify.add_variant("A", stocked_at=[online], available=0).item_id
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)  # recorded, not waited: the test asserts the waits asked for, not how long they took

    async with aiohttp.ClientSession() as session:
        connector = ShopifyConnector(shop_spec(shopify, {"S1": online}), session, sleep=sleep)
        # the first push knows no bucket yet; the second one's model (a full bucket, from the first answer) is stale
        for n, (before, after) in enumerate([(0, 7), (7, 6)]):
            slept.clear()
            shopify.faults.queue("throttle_bare", "throttle_bare")  # THROTTLED, without saying how the bucket stands
            confirmed = await connector.push({LevelKey(item, online): Target(after, before, 1)}, f"web:{n}")
            assert confirmed == {LevelKey(item, online): after} and shopify.available(item, online) == after
            assert shopify.stats.by_operation["inventorySetQuantities"] == 3 * (n + 1)
            assert len(slept) == 2 and all(s >= THROTTLED_BLIND_WAIT_S for s in slept), f"waited {slept} s"
    assert connector.throttled == 4


@pytest.mark.parametrize(
    ("header", "wait_s"),
    [
        (120, 120.0),  # honoured as asked
        (1_800, PEER_RETRY_AFTER_MAX_S),  # longer than any channel is waited for: capped, like Square and webhooks
        (7_200, PEER_RETRY_AFTER_MAX_S),  # longer still: capped, not ignored (asked again after the backoff alone)
        (None, PEER_RETRY_AFTER_DEFAULT_S),  # a 429 without Retry-After still means wait
    ],
)
async def test_a_429_asks_the_pusher_to_wait_as_long_as_any_channel_is_waited_for(
    shopify: ShopifyEmulator, header: int | None, wait_s: float
) -> None:
    online = shopify.add_location()
    item = shopify.add_variant("A", stocked_at=[online], available=0).item_id
    shopify.faults.retry_after_s = header
    shopify.faults.queue("429")
    async with aiohttp.ClientSession() as session:
        connector = ShopifyConnector(shop_spec(shopify, {"S1": online}), session)
        with pytest.raises(ChannelUnavailable) as info:
            await connector.push({LevelKey(item, online): Target(3, 0, 1)}, "web:0")
        assert info.value.retry_after_s == wait_s
        assert "HTTP 429" in str(info.value)
        assert await connector.push({LevelKey(item, online): Target(3, 0, 1)}, "web:0") == {LevelKey(item, online): 3}


async def _throttled_once(hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator) -> None:
    online = shopify.add_location()
    v = {"A": shopify.add_variant("A", stocked_at=[online], available=0)}
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        await asyncio.sleep(s)

    await hub.move((Kind.RECEIVE, 9, "S1", "A"))
    async with pushing(shop_spec(shopify, {"S1": online}), hub, state, sleep=sleep) as pusher:
        await wait_until(shows(shopify, {(v["A"].item_id, online): 9}), "the first level")
        applied, throttled = shopify.stats.mutations_applied, shopify.stats.throttled
        slept.clear()
        shopify.drain(shopify.maximum_available)  # another app spent the whole bucket …
        shopify.faults.queue("throttle")  # … and the next call is answered THROTTLED, however quickly it refills
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await wait_until(shows(shopify, {(v["A"].item_id, online): 8}), "the level after the throttle")
        assert shopify.stats.throttled == throttled + 1 and shopify.stats.mutations_applied == applied + 1
        assert isinstance(pusher.connector, ShopifyConnector) and pusher.connector.throttled >= 1
        assert pusher.status.failures == 0  # retried inside the call, not as a failed turn
        assert all(0 < s <= 10 / 20 for s in slept)  # never more than a mutation's 10 points at 20 points/s
        assert shopify.stats.history[-1] == {(v["A"].item_id, online): 8}


async def test_a_compare_and_set_miss_reads_the_level_again_and_sets_it(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    online, _ = web
    v = variants(shopify, web, "A", "B")
    spec = shop_spec(shopify, {"S1": online})
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 4, "S1", "B"))
    async with pushing(spec, hub, state) as pusher:
        await wait_until(shows(shopify, {(v["A"].item_id, online): 10, (v["B"].item_id, online): 4}), "first levels")
        shopify.levels[(v["B"].item_id, online)] = 1  # a sale at Shopify the hub has not heard of
        shopify.faults.queue("cas_miss")  # and another one on A, just before the next call lands
        await hub.move((Kind.SALE, -2, "S1", "A"), (Kind.SALE, -1, "S1", "B"))
        await wait_until(shows(shopify, {(v["A"].item_id, online): 8, (v["B"].item_id, online): 3}), "levels after the miss")
        assert shopify.stats.cas_misses >= 1
        assert isinstance(pusher.connector, ShopifyConnector) and pusher.connector.cas_misses >= 1
        assert pusher.status.failures == 0


async def test_a_restart_resumes_from_the_saved_cursor_and_misses_nothing(
    hub: Hub, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    online, _ = web
    v = variants(shopify, web, "A", "B")
    spec = shop_spec(shopify, {"S1": online, "S2": online})
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 10, "S2", "B"))
    async with await SqliteChannelState.open(hub.db_path) as state:
        async with pushing(spec, hub, state) as pusher:
            await wait_until(shows(shopify, {(v["A"].item_id, online): 10, (v["B"].item_id, online): 10}), "first")
            await pushed_to_head(pusher, hub)
        saved = await state.cursor("web")
    assert saved == await hub.store.latest_change_id()
    # While the hub's channel pusher is down, the stores keep selling.
    await hub.move((Kind.SALE, -3, "S1", "A"))
    await hub.move((Kind.SALE, -1, "S2", "A"), (Kind.RECEIVE, 2, "S1", "A"))
    applied = shopify.stats.mutations_applied
    async with await SqliteChannelState.open(hub.db_path) as state:
        assert await state.cursor("web") == saved
        async with pushing(spec, hub, state) as pusher:
            await wait_until(shows(shopify, {(v["A"].item_id, online): 9}), "the level after the restart")
            await pushed_to_head(pusher, hub)
        assert await state.cursor("web") == await hub.store.latest_change_id()
    assert shopify.stats.mutations_applied - applied == 1  # A once; B did not change and is not sent again
    assert all(set(h) == {(v["A"].item_id, online)} for h in shopify.stats.history[-1:])


async def test_an_answer_lost_after_it_was_applied_is_retried_with_the_same_key_and_applied_once(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    online, _ = web
    v = variants(shopify, web, "A")
    spec = shop_spec(shopify, {"S1": online})
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with pushing(spec, hub, state):
        await wait_until(shows(shopify, {(v["A"].item_id, online): 10}), "first level")
        keys_before = len(shopify.stats.keys)
        shopify.faults.queue("drop_after", "http_503")  # applied then the connection dropped; then a 503
        await hub.move((Kind.SALE, -4, "S1", "A"))
        await wait_until(lambda: _async(shopify.stats.replays >= 1), "the retry was answered from the first result")
        assert shopify.available(v["A"].item_id, online) == 6
    retry_keys = shopify.stats.keys[keys_before:]
    assert len(retry_keys) >= 2 and len(set(retry_keys)) == 1, retry_keys
    assert shopify.stats.history.count({(v["A"].item_id, online): 6}) == 1


async def test_a_slow_shop_times_out_and_the_level_still_arrives(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    online, _ = web
    v = variants(shopify, web, "A")
    spec = shop_spec(shopify, {"S1": online}, timeout_s=0.3)
    shopify.faults.slow_s = 1.0
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with pushing(spec, hub, state) as pusher:
        await wait_until(shows(shopify, {(v["A"].item_id, online): 10}), "first level")
        shopify.faults.queue("slow", "drop", "http_500")
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await wait_until(shows(shopify, {(v["A"].item_id, online): 9}), "the level after a slow, a dropped and a failed call")
        await wait_until(lambda: _async(pusher.status.failures == 0), "the pusher recovered")
    assert shopify.faults.pending == 0


async def test_a_wrong_token_is_one_clear_sentence_and_no_push(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    online, _ = web
    variants(shopify, web, "A")
    spec = spec_of({"name": "web", "kind": "shopify", "url": shopify.url, "pool": {"S1": online}}, "shpat_wrong")
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with pushing(spec, hub, state) as pusher:
        await wait_until(lambda: _async(pusher.status.failures >= 2), "two failed attempts")
    assert "refused the access token of channel web" in (pusher.status.last_error or "")
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "channel web" in r.getMessage()]
    assert len(warnings) == 1, "the first failure is logged, not every retry"
    assert "shpat_wrong" not in caplog.text
    assert shopify.stats.mutations_applied == 0 and await state.cursor("web") == 0


async def _async(value: bool) -> bool:
    return value


async def test_one_item_refused_for_good_does_not_block_the_channel(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    online, outlet = web
    a = shopify.add_variant("A", stocked_at=[online, outlet])
    b = shopify.add_variant("B", stocked_at=[online])  # not stocked at the outlet
    spec = shop_spec(shopify, {"S1": online, "WH": outlet})
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 4, "WH", "A"), (Kind.RECEIVE, 5, "S1", "B"))
    async with pushing(spec, hub, state) as pusher:
        await wait_until(shows(shopify, {(a.item_id, online): 10, (a.item_id, outlet): 4, (b.item_id, online): 5}),
                         "every level Shopify can take")  # fmt: skip
        await wait_until(lambda: _async(pusher.status.refused == 1), "B at the outlet is refused")
        refused = await state.refusals("web")
        assert list(refused) == [LevelKey(b.item_id, outlet)]
        assert refused[LevelKey(b.item_id, outlet)].detail.startswith("ITEM_NOT_STOCKED_AT_LOCATION")
        mutations = shopify.stats.mutations_applied
        await hub.move((Kind.SALE, -1, "S1", "A"))  # the channel goes on; B's refused level is not sent again
        await wait_until(shows(shopify, {(a.item_id, online): 9}), "A's next level")
        assert shopify.stats.history[mutations:] == [{(a.item_id, online): 9}]
        assert pusher.status.failures == 0
        shopify.non_mutable.add(a.item_id)  # now A cannot be set at all (a bundle's parent at Shopify)
        await hub.move((Kind.SALE, -1, "S1", "A"), (Kind.SALE, -1, "S1", "B"))
        await wait_until(shows(shopify, {(b.item_id, online): 4}), "B still goes out")
        await wait_until(lambda: _async(pusher.status.refused == 2), "A at the web shop is refused too")
    exceptions = [e for e in await hub.store.exceptions() if e.kind == "channel_refused"]
    assert sorted((e.sku, e.data["channel_location"]) for e in exceptions) == [("A", online), ("B", outlet)]
    assert shopify.available(a.item_id, online) == 9


async def test_a_refreshed_mapping_tells_the_channel_every_level_once(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    online, _ = web
    a = shopify.add_variant("A", stocked_at=[online])
    await hub.move((Kind.RECEIVE, 6, "S1", "A"), (Kind.RECEIVE, 3, "S1", "C"))
    spec = shop_spec(shopify, {"S1": online})
    async with pushing(spec, hub, state) as pusher:
        await wait_until(shows(shopify, {(a.item_id, online): 6}), "A is out")
        assert pusher.mapping is not None and [f.sku for f in pusher.mapping.findings] == ["C"]
        c = shopify.add_variant("C", stocked_at=[online], available=0)  # the merchant adds C at Shopify
        shopify.drift(a.item_id, online, 2)  # and edits A in the admin
        mapping = await pusher.refresh_mapping()  # no movement in the hub: the refresh alone sends every level
        assert {i.sku for i in mapping.items} == {"A", "C"} and mapping.findings == ()
        await wait_until(shows(shopify, {(a.item_id, online): 6, (c.item_id, online): 3}), "both levels are out")
        assert pusher.status.mapped == 2 and pusher.status.failures == 0


async def test_lag_runs_from_the_movement_at_the_store_to_the_channels_confirmation(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    online, _ = web
    a = shopify.add_variant("A", stocked_at=[online])
    async with pushing(shop_spec(shopify, {"S1": online}), hub, state) as pusher:
        started_ms = wall_ms_now()
        await hub.move((Kind.RECEIVE, 6, "S1", "A"))  # stamped at the store in 2023 (the event factory's clock)
        await wait_until(shows(shopify, {(a.item_id, online): 6}), "A is out")
        await wait_until(lambda: _async(pusher.lag.samples >= 1), "a lag sample")
    stamped_ms = (await hub.store.ledger(limit=1))[0].wall_ms
    assert pusher.lag.last_ms is not None and pusher.lag.last_ms >= started_ms - stamped_ms
    assert pusher.lag.percentile_ms(50) == pusher.lag.percentile_ms(99) == pusher.lag.last_ms


async def test_a_variant_created_again_under_a_new_inventory_item_is_mapped_again_at_the_refused_push(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    """INVALID_INVENTORY_ITEM (the variant deleted) was stored as a refusal and nothing more: the variant created
    again showed nothing until the next reconciliation. The refusal now reads the listing at once."""
    online, _ = web
    old = shopify.add_variant("A", stocked_at=[online])
    await hub.move((Kind.RECEIVE, 5, "S1", "A"))
    async with pushing(shop_spec(shopify, {"S1": online}), hub, state) as pusher:
        await wait_until(shows(shopify, {(old.item_id, online): 5}), "the first level")
        shopify.variants.remove(old)  # deleted in the Shopify admin …
        new = shopify.add_variant("A", stocked_at=[online])  # … and created again
        await hub.move((Kind.SALE, -2, "S1", "A"))
        await wait_until(shows(shopify, {(new.item_id, online): 3}), "the new variant gets A's level", bound_s=10)
        assert pusher.items == {"A": new.item_id}


async def test_a_variant_renamed_at_shopify_takes_its_new_skus_level_at_the_next_push(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str]
) -> None:
    """A variant renamed from A to C at Shopify still took A's pushes (same inventory item): A's level was set on
    the item now sold as C until the next reconciliation. The answer's ``item { sku }`` now maps it again at once."""
    online, _ = web
    variant = shopify.add_variant("A", stocked_at=[online])
    await hub.move((Kind.RECEIVE, 5, "S1", "A"), (Kind.RECEIVE, 9, "S1", "C"))
    async with pushing(shop_spec(shopify, {"S1": online}), hub, state) as pusher:
        await wait_until(shows(shopify, {(variant.item_id, online): 5}), "A's level")
        variant.sku = "C"  # renamed in the Shopify admin
        await hub.move((Kind.SALE, -2, "S1", "A"))
        await wait_until(shows(shopify, {(variant.item_id, online): 9}), "the renamed item gets C's level", bound_s=10)
        assert pusher.items == {"C": variant.item_id}


async def test_a_channel_mapped_by_csv_takes_the_channels_own_skus_as_they_are(
    hub: Hub, state: SqliteChannelState, shopify: ShopifyEmulator, web: tuple[str, str], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A mapping CSV maps hub SKUs to item ids whatever SKU the channel gives the item: an answered SKU that is
    not the hub's is no rename there, and pushes go on without reading the listing."""
    online, _ = web
    variant = shopify.add_variant("SHOP-7", stocked_at=[online])
    csv_path = tmp_path / "mapping.csv"
    csv_path.write_text(f"sku,item_id\nA,{variant.item_id}\n", encoding="utf-8")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"))
    async with pushing(shop_spec(shopify, {"S1": online}, mapping_csv=str(csv_path)), hub, state) as pusher:
        await wait_until(shows(shopify, {(variant.item_id, online): 5}), "A's level")
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await wait_until(shows(shopify, {(variant.item_id, online): 4}), "A's next level")
        assert pusher.items == {"A": variant.item_id}
    assert "under another SKU than the mapped one" not in caplog.text
