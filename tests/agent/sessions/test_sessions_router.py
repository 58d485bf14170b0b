"""A back-office scanner feeds the session open on it; without one it books its own mode."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

import hardware
from agent.config import ScannerSection
from agent.outbox import Movement, Outbox
from agent.scan_journal import ScanJournal
from agent.scanning import ModeRouter, ScanResult, ScanService
from agent.sessions import SessionManager, SessionSpec, SessionType
from agent.sessions.errors import SessionConflict
from agent.sessions.router import READER_HOLD_S, SessionRouter
from protocol import Kind
from tests.agent.sessions.sessions_helpers import APPLE, PEAR, STRANGER, nuts_label

DOCK = ScannerSection(
    id="dock",
    type="serial",
    mode="receive",
    device=hardware.SerialScannerConfig("dock", "socket://127.0.0.1:9"),
)


_AT_MS = itertools.count(1, 1000)  # a person's scans, a second apart: never a double read (``same_code_s``)


def scan(text: str, complete: bool = True, at_ms: int | None = None) -> hardware.Scan:
    return hardware.Scan("dock", text.encode(), next(_AT_MS) if at_ms is None else at_ms, complete)


async def test_a_bound_reader_feeds_its_session_and_an_unbound_one_books_its_mode(
    tmp_path: Path, sessions: SessionManager, outbox: Outbox
) -> None:
    clock = Clock()
    async with ScanJournal.open(tmp_path / "scans.sqlite3") as journal:
        fallback = ModeRouter(outbox, sessions.catalog, [DOCK], location="S001")  # type: ignore[arg-type]
        router = SessionRouter(sessions, fallback, clock=clock)
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

        clock.s += READER_HOLD_S  # the scanner left idle a while after its session closed
        after = await service.handle(DOCK, scan(STRANGER))  # the session is closed: the mode books again
        assert after.result is ScanResult.UNKNOWN
        booked = [(ev.sku, ev.kind, ev.qty) for ev in await outbox.pending(10)]
        assert booked == [
            ("SKU-APPLE", Kind.RECEIVE, 1),
            ("SKU-APPLE", Kind.COUNT, 1),
            ("unknown:04007817327098", Kind.RECEIVE, 1),
        ]


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.s = 1000.0

    def __call__(self) -> float:
        return self.s


async def test_a_scanner_whose_session_another_closed_books_nothing_until_it_rests(
    tmp_path: Path, sessions: SessionManager, outbox: Outbox
) -> None:
    """Found: the shelf scanner (count mode) bound to a receive session for a delivery; bo closed the session from
    a handheld while cy was still scanning cartons at the scanner, and cy's next carton was booked by the scanner's
    own mode, a count of 1 apple, which replaced the shelf's whole stock at the hub. A scanner whose session ended
    while it was scanning into it refuses its scans now, naming the session and who ended it, until it has been
    left idle for READER_HOLD_S; then it books its mode again."""
    clock = Clock()
    async with ScanJournal.open(tmp_path / "scans.sqlite3") as journal:
        fallback = ModeRouter(outbox, sessions.catalog, [SHELF], location="S001")  # type: ignore[arg-type]
        service = ScanService([SHELF], SessionRouter(sessions, fallback, clock=clock), journal)
        delivery = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-1", reader_id="shelf"), by="cy")
        for no in range(3):
            taken = await service.handle(SHELF, hardware.Scan("shelf", APPLE.encode(), no * 1000, True))
            assert taken.result is ScanResult.HANDLED
        await sessions.close(delivery.id, by="bo")

        for no in range(3, 6):  # cy scans on, a carton every 50 s
            clock.s += READER_HOLD_S - 10
            refused = await service.handle(SHELF, hardware.Scan("shelf", APPLE.encode(), no * 1000, True))
            assert refused.result is ScanResult.FAILED
            assert refused.message == (
                f"Scan '{APPLE}' was not booked: receive session {delivery.id}, which this scanner fed, was closed by"
                " bo; scan into a session bound to this scanner, or leave it idle for"
                f" {READER_HOLD_S:g} s and scan again to book the scanner's own mode."
            )
        clock.s += READER_HOLD_S
        counted = await service.handle(SHELF, hardware.Scan("shelf", APPLE.encode(), 6000, True))
        assert counted.result is ScanResult.BOOKED
        assert [(ev.kind, ev.qty, ev.source) for ev in await outbox.pending(10)] == [
            (Kind.RECEIVE, 3, f"session:{delivery.id}"),
            (Kind.COUNT, 1, "scanner:shelf"),  # booked once the scanner rested, as its operator meant then
        ]


SHELF = ScannerSection(
    id="shelf",
    type="serial",
    mode="count",
    device=hardware.SerialScannerConfig("shelf", "socket://127.0.0.1:9"),
)


async def test_a_count_mode_reader_does_not_count_a_sku_an_open_count_session_is_counting(
    tmp_path: Path, sessions: SessionManager, outbox: Outbox
) -> None:
    """Found counting apples on a handheld (bin A-01: 5) while the shelf scanner in count mode was used on the
    apples in the back room (3): the scanner booked a count of 3 at once, the session a count of 5 at its close,
    and the later replaced the earlier: units gone, as with two count sessions of one SKU, which are refused. The
    scanner's scan of a SKU an open count session is counting is refused now, naming the session."""
    async with ScanJournal.open(tmp_path / "scans.sqlite3") as journal:
        router = SessionRouter(sessions, ModeRouter(outbox, sessions.catalog, [SHELF], location="S001"))  # type: ignore[arg-type]
        service = ScanService([SHELF], router, journal)
        count = await sessions.open(SessionSpec(SessionType.COUNT, bin="A-01"), by="ana")
        await sessions.key(count.id, "SKU-APPLE", 5, by="ana")

        refused = await service.handle(SHELF, hardware.Scan("shelf", APPLE.encode(), 1, True))
        assert refused.result is ScanResult.FAILED
        assert refused.message == (
            f"Scan '{APPLE}' is SKU-APPLE, which is being counted in session {count.id} (opened by ana); nothing was"
            " booked: count it in that session, or close or cancel it first, so neither count replaces the other's"
            " units."
        )
        pear = await service.handle(SHELF, hardware.Scan("shelf", PEAR.encode(), 2, True))
        assert pear.result is ScanResult.BOOKED
        assert [(ev.sku, ev.kind, ev.qty) for ev in await outbox.pending(10)] == [("SKU-PEAR", Kind.COUNT, 1)]
        await sessions.close(count.id, by="ana")
        again = await service.handle(SHELF, hardware.Scan("shelf", APPLE.encode(), 3, True))
        assert again.result is ScanResult.BOOKED  # the session is closed: the reader counts the SKU again


async def test_a_count_session_of_a_sku_a_count_mode_reader_is_counting_is_refused_at_the_open(
    tmp_path: Path, sessions: SessionManager, outbox: Outbox
) -> None:
    """The other order of the test above: the shelf scanner in count mode booked a running count of the apples (1),
    then a count session of the apples was opened on a handheld and taken; its close would have replaced the
    scanner's count (or the scanner's next scan the session's). It is refused now, naming the scanner, and so is
    an apple scanned into a count with no scope; once the reader's running count has ended both are taken."""
    now = [1_000_000]
    async with ScanJournal.open(tmp_path / "scans.sqlite3") as journal:
        shelf = ModeRouter(outbox, sessions.catalog, [SHELF], location="S001", journal=journal, wall_clock_ms=lambda: now[0], monotonic_s=lambda: now[0] / 1000)  # type: ignore[arg-type]
        service = ScanService([SHELF], SessionRouter(sessions, shelf), journal)
        booked = await service.handle(SHELF, hardware.Scan("shelf", APPLE.encode(), 1, True))
        assert booked.result is ScanResult.BOOKED

        with pytest.raises(SessionConflict) as refused:
            await sessions.open(SessionSpec(SessionType.COUNT, scope_skus=("SKU-APPLE",)), by="ana")
        assert str(refused.value) == (
            "SKU-APPLE is being counted by scanner 'shelf' in count mode; count it on that scanner, or wait until its"
            " running count has ended, so neither count replaces the other's units"
        )
        assert await sessions.list() == []
        open_count = await sessions.open(SessionSpec(SessionType.COUNT, bin="A-01"), by="ana")
        with pytest.raises(SessionConflict, match="scanner 'shelf'"):
            await sessions.key(open_count.id, "SKU-APPLE", 5, by="ana")
        await sessions.key(open_count.id, "SKU-PEAR", 2, by="ana")  # a SKU the scanner is not counting is taken
        await sessions.cancel(open_count.id, by="ana")

        now[0] += int(SHELF.count_reset_s * 1000) + 1  # the reader's running count has ended
        later = await sessions.open(SessionSpec(SessionType.COUNT, scope_skus=("SKU-APPLE",)), by="ana")
        assert later.spec.scope_skus == ("SKU-APPLE",)


async def test_a_scanned_label_of_a_far_unusual_quantity_is_held_for_a_person_never_booked_blindly(
    tmp_path: Path, sessions: SessionManager, outbox: Outbox
) -> None:
    """Found: a back-office scanner bound to a session was never asked about a quantity, as a handheld is: a GS1
    label whose variable count (30) said 250,000 nuts (a misprint, a pallet label of another item) was added to the
    delivery without a word and booked at its close. Nobody stands at a scanner to answer, so such a line is held
    now: kept in the session, counting nothing and logged, shown on the session's page with the sentence a
    handheld would have been asked, booked only once a person confirms it there, and kept for the record (never
    booked) when one rejects it. The session cannot be closed while a line is held. A scan of a usual quantity is
    taken as before: each scan is an item in hand; only the quantity a label carries is doubted."""
    async with ScanJournal.open(tmp_path / "scans.sqlite3") as journal:
        fallback = ModeRouter(outbox, sessions.catalog, [DOCK], location="S001")  # type: ignore[arg-type]
        service = ScanService([DOCK], SessionRouter(sessions, fallback), journal)
        delivery = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-7", reader_id="dock"), by="cy")
        taken = await service.handle(DOCK, scan(nuts_label(300)))
        assert taken.result is ScanResult.HANDLED and taken.message.startswith("Added 300 of SKU-NUTS"), taken
        held = await service.handle(DOCK, scan(nuts_label(250_000)))
        assert held.result is ScanResult.HANDLED, held
        assert held.message == (
            f"Held line 2 of receive session {delivery.id} for a person to confirm on its page: receiving 250,000"
            " units of SKU-NUTS on one line is more than one line should hold (10,000); nothing of it is booked"
            " unless someone confirms it."
        )
        misprint = await service.handle(DOCK, scan(nuts_label(99_999_999)))
        assert misprint.result is ScanResult.HANDLED and misprint.message.startswith("Held line 3"), misprint
        for _ in range(3):
            assert (await service.handle(DOCK, scan(APPLE))).result is ScanResult.HANDLED

        view = await sessions.view(delivery.id)
        # the held lines count for nothing
        assert sorted((t.sku, t.qty) for t in view.totals) == [("SKU-APPLE", 3), ("SKU-NUTS", 300)]
        assert [(line.no, line.qty, line.source, line.pending) for line in view.held] == [
            (2, 250_000, "scanner:dock", True),
            (3, 99_999_999, "scanner:dock", True),
        ]
        assert view.held[0].held == (
            "receiving 250,000 units of SKU-NUTS on one line is more than one line should hold (10,000)"
        )
        with pytest.raises(SessionConflict) as refused:
            await sessions.close(delivery.id, by="cy")
        assert str(refused.value) == (
            f"line 2 (250,000 × SKU-NUTS from scanner:dock) and 1 more line of session {delivery.id} are held for a"
            " person to confirm or reject; confirm or reject them on the session's page first, so nothing scanned is"
            " booked blindly or dropped"
        )
        confirmed = await sessions.confirm_line(delivery.id, 2, by="bo")
        assert (confirmed.undone, confirmed.pending, confirmed.decided_by) == (False, False, "bo")
        rejected = await sessions.reject_line(delivery.id, 3, by="bo")
        assert (rejected.undone, rejected.pending, rejected.decided_by) == (True, False, "bo")
        assert await sessions.reject_line(delivery.id, 3, by="bo") == rejected  # the same answer again: no change
        with pytest.raises(SessionConflict, match="line 3 of session .* was rejected by bo"):
            await sessions.confirm_line(delivery.id, 3, by="cy")
        closed = await sessions.close(delivery.id, by="cy")
        assert sorted((r.sku, r.qty) for r in closed.report.lines) == [("SKU-APPLE", 3), ("SKU-NUTS", 250_300)]  # type: ignore[union-attr]
        lines = await sessions.store.lines(delivery.id)
        assert [(line.no, line.qty, line.undone) for line in lines if line.sku == "SKU-NUTS"] == [
            (1, 300, False),
            (2, 250_000, False),
            (3, 99_999_999, True),  # rejected: kept for the record, never booked
        ]


async def test_a_scanned_label_far_past_the_local_count_is_held_in_a_count_and_a_write_off(
    tmp_path: Path, sessions: SessionManager, outbox: Outbox
) -> None:
    """A count replaces the SKU's stock, a write-off takes it off: a label's count far above the local count is held
    there as a handheld's typed quantity is asked (a count past ten times it and 1,000; a write-off past twice it and
    10). Judged by the scan alone: many scans of single items are items in hand, and are taken."""
    await outbox.record([Movement("S001", "SKU-NUTS", Kind.RECEIVE, 40, "scanner:dock")])
    async with ScanJournal.open(tmp_path / "scans.sqlite3") as journal:
        fallback = ModeRouter(outbox, sessions.catalog, [DOCK], location="S001")  # type: ignore[arg-type]
        service = ScanService([DOCK], SessionRouter(sessions, fallback), journal)
        count = await sessions.open(SessionSpec(SessionType.COUNT, scope_skus=("SKU-NUTS",), reader_id="dock"), by="cy")
        assert (await service.handle(DOCK, scan(nuts_label(999)))).message.startswith("Added 999")
        held = await service.handle(DOCK, scan(nuts_label(5_000)))
        assert held.message.startswith("Held line 2") and "the 40 on hand this agent counts" in held.message, held
        assert [t.qty for t in (await sessions.view(count.id)).totals] == [999]
        await sessions.reject_line(count.id, 2, by="cy")
        await sessions.close(count.id, by="cy")

        write_off = await sessions.open(SessionSpec(SessionType.WRITE_OFF, reader_id="dock"), by="cy")
        for _ in range(3):
            assert (await service.handle(DOCK, scan(nuts_label(10)))).message.startswith("Added 10")  # 30 of 40
        held = await service.handle(DOCK, scan(nuts_label(2_000)))  # the count booked 999: past 999 + 999
        assert held.message.startswith("Held line 4") and "writing off 2,000 units of SKU-NUTS" in held.message, held
        await sessions.confirm_line(write_off.id, 4, by="cy")
        await sessions.close(write_off.id, by="cy")
    booked = [(ev.kind, ev.qty) for ev in await outbox.pending(10) if ev.source.startswith("session:")]
    assert booked == [(Kind.COUNT, 999), (Kind.ADJUST, -2_030)]


async def test_a_label_read_twice_by_a_shaky_trigger_is_held_in_the_session_for_a_person(
    tmp_path: Path, sessions: SessionManager, outbox: Outbox
) -> None:
    """Found: a bound scanner whose trigger bounced sent one carton's label twice, 4 ms apart, and the delivery's
    close booked two cartons. The second read of the same code within the reader's ``same_code_s`` is held in the
    session for a person on its page, who books it (a second carton after all) or rejects it; nobody at the
    scanner reads the agent's log. A scanner feeding no session refuses it aloud (its mode books nothing)."""
    async with ScanJournal.open(tmp_path / "scans.sqlite3") as journal:
        fallback = ModeRouter(outbox, sessions.catalog, [DOCK], location="S001")  # type: ignore[arg-type]
        clock = Clock()
        service = ScanService([DOCK], SessionRouter(sessions, fallback, clock=clock), journal)
        delivery = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-9", reader_id="dock"), by="cy")
        first = await service.handle(DOCK, scan(APPLE, at_ms=5_000))
        assert first.result is ScanResult.HANDLED and first.message.startswith("Added 1 of SKU-APPLE"), first
        bounce = await service.handle(DOCK, scan(APPLE, at_ms=5_004))
        assert bounce.result is ScanResult.HANDLED, bounce
        assert bounce.message == (
            f"Held line 2 of receive session {delivery.id} for a person to confirm on its page: the same code came"
            " 4 ms after this scanner's scan of it before, faster than anyone scans two items (a shaky trigger reads"
            " one label twice); nothing of it is booked unless someone confirms it."
        )
        stuck = [await service.handle(DOCK, scan(APPLE, at_ms=5_005 + n)) for n in range(3)]  # a stuck trigger
        assert [s.result for s in stuck] == [ScanResult.FAILED] * 3  # one line held for it, not one per read
        assert stuck[0].message == (
            f"Scan '{APPLE}' was not added to receive session {delivery.id}: the same code came 1 ms after this"
            " scanner's scan of it before, faster than anyone scans two items (a shaky trigger reads one label"
            " twice), and a read of it just before is held on the session's page already; if it was another item,"
            " scan it again."
        )
        again = await service.handle(DOCK, scan(APPLE, at_ms=6_000))  # a second carton, scanned a second later
        assert again.result is ScanResult.HANDLED and again.message.startswith("Added 1 of SKU-APPLE"), again
        view = await sessions.view(delivery.id)
        assert [(t.sku, t.qty) for t in view.totals] == [("SKU-APPLE", 2)]
        assert [(line.no, line.pending) for line in view.held] == [(2, True)]
        await sessions.reject_line(delivery.id, 2, by="cy")
        closed = await sessions.close(delivery.id, by="cy")
        assert [(r.sku, r.qty) for r in closed.report.lines] == [("SKU-APPLE", 2)]  # type: ignore[union-attr]

        clock.s += READER_HOLD_S  # the scanner left idle a while after its session closed
        unbound = await service.handle(DOCK, scan(PEAR, at_ms=100_000))  # the reader books its mode again
        twice = await service.handle(DOCK, scan(PEAR, at_ms=100_010))
        assert (unbound.result, twice.result) == (ScanResult.BOOKED, ScanResult.FAILED)
        assert twice.message.startswith(f"Scan '{PEAR}' was not booked: the same code came 10 ms after")
    booked = [(ev.sku, ev.kind, ev.qty) for ev in await outbox.pending(10)]
    assert booked == [("SKU-APPLE", Kind.RECEIVE, 2), ("SKU-PEAR", Kind.RECEIVE, 1)]
