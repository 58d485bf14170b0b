"""Which quantity on one line is far past the usual: the one judgement of a session's line and a scanner's scan.

A staff session asks the handheld about such a line (``agent.sessions``: 409
``unlikely_quantity``) and holds a back-office scanner's line of it for a person;
a scanner booking in its mode (``agent.scanning.ModeRouter``) holds such a scan
too. The thresholds and the sentence are here, once; what each caller does with
the sentence is its own.
"""

from __future__ import annotations

from typing import Literal

# An outgoing line (a write-off, a transfer out, a scanner's sale or damage) of more than this many units, or one
# that takes the units of its SKU past twice the local count and ``ON_HAND_MARGIN`` more, is asked. An incoming line
# (a delivery, a transfer received, a return) of more than ``LINE_UNITS_PLAUSIBLE`` units (or than the delivery lists
# of its SKU, where that is more) is asked the same way: one line of a store's delivery is a few cases, and
# 1,000,000,000 was a barcode scanned into the quantity field, booked as a billion on the shelf.
LINE_UNITS_PLAUSIBLE = 10_000
ON_HAND_MARGIN = 10
# A count replaces the SKU's whole stock: it is asked when it takes the units of the SKU past ten times the local
# count on hand and past ``COUNT_UNITS_USUAL``. A count far from the books is what a count is for (a missing receipt
# doubles a shelf), so only a count of another scale is asked: 999,999 (a finger held on the 9) where 40 are on hand.
# Where the agent counts nothing (a new item, a first stock-take) a shelf of up to 1,000 is counted at once.
COUNT_SCALE = 10
COUNT_UNITS_USUAL = 1_000
# A typed quantity of this many digits or more is a barcode (an EAN-8 and longer) scanned into the quantity field far
# more often than a quantity, whatever else is normal for the SKU: asked always.
BARCODE_DIGITS = 8

Flow = Literal["out", "in", "count"]


def unlikely(
    flow: Flow,
    doing: str,
    sku: str,
    qty: int,
    units: int,
    *,
    local: int = 0,
    before: int = 0,
    listed: int = 0,
    alone: bool = False,
) -> str | None:
    """The sentence a line of ``units`` of ``sku`` (``qty`` as typed or scanned, times its pack) is asked, or None:

    - ``out``: more than ``LINE_UNITS_PLAUSIBLE`` units, or taking the ``before`` units of ``sku`` already there past
      twice the ``local`` count on hand and ``ON_HAND_MARGIN`` more;
    - ``in``: more than ``LINE_UNITS_PLAUSIBLE`` units, or than the delivery ``listed`` of ``sku``;
    - ``count``: taking the units of ``sku`` past ``COUNT_SCALE`` times the local count and ``COUNT_UNITS_USUAL``;
    - any ``qty`` of ``BARCODE_DIGITS`` digits or more.

    Asked once: at the line that crosses a mark (``before`` it, not after). ``doing`` starts the sentence
    ("receiving"). ``alone``: a scanner's scan, judged by its own units (each scan is an item in hand)."""
    digits = len(str(qty))
    barcode = (
        f"; a quantity of {digits} digits looks like a barcode scanned into the quantity field"
        if digits >= BARCODE_DIGITS
        else ""
    )
    where = " on one scan" if alone else (" in this session" + (f" ({units:,} on this line)" if before else ""))
    if flow == "out":
        shelf = max(local, 0)
        bound = shelf + max(ON_HAND_MARGIN, shelf)
        if units > LINE_UNITS_PLAUSIBLE:
            said = (
                f"{doing} {units:,} units of {sku} on one line is more than one line should hold"
                f" ({LINE_UNITS_PLAUSIBLE:,}), and this agent counts {local:,} on hand"
            )
        elif before <= bound < before + units:
            said = (
                f"{doing} {before + units:,} units of {sku}{where} is far more than the {local:,} on hand this"
                " agent counts"
            )
        elif barcode:
            said = f"{doing} {units:,} units of {sku} on one line"
        else:
            return None
    elif flow == "count":
        bound = max(COUNT_UNITS_USUAL, COUNT_SCALE * max(local, 0))
        if before <= bound < before + units:
            said = (
                f"{doing} {before + units:,} units of {sku}{where if before or alone else ''} is far more than the"
                f" {local:,} on hand this agent counts (more than {COUNT_SCALE} times it, and past"
                f" {COUNT_UNITS_USUAL:,})"
            )
        elif barcode:
            said = f"{doing} {units:,} units of {sku} on one line"
        else:
            return None
    else:
        if units > max(LINE_UNITS_PLAUSIBLE, listed):
            also = f", or the {listed:,} the delivery lists" if listed > LINE_UNITS_PLAUSIBLE else ""
            said = (
                f"{doing} {units:,} units of {sku} on one line is more than one line should hold"
                f" ({LINE_UNITS_PLAUSIBLE:,}{also})"
            )
        elif barcode:
            said = f"{doing} {units:,} units of {sku} on one line"
        else:
            return None
    return said + barcode
