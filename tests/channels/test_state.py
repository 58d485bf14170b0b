"""The channel state in the hub's SQLite file: cursor, confirmed levels and mapping survive a reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.channels import ItemIds, LevelKey, MappingFinding, SkuMapping, SqliteChannelState
from hub.storage import StoreClosed, open_store


async def test_state_lives_beside_the_hub_tables_and_survives_a_reopen(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    async with open_store(db) as store:
        async with await SqliteChannelState.open(db) as state:
            assert await state.cursor("web") == 0 and await state.pushed("web") == {} and await state.mapping("web") is None
            k = LevelKey("gid://shopify/InventoryItem/1", "gid://shopify/Location/1")
            await state.record("web", {k: 5}, 1_000)  # a first batch: the cursor does not move yet
            assert await state.cursor("web") == 0
            await state.record("web", {k: 4}, 2_000, cursor=17)
            await state.record("web", {}, 3_000, cursor=12)  # never backwards
            mapping = SkuMapping((ItemIds("A", k.item_id, "gid://shopify/ProductVariant/1"),),
                                 (MappingFinding("unmapped_sku", "B", "SKU B …"),))
            await state.save_mapping("web", mapping)
        assert await store.latest_change_id() == 0  # the hub's own tables are untouched
    async with await SqliteChannelState.open(db) as state:
        assert await state.cursor("web") == 17
        assert await state.pushed("web") == {k: 4}
        assert await state.mapping("web") == mapping
        assert await state.cursor("other") == 0
    await state.close()  # closing twice is safe
    with pytest.raises(StoreClosed):
        await state.cursor("web")
