"""The session manager: open, scan or key, undo, close, cancel — the one writer of the session store.

    async with SessionStore.open(data_dir / "sessions.sqlite3") as store:
        sessions = SessionManager(store, outbox, catalog=catalog)
        await sessions.recover()                       # finish closes a crash interrupted
        s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="PO-1"), by="ana")
        await sessions.scan(s.id, "4006381333931", by="ana")
        await sessions.close(s.id, by="ana")           # one outbox transaction

Every line is stamped with the outbox's hybrid logical clock when it is
scanned, so a count's time sits in the same order as every other event of
this agent. A close is decided (stored as ``closing``), then its events are
recorded in one ``Outbox.record`` call with ids derived from the session, then
the session is marked closed; see ``agent.sessions.store`` for why a crash at
any point neither loses nor double-books it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from agent.errors import InvalidMovement, OutboxClosed, OutboxError
from agent.outbox import Movement, Outbox, RejectedEvent
from agent.quantities import Flow, unlikely
from agent.serials import SERIAL_AGAIN_S, Unit, booked_again
from agent.sessions import bins, plan
from agent.sessions.errors import (
    AlreadyReceived,
    ExceedsOnHand,
    InvalidSessionInput,
    SessionConflict,
    SessionError,
    SessionNotOpen,
    SessionStoreClosed,
    SessionStoreFailed,
    UnlikelyQuantity,
)
from agent.sessions.items import Item, ItemLookup, check_spelling, keyed_sku, resolve_code
from agent.sessions.model import (
    Disposition,
    Line,
    NotAdded,
    Refused,
    Session,
    SessionSpec,
    SessionStatus,
    SessionType,
    SessionView,
    Unstored,
    check_bin_name,
    check_qty,
    check_ref,
    check_scan_id,
    check_staff,
)
from agent.sessions.plan import (
    SOURCE_PREFIX,
    batch_facts,
    count_attrs,
    count_fits,
    count_stamps,
    plan_close,
    preview,
    session_source,
    totals,
    unit_of,
)
from agent.sessions.store import RECEIVED_ONCE, SessionStore, same_scan
from hardware import Decoded
from protocol import Kind, event_id_hex, new_event_id, parse_event_id, wall_ms_now
from protocol.event import QTY_MAX, TRANSFER_QTY_MAX
from protocol.values import shown

log = logging.getLogger(__name__)

LIST_LIMIT_DEFAULT = 100
UNSTORED_MAX = 1_000  # a bound scanner's scans a full disk refused, kept per session for its page (Unstored)
NOT_ADDED_MAX = 100  # a bound scanner's scans its session did not take, the newest kept per session (NotAdded)
REFUSED_SHOWN = 20  # the hub's refusals of sessions' movements shown at once (newest first)
# The home screen shows the sessions' refusals among the outbox's newest this many set-asides (of any movement): a
# window in the outbox's own order, which a wrong clock at the refusal cannot shift, as it did a 7-day window.
REFUSED_WINDOW = 100
# A line of a quantity far past the usual (``agent.quantities``: an outgoing line far beyond the local count, an
# incoming line of more than one line should hold, a count of another scale, a barcode in the quantity field) is added
# only when the staff confirm it (``UnlikelyQuantity``; ``ExceedsOnHand`` for an outgoing one): a keypad slip took
# stock off the hub, or put a billion on its shelf, without a word. Not refused: stock may go negative, and the local
# count may be stale.
_TAKES = {SessionType.WRITE_OFF: "writing off", SessionType.TRANSFER_OUT: "shipping"}
_BRINGS = {SessionType.RECEIVE: "receiving", SessionType.TRANSFER_IN: "receiving", SessionType.RETURN: "taking back"}


class SessionManager:
    """Staff sessions over one ``SessionStore`` and one ``Outbox``."""

    def __init__(
        self,
        store: SessionStore,
        outbox: Outbox,
        *,
        catalog: ItemLookup | None = None,
        wall_clock_ms: Callable[[], int] = wall_ms_now,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.catalog = catalog
        self._wall_clock_ms = wall_clock_ms
        self._closing = asyncio.Lock()
        # session id -> a bound scanner's scans a full disk refused, for the session's page (``Unstored``); in memory:
        # the disk that refused them cannot hold them either
        self._unstored: dict[str, list[Unstored]] = {}
        # session id -> a bound scanner's scans the session did not take, newest last, until marked seen (``NotAdded``)
        self._not_added: dict[str, list[NotAdded]] = {}
        self.changed = asyncio.Condition()  # notified after every change of any session
        self.version = 0  # increases with every change (for pollers)
        # The id of a back-office reader in count mode running a count of (location, sku), or None (set by
        # agent.sessions.router from its ModeRouter): a count session of that SKU would replace it, or be replaced.
        self.scanner_counting: Callable[[str, str], Awaitable[str | None]] | None = None

    @property
    def location(self) -> str:
        return self.outbox.location

    async def recover(self) -> list[Session]:
        """Keep the clock above every stored stamp, then finish the closes a crash interrupted."""
        self.outbox.clock.observe(await self.store.max_hlc())
        finished = []
        for session in await self.store.list([SessionStatus.CLOSING], limit=10_000):
            log.warning(
                "Session %s (%s) was being closed when the agent stopped; finishing it.", session.id, session.type
            )
            try:
                finished.append(await self._finish(session, resumed=True))
            except SessionError as err:  # one broken session must not keep the agent from starting
                log.error("Session %s could not be finished: %s", session.id, err)
        return finished

    # --- opening -------------------------------------------------------------
    async def open(self, spec: SessionSpec, *, by: str, again: bool = False) -> Session:
        """Open a session. ``again``: receive a delivery or transfer received here before once more (a second
        delivery on the same note); without it, that is refused (``AlreadyReceived``), naming the earlier receipt."""
        check_staff(by)
        if again and spec.type not in RECEIVED_ONCE:
            raise InvalidSessionInput(
                f"again applies to a {' or '.join(t.value for t in RECEIVED_ONCE)} session received before,"
                f" not to a {spec.type.value} session"
            )
        if spec.type is SessionType.TRANSFER_OUT and self._is_here(spec.to_location):
            raise InvalidSessionInput(
                f"a transfer out of {self.location} cannot go to {self.location} itself{self._as(spec.to_location)}"
            )
        if spec.type is SessionType.TRANSFER_OUT and spec.to_location is not None:
            self._check_destination(spec.to_location)
        if spec.type is SessionType.TRANSFER_IN and self._is_here(spec.from_location):
            raise InvalidSessionInput(
                f"a transfer into {self.location} cannot come from {self.location} itself{self._as(spec.from_location)}"
            )
        if spec.bin is not None:
            check_bin_name(spec.bin)
        if spec.ref is not None:
            check_ref(spec.ref)
        for sku in (*spec.scope_skus, *(line.sku for line in spec.expected)):
            check_spelling(sku, self.catalog)
        if spec.type is SessionType.COUNT:
            for sku in spec.scope_skus:
                self._check_countable(sku)
                await self._check_not_scanner_counted(sku)
        session = Session(
            id=event_id_hex(new_event_id()),
            spec=spec,
            location=self.location,
            status=SessionStatus.OPEN,
            by=by,
            opened_ms=self._wall_clock_ms(),
        )
        try:
            await self.store.insert(session, again=again)
        except AlreadyReceived as err:
            log.info("A %s session opened by %s was refused: %s.", spec.type.value, by, err)
            raise
        twice = ", a second delivery under a reference received here before, as the staff confirmed" if again else ""
        log.info("%s opened %s session %s%s%s.", by, spec.type.value, session.id, _ref_phrase(spec), twice)
        await self._changed()
        return session

    # --- lines -----------------------------------------------------------------
    async def scan(
        self,
        session_id: str,
        code: str,
        *,
        by: str,
        qty: int = 1,
        disposition: Disposition | str | None = None,
        source: str = "handheld",
        decoded: Decoded | None = None,
        scan_id: str | None = None,
        confirm: bool = False,
        unattended: bool = False,
        hold: str | None = None,
    ) -> Line:
        """Add a scanned barcode: ``qty`` × its pack size units (a count line may be 0: "none here"). A ``scan_id``
        (the handheld's id for this scan) already in the session answers that line instead of adding another.
        ``confirm``: the staff said a quantity far past the usual is right (else ``UnlikelyQuantity``, for an
        outgoing line far beyond the local count ``ExceedsOnHand``). ``unattended``: a back-office scanner's scan,
        with nobody to ask: such a line is judged by its own quantity alone and held (``Line.held``) instead.
        ``hold``: why an unattended scan is held whatever its quantity (a double read), the sentence on its line."""
        item = resolve_code(code, self.catalog, decoded)
        return await self._add(session_id, item, by, qty, disposition, source, scan_id, confirm, unattended, hold)

    async def key(
        self,
        session_id: str,
        sku: str,
        qty: int,
        *,
        by: str,
        disposition: Disposition | str | None = None,
        scan_id: str | None = None,
        confirm: bool = False,
    ) -> Line:
        """Add ``qty`` units of a SKU keyed by hand (``confirm`` as in ``scan``)."""
        item = keyed_sku(sku, self.catalog)
        return await self._add(session_id, item, by, qty, disposition, "keyed", scan_id, confirm)

    async def _add(
        self,
        session_id: str,
        item: Item,
        by: str,
        qty: int,
        disposition: Disposition | str | None,
        source: str,
        scan_id: str | None = None,
        confirm: bool = False,
        unattended: bool = False,
        hold: str | None = None,
    ) -> Line:
        check_staff(by)
        if scan_id is not None:
            check_scan_id(scan_id)
        session = await self.store.get(session_id)
        if session.status is not SessionStatus.OPEN:
            if (taken := await self._taken_already(session, item, qty, disposition, scan_id)) is not None:
                return taken
            raise SessionNotOpen(f"session {session_id} is {session.status.value} and takes no more scans")
        check_qty(qty, minimum=0 if session.type is SessionType.COUNT else 1)
        _check_one_serialised(item, qty)
        units = qty * item.pack_size
        check_qty(units, "qty × pack size", minimum=0 if session.type is SessionType.COUNT else 1)
        spec = session.spec
        if session.type is SessionType.COUNT and not item.unknown:
            self._check_countable(item.sku)
        if session.type is SessionType.COUNT and not spec.scope_skus:
            await self._check_not_scanner_counted(item.sku)
        if session.type is SessionType.COUNT and spec.scope_skus and item.sku not in spec.scope_skus:
            raise InvalidSessionInput(
                f"{item.sku} is not in this count's scope; count it in its own session so its stock is not"
                " booked from a partial count"
            )
        if session.type is SessionType.COUNT:
            await self._check_count_lists(session_id, item, units)
        else:
            await self._check_not_booked_outside(session, item)
        held = None
        if not confirm and (asked := await self._unlikely(session, item.sku, qty, units, scan_id, unattended)):
            error, said = asked
            if not unattended:
                log.info(
                    "A line of %s session %s was asked about before it is added: %s.",
                    session.type.value, session.id, said,
                )  # fmt: skip
                raise error(
                    f"{said}; nothing was added: check the quantity (an extra zero, a barcode scanned into it),"
                    " or send it again if it is right (confirm: true)"
                )
            held = said
        if held is None and unattended and hold is not None and not confirm:
            held = hold
        disposition = _line_disposition(session, disposition)
        line = Line(
            session_id=session_id,
            no=0,
            sku=item.sku,
            qty=units,
            hlc=self.outbox.clock.now(),
            at_ms=self._wall_clock_ms(),
            by=by,
            source=source,
            barcode=item.barcode,
            pack_size=item.pack_size,
            disposition=disposition,
            unknown=item.unknown,
            held=held,
        )
        transfer = session.type in (SessionType.TRANSFER_OUT, SessionType.TRANSFER_IN)
        stored = await self.store.add_line(
            line, qty_max=TRANSFER_QTY_MAX if transfer else QTY_MAX, scan_id=scan_id, unit=unit_of(item.barcode)
        )
        if stored.unknown:
            log.warning(
                "Session %s: barcode %r is not in the catalog; booked as %s so nothing is lost.",
                session_id,
                stored.barcode,
                stored.sku,
            )
        if stored.pending:
            log.warning(
                "Session %s: line %d from %s (%d × %s) is held for a person to confirm or reject on the session's page,"
                " and counts for nothing until then: %s.",
                session_id, stored.no, source, stored.qty, stored.sku, stored.held,
            )  # fmt: skip
        await self._changed()
        return stored

    async def confirm_line(self, session_id: str, no: int, *, by: str) -> Line:
        """Confirm a held line (``Line.held``): the quantity is right, and it is booked when the session closes."""
        return await self._decide(session_id, no, by, confirm=True)

    async def reject_line(self, session_id: str, no: int, *, by: str) -> Line:
        """Reject a held line: it is kept for the record, undone, and never booked."""
        return await self._decide(session_id, no, by, confirm=False)

    async def _decide(self, session_id: str, no: int, by: str, *, confirm: bool) -> Line:
        check_staff(by)
        session, lines = await self.store.get_with_lines(session_id)
        line = next((x for x in lines if x.no == no), None)
        counted = session.type is SessionType.COUNT and session.status is SessionStatus.OPEN
        if confirm and counted and line is not None and line.pending:  # what changed since it was held
            if not session.spec.scope_skus:
                await self._check_not_scanner_counted(line.sku)
            await self._check_count_lists(session_id, Item(line.sku, line.pack_size, line.barcode), line.qty)
        transfer = session.type in (SessionType.TRANSFER_OUT, SessionType.TRANSFER_IN)
        decided = await self.store.decide_held(
            session_id,
            no,
            by=by,
            confirm=confirm,
            qty_max=TRANSFER_QTY_MAX if transfer else QTY_MAX,
            unit=unit_of(line.barcode) if line is not None else None,
        )
        if line is not None and line.pending:
            log.info(
                "%s %s held line %d (%d × %s) of session %s; %s.",
                by, "confirmed" if confirm else "rejected", no, decided.qty, decided.sku, session_id,
                "it is booked when the session closes" if confirm else "it is kept for the record and never booked",
            )  # fmt: skip
            await self._changed()
        return decided

    async def _taken_already(
        self, session: Session, item: Item, qty: int, disposition: Disposition | str | None, scan_id: str | None
    ) -> Line | None:
        """The line a scan sent again (its ``scan_id``) added before its session stopped taking scans: its answer
        was lost on the way, and another handheld closed the session meanwhile. Refused as "closed", the staff
        took the item for not taken and scanned it into the next session, booked twice; the close booked it."""
        if scan_id is None or (earlier := await self.store.scanned(session.id, scan_id)) is None:
            return None
        check_qty(qty, minimum=0)
        return same_scan(scan_id, earlier, item.sku, qty * item.pack_size, _line_disposition(session, disposition))

    def _is_here(self, location: str | None) -> bool:
        """Whether ``location`` is this store, in any case ("s001" for S001): the hub compares a transfer's other
        end with its location exactly, and took "to s001" from S001 as shipped to a location it does not know."""
        return location is not None and location.casefold() == self.location.casefold()

    def _as(self, location: str | None) -> str:
        return "" if location == self.location else f" ({location!r} is {self.location} written in another case)"

    def _check_countable(self, sku: str) -> None:
        """Refuse a count of a bundle now, before the staff count it: the hub refuses it at the close
        (``invalid_bundle``). While the catalog has never heard the hub's bundles, the count is taken as before
        and a refusal of the hub shows in the session (``refused``)."""
        is_bundle = getattr(self.catalog, "is_bundle", None)
        if is_bundle is not None and is_bundle(sku):
            raise InvalidSessionInput(
                f"{sku} is a bundle (a kit or set made of other SKUs), which the hub does not take a count of:"
                " count each of its parts instead"
            )

    def _check_destination(self, to: str) -> None:
        """Refuse a transfer out to a location the hub does not know (``S999``, ``s002`` for ``S002``): the hub took
        it, and its units sat in transit to nowhere until overdue. While the hub's locations were never heard (the
        hub unreachable since the agent was installed) it is taken, with a warning."""
        known_locations = getattr(self.catalog, "known_locations", None)
        known = known_locations() if known_locations is not None else None
        if known is None:
            log.warning("A transfer out to %s was opened without the hub's list of locations to check it against.", to)
            return
        if to in known:
            return
        key = unicodedata.normalize("NFKC", to).strip().casefold()
        near = sorted(loc for loc in known if unicodedata.normalize("NFKC", loc).casefold() == key)
        if near:
            raise InvalidSessionInput(f"the hub knows no location {to!r}, but {near[0]}; write the location as the hub does")
        raise InvalidSessionInput(
            f"the hub knows no location {to!r} (it knows {_listed(sorted(known))}); check where the goods are going"
        )

    async def _check_count_lists(self, session_id: str, item: Item, units: int) -> None:
        """Refuse a scan of one batch (lot, expiry) or one serialised unit more of a SKU than its count event can
        list (agent.sessions.plan): taken, its lot or serial would have been left out of what the hub learns."""
        batch, unit = batch_facts(item.barcode), unit_of(item.barcode)
        if not batch and unit is None:
            return
        mine = [line for line in await self.store.lines(session_id) if line.sku == item.sku and not line.undone]
        seen = {batch_facts(line.barcode) for line in mine}
        if batch and batch not in seen and len(seen) >= plan.LOTS_PER_COUNT_MAX:
            raise InvalidSessionInput(
                f"this count already holds {len(seen)} batches (lots or expiry dates) of {item.sku}, as many as one"
                f" count can tell the hub; key the rest of {item.sku} by its SKU and quantity in this count, which"
                " counts them without their lots (a count of them in a session of its own would replace this one)"
            )
        if unit is not None and unit in {unit_of(line.barcode) for line in mine}:  # scanned already: the store says
            return
        scans = [(line.barcode, line.qty) for line in mine]
        if not count_fits(count_attrs([*scans, (item.barcode, units)])):
            serials = sum(1 for barcode, _ in scans if unit_of(barcode) is not None)
            raise InvalidSessionInput(
                f"this count already lists {serials} serial numbers and {len(seen)} batches of {item.sku}, as many as"
                f" one count can tell the hub; key the rest of {item.sku} by its SKU and quantity, which counts them"
                " without their serials and lots"
            )

    async def _check_not_booked_outside(self, session: Session, item: Item) -> None:
        """Refuse a serialised item whose last movement at the location, booked outside this session within
        ``SERIAL_AGAIN_S`` (a scanner in a mode, another session's close), is the movement this session books: a
        phone received at the back door, then scanned into a receive session, was received twice (a scanner in a
        mode refuses the same the other way round)."""
        unit = unit_of(item.barcode)
        if unit is None:
            return
        kind, reason = _BOOKS[session.type], session.spec.reason
        since_ms = self.outbox.recent_since_ms(SERIAL_AGAIN_S)  # timed on the monotonic clock while the agent runs
        ev = booked_again(await self.outbox.booked(self.location, item.sku, since_wall_ms=since_ms), unit, kind, reason)
        if ev is not None:
            raise InvalidSessionInput(
                f"serial number {unit[1]} of {item.sku} was already booked at {self.location} ({ev.kind.value}"
                f" {ev.qty:+d}, by {ev.source}), so this scan was not taken: one serialised item is one unit; scan the"
                " next item"
            )
        found = await self.store.holding_unit(self.location, item.sku, unit, [session.type], except_id=session.id)
        if found is not None and (kind is not Kind.ADJUST or found[0].spec.reason == reason):
            raise InvalidSessionInput(
                f"serial number {unit[1]} of {item.sku} is already line {found[1]} of {session.type.value} session"
                f" {found[0].id}, so this scan was not taken: one serialised item is one unit; scan the next item"
            )

    async def _unlikely(
        self, session: Session, sku: str, qty: int, units: int, scan_id: str | None, alone: bool
    ) -> tuple[type[UnlikelyQuantity], str] | None:
        """The question a line of a quantity far past the usual is asked (its error and sentence), or None, as
        ``agent.quantities.unlikely`` judges it against the session's units of ``sku`` so far (an outgoing line's
        error ``ExceedsOnHand``). ``alone``: a scanner's line, judged by its own units (each scan is an item in
        hand; what nobody checked is a label's quantity)."""
        if scan_id is not None and await self.store.scanned(session.id, scan_id) is not None:
            return None  # sent again after its answer was lost: the store answers the line it added
        lines = () if alone else await self.store.lines(session.id)
        before = sum(line.qty for line in lines if line.sku == sku and not line.undone)
        transfer = session.type in (SessionType.TRANSFER_OUT, SessionType.TRANSFER_IN)
        if before + units > (TRANSFER_QTY_MAX if transfer else QTY_MAX):
            return None  # refused by the store whatever the staff say (its sentence names the limit)
        flow: Flow
        error: type[UnlikelyQuantity] = UnlikelyQuantity
        if session.type in _TAKES:
            flow, doing, error = "out", _TAKES[session.type], ExceedsOnHand
        elif session.type is SessionType.COUNT:
            flow, doing = "count", "counting"
        else:
            flow, doing = "in", _BRINGS[session.type]
        local = 0 if flow == "in" else (await self.outbox.counts.local_count(self.location, sku)).on_hand
        listed = max((e.qty for e in session.spec.expected if e.sku == sku), default=0)
        said = unlikely(flow, doing, sku, qty, units, local=local, before=before, listed=listed, alone=alone)
        return None if said is None else (error, said)

    async def _check_not_scanner_counted(self, sku: str) -> None:
        """Refuse counting ``sku`` in a session while a back-office reader in count mode is running a count of it:
        each books the SKU's whole count, so the one booked last replaced the other's units (the reader's side of
        this is ``count_conflict``)."""
        if self.scanner_counting is not None and (reader := await self.scanner_counting(self.location, sku)):
            raise SessionConflict(
                f"{sku} is being counted by scanner {reader!r} in count mode; count it on that scanner, or wait until"
                " its running count has ended, so neither count replaces the other's units"
            )

    async def undo(self, session_id: str, *, by: str, no: int | None = None) -> Line | None:
        """Undo the newest line of ``by`` still counting (None if there is none), or their line ``no``: answered
        as it is when it counts for nothing already (the same Undo sent again), nothing else undone."""
        check_staff(by)
        line: Line | None
        if no is not None:
            line, changed = await self.store.undo_line(session_id, by, no)
            if not changed:
                return line
        else:
            line = await self.store.undo_last(session_id, by)
        if line is not None:
            log.info("%s undid line %d (%s × %d) of session %s.", by, line.no, line.sku, line.qty, session_id)
            await self._changed()
        return line

    async def bind_reader(self, session_id: str, reader_id: str | None) -> Session:
        """Let a back-office scanner feed this session (``None`` unbinds)."""
        session = await self.store.bind_reader(session_id, reader_id)
        await self._changed()
        return session

    # --- closing ------------------------------------------------------------------
    async def close(self, session_id: str, *, by: str, zero_unscanned: bool = False) -> Session:
        """Book the session's events in one outbox transaction and return it closed, with its report.

        Closing a session that is already closed returns it as it is (a retried
        request books nothing twice). ``zero_unscanned`` (counts only): SKUs in
        scope never scanned are booked as counted 0.
        """
        check_staff(by)
        async with self._closing:
            session = await self.store.get(session_id)
            if session.status is SessionStatus.CLOSED:
                return session
            if session.status is SessionStatus.CANCELLED:
                raise SessionNotOpen(f"session {session_id} was cancelled and cannot be closed")
            if zero_unscanned and session.type is not SessionType.COUNT:
                raise InvalidSessionInput("zero_unscanned applies only to count sessions")
            resumed = session.status is SessionStatus.CLOSING
            if not resumed:
                session = await self.store.begin_close(
                    session_id, by=by, close_hlc=self.outbox.clock.now(), zero_unscanned=zero_unscanned
                )
            return await self._finish(session, resumed=resumed)

    async def _booked_before(self, session: Session, first: Movement) -> bool:
        """Whether the outbox holds the session's movements already, looked up by the (location, SKU) of its first
        one (indexed; a close is one transaction, so it holds all of them or none): a session closed, then shown
        open again by its store restored from a backup taken while it was open, whose close a person repeats."""
        return bool(await self.outbox.booked(first.location, first.sku, source=session_source(session)))

    async def _finish(self, session: Session, *, resumed: bool = False) -> Session:
        """Record the session's events and mark it closed. ``resumed``: a close begun earlier (a crash, a retry)
        whose one outbox transaction may have committed before the session was marked closed; if the outbox holds
        any event of the session it holds them all, and only the mark is left to do. Recording them again relied on
        ids derived anew being the same, which an upgrade changing the derivation (one event per lot, per serial)
        broke: the close was booked twice."""
        lines = await self.store.lines(session.id)
        carried: dict[str, bins.Carry] = {}
        if session.type is SessionType.COUNT and session.spec.bin is not None:
            stamps = count_stamps(session, lines)
            source = session_source(session)
            carried = await bins.carried(self.outbox, session.location, session.spec.bin, stamps, source)
            if carried and not resumed:
                log.info(
                    "Session %s counts bin %s: its count of %d SKU(s) adds the units of the bins counted before it%s.",
                    session.id, session.spec.bin, len(carried),
                    "" if len(carried) > 1 else f" ({next(iter(carried))}: {next(iter(carried.values())).units:+d})",
                )  # fmt: skip
        plan = plan_close(session, lines, carried)
        # A count left open across movements of a SKU scanned before and after them rests on an assumption.
        whole = session.type is SessionType.COUNT and session.spec.bin is None
        if whole and (notes := await bins.spanned(self.outbox, session.location, list(lines), session_source(session))):
            plan = replace(plan, report=replace(plan.report, count_notes=notes))
            if not resumed:
                log.info("Session %s counts on an assumption: %s", session.id, " ".join(n.message for n in notes))
        if plan.report.bin_notes and not resumed:
            log.info(
                "Session %s counts bin %s on an assumption: %s",
                session.id, session.spec.bin, " ".join(n.message for n in plan.report.bin_notes),
            )  # fmt: skip
        held = await self.outbox.recorded_from(session_source(session)) if resumed and plan.movements else 0
        if not resumed and plan.movements and await self._booked_before(session, plan.movements[0]):
            held = await self.outbox.recorded_from(session_source(session))
            log.warning(
                "Session %s was closed before: the outbox holds its %d movements (its store was restored from an"
                " older copy?); it is marked closed again and nothing is booked twice.",
                session.id, held,
            )  # fmt: skip
        if held:  # logged below as "already recorded by an earlier attempt"
            recorded, again = 0, held
        elif plan.movements:
            try:
                result = await self.outbox.record(plan.movements)
            except InvalidMovement as err:  # nothing of the batch was recorded: the session stays workable
                await self.store.reopen(session.id)
                log.error("Session %s could not be closed and is open again: %s", session.id, err)
                raise SessionError(f"session {session.id} cannot be closed: {err}") from err
            except OutboxError as err:
                # The outbox refused the batch (a full disk): one transaction, so nothing of it is booked. Left
                # closing, the session took no scans and the handheld's page offered no Close until a restart
                # finished it; open again, it is closed again once there is room. (The outbox shutting down: it is
                # left closing, and the next start finishes it.)
                if isinstance(err, OutboxClosed) or await self.outbox.recorded_from(session_source(session)):
                    raise
                await self.store.reopen(session.id)
                log.error("Session %s was not closed and is open again: %s", session.id, err)
                raise SessionError(f"session {session.id} was not closed, and is open again: {err}") from err
            recorded, again = len(result.events), len(result.duplicates)
        else:
            recorded = again = 0
        try:
            closed = await self.store.finish_close(session.id, plan.report, self._wall_clock_ms())
        except SessionStoreFailed as err:
            if not recorded + again:
                raise
            # The outbox took the movements; only the mark failed (a full disk). "Nothing of this write was recorded"
            # alone had the staff take the delivery for not booked. Closed again, it is only marked (``resumed``).
            booked = f"session {session.id} is booked ({recorded + again:,} movements are in the outbox)"
            log.error("%s but could not be marked closed: %s", booked[0].upper() + booked[1:], err)
            raise SessionError(
                f"{booked} but could not be marked closed: {err}; close it again once there is room: nothing is"
                " booked twice"
            ) from err
        self._not_added.pop(session.id, None)
        if dropped := self._unstored.pop(session.id, None):
            log.warning(
                "Session %s was closed with %d scan(s) from its scanner that the full disk refused and nobody sent"
                " again; they are not booked: %s.",
                session.id, len(dropped), ", ".join(f"{shown(u.code, 40)} at {u.at_ms}" for u in dropped[:10]),
            )  # fmt: skip
        log.info(
            "%s closed %s session %s: %d event(s) recorded%s, %d unit(s).",
            closed.closed_by,
            closed.type.value,
            closed.id,
            recorded,
            f" ({again} already recorded by an earlier attempt)" if again else "",
            plan.report.units,
        )
        await self._changed()
        return closed

    async def cancel(self, session_id: str, *, by: str) -> Session:
        """Drop an open session: nothing is booked; its lines are kept for the record."""
        check_staff(by)
        async with self._closing:
            session = await self.store.cancel(session_id, by=by, at_ms=self._wall_clock_ms())
        self._unstored.pop(session_id, None)  # nothing of a cancelled session is booked, its scanner's scans neither
        self._not_added.pop(session_id, None)
        log.info("%s cancelled %s session %s; nothing was booked.", by, session.type.value, session.id)
        await self._changed()
        return session

    # --- reading -----------------------------------------------------------------
    async def get(self, session_id: str) -> Session:
        return await self.store.get(session_id)

    async def view(self, session_id: str) -> SessionView:
        session, lines = await self.store.get_with_lines(session_id)
        refused = await self.refused(session_id) if session.status is SessionStatus.CLOSED else []
        held = tuple(line for line in lines if line.pending)
        unstored = tuple(self._unstored.get(session_id, ()))
        not_added = tuple(reversed(self._not_added.get(session_id, ())))
        return SessionView(
            session, lines, totals(lines), preview(session, lines), tuple(refused), held, unstored, not_added
        )

    # --- a bound scanner's scans its session did not take -----------------------------
    async def note_not_added(self, session_id: str, code: str, *, source: str, why: str) -> None:
        """Keep a bound scanner's scan the session did not take for the session's page (the newest
        ``NOT_ADDED_MAX``), until someone marks them seen or the session ends."""
        kept = self._not_added.setdefault(session_id, [])
        kept.append(NotAdded(code, source, self._wall_clock_ms(), why))
        del kept[:-NOT_ADDED_MAX]
        await self._changed()

    def not_added_count(self, session_id: str) -> int:
        return len(self._not_added.get(session_id, ()))

    async def dismiss_not_added(self, session_id: str, *, by: str) -> SessionView:
        """Mark the session's ``not_added`` scans seen: no longer listed (they were never part of the session)."""
        check_staff(by)
        await self.store.get(session_id)  # SessionNotFound for a session that is not there
        if dropped := self._not_added.pop(session_id, None):
            log.info("%s saw the %d scan(s) from a scanner that session %s did not take.", by, len(dropped), session_id)
            await self._changed()
        return await self.view(session_id)

    # --- a bound scanner's scans a full disk refused ------------------------------------
    async def keep_unstored(
        self, session_id: str, code: str, *, source: str, decoded: Decoded | None, why: str
    ) -> bool:
        """Keep a bound scanner's scan that its session could not store (the disk is full) for the session's page,
        where the staff send it again once there is room; False when ``UNSTORED_MAX`` of the session's are kept."""
        kept = self._unstored.setdefault(session_id, [])
        if len(kept) >= UNSTORED_MAX:
            return False
        kept.append(Unstored(secrets.token_hex(16), code, source, self._wall_clock_ms(), why, decoded))
        await self._changed()
        return True

    def unstored_count(self, session_id: str) -> int:
        """How many of the session's scanner scans a full disk refused are kept (``keep_unstored``)."""
        return len(self._unstored.get(session_id, ()))

    async def send_unstored(self, session_id: str, *, by: str) -> tuple[list[Line], list[tuple[Unstored, str]]]:
        """Add the session's kept scans (``keep_unstored``) again, oldest first, each as its scanner's line (by its
        ``scan_id``: one sent twice is added once). The disk refusing again stops it there (``SessionStoreFull``
        raised, the rest still kept). A scan the session refuses for another reason (it was closed meanwhile, …) is
        answered with that reason and no longer kept, as the scanner's own refusal would have been said."""
        check_staff(by)
        session = await self.store.get(session_id)
        kept = self._unstored.get(session_id, [])
        added: list[Line] = []
        refused: list[tuple[Unstored, str]] = []
        try:
            while kept:
                u = kept[0]
                try:
                    line = await self.scan(
                        session_id, u.code, by=session.by, source=u.source, decoded=u.decoded,
                        scan_id=u.scan_id, unattended=True,
                    )  # fmt: skip
                except (SessionStoreFailed, SessionStoreClosed):
                    raise
                except SessionError as err:
                    refused.append((u, str(err)))
                    log.warning(
                        "Session %s: scan %s from %s, which the full disk refused, was sent again by %s and refused: %s.",
                        session_id, shown(u.code, 40), u.source, by, err,
                    )  # fmt: skip
                else:
                    added.append(line)
                kept.pop(0)
        finally:
            if added or refused:
                log.info(
                    "%s sent again %d scan(s) of session %s the full disk had refused: %d added, %d refused, %d still"
                    " kept.", by, len(added) + len(refused), session_id, len(added), len(refused), len(kept),
                )  # fmt: skip
            if not kept:
                self._unstored.pop(session_id, None)
        return added, refused

    async def refused(
        self, session_id: str | None = None, *, within: int | None = None, limit: int = REFUSED_SHOWN
    ) -> list[Refused]:
        """Movements closed sessions booked (one session's, or any) that the hub refused, newest first (among the
        outbox's newest ``within`` set-asides, ``Outbox.refused``): a refusal that comes after the close (the agent
        did not know better then) must still reach the staff."""
        prefix = SOURCE_PREFIX + (session_id or "")
        found = await self.outbox.refused(prefix, within=within, limit=limit)
        return [_refused(r) for r in found]

    async def refused_not_dismissed(self, *, limit: int = REFUSED_SHOWN) -> list[Refused]:
        """``refused()`` of every session among the outbox's newest ``REFUSED_WINDOW`` set-asides, but the
        refusals the staff dismissed: the handheld's home screen box. Not by this machine's clock at the refusal:
        a refusal set aside while it was ten days behind never showed, one while it was a year ahead stayed."""
        # A dismissal names its refusal by the movement's id (the outbox sets a movement aside once and never sends
        # it again); when it was made says nothing: this machine's clock may have been set back or put right since.
        dismissed_n = await self.store.dismissed_count()
        found = await self.refused(within=REFUSED_WINDOW, limit=limit + dismissed_n)
        dismissed = await self.store.dismissed_among([r.event_id for r in found])
        return [r for r in found if r.event_id not in dismissed][:limit]

    async def dismiss_refused(self, event_id: str, *, by: str) -> Refused | None:
        """Dismiss the hub's refusal of the movement ``event_id`` (a session's) from the home screen; None when no
        session movement of that id was refused. The refusal itself stays in the outbox and the session's view."""
        try:
            raw_id = parse_event_id(event_id)
        except ValueError:
            raise InvalidSessionInput(f"{event_id[:40]!r} is not a movement id (a UUID)") from None
        found = await self.outbox.refused(SOURCE_PREFIX, event_id=raw_id, limit=1)
        if not found:
            return None
        refused = _refused(found[0])
        if await self.store.dismiss_refusal(refused.event_id, by=by, at_ms=self._wall_clock_ms()):
            log.info(
                "%s dismissed the hub's refusal of the %s of %s booked by session %s.",
                by, refused.kind, refused.sku, refused.session_id,
            )  # fmt: skip
            await self._changed()
        return refused

    async def list(self, *, active: bool = True, limit: int = LIST_LIMIT_DEFAULT) -> list[Session]:
        statuses = (
            [SessionStatus.OPEN, SessionStatus.CLOSING] if active else [SessionStatus.CLOSED, SessionStatus.CANCELLED]
        )
        return await self.store.list(statuses, limit)

    async def held_counts(self, sessions: Sequence[Session]) -> dict[str, int]:
        """Per session id, how many of its lines are held for a person to confirm or reject (none: left out)."""
        return await self.store.held_counts([s.id for s in sessions])

    async def for_reader(self, reader_id: str) -> Session | None:
        return await self.store.for_reader(reader_id)

    async def holding_unit(self, location: str, sku: str, unit: Unit, kind: Kind, reason: str | None) -> str | None:
        """Why a serialised item booked outside the sessions as ``kind`` (a scanner in a mode) would book it twice,
        or None: a line of an open session at ``location`` that books it as that movement when it closes."""
        types = [t for t, books in _BOOKS.items() if books is kind]
        found = await self.store.holding_unit(location, sku, unit, types) if types else None
        if found is None:
            return None
        session, no = found
        if kind is Kind.ADJUST and session.spec.reason != reason:
            return None
        return (
            f"already scanned into {session.type.value} session {session.id} (line {no}), which books it when it closes"
        )

    async def count_conflict(self, location: str, sku: str) -> str | None:
        """Why a count of ``sku`` at ``location`` booked outside the sessions (a reader in count mode) would undo
        an open count session's, or None: each books the SKU's whole count, so the later replaces the other."""
        found = await self.store.counting(location, sku)
        if found is None:
            return None
        return (
            f"being counted in session {found[0]} (opened by {found[1]}); nothing was booked: count it in that"
            " session, or close or cancel it first, so neither count replaces the other's units"
        )

    async def _changed(self) -> None:
        async with self.changed:
            self.version += 1
            self.changed.notify_all()


def _refused(r: RejectedEvent) -> Refused:
    ev = r.event
    return Refused(
        ev.source.removeprefix(SOURCE_PREFIX), ev.sku, ev.kind.value, ev.qty, r.code, r.reason, r.rejected_ms,
        event_id_hex(ev.event_id),
    )  # fmt: skip


# The movement each session type (but a count) books of a unit: what a serialised item booked before must not be.
_BOOKS = {
    SessionType.RECEIVE: Kind.RECEIVE,
    SessionType.TRANSFER_OUT: Kind.TRANSFER_OUT,
    SessionType.TRANSFER_IN: Kind.TRANSFER_IN,
    SessionType.RETURN: Kind.RETURN,
    SessionType.WRITE_OFF: Kind.ADJUST,
}


def _check_one_serialised(item: Item, qty: int) -> None:
    """Refuse a serialised item (its code carries a serial number, GS1 (21)) scanned with a quantity other than 1:
    the serial names one item, so 3 would book two units the hub could not tell apart from it, and 0 (a count's
    "none here") would say the item in hand is not there."""
    unit = unit_of(item.barcode)
    if unit is not None and qty != 1:
        raise InvalidSessionInput(
            f"the barcode carries serial number {unit[1]}, which names one item of {item.sku}, so its quantity is 1,"
            f" not {qty}; scan each serialised item on its own"
        )


def _line_disposition(session: Session, value: Disposition | str | None) -> Disposition | None:
    """A line's disposition: a return's (restock unless given), none in any other session."""
    if session.type is SessionType.RETURN:
        return _disposition(value)
    if value is not None:
        raise InvalidSessionInput("a disposition (restock or damaged) applies only to return sessions")
    return None


def _disposition(value: Disposition | str | None) -> Disposition:
    if value is None:
        return Disposition.RESTOCK
    try:
        return Disposition(value)
    except ValueError:
        raise InvalidSessionInput(f"disposition must be restock or damaged, got {str(value)[:40]!r}") from None


def _listed(locations: list[str], shown_max: int = 10) -> str:
    more = f" and {len(locations) - shown_max} more" if len(locations) > shown_max else ""
    return ", ".join(locations[:shown_max]) + more


def _ref_phrase(spec: SessionSpec) -> str:
    parts = []
    if spec.ref:
        parts.append(f"ref {spec.ref}")
    if spec.to_location:
        parts.append(f"to {spec.to_location}")
    if spec.from_location:
        parts.append(f"from {spec.from_location}")
    if spec.reader_id:
        parts.append(f"on reader {spec.reader_id}")
    return f" ({', '.join(parts)})" if parts else ""
