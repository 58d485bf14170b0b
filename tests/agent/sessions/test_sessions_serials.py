"""Serialised items (a GS1 serial number, AI (21)) scanned into a session: each is one unit the hub learns by serial.

Found: ``(01)04006381333931(21)SN1`` scanned into a receive, return, transfer or
write-off session was booked with the SKU's other units, its serial left on the
line in sessions.sqlite3 and out of every event; the same serial scanned twice
booked two units; a count said nothing of which units it counted.
"""

from __future__ import annotations

import pytest

import hardware
from agent.config import ScannerSection
from agent.outbox import Movement, Outbox
from agent.scanning import ModeRouter, ScanOutcome, ScanResult
from agent.sessions import InvalidSessionInput, SessionManager, SessionSpec, SessionType, plan
from agent.sessions.router import SessionRouter
from protocol import Kind, StockEvent, wall_ms_now
from tests.agent.sessions.sessions_helpers import APPLE, APPLE_CASE, PEAR

GS = "\x1d"
SN1 = f"(01)0{APPLE}(21)SN1"
SN2 = f"(01)0{APPLE}(17)261231(10)LOT1(21)SN2"


async def all_events(outbox: Outbox) -> list[StockEvent]:
    return list(await outbox.pending(1000))


SPECS = {
    SessionType.RECEIVE: (SessionSpec(SessionType.RECEIVE, ref="DN-1"), Kind.RECEIVE, 1, {}),
    SessionType.TRANSFER_OUT: (
        SessionSpec(SessionType.TRANSFER_OUT, ref="TR-1", to_location="S002"), Kind.TRANSFER_OUT, -1, {"to": "S002"}
    ),
    SessionType.TRANSFER_IN: (
        SessionSpec(SessionType.TRANSFER_IN, ref="TR-1"), Kind.TRANSFER_IN, 1, {"final": True}
    ),
    SessionType.RETURN: (SessionSpec(SessionType.RETURN, ref="RC-1"), Kind.RETURN, 1, {"disposition": "restock"}),
    SessionType.WRITE_OFF: (SessionSpec(SessionType.WRITE_OFF), Kind.ADJUST, -1, {}),
}  # fmt: skip


@pytest.mark.parametrize("type_", list(SPECS))
async def test_each_serialised_item_is_an_event_of_its_own_carrying_its_serial(
    sessions: SessionManager, outbox: Outbox, type_: SessionType
) -> None:
    spec, kind, sign, extra = SPECS[type_]
    s = await sessions.open(spec, by="ana")
    for code in (SN1, APPLE, SN2, APPLE):
        await sessions.scan(s.id, code, by="ana")
    await sessions.close(s.id, by="ana")
    booked = [(ev.kind, ev.sku, ev.qty, dict(ev.attrs)) for ev in await all_events(outbox)]
    base = {"by": "ana", "session": s.id}
    sn2 = {"lot": "LOT1", "expiry": "2026-12-31"}
    assert booked == [
        (kind, "SKU-APPLE", sign, {**base, "serial": "SN1", "gtin": "0" + APPLE, **extra}),
        (kind, "SKU-APPLE", 2 * sign, {**base, **extra}),
        (kind, "SKU-APPLE", sign, {**base, **sn2, "serial": "SN2", "gtin": "0" + APPLE, **extra}),
    ]
    assert len({ev.event_id for ev in await all_events(outbox)}) == 3


async def test_a_damaged_serialised_return_is_returned_and_written_off_by_its_serial(
    sessions: SessionManager, outbox: Outbox
) -> None:
    s = await sessions.open(SessionSpec(SessionType.RETURN, ref="RC-2"), by="ana")
    await sessions.scan(s.id, SN1, by="ana", disposition="damaged")
    await sessions.close(s.id, by="ana")
    booked = [(ev.kind, ev.qty, ev.reason, ev.attrs.get("serial")) for ev in await all_events(outbox)]
    assert booked == [(Kind.RETURN, 1, None, "SN1"), (Kind.ADJUST, -1, "damaged", "SN1")]


async def test_a_serial_scanned_twice_is_refused_in_a_sentence_and_counts_once(
    sessions: SessionManager, outbox: Outbox
) -> None:
    """The same item scanned again — as printed (HRI) or as a scanner sends it, with GS — is refused aloud; the
    same serial of another SKU is another item; a scan sent again with its scan_id answers its line; undone, the
    serial may be scanned again."""
    s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-2"), by="ana")
    first = await sessions.scan(s.id, SN1, by="ana", scan_id="h-1")
    for again in (SN1, f"]d20104006381333931{GS}21SN1", f"(01)0{APPLE}(10)OTHER(21)SN1"):
        with pytest.raises(InvalidSessionInput) as refused:
            await sessions.scan(s.id, again, by="bo")
        assert str(refused.value) == (
            "serial number SN1 of SKU-APPLE is already line 1 of this session, so this scan was not taken: one"
            " serialised item is one unit; scan the next item (or undo that line to scan it again)"
        )
    assert (await sessions.scan(s.id, SN1, by="ana", scan_id="h-1")).no == first.no  # the answer was lost
    await sessions.scan(s.id, f"(01)0{PEAR}(21)SN1", by="ana")
    await sessions.undo(s.id, by="ana")
    await sessions.undo(s.id, by="ana")
    await sessions.scan(s.id, SN1, by="ana")
    closed = await sessions.close(s.id, by="ana")
    assert closed.report.units == 1  # type: ignore[union-attr]
    assert [(ev.sku, ev.qty, ev.attrs["serial"]) for ev in await all_events(outbox)] == [("SKU-APPLE", 1, "SN1")]


async def test_a_digital_link_in_a_plain_qr_code_books_its_sku_lot_and_serial(
    sessions: SessionManager, outbox: Outbox
) -> None:
    """A GS1 Digital Link printed in a plain QR Code (]Q1), or typed by a wedge without an identifier, was text: booked
    as "unknown:https://…" without GTIN, lot or serial, and the same item scanned as a GS1 label was another unit."""
    s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-DL"), by="ana")
    await sessions.scan(s.id, f"]Q1https://id.gs1.org/01/0{APPLE}/10/LOT1/21/SN1", by="ana")
    await sessions.scan(s.id, f"https://id.gs1.org/01/0{APPLE}/21/SN2", by="ana")
    for again in (SN1, f"https://id.gs1.org/01/0{APPLE}/21/SN2"):
        with pytest.raises(InvalidSessionInput, match="is already line"):
            await sessions.scan(s.id, again, by="ana")
    await sessions.close(s.id, by="ana")
    booked = [(ev.sku, ev.qty, ev.attrs.get("lot"), ev.attrs["serial"]) for ev in await all_events(outbox)]
    assert booked == [("SKU-APPLE", 1, "LOT1", "SN1"), ("SKU-APPLE", 1, None, "SN2")]


@pytest.mark.parametrize(("type_", "qty"), [(SessionType.RECEIVE, 3), (SessionType.COUNT, 0), (SessionType.COUNT, 2)])
async def test_a_serial_with_a_quantity_other_than_1_is_refused_in_a_sentence(
    sessions: SessionManager, type_: SessionType, qty: int
) -> None:
    spec = SessionSpec(type_, ref="DN-3") if type_ is SessionType.RECEIVE else SessionSpec(type_, bin="A-01")
    s = await sessions.open(spec, by="ana")
    with pytest.raises(InvalidSessionInput) as refused:
        await sessions.scan(s.id, SN1, by="ana", qty=qty)
    assert str(refused.value) == (
        f"the barcode carries serial number SN1, which names one item of SKU-APPLE, so its quantity is 1, not {qty};"
        " scan each serialised item on its own"
    )
    assert (await sessions.view(s.id)).lines == ()


async def test_a_count_lists_the_serials_it_counted(sessions: SessionManager, outbox: Outbox) -> None:
    """A count books ONE event of the SKU's total (it replaces the SKU's stock); its serialised units are listed in
    its attrs, beside its lots."""
    s = await sessions.open(SessionSpec(SessionType.COUNT, bin="A-01"), by="bo")
    for code in (SN1, APPLE_CASE, SN2, f"(01)0{APPLE}(21)SN3"):
        await sessions.scan(s.id, code, by="bo")
    await sessions.close(s.id, by="bo")
    [count] = await all_events(outbox)
    assert (count.kind, count.qty) == (Kind.COUNT, 15)
    assert dict(count.attrs) == {
        "by": "bo", "session": s.id, "bin": "A-01", "lots": 2,
        "lot1": "qty=14", "lot2": "lot=LOT1;expiry=2026-12-31;qty=1", "serials": 3, "serials1": "SN1 SN2 SN3",
    }  # fmt: skip


async def test_a_count_refuses_a_serial_more_than_its_count_event_can_list(
    sessions: SessionManager, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The serials are listed in values of at most 256 characters, in the keys the attrs have left: a serial more
    is refused in a sentence (it would be left out), and the count booked lists every serial it took."""
    # by, session, closed_by, bin, carried and 2 for lines without GS1 data, then "serials" and two lists of serials
    monkeypatch.setattr(plan, "ATTRS_MAX_KEYS", plan.COUNT_KEYS_RESERVED + 3, raising=False)
    serials = [f"{i:020d}" for i in range(25)]  # 20 characters, the longest (21): 12 to a list of 256
    s = await sessions.open(SessionSpec(SessionType.COUNT, bin="A-01"), by="bo")
    for serial in serials[:24]:
        await sessions.scan(s.id, f"(01)0{APPLE}(21){serial}", by="bo")
    with pytest.raises(InvalidSessionInput, match="already lists 24 serial numbers and 1 batches of SKU-APPLE") as refused:
        await sessions.scan(s.id, f"(01)0{APPLE}(21){serials[24]}", by="bo")
    assert "key the rest of SKU-APPLE by its SKU and quantity" in str(refused.value)
    await sessions.key(s.id, "SKU-APPLE", 1, by="bo")
    await sessions.close(s.id, by="bo")
    [count] = await all_events(outbox)
    assert count.qty == 25
    assert (count.attrs["serials"], count.attrs["serials1"], count.attrs["serials2"]) == (
        24, " ".join(serials[:12]), " ".join(serials[12:24])
    )  # fmt: skip


async def test_a_gs1_code_longer_than_64_characters_keeps_its_lot_and_serial_whole(
    sessions: SessionManager, outbox: Outbox
) -> None:
    """Found: the line kept the first 64 characters of a scan, and the close reads lot and serial again from it: a
    65-character code was booked with its serial one character short (another unit's serial), and one whose cut
    no longer parsed with no lot and no serial at all. A label with a lot and a serial of 20 characters is 76."""
    cut = f"(01)0{APPLE}(17)261231(10)LOT-2026-11-A(21)SN-0001234567890"
    lost = f"(01)0{APPLE}(21)SERIAL-000000000001(10)LOT-ABCDEFGHIJKLMNOP"
    longest = f"(01)0{APPLE}(17)261231(10){'L' * 20}(21){'S' * 20}"
    assert (len(cut), len(lost), len(longest)) == (65, 65, 76)
    s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-4"), by="ana")
    for code in (cut, lost, longest):
        assert (await sessions.scan(s.id, code, by="ana")).barcode == code
    await sessions.close(s.id, by="ana")
    booked = [(ev.qty, ev.attrs.get("lot"), ev.attrs.get("serial")) for ev in await all_events(outbox)]
    assert booked == [
        (1, "LOT-2026-11-A", "SN-0001234567890"),
        (1, "LOT-ABCDEFGHIJKLMNOP", "SERIAL-000000000001"),
        (1, "L" * 20, "S" * 20),
    ]


async def test_a_scan_reads_again_only_the_lines_that_can_be_its_serialised_item(sessions: SessionManager) -> None:
    """The double-scan check read every line of the SKU again; past the decoder's cache (4,096 codes) each scan of a
    delivery of thousands of serialised items took seconds. It decodes the lines whose code can hold the serial,
    and still finds it written otherwise: printed with spaces, or escaped in a Digital Link."""
    s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-5"), by="ana")
    for i in range(50):
        await sessions.scan(s.id, f"(01)0{APPLE}(21)SN-{i:04d}", by="ana")
    await sessions.scan(s.id, f"(01)0{APPLE}(21)SN%2F9", by="ana")
    plan._gs1.cache_clear()
    await sessions.scan(s.id, f"(01)0{APPLE}(21)SN-0050", by="ana")
    assert plan._gs1.cache_info().misses <= 3  # the new code, and the one holding "%"
    for again in (f"(01) 0{APPLE} (21) SN-0 007", f"]Q3https://id.gs1.org/01/0{APPLE}/21/SN%2D0007"):
        with pytest.raises(InvalidSessionInput, match="serial number SN-0007 of SKU-APPLE is already line 8"):
            await sessions.scan(s.id, again, by="ana")


async def test_a_count_full_of_serials_still_takes_a_line_without_gs1_data_and_closes(
    sessions: SessionManager, outbox: Outbox
) -> None:
    """Found: a count scanned with serials up to its attrs' 32 keys took a line keyed by hand (or scanned without a
    lot) after, which turned its lot into "lots", "lot1", "lot2": the close failed ("attrs: has 33 keys; the limit is
    32"). Room is kept for such a line; a serial or a batch that does not fit is refused when scanned."""
    serials = [f"{i:020d}" for i in range(330)]  # 20 characters, the longest (21)
    s = await sessions.open(SessionSpec(SessionType.COUNT, bin="A-01"), by="bo")
    taken = 0
    for serial in serials:
        try:
            await sessions.scan(s.id, f"(01)0{APPLE}(10)L1(21){serial}", by="bo")
        except InvalidSessionInput as refused:
            assert "as many as one count can tell the hub" in str(refused)
            break
        taken += 1
    with pytest.raises(InvalidSessionInput, match="as many as one count can tell the hub"):
        await sessions.scan(s.id, f"(01)0{APPLE}(10)L2", by="bo")  # a batch more does not fit either
    await sessions.key(s.id, "SKU-APPLE", 2, by="bo")
    await sessions.scan(s.id, APPLE, by="bo")
    closed = await sessions.close(s.id, by="bo")
    assert closed.report.units == taken + 3  # type: ignore[union-attr]
    [count] = await all_events(outbox)
    assert (count.qty, count.attrs["serials"], count.attrs["lots"]) == (taken + 3, taken, 2)
    listed = " ".join(str(count.attrs[f"serials{i}"]) for i in range(1, 100) if f"serials{i}" in count.attrs)
    assert listed.split() == serials[:taken] and taken == 276


async def test_a_serial_a_scanner_in_a_mode_booked_is_refused_aloud_by_a_session_booking_it_again(
    sessions: SessionManager, outbox: Outbox
) -> None:
    """Found: phone SN1 received at the back door by a scanner in receive mode (no session), then scanned into a
    receive session, was received twice: the session looked only at its own lines. Now the session refuses it as
    the scanner does a serial booked as the same movement before (at the location, within a day): another GTIN's SN1
    is another item; a phone sold since may be received again; a count session counts it (a count books no unit)."""
    dock = ScannerSection(
        id="dock", type="serial", mode="receive", device=hardware.SerialScannerConfig("dock", "socket://127.0.0.1:9")
    )
    router = ModeRouter(outbox, sessions.catalog, [dock], location="S001")  # type: ignore[arg-type]
    raw = f"]C101{'0' + APPLE}21SN1".encode()
    booked = await router.route("dock", hardware.Scan("dock", raw, wall_ms_now()), hardware.decode(raw), None)
    assert booked.result is ScanResult.BOOKED
    s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-9"), by="ana")
    with pytest.raises(InvalidSessionInput) as refused:
        await sessions.scan(s.id, SN1, by="ana")
    assert str(refused.value) == (
        "serial number SN1 of SKU-APPLE was already booked at S001 (receive +1, by scanner:dock), so this scan was"
        " not taken: one serialised item is one unit; scan the next item"
    )
    await sessions.scan(s.id, f"(01){APPLE_CASE}(21)SN1", by="ana")  # the case GTIN's SN1: another item
    other = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-8"), by="bo")
    with pytest.raises(InvalidSessionInput, match=f"already line 1 of receive session {s.id}, so this scan was not"):
        await sessions.scan(other.id, f"(01){APPLE_CASE}(21)SN1", by="bo")  # held by another open receive session
    await sessions.cancel(other.id, by="bo")
    counted = await sessions.open(SessionSpec(SessionType.COUNT, bin="A-01"), by="bo")
    await sessions.scan(counted.id, SN1, by="bo")
    await outbox.record([Movement("S001", "SKU-APPLE", Kind.SALE, -1, "pos:till", attrs={"serial": "SN1"})])
    await sessions.scan(s.id, SN1, by="ana")  # sold since: received again
    await sessions.close(s.id, by="ana")
    assert [(ev.kind, ev.qty, ev.attrs.get("gtin"), ev.source.split(":")[0]) for ev in await all_events(outbox)] == [
        (Kind.RECEIVE, 1, "0" + APPLE, "scanner"),
        (Kind.SALE, -1, None, "pos"),
        (Kind.RECEIVE, 12, APPLE_CASE, "session"),  # in the order the session first scanned them
        (Kind.RECEIVE, 1, "0" + APPLE, "session"),
    ]


async def test_a_serial_scanned_into_an_open_session_is_refused_aloud_by_a_scanner_booking_it_in_its_mode(
    sessions: SessionManager, outbox: Outbox
) -> None:
    """The other way round: phone SN1 scanned into a receive session still open, then at the back door by a scanner
    in receive mode, was received twice once the session closed. The scanner refuses it, naming the session; a
    scanner in sale mode sells it (a sale is another movement), and once the line is undone the scanner books it."""
    dock = ScannerSection(
        id="dock", type="serial", mode="receive", device=hardware.SerialScannerConfig("dock", "socket://127.0.0.1:9")
    )
    till = ScannerSection(
        id="till", type="serial", mode="sale", device=hardware.SerialScannerConfig("till", "socket://127.0.0.1:9")
    )
    router = SessionRouter(sessions, ModeRouter(outbox, sessions.catalog, [dock, till], location="S001"))  # type: ignore[arg-type]
    s = await sessions.open(SessionSpec(SessionType.RECEIVE, ref="DN-10"), by="ana")
    await sessions.scan(s.id, SN1, by="ana")
    raw = f"]C101{'0' + APPLE}21SN1".encode()

    async def scan(reader_id: str) -> ScanOutcome:
        return await router.route(reader_id, hardware.Scan(reader_id, raw, wall_ms_now()), hardware.decode(raw), None)

    refused = await scan("dock")
    assert refused.result is ScanResult.FAILED
    assert refused.message == (
        f"Scan '01{'0' + APPLE}21SN1' is serial number SN1 of SKU-APPLE, already scanned into receive session {s.id}"
        " (line 1), which books it when it closes; nothing was booked: a serialised item is one unit, scan the next"
        " item."
    )
    assert (await scan("till")).result is ScanResult.BOOKED
    await sessions.undo(s.id, by="ana")
    assert (await scan("dock")).result is ScanResult.BOOKED
    assert [(ev.kind, ev.source) for ev in await all_events(outbox)] == [
        (Kind.SALE, "scanner:till"),
        (Kind.RECEIVE, "scanner:dock"),
    ]
