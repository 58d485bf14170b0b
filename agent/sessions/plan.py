"""Closing a session, as a pure function: its lines in, stock events and a report out.

No I/O here: ``plan_close`` depends only on the stored session and its stored
lines, so planning the same close twice (a retry after a crash) gives the same
movements with the same ids, times and content, and the outbox records them
only once.

What each session type books, one event per SKU (the document's line) and
GS1 batch — its lot, expiry and best-before date, read again from each line's
scanned barcode (``batch_facts``) and carried in the event's attrs as a
scanner in a mode books them ({"lot": …, "expiry": …, "best_before": …}):
``(17)261231(10)LOT1`` and ``(10)LOT2`` of one SKU received are two events, so
the hub learns what lot and expiry came in. A serialised item — a code
carrying a GS1 serial number (21) — is one item: each is an event of its own,
of the units its one scan counts (1; a serialised case its pack), carrying
{"serial": …, "gtin": …} beside its batch facts (a serial is unique within its
GTIN only: ``agent.serials``), so the hub's ledger shows which unit was
received, shipped, returned or written off (a recall or a warranty claim names
the unit). One event per unit rather than a list in one event's attrs: a list
holds only so many serials (``ATTRS_MAX_KEYS`` keys of ``ATTR_STR_MAX_LEN``
characters), a delivery of serialised goods does not stop there, and a row per
unit is what a search of the ledger for one serial finds. The session refuses a
serial scanned twice (one unit counted twice) and a serial with a quantity
other than 1 (``agent.sessions.manager``). A count is the exception:

- receive: ``receive`` +qty; the report compares with the expected lines
  (ok / over / short / unexpected).
- count: ONE ``count`` of the SKU's total (a count replaces the SKU's whole
  stock, so one per lot would leave only the last lot's units), with the lots'
  breakdown in its attrs: a SKU counted in one batch carries its lot and
  expiry as above; one counted in several carries {"lots": how many batches}
  and one key per batch, "lot1", "lot2" …, each "lot=LOT1;expiry=2026-12-31;qty=5"
  (a batch without GS1 data is "qty=2"). ``LOTS_PER_COUNT_MAX`` batches fit in
  an event's attrs; the session refuses a scan of one batch more. Its
  serialised units are listed too: {"serials": how many, "serials1": "SN1 SN2 …",
  "serials2": …}, space-separated (no serial (21) holds a space) in values of at
  most ``ATTR_STR_MAX_LEN`` characters, as many as the attrs' keys allow beside
  the lots (276 serials of the longest, 20 characters, with one lot); the
  session refuses a serial or a batch more (``count_fits``), never a line
  without GS1 data (keyed, or scanned without a lot), for which room is kept.
  Stamped at the HLC of its last scan in
  the session, so a POS sale stamped before that scan is seen by the count
  (superseded) and one stamped after it applies on top. SKUs in scope never
  scanned are booked as counted 0 (stamped at the close) only when the session
  is closed with ``zero_unscanned``; otherwise they are reported "not_counted".
  A count of a bin adds, per SKU, the units of the bins counted before it in the
  SKU's round of bin counts (``agent.sessions.bins``; ``carried`` in its attrs),
  and is stamped at the round's last count instead, so the hub applies what moved
  since on top: 5 in bin X then 3 in bin Y is a count of 8, not of 3.
- transfer_out: ``transfer_out`` −qty with attrs {"to": location}.
- transfer_in: ``transfer_in`` +qty with attrs {"from": location} when known and {"final": true}:
  closing the receiving session closes the transfer at the hub.
- return: ``return`` +qty per disposition; damaged units are then written off
  by an ``adjust`` −qty with reason "damaged" at the same instant, so the
  ledger shows the item came back and why it is not on the shelf.
- write_off: ``adjust`` −qty with the session's reason.

Deltas are stamped with the close's HLC: the moment the document was
confirmed is when the stock moved in the books (goods received at the dock are
not on a shelf a count could have seen until then).

Every event carries attrs {"by": staff id, "session": session id}, its source
is ``session:<session id>`` and its ref the document reference (or
``session:<session id>`` when none was given). Event ids are derived from the
session id, the event's role and the SKU (and the batch and serialised unit,
when it has them).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.outbox import Movement
from agent.serials import Unit as Unit  # noqa: PLC0414 (re-exported)
from agent.serials import listed
from agent.sessions.bins import Carry
from agent.sessions.model import (
    BinNote,
    CloseReport,
    Disposition,
    Line,
    ReportLine,
    Session,
    SessionType,
    Total,
)
from hardware import DecodeError, decode
from protocol import Kind, derived_event_id
from protocol.event import ATTRS_MAX_KEYS, AttrValue

SOURCE_PREFIX = "session:"
ID_NAMESPACE = "shelfsync-session"
BATCH_KEYS = ("lot", "expiry", "best_before")  # the GS1 facts (10), (17), (15) of a batch, as Decoded.attrs names them
LOTS_PER_COUNT_MAX = 24  # batches one count event lists (with by, session, closed_by, bin, lots: under ATTRS_MAX_KEYS)

# Keys of a count event besides its batches and serials: by, session, closed_by, bin, carried, and 2 for the lines
# without GS1 data that may still come (keyed, or scanned without a lot), never refused: the first such line of a SKU
# counted in one batch turns its lot and expiry keys into "lots", "lot1" and "lot2" (one key more, or two).
COUNT_KEYS_RESERVED = 7

Batch = tuple[tuple[str, AttrValue], ...]  # a line's batch facts, in BATCH_KEYS order; () without GS1 batch data
_Key = tuple[str, Disposition | None, Batch, Unit | None]  # what one delta event books: sku, disposition, batch, unit


@functools.lru_cache(maxsize=4096)
def _gs1(barcode: str) -> tuple[Batch, Unit | None]:
    """The batch facts and serialised unit of a stored code, decoded once however often a close or a check asks."""
    try:
        found = decode(barcode)
    except DecodeError:
        return (), None
    attrs = found.attrs()
    batch = tuple((key, attrs[key]) for key in BATCH_KEYS if key in attrs)
    return batch, ((found.catalog_key, found.serial) if found.serial is not None else None)


def batch_facts(barcode: str | None) -> Batch:
    """The lot, expiry and best-before date a scanned barcode carries (GS1 (10), (17), (15)), as scanner mode puts
    them in attrs; () for a keyed line or a code without them. Read again from the stored code, so a close planned
    twice gives the same events."""
    return _gs1(barcode)[0] if barcode is not None else ()


def unit_of(barcode: str | None) -> Unit | None:
    """The serialised item a scanned barcode names — its GTIN and serial number (21), which together name one item
    (a serial is unique within its GTIN) — or None for a keyed line or a code without a serial."""
    return _gs1(barcode)[1] if barcode is not None else None


def _delta_totals(lines: Iterable[Line]) -> dict[_Key, int]:
    """Effective units per (sku, disposition, batch, serialised unit), in the order each first appeared."""
    out: dict[_Key, int] = {}
    for line in lines:
        if not line.undone:
            key = (line.sku, line.disposition, batch_facts(line.barcode), unit_of(line.barcode))
            out[key] = out.get(key, 0) + line.qty
    return out


def _batch_id(batch: Batch, unit: Unit | None = None) -> str:
    serial = f"/serial={unit[0]} {unit[1]}" if unit is not None else ""
    return "".join(f"/{key}={value}" for key, value in batch) + serial


def count_attrs(scans: Iterable[tuple[str | None, int]]) -> dict[str, AttrValue]:
    """The attrs of one SKU's count telling its batches and its serialised units, from its effective lines'
    (barcode, units): those of its one batch, or one "lotN" key per batch; then "serials" and "serialsN"."""
    batches: dict[Batch, int] = {}
    serials: list[str] = []
    for barcode, qty in scans:
        batch = batch_facts(barcode)
        batches[batch] = batches.get(batch, 0) + qty
        if (unit := unit_of(barcode)) is not None:
            serials.append(unit[1])
    return {**_count_lots(batches), **listed(serials)}


def count_fits(attrs: Mapping[str, AttrValue]) -> bool:
    """Whether a count with these batch and serial attrs (``count_attrs``) is an event the hub takes, whatever
    else it carries and whatever lines without GS1 data it still takes (``COUNT_KEYS_RESERVED``)."""
    return len(attrs) + COUNT_KEYS_RESERVED <= ATTRS_MAX_KEYS


def _count_lots(batches: Mapping[Batch, int]) -> dict[str, AttrValue]:
    if len(batches) == 1:
        return dict(next(iter(batches)))
    out: dict[str, AttrValue] = {"lots": len(batches)}
    for i, (batch, qty) in enumerate(batches.items(), 1):
        out[f"lot{i}"] = ";".join([*(f"{key}={value}" for key, value in batch), f"qty={qty}"])
    return out


@dataclass(frozen=True, slots=True)
class ClosePlan:
    movements: tuple[Movement, ...]
    report: CloseReport


def totals(lines: Iterable[Line]) -> tuple[Total, ...]:
    """Effective lines summed per (sku, disposition), in the order each first appeared."""
    found: dict[tuple[str, Disposition | None], Total] = {}
    for line in lines:
        if line.undone:
            continue
        key = (line.sku, line.disposition)
        old = found.get(key)
        if old is None:
            found[key] = Total(line.sku, line.qty, 1, line.hlc, line.disposition)
        else:
            found[key] = Total(
                line.sku, old.qty + line.qty, old.lines + 1, max(old.last_hlc, line.hlc), line.disposition
            )
    return tuple(found.values())


def sku_totals(lines: Iterable[Line]) -> dict[str, int]:
    """Effective units per SKU, whatever the disposition."""
    out: dict[str, int] = {}
    for t in totals(lines):
        out[t.sku] = out.get(t.sku, 0) + t.qty
    return out


def preview(session: Session, lines: Iterable[Line]) -> tuple[ReportLine, ...]:
    """The report lines closing now would give (without zero-filling a count)."""
    return _report_lines(session, totals(lines), zero_unscanned=False)


def session_source(session: Session) -> str:
    """The source of every event a session's close books: how the outbox finds what a close recorded."""
    return SOURCE_PREFIX + session.id


def count_stamps(session: Session, lines: Iterable[Line]) -> dict[str, int]:
    """The HLC each ``count`` of closing a count session is stamped at, per SKU: its last scan in the session, and
    the close's for a SKU of its scope zero-filled (``zero_unscanned``)."""
    if session.type is not SessionType.COUNT or session.close_hlc is None:
        return {}
    stamps = {t.sku: t.last_hlc for t in totals(lines)}
    if session.zero_unscanned:
        for sku in session.spec.scope_skus:
            stamps.setdefault(sku, session.close_hlc)
    return stamps


def plan_close(session: Session, lines: Iterable[Line], carried: Mapping[str, Carry] | None = None) -> ClosePlan:
    """The movements and the report of closing ``session``; its close must be decided (``close_hlc`` set).
    ``carried`` (a bin count): per SKU, what its count adds to what it counted in its bin, and where it is stamped,
    in the SKU's round of bin counts (``agent.sessions.bins``)."""
    if session.close_hlc is None:
        raise ValueError(f"session {session.id} has no close time; decide the close before planning it")
    lines = list(lines)
    sums = totals(lines)
    movements = _movements(session, sums, lines, session.close_hlc, carried or {})
    report = CloseReport(
        events=len(movements),
        units=sum(t.qty for t in sums),
        lines=_report_lines(session, sums, zero_unscanned=session.zero_unscanned),
        bin_notes=bin_notes(session, carried or {}),
    )
    return ClosePlan(tuple(movements), report)


def bin_notes(session: Session, carried: Mapping[str, Carry]) -> tuple[BinNote, ...]:
    """Per SKU of a bin count whose booked count rests on what this agent holds moved since its round's last count
    (``agent.sessions.bins.Moved``): what the staff closing it are told."""
    bin_ = session.spec.bin
    if bin_ is None:
        return ()
    return tuple(
        BinNote(sku, bin_, m.since, m.before, m.between, m.put_in, m.taken, m.sentence(sku, bin_))
        for sku, carry in carried.items()
        if (m := carry.moved) is not None
    )


def _movements(
    session: Session,
    sums: tuple[Total, ...],
    lines: list[Line],
    close_hlc: int,
    carried: Mapping[str, Carry],
) -> list[Movement]:
    spec, kind = session.spec, session.type
    out: list[Movement] = []

    def book(
        role: str,
        sku: str,
        kind_: Kind,
        qty: int,
        at: int,
        *,
        reason: str | None = None,
        attrs: Mapping[str, AttrValue] | None = None,
        batch: Batch = (),
        unit: Unit | None = None,
    ) -> None:
        serial: dict[str, AttrValue] = {"serial": unit[1], "gtin": unit[0]} if unit is not None else {}
        out.append(
            Movement(
                location=session.location,
                sku=sku,
                kind=kind_,
                qty=qty,
                source=session_source(session),
                ref=spec.ref or session_source(session),
                reason=reason,
                attrs=_attrs(session, {**dict(batch), **serial, **(attrs or {})}),
                # Stamped with the session's opening, not its close: a session closed again (its store restored
                # from a backup taken while it was open) books the same ids, never a second delivery.
                event_id=derived_event_id(
                    session.opened_ms, f"{ID_NAMESPACE}/{session.id}/{role}/{sku}{_batch_id(batch, unit)}".encode()
                ),
                occurred_at=at,
            )
        )

    if kind is SessionType.COUNT:
        scans: dict[str, list[tuple[str | None, int]]] = {}
        for line in lines:
            if not line.undone:
                scans.setdefault(line.sku, []).append((line.barcode, line.qty))
        for t in sums:
            facts = {**_bin(session, carried, t.sku, t.qty), **count_attrs(scans[t.sku])}
            carry = carried.get(t.sku)
            at = t.last_hlc if carry is None else carry.at
            book("count", t.sku, Kind.COUNT, t.qty if carry is None else carry.qty(t.qty), at, attrs=facts)
        if session.zero_unscanned:
            counted = {t.sku for t in sums}
            for sku in spec.scope_skus:
                if sku not in counted:
                    zero = {"zero_filled": True, **_bin(session, carried, sku, 0)}
                    carry = carried.get(sku)
                    at = close_hlc if carry is None else carry.at
                    book("count", sku, Kind.COUNT, 0 if carry is None else carry.qty(0), at, attrs=zero)
        return out
    expected = {e.sku: e.qty for e in spec.expected}
    for (sku, disp, batch, unit), qty in _delta_totals(lines).items():
        if qty <= 0:
            continue
        if kind is SessionType.RECEIVE:
            extra: dict[str, AttrValue] = {"expected": expected[sku]} if sku in expected else {}
            book("receive", sku, Kind.RECEIVE, qty, close_hlc, attrs=extra, batch=batch, unit=unit)
        elif kind is SessionType.TRANSFER_OUT:
            to: dict[str, AttrValue] = {"to": spec.to_location}
            book("transfer_out", sku, Kind.TRANSFER_OUT, -qty, close_hlc, attrs=to, batch=batch, unit=unit)
        elif kind is SessionType.TRANSFER_IN:
            # Closing the receiving session is the final receipt: the hub closes the transfer and writes off
            # what never arrived (docs/faults.md "Transfers").
            frm: dict[str, AttrValue] = {"from": spec.from_location} if spec.from_location else {}
            frm["final"] = True
            book("transfer_in", sku, Kind.TRANSFER_IN, qty, close_hlc, attrs=frm, batch=batch, unit=unit)
        elif kind is SessionType.RETURN:
            disposition = disp or Disposition.RESTOCK
            marked: dict[str, AttrValue] = {"disposition": disposition.value}
            role = f"return.{disposition.value}"
            book(role, sku, Kind.RETURN, qty, close_hlc, attrs=marked, batch=batch, unit=unit)
            if disposition is Disposition.DAMAGED:
                book(
                    "return.damaged.adjust", sku, Kind.ADJUST, -qty, close_hlc, reason="damaged", attrs=marked,
                    batch=batch, unit=unit,
                )  # fmt: skip
        elif kind is SessionType.WRITE_OFF:
            book("write_off", sku, Kind.ADJUST, -qty, close_hlc, reason=spec.reason, batch=batch, unit=unit)
    return out


def _attrs(session: Session, extra: Mapping[str, AttrValue]) -> dict[str, AttrValue]:
    attrs: dict[str, AttrValue] = {"by": session.by, "session": session.id}
    if session.closed_by is not None and session.closed_by != session.by:
        attrs["closed_by"] = session.closed_by
    attrs.update(extra)
    return attrs


def _bin(session: Session, carried: Mapping[str, Carry], sku: str, counted: int) -> dict[str, AttrValue]:
    """A bin count's attrs: its bin, and in a round, ``carried``: the units its count holds beyond the bin's."""
    if session.spec.bin is None:
        return {}
    return {"bin": session.spec.bin, **({"carried": carried[sku].qty(counted) - counted} if sku in carried else {})}


def _report_lines(session: Session, sums: tuple[Total, ...], *, zero_unscanned: bool) -> tuple[ReportLine, ...]:
    per_sku: dict[str, int] = {}
    for t in sums:
        per_sku[t.sku] = per_sku.get(t.sku, 0) + t.qty
    spec = session.spec
    if session.type is SessionType.RECEIVE and spec.expected:
        lines = []
        for e in spec.expected:
            got = per_sku.get(e.sku, 0)
            status = "ok" if got == e.qty else ("over" if got > e.qty else "short")
            lines.append(ReportLine(e.sku, status, got, e.qty))
        expected = {e.sku for e in spec.expected}
        lines += [ReportLine(sku, "unexpected", qty) for sku, qty in per_sku.items() if sku not in expected and qty]
        return tuple(lines)
    if session.type is SessionType.COUNT:
        lines = [ReportLine(sku, "counted", qty) for sku, qty in per_sku.items()]
        for sku in spec.scope_skus:
            if sku not in per_sku:
                lines.append(ReportLine(sku, "zero_filled" if zero_unscanned else "not_counted", 0))
        return tuple(lines)
    return tuple(ReportLine(sku, "booked", qty) for sku, qty in per_sku.items() if qty)
