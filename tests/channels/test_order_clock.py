"""A channel's sale booked at the hub against the store's stock count: the store PC's clock, not the channel's (both
backends, real HTTP on 127.0.0.1, the Square and Shopify stand-ins).

The store's events are stamped by its PC's clock; a channel's order by the channel's. A PC clock 10 minutes off put
a sale made within those minutes of a stock count on the wrong side of it in the hub's own level: ahead, a sale just
after the count was ordered before it (swallowed by the count: the hub one unit high); behind, a sale just before
the count was ordered after it (taken off the count that already saw the shelf without it: one unit low).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hub.channels import parse_channels
from hub.channels.runner import open_channel_state
from hub.storage import HubStore
from protocol import Kind, unpack_hlc, wall_ms_now
from tests.channels.emulators.shopify_orders import ShopifyOrdersEmulator
from tests.channels.emulators.square_orders import SquareOrdersEmulator
from tests.channels.helpers import wait_until
from tests.harness.inprocess import hub_in_process
from tests.harness.net import free_port
from tests.harness.pg import fresh_schema
from tests.hub.event_factory import EventFactory

SKEWS = pytest.mark.parametrize("skew_min", [10, -10], ids=["store-clock-ahead", "store-clock-behind"])


@dataclass
class Hub:
    url: str
    store: HubStore
    shopify: ShopifyOrdersEmulator
    square: SquareOrdersEmulator
    ids: dict[str, str]
    agent_id: str
    store_moves: Callable[..., Awaitable[None]]

    def hook(self, channel: str) -> str:
        return f"{self.url}/v1/channels/{channel}/webhooks"

    async def on_hand(self) -> int:
        rows = await self.store.counts(location="S1", sku="SKU-A")
        return rows[0].on_hand if rows else 0


@pytest.fixture
async def hub_db(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    async with (
        fresh_schema("ordclk") if backend == "postgres" else contextlib.nullcontext(str(tmp_path / "hub.db")) as db
    ):
        yield db


@pytest.fixture
async def hub(hub_db: str, request: pytest.FixtureRequest) -> AsyncIterator[Hub]:
    skew = round(request.node.callspec.params["skew_min"] * 60_000)
    async with ShopifyOrdersEmulator() as shopify, SquareOrdersEmulator() as square:
        shop_s1 = shopify.add_location()
        shop_a = shopify.add_variant("SKU-A", stocked_at=[shop_s1])
        sq_s1 = square.add_location()
        sq_a = square.add_variation("SKU-A")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        specs = parse_channels(
            [
                {"name": "web", "kind": "shopify", "url": shopify.url, "secret_env": "SHOP_TOKEN",
                 "webhook_secret_env": "SHOP_HOOK", "pool": {"S1": shop_s1}},
                {"name": "pos", "kind": "square", "url": square.url, "secret_env": "SQ_TOKEN",
                 "webhook_secret_env": "SQ_HOOK", "notification_url": f"{url}/v1/channels/pos/webhooks",
                 "pool": {"S1": sq_s1}},
            ],
            environ={"SHOP_TOKEN": shopify.token, "SHOP_HOOK": shopify.webhook_secret, "SQ_TOKEN": square.token,
                     "SQ_HOOK": square.signature_key},
        )  # fmt: skip
        async with (
            hub_in_process(hub_db, port=port, channels=specs) as served,
            open_channel_state(hub_db) as state,
        ):

            async def mapped() -> bool:
                return all([await state.mapping("web"), await state.mapping("pos")])

            await wait_until(mapped, "both channels' SKU mappings are loaded")
            agent_id, token = await served.store.add_agent(["S1"])
            who = await served.store.authenticate(token)
            assert who is not None
            factory = EventFactory(agent_id, location="S1", sku="SKU-A")

            async def store_moves(kind: Kind, qty: int) -> None:
                """A movement booked now by the store's PC, whose clock is ``skew`` ms off (positive: ahead), as
                its agent sends it: stamped by that clock, with that clock's time of sending (``sent_ms``)."""
                now = wall_ms_now()
                event = factory(kind, qty, at_ms=now + skew - factory.base_ms)
                result = await served.store.ingest(who, factory.epoch, [event], sent_ms=now + skew)
                assert not result.rejected, result.rejected

            yield Hub(url, served.store, shopify, square, {"shop_a": shop_a, "shop_s1": shop_s1, "sq_a": sq_a,
                                                           "sq_s1": sq_s1}, agent_id, store_moves)  # fmt: skip


@SKEWS
async def test_a_register_sale_is_booked_on_the_right_side_of_the_stores_count_whatever_the_pcs_clock(
    hub: Hub, skew_min: int
) -> None:
    """A Square register sale just before the store counts the shelf is in the count (the hub keeps 9 of the 9
    counted); one just after comes off it (8). Before: the sale was stamped with Square's closed_at against the
    count's PC stamp: behind, the first came off the count too (8 of the 9 counted); ahead, the second was swallowed
    by the count (9 where 8 are left)."""
    square, s1, a = hub.square, hub.ids["sq_s1"], hub.ids["sq_a"]
    await hub.store_moves(Kind.RECEIVE, 10)
    before = square.sell_at_register(s1, [(a, 1)])
    status, answer = await square.deliver(hub.hook("pos"), square.notification("order.updated", before["id"]))
    assert (status, answer["applied"]) == (200, 2), answer
    await hub.store_moves(Kind.COUNT, 9)  # the store counts 9 on the shelf: the sale is in it
    assert await hub.on_hand() == 9, f"the hub keeps {await hub.on_hand()} of the 9 counted"
    after = square.sell_at_register(s1, [(a, 1)])
    status, answer = await square.deliver(hub.hook("pos"), square.notification("order.updated", after["id"]))
    assert (status, answer["applied"]) == (200, 2), answer
    assert await hub.on_hand() == 8, f"the hub keeps {await hub.on_hand()} where 8 are left"
    # another notice of the order as it stands is the same events (their ids are the channel's time and ids):
    # nothing is booked twice
    status, answer = await square.deliver(hub.hook("pos"), square.notification("order.updated", after["id"]))
    assert (status, answer["applied"], answer["duplicates"]) == (200, 0, 2), answer
    assert await hub.on_hand() == 8
    rows = [r for r in await hub.store.ledger(location="S1", sku="SKU-A", limit=20) if r.kind == "sale"]
    assert len(rows) == 2 and all(r.agent_id == "channel:pos" for r in rows)
    closed = sorted(_ms(o["closed_at"]) for o in (before, after))
    # each sale stamped in the store's clock frame: Square's closed_at less the PC's skew the hub measured
    stamps = sorted(unpack_hlc(r.occurred_at)[0] - skew_min * 60_000 for r in rows)
    assert all(abs(at - c) < 5_000 for at, c in zip(stamps, closed, strict=True)), (stamps, closed)


@SKEWS
async def test_a_shopify_fulfilment_is_booked_on_the_right_side_of_the_stores_count_whatever_the_pcs_clock(
    hub: Hub, skew_min: int
) -> None:
    """The same for a Shopify order fulfilled at the store (its sale at Shopify's fulfilment time)."""
    shopify, s1, a = hub.shopify, hub.ids["shop_s1"], hub.ids["shop_a"]
    await hub.store_moves(Kind.RECEIVE, 10)

    async def sold(shift_s: float) -> None:
        """One unit picked up at the store: Shopify stamps the fulfilment in whole seconds, ``shift_s`` from now."""
        order = shopify.create_order([(a, 1)], pickup_at=s1)
        shopify.fulfil(order["id"], s1, shift_s=shift_s)
        status, answer = await shopify.deliver(hub.hook("web"), shopify.order_delivery("orders/fulfilled", order["id"]))
        assert (status, answer["applied"]) == (200, 2), answer

    await sold(-1.0)
    await hub.store_moves(Kind.COUNT, 9)
    assert await hub.on_hand() == 9, f"the hub keeps {await hub.on_hand()} of the 9 counted"
    await sold(2.0)
    assert await hub.on_hand() == 8, f"the hub keeps {await hub.on_hand()} where 8 are left"


def _ms(rfc3339: str) -> int:
    return round(datetime.fromisoformat(rfc3339).timestamp() * 1000)


@pytest.mark.parametrize("skew_min", [10], ids=["store-clock-ahead"])
async def test_an_order_webhook_reads_the_store_pcs_of_its_location_alone_not_every_stores(
    hub: Hub, skew_min: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each order webhook read every credential's status (every store's, with their marks) to find the clock skew of
    the PC booking at the order's location: a read that grew with the stores, per order. It reads the credentials
    bound to the order's locations alone now (``store_clock_skews``, one indexed statement); the sale is stamped in
    the store's clock frame as before."""
    for n in range(200):  # a chain: 200 other stores
        await hub.store.add_agent([f"T{n:03d}"])
    every: list[str | None] = []  # reads of every credential's status (agent_status without an id)
    asked: list[list[str]] = []  # the locations whose store PCs were read
    status_of, skews_of = hub.store.agent_status, getattr(hub.store, "store_clock_skews", None)

    async def agent_status(agent_id: str | None = None) -> Any:
        if agent_id is None:
            every.append(agent_id)
        return await status_of(agent_id)

    async def store_clock_skews(locations: Any) -> Any:
        asked.append(sorted(locations))
        assert skews_of is not None
        return await skews_of(locations)

    monkeypatch.setattr(hub.store, "agent_status", agent_status)
    monkeypatch.setattr(hub.store, "store_clock_skews", store_clock_skews, raising=False)
    square, s1, a = hub.square, hub.ids["sq_s1"], hub.ids["sq_a"]
    await hub.store_moves(Kind.RECEIVE, 10)
    sold = [square.sell_at_register(s1, [(a, 1)]) for _ in range(3)]
    for order in sold:
        status, answer = await square.deliver(hub.hook("pos"), square.notification("order.updated", order["id"]))
        assert (status, answer["applied"]) == (200, 2), answer
    assert every == [], f"{len(every)} read(s) of every store's credentials for {len(sold)} order(s)"
    assert asked and all(locations == ["S1"] for locations in asked), asked
    assert await hub.on_hand() == 7
    rows = [r for r in await hub.store.ledger(location="S1", sku="SKU-A", limit=20) if r.kind == "sale"]
    closed = sorted(_ms(o["closed_at"]) for o in sold)
    stamps = sorted(unpack_hlc(r.occurred_at)[0] - skew_min * 60_000 for r in rows)
    assert len(rows) == 3 and all(abs(at - c) < 5_000 for at, c in zip(stamps, closed, strict=True)), (stamps, closed)
