"""A back-office scanner feeds the session open on it; without one it books its own mode."""

from __future__ import annotations

from pathlib import Path

import hardware
from agent.config import ScannerSection
from agent.outbox import Outbox
from agent.scan_journal import ScanJournal
from agent.scanning import ModeRouter, ScanResult, ScanService
from agent.sessions import SessionManager, SessionSpec, SessionType
from agent.sessions.router import SessionRouter
from protocol import Kind
from tests.agent.sessions.sessions_helpers import APPLE, PEAR, STRANGER

DOCK = ScannerSection(
    id="dock",
    type="serial",
    mode="receive",
    device=hardware.SerialScannerConfig("dock", "socket://127.0.0.1:9"),
)


def scan(text: str, complete: bool = True) -> hardware.Scan:
    return hardware.Scan("dock", text.encode(), 1, complete)


async def test_a_bound_reader_feeds_its_session_and_an_unbound_one_books_its_mode(
    tmp_path: Path, sessions: SessionManager, outbox: Outbox
) -> None:
    async with ScanJournal.open(tmp_path / "scans.sqlite3") as journal:
        router = SessionRouter(sessions, ModeRouter(outbox, sessions.catalog, [DOCK], location="S001"))  # type: ignore[arg-type]
        service = ScanService([DOCK], router, journal)

        unbound = await service.handle(DOCK, scan(APPLE))
        assert unbound.result is ScanResult.BOOKED
        assert [(ev.kind, ev.qty, ev.source) for ev in await outbox.pending(10)] == [(Kind.RECEIVE, 1, "scanner:dock")]

        count = await sessions.open(
            SessionSpec(SessionType.COUNT, scope_skus=("SKU-APPLE",), reader_id="dock"), by="cy"
        )
        taken = await service.handle(DOCK, scan(APPLE))
        assert taken.result is ScanResult.HANDLED
        assert count.id in taken.message
        outside = await service.handle(DOCK, scan(PEAR))  # not in the count's scope: a problem, never booked
        assert outside.result is ScanResult.FAILED and "not in this count's scope" in outside.message
        cut = await service.handle(DOCK, scan("40063813", complete=False))
        assert cut.result is ScanResult.INCOMPLETE
        misread = await service.handle(DOCK, scan("4006381333932"))
        assert misread.result is ScanResult.DECODE_ERROR
        assert len(await outbox.pending(10)) == 1  # only the scan before the session was booked

        view = await sessions.view(count.id)
        assert [(line.sku, line.qty, line.by, line.source) for line in view.lines] == [
            ("SKU-APPLE", 1, "cy", "scanner:dock")
        ]
        await sessions.close(count.id, by="cy")

        after = await service.handle(DOCK, scan(STRANGER))  # the session is closed: the mode books again
        assert after.result is ScanResult.UNKNOWN
        booked = [(ev.sku, ev.kind, ev.qty) for ev in await outbox.pending(10)]
        assert booked == [
            ("SKU-APPLE", Kind.RECEIVE, 1),
            ("SKU-APPLE", Kind.COUNT, 1),
            ("unknown:04007817327098", Kind.RECEIVE, 1),
        ]
