"""Which channel item is which hub SKU: built from the channel's product listing or from a CSV.

A listing entry is one sellable item at the channel (a Shopify product
variant with its inventory item, a Square item variation) with the SKU and
barcode the merchant typed there. ``build_mapping`` keeps the entries whose
SKU maps to exactly one item and turns everything else into findings, each
with a sentence saying what to do:

* ``unmapped_sku``: the hub holds stock of a SKU that no channel item carries;
* ``sku_twice``: two channel items carry one SKU (neither is pushed: which one
  sells it is ambiguous);
* ``item_twice``: one channel item is given two SKUs (a mapping CSV's rows; a
  listing cannot): neither SKU is pushed, or the item would show each SKU's
  level in turn and its orders would book on either;
* ``barcode_twice``: one barcode is on channel items of two different SKUs;
* ``no_sku``: a channel item has no SKU, so the hub cannot know what it is.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from protocol.event import SKU_MAX_LEN

CSV_COLUMNS = ("sku", "item_id")
CSV_OPTIONAL = ("variant_id", "barcode")
CSV_MAX_BYTES = 64 * 1024 * 1024
FINDINGS_PER_KIND_MAX = 1_000  # a listing of 100,000 items without SKUs is one problem, not 100,000 lines to read


@dataclass(frozen=True, slots=True)
class ListingEntry:
    """One item as the channel lists it."""

    item_id: str  # the id stock is set on: Shopify inventory item gid, Square item variation id
    sku: str  # as typed at the channel ("" if none)
    variant_id: str = ""  # Shopify product variant gid ("" elsewhere)
    barcode: str = ""
    title: str = ""


@dataclass(frozen=True, slots=True)
class ItemIds:
    """A hub SKU and the channel's ids for it."""

    sku: str
    item_id: str
    variant_id: str = ""


@dataclass(frozen=True, slots=True)
class MappingFinding:
    kind: str  # "unmapped_sku" | "sku_twice" | "item_twice" | "barcode_twice" | "no_sku"
    sku: str | None
    detail: str  # one sentence for the operations team: what is wrong and what to do


@dataclass(frozen=True, slots=True)
class SkuMapping:
    """The channel's items by hub SKU, and what could not be mapped."""

    items: tuple[ItemIds, ...]
    findings: tuple[MappingFinding, ...] = ()

    def by_sku(self) -> dict[str, str]:
        return {i.sku: i.item_id for i in self.items}


class MappingError(ValueError):
    """A mapping file cannot be read; the message says which line and what to fix."""


def build_mapping(
    channel: str, entries: Iterable[ListingEntry], hub_skus: Collection[str], *, where: str = "the channel"
) -> SkuMapping:
    """Map hub SKUs to channel items; ``hub_skus`` are the SKUs the hub holds stock of in the channel's pool."""
    by_sku: dict[str, list[ListingEntry]] = {}
    by_barcode: dict[str, set[str]] = {}
    no_sku: list[ListingEntry] = []
    for e in entries:
        sku = e.sku.strip()
        if not sku:
            no_sku.append(e)
            continue
        by_sku.setdefault(sku, []).append(e)
        if e.barcode.strip():
            by_barcode.setdefault(e.barcode.strip(), set()).add(sku)
    items: list[ItemIds] = []
    findings: list[MappingFinding] = []
    for sku in sorted(by_sku):
        found = by_sku[sku]
        ids = sorted({e.item_id for e in found})
        if len(ids) > 1:
            findings.append(
                MappingFinding(
                    "sku_twice",
                    sku,
                    f"SKU {sku} is on {len(ids)} items of channel {channel} ({', '.join(ids[:3])}); give each item its "
                    f"own SKU in {where}, then reload the mapping (until then neither is updated).",
                )
            )
            continue
        items.append(ItemIds(sku, ids[0], found[0].variant_id))
    by_item: dict[str, list[str]] = {}
    for i in items:
        by_item.setdefault(i.item_id, []).append(i.sku)
    shared = {item_id: skus for item_id, skus in by_item.items() if len(skus) > 1}
    if shared:
        items = [i for i in items if i.item_id not in shared]
        for item_id, skus in sorted(shared.items()):
            findings.append(
                MappingFinding(
                    "item_twice",
                    skus[0],
                    f"item {item_id} of channel {channel} is given {len(skus)} SKUs ({', '.join(skus[:3])}) in "
                    f"{where}; keep the one SKU it sells, then reload the mapping (until then none of them is updated).",
                )
            )
    for barcode in sorted(by_barcode):
        skus = sorted(by_barcode[barcode])
        if len(skus) > 1:
            findings.append(
                MappingFinding(
                    "barcode_twice",
                    skus[0],
                    f"barcode {barcode} is on items of SKUs {', '.join(skus)} in channel {channel}; keep it on the one "
                    f"item it belongs to in {where}.",
                )
            )
    for e in no_sku[:FINDINGS_PER_KIND_MAX]:
        label = f"{e.title} ({e.item_id})" if e.title else e.item_id
        findings.append(
            MappingFinding(
                "no_sku",
                None,
                f"item {label} of channel {channel} has no SKU; type its hub SKU in {where} so its stock can be kept right.",
            )
        )
    mapped = {i.sku for i in items} | {f.sku for f in findings if f.kind == "sku_twice"}
    mapped |= {sku for skus in shared.values() for sku in skus}  # named by their item_twice finding
    for sku in sorted(set(hub_skus) - mapped)[:FINDINGS_PER_KIND_MAX]:
        findings.append(
            MappingFinding(
                "unmapped_sku",
                sku,
                f"SKU {sku} has stock in channel {channel}'s pool but no item there carries it; add it to the item "
                f"in {where} (or to the mapping CSV) if the channel should sell it.",
            )
        )
    return SkuMapping(tuple(items), tuple(findings))


def parse_mapping_csv(text: str, *, source: str = "the mapping CSV") -> list[ListingEntry]:
    """Entries of a CSV with a header naming ``sku`` and ``item_id`` (and optionally ``variant_id``, ``barcode``)."""
    if len(text) > CSV_MAX_BYTES:
        raise MappingError(f"{source} is larger than {CSV_MAX_BYTES // (1024 * 1024)} MiB; split it")
    first_line = text.lstrip("\r\n").split("\n", 1)[0]
    delimiter = next((d for d in (",", ";", "\t") if d in first_line), ",")  # as the catalog import: Excel's ; and tab
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise MappingError(f"{source} is empty; it needs a header line with sku,item_id") from None
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise MappingError(f"{source} has no {' or '.join(missing)} column; its header line must name sku and item_id")
    twice = next((name for name in (*CSV_COLUMNS, *CSV_OPTIONAL) if header.count(name) > 1), None)
    if twice is not None:  # which of the two maps, the file does not say
        raise MappingError(f"line 1 of {source}: the header names {twice} more than once; keep the one column it means")
    col = {name: header.index(name) for name in (*CSV_COLUMNS, *CSV_OPTIONAL) if name in header}
    entries: list[ListingEntry] = []
    for line_no, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise MappingError(f"line {line_no} of {source} has {len(row)} cells, the header {len(header)}")
        value = {name: row[i].strip() for name, i in col.items()}
        sku, item_id = value["sku"], value["item_id"]
        if len(sku) > SKU_MAX_LEN or not sku.isprintable():
            raise MappingError(
                f"line {line_no} of {source}: the SKU is longer than {SKU_MAX_LEN} characters or not text"
            )
        if not item_id or len(item_id) > 255 or not item_id.isprintable():
            raise MappingError(f"line {line_no} of {source}: item_id must be the channel's id of the item")
        entries.append(ListingEntry(item_id, sku, value.get("variant_id", ""), value.get("barcode", "")))
    return entries


def entries_from(items: Sequence[ItemIds]) -> list[ListingEntry]:
    return [ListingEntry(i.item_id, i.sku, i.variant_id) for i in items]
