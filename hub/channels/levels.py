"""What a channel shows: per mapped SKU and channel location, the pool's available minus the buffer.

Pure: counts in, levels out, no I/O. For each channel location, the pool's
available is the sum of ``available`` over the hub locations mapped to it
(``available`` is already never negative); the buffer is taken off that sum
and the result is never below zero.

A bundle (docs/design.md "Bundles and kits") shows what its parts make in the
pool: for each part, its pool available less its buffer, ⌊÷ units per bundle⌋;
the least of those, less the bundle's own buffer (``bundle_levels``).
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


def bundle_levels(
    counts: Iterable[HasAvailable],
    pool: Mapping[str, str],
    buffer: Buffer,
    item_id: str,
    bundle: str,
    parts: Mapping[str, int],
) -> dict[LevelKey, int]:
    """The level the channel should show for a bundle (SKU ``bundle``, the channel's ``item_id``) at each
    channel location: for each part, the pool's available of it less that part's buffer, divided by the part's
    units per bundle and rounded down; the least of those; less the bundle's own buffer; never below zero.

    ``parts``: plain SKU -> units per bundle (``HubStore.bundle_parts``); ``counts``: rows of the parts (rows
    of other SKUs and of locations outside the pool are ignored). A part without a row in the pool makes 0."""
    sums: dict[tuple[str, str], int] = {}
    for row in counts:
        where = pool.get(row.location)
        if where is None or row.sku not in parts:
            continue
        sums[(row.sku, where)] = sums.get((row.sku, where), 0) + max(0, row.available)
    levels: dict[LevelKey, int] = {}
    for where in dict.fromkeys(pool.values()):
        made = None
        for sku, units in parts.items():
            total = sums.get((sku, where), 0)
            usable = max(0, total - buffer.held_back(sku, total)) // units
            made = usable if made is None else min(made, usable)
        made = made or 0
        levels[LevelKey(item_id, where)] = max(0, made - buffer.held_back(bundle, made))
    return levels


def sku_levels(
    counts: Iterable[HasAvailable],
    pool: Mapping[str, str],
    buffer: Buffer,
    items: Mapping[str, str],
    sku: str,
    parts: Mapping[str, int] | None = None,
) -> dict[LevelKey, int]:
    """The levels of one mapped SKU: ``bundle_levels`` when it is a bundle (``parts`` given), else
    ``channel_levels``."""
    if parts:
        return bundle_levels(counts, pool, buffer, items[sku], sku, parts)
    return channel_levels(counts, pool, buffer, items, [sku])
