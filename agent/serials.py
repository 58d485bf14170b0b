"""Serialised items: one item is its GTIN and its GS1 serial number (21), whoever books it.

A serial is unique within its GTIN only (GS1): unit SN1 of a phone's GTIN and
case SN1 of its case GTIN, both the same SKU in the catalog, are two items. So
an event booking a serialised item carries both, ``{"gtin": …, "serial": …}``,
and a double scan is told by the two, by a scanner in a mode
(``agent.scanning``) and by a session (``agent.sessions``) alike: the item is
refused when its last movement at the location in the outbox, within
``SERIAL_AGAIN_S``, is this same movement (a phone received twice is two
phones; sold, then returned, it may be sold again).

A count names the serials it counted: ``{"serials": how many, "serials1": "SN1
SN2 …", "serials2": …}`` (``listed``).
"""

from __future__ import annotations

from collections.abc import Iterable

from hardware import DecodeError, decode
from protocol import Kind, StockEvent
from protocol.event import ATTR_STR_MAX_LEN

SERIAL_AGAIN_S = 24 * 3600.0  # a serialised item booked again as the same movement at a location within this: refused
SERIALS_SEPARATOR = " "  # between the serials a count lists: GS1 (21) holds only printable ASCII but the space

Unit = tuple[str, str]  # a serialised item: (its GTIN-14, or the code's catalog key without one; its serial (21))


def listed(serials: Iterable[str]) -> dict[str, str | int]:
    """{"serials": how many, "serials1": "SN1 SN2 …", …}, each value at most ``ATTR_STR_MAX_LEN`` characters."""
    lists: list[str] = []
    count = 0
    for serial in serials:
        count += 1
        if lists and len(lists[-1]) + len(SERIALS_SEPARATOR) + len(serial) <= ATTR_STR_MAX_LEN:
            lists[-1] += SERIALS_SEPARATOR + serial
        else:
            lists.append(serial)
    if not count:
        return {}
    return {"serials": count, **{f"serials{i}": text for i, text in enumerate(lists, 1)}}


def event_gtin(ev: StockEvent) -> str | None:
    """The GTIN of the serialised item an event booked: its ``gtin``, or, booked before events carried one, read
    from the ``barcode`` a scanner in a mode kept; None when neither says (a session's event of an older agent)."""
    gtin = ev.attrs.get("gtin")
    if isinstance(gtin, str):
        return gtin
    barcode = ev.attrs.get("barcode")
    if isinstance(barcode, str):
        try:
            return decode(barcode).catalog_key
        except DecodeError:
            return None
    return None


def same_item(ev: StockEvent, unit: Unit) -> bool:
    """Whether ``ev`` booked the serialised item ``unit``: its serial, and its GTIN when the event says it (one
    whose GTIN is unknown is taken for the item: refusing a double scan is the safe side)."""
    if ev.attrs.get("serial") != unit[1]:
        return False
    gtin = event_gtin(ev)
    return gtin is None or gtin == unit[0]


def booked_again(events: Iterable[StockEvent], unit: Unit, kind: Kind, reason: str | None) -> StockEvent | None:
    """The event that already booked ``unit`` as this movement (``kind``, ``reason``), or None. ``events``: those
    of its (location, SKU) within ``SERIAL_AGAIN_S``, newest first (``Outbox.booked``). Only its last movement
    counts: moved otherwise since (sold, then returned), this movement is a new one. Counts move no unit."""
    for ev in events:
        if ev.kind is Kind.COUNT or not same_item(ev, unit):
            continue
        return ev if ev.kind is kind and ev.reason == reason else None
    return None
