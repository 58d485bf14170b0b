"""All configured pushers beside the hub: one call starts them, leaving the block stops them."""

from __future__ import annotations

import pytest

from hub.channels import channel_pushers
from hub.storage.base import StoreError
from protocol import Kind
from tests.channels.emulators.shopify import ShopifyEmulator
from tests.channels.emulators.square import SquareEmulator
from tests.channels.helpers import Hub, spec_of, wait_until


async def test_every_configured_channel_gets_its_levels(hub: Hub, shopify: ShopifyEmulator, square: SquareEmulator) -> None:
    shop_loc, sq_loc = shopify.add_location(), square.add_location()
    variant = shopify.add_variant("A", stocked_at=[shop_loc])
    variation = square.add_variation("A")
    specs = [
        spec_of({"name": "web", "kind": "shopify", "url": shopify.url, "pool": {"S1": shop_loc, "WH": shop_loc}}, shopify.token),
        spec_of({"name": "pickup", "kind": "square", "url": square.url, "pool": {"S1": sq_loc}, "buffer": 1}, square.token),
    ]
    await hub.move((Kind.RECEIVE, 6, "S1", "A"), (Kind.RECEIVE, 4, "WH", "A"))
    async with channel_pushers(specs, hub.store, str(hub.db_path), hub.watch) as pushers:
        assert set(pushers) == {"web", "pickup"}

        latest = await hub.store.latest_change_id()

        async def right() -> bool:
            shown = shopify.available(variant.item_id, shop_loc) == 10 and square.quantity(variation, sq_loc) == 5
            return shown and [p.status.cursor for p in pushers.values()] == [latest, latest]

        # the channel answers before the pusher saves its cursor: stopping between the two is allowed (the
        # next start pushes the same turn again), so the cursors are waited for inside the block
        await wait_until(right, "both channels show the pool minus their buffer and both cursors reach the head")


async def test_an_unreachable_postgresql_database_is_one_sentence_without_its_password(
    hub: Hub, square: SquareEmulator
) -> None:
    spec = spec_of({"name": "pickup", "kind": "square", "url": square.url, "pool": {"S1": "L1"}}, square.token)
    with pytest.raises(StoreError, match=r"cannot open the channel state in postgresql://u:\*\*\*@") as err:
        async with channel_pushers([spec], hub.store, "postgresql://u:pw-secret@127.0.0.1:1/db", hub.watch):
            pass
    assert "pw-secret" not in str(err.value)
