"""What a channel shows: Σ available over the pool's locations − buffer, never below zero (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from hub.channels import Buffer, LevelKey, channel_levels


@dataclass(frozen=True)
class Row:
    location: str
    sku: str
    available: int


POOL = {"S1": "online", "S2": "online", "WH": "outlet"}
ITEMS = {"A": "item-a", "B": "item-b"}


def test_sums_the_pool_per_channel_location_and_takes_the_buffer_off() -> None:
    rows = [Row("S1", "A", 4), Row("S2", "A", 3), Row("WH", "A", 10), Row("OTHER", "A", 99), Row("S1", "B", 1)]
    levels = channel_levels(rows, POOL, Buffer(units=2), ITEMS)
    assert levels == {
        LevelKey("item-a", "online"): 5,
        LevelKey("item-a", "outlet"): 8,
        LevelKey("item-b", "online"): 0,  # 1 − 2, never below zero
        LevelKey("item-b", "outlet"): 0,  # no stock there at all
    }


def test_only_the_skus_asked_for_and_only_mapped_ones() -> None:
    rows = [Row("S1", "A", 4), Row("S1", "C", 7)]
    assert channel_levels(rows, {"S1": "online"}, Buffer(), ITEMS, ["A", "C"]) == {LevelKey("item-a", "online"): 4}


def test_level_keys_survive_their_stored_text() -> None:
    key = LevelKey("gid://shopify/InventoryItem/1", "gid://shopify/Location/2")
    assert LevelKey.from_text(key.text()) == key


@given(
    st.lists(st.tuples(st.sampled_from(["S1", "S2", "WH", "X"]), st.sampled_from(["A", "B"]), st.integers(-5, 50))),
    st.integers(0, 10),
    st.floats(0, 100),
)
def test_never_below_zero_and_never_above_the_pool(raw: list[tuple[str, str, int]], units: int, percent: float) -> None:
    rows = [Row(loc, sku, max(0, avail)) for loc, sku, avail in raw]
    levels = channel_levels(rows, POOL, Buffer(units=units, percent=percent), ITEMS)
    for key, level in levels.items():
        sku = next(s for s, i in ITEMS.items() if i == key.item_id)
        pool_total = sum(r.available for r in rows if r.sku == sku and POOL.get(r.location) == key.location_id)
        assert 0 <= level <= pool_total
        assert level == max(0, pool_total - Buffer(units=units, percent=percent).held_back(sku, pool_total))
