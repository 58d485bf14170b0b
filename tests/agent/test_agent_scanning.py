"""Scanners at the agent: a real pty reader, a real outbox and journal, the catalog, the mode router."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import hardware
from agent import scan_journal
from agent.catalog import Catalog, CatalogItem
from agent.config import ScannerSection
from agent.errors import AgentError, OutboxError
from agent.outbox import Movement, Outbox
from agent.scan_journal import DAY_MS, INTERRUPTED, NOT_KEPT, PROBLEM_ROWS_PER_DAY, ScanJournal, read_reader_states
from agent.scanning import PROBLEMS_SAID_MAX, ModeRouter, ScanOutcome, ScanResult, ScanRouter, ScanService
from hardware import GS
from protocol import Kind, StockEvent, event_id_hex, wall_ms_now
from protocol.values import shown
from tests.agent.agent_scan_helpers import PtyDevice, eventually, gtin, wrong_check_digit

EAN13 = gtin("590123412345")
CASE = gtin("1" + EAN13[:-1])  # a case of 12 of EAN13's item
UNKNOWN = gtin("400638133393")  # decodes fine, not in the catalog
LOCATION = "S001"
WAIT_S = 10.0

CATALOG = Catalog([CatalogItem("0" + EAN13, "MUG-01"), CatalogItem(CASE, "MUG-01", 12), CatalogItem("TOTE-7", "TOTE")])


def section(link: Path, mode: str = "receive", reader_id: str = "backdoor", **extra: object) -> ScannerSection:
    device = hardware.SerialScannerConfig(
        reader_id=reader_id, port=str(link), idle_gap_s=None, reconnect_initial_s=0.02, reconnect_max_s=0.1
    )
    extra.setdefault("same_code_s", 0.0)  # Rig.scan writes its frames in one burst: each is an item all the same
    return ScannerSection(id=reader_id, type="serial", mode=mode, device=device, **extra)  # type: ignore[arg-type]


@dataclass
class Rig:
    outbox: Outbox
    journal: ScanJournal
    service: ScanService
    device: PtyDevice

    async def scan(self, *frames: bytes) -> None:
        """Write frames as the scanner would and wait until the agent has decided each one."""
        target = self.service.outcomes + len(frames)
        self.device.write(b"".join(f + b"\r\n" for f in frames))
        await self.service.wait_decided(target, WAIT_S)

    async def events(self) -> tuple[StockEvent, ...]:
        return await self.outbox.pending(1000)


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    *sections_: ScannerSection,
    router: ScanRouter | None = None,
    problem_rows_per_day: int = PROBLEM_ROWS_PER_DAY,
) -> AsyncIterator[Rig]:
    device = PtyDevice(tmp_path / "usb-Honeywell_Xenon_1900-if00")
    sections = sections_ or (section(device.link),)
    try:
        async with (
            Outbox.open(tmp_path / "outbox.sqlite3", agent_id="store-1", location=LOCATION) as outbox,
            ScanJournal.open(tmp_path / "scans.sqlite3", problem_rows_per_day=problem_rows_per_day) as journal,
        ):
            default = ModeRouter(outbox, CATALOG, sections, location=LOCATION, journal=journal)
            service = ScanService(sections, router or default, journal)
            async with service:
                await service.wait_status(sections[0].id, available=True, timeout_s=WAIT_S)
                yield Rig(outbox, journal, service, device)
    finally:
        device.unplug()


async def test_receive_mode_books_the_sku_the_case_pack_size_and_gs1_attrs(tmp_path: Path) -> None:
    label = f"]C101{CASE}17261231" + "10LOT-42" + GS + "21SN0001"
    async with rig(tmp_path) as r:
        await r.scan(b"]E0" + EAN13.encode(), label.encode(), b"]C0TOTE-7")
        events = await r.events()
        entries = await r.journal.recent()
    assert [(e.sku, e.kind, e.qty, e.source, e.location) for e in events] == [
        ("MUG-01", Kind.RECEIVE, 1, "scanner:backdoor", LOCATION),
        ("MUG-01", Kind.RECEIVE, 12, "scanner:backdoor", LOCATION),
        ("TOTE", Kind.RECEIVE, 1, "scanner:backdoor", LOCATION),
    ]
    assert events[0].attrs == {"symbology": "]E0", "barcode": EAN13}
    assert events[1].attrs["lot"] == "LOT-42"
    assert events[1].attrs["expiry"] == "2026-12-31"
    assert events[1].attrs["serial"] == "SN0001"
    assert events[1].attrs["pack_size"] == 12
    # The journal keeps every raw scan with what became of it, newest first.
    assert [(e.raw, e.result, e.sku, e.qty) for e in reversed(entries)] == [
        (b"]E0" + EAN13.encode(), "booked", "MUG-01", 1),
        (label.encode(), "booked", "MUG-01", 12),
        (b"]C0TOTE-7", "booked", "TOTE", 1),
    ]
    assert entries[-1].event_ids == (event_id_hex(events[0].event_id),)


async def test_an_unknown_barcode_is_booked_as_unknown_never_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.scanning")
    async with rig(tmp_path) as r:
        await r.scan(UNKNOWN.encode(), b"]C0SHELF TAG 9")
        events = await r.events()
        entries = await r.journal.recent()
    assert [(e.sku, e.kind, e.qty) for e in events] == [
        ("unknown:0" + UNKNOWN, Kind.RECEIVE, 1),
        ("unknown:SHELF TAG 9", Kind.RECEIVE, 1),
    ]
    assert events[0].attrs == {"barcode": UNKNOWN, "unknown": True}
    assert events[1].attrs == {"symbology": "]C0", "barcode": "SHELF TAG 9", "unknown": True}
    assert {e.result for e in entries} == {"unknown"}
    assert any("is not in the catalog" in m for m in caplog.messages)


async def test_line_noise_books_nothing_and_every_good_scan_is_kept(tmp_path: Path) -> None:
    """Noise on the line (NULs and bytes that are not text, a burst of random bytes) is a problem the operator
    sees, never a movement; the good scans around it are all booked."""
    noise = bytes(b for b in random.Random(1).randbytes(2000) if b not in b"\r\n")[:300]
    nuls = b"\x00\xff\xfe" * 10
    good = b"]E0" + EAN13.encode()
    async with rig(tmp_path) as r:
        await r.scan(good, nuls, noise, good)
        events = await r.events()
        entries = await r.journal.recent()
        [state] = await r.journal.readers()
    assert [(e.sku, e.qty) for e in events] == [("MUG-01", 1), ("MUG-01", 1)]
    assert [(e.raw, e.result) for e in reversed(entries)] == [
        (good, "booked"), (nuls, "decode_error"), (noise, "decode_error"), (good, "booked"),
    ]  # fmt: skip
    assert (state.scans, state.problems) == (4, 2)
    assert "scan the item again" in (state.last_problem or "")


async def test_scanner_text_is_escaped_in_every_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A scanner's bytes never reach the log as they are: a terminal escape, a NUL, a GS or a bidi override
    in a scan appears as its escape, so a scan cannot repaint the operator's terminal or forge a line."""
    caplog.set_level(logging.DEBUG)
    escapes = b"\x1b[2J\x1b[31mFAKE ERROR\x1b[0m\x00"
    text_with_gs = b"]C0BIN" + GS.encode() + b"7"
    bidi = "]C0SHELF\u202eGAT".encode()
    async with rig(tmp_path) as r:
        await r.scan(escapes, text_with_gs, bidi)
    lines = [rec.getMessage() for rec in caplog.records if rec.name.startswith(("agent.", "hardware."))]
    assert any("FAKE ERROR" in line for line in lines)
    assert [line for line in lines if not line.isprintable()] == []
    assert any("\\x1b[2J\\x1b[31mFAKE ERROR" in line for line in lines)
    assert any("BIN\\x1d7" in line for line in lines) and any("SHELF\\u202eGAT" in line for line in lines)


async def test_a_bad_check_digit_books_nothing_and_is_journaled_logged_and_shown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = wrong_check_digit(EAN13)
    async with rig(tmp_path) as r:
        await r.scan(bad.encode(), b"]E0" + EAN13.encode())
        events = await r.events()
        entries = await r.journal.recent()
        states = await r.journal.readers()
    assert [e.sku for e in events] == ["MUG-01"]  # only the good scan
    problem = entries[1]
    assert (problem.raw, problem.result, problem.event_ids) == (bad.encode(), "decode_error", ())
    assert "wrong check digit" in (problem.message or "")
    [state] = states
    assert (state.reader_id, state.scans, state.problems) == ("backdoor", 2, 1)
    assert "wrong check digit" in (state.last_problem or "")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "agent.scanning"]
    assert any(bad in w and "wrong check digit" in w for w in warnings)
    # `status` reads the same from another process, read-only.
    [seen] = read_reader_states(tmp_path / "scans.sqlite3") or []
    assert seen.problems == 1 and "wrong check digit" in (seen.last_problem or "")


async def test_an_unplugged_reader_is_marked_unavailable_and_its_cut_off_scan_is_journaled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with rig(tmp_path) as r:
        await r.scan(b"]C0TOTE-7")  # the pty carries bytes: the next write reaches the reader too ...
        r.device.write(b"]E059012341")  # ... half a barcode, then the cable is pulled
        # Once the reader holds those bytes: a pty moves written bytes to the reading side a moment later
        # (the kernel's flip buffer), and pulling the cable before that would lose them on the wire.
        reader = r.service.readers["backdoor"]

        def holds_half_a_barcode() -> bool:
            link: Any = reader._link
            return link is not None and bool(link._splitter.pending)

        await eventually(holds_half_a_barcode, what="half a barcode read")
        r.device.unplug()
        await r.service.wait_decided(2, WAIT_S)
        await r.service.wait_status("backdoor", available=False, timeout_s=WAIT_S)
        states = await r.journal.readers()
        entries = await r.journal.recent()
        events = await r.events()
    assert [e.sku for e in events] == ["TOTE"]
    assert (entries[0].raw, entries[0].complete, entries[0].result) == (b"]E059012341", False, "incomplete")
    assert "was cut off; scan the item again" in (entries[0].message or "")
    cut = [m for m in caplog.records if m.levelno >= logging.WARNING and "cut off" in m.getMessage()]
    said = f"Scanner 'backdoor' on {reader._where}: a scan was cut off by the disconnect (11 bytes: ']E059012341');"
    assert [m.getMessage() for m in cut] == [f"{said} scan it again."]  # once: by the reader, which knows why
    [state] = states
    assert not state.available and state.error and state.device and state.device.endswith("if00")


async def test_count_mode_records_the_running_count_and_survives_a_restart(tmp_path: Path) -> None:
    link = tmp_path / "usb-Honeywell_Xenon_1900-if00"
    counting = section(link, mode="count")
    async with rig(tmp_path, counting) as r:
        await r.scan(b"]E0" + EAN13.encode(), b"]E0" + EAN13.encode(), b"]I1" + CASE.encode(), UNKNOWN.encode())
    async with rig(tmp_path, counting) as r:  # the agent restarted mid-count
        await r.scan(b"]E0" + EAN13.encode())
        events = await r.events()
    assert [(e.sku, e.kind, e.qty) for e in events] == [
        ("MUG-01", Kind.COUNT, 1),
        ("MUG-01", Kind.COUNT, 2),
        ("MUG-01", Kind.COUNT, 14),  # a case counts its 12 units
        ("unknown:0" + UNKNOWN, Kind.COUNT, 1),
        ("MUG-01", Kind.COUNT, 15),
    ]


async def test_a_running_count_goes_on_from_the_outbox_after_a_kill_between_the_booking_and_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: a count-mode reader's running count went on after a restart from the scan journal's last decided
    scan. The outbox commits a scan's count first (synchronous FULL), the journal writes what became of it after
    (its own file, synchronous NORMAL): an agent killed between the two (kill -9, a power cut) left the count
    booked and its journal row "received", then "interrupted", so the next scan continued from the count before
    and booked 3 where 4 were counted: a unit the agent said it had booked was gone from the count. The running
    count is read from the outbox now, which is what was booked."""
    link = tmp_path / "usb-Honeywell_Xenon_1900-if00"
    counting = section(link, mode="count")
    async with rig(tmp_path, counting) as r:
        await r.scan(b"]E0" + EAN13.encode(), b"]E0" + EAN13.encode())

        async def killed_before_it(*args: Any, **kwargs: Any) -> None:
            return None  # the process died after the outbox's commit, before the journal's

        monkeypatch.setattr(r.journal, "decide", killed_before_it)
        await r.scan(b"]E0" + EAN13.encode())
    monkeypatch.undo()
    async with rig(tmp_path, counting) as r:  # the agent restarted mid-count
        assert r.journal.interrupted == 1
        await r.scan(b"]E0" + EAN13.encode())
        events = await r.events()
    assert [(e.sku, e.kind, e.qty) for e in events] == [
        ("MUG-01", Kind.COUNT, 1),
        ("MUG-01", Kind.COUNT, 2),
        ("MUG-01", Kind.COUNT, 3),
        ("MUG-01", Kind.COUNT, 4),
    ]


async def test_a_scan_booked_just_before_a_kill_is_journaled_as_booked_at_the_restart_not_as_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found killing a real agent ten times while two scanners sent: 16 scans were journaled "interrupted" (a
    problem: "the agent stopped while this scan was being booked; check whether it was recorded"), and the outbox
    held the movement of 15 of them, booked before the journal heard of it. Staff who check by scanning the item
    again book it twice. At the restart, the movements the outbox holds of a reader after its last journaled one
    are the interrupted scan's: it is journaled as booked with them, and is no problem."""
    link = tmp_path / "usb-Honeywell_Xenon_1900-if00"
    async with rig(tmp_path) as r:
        await r.scan(b"]E0" + EAN13.encode(), UNKNOWN.encode())

        async def killed_before_it(*args: Any, **kwargs: Any) -> None:
            return None  # the process died after the outbox's commit, before the journal's

        monkeypatch.setattr(r.journal, "decide", killed_before_it)
        await r.scan(b"]I1" + CASE.encode())
        monkeypatch.undo()
        booked = (await r.events())[-1]
    async with rig(tmp_path, section(link)) as r:  # restarted
        assert r.journal.interrupted == 1
        assert isinstance(r.service.router, ModeRouter)
        await r.service.router.recover_interrupted()
        [reader] = await r.journal.readers()
        assert reader.problems == 0
        # killed next just as the reader sent a scan: journaled, never routed
        await r.journal.add("backdoor", wall_ms_now(), b"]E0" + EAN13.encode(), True, "receive")
    async with rig(tmp_path, section(link)) as r:  # restarted
        assert isinstance(r.service.router, ModeRouter)
        await r.service.router.recover_interrupted()
        entries = list(reversed(await r.journal.recent()))
        [reader] = await r.journal.readers()
    assert [(e.result, e.sku, e.qty) for e in entries] == [
        ("booked", "MUG-01", 1),
        ("unknown", "unknown:0" + UNKNOWN, 1),
        ("booked", "MUG-01", 12),
        ("interrupted", None, None),
    ]
    assert entries[2].event_ids == (event_id_hex(booked.event_id),)
    assert entries[2].message == (
        "Booked receive +12 of MUG-01 at S001 before the agent stopped (found in the outbox at its restart)."
    )
    assert reader.problems == 1  # the one never booked


async def test_a_running_count_is_timed_by_the_monotonic_clock_while_the_wall_clock_jumps(tmp_path: Path) -> None:
    """Found: a count-mode reader's running count ended when this machine's wall clock jumped forward past
    count_reset_s in the middle of it (NTP putting right a clock an hour off, a clock set by hand): the next scan
    booked a count of 1 where 3 were on the shelf, and the latest count wins at the hub. A jump back kept a count
    going long after its reader went quiet. While the agent runs, the pause is measured on the monotonic clock."""
    counting = section(tmp_path / "shelf", mode="count")
    wall, mono = [1_700_000_000_000], [100.0]
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id="store-1", location=LOCATION) as outbox:
        router = ModeRouter(
            outbox, CATALOG, [counting], location=LOCATION, wall_clock_ms=lambda: wall[0], monotonic_s=lambda: mono[0]
        )

        async def scan() -> int | None:
            raw = b"]E0" + EAN13.encode()
            return (
                await router.route(counting.id, hardware.Scan(counting.id, raw, wall[0]), hardware.decode(raw), None)
            ).qty

        assert [await scan(), await scan()] == [1, 2]
        wall[0] += 3_600_000  # the wall clock jumps an hour ahead; a second passes
        mono[0] += 1.0
        assert await scan() == 3
        wall[0] -= 7_200_000  # and two hours back; the reader stays quiet past count_reset_s
        mono[0] += counting.count_reset_s + 1
        assert await scan() == 1  # a new count


async def test_damage_mode_adjusts_down_with_reason_damaged_at_the_readers_location(tmp_path: Path) -> None:
    link = tmp_path / "usb-Honeywell_Xenon_1900-if00"
    async with rig(tmp_path, section(link, mode="damage", location="W001")) as r:
        await r.scan(b"]I1" + CASE.encode())
        [event] = await r.events()
    assert (event.kind, event.qty, event.reason, event.location) == (Kind.ADJUST, -12, "damaged", "W001")


async def test_a_router_in_front_sees_every_scan_and_falls_back_to_the_mode_router(tmp_path: Path) -> None:
    class SessionLike:
        def __init__(self) -> None:
            self.fallback: ModeRouter | None = None
            self.seen: list[tuple[str, bytes, bool]] = []

        async def route(
            self,
            reader_id: str,
            scan: hardware.Scan,
            decoded: hardware.Decoded | None,
            error: hardware.DecodeError | None,
        ) -> ScanOutcome:
            self.seen.append((reader_id, scan.raw, error is None))
            if decoded is not None and decoded.data == "SESSION-START":
                return ScanOutcome(ScanResult.HANDLED, "A receiving session started.")
            assert self.fallback is not None
            return await self.fallback.route(reader_id, scan, decoded, error)

    front = SessionLike()
    async with rig(tmp_path, router=front) as r:
        front.fallback = ModeRouter(r.outbox, CATALOG, r.service.scanners.values(), location=LOCATION)
        await r.scan(b"]C0SESSION-START", b"]E0" + EAN13.encode(), wrong_check_digit(EAN13).encode())
        events = await r.events()
        entries = await r.journal.recent()
    assert [raw for _, raw, _ in front.seen] == [
        b"]C0SESSION-START",
        b"]E0" + EAN13.encode(),
        wrong_check_digit(EAN13).encode(),
    ]
    assert [ok for _, _, ok in front.seen] == [True, True, False]
    assert [e.sku for e in events] == ["MUG-01"]
    assert [e.result for e in reversed(entries)] == ["handled", "booked", "decode_error"]


async def test_a_scan_half_routed_when_the_agent_stopped_is_marked_interrupted(tmp_path: Path) -> None:
    async with ScanJournal.open(tmp_path / "scans.sqlite3") as journal:
        await journal.add("backdoor", wall_ms_now(), b"]E0" + EAN13.encode(), True, "receive")
    async with ScanJournal.open(tmp_path / "scans.sqlite3") as journal:
        [entry] = await journal.recent()
        [state] = await journal.readers()
        assert journal.interrupted == 1
    assert entry.result == INTERRUPTED
    assert state.problems == 1 and "check whether it was recorded" in (state.last_problem or "")


async def test_a_stopped_service_refuses_to_start_again(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        service = r.service
    await service.stop()  # twice is fine
    assert service.readers == {}
    with pytest.raises(AgentError, match="was stopped; make a new one"):
        await service.start()


async def test_a_scanner_spewing_noise_is_journaled_whole_and_logged_in_a_few_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a loose cable or a wrong baud rate: hundreds of frames of noise a second, each a WARNING line before
    caplog.set_level(logging.DEBUG, logger="agent.scanning")
    noise = [bytes([0x1B, 0x5B, 0x41 + i % 4]) + random.Random(i).randbytes(20).replace(b"\r", b"").replace(b"\n", b"")
             for i in range(300)]  # fmt: skip
    async with rig(tmp_path) as r:
        await r.scan(*noise)
        await r.scan(b"]E0" + EAN13.encode())
        entries = await r.journal.recent(1000)
        events = await r.events()
    assert [e.sku for e in events] == ["MUG-01"], "the good scan after the noise is booked"
    assert sum(e.result == "decode_error" for e in entries) == 300, "every noise frame is in the journal"
    said = [
        rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING and rec.name == "agent.scanning"
    ]
    assert len(said) == PROBLEMS_SAID_MAX + 1
    assert said[-1] == (
        f"Scanner 'backdoor' sent {PROBLEMS_SAID_MAX} problem scans in a row (line noise, or a scanner whose settings "
        "do not match?); further ones are kept in the scan journal but not logged until it sends a good scan."
    )
    assert "Scanner 'backdoor' sent a good scan after 300 problem scans in a row." in caplog.messages


async def test_noise_past_a_readers_problem_rows_of_the_day_is_counted_in_one_row_and_good_scans_are_kept(
    tmp_path: Path,
) -> None:
    # at 115,200 baud a noisy reader made ~7.8M journal rows a day, each kept for the whole retention
    noise = [b"\x1b[A" + random.Random(i).randbytes(20).replace(b"\r", b"").replace(b"\n", b"") for i in range(300)]
    async with rig(tmp_path, problem_rows_per_day=20) as r:
        await r.scan(*noise[:150])
        await r.scan(b"]E0" + EAN13.encode())
        await r.scan(*noise[150:])
        await r.scan(b"]E0" + EAN13.encode())
        entries = await r.journal.recent(1000)
        (state,) = await r.journal.readers()
        events = await r.events()
    assert [e.sku for e in events] == ["MUG-01", "MUG-01"]
    assert [e.result for e in entries if e.result == "booked"] == ["booked", "booked"], "every good scan is kept"
    assert sum(e.result == "decode_error" for e in entries) == 20
    (counted,) = [e for e in entries if e.result == NOT_KEPT]
    assert counted.qty == 280 and counted.raw.startswith(noise[-1][:3])
    assert counted.message is not None and counted.message.startswith("280 problem scans past the 20 a day")
    assert len(entries) == 23
    assert (state.scans, state.problems) == (302, 300)


def file_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the journal file read with a connection of its own (what another process, or a crash, would find)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


async def test_noise_past_the_bound_is_counted_in_memory_and_written_seldom_and_at_the_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found profiling a reader spewing noise: past its problem rows of the day each frame still cost two SQLite
    transactions (the refused row's, the count's), thousands a second. Now the count is kept in memory: the
    first is written at once, the rest at most every ``NOT_KEPT_WRITE_S`` (here an hour, on a clock that stands
    still) and at the close; a good scan still has its row at once."""
    monkeypatch.setattr(scan_journal, "NOT_KEPT_WRITE_S", 3_600.0, raising=False)
    noise = [b"\x1b[A" + random.Random(i).randbytes(20).replace(b"\r", b"").replace(b"\n", b"") for i in range(200)]
    path = tmp_path / "scans.sqlite3"
    writes: list[object] = []
    async with rig(tmp_path, problem_rows_per_day=20) as r:
        real_write = r.journal._db.write

        async def counted(fn: Any, *, small: bool = False) -> Any:
            writes.append(fn)
            return await real_write(fn, small=small)

        monkeypatch.setattr(r.journal._db, "write", counted)
        monkeypatch.setattr(r.journal, "_monotonic_s", lambda: 1_000.0, raising=False)
        await r.scan(*noise[:20])  # a row each
        writes.clear()
        await r.scan(*noise[20:])
        assert len(writes) == 1, "one write for the first scan counted, none for the 179 after it"
        await r.scan(b"]E0" + EAN13.encode())
        assert file_rows(path, "SELECT result, sku FROM scans WHERE result = 'booked'") == [("booked", "MUG-01")]
        assert file_rows(path, "SELECT qty FROM scans WHERE result = 'not_kept'") == [(1,)]
    assert file_rows(path, "SELECT qty FROM scans WHERE result = 'not_kept'") == [(180,)]
    assert file_rows(path, "SELECT scans, problems FROM readers") == [(201, 200)]


async def test_noise_counted_in_memory_is_written_by_a_timer_when_the_noise_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is left only in memory for longer than ``NOT_KEPT_WRITE_S`` (here 50 ms) when no scan follows."""
    monkeypatch.setattr(scan_journal, "NOT_KEPT_WRITE_S", 0.05, raising=False)
    path = tmp_path / "scans.sqlite3"
    async with rig(tmp_path, problem_rows_per_day=2) as r:
        monkeypatch.setattr(r.journal, "_monotonic_s", lambda: 1_000.0, raising=False)
        await r.scan(*[b"\x1b[A%d" % i for i in range(50)])

        def counted() -> bool:
            return file_rows(path, "SELECT qty FROM scans WHERE result = 'not_kept'") == [(48,)]

        await eventually(counted, what="the count written by the timer")


async def test_scans_journaled_while_the_clock_was_years_behind_outlive_its_correction_by_the_retention(
    tmp_path: Path,
) -> None:
    """Found: the journal's retention compared each scan's time with the wall clock alone. A store PC whose clock
    fell back to 2000 (a flat CMOS battery) and was put right by NTP days later had every scan of those days, the
    only record of the ones not booked, deleted at the next purge: years older than the 30 days kept. Scans age by
    the lesser of what the wall clock and the monotonic clock moved while the agent runs now (at most a day for
    the time it was stopped), so a wrong clock, or one put right, neither deletes early nor keeps for ever."""
    wall, mono = [946_684_800_000], [50.0]  # 2000-01-01
    path = tmp_path / "scans.sqlite3"

    async def scanned(journal: ScanJournal, raw: bytes) -> None:
        scan_id = await journal.add("dock", wall[0], raw, True, "receive")
        assert scan_id is not None
        await journal.decide(scan_id, "dock", result="decode_error", message="a bad check digit")

    async with ScanJournal.open(
        path, retention_s=30 * 86_400, wall_clock_ms=lambda: wall[0], monotonic_s=lambda: mono[0]
    ) as journal:
        await scanned(journal, b"offline-1")
        wall[0] += 2 * 86_400_000  # two days offline with the wrong clock
        mono[0] += 2 * 86_400
        await scanned(journal, b"offline-2")
        wall[0] = 1_796_000_000_000  # NTP puts it right: 2026
        mono[0] += 3_600
        await scanned(journal, b"online-1")
        assert [e.raw for e in reversed(await journal.recent())] == [b"offline-1", b"offline-2", b"online-1"]
    wall[0] += 20 * 86_400_000  # restarted after 20 days stopped: at most a day of it counts
    async with ScanJournal.open(
        path, retention_s=30 * 86_400, wall_clock_ms=lambda: wall[0], monotonic_s=lambda: mono[0]
    ) as journal:
        for _ in range(28):  # 28 days of running
            wall[0] += 86_400_000
            mono[0] += 86_400
            await scanned(journal, b"later")
        kept = [e.raw for e in reversed(await journal.recent(100))]
        assert kept[:3] == [b"offline-1", b"offline-2", b"online-1"]  # aged about 29 days
        for _ in range(3):
            wall[0] += 86_400_000
            mono[0] += 86_400
            await scanned(journal, b"later")
        assert {e.raw for e in await journal.recent(100)} == {b"later"}


async def test_the_problem_rows_of_a_day_are_counted_again_from_the_file_after_a_restart(tmp_path: Path) -> None:
    day_ms = wall_ms_now() // DAY_MS * DAY_MS
    path = tmp_path / "scans.sqlite3"
    async with ScanJournal.open(path, problem_rows_per_day=2) as journal:
        kept = [await journal.add("r", day_ms + i, b"x", True, "receive", problem=True) for i in range(3)]
        assert kept[2] is None
        for scan_id in kept[:2]:
            assert scan_id is not None
            await journal.decide(scan_id, "r", result="decode_error", message="noise")
        await journal.not_kept("r", day_ms + 2, b"x", True, "receive", message="noise")
    async with ScanJournal.open(path, problem_rows_per_day=2) as journal:
        assert await journal.add("r", day_ms + 3, b"y", True, "receive", problem=True) is None
        await journal.not_kept("r", day_ms + 3, b"y", True, "receive", message="noise")
        assert await journal.add("r", day_ms + 4, b"]C0OK", True, "receive") is not None  # a good scan: always
        assert await journal.add("r", day_ms + DAY_MS, b"z", True, "receive", problem=True) is not None  # next day
        entries = await journal.recent()
    assert [(e.result, e.qty) for e in entries if e.result == NOT_KEPT] == [(NOT_KEPT, 2)]
    assert len(entries) == 5  # two kept, one counting two, the good scan, the next day's first


def serialised(serial: str) -> bytes:
    """A GS1-128 label of EAN13's item carrying a serial number (21)."""
    return f"]C101{'0' + EAN13}21{serial}".encode()


async def test_a_serialised_item_scanned_twice_in_receive_mode_is_refused_aloud_and_booked_once(tmp_path: Path) -> None:
    """Scanned twice at the back door (or once as a label and once as its Digital Link), one phone was received as
    two: two receive +1 events with the same serial. The second is refused aloud; another serial is another phone."""
    link = f"]Q1https://id.gs1.org/01/0{EAN13}/21/SN1".encode()
    async with rig(tmp_path) as r:
        await r.scan(serialised("SN1"), serialised("SN1"), link, serialised("SN2"))
        events = await r.events()
        entries = list(reversed(await r.journal.recent()))
    assert [(e.sku, e.kind, e.qty, e.attrs["serial"]) for e in events] == [
        ("MUG-01", Kind.RECEIVE, 1, "SN1"),
        ("MUG-01", Kind.RECEIVE, 1, "SN2"),
    ]
    assert [e.result for e in entries] == ["booked", "failed", "failed", "booked"]
    assert entries[1].message == (
        f"Scan '01{'0' + EAN13}21SN1' is serial number SN1 of MUG-01, already booked (receive +1 at {LOCATION}, by"
        " scanner:backdoor); nothing was booked: a serialised item is one unit, scan the next item."
    )


async def test_a_serialised_item_scanned_twice_into_a_running_count_counts_once_even_after_a_restart(
    tmp_path: Path,
) -> None:
    counting = section(tmp_path / "usb-Honeywell_Xenon_1900-if00", mode="count")
    async with rig(tmp_path, counting) as r:
        await r.scan(serialised("SN1"), serialised("SN2"), serialised("SN1"))
    async with rig(tmp_path, counting) as r:  # the agent restarted mid-count
        await r.scan(serialised("SN2"), serialised("SN3"), b"]E0" + EAN13.encode())
        events = await r.events()
        results = [e.result for e in reversed(await r.journal.recent())]
    assert [(e.kind, e.qty, e.attrs.get("serial")) for e in events] == [
        (Kind.COUNT, 1, "SN1"),
        (Kind.COUNT, 2, "SN2"),
        (Kind.COUNT, 3, "SN3"),
        (Kind.COUNT, 4, None),  # an item without a serial is counted at each scan, as before
    ]
    assert results == ["booked", "booked", "failed", "failed", "booked", "booked"]


async def test_a_serialised_item_moved_otherwise_since_may_be_booked_again(tmp_path: Path) -> None:
    """Only the same movement again is a double scan: a phone sold, returned, then sold again is sold twice; a
    phone returned at one reader is refused at another reader in return mode."""
    sections = [section(tmp_path / mode, mode=mode, reader_id=mode) for mode in ("sale", "return", "damage")]
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id="store-1", location=LOCATION) as outbox:
        router = ModeRouter(outbox, CATALOG, sections, location=LOCATION)

        async def scan(reader_id: str, raw: bytes) -> ScanResult:
            scanned = hardware.Scan(reader_id, raw, wall_ms_now())
            return (await router.route(reader_id, scanned, hardware.decode(raw), None)).result

        assert [
            await scan("sale", serialised("SN1")),
            await scan("return", serialised("SN1")),
            await scan("return", serialised("SN1")),
            await scan("sale", serialised("SN1")),
            await scan("sale", serialised("SN1")),
            await scan("damage", serialised("SN2")),
            await scan("damage", serialised("SN2")),
        ] == [ScanResult.BOOKED, ScanResult.BOOKED, ScanResult.FAILED, ScanResult.BOOKED, ScanResult.FAILED,
              ScanResult.BOOKED, ScanResult.FAILED]  # fmt: skip
        booked = [(e.kind, e.qty, e.reason) for e in await outbox.pending(100)]
    assert booked == [
        (Kind.SALE, -1, None),
        (Kind.RETURN, 1, None),
        (Kind.SALE, -1, None),
        (Kind.ADJUST, -1, "damaged"),
    ]


async def test_a_count_in_count_mode_names_every_serial_it_counted(tmp_path: Path) -> None:
    """Found: each count event of a running count named only the serial of the scan that made it, so the last one,
    the count the hub keeps, said nothing of the other units it counted (a session's count lists them all)."""
    counting = section(tmp_path / "usb-Honeywell_Xenon_1900-if00", mode="count")
    async with rig(tmp_path, counting) as r:
        await r.scan(serialised("SN1"), b"]E0" + EAN13.encode(), serialised("SN2"), serialised("SN3"))
        events = await r.events()
    assert [(e.qty, e.attrs.get("serials"), e.attrs.get("serials1")) for e in events] == [
        (1, 1, "SN1"),
        (2, 1, "SN1"),
        (3, 2, "SN1 SN2"),
        (4, 3, "SN1 SN2 SN3"),
    ]
    assert (events[-1].attrs["serial"], events[-1].attrs["gtin"]) == ("SN3", "0" + EAN13)  # the scan that made it


def case_serialised(serial: str) -> bytes:
    """A GS1-128 label of CASE (another GTIN of MUG-01: a case of 12) carrying a serial number (21)."""
    return f"]C101{CASE}21{serial}".encode()


async def test_a_serial_names_one_item_of_its_gtin_not_of_its_sku(tmp_path: Path) -> None:
    """Found: a double scan was told by SKU and serial, but a serial is unique within its GTIN only (GS1): case SN1
    of MUG-01's case GTIN was refused as a double scan of unit SN1 of MUG-01's unit GTIN. Told by GTIN and serial,
    both are booked, and each is still refused scanned twice, in receive mode and in a running count."""
    counting = section(tmp_path / "count", mode="count", reader_id="shelf")
    receiving = section(tmp_path / "receive", mode="receive", reader_id="dock")
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id="store-1", location=LOCATION) as outbox:
        router = ModeRouter(outbox, CATALOG, [counting, receiving], location=LOCATION)

        async def scan(reader_id: str, raw: bytes) -> ScanResult:
            scanned = hardware.Scan(reader_id, raw, wall_ms_now())
            return (await router.route(reader_id, scanned, hardware.decode(raw), None)).result

        assert [
            await scan("dock", serialised("SN1")),
            await scan("dock", case_serialised("SN1")),
            await scan("dock", case_serialised("SN1")),
            await scan("shelf", serialised("SN7")),
            await scan("shelf", case_serialised("SN7")),
            await scan("shelf", case_serialised("SN7")),
        ] == [ScanResult.BOOKED, ScanResult.BOOKED, ScanResult.FAILED, ScanResult.BOOKED, ScanResult.BOOKED,
              ScanResult.FAILED]  # fmt: skip
        booked = [(e.kind, e.qty, e.attrs["gtin"], e.attrs["serial"]) for e in await outbox.pending(100)]
    assert booked == [
        (Kind.RECEIVE, 1, "0" + EAN13, "SN1"),
        (Kind.RECEIVE, 12, CASE, "SN1"),
        (Kind.COUNT, 1, "0" + EAN13, "SN7"),
        (Kind.COUNT, 13, CASE, "SN7"),
    ]


def logistic_label(count: int) -> bytes:
    """A GS1 logistic label: (02) what it holds (the mug) and (37) how many, as a scanner sends it."""
    return f"]C102{'0' + EAN13}37{count}".encode()


RECEIVED = "receiving 250,000 units of MUG-01 on one line is more than one line should hold (10,000)"
COUNTED = (
    "counting 250,000 units of MUG-01 on one scan is far more than the 6 on hand this agent counts (more than 10"
    " times it, and past 1,000)"
)
WRITTEN_OFF = (
    "writing off 250,000 units of MUG-01 on one line is more than one line should hold (10,000), and this agent"
    " counts -6 on hand"
)


@pytest.mark.parametrize(
    ("mode", "booked", "said"),
    [("receive", [6, 1], RECEIVED), ("count", [6, 7], COUNTED), ("damage", [-6, -1], WRITTEN_OFF)],
    ids=["receive", "count", "damage"],
)
async def test_a_label_of_a_far_unusual_quantity_is_held_for_a_person_never_booked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, booked: list[int], said: str
) -> None:
    """Found: a scanner feeding no session booked whatever quantity a GS1 label's (37) (or (30)) said: a misprinted
    label of 250,000 mugs was received, counted or written off at once, with nobody asked. A session asks a
    handheld, and holds a scanner's line, for such a quantity; a scanner in its mode has nobody to ask and nothing
    to hold it in, so the scan books nothing and is a problem a person sees (a WARNING, the scan journal, the
    reader's last problem in ``status``), in one sentence naming the SKU, the quantity and what to do. A label of
    a usual quantity, and the scans after it, are booked as before."""
    link = tmp_path / "usb-Honeywell_Xenon_1900-if00"
    big = logistic_label(250_000)
    async with rig(tmp_path, section(link, mode=mode)) as r:
        await r.scan(logistic_label(6), big, b"]E0" + EAN13.encode())
        events = await r.events()
        entries = await r.journal.recent()
    assert [(e.sku, e.qty) for e in events] == [("MUG-01", qty) for qty in booked]
    held = entries[1]
    message = (
        f"Scan {shown(big.decode()[3:], 40)} was held, not booked: {said}; nobody at the scanner can confirm it, so if"
        " the label's quantity is right book it on the handheld, where a person confirms it, and else fix the label."
    )
    assert (held.raw, held.result, held.message, held.sku, held.event_ids) == (big, "failed", message, "MUG-01", ())
    [state] = read_reader_states(tmp_path / "scans.sqlite3") or []
    assert (state.problems, state.last_problem) == (1, message)  # `status` shows it
    assert f"Scanner 'backdoor': {message}" in [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _fill_up(conn: sqlite3.Connection) -> None:
    """The file may grow no more: SQLite answers a write as a full disk does (SQLITE_FULL)."""
    conn.execute("CREATE TABLE filler (b BLOB)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    for size in (1024, 128, 16, 1):
        with contextlib.suppress(sqlite3.OperationalError):  # "database or disk is full": no room for this size
            while True:
                conn.execute("INSERT INTO filler VALUES (zeroblob(?))", (size,))


async def test_scans_refused_by_a_full_outbox_are_each_said_and_never_called_noise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found with a running agent whose data directory was a 2 MiB tmpfs: past the tenth scan the disk refused,
    # the rest were refused at DEBUG only, after a sentence blaming line noise and saying they were journaled
    # (the journal was full too), and each was first said to be "still booked" (it was not).
    caplog.set_level(logging.INFO, logger="agent.scanning")
    refused = PROBLEMS_SAID_MAX + 5
    async with rig(tmp_path) as r:
        await r.scan(b"]E0" + EAN13.encode())
        # SQLite's own "database or disk is full" (SQLITE_FULL), as a full disk answers: the file may not grow
        await r.outbox._db.outside_transaction(_fill_up)
        with pytest.raises(OutboxError, match="the disk is full"):  # the rest of the room: the events' own pages
            while True:
                await r.outbox.record([Movement(LOCATION, "TOTE", Kind.RECEIVE, 1, "api:filler")])
        await r.scan(*[b"]E0" + EAN13.encode()] * refused)
        await r.outbox._db.outside_transaction(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
        await r.scan(b"]E0" + EAN13.encode())
        events = await r.events()
    scanned = [e.sku for e in events if e.sku != "TOTE"]
    assert scanned == ["MUG-01", "MUG-01"], "recording resumes once the disk takes writes again"
    said = [rec for rec in caplog.records if rec.name == "agent.scanning" and rec.levelno >= logging.WARNING]
    not_recorded = [rec for rec in said if "was NOT recorded" in rec.getMessage()]
    assert len(not_recorded) == refused, "every refused scan is said, however many in a row"
    assert all(rec.levelno == logging.ERROR and "the disk is full" in rec.getMessage() for rec in not_recorded)
    assert not any("line noise" in rec.getMessage() for rec in said), "a full disk is not the scanner's noise"


async def test_a_label_read_twice_by_a_shaky_trigger_is_booked_once_and_the_second_read_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: a scanner whose trigger bounced sent one carton's label twice, a few milliseconds apart, and the
    agent received two cartons (in ``count`` mode it counted 2 where 1 stood). Nobody scans two items that fast:
    the same code again within the reader's ``same_code_s`` (0.1 s unless set) of its scan before books nothing
    and is a problem a person sees, saying what happened and to scan again if it was a second item. The same
    code scanned again after that, and another code at once, are booked."""
    link = tmp_path / "usb-Honeywell_Xenon_1900-if00"
    good = b"]E0" + EAN13.encode()
    async with rig(tmp_path, section(link, same_code_s=0.05)) as r:
        await r.scan(good, good)  # one carton, the trigger bouncing: both frames in one burst
        await r.scan(b"]C0TOTE-7", good)  # another code, then the first again at once: two items
        sent = r.service.outcomes
        await asyncio.sleep(0.2)  # a second carton of the same item, scanned after a moment
        r.device.write(good + b"\r\n")
        await r.service.wait_decided(sent + 1, WAIT_S)
        events = await r.events()
        entries = await r.journal.recent()
    assert [(e.sku, e.qty) for e in events] == [("MUG-01", 1), ("TOTE", 1), ("MUG-01", 1), ("MUG-01", 1)]
    twice = entries[-2]  # the journal's newest first
    assert (twice.raw, twice.result, twice.event_ids) == (good, "failed", ())
    assert twice.message is not None and twice.message.startswith(
        f"Scan {shown(good.decode()[3:], 40)} was not booked: the same code came "
    )
    assert twice.message.endswith(
        " after this scanner's scan of it before, faster than anyone scans two items (a shaky trigger reads one label"
        " twice); if it was a second item, scan it again."
    )
    [state] = read_reader_states(tmp_path / "scans.sqlite3") or []
    assert (state.problems, state.last_problem) == (1, twice.message)
    assert f"Scanner 'backdoor': {twice.message}" in [m.getMessage() for m in caplog.records]


async def test_a_scanner_whose_same_code_s_is_0_books_every_read(tmp_path: Path) -> None:
    """``same_code_s = 0``: a scanner in batch mode, which sends what it stored all at once, books every read."""
    link = tmp_path / "usb-Honeywell_Xenon_1900-if00"
    good = b"]E0" + EAN13.encode()
    async with rig(tmp_path, section(link, same_code_s=0.0)) as r:
        await r.scan(good, good, good)
        events = await r.events()
    assert [(e.sku, e.qty) for e in events] == [("MUG-01", 1)] * 3


async def test_a_pallets_sscc_label_books_nothing_and_says_to_scan_the_items(tmp_path: Path) -> None:
    """Found receiving at the dock: the pallet's SSCC label (00) scanned out of habit was booked as one unit of
    'unknown:00376…', a SKU no catalog ever learns (an SSCC names one pallet, once). An SSCC alone is no item: the
    scan books nothing and says to scan the items or cases; a pallet label that also carries its contents (02) and
    count (37) books them, as before."""
    sscc = b"]C100" + gtin("03761234500000001").encode()
    contents = b"]C100" + gtin("03761234500000001").encode() + b"02" + ("0" + EAN13).encode() + b"376"
    async with rig(tmp_path) as r:
        await r.scan(sscc, contents)
        events = await r.events()
        entries = await r.journal.recent()
    assert [(e.sku, e.qty) for e in events] == [("MUG-01", 6)]
    refused = entries[-1]
    assert (refused.result, refused.event_ids) == ("failed", ())
    assert refused.message == (
        f"Scan {shown(sscc.decode()[3:], 40)} is the SSCC of a pallet or parcel (00), not an item: nothing was booked;"
        " scan the barcodes of the items or cases on it (a pallet label that also carries its contents (02) and"
        " their count (37) is booked)."
    )


async def test_a_label_giving_a_count_37_with_a_gtin_01_books_nothing_and_says_the_rule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: ``(01) + (37)`` was booked as 1 unit without a word, though the label says 12. (37) counts the items of
    a contents GTIN (02) only (GS1 General Specifications): the label contradicts itself, so it is refused aloud."""
    label = f"]C101{CASE}3712".encode()
    async with rig(tmp_path) as r:
        await r.scan(label, logistic_label(12))
        events = await r.events()
        entries = await r.journal.recent()
    assert [(e.sku, e.qty) for e in events] == [("MUG-01", 12)]  # only the (02) + (37) label
    refused = entries[1]
    assert (refused.raw, refused.result, refused.event_ids) == (label, "decode_error", ())
    assert "(37)" in (refused.message or "") and "only with the GTIN of contained items (02)" in (refused.message or "")
    warnings = [m.getMessage() for m in caplog.records if m.levelno == logging.WARNING and m.name == "agent.scanning"]
    assert any("(37)" in w and "(02)" in w for w in warnings)


async def test_a_label_with_its_serial_21_twice_books_nothing_and_says_so(tmp_path: Path) -> None:
    """Found: a label with two serials (21) was booked under the first one without a word."""
    label = f"]C101{CASE}21SN1{GS}21SN2".encode()
    async with rig(tmp_path) as r:
        await r.scan(label)
        events = await r.events()
        entries = await r.journal.recent()
    assert events == ()
    assert (entries[0].result, entries[0].event_ids) == ("decode_error", ())
    assert "(21) twice" in (entries[0].message or "")


def gapped_section(link: Path) -> ScannerSection:
    """A serial reader framing by its scanner's suffix, and by an idle gap until it has seen one (the default)."""
    device = hardware.SerialScannerConfig(
        reader_id="backdoor", port=str(link), idle_gap_s=0.05, reconnect_initial_s=0.02, reconnect_max_s=0.1
    )
    return ScannerSection(id="backdoor", type="serial", mode="receive", device=device, same_code_s=0.0)  # type: ignore[arg-type]


async def scan_cut_in_two(r: Rig, head: bytes, tail: bytes) -> None:
    """A scan whose tail comes after the reader gave up waiting for its suffix: the head is delivered cut off."""
    target = r.service.outcomes + 1
    r.device.write(head)
    await r.service.wait_decided(target, WAIT_S)  # cut off once its suffix did not come in time
    await r.scan(tail)


async def test_the_tail_of_a_scan_cut_off_on_the_line_is_refused_not_booked_as_an_unknown_item(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: the tail of a cut-off scan that came after the reader gave up on it became a scan of its own and was
    booked as ``unknown:2345``. A scanner that sends symbology identifiers sends one with every scan: a scan without
    one is a fragment."""
    async with rig(tmp_path, gapped_section(tmp_path / "usb-Honeywell_Xenon_1900-if00")) as r:
        await r.scan(b"]C0TOTE-7")  # the scanner ends its scans with CR/LF, and sends identifiers
        await scan_cut_in_two(r, b"]E059012341", b"2345")
        await r.scan(b"]E0" + EAN13.encode())
        events = await r.events()
        entries = await r.journal.recent()
    assert [e.sku for e in events] == ["TOTE", "MUG-01"]
    assert [(e.raw, e.result) for e in reversed(entries)] == [
        (b"]C0TOTE-7", "booked"),
        (b"]E059012341", "incomplete"),
        (b"2345", "decode_error"),
        (b"]E0" + EAN13.encode(), "booked"),
    ]
    message = entries[1].message or ""
    assert "has no symbology identifier" in message and "]E0" in message and "tail of that scan" in message
    warnings = [m.getMessage() for m in caplog.records if m.levelno == logging.WARNING and m.name == "agent.scanning"]
    assert any("2345" in w and "no symbology identifier" in w for w in warnings)


async def test_a_short_run_of_digits_right_after_a_cut_off_scan_is_refused_and_short_codes_still_book(
    tmp_path: Path,
) -> None:
    """Without identifiers: digits of no EAN/UPC/GTIN length right after a cut-off scan are its tail; a short
    internal code scanned otherwise (or scanned again) is booked as before."""
    async with rig(tmp_path, gapped_section(tmp_path / "usb-Honeywell_Xenon_1900-if00")) as r:
        await r.scan(b"0123")  # a short internal code: booked as an unknown item, as always
        await scan_cut_in_two(r, EAN13[:7].encode(), EAN13[7:].encode())
        await r.scan(b"0123")  # scanned again after the refused tail: booked
        events = await r.events()
        entries = await r.journal.recent()
    assert [e.sku for e in events] == ["unknown:0123", "unknown:0123"]
    assert [(e.raw, e.result) for e in reversed(entries)] == [
        (b"0123", "unknown"),
        (EAN13[:7].encode(), "incomplete"),
        (EAN13[7:].encode(), "decode_error"),
        (b"0123", "unknown"),
    ]
    assert "right after a cut-off or unreadable scan" in (entries[1].message or "")


async def test_a_text_tail_of_a_cut_off_scan_without_identifiers_is_refused_and_a_scan_again_of_the_item_books(
    tmp_path: Path,
) -> None:
    """Found: a scanner sending no symbology identifiers, its scan of TOTE-7 cut off after "TO" (the rest came after
    the reader gave up waiting for its suffix): the tail "TE-7" was booked as ``unknown:TE-7``. Right after a cut-off
    scan, a scan that is no checked GTIN and does not begin as the cut-off one did is its tail; the same item scanned
    again (it begins as its cut-off head did) and a GTIN whose check digit holds book as before."""
    async with rig(tmp_path, gapped_section(tmp_path / "usb-Honeywell_Xenon_1900-if00")) as r:
        await r.scan(b"TOTE-7")  # the scanner ends its scans with CR/LF, and sends no identifiers
        await scan_cut_in_two(r, b"TO", b"TE-7")
        await scan_cut_in_two(r, b"TOT", b"TOTE-7")  # cut off, then scanned again whole: booked
        await scan_cut_in_two(r, b"TOT", EAN13.encode())  # cut off, then another item with a checked GTIN: booked
        await r.scan(b"TE-7")  # the code that was refused as a tail, scanned on purpose: booked
        events = await r.events()
        entries = await r.journal.recent()
    assert [e.sku for e in events] == ["TOTE", "TOTE", "MUG-01", "unknown:TE-7"]
    assert [(e.raw, e.result) for e in reversed(entries)] == [
        (b"TOTE-7", "booked"),
        (b"TO", "incomplete"),
        (b"TE-7", "decode_error"),
        (b"TOT", "incomplete"),
        (b"TOTE-7", "booked"),
        (b"TOT", "incomplete"),
        (EAN13.encode(), "booked"),
        (b"TE-7", "unknown"),
    ]
    message = entries[-3].message or ""
    assert "does not begin as the cut-off scan 'TO' before it did" in message and "tail of that scan" in message


def no_suffix_section(link: Path, same_code_s: float) -> ScannerSection:
    """A serial reader of a scanner set to send no suffix: its scans end where the line goes quiet (idle gap)."""
    device = hardware.SerialScannerConfig(
        reader_id="backdoor", port=str(link), idle_gap_s=0.05, reconnect_initial_s=0.02, reconnect_max_s=0.1
    )
    return ScannerSection(id="backdoor", type="serial", mode="receive", device=device, same_code_s=same_code_s)  # type: ignore[arg-type]


async def gap_framed(r: Rig, raw: bytes) -> None:
    """Write a scan without suffix and wait until the agent has decided it (after the reader's idle gap)."""
    target = r.service.outcomes + 1
    r.device.write(raw)
    await r.service.wait_decided(target, WAIT_S)


async def gap_received(r: Rig, raw: bytes) -> None:
    """Write a scan without suffix and wait until the agent has it in its journal (it may still be held, undecided):
    the reader's idle gap ended it, so what is written next is a frame of its own."""
    r.device.write(raw)

    async def journaled() -> bool:
        return any(e.raw == raw for e in await r.journal.recent(5))

    await eventually(journaled, WAIT_S, f"{raw!r} journaled")


async def test_a_scan_split_by_a_pause_on_the_line_books_neither_piece_and_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: a scanner that sends no suffix is framed by the line going quiet; a pause inside one scan longer than
    the idle gap made two scans of it, "TOTE" and "-7". The rest was refused, but the first piece was booked as read
    (``unknown:TOTE``), and the sentence asked staff to check it. A scan the line's going quiet ended is now held for
    the reader's ``same_code_s``: its rest coming within it, neither piece is booked and one sentence says to scan
    the item again; nothing coming, it books. A GTIN whose check digit holds behind it is no piece (two symbols read
    at one pull): both book, in order. (A 1 s window here, so that the premise holds on a busy machine.)"""
    async with rig(tmp_path, no_suffix_section(tmp_path / "usb-Honeywell_Xenon_1900-if00", 1.0)) as r:
        target = r.service.outcomes + 2
        await gap_received(r, b"TOTE")
        r.device.write(b"-7")  # the rest of the scan, after a pause longer than the idle gap
        await r.service.wait_decided(target, WAIT_S)
        await asyncio.sleep(1.1)
        target = r.service.outcomes + 2
        await gap_received(r, b"TOTE-7")  # scanned again, on purpose
        r.device.write(EAN13.encode())  # another symbol read at the same pull: a checked GTIN
        await r.service.wait_decided(target, WAIT_S)
        await asyncio.sleep(1.1)
        await gap_framed(r, b"-7")  # a short code scanned on purpose, nothing behind it: booked
        events = await r.events()
        entries = await r.journal.recent()
    assert [e.sku for e in events] == ["TOTE", "MUG-01", "unknown:-7"]
    assert [(e.raw, e.result) for e in reversed(entries)] == [
        (b"TOTE", "decode_error"),
        (b"-7", "decode_error"),
        (b"TOTE-7", "booked"),
        (EAN13.encode(), "booked"),
        (b"-7", "unknown"),
    ]
    message = entries[-1].message or ""
    assert "'TOTE'" in message and "'-7'" in message and "split by a pause on the line" in message
    assert "nothing was booked" in message and "scan the item again" in message and "idle_gap_s" in message
    warnings = [m.getMessage() for m in caplog.records if m.levelno == logging.WARNING and m.name == "agent.scanning"]
    assert [w for w in warnings if "split by a pause" in w] == [f"Scanner 'backdoor': {message}"]


async def test_a_held_scan_is_booked_in_order_when_the_agent_stops(tmp_path: Path) -> None:
    """A scan the line's going quiet ended, held for its reader's ``same_code_s`` (5 s here) when the agent stops, is
    booked as it read, after the scan before it, not dropped."""
    async with rig(tmp_path, no_suffix_section(tmp_path / "usb-Honeywell_Xenon_1900-if00", 5.0)) as r:
        await gap_received(r, b"TOTE")
        await gap_received(r, EAN13.encode())  # a checked GTIN: no piece of TOTE, which books; the GTIN is held
        await r.service.stop()
        events = await r.events()
        entries = await r.journal.recent()
    assert [e.sku for e in events] == ["unknown:TOTE", "MUG-01"]
    assert [(e.raw, e.result) for e in reversed(entries)] == [(b"TOTE", "unknown"), (EAN13.encode(), "booked")]


async def test_with_same_code_s_off_a_scan_ended_by_the_line_going_quiet_books_at_once(tmp_path: Path) -> None:
    """``same_code_s = 0`` (a scanner in batch mode, sending stored scans back to back): nothing is held or taken for
    a piece; each scan books as it comes."""
    async with rig(tmp_path, no_suffix_section(tmp_path / "usb-Honeywell_Xenon_1900-if00", 0.0)) as r:
        await gap_framed(r, b"TOTE")
        await gap_framed(r, b"-7")
        events = await r.events()
    assert [e.sku for e in events] == ["unknown:TOTE", "unknown:-7"]
