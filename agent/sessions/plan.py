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
the hub learns what lot and expiry came in. A count is the exception:

- receive: ``receive`` +qty; the report compares with the expected lines
  (ok / over / short / unexpected).
- count: ONE ``count`` of the SKU's total (a count replaces the SKU's whole
  stock, so one per lot would leave only the last lot's units), with the lots'
  breakdown in its attrs: a SKU counted in one batch carries its lot and
  expiry as above; one counted in several carries {"lots": how many batches}
  and one key per batch, "lot1", "lot2" …, each "lot=LOT1;expiry=2026-12-31;qty=5"
  (a batch without GS1 data is "qty=2"). ``LOTS_PER_COUNT_MAX`` batches fit in
  an event's attrs; the session refuses a scan of one batch more. Stamped at the HLC of its last scan in
  the session, so a POS sale stamped before that scan is seen by the count
  (superseded) and one stamped after it applies on top. SKUs in scope never
  scanned are booked as counted 0 (stamped at the close) only when the session
  is closed with ``zero_unscanned``; otherwise they are reported "not_counted".
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
session id, the event's role and the SKU (and the batch, when it has one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.outbox import Movement
from agent.sessions.model import (
    CloseReport,
    Disposition,
    Line,
    ReportLine,
    Session,
    SessionType,
    Total,
)
from hardware import DecodeError, decode
from protocol import Kind, derived_event_id, unpack_hlc
from protocol.event import AttrValue

SOURCE_PREFIX = "session:"
ID_NAMESPACE = "shelfsync-session"
BATCH_KEYS = ("lot", "expiry", "best_before")  # the GS1 facts (10), (17), (15) of a batch, as Decoded.attrs names them
LOTS_PER_COUNT_MAX = 24  # batches one count event lists (with by, session, closed_by, bin, lots: under ATTRS_MAX_KEYS)

Batch = tuple[tuple[str, AttrValue], ...]  # a line's batch facts, in BATCH_KEYS order; () without GS1 batch data


def batch_facts(barcode: str | None) -> Batch:
    """The lot, expiry and best-before date a scanned barcode carries (GS1 (10), (17), (15)), as scanner mode puts
    them in attrs; () for a keyed line or a code without them. Read again from the stored code, so a close planned
    twice gives the same events."""
    if barcode is None:
        return ()
    try:
        found = decode(barcode).attrs()
    except DecodeError:
        return ()
    return tuple((key, found[key]) for key in BATCH_KEYS if key in found)


def _batch_totals(lines: Iterable[Line]) -> dict[tuple[str, Disposition | None, Batch], int]:
    """Effective units per (sku, disposition, batch), in the order each first appeared."""
    out: dict[tuple[str, Disposition | None, Batch], int] = {}
    for line in lines:
        if not line.undone:
            key = (line.sku, line.disposition, batch_facts(line.barcode))
            out[key] = out.get(key, 0) + line.qty
    return out


def _batch_id(batch: Batch) -> str:
    return "".join(f"/{key}={value}" for key, value in batch)


def _count_lots(batches: Mapping[tuple[str, Disposition | None, Batch], int], sku: str) -> dict[str, AttrValue]:
    """The attrs of a SKU's count telling its batches: those of its one batch, or one "lotN" key per batch."""
    mine = [(batch, qty) for (s, _, batch), qty in batches.items() if s == sku]
    if len(mine) == 1:
        return dict(mine[0][0])
    out: dict[str, AttrValue] = {"lots": len(mine)}
    for i, (batch, qty) in enumerate(mine, 1):
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


def plan_close(session: Session, lines: Iterable[Line]) -> ClosePlan:
    """The movements and the report of closing ``session``; its close must be decided (``close_hlc`` set)."""
    if session.close_hlc is None:
        raise ValueError(f"session {session.id} has no close time; decide the close before planning it")
    lines = list(lines)
    sums = totals(lines)
    movements = _movements(session, sums, _batch_totals(lines), session.close_hlc)
    report = CloseReport(
        events=len(movements),
        units=sum(t.qty for t in sums),
        lines=_report_lines(session, sums, zero_unscanned=session.zero_unscanned),
    )
    return ClosePlan(tuple(movements), report)


def _movements(
    session: Session,
    sums: tuple[Total, ...],
    batches: Mapping[tuple[str, Disposition | None, Batch], int],
    close_hlc: int,
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
    ) -> None:
        out.append(
            Movement(
                location=session.location,
                sku=sku,
                kind=kind_,
                qty=qty,
                source=SOURCE_PREFIX + session.id,
                ref=spec.ref or SOURCE_PREFIX + session.id,
                reason=reason,
                attrs=_attrs(session, {**dict(batch), **(attrs or {})}),
                event_id=derived_event_id(
                    unpack_hlc(at)[0], f"{ID_NAMESPACE}/{session.id}/{role}/{sku}{_batch_id(batch)}".encode()
                ),
                occurred_at=at,
            )
        )

    if kind is SessionType.COUNT:
        for t in sums:
            book("count", t.sku, Kind.COUNT, t.qty, t.last_hlc, attrs={**_bin(session), **_count_lots(batches, t.sku)})
        if session.zero_unscanned:
            counted = {t.sku for t in sums}
            for sku in spec.scope_skus:
                if sku not in counted:
                    book("count", sku, Kind.COUNT, 0, close_hlc, attrs={"zero_filled": True, **_bin(session)})
        return out
    expected = {e.sku: e.qty for e in spec.expected}
    for (sku, disp, batch), qty in batches.items():
        if qty <= 0:
            continue
        if kind is SessionType.RECEIVE:
            extra: dict[str, AttrValue] = {"expected": expected[sku]} if sku in expected else {}
            book("receive", sku, Kind.RECEIVE, qty, close_hlc, attrs=extra, batch=batch)
        elif kind is SessionType.TRANSFER_OUT:
            book("transfer_out", sku, Kind.TRANSFER_OUT, -qty, close_hlc, attrs={"to": spec.to_location}, batch=batch)
        elif kind is SessionType.TRANSFER_IN:
            # Closing the receiving session is the final receipt: the hub closes the transfer and writes off
            # what never arrived (docs/faults.md "Transfers").
            frm: dict[str, AttrValue] = {"from": spec.from_location} if spec.from_location else {}
            book("transfer_in", sku, Kind.TRANSFER_IN, qty, close_hlc, attrs={**frm, "final": True}, batch=batch)
        elif kind is SessionType.RETURN:
            disposition = disp or Disposition.RESTOCK
            marked: dict[str, AttrValue] = {"disposition": disposition.value}
            book(f"return.{disposition.value}", sku, Kind.RETURN, qty, close_hlc, attrs=marked, batch=batch)
            if disposition is Disposition.DAMAGED:
                book(
                    "return.damaged.adjust", sku, Kind.ADJUST, -qty, close_hlc, reason="damaged", attrs=marked,
                    batch=batch,
                )  # fmt: skip
        elif kind is SessionType.WRITE_OFF:
            book("write_off", sku, Kind.ADJUST, -qty, close_hlc, reason=spec.reason, batch=batch)
    return out


def _attrs(session: Session, extra: Mapping[str, AttrValue]) -> dict[str, AttrValue]:
    attrs: dict[str, AttrValue] = {"by": session.by, "session": session.id}
    if session.closed_by is not None and session.closed_by != session.by:
        attrs["closed_by"] = session.closed_by
    attrs.update(extra)
    return attrs


def _bin(session: Session) -> dict[str, AttrValue]:
    return {"bin": session.spec.bin} if session.spec.bin is not None else {}


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
