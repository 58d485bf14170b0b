"""Back-office scanners feeding sessions: the scan router that asks "is a session open on this reader?" first.

    router = SessionRouter(sessions, fallback=ModeRouter(outbox, catalog, config.scanners, location=...))
    ScanService(config.scanners, router, journal)

A session opened with ``reader_id`` (or bound later) takes every scan of that
reader until it is closed or cancelled: the scan becomes a line of the
session, added by the staff member who opened it, and nothing is booked until
the session closes. A reader with no session open books its configured mode
through the fallback, as before. A scan the session cannot take (cut off, a
bad check digit, a SKU outside a count's scope) is answered as a problem, so
the scan service journals it and tells the operator — it is never booked by
the fallback instead, which would move stock the person meant for the session.
So it is after the session ended under the scanner's operator (closed or
cancelled from a handheld, or the reader unbound): the reader's scans are
problems until it has been left idle for ``READER_HOLD_S``. A scan of a
quantity a handheld would be asked about (a GS1 label whose count says
250,000) is held in the session for a person to confirm or reject on its page
(``Line.held``): nobody stands at the scanner to ask. So is a double read (the
same code again within the reader's ``same_code_s``: a shaky trigger).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import hardware
from agent.scanning import ModeRouter, ScanOutcome, ScanResult, ScanRouter, problem_outcome
from agent.sessions.errors import SessionError, SessionStoreFailed, SessionStoreFull
from agent.sessions.manager import UNSTORED_MAX, SessionManager
from agent.sessions.model import Session, SessionStatus
from protocol.values import shown

# A reader whose session ended while it was scanning into it (another handheld closed or cancelled it, or unbound
# the reader) books nothing until it has been left idle this long: its operator meant those scans for the session.
READER_HOLD_S = 60.0


class SessionRouter:
    """A ``ScanRouter``: the session open on the reader first, else ``fallback``."""

    def __init__(
        self, sessions: SessionManager, fallback: ScanRouter, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.sessions = sessions
        self.fallback = fallback
        self._clock = clock
        # reader id -> (the session it last fed, monotonic s of its last scan): held after that session ends
        self._fed: dict[str, tuple[str, float]] = {}
        # reader id -> the code whose double read it holds in its session: a scanner stuck repeating one code every
        # millisecond holds one line for a person, not thousands, each of which must be rejected before the close
        self._held_again: dict[str, bytes] = {}
        if isinstance(fallback, ModeRouter) and fallback.count_guard is None:
            # A reader in count mode books the SKU's whole count at once: not of a SKU an open count is counting.
            fallback.count_guard = sessions.count_conflict
        if isinstance(fallback, ModeRouter) and fallback.unit_guard is None:
            # A serialised item an open session books when it closes is not booked again as that movement by a reader.
            fallback.unit_guard = sessions.holding_unit
        if isinstance(fallback, ModeRouter) and sessions.scanner_counting is None:
            # … and the other way round: no count session of a SKU such a reader is counting.
            sessions.scanner_counting = fallback.running_count

    async def route(
        self,
        reader_id: str,
        scan: hardware.Scan,
        decoded: hardware.Decoded | None,
        error: hardware.DecodeError | None,
        *,
        double_read: str | None = None,
    ) -> ScanOutcome:
        session = await self.sessions.for_reader(reader_id)
        now = self._clock()
        if session is None:
            if (held := await self._held(reader_id, scan, now)) is not None:
                return held
            if double_read is None:
                return await self.fallback.route(reader_id, scan, decoded, error)
            return await self.fallback.route(reader_id, scan, decoded, error, double_read=double_read)
        self._fed[reader_id] = (session.id, now)
        outcome = await self._into(session, reader_id, scan, decoded, error, double_read)
        if outcome.problem and not outcome.unrecorded:  # nobody at the scanner reads the log: the page lists it
            # (a scan the session store could not write is the page's ``unstored``, sent again from there)
            why = outcome.message.removesuffix(f" (session {session.id})")
            await self.sessions.note_not_added(session.id, scan.text, source=f"scanner:{reader_id}", why=why)
        return outcome

    async def _into(
        self,
        session: Session,
        reader_id: str,
        scan: hardware.Scan,
        decoded: hardware.Decoded | None,
        error: hardware.DecodeError | None,
        double_read: str | None,
    ) -> ScanOutcome:
        """The scan as a line of ``session``, the session bound to ``reader_id``."""
        if double_read is None:
            self._held_again.pop(reader_id, None)
        elif self._held_again.get(reader_id) == scan.raw:
            return ScanOutcome(
                ScanResult.FAILED,
                f"Scan {shown(scan.text, 40)} was not added to {session.type.value} session {session.id}: {double_read},"
                " and a read of it just before is held on the session's page already; if it was another item, scan"
                " it again.",
                location=session.location,
            )
        if error is not None or decoded is None:
            outcome = problem_outcome(reader_id, scan, error)
            return ScanOutcome(outcome.result, f"{outcome.message} (session {session.id})", location=session.location)
        try:
            # A back-office scanner has nobody to ask whether a quantity far past the usual is right (a handheld is
            # asked: UnlikelyQuantity): a label whose count (30), (37) says one is held for a person on the session's
            # page, never booked blindly nor dropped (Line.held).
            # A double read (the same code again within the reader's same_code_s) is held the same way: a person
            # on the session's page books it (a second item after all) or rejects it.
            line = await self.sessions.scan(
                session.id, scan.text, by=session.by, source=f"scanner:{reader_id}", decoded=decoded, unattended=True,
                hold=double_read,
            )  # fmt: skip
        except SessionError as err:
            kept = ""
            if isinstance(err, SessionStoreFull):
                # Nobody at the scanner reads this log: the session's page lists the scan, and sends it again.
                source = f"scanner:{reader_id}"
                if await self.sessions.keep_unstored(
                    session.id, scan.text, source=source, decoded=decoded, why=str(err)
                ):
                    kept = "; it is kept on the session's page: send it again there once there is room, do not scan it again"
                else:
                    kept = f"; the session's page keeps {UNSTORED_MAX:,} such scans already: scan it again once there is room"
            return ScanOutcome(
                ScanResult.FAILED,
                f"Scan {shown(scan.text, 40)} was not added to {session.type.value} session {session.id}: {err}{kept}.",
                location=session.location,
                # the session store could not write it (a full disk): said every time, never taken for line noise
                unrecorded=isinstance(err, SessionStoreFailed),
            )
        if line.pending and double_read is not None:
            self._held_again[reader_id] = scan.raw
        if line.pending:
            return ScanOutcome(
                ScanResult.HANDLED,
                f"Held line {line.no} of {session.type.value} session {session.id} for a person to confirm on its"
                f" page: {line.held}; nothing of it is booked unless someone confirms it.",
                location=session.location,
                sku=line.sku,
                qty=line.qty,
            )
        unknown = " (not in the catalog)" if line.unknown else ""
        return ScanOutcome(
            ScanResult.HANDLED,
            f"Added {line.qty} of {shown(line.sku, bare=True)}{unknown} to {session.type.value} session {session.id} as line {line.no};"
            " it is booked when the session closes.",
            location=session.location,
            sku=line.sku,
            qty=line.qty,
        )

    async def _held(self, reader_id: str, scan: hardware.Scan, now: float) -> ScanOutcome | None:
        """A refusal of a scan from a reader whose session ended (closed or cancelled, or the reader unbound) less
        than ``READER_HOLD_S`` after the reader's scan before: its operator is scanning for the session, and the
        reader's own mode would book the scan as another movement (a count-mode reader counted a delivery's carton
        as the SKU's whole stock). Each refused scan holds the reader on; once left idle, it books its mode again."""
        fed = self._fed.get(reader_id)
        if fed is None:
            return None
        session_id, last_s = fed
        if now - last_s >= READER_HOLD_S:
            del self._fed[reader_id]
            return None
        try:
            session = await self.sessions.get(session_id)
        except SessionError:
            del self._fed[reader_id]
            return None
        self._fed[reader_id] = (session_id, now)
        if session.status in (SessionStatus.CLOSED, SessionStatus.CANCELLED):
            ended = f"was {session.status.value} by {session.closed_by}"
        elif session.status is SessionStatus.CLOSING:
            ended = "is being closed"
        else:
            ended = "was unbound from this scanner"
        return ScanOutcome(
            ScanResult.FAILED,
            f"Scan {shown(scan.text, 40)} was not booked: {session.type.value} session {session.id}, which this"
            f" scanner fed, {ended}; scan into a session bound to this scanner, or leave it idle for"
            f" {READER_HOLD_S:g} s and scan again to book the scanner's own mode.",
            location=session.location,
        )
