"""Scanners at the agent: each configured reader's scans become decisions, and movements in the outbox.

    journal = await ScanJournal.open(data_dir / "scans.sqlite3")
    router = ModeRouter(outbox, catalog, config.scanners, location="S001", journal=journal)
    async with ScanService(config.scanners, router, journal):
        ...                                  # scans are booked until the service stops

Per scan, in the order the reader delivered them (one task per reader):

1. the raw scan goes into the scan journal (nothing a scanner sent is ever
   silently dropped);
2. a complete scan is decoded with the reader's ``rcn_region``; a cut-off scan
   is not decoded but handed on with a ``DecodeError`` saying so, and so is
   the tail of a cut-off scan that came as a frame of its own (``_fragment``);
   a scan the line's going quiet ended (``by_gap``) waits for the reader's
   ``same_code_s``: the rest of it coming within it, every piece is refused in
   one sentence (``_consume``);
3. the router decides (``ScanRouter.route``) and returns a ``ScanOutcome``;
4. the outcome goes into the journal; a problem (bad check digit, cut-off,
   not recorded) is logged as one WARNING sentence and becomes the reader's
   last problem, shown by ``shelfsync-agent status``.

The router is pluggable: ``ScanService(..., router)`` or ``service.router =``.
The default, ``ModeRouter``, books the reader's configured mode; a session
router (agent.sessions) offers the scan to the session open on that reader
first and falls back to it.

A reader that reports itself unavailable (unplugged, port missing) is marked so
in the journal; the agent keeps running and the reader reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, Self, TypeVar

import hardware
from agent.catalog import CatalogItem, ItemLookup
from agent.errors import AgentError, InvalidMovement, OutboxClosed, OutboxError
from agent.outbox import Movement, Outbox
from agent.quantities import Flow, unlikely
from agent.scan_journal import JournalError, ScanJournal
from agent.serials import SERIAL_AGAIN_S, Unit, booked_again, event_gtin, listed
from protocol import Kind, wall_ms_now
from protocol import catalog as barcodes
from protocol.event import ATTR_STR_MAX_LEN, ATTRS_MAX_KEYS
from protocol.values import CONTROL_RE, shown

if TYPE_CHECKING:  # agent.config imports this module for the mode names
    from agent.config import ScannerSection

log = logging.getLogger(__name__)

PROBLEMS_SAID_MAX = 10  # problem scans in a row of one reader logged one by one; the rest are only journaled
COUNT_RESET_S = 900.0  # a count-mode reader starts a new count of a SKU after this long without scanning it
# The same code again from one reader within this long of its scan before is a double read (a shaky trigger reads one
# label twice, a few ms apart), never a second item: nobody aims and pulls a trigger twice in 0.1 s. [[scanner]]
# same_code_s sets it per reader; 0 turns it off (a scanner in batch mode sends what it stored all at once).
SAME_CODE_S = 0.1
SAME_CODE_S_MAX = 5.0
STOP_TIMEOUT_S = 10.0
RECOVER_SLACK_MS = 1_000  # an interrupted scan is matched to movements recorded since it was journaled, less this

_T = TypeVar("_T")
RunUnit = tuple[str | None, str]  # a serialised item a running count holds: its GTIN (None: an older event's), serial


class ScanResult(StrEnum):
    BOOKED = "booked"  # a stock event with the catalog's SKU is in the outbox
    UNKNOWN = "unknown"  # not in the catalog: a stock event for "unknown:<barcode>" is in the outbox
    HANDLED = "handled"  # taken by a session or another router (it says what it did in the message)
    DECODE_ERROR = "decode_error"  # the barcode cannot be trusted (bad check digit …): nothing booked
    INCOMPLETE = "incomplete"  # the frame was cut off: nothing booked, scan again
    FAILED = "failed"  # the movement could not be recorded (outbox error, invalid movement)


PROBLEMS = frozenset({ScanResult.DECODE_ERROR, ScanResult.INCOMPLETE, ScanResult.FAILED})


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    """What became of one scan; ``message`` is the sentence for the operator and the journal."""

    result: ScanResult
    message: str
    event_ids: tuple[bytes, ...] = ()  # the events recorded for it, durable in the outbox
    location: str | None = None
    sku: str | None = None
    kind: Kind | None = None
    qty: int | None = None
    # The outbox refused to write it (a full disk): said every time, never taken for the scanner's own noise.
    unrecorded: bool = False

    @property
    def problem(self) -> bool:
        """The scan was not booked and the operator must act (scan again, fix the label)."""
        return self.result in PROBLEMS


class ScanRouter(Protocol):
    """Turns one scan into a decision. ``error`` is set (and ``decoded`` None) when the scan cannot be trusted.
    ``double_read`` (passed only when set) says why the scan is likely the reader's scan before read twice (the
    same code within its ``same_code_s``): it is booked only by a person's word (held in a session), never blindly."""

    async def route(
        self,
        reader_id: str,
        scan: hardware.Scan,
        decoded: hardware.Decoded | None,
        error: hardware.DecodeError | None,
        *,
        double_read: str | None = None,
    ) -> ScanOutcome: ...


@dataclass(frozen=True, slots=True)
class ModeRule:
    """How a reader mode books one scan: the event kind, the sign of its qty, the reason code."""

    kind: Kind
    sign: int  # +1 or -1; 0 for count (the qty is the running absolute count)
    reason: str | None = None
    doing: str = ""  # how a sentence about a quantity far past the usual says it ("receiving 250,000 units of …")

    @property
    def flow(self) -> Flow:
        return "count" if self.kind is Kind.COUNT else "in" if self.sign > 0 else "out"


MODES: dict[str, ModeRule] = {
    "receive": ModeRule(Kind.RECEIVE, +1, doing="receiving"),
    "sale": ModeRule(Kind.SALE, -1, doing="selling"),
    "return": ModeRule(Kind.RETURN, +1, doing="taking back"),
    "damage": ModeRule(Kind.ADJUST, -1, "damaged", doing="writing off"),
    "found": ModeRule(Kind.ADJUST, +1, "found", doing="booking as found"),
    "count": ModeRule(Kind.COUNT, 0, doing="counting"),
}


def unknown_sku(key: str) -> str:
    """``unknown:<barcode>`` as the hub keys it (``protocol.catalog``); control characters made printable."""
    return barcodes.unknown_sku(CONTROL_RE.sub("\ufffd", key))


def label_count(decoded: hardware.Decoded | None) -> int | None:
    """How many a scanned GS1 label says it holds ((30) of a variable-count item, (37) of a logistic label's (02)
    contents), or None: the quantity nobody at a scanner checked, where a catalog's pack size is known."""
    if decoded is None:
        return None
    if decoded.var_count is not None:
        return decoded.var_count
    if decoded.gtin is None and decoded.content_gtin and decoded.count:
        return decoded.count
    return None


def scan_units(item: CatalogItem | None, decoded: hardware.Decoded | None) -> int:
    """Base units one scan counts: the pack size, times (37) for a logistic label of (02) contents, times (30) for a
    variable-count item (``hardware.decode`` refuses (30) on a GTIN of fixed quantity)."""
    units = item.pack_size if item is not None else 1
    if decoded is not None and decoded.var_count is not None:
        return units * decoded.var_count
    if decoded is not None and decoded.gtin is None and decoded.content_gtin and decoded.count:
        units *= decoded.count
    return units


class ModeRouter:
    """The default router: books each scan as its reader's configured mode (``ScannerSection.mode``).

    Known barcodes are booked under their SKU with qty = sign × pack size;
    unknown ones under ``unknown:<GTIN-14 or text>`` with ``attrs.unknown`` set,
    for the hub to re-book once its catalog learns them. In ``count`` mode each
    scan adds its units to a running count of that SKU at that reader and
    records a ``count`` event with the total (the latest count wins at the hub);
    the running count starts again after ``count_reset_s`` without a scan of it.

    A serialised item (a GS1 serial number (21)) is one unit, named by its GTIN
    and serial (``agent.serials``: a serial is unique within its GTIN), which its
    event carries (``gtin``, ``serial``). Scanned again, it is refused aloud as a
    double scan (a ``failed`` outcome: a warning, the reader's last problem, the
    journal) when its last movement at the location in the outbox within
    ``SERIAL_AGAIN_S`` — from any reader or session — is this same movement
    (kind and reason); sold, then returned, it may be sold again. In ``count``
    mode, when the running count of its SKU at this reader already counted it;
    each count event of a running count lists every serial the count holds
    (``serials``, ``serials1`` …, as a session's count does).
    """

    def __init__(
        self,
        outbox: Outbox,
        catalog: ItemLookup,
        scanners: Iterable[ScannerSection],
        *,
        location: str,
        journal: ScanJournal | None = None,
        wall_clock_ms: Callable[[], int] = wall_ms_now,
        monotonic_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self.outbox = outbox
        self.catalog = catalog
        self.readers: dict[str, ScannerSection] = {s.id: s for s in scanners}
        self.location = location
        self.journal = journal
        self._wall_clock_ms = wall_clock_ms
        self._monotonic_s = monotonic_s
        # (reader, location, sku) -> (total, at_ms, at on the monotonic clock): a running count's pause is measured
        # on the monotonic clock while the agent runs, so a wall clock jumping in the middle neither ends nor
        # prolongs it (after a restart only the wall clock is left: _count_from_outbox).
        self._counts: dict[tuple[str, str, str], tuple[int, int, float]] = {}
        self._run_units: dict[tuple[str, str, str], list[RunUnit]] = {}  # … -> the serialised items its count holds
        self._serialised = asyncio.Lock()  # a serialised item's check and booking, so two readers cannot both pass
        # Why a count of (location, sku) must not be booked now, or None (agent.sessions: an open count session
        # of the SKU, whose close would replace this count, or this count the session's).
        self.count_guard: Callable[[str, str], Awaitable[str | None]] | None = None
        # How a serialised item (location, sku, unit) is already on its way to be booked as this movement (kind,
        # reason), or None (agent.sessions: a line of an open session that books it when it closes).
        self.unit_guard: Callable[[str, str, Unit, Kind, str | None], Awaitable[str | None]] | None = None

    async def route(
        self,
        reader_id: str,
        scan: hardware.Scan,
        decoded: hardware.Decoded | None,
        error: hardware.DecodeError | None,
        *,
        double_read: str | None = None,
    ) -> ScanOutcome:
        if error is not None or decoded is None:
            return problem_outcome(reader_id, scan, error)
        if double_read is not None:  # nobody at the scanner can say it was a second item: refused aloud
            return ScanOutcome(
                ScanResult.FAILED,
                f"Scan {shown(decoded.data, 40)} was not booked: {double_read}; if it was a second item, scan it again.",
            )
        reader = self.readers.get(reader_id)
        if reader is None:
            return ScanOutcome(ScanResult.FAILED, f"Scanner {reader_id!r} has no mode configured; nothing was booked.")
        rule = MODES[reader.mode]
        location = reader.location or self.location
        item = self.catalog.lookup(decoded, scan.text)
        barcode = decoded.data[:ATTR_STR_MAX_LEN]
        attrs: dict[str, str | int | bool] = dict(decoded.attrs())
        attrs["barcode"] = barcode
        if item is not None:
            sku = item.sku
            if item.pack_size > 1:
                attrs["pack_size"] = item.pack_size
        elif decoded.sscc_only:  # no catalog ever learns it: booked, it stayed an unknown SKU for good
            return ScanOutcome(
                ScanResult.FAILED,
                f"Scan {shown(barcode, 40)} is the SSCC of a pallet or parcel (00), not an item: nothing was booked;"
                " scan the barcodes of the items or cases on it (a pallet label that also carries its contents (02)"
                " and their count (37) is booked).",
                location=location,
            )
        else:
            sku = unknown_sku(decoded.catalog_key)
            attrs["unknown"] = True
        if decoded.serial is not None:
            attrs["gtin"] = decoded.catalog_key[:ATTR_STR_MAX_LEN]
        units = scan_units(item, decoded)
        if rule.kind is Kind.COUNT and item is not None and self._is_bundle(sku):
            return ScanOutcome(
                ScanResult.FAILED,
                f"Scan {shown(barcode, 40)} is {shown(sku, bare=True)}, a bundle (a kit or set made of other SKUs),"
                " which the hub does not take a count of; nothing was booked: count each of its parts instead.",
                location=location,
                sku=sku,
            )
        if rule.kind is Kind.COUNT and self.count_guard is not None and (why := await self.count_guard(location, sku)):
            return ScanOutcome(
                ScanResult.FAILED,
                f"Scan {shown(barcode, 40)} is {shown(sku, bare=True)}, which is {why}.",
                location=location,
                sku=sku,
            )
        if label_count(decoded) is not None and (said := await self._unlikely(rule, location, sku, units)):
            return ScanOutcome(
                ScanResult.FAILED,
                f"Scan {shown(barcode, 40)} was held, not booked: {said}; nobody at the scanner can confirm it, so if"
                " the label's quantity is right book it on the handheld, where a person confirms it, and else fix"
                " the label.",
                location=location,
                sku=sku,
            )
        async with self._serialised if decoded.serial is not None else contextlib.nullcontext():
            return await self._book(reader, rule, location, sku, item, decoded, attrs, units)

    async def _unlikely(self, rule: ModeRule, location: str, sku: str, units: int) -> str | None:
        """The sentence a session would ask a handheld about a scan of ``units`` of ``sku`` (``agent.quantities``:
        judged by the scan's own units, as a scanner's line of a session is), or None."""
        local = 0
        if rule.flow != "in":
            local = (await self.outbox.counts.local_count(location, sku)).on_hand
        return unlikely(rule.flow, rule.doing, shown(sku, bare=True), 1, units, local=local, alone=True)

    async def _book(
        self,
        reader: ScannerSection,
        rule: ModeRule,
        location: str,
        sku: str,
        item: CatalogItem | None,
        decoded: hardware.Decoded,
        attrs: dict[str, str | int | bool],
        units: int,
    ) -> ScanOutcome:
        barcode = str(attrs["barcode"])
        last = await self._continued_count(reader, location, sku) if rule.kind is Kind.COUNT else None
        unit = (decoded.catalog_key, decoded.serial) if decoded.serial is not None else None
        run: list[RunUnit] = await self._run(reader, location, sku) if last is not None else []
        if unit is not None and (again := await self._booked_before(rule, location, sku, unit, last, run)):
            return ScanOutcome(
                ScanResult.FAILED,
                f"Scan {shown(barcode, 40)} is serial number {shown(unit[1], 40, bare=True)} of"
                f" {shown(sku, bare=True)}, {again}; nothing was booked: a serialised item is one unit, scan the next"
                " item.",
                location=location,
                sku=sku,
            )
        if rule.kind is Kind.COUNT:
            qty = units + (last[0] if last is not None else 0)
            run = [*run, unit] if unit is not None else run
            attrs.update(listed(serial for _, serial in run))
            if len(attrs) > ATTRS_MAX_KEYS:
                return ScanOutcome(
                    ScanResult.FAILED,
                    f"Scan {shown(barcode, 40)} is a serialised item of {shown(sku, bare=True)}, whose running count on"
                    f" this scanner already lists {len(run) - 1} serial numbers, as many as one count can tell the hub;"
                    " nothing was booked: count the rest in a count session once this count has ended.",
                    location=location,
                    sku=sku,
                )
        else:
            qty = rule.sign * units
        movement = Movement(location, sku, rule.kind, qty, f"scanner:{reader.id}", reason=rule.reason, attrs=attrs)
        try:
            recorded = await self.outbox.record([movement], reserved=True)  # a scan: lives nowhere else (agent.reserve)
        except OutboxClosed:
            raise
        except InvalidMovement as err:
            return ScanOutcome(
                ScanResult.FAILED, f"Scan {shown(barcode, 40)} cannot be booked: {err}.", location=location, sku=sku
            )
        except OutboxError as err:
            return ScanOutcome(
                ScanResult.FAILED,
                f"Scan {shown(barcode, 40)} was NOT recorded: {err}.",
                location=location,
                sku=sku,
                unrecorded=True,
            )
        if rule.kind is Kind.COUNT:
            self._counts[(reader.id, location, sku)] = (qty, self._wall_clock_ms(), self._monotonic_s())
            self._run_units[(reader.id, location, sku)] = run
        ids = tuple(ev.event_id for ev in recorded.events)
        what = f"{rule.kind.value} {qty:+d}" if rule.kind is not Kind.COUNT else f"count {qty}"
        if item is None:
            message = (
                f"Barcode {shown(decoded.catalog_key, 40, bare=True)} is not in the catalog; "
                f"booked as {shown(sku, bare=True)} ({what}) for the hub to re-book."
            )
            return ScanOutcome(ScanResult.UNKNOWN, message, ids, location, sku, rule.kind, qty)
        pack = f" (a pack of {units})" if units > 1 else ""
        return ScanOutcome(
            ScanResult.BOOKED, f"Booked {what} of {sku}{pack} at {location}.", ids, location, sku, rule.kind, qty
        )

    async def recover_interrupted(self) -> None:
        """Journal as booked each scan the agent stopped while booking (``interrupted``) whose movements the outbox
        holds: the outbox commits first, the journal after, so a kill between the two left a booked scan marked a
        problem, "check whether it was recorded", and staff who checked by scanning it again booked it twice.
        A reader's movements recorded after the newest one its journaled scans booked are its interrupted scan's
        when it has one (each reader books one scan at a time); a reader with several (the journal refused its
        writes a while: a full disk) is left as it is, since which of them booked what cannot be told."""
        if self.journal is None:
            return
        by_reader: dict[str, list[tuple[int, int]]] = {}
        for scan_id, reader_id, received_ms in self.journal.interrupted_scans:
            by_reader.setdefault(reader_id, []).append((scan_id, received_ms))
        for reader_id, scans in by_reader.items():
            if reader_id not in self.readers or len(scans) != 1:
                continue
            [(scan_id, received_ms)] = scans
            try:
                after = await self.journal.last_booked_event(reader_id, scan_id)
                events = await self.outbox.recorded_after(
                    f"scanner:{reader_id}", after, since_wall_ms=received_ms - RECOVER_SLACK_MS
                )
                if not events or len({(ev.location, ev.kind) for ev in events}) != 1:
                    continue
                first = events[0]
                what = (
                    f"{first.kind.value} {first.qty:+d} of {first.sku}"
                    if len(events) == 1
                    else f"{first.kind.value} of {len(events)} SKUs ({', '.join(ev.sku for ev in events)})"
                )
                message = (
                    f"Booked {what} at {first.location} before the agent stopped (found in the outbox at its restart)."
                )
                unknown = len(events) == 1 and first.sku.startswith("unknown:")
                await self.journal.found_booked(
                    scan_id, reader_id, result=(ScanResult.UNKNOWN if unknown else ScanResult.BOOKED).value,
                    message=message, location=first.location, sku=first.sku, kind=first.kind.value, qty=first.qty,
                    event_ids=tuple(ev.event_id for ev in events),
                )  # fmt: skip
            except (JournalError, OutboxError) as err:
                log.warning("Whether scanner %r's interrupted scan was booked could not be found: %s", reader_id, err)
                continue
            log.info("Scanner %r: %s", reader_id, message)

    async def running_count(self, location: str, sku: str) -> str | None:
        """The id of a reader in count mode whose running count of (location, sku) is still going (scanned within
        its ``count_reset_s``), or None: its next scan books the SKU's whole count, so a count session of the SKU
        opened now would replace it at its close, or be replaced by it (agent.sessions asks before opening one)."""
        for reader in self.readers.values():
            if reader.mode != "count" or (reader.location or self.location) != location:
                continue
            with contextlib.suppress(OutboxError):
                if await self._continued_count(reader, location, sku) is not None:
                    return reader.id
        return None

    async def _booked_before(
        self, rule: ModeRule, location: str, sku: str, unit: Unit, last: tuple[int, int] | None, run: list[RunUnit]
    ) -> str | None:
        """How a serialised item was already booked as this scan would book it, or None: the same movement of it
        at the location in the outbox within ``SERIAL_AGAIN_S`` (any reader or session: a phone received twice is
        two phones), or, counting, in this reader's running count of its SKU (counted twice, it was 2 units)."""
        if rule.kind is Kind.COUNT:
            if last is not None and any(serial == unit[1] and gtin in (None, unit[0]) for gtin, serial in run):
                return f"already in this scanner's running count of {shown(sku, bare=True)} ({last[0]})"
            return None
        since_ms = self.outbox.recent_since_ms(SERIAL_AGAIN_S)  # timed on the monotonic clock while the agent runs
        ev = booked_again(await self.outbox.booked(location, sku, since_wall_ms=since_ms), unit, rule.kind, rule.reason)
        if ev is not None:
            return f"already booked ({rule.kind.value} {ev.qty:+d} at {location}, by {shown(ev.source, bare=True)})"
        if self.unit_guard is not None:
            return await self.unit_guard(location, sku, unit, rule.kind, rule.reason)
        return None

    async def _run(self, reader: ScannerSection, location: str, sku: str) -> list[RunUnit]:
        """The serialised items the reader's running count of (location, sku) holds, in the order counted: kept
        in memory, read again from the outbox after a restart (``_run_units``)."""
        key = (reader.id, location, sku)
        if key not in self._run_units:
            self._run_units[key] = await self._run_from_outbox(reader, location, sku)
        return self._run_units[key]

    async def _run_from_outbox(self, reader: ScannerSection, location: str, sku: str) -> list[RunUnit]:
        """The serialised items of the reader's running count of (location, sku) as its count events in the outbox
        say, each the item its scan counted: newest first, back to the one that started the run (recorded more
        than ``count_reset_s`` after the one before it); (None, serial) when an event of an older agent does not
        say its GTIN."""
        found: list[RunUnit] = []
        newer_ms: int | None = None
        for ev in await self.outbox.booked(location, sku, Kind.COUNT, source=f"scanner:{reader.id}"):
            if newer_ms is not None and newer_ms - ev.wall_ms > reader.count_reset_s * 1000:
                break
            if isinstance(serial := ev.attrs.get("serial"), str):
                found.append((event_gtin(ev), serial))
            newer_ms = ev.wall_ms
        return found[::-1]

    def _is_bundle(self, sku: str) -> bool:
        """Whether the hub's bundles, as the catalog last heard them, hold ``sku`` (a count of one the hub refuses,
        after the reader's operator counted); not known yet, the count is booked and the hub decides."""
        is_bundle = getattr(self.catalog, "is_bundle", None)
        return bool(is_bundle is not None and is_bundle(sku))

    async def _continued_count(self, reader: ScannerSection, location: str, sku: str) -> tuple[int, int] | None:
        """(total, at_ms) of the reader's running count of (location, sku) that the next scan continues, or None: the
        next scan starts a new count."""
        held = self._counts.get((reader.id, location, sku))
        if held is not None:
            return held[:2] if self._monotonic_s() - held[2] <= reader.count_reset_s else None
        last = await self._count_from_outbox(reader, location, sku)
        if last is None or self._wall_clock_ms() - last[1] > reader.count_reset_s * 1000:
            return None
        return last

    async def _count_from_outbox(self, reader: ScannerSection, location: str, sku: str) -> tuple[int, int] | None:
        """(total, at_ms on this router's clock) of the reader's last count of (location, sku) within its
        ``count_reset_s``, as the outbox holds it (after a restart). The outbox, not the scan journal: a count is
        committed there first, and what became of its scan is journaled after, in another file; an agent killed
        between the two left the journal a count behind what was booked."""
        since_ms = self.outbox.wall_ms() - int(reader.count_reset_s * 1000)
        for ev in await self.outbox.booked(
            location, sku, Kind.COUNT, since_wall_ms=since_ms, source=f"scanner:{reader.id}"
        ):
            return ev.qty, self._wall_clock_ms() - (self.outbox.wall_ms() - ev.wall_ms)
        return None


def problem_outcome(reader_id: str, scan: hardware.Scan, error: hardware.DecodeError | None) -> ScanOutcome:
    """The outcome of a scan that cannot be booked: cut off, or failing to decode."""
    if not scan.complete:
        return ScanOutcome(
            ScanResult.INCOMPLETE,
            f"The scan {shown(scan.text, 40)} from scanner {reader_id!r} was cut off; scan the item again.",
        )
    reason = str(error) if error is not None else "the scan could not be decoded"
    return ScanOutcome(ScanResult.DECODE_ERROR, reason)


def make_reader(section: ScannerSection, on_status: hardware.StatusCallback) -> hardware.ScannerReader:
    """The hardware reader of one ``[[scanner]]`` table."""
    device = section.device
    if isinstance(device, hardware.SerialScannerConfig):
        return hardware.SerialScanner(device, on_status=on_status)
    return hardware.WedgeScanner(device, on_status=on_status)


ReaderFactory = Callable[["ScannerSection", hardware.StatusCallback], hardware.ScannerReader]


class _Stopped(Exception):
    """The outbox was closed: a reader's scans are no longer booked."""


@dataclass(frozen=True, slots=True)
class _Taken:
    """A scan decoded, judged against its reader's scan before, and journaled; not yet routed."""

    scan: hardware.Scan
    decoded: hardware.Decoded | None
    error: hardware.DecodeError | None
    double_read: str | None
    scan_id: int | None  # its journal row (None: not kept, or the journal failed)
    kept: bool  # False: a known problem past its reader's rows of the day, counted once decided

    @property
    def unkept(self) -> hardware.Scan | None:
        return None if self.kept else self.scan


class ScanService:
    """Runs every configured reader and routes each scan. ``async with`` starts and stops it."""

    def __init__(
        self,
        scanners: Iterable[ScannerSection],
        router: ScanRouter,
        journal: ScanJournal,
        *,
        reader_factory: ReaderFactory = make_reader,
    ) -> None:
        self.scanners: dict[str, ScannerSection] = {s.id: s for s in scanners}
        self.router = router
        self.journal = journal
        self._reader_factory = reader_factory
        self._readers: dict[str, hardware.ScannerReader] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._status_writes: set[asyncio.Task[None]] = set()
        self.statuses: dict[str, hardware.ReaderStatus] = {}  # as the readers last reported
        self.journaled_statuses: dict[str, hardware.ReaderStatus] = {}  # as the journal holds them
        self._stopped = False
        self.outcomes = 0  # scans decided since start (tests and benchmarks wait on it)
        self._problems_in_a_row: dict[str, int] = {}  # per reader: problem scans since its last good one
        self._last_scan: dict[str, hardware.Scan] = {}  # per reader: its scan before (a double read repeats it)
        self._problem_before: dict[str, bool] = {}  # per reader: whether its scan before was cut off or refused
        self.decided = asyncio.Condition()  # notified after each scan decided and each status journaled

    @property
    def readers(self) -> Mapping[str, hardware.ScannerReader]:
        return self._readers

    async def start(self) -> None:
        if self._stopped:
            raise AgentError("this scan service was stopped; make a new one")
        if self._tasks:
            return
        for section in self.scanners.values():
            reader = self._reader_factory(section, self._on_status)
            self._readers[section.id] = reader
            reader.start()
            self._tasks.append(asyncio.create_task(self._consume(section, reader), name=f"scans:{section.id}"))
        if self.scanners:
            log.info(
                "Started %d scanner(s): %s.",
                len(self.scanners),
                ", ".join(f"{s.id} ({s.mode})" for s in self.scanners.values()),
            )

    async def stop(self) -> None:
        """Close every reader; the scans already received are still routed. Safe twice."""
        self._stopped = True
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            await reader.close()
        tasks, self._tasks = self._tasks, []
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for task in pending:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._status_writes:
            await asyncio.wait(list(self._status_writes), timeout=STOP_TIMEOUT_S)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_status(self, reader_id: str, *, available: bool, timeout_s: float) -> hardware.ReaderStatus:
        """Wait until ``reader_id`` is (un)available and that is in the journal (bounded)."""

        def reached() -> bool:
            status = self.journaled_statuses.get(reader_id)
            return status is not None and status.available is available

        async with asyncio.timeout(timeout_s), self.decided:
            await self.decided.wait_for(reached)
        return self.journaled_statuses[reader_id]

    async def wait_decided(self, count: int, timeout_s: float) -> None:
        """Wait until ``count`` scans have been decided since start (bounded)."""
        async with asyncio.timeout(timeout_s), self.decided:
            await self.decided.wait_for(lambda: self.outcomes >= count)

    # --- availability ----------------------------------------------------------
    def _on_status(self, status: hardware.ReaderStatus) -> None:
        self.statuses[status.reader_id] = status
        section = self.scanners.get(status.reader_id)
        device = section.device_path if section is not None else ""
        if status.available:
            error = None
        elif status.error is not None:
            error = status.error.reason
        else:
            error = "the agent closed it"
        task = asyncio.get_running_loop().create_task(self._write_status(status, device, error))
        self._status_writes.add(task)
        task.add_done_callback(self._status_writes.discard)

    async def _write_status(self, status: hardware.ReaderStatus, device: str, error: str | None) -> None:
        try:
            await self.journal.note_status(status.reader_id, device, status.available, status.changed_at_ms, error)
        except JournalError as err:
            log.error("The state of scanner %r could not be journaled: %s", status.reader_id, err)
        self.journaled_statuses[status.reader_id] = status
        async with self.decided:
            self.decided.notify_all()

    # --- scans -------------------------------------------------------------------
    def _say_problem(self, reader_id: str, message: str, *, said: bool = False) -> None:
        """One WARNING per problem scan, up to ``PROBLEMS_SAID_MAX`` in a row; past that one sentence says the
        rest are only journaled. A scanner spewing line noise made a warning per frame, thousands a minute,
        burying every other line of the log; each problem is still in the journal and in ``status``.
        ``said``: the hardware reader logged this one already (a cut-off scan), so it is only counted here."""
        count = self._problems_in_a_row.get(reader_id, 0) + 1
        self._problems_in_a_row[reader_id] = count
        if count > PROBLEMS_SAID_MAX or said:
            log.debug("Scanner %r: %s", reader_id, message)
            return
        log.warning("Scanner %r: %s", reader_id, message)
        if count == PROBLEMS_SAID_MAX:
            log.warning(
                "Scanner %r sent %d problem scans in a row (line noise, or a scanner whose settings do not match?); "
                "further ones are kept in the scan journal but not logged until it sends a good scan.",
                reader_id, count,
            )  # fmt: skip

    def _problems_ended(self, reader_id: str) -> None:
        """A scan that is no problem ends the reader's run of problems; one sentence when it was not all logged."""
        count = self._problems_in_a_row.pop(reader_id, 0)
        if count > PROBLEMS_SAID_MAX:
            log.info("Scanner %r sent a good scan after %d problem scans in a row.", reader_id, count)

    async def _consume(self, section: ScannerSection, reader: hardware.ScannerReader) -> None:
        """Handle the reader's scans in order. A scan the line's going quiet ended (``by_gap``) is held for the
        reader's ``same_code_s`` before it is booked: a pause inside one scan, longer than the idle gap, cuts it in
        two, and the rest comes within that window (``_pieces``). Held scans are booked or said when the reader
        ends (the agent stopping), never dropped."""
        scans = reader.scans()
        held: list[_Taken] = []  # journaled, not yet routed: one scan, or the pieces of one scan split by a pause
        coming: asyncio.Future[hardware.Scan] | None = None
        try:
            while True:
                if coming is None:
                    coming = asyncio.ensure_future(anext(scans))
                if held and not coming.done():
                    wait_s = (held[-1].scan.received_at_ms + section.same_code_s * 1000 - wall_ms_now()) / 1000
                    if wait_s > 0:
                        await asyncio.wait([coming], timeout=wait_s)
                    if not coming.done():  # nothing came within same_code_s: the held scan is whole
                        held = await self._settle_held(section, held)
                        continue
                try:
                    scan = await coming
                except StopAsyncIteration:
                    break
                coming = None
                taken = await self._step(section, scan, self._take(section, scan))
                if taken is None:
                    continue
                if held and self._piece(section, held[-1], taken):
                    held.append(taken)
                else:
                    held = await self._settle_held(section, held)
                    if self._holds(section, taken):
                        held = [taken]
                    else:
                        await self._step(section, taken.scan, self._settle(section, taken))
                if held and not (held[-1].scan.complete and held[-1].scan.by_gap):  # its end came: no more pieces
                    held = await self._settle_held(section, held)
        except _Stopped:
            return
        except asyncio.CancelledError:
            if held:  # booked or said, not dropped
                with contextlib.suppress(_Stopped):
                    await self._settle_held(section, held)
            raise
        finally:
            if coming is not None and not coming.done():
                coming.cancel()
        with contextlib.suppress(_Stopped):
            await self._settle_held(section, held)

    async def _step(self, section: ScannerSection, scan: hardware.Scan, step: Awaitable[_T]) -> _T | None:
        """One step of a scan's handling; a bug must not stop the reader (the scan is journaled, the next one
        handled). ``_Stopped`` once the outbox is closed."""
        try:
            return await step
        except OutboxClosed:
            log.info("The outbox was closed; scanner %r stops booking.", section.id)
            raise _Stopped from None
        except Exception:
            log.exception("Scan %s from scanner %r could not be handled.", shown(scan.text, 40), section.id)
            return None

    def _holds(self, section: ScannerSection, taken: _Taken) -> bool:
        """Whether a scan is held for its reader's ``same_code_s`` before it is routed: it would be booked, and the
        line's going quiet ended it, so the rest of it may still come."""
        scan = taken.scan
        return bool(
            section.same_code_s and scan.complete and scan.by_gap and taken.error is None and taken.double_read is None
        )

    def _piece(self, section: ScannerSection, before: _Taken, taken: _Taken) -> bool:
        """Whether ``taken`` is the rest of the held scan ``before``, split by a pause on the line: it came within
        the reader's ``same_code_s`` of it (nobody scans two items that fast), is not the same code again (a double
        read), and is no GTIN whose check digit holds (a second symbol read at the same pull)."""
        gap_ms = taken.scan.received_at_ms - before.scan.received_at_ms
        whole = taken.error is None and taken.decoded is not None and taken.decoded.kind is hardware.DecodedKind.GTIN
        return 0 <= gap_ms < section.same_code_s * 1000 and taken.scan.raw != before.scan.raw and not whole

    async def _settle_held(self, section: ScannerSection, held: list[_Taken]) -> list[_Taken]:
        """Route the held scan; or, held with the rest of it, refuse every piece in one sentence. Returns []."""
        if len(held) == 1:
            await self._step(section, held[0].scan, self._settle(section, held[0]))
        elif held:
            pieces = " and ".join(shown(t.scan.text.strip(" \t\r\n"), 40) for t in held)
            gaps = ", ".join(
                f"{b.scan.received_at_ms - a.scan.received_at_ms:,} ms" for a, b in itertools.pairwise(held)
            )
            said = hardware.DecodeError(
                held[0].scan.text,
                f"The scans {pieces} from scanner {section.id!r} came {gaps} apart, each ended where the line went"
                " quiet, faster than anyone scans two items: they are likely one scan split by a pause on the line;"
                " nothing was booked for any of them: scan the item again (if this happens often, raise the reader's"
                " idle_gap_s, or set the scanner to send a CR/LF suffix).",
            )
            first = held[0]
            refused = _Taken(first.scan, None, said, None, first.scan_id, first.kept)
            await self._step(section, first.scan, self._settle(section, refused))
            for rest in held[1:]:
                outcome = ScanOutcome(
                    ScanResult.DECODE_ERROR,
                    f"The scan {shown(rest.scan.text, 40)} is a piece of scanner {section.id!r}'s scan split by a pause"
                    f" on the line, with {shown(first.scan.text, 40)}; nothing was booked (said with that scan).",
                )
                await self._step(section, rest.scan, self._decide(rest.scan_id, section, outcome, rest.unkept, True))
        return []

    async def handle(self, section: ScannerSection, scan: hardware.Scan) -> ScanOutcome:
        """One scan: journal it, decode it, route it, journal the outcome, tell the operator of a problem."""
        return await self._settle(section, await self._take(section, scan))

    async def _take(self, section: ScannerSection, scan: hardware.Scan) -> _Taken:
        """Decode one scan, judge it against the reader's scan before, and journal it (before it is routed)."""
        decoded: hardware.Decoded | None = None
        error: hardware.DecodeError | None = None
        if not scan.complete:
            error = hardware.DecodeError(
                scan.text, f"The scan {shown(scan.text, 40)} was cut off; scan the item again."
            )
        else:
            try:
                # The raw bytes, not scan.text: bytes that are not UTF-8 are noise, refused, never read as Latin-1.
                decoded = hardware.decode(scan.raw, rcn_region=section.rcn_region)
            except hardware.DecodeError as err:
                error = err
        fragment = self._fragment(section, scan, decoded) if error is None else None
        # cut off or not decoded: a tail may follow (a tail refused as a fragment is not, so a code scanned again books)
        self._problem_before[section.id] = error is not None
        error = error or fragment
        double_read = self._double_read(section, scan, error)
        problem = error is not None or double_read is not None  # the journal bounds the rows of problem scans
        scan_id: int | None = None
        kept = True  # False: a known problem past its reader's rows of the day (scan_journal), counted once decided
        try:
            # decoded before it is journaled, so that the journal can bound noise; a good scan is always kept
            scan_id = await self.journal.add(
                section.id, scan.received_at_ms, scan.raw, scan.complete, section.mode, problem=problem
            )
            kept = scan_id is not None
        except JournalError as err:
            log.error(
                "Scan %s from scanner %r could not be journaled (it is booked all the same, unless said next): %s",
                shown(scan.text, 40),
                section.id,
                err,
            )
        return _Taken(scan, decoded, error, double_read, scan_id, kept)

    async def _settle(self, section: ScannerSection, taken: _Taken) -> ScanOutcome:
        """Route a journaled scan, journal the outcome, tell the operator of a problem."""
        scan, decoded, error, double_read, scan_id = (
            taken.scan, taken.decoded, taken.error, taken.double_read, taken.scan_id
        )  # fmt: skip
        unkept = taken.unkept
        try:
            if double_read is None:
                outcome = await self.router.route(section.id, scan, decoded, error)
            else:
                outcome = await self.router.route(section.id, scan, decoded, error, double_read=double_read)
        except OutboxClosed:
            await self._decide(
                scan_id,
                section,
                ScanOutcome(ScanResult.FAILED, "The agent stopped before this scan was booked."),
                unkept,
            )
            raise
        except Exception as err:
            outcome = ScanOutcome(ScanResult.FAILED, f"The scan could not be booked ({type(err).__name__}: {err}).")
            await self._decide(scan_id, section, outcome, unkept)
            raise
        await self._decide(scan_id, section, outcome, unkept)
        return outcome

    def _fragment(
        self, section: ScannerSection, scan: hardware.Scan, decoded: hardware.Decoded | None
    ) -> hardware.DecodeError | None:
        """Why a complete scan that decoded is a piece of the reader's scan before rather than a barcode, or None.

        A scan's tail that comes after the reader stopped waiting for its suffix (``SUFFIX_WAIT_S``), or after the
        idle gap of a scanner that sends none, is a frame of its own, and was booked as an unknown item
        (``unknown:2345``).

        Right after a scan of the same reader that was cut off or failed to decode (its head), it is refused when it
        cannot be a scan of that scanner:

        * the head began with a symbology identifier (``]E0``) and this one has none: a scanner set to send
          identifiers sends one with every scan;
        * it is only digits, of no EAN/UPC/GTIN length (8, 12, 13, 14; those are checked by their check digit);
        * the head was cut off, has no identifier, and this scan does not begin as it did: the same item scanned
          again begins as its cut-off head did, a tail does not (a GTIN whose check digit holds is whole, booked).

        Right after a complete scan the line's going quiet ended (a scanner sending no suffix, ``by_gap``), within
        the reader's ``same_code_s`` (nobody scans two items that fast; 0: off, a scanner in batch mode), it is the
        rest of that scan, split by a pause on the line longer than the idle gap (unless it is a GTIN whose check
        digit holds: a second symbol read at the same pull).

        Anything else (a short internal code, text) is booked as before; a code refused so books when scanned again.
        """
        before = self._last_scan.get(section.id)
        if before is None or not scan.complete:
            return None
        text = scan.text.strip(" \t\r\n")
        whole = decoded is not None and decoded.kind is hardware.DecodedKind.GTIN  # its check digit holds
        if not self._problem_before.get(section.id):
            gap_ms = scan.received_at_ms - before.received_at_ms
            quick = section.same_code_s and 0 <= gap_ms < section.same_code_s * 1000
            if before.complete and before.by_gap and quick and not whole and scan.raw != before.raw:
                return hardware.DecodeError(
                    scan.text,
                    f"The scan {shown(text, 40)} came {gap_ms:,} ms after scanner {section.id!r}'s scan"
                    f" {shown(before.text, 40)}, which ended where the line went quiet, faster than anyone scans two"
                    " items: it is likely the rest of that scan, split by a pause on the line; nothing was booked for"
                    f" it: check what {shown(before.text, 40)} booked and scan the item again (if this happens often,"
                    " raise the reader's idle_gap_s, or set the scanner to send a CR/LF suffix).",
                )
            return None
        head = before.text.strip(" \t\r\n")
        if before.raw[:1] == b"]" and not text.startswith("]"):
            return hardware.DecodeError(
                scan.text,
                f"The scan {shown(text, 40)} has no symbology identifier, though scanner {section.id!r} sent one"
                f" ({shown(before.text[:3], bare=True)}) with the cut-off or unreadable scan before it: it is likely"
                " the tail of that scan, not a barcode; nothing was booked: scan the item again.",
            )
        if text.isdigit() and text.isascii() and len(text) not in hardware.GTIN_LENGTHS:
            return hardware.DecodeError(
                scan.text,
                f"The scan {shown(text, 40)} is {len(text)} digits, no EAN/UPC/GTIN length, right after a cut-off or"
                f" unreadable scan of scanner {section.id!r}: it is likely that scan's tail, not a barcode; nothing was"
                " booked: scan the item again (a short code of that many digits books when scanned again).",
            )
        if not before.complete and head and not head.startswith("]") and not text.startswith(head) and not whole:
            return hardware.DecodeError(
                scan.text,
                f"The scan {shown(text, 40)} does not begin as the cut-off scan {shown(head, 40)} before it did"
                f" (scanner {section.id!r}): it is likely the tail of that scan, not a barcode; nothing was booked:"
                " scan the item again (a code refused so books when scanned again).",
            )
        return None

    def _double_read(
        self, section: ScannerSection, scan: hardware.Scan, error: hardware.DecodeError | None
    ) -> str | None:
        """Why ``scan`` is the reader's scan before read twice (the same code, complete, within ``same_code_s`` of
        it), or None. Each scan is measured against the one right before it, so a stuck scanner repeating one code
        every millisecond repeats nothing but its first read."""
        before, self._last_scan[section.id] = self._last_scan.get(section.id), scan
        if before is None or error is not None or not section.same_code_s or not (scan.complete and before.complete):
            return None
        gap_ms = scan.received_at_ms - before.received_at_ms
        if scan.raw != before.raw or not 0 <= gap_ms < section.same_code_s * 1000:
            return None
        return (
            f"the same code came {gap_ms:,} ms after this scanner's scan of it before, faster than anyone scans two"
            " items (a shaky trigger reads one label twice)"
        )

    async def _count_not_kept(self, section: ScannerSection, scan: hardware.Scan, outcome: ScanOutcome) -> None:
        """A problem scan the journal did not keep a row for: counted. Should a router have made something of it
        after all, it is journaled whole (a scan that is no problem is never only counted)."""
        try:
            if outcome.problem:
                await self.journal.not_kept(
                    section.id, scan.received_at_ms, scan.raw, scan.complete, section.mode, message=outcome.message
                )
                return
            scan_id = await self.journal.add(section.id, scan.received_at_ms, scan.raw, scan.complete, section.mode)
        except JournalError as err:
            log.error("The outcome of a scan from %r could not be journaled: %s", section.id, err)
            return
        if scan_id is not None:
            await self._journal_outcome(scan_id, section, outcome)

    async def _journal_outcome(self, scan_id: int, section: ScannerSection, outcome: ScanOutcome) -> None:
        try:
            await self.journal.decide(
                scan_id, section.id, result=outcome.result.value, message=outcome.message,
                location=outcome.location, sku=outcome.sku, kind=outcome.kind.value if outcome.kind else None,
                qty=outcome.qty, event_ids=outcome.event_ids,
            )  # fmt: skip
        except JournalError as err:
            log.error("The outcome of a scan from %r could not be journaled: %s", section.id, err)

    async def _decide(
        self,
        scan_id: int | None,
        section: ScannerSection,
        outcome: ScanOutcome,
        unkept: hardware.Scan | None = None,
        said: bool = False,
    ) -> None:
        if outcome.unrecorded:
            # Not the scanner's problem but the agent's (a full disk): each one is a movement to scan again later.
            log.error("Scanner %r: %s", section.id, outcome.message)
        elif outcome.problem:
            # A cut-off scan the reader has said already, with why (a disconnect, noise, a frame too long).
            # ``said``: a piece of a scan split by a pause, said with its first piece.
            self._say_problem(section.id, outcome.message, said=said or outcome.result is ScanResult.INCOMPLETE)
        else:
            self._problems_ended(section.id)
            level = logging.INFO if outcome.result is ScanResult.UNKNOWN else logging.DEBUG
            log.log(level, "Scanner %r: %s", section.id, outcome.message)
        if unkept is not None:
            await self._count_not_kept(section, unkept, outcome)
        elif scan_id is not None:
            await self._journal_outcome(scan_id, section, outcome)
        self.outcomes += 1
        async with self.decided:
            self.decided.notify_all()
