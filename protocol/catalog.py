"""Barcode keys shared by the agent and the hub.

An agent that scans a barcode its catalog does not know still records the
movement, under the SKU ``unknown_sku(barcode)``. The hub's catalog computes
the same key for every barcode it learns, so it can find those events and
re-book them on the real SKU. Both sides must agree on the key, so it is
defined here, once:

* a GTIN (8, 12, 13 or 14 digits with a valid GS1 check digit) is keyed by
  its GTIN-14 (left-padded with zeros): an EAN-13 and its ITF-14 form with
  indicator 0 are the same key;
* any other text is keyed as scanned;
* the SKU is ``"unknown:" + key``, cut to ``SKU_MAX_LEN`` characters.
"""

from __future__ import annotations

import unicodedata

from protocol.event import SKU_MAX_LEN

UNKNOWN_SKU_PREFIX = "unknown:"
BARCODE_MAX_LEN = 64
GTIN_LENGTHS = (8, 12, 13, 14)


def gs1_check_digit_ok(digits: str) -> bool:
    """True when the last digit is the GS1 mod-10 check digit of the others."""
    if not digits.isascii() or not digits.isdigit() or len(digits) < 2:
        return False
    body = [int(c) for c in digits[:-1]]
    total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == int(digits[-1])


def gtin14(barcode: str) -> str | None:
    """The GTIN-14 of a GTIN-8/12/13/14 digit string with a valid check digit, else None."""
    if len(barcode) in GTIN_LENGTHS and gs1_check_digit_ok(barcode):
        return barcode.zfill(14)
    return None


def barcode_key(barcode: str) -> str:
    """The catalog key of a barcode: its GTIN-14 if it is a GTIN, else the text itself."""
    return gtin14(barcode) or barcode


def unknown_sku(barcode: str) -> str:
    """The SKU a movement of an unknown ``barcode`` is recorded under."""
    return (UNKNOWN_SKU_PREFIX + barcode_key(barcode))[:SKU_MAX_LEN]


def is_unknown_sku(sku: str) -> bool:
    return sku.startswith(UNKNOWN_SKU_PREFIX)


def sku_look(sku: str) -> str:
    """A SKU as it prints: compatibility forms folded (full-width letters, NFKC) and the invisible format characters
    (zero-width spaces and joiners, direction marks) dropped. Two SKUs of one look and another spelling are two
    SKUs no one can tell apart on a screen or a label."""
    folded = unicodedata.normalize("NFKC", sku)
    return "".join(c for c in folded if unicodedata.category(c) != "Cf")
