"""A sanity bound on every line: incoming lines and counts far past what is normal are asked before they are added."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.outbox import Movement, Outbox
from agent.sessions import (
    ExpectedLine,
    InvalidSessionInput,
    SessionManager,
    SessionSpec,
    SessionStore,
    SessionType,
)
from agent.sessions.errors import SessionConflict
from protocol import Kind
from tests.agent.sessions.sessions_helpers import APPLE, APPLE_CASE, PEAR, catalog, nuts_label

INCOMING = [
    SessionSpec(SessionType.RECEIVE, ref="DN-1"),
    SessionSpec(SessionType.TRANSFER_IN, ref="TR-1", from_location="S002"),
    SessionSpec(SessionType.RETURN),
]


async def units_of(sessions: SessionManager, session_id: str, sku: str) -> int:
    return sum(line.qty for line in await sessions.store.lines(session_id) if line.sku == sku and not line.undone)


@pytest.mark.parametrize("spec", INCOMING, ids=lambda s: s.type.value)
async def test_an_incoming_line_far_past_what_one_line_holds_is_added_only_when_the_staff_confirm(
    sessions: SessionManager, spec: SessionSpec
) -> None:
    """Found: a receiving line typed as 1,000,000,000 (a barcode scanned into the quantity field) was added without
    a word and booked at the close: the hub believed a billion apples on the shelf. A line of an incoming session
    (a delivery, a transfer received, a customer return) of more than 10,000 units is asked now, naming the SKU and
    the quantity, and is added only when the staff confirm it."""
    s = await sessions.open(spec, by="ana")
    big = 1_000_000 if spec.type is SessionType.TRANSFER_IN else 1_000_000_000  # a transfer moves at most 1,000,000
    with pytest.raises(SessionConflict) as asked:
        await sessions.scan(s.id, APPLE, by="ana", qty=big)
    said = str(asked.value)
    assert f"{big:,} units of SKU-APPLE on one line" in said and "10,000" in said, said
    assert said.endswith("or send it again if it is right (confirm: true)"), said
    # An EAN-8 scanned into the quantity field (past what one transfer may move: refused whatever the staff say).
    ean8 = (
        pytest.raises(InvalidSessionInput, match="more than 1,000,000 units")
        if spec.type is SessionType.TRANSFER_IN
        else pytest.raises(SessionConflict, match="96,385,074 units of SKU-PEAR.*8 digits looks like a barcode")
    )
    with ean8:
        await sessions.key(s.id, "SKU-PEAR", 96385074, by="ana")
    with pytest.raises(SessionConflict, match="10,008 units of SKU-APPLE on one line"):
        await sessions.scan(s.id, APPLE_CASE, by="ana", qty=834)  # 834 cases of 12: the units are what is judged
    assert await sessions.store.lines(s.id) == ()  # nothing was added
    await sessions.scan(s.id, APPLE, by="ana", qty=10_000)  # a big line, but one a delivery may hold: at once
    await sessions.scan(s.id, APPLE, by="ana", qty=500)
    await sessions.key(s.id, "SKU-PEAR", 900_000, by="ana", confirm=True)  # said right by the staff: added
    assert await units_of(sessions, s.id, "SKU-APPLE") == 10_500
    assert await units_of(sessions, s.id, "SKU-PEAR") == 900_000


async def test_a_line_the_delivery_note_lists_is_not_asked_up_to_the_listed_quantity(sessions: SessionManager) -> None:
    """A delivery listing 20,000 units of a SKU: a line of 20,000 is what the note says, not a slip."""
    spec = SessionSpec(SessionType.RECEIVE, ref="DN-2", expected=(ExpectedLine("SKU-APPLE", 20_000),))
    s = await sessions.open(spec, by="ana")
    await sessions.scan(s.id, APPLE, by="ana", qty=20_000)
    with pytest.raises(SessionConflict, match="20,001 units of SKU-APPLE on one line.*the 20,000 the delivery lists"):
        await sessions.scan(s.id, APPLE, by="ana", qty=20_001)
    with pytest.raises(SessionConflict, match="10,001 units of SKU-PEAR on one line"):
        await sessions.scan(s.id, PEAR, by="ana", qty=10_001)  # not on the note: the usual bound


async def test_a_count_far_above_the_local_counts_scale_is_added_only_when_the_staff_confirm(
    sessions: SessionManager, outbox: Outbox
) -> None:
    """Found: a cycle count of 999999 (a finger held on the 9) where the agent counts 40 on hand was added without a
    word, and its close replaced the SKU's whole stock with it. A count that takes the session's units of a SKU past
    ten times the local count on hand, and past 1,000, is asked now (once, at the line that crosses it), naming the
    SKU, the count and the local count, and is added only when the staff confirm it."""
    await outbox.record([Movement("S001", "SKU-APPLE", Kind.RECEIVE, 40, "scanner:dock")])
    s = await sessions.open(SessionSpec(SessionType.COUNT, scope_skus=("SKU-APPLE", "SKU-PEAR")), by="ana")
    with pytest.raises(SessionConflict) as asked:
        await sessions.key(s.id, "SKU-APPLE", 999_999, by="ana")
    said = str(asked.value)
    assert "counting 999,999 units of SKU-APPLE" in said and "the 40 on hand this agent counts" in said, said
    assert said.endswith("or send it again if it is right (confirm: true)"), said
    assert await sessions.store.lines(s.id) == ()
    await sessions.key(s.id, "SKU-APPLE", 400, by="ana")  # ten times the local count: a big variance, not a slip
    await sessions.key(s.id, "SKU-APPLE", 600, by="ana")  # 1,000 in all: not past the floor
    with pytest.raises(SessionConflict, match=r"counting 1,001 units of SKU-APPLE in this session \(1 on this line\)"):
        await sessions.scan(s.id, APPLE, by="ana")
    await sessions.scan(s.id, APPLE, by="ana", confirm=True)
    await sessions.scan(s.id, APPLE, by="ana", qty=5)  # confirmed past the mark: not asked again
    # Where the agent counts nothing (a new item, a first stock-take), a shelf of up to 1,000 is counted at once.
    await sessions.key(s.id, "SKU-PEAR", 1000, by="ana")
    with pytest.raises(SessionConflict, match="the 0 on hand this agent counts"):
        await sessions.key(s.id, "SKU-PEAR", 1, by="ana")
    closed = await sessions.close(s.id, by="ana")
    assert [(r.sku, r.qty) for r in closed.report.lines] == [("SKU-APPLE", 1006), ("SKU-PEAR", 1000)]  # type: ignore[union-attr]


async def test_a_held_line_stays_held_across_a_restart_and_counts_once_confirmed(
    tmp_path: Path, outbox: Outbox
) -> None:
    """A scanner's held line is in the sessions file, not in memory: after the agent restarts it is still held (it
    still keeps the session from closing) and is booked once a person confirms it."""
    async with SessionStore.open(tmp_path / "held.sqlite3") as store:
        sessions = SessionManager(store, outbox, catalog=catalog())
        s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-3", reader_id="dock"), by="cy")
        line = await sessions.scan(s.id, nuts_label(50_000), by="cy", source="scanner:dock", unattended=True)
        assert (line.no, line.qty, line.pending, line.undone) == (1, 50_000, True, True)
    async with SessionStore.open(tmp_path / "held.sqlite3") as store:
        sessions = SessionManager(store, outbox, catalog=catalog())
        await sessions.recover()
        view = await sessions.view(s.id)
        assert [(h.no, h.held) for h in view.held] == [
            (1, "receiving 50,000 units of SKU-NUTS on one line is more than one line should hold (10,000)")
        ]
        with pytest.raises(SessionConflict, match="line 1 .* is held for a person to confirm or reject"):
            await sessions.close(s.id, by="cy")
        await sessions.confirm_line(s.id, 1, by="ana")
        closed = await sessions.close(s.id, by="cy")
    assert closed.report is not None and [(r.sku, r.qty) for r in closed.report.lines] == [("SKU-NUTS", 50_000)]


async def test_a_held_line_confirmed_then_undone_is_said_to_be_so_not_rejected(tmp_path: Path, outbox: Outbox) -> None:
    """Found: a scanner's held line that a person confirmed and the session's staff then undid (Undo takes their
    newest line still counting) was answered "line 1 … was rejected by bo already" when confirmed again: nobody
    rejected it. The store now keeps which decision was taken, so the answer says what happened (confirmed, then
    undone: scan it again), also after a restart; a line rejected still says so."""
    async with SessionStore.open(tmp_path / "held.sqlite3") as store:
        sessions = SessionManager(store, outbox, catalog=catalog())
        s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-9", reader_id="dock"), by="cy")
        held = await sessions.scan(s.id, nuts_label(250_000), by="cy", source="scanner:dock", unattended=True)
        slip = await sessions.scan(s.id, nuts_label(99_999), by="cy", source="scanner:dock", unattended=True)
        confirmed = await sessions.confirm_line(s.id, held.no, by="bo")
        assert (confirmed.undone, confirmed.rejected) == (False, False)
        rejected = await sessions.reject_line(s.id, slip.no, by="bo")
        assert (rejected.undone, rejected.rejected) == (True, True)
        undone = await sessions.undo(s.id, by="cy")
        assert undone is not None and (undone.no, undone.undone, undone.rejected) == (held.no, True, False)
    async with SessionStore.open(tmp_path / "held.sqlite3") as store:
        sessions = SessionManager(store, outbox, catalog=catalog())
        await sessions.recover()
        with pytest.raises(SessionConflict) as again:
            await sessions.confirm_line(s.id, held.no, by="ana")
        assert str(again.value) == (
            f"line 1 of session {s.id} was confirmed by bo and then undone, so it counts for nothing; scan the label"
            " again if its quantity is right"
        )
        # Rejecting it changes nothing: it counts for nothing already, and its record keeps who confirmed it.
        assert await sessions.reject_line(s.id, held.no, by="ana") == undone
        with pytest.raises(SessionConflict, match=f"line 2 of session {s.id} was rejected by bo already"):
            await sessions.confirm_line(s.id, slip.no, by="ana")
        lines = await sessions.store.lines(s.id)
        assert [(x.no, x.undone, x.decided_by, x.rejected) for x in lines] == [
            (1, True, "bo", False),
            (2, True, "bo", True),
        ]
        closed = await sessions.close(s.id, by="cy")
    assert closed.report is not None and closed.report.lines == ()
