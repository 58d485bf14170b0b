"""Shared values of the session tests: barcodes and a small catalog."""

from __future__ import annotations

from agent.catalog import Catalog, make_item

# EAN-13s with valid check digits, and the case GTIN-14 of the first (a pack of 12).
APPLE = "4006381333931"
PEAR = "5012345678900"
PLUM = "4000417025005"
APPLE_CASE = "14006381333938"
STRANGER = "4007817327098"  # valid, not in the catalog
# A GTIN-14 of a variable-count item (indicator digit 9): its GS1 label says how many items it holds in (30).
NUTS = "94006381333934"


def nuts_label(count: int) -> str:
    """A GS1-128 label of ``count`` nuts (AI 30), as a scanner sends it (with its symbology identifier)."""
    return f"]C101{NUTS}30{count}"


def catalog() -> Catalog:
    return Catalog(
        [
            make_item(APPLE, "SKU-APPLE"),
            make_item(PEAR, "SKU-PEAR"),
            make_item(PLUM, "SKU-PLUM"),
            make_item(APPLE_CASE, "SKU-APPLE", 12),
            make_item(NUTS, "SKU-NUTS"),
        ]
    )
