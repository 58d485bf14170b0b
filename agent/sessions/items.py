"""What a scanned or typed code is: a SKU and how many units one scan of it counts.

The catalog (``agent.catalog``) knows barcodes; a barcode it does not know is
still taken, under the SKU ``unknown:<key>`` (``protocol.catalog``: the
GTIN-14 of a GTIN, else the text as scanned), with attrs {"barcode": …,
"unknown": true} on its line — never dropped. A code typed in another
script's digits (Arabic-Indic, full-width) is read as the ASCII digits it
means. A SKU keyed by hand is taken as given, unless the catalog spells it otherwise
(``sku-1`` for ``SKU-1``): that is refused, naming the catalog's spelling.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Protocol

from agent.sessions.errors import InvalidSessionInput
from agent.sessions.model import check_sku
from hardware import Decoded, DecodeError, decode
from protocol.catalog import BARCODE_MAX_LEN, unknown_sku
from protocol.values import shown

# The longest scan a session takes. Kept whole on its line: the close reads the lot, expiry and serial (21) again from
# it, and a GS1 code carrying them passes the catalog's 64 characters ((01)…(17)…(10)<20>(21)<20> is 76).
SCAN_MAX_LEN = BARCODE_MAX_LEN * 2


class CatalogItemLike(Protocol):
    @property
    def sku(self) -> str: ...

    @property
    def pack_size(self) -> int: ...


class ItemLookup(Protocol):
    """What the sessions need of a catalog (``agent.catalog.AgentCatalog`` is one)."""

    def lookup(self, decoded: Decoded | None, text: str) -> CatalogItemLike | None: ...


@dataclass(frozen=True, slots=True)
class Item:
    sku: str
    pack_size: int  # units one scan counts
    barcode: str | None  # the code as scanned, whole (None when a SKU was keyed)
    unknown: bool = False


def keyed_sku(sku: str, catalog: ItemLookup | None = None) -> Item:
    """A SKU keyed by hand, as given; refused when the catalog spells that SKU otherwise (``sku-1`` for ``SKU-1``):
    it would be booked as a SKU of its own, and the catalog's short by as much."""
    keyed = check_sku(sku.strip() if isinstance(sku, str) else sku)
    check_spelling(keyed, catalog)
    return Item(keyed, 1, None)


def check_spelling(sku: str, catalog: object) -> str:
    """``sku`` as written by hand (keyed, in a count's scope, on an expected line), refused when the catalog spells
    that SKU otherwise (``Sku-1``, ``ＳＫＵ-1`` for ``SKU-1``): it would be counted or booked as a SKU of its own."""
    spelling = getattr(catalog, "spelling", None)
    if spelling is not None and (known := spelling(sku)) is not None:
        raise InvalidSessionInput(f"{sku!r} is not in the catalog, but {known} is; write the SKU as the catalog spells it")
    return sku


def resolve_code(text: str, catalog: ItemLookup | None, decoded: Decoded | None = None) -> Item:
    """The item a scanned ``text`` means; ``InvalidSessionInput`` (one sentence) if it cannot be read at all."""
    if isinstance(text, str):
        text = _visible(text).strip()
    if not isinstance(text, str) or not text:
        raise InvalidSessionInput("the scan is empty; scan the barcode again")
    text = _ascii_digits(text)
    if len(text) > SCAN_MAX_LEN:
        raise InvalidSessionInput(f"the scan is {len(text)} characters long, too long for a barcode")
    if decoded is None:
        try:
            decoded = decode(text)
        except DecodeError as err:
            found = catalog.lookup(None, text) if catalog is not None else None
            if found is None:
                raise InvalidSessionInput(str(err)) from err
            return Item(found.sku, found.pack_size, text)
    if catalog is not None and (found := catalog.lookup(decoded, text)) is not None:
        return Item(found.sku, _units(found.pack_size, decoded), text)
    if decoded is not None and decoded.sscc_only:
        raise InvalidSessionInput(
            f"the scan {shown(decoded.data, 40)} is the SSCC of a pallet or parcel (00), not an item: nothing was"
            " added; scan the barcodes of the items or cases on it (a pallet label that also carries its contents"
            " (02) and their count (37) is taken)"
        )
    key = decoded.catalog_key if decoded is not None else text
    return Item(unknown_sku(key[:BARCODE_MAX_LEN]), _units(1, decoded), text, unknown=True)


def _visible(text: str) -> str:
    """``text`` without the invisible format characters no barcode holds: the direction marks a phone keyboard in
    Arabic or Hebrew puts around what is typed (U+200E, U+200F), a pasted zero-width space or byte-order mark.
    Kept, they made a known item an unknown barcode of its own, never checked. (A GS1 separator is a control
    character, GS, and stays.)"""
    if text.isascii():
        return text
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def _ascii_digits(text: str) -> str:
    """A code typed in another script's digits (Arabic-Indic "٤٠٠٦…" from a phone keyboard, full-width "４００６…"
    from an input method) as the ASCII digits a barcode carries; any other text unchanged. Taken as typed, the
    known item was booked under a made-up "unknown:٤٠٠٦…" no catalog ever learns, and a wrong check digit slipped
    through unchecked."""
    if text.isascii() or not text.isdecimal():
        return text
    return "".join(str(unicodedata.decimal(c)) for c in text)


def _units(pack_size: int, decoded: Decoded | None) -> int:
    """Units one scan counts: the pack size, times (37) on a logistic label of (02) contents, times (30) for a
    variable-count item (as agent.scanning)."""
    if decoded is not None and decoded.var_count is not None:
        return pack_size * decoded.var_count
    if decoded is not None and decoded.gtin is None and decoded.content_gtin and decoded.count:
        return pack_size * decoded.count
    return pack_size
