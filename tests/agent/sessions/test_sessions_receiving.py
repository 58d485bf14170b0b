"""Receiving: against an expected delivery, with over, short and unexpected lines; returns and write-offs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import hardware
from agent.catalog import Catalog, make_item
from agent.config import ScannerSection
from agent.outbox import Outbox
from agent.scan_journal import ScanJournal
from agent.scanning import ModeRouter, ScanResult, ScanService
from agent.sessions import (
    Disposition,
    ExpectedLine,
    InvalidSessionInput,
    SessionManager,
    SessionSpec,
    SessionStatus,
    SessionStore,
    SessionType,
)
from protocol import Kind, StockEvent
from tests.agent.sessions.sessions_helpers import APPLE, APPLE_CASE, PEAR, PLUM, STRANGER


async def all_events(outbox: Outbox) -> list[StockEvent]:
    return list(await outbox.pending(10_000))


def count_record_calls(outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap ``outbox.record``: the list gets the batch size of every call."""
    calls: list[int] = []
    real = outbox.record

    async def record(movements: Any, **kw: Any) -> Any:
        calls.append(len(movements))
        return await real(movements, **kw)

    monkeypatch.setattr(outbox, "record", record)
    return calls


async def test_receiving_reports_over_short_and_unexpected_and_books_one_transaction(
    sessions: SessionManager, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = SessionSpec(
        SessionType.RECEIVE,
        ref="DN-4711",
        expected=(ExpectedLine("SKU-APPLE", 20), ExpectedLine("SKU-PEAR", 5), ExpectedLine("SKU-PLUM", 3)),
    )
    s = await sessions.open(spec, by="ana")
    await sessions.scan(s.id, APPLE_CASE, by="ana", qty=2)  # 2 cases of 12: 24 apples, 4 over
    for _ in range(3):
        await sessions.scan(s.id, PEAR, by="ana")  # 3 of 5 pears: 2 short
    await sessions.scan(s.id, STRANGER, by="ana")  # not in the catalog, not expected
    await sessions.key(s.id, "SKU-KIWI", 2, by="bo")  # keyed by hand, not expected
    # plums never arrive: 3 short
    calls = count_record_calls(outbox, monkeypatch)

    closed = await sessions.close(s.id, by="ana")

    assert calls == [4]  # one record() call: one outbox transaction
    assert closed.status is SessionStatus.CLOSED
    assert closed.report is not None
    lines = {line.sku: (line.status, line.qty, line.expected) for line in closed.report.lines}
    assert lines == {
        "SKU-APPLE": ("over", 24, 20),
        "SKU-PEAR": ("short", 3, 5),
        "SKU-PLUM": ("short", 0, 3),
        "unknown:04007817327098": ("unexpected", 1, None),
        "SKU-KIWI": ("unexpected", 2, None),
    }
    assert [r.difference for r in closed.report.with_status("short")] == [-2, -3]
    events = {ev.sku: ev for ev in await all_events(outbox)}
    assert {sku: (ev.kind, ev.qty) for sku, ev in events.items()} == {
        "SKU-APPLE": (Kind.RECEIVE, 24),
        "SKU-PEAR": (Kind.RECEIVE, 3),
        "unknown:04007817327098": (Kind.RECEIVE, 1),
        "SKU-KIWI": (Kind.RECEIVE, 2),
    }
    apple = events["SKU-APPLE"]
    assert apple.ref == "DN-4711"
    assert apple.source == f"session:{s.id}"
    assert apple.attrs == {"by": "ana", "session": s.id, "expected": 20}
    assert apple.occurred_at == closed.close_hlc
    assert "expected" not in events["SKU-KIWI"].attrs


async def test_closing_again_returns_the_same_report_and_books_nothing_more(
    sessions: SessionManager, outbox: Outbox
) -> None:
    s = await sessions.open(SessionSpec(SessionType.RECEIVE), by="ana")
    await sessions.scan(s.id, APPLE, by="ana", qty=3)
    first = await sessions.close(s.id, by="ana")
    again = await sessions.close(s.id, by="bo")
    assert again == first
    assert [(ev.sku, ev.qty, ev.ref) for ev in await all_events(outbox)] == [("SKU-APPLE", 3, f"session:{s.id}")]
    with pytest.raises(Exception, match="closed and takes no more scans"):
        await sessions.scan(s.id, APPLE, by="ana")


async def test_a_keyed_quantity_must_be_positive_outside_counts(sessions: SessionManager) -> None:
    s = await sessions.open(SessionSpec(SessionType.RECEIVE), by="ana")
    with pytest.raises(InvalidSessionInput, match="from 1"):
        await sessions.scan(s.id, APPLE, by="ana", qty=0)
    with pytest.raises(InvalidSessionInput, match="wrong check digit"):
        await sessions.scan(s.id, "4006381333932", by="ana")
    assert (await sessions.view(s.id)).lines == ()


async def test_customer_return_restocks_or_writes_off_damaged_units(sessions: SessionManager, outbox: Outbox) -> None:
    s = await sessions.open(SessionSpec(SessionType.RETURN, ref="RCPT-99"), by="ana")
    await sessions.scan(s.id, APPLE, by="ana", qty=2)
    await sessions.scan(s.id, APPLE, by="ana", disposition="damaged")
    await sessions.scan(s.id, PEAR, by="ana", disposition=Disposition.DAMAGED)
    with pytest.raises(InvalidSessionInput, match="restock or damaged"):
        await sessions.scan(s.id, PEAR, by="ana", disposition="lost")
    closed = await sessions.close(s.id, by="ana")

    booked = [(ev.sku, ev.kind, ev.qty, ev.reason, ev.attrs.get("disposition")) for ev in await all_events(outbox)]
    assert booked == [
        ("SKU-APPLE", Kind.RETURN, 2, None, "restock"),
        ("SKU-APPLE", Kind.RETURN, 1, None, "damaged"),
        ("SKU-APPLE", Kind.ADJUST, -1, "damaged", "damaged"),
        ("SKU-PEAR", Kind.RETURN, 1, None, "damaged"),
        ("SKU-PEAR", Kind.ADJUST, -1, "damaged", "damaged"),
    ]
    assert closed.report is not None and closed.report.units == 4


async def test_write_off_books_negative_adjustments_with_the_reason(sessions: SessionManager, outbox: Outbox) -> None:
    damaged = await sessions.open(SessionSpec(SessionType.WRITE_OFF), by="ana")
    await sessions.scan(damaged.id, PLUM, by="ana", qty=4)
    await sessions.close(damaged.id, by="ana")
    expired = await sessions.open(SessionSpec(SessionType.WRITE_OFF, reason="expired"), by="bo")
    await sessions.scan(expired.id, PEAR, by="bo")
    await sessions.close(expired.id, by="bo")
    booked = [(ev.sku, ev.kind, ev.qty, ev.reason, ev.attrs["by"]) for ev in await all_events(outbox)]
    assert booked == [
        ("SKU-PLUM", Kind.ADJUST, -4, "damaged", "ana"),
        ("SKU-PEAR", Kind.ADJUST, -1, "expired", "bo"),
    ]


async def test_transfer_sessions_need_a_reference_and_a_destination(sessions: SessionManager, outbox: Outbox) -> None:
    with pytest.raises(InvalidSessionInput, match="transfer reference"):
        SessionSpec(SessionType.TRANSFER_OUT, to_location="S002")
    with pytest.raises(InvalidSessionInput, match="receiving location"):
        SessionSpec(SessionType.TRANSFER_OUT, ref="T-1")
    with pytest.raises(InvalidSessionInput, match="does not apply"):
        SessionSpec(SessionType.RECEIVE, to_location="S002")
    with pytest.raises(InvalidSessionInput, match="cannot go to S001 itself"):
        await sessions.open(SessionSpec(SessionType.TRANSFER_OUT, ref="T-1", to_location="S001"), by="ana")
    out = await sessions.open(SessionSpec(SessionType.TRANSFER_OUT, ref="T-1", to_location="S002"), by="ana")
    await sessions.scan(out.id, APPLE, by="ana", qty=5)
    await sessions.close(out.id, by="ana")
    into = await sessions.open(SessionSpec(SessionType.TRANSFER_IN, ref="T-0", from_location="S009"), by="ana")
    await sessions.scan(into.id, PEAR, by="ana", qty=2)
    await sessions.close(into.id, by="ana")
    booked = [(ev.kind, ev.qty, ev.ref, ev.attrs.get("to"), ev.attrs.get("from")) for ev in await all_events(outbox)]
    assert booked == [(Kind.TRANSFER_OUT, -5, "T-1", "S002", None), (Kind.TRANSFER_IN, 2, "T-0", None, "S009")]


LOOSE_APPLES = "94006381333934"  # a variable-measure GTIN (indicator digit 9): a crate of a varying number


async def test_a_gs1_variable_count_30_is_booked_for_a_variable_gtin_and_refused_on_a_fixed_one(
    tmp_path: Path, outbox: Outbox
) -> None:
    """Found receiving ``(01)14006381333938(30)5``: the (30) was not read, so the scan was booked as 1 (a case of
    12), in a session and by a scanner in receive mode alike. (30) is the GS1 "variable count of items" of a
    variable-measure trade item, whose GTIN starts with 9: such a crate of 5 is booked as 5 now, and (30) on a GTIN
    of fixed quantity is refused in a sentence, booking nothing."""
    cat = Catalog([make_item(APPLE_CASE, "SKU-APPLE", 12), make_item(LOOSE_APPLES, "SKU-APPLE-LOOSE")])
    async with SessionStore.open(tmp_path / "sessions.sqlite3") as store:
        sessions = SessionManager(store, outbox, catalog=cat)
        s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-30"), by="ana")
        line = await sessions.scan(s.id, f"(01){LOOSE_APPLES}(30)5", by="ana")
        assert (line.sku, line.qty) == ("SKU-APPLE-LOOSE", 5)
        with pytest.raises(InvalidSessionInput) as refused:
            await sessions.scan(s.id, f"(01){APPLE_CASE}(30)5", by="ana")
        assert str(refused.value) == (
            f"The barcode '(01){APPLE_CASE}(30)5' gives a variable count (30) of 5 for {APPLE_CASE}, a GTIN of fixed"
            " quantity (only a GTIN starting with 9 has a variable count); nothing was taken: key the quantity of the"
            " item by hand."
        )
        closed = await sessions.close(s.id, by="ana")
        assert [(ev.sku, ev.qty) for ev in await all_events(outbox)] == [("SKU-APPLE-LOOSE", 5)]
        assert closed.report is not None and closed.report.units == 5

    dock = ScannerSection(
        id="dock", type="serial", mode="receive", device=hardware.SerialScannerConfig("dock", "socket://127.0.0.1:9")
    )
    async with ScanJournal.open(tmp_path / "scans.sqlite3") as journal:
        service = ScanService([dock], ModeRouter(outbox, cat, [dock], location="S001"), journal)
        crate = await service.handle(dock, hardware.Scan("dock", f"(01){LOOSE_APPLES}(30)7".encode(), 1, True))
        assert (crate.result, crate.qty) == (ScanResult.BOOKED, 7)
        fixed = await service.handle(dock, hardware.Scan("dock", f"(01){APPLE_CASE}(30)5".encode(), 2, True))
        assert fixed.result is ScanResult.DECODE_ERROR and "a GTIN of fixed quantity" in fixed.message
    booked = [(ev.sku, ev.qty, ev.attrs.get("var_count")) for ev in await all_events(outbox)]
    assert booked == [("SKU-APPLE-LOOSE", 5, None), ("SKU-APPLE-LOOSE", 7, 7)]
