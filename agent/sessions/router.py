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
"""

from __future__ import annotations

import hardware
from agent.scanning import ModeRouter, ScanOutcome, ScanResult, ScanRouter, problem_outcome
from agent.sessions.errors import SessionError
from agent.sessions.manager import SessionManager
from protocol.values import shown


class SessionRouter:
    """A ``ScanRouter``: the session open on the reader first, else ``fallback``."""

    def __init__(self, sessions: SessionManager, fallback: ScanRouter) -> None:
        self.sessions = sessions
        self.fallback = fallback
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
    ) -> ScanOutcome:
        session = await self.sessions.for_reader(reader_id)
        if session is None:
            return await self.fallback.route(reader_id, scan, decoded, error)
        if error is not None or decoded is None:
            outcome = problem_outcome(reader_id, scan, error)
            return ScanOutcome(outcome.result, f"{outcome.message} (session {session.id})", location=session.location)
        try:
            line = await self.sessions.scan(
                session.id, scan.text, by=session.by, source=f"scanner:{reader_id}", decoded=decoded
            )
        except SessionError as err:
            return ScanOutcome(
                ScanResult.FAILED,
                f"Scan {shown(scan.text, 40)} was not added to {session.type.value} session {session.id}: {err}.",
                location=session.location,
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
