"""A session's life: survive a restart, undo, cancel, close exactly once even across a crash."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.outbox import Movement, Outbox
from agent.sessions import (
    SessionConflict,
    SessionError,
    SessionManager,
    SessionNotFound,
    SessionNotOpen,
    SessionSpec,
    SessionStatus,
    SessionStore,
    SessionType,
    manager,
)
from agent.sessions.plan import ClosePlan, plan_close
from protocol import Kind, SyncResponse, new_event_id, unpack_hlc, wall_ms_now
from tests.agent.sessions.sessions_helpers import APPLE, PEAR, PLUM, catalog

YEAR_MS = 365 * 86_400_000


async def test_an_open_session_and_its_lines_survive_a_restart(tmp_path: Path) -> None:
    outbox_path, store_path = tmp_path / "outbox.sqlite3", tmp_path / "sessions.sqlite3"
    async with (
        Outbox.open(outbox_path, agent_id="store-a", location="S001") as outbox,
        SessionStore.open(store_path) as store,
    ):
        sessions = SessionManager(store, outbox, catalog=catalog())
        s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-1", reader_id="dock"), by="ana")
        await sessions.scan(s.id, APPLE, by="ana", qty=4)
        await sessions.scan(s.id, PEAR, by="ana")
        before = await sessions.view(s.id)
        last_hlc = outbox.clock.last

    async with (
        Outbox.open(outbox_path, agent_id="store-a", location="S001") as outbox,
        SessionStore.open(store_path) as store,
    ):
        sessions = SessionManager(store, outbox, catalog=catalog())
        await sessions.recover()
        assert outbox.clock.now() > last_hlc
        after = await sessions.view(s.id)
        assert after == before
        assert [x.id for x in await sessions.list()] == [s.id]
        assert (await sessions.for_reader("dock")) == after.session
        await sessions.scan(s.id, PLUM, by="bo")
        closed = await sessions.close(s.id, by="bo")
        booked = [(ev.sku, ev.qty, ev.attrs["by"], ev.attrs.get("closed_by")) for ev in await outbox.pending(100)]
        assert booked == [("SKU-APPLE", 4, "ana", "bo"), ("SKU-PEAR", 1, "ana", "bo"), ("SKU-PLUM", 1, "ana", "bo")]
        assert closed.closed_by == "bo"
        assert await sessions.for_reader("dock") is None  # a closed session frees its reader


async def test_a_year_ahead_in_closed_sessions_does_not_come_back_at_the_next_start(tmp_path: Path) -> None:
    """Found: a store PC a year ahead for a morning (a flat CMOS battery) received a delivery in a session; the
    clock was put right and the hub's next answer reset the outbox's clock to the true time. At the next start
    (the nightly reboot), the sessions put the clock back a year ahead, above the closed session's lines, so
    every movement recorded from then on (a POS export read at start, the day's sales while offline) was stamped
    a year ahead, and the hub held each one for its operator. A closed session's stamps are the outbox's already:
    the outbox's clock, reset or not, is the one to keep."""
    outbox_path, store_path = tmp_path / "outbox.sqlite3", tmp_path / "sessions.sqlite3"
    now = [wall_ms_now() + YEAR_MS]
    async with (
        Outbox.open(outbox_path, agent_id="store-a", location="S001", wall_clock_ms=lambda: now[0]) as outbox,
        SessionStore.open(store_path) as store,
    ):
        sessions = SessionManager(store, outbox, catalog=catalog(), wall_clock_ms=lambda: now[0])
        await sessions.recover()
        s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-1"), by="ana")
        await sessions.scan(s.id, APPLE, by="ana")
        await sessions.close(s.id, by="ana")
        now[0] = wall_ms_now()  # put right; the hub's answer says so
        await outbox.apply_answer(SyncResponse("store-a", outbox.epoch, 1, server_time_ms=now[0]), clock_skew_ms=0)
        assert unpack_hlc(outbox.clock.now())[0] < now[0] + 60_000
    async with (
        Outbox.open(outbox_path, agent_id="store-a", location="S001", wall_clock_ms=lambda: now[0]) as outbox,
        SessionStore.open(store_path) as store,
    ):
        await SessionManager(store, outbox, catalog=catalog(), wall_clock_ms=lambda: now[0]).recover()
        [sale] = (await outbox.record([Movement("S001", "SKU-APPLE", Kind.SALE, -1, "pos:till")])).events
        assert unpack_hlc(sale.occurred_at)[0] < now[0] + 60_000, "stamped a year ahead again"


async def test_undo_takes_back_the_newest_lines_one_by_one(sessions: SessionManager, outbox: Outbox) -> None:
    s = await sessions.open(SessionSpec(SessionType.RECEIVE), by="ana")
    assert await sessions.undo(s.id, by="ana") is None  # nothing to undo yet
    await sessions.scan(s.id, APPLE, by="ana", qty=2)
    await sessions.scan(s.id, PEAR, by="ana")
    await sessions.scan(s.id, APPLE, by="ana", qty=5)
    undone = await sessions.undo(s.id, by="ana")
    assert undone is not None and (undone.no, undone.sku, undone.qty, undone.undone) == (3, "SKU-APPLE", 5, True)
    undone = await sessions.undo(s.id, by="ana")
    assert undone is not None and undone.no == 2
    view = await sessions.view(s.id)
    assert [(line.no, line.undone) for line in view.lines] == [(1, False), (2, True), (3, True)]
    assert [(t.sku, t.qty) for t in view.totals] == [("SKU-APPLE", 2)]
    await sessions.scan(s.id, PLUM, by="ana")  # numbering goes on after undone lines
    assert (await sessions.view(s.id)).lines[-1].no == 4
    await sessions.close(s.id, by="ana")
    assert [(ev.sku, ev.qty) for ev in await outbox.pending(100)] == [("SKU-APPLE", 2), ("SKU-PLUM", 1)]


async def test_cancel_books_nothing_and_closes_the_session_to_scans(sessions: SessionManager, outbox: Outbox) -> None:
    s = await sessions.open(SessionSpec(SessionType.WRITE_OFF, reason="theft"), by="ana")
    await sessions.scan(s.id, APPLE, by="ana")
    cancelled = await sessions.cancel(s.id, by="bo")
    assert (cancelled.status, cancelled.closed_by) == (SessionStatus.CANCELLED, "bo")
    with pytest.raises(SessionNotOpen):
        await sessions.scan(s.id, APPLE, by="ana")
    with pytest.raises(SessionNotOpen):
        await sessions.undo(s.id, by="ana")
    with pytest.raises(SessionNotOpen, match="cancelled"):
        await sessions.close(s.id, by="ana")
    with pytest.raises(SessionNotOpen):
        await sessions.cancel(s.id, by="ana")
    assert await outbox.pending(100) == ()
    assert [x.id for x in await sessions.list(active=False)] == [s.id]
    assert await sessions.list() == []
    with pytest.raises(SessionNotFound):
        await sessions.view("no-such-session")


async def test_a_crash_between_recording_and_marking_closed_books_nothing_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox_path, store_path = tmp_path / "outbox.sqlite3", tmp_path / "sessions.sqlite3"
    async with (
        Outbox.open(outbox_path, agent_id="store-a", location="S001") as outbox,
        SessionStore.open(store_path) as store,
    ):
        sessions = SessionManager(store, outbox, catalog=catalog())
        s = await sessions.open(SessionSpec(SessionType.COUNT, scope_skus=("SKU-APPLE", "SKU-PEAR")), by="ana")
        await sessions.scan(s.id, APPLE, by="ana", qty=7)

        async def crash(*args: object, **kwargs: object) -> None:
            raise SessionError("power cut")

        monkeypatch.setattr(store, "finish_close", crash)
        with pytest.raises(SessionError, match="power cut"):
            await sessions.close(s.id, by="ana", zero_unscanned=True)
        recorded = await outbox.pending(100)
        assert [(ev.sku, ev.kind, ev.qty) for ev in recorded] == [
            ("SKU-APPLE", Kind.COUNT, 7),
            ("SKU-PEAR", Kind.COUNT, 0),
        ]
        monkeypatch.undo()

    async with (
        Outbox.open(outbox_path, agent_id="store-a", location="S001") as outbox,
        SessionStore.open(store_path) as store,
    ):
        sessions = SessionManager(store, outbox, catalog=catalog())
        assert (await sessions.get(s.id)).status is SessionStatus.CLOSING
        with pytest.raises(SessionNotOpen):
            await sessions.scan(s.id, APPLE, by="ana")  # a closing session takes no more lines
        [finished] = await sessions.recover()
        assert finished.status is SessionStatus.CLOSED
        assert finished.report is not None and finished.report.events == 2
        again = await outbox.pending(100)
        assert [ev.event_id for ev in again] == [ev.event_id for ev in recorded]  # nothing booked twice
        assert await sessions.recover() == []


def _as_before_serials(close_plan: ClosePlan) -> ClosePlan:
    """The close as the agent before serials (dba93b2) planned it: one event per SKU, its id derived without units."""
    totals: dict[str, Movement] = {}
    for m in close_plan.movements:
        old = totals.get(m.sku)
        attrs = {k: v for k, v in m.attrs.items() if k != "serial"}
        qty = m.qty + (old.qty if old is not None else 0)
        totals[m.sku] = replace(m, qty=qty, attrs=attrs, event_id=old.event_id if old is not None else new_event_id())
    return replace(close_plan, movements=tuple(totals.values()))


@pytest.mark.parametrize("finish", ["recover", "close again"])
async def test_a_close_recorded_before_an_upgrade_that_derives_other_ids_is_not_booked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, finish: str
) -> None:
    """A close whose events the outbox holds (one record call: all of them or none) is only marked closed. Finished
    by recording its events again under ids the upgraded agent derives otherwise (one event per serial, where the
    old agent booked one per SKU), it was booked twice: 2 phones received became 4."""
    outbox_path, store_path = tmp_path / "outbox.sqlite3", tmp_path / "sessions.sqlite3"
    async with (
        Outbox.open(outbox_path, agent_id="store-a", location="S001") as outbox,
        SessionStore.open(store_path) as store,
    ):
        sessions = SessionManager(store, outbox, catalog=catalog())
        s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-9"), by="ana")
        for serial in ("SN1", "SN2"):
            await sessions.scan(s.id, f"(01)0{APPLE}(21){serial}", by="ana")
        await sessions.scan(s.id, PEAR, by="ana")

        async def crash(*args: object, **kwargs: object) -> None:
            raise SessionError("power cut")

        monkeypatch.setattr(manager, "plan_close", lambda *a: _as_before_serials(plan_close(*a)))
        monkeypatch.setattr(store, "finish_close", crash)
        with pytest.raises(SessionError, match="power cut"):
            await sessions.close(s.id, by="ana")
        monkeypatch.undo()
        recorded = [(ev.event_id, ev.sku, ev.qty) for ev in await outbox.pending(100)]
        assert [(sku, qty) for _, sku, qty in recorded] == [("SKU-APPLE", 2), ("SKU-PEAR", 1)]

    async with (
        Outbox.open(outbox_path, agent_id="store-a", location="S001") as outbox,
        SessionStore.open(store_path) as store,
    ):
        sessions = SessionManager(store, outbox, catalog=catalog())
        if finish == "recover":
            [finished] = await sessions.recover()
        else:
            finished = await sessions.close(s.id, by="bo")
        assert finished.status is SessionStatus.CLOSED
        assert [(ev.event_id, ev.sku, ev.qty) for ev in await outbox.pending(100)] == recorded
        assert await sessions.recover() == []


async def test_planning_a_close_twice_gives_the_same_ids_times_and_content(sessions: SessionManager) -> None:
    s = await sessions.open(SessionSpec(SessionType.RETURN), by="ana")
    await sessions.scan(s.id, APPLE, by="ana", disposition="damaged")
    await sessions.scan(s.id, PEAR, by="ana")
    decided = await sessions.store.begin_close(
        s.id, by="ana", close_hlc=sessions.outbox.clock.now(), zero_unscanned=False
    )
    lines = await sessions.store.lines(s.id)
    first, second = plan_close(decided, lines), plan_close(await sessions.get(s.id), await sessions.store.lines(s.id))
    assert first == second
    assert len({m.event_id for m in first.movements}) == 3


async def test_a_reader_feeds_one_session_at_a_time(sessions: SessionManager) -> None:
    a = await sessions.open(SessionSpec(SessionType.RECEIVE, reader_id="dock"), by="ana")
    with pytest.raises(SessionConflict, match=f"already feeds session {a.id}"):
        await sessions.open(SessionSpec(SessionType.RECEIVE, reader_id="dock"), by="bo")
    b = await sessions.open(SessionSpec(SessionType.RECEIVE), by="bo")
    with pytest.raises(SessionConflict):
        await sessions.bind_reader(b.id, "dock")
    await sessions.bind_reader(a.id, None)
    bound = await sessions.bind_reader(b.id, "dock")
    assert bound.spec.reader_id == "dock"
    assert (await sessions.for_reader("dock")) == bound
    await sessions.cancel(b.id, by="bo")
    assert await sessions.for_reader("dock") is None


async def test_a_count_left_open_across_sales_of_a_sku_scanned_before_and_after_them_says_what_it_assumes(
    sessions: SessionManager, outbox: Outbox
) -> None:
    """Found with a count left open overnight: 5 apples counted at closing time, 3 sold in the evening, 2 more
    counted next morning, and the close booked a count of 7 stamped at the last scan, after the sales: the hub took
    the 3 sold as superseded and showed 7 on a shelf of 4 (when the 3 sold were among the 5 counted). Nobody records
    which units were sold, so the agent cannot know; the close now says what it assumed, with the numbers and what
    to do, in the report (``count_notes``) and the log. A SKU whose scans no movement came between is booked as
    before, without a note."""
    count = await sessions.open(SessionSpec(SessionType.COUNT, scope_skus=("SKU-APPLE", "SKU-PEAR")), by="ana")
    await sessions.key(count.id, "SKU-APPLE", 5, by="ana")
    await sessions.key(count.id, "SKU-PEAR", 4, by="ana")
    await outbox.record([Movement("S001", "SKU-APPLE", Kind.SALE, -3, "pos:till-1")])  # the evening's sales
    await outbox.record([Movement("S001", "SKU-PEAR", Kind.SALE, -1, "pos:till-1")])  # after the pears' last scan
    await sessions.key(count.id, "SKU-APPLE", 2, by="bo")  # the next morning
    closed = await sessions.close(count.id, by="bo")
    report = closed.report
    assert report is not None
    assert [(r.sku, r.qty) for r in report.lines] == [("SKU-APPLE", 7), ("SKU-PEAR", 4)]
    assert [(n.sku, n.moved) for n in report.count_notes] == [("SKU-APPLE", (("sold", 3),))]
    assert report.count_notes[0].message == (
        "3 sold of SKU-APPLE between this count's first scan of it and its last; the count of 7 is booked at its last"
        " scan, so it assumes the 3 sold were not among the units scanned before them — if that is wrong, count"
        " SKU-APPLE again, all of it at once."
    )
    again = await sessions.get(count.id)  # kept with the session's report
    assert again.report is not None and again.report.count_notes == report.count_notes
