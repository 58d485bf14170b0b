"""What a channel shows: per mapped SKU and channel location, the pool's available minus the buffer.

Pure: counts in, levels out, no I/O. For each channel location, the pool's
available is the sum of ``available`` over the hub locations mapped to it
(``available`` is already never negative); the buffer is taken off that sum
and the result is never below zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from hub.channels.config import Buffer


class HasAvailable(Protocol):
    """What a level needs of a count row (``hub.storage.base.CountRow`` fits)."""

    @property
    def location(self) -> str: ...

    @property
    def sku(self) -> str: ...

    @property
    def available(self) -> int: ...


@dataclass(frozen=True, slots=True, order=True)
class LevelKey:
    """One level at a channel: its item id (Shopify inventory item, Square item variation) at one of its locations."""

    item_id: str
    location_id: str

    def text(self) -> str:
        """The key as stored (``item_id`` and ``location_id`` joined by a tab, which neither id contains)."""
        return f"{self.item_id}\t{self.location_id}"

    @classmethod
    def from_text(cls, text: str) -> LevelKey:
        item_id, _, location_id = text.partition("\t")
        return cls(item_id, location_id)


def channel_levels(
    counts: Iterable[HasAvailable],
    pool: Mapping[str, str],
    buffer: Buffer,
    items: Mapping[str, str],
    skus: Iterable[str] | None = None,
) -> dict[LevelKey, int]:
    """The level the channel should show for each mapped SKU at each channel location.

    ``pool``: hub location -> channel location id. ``items``: hub SKU -> the
    channel's item id. ``skus``: compute only these (default: every mapped
    SKU); a SKU with no count row in the pool shows 0 (minus nothing).
    """
    wanted = list(items) if skus is None else [s for s in skus if s in items]
    sums: dict[tuple[str, str], int] = {}
    wanted_set = set(wanted)
    for row in counts:
        where = pool.get(row.location)
        if where is None or row.sku not in wanted_set:
            continue
        sums[(row.sku, where)] = sums.get((row.sku, where), 0) + max(0, row.available)
    levels: dict[LevelKey, int] = {}
    for sku in wanted:
        for where in dict.fromkeys(pool.values()):
            total = sums.get((sku, where), 0)
            levels[LevelKey(items[sku], where)] = max(0, total - buffer.held_back(sku, total))
    return levels
