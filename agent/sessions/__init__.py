"""Staff sessions: receiving, cycle counts, transfers, customer returns and write-offs, worked offline.

    async with SessionStore.open(data_dir / "sessions.sqlite3") as store:
        sessions = SessionManager(store, outbox, catalog=catalog)
        await sessions.recover()
        s = await sessions.open(SessionSpec(SessionType.COUNT, scope_skus=("SKU-1", "SKU-2")), by="ana")
        await sessions.scan(s.id, "4006381333931", by="ana")
        await sessions.undo(s.id, by="ana")
        closed = await sessions.close(s.id, by="ana", zero_unscanned=True)
        closed.report

A session and its lines are kept in their own SQLite file, so an open session
survives a restart; closing it records its stock events in one outbox
transaction with deterministic ids, so a retried or interrupted close never
books twice. ``SessionRouter`` lets a back-office scanner feed the session
open on it. See docs/agent-api.md.
"""

from agent.sessions.errors import (
    AlreadyReceived,
    ExceedsOnHand,
    InvalidSessionInput,
    SessionConflict,
    SessionError,
    SessionNotFound,
    SessionNotOpen,
    SessionStoreClosed,
    UnlikelyQuantity,
)
from agent.sessions.items import Item, ItemLookup, resolve_code
from agent.sessions.manager import SessionManager
from agent.sessions.model import (
    BinNote,
    CloseReport,
    Disposition,
    ExpectedLine,
    Line,
    NotAdded,
    Refused,
    ReportLine,
    Session,
    SessionSpec,
    SessionStatus,
    SessionType,
    SessionView,
    Total,
    Unstored,
)
from agent.sessions.plan import ClosePlan, plan_close, totals
from agent.sessions.store import FILENAME, SessionStore

__all__ = [
    "FILENAME",
    "AlreadyReceived",
    "BinNote",
    "ClosePlan",
    "CloseReport",
    "Disposition",
    "ExceedsOnHand",
    "ExpectedLine",
    "InvalidSessionInput",
    "Item",
    "ItemLookup",
    "Line",
    "NotAdded",
    "Refused",
    "ReportLine",
    "Session",
    "SessionConflict",
    "SessionError",
    "SessionManager",
    "SessionNotFound",
    "SessionNotOpen",
    "SessionSpec",
    "SessionStatus",
    "SessionStore",
    "SessionStoreClosed",
    "SessionType",
    "SessionView",
    "Total",
    "UnlikelyQuantity",
    "Unstored",
    "plan_close",
    "resolve_code",
    "totals",
]
