"""The day within which a serial number booked twice is caught (agent.serials.SERIAL_AGAIN_S) is timed on the
monotonic clock while the agent runs (agent.outbox.Outbox.recent_since_ms): a real outbox file, the router of a
scanner in receive mode, both clocks injected. No serial device: this runs on Windows too."""

from __future__ import annotations

from pathlib import Path

import hardware
from agent.catalog import Catalog, CatalogItem
from agent.config import ScannerSection
from agent.outbox import Outbox
from agent.scanning import ModeRouter, ScanResult

EAN13 = "5901234123457"
LOCATION = "S001"
CATALOG = Catalog([CatalogItem("0" + EAN13, "MUG-01")])


def section(link: Path) -> ScannerSection:
    device = hardware.SerialScannerConfig(reader_id="backdoor", port=str(link), idle_gap_s=None)
    return ScannerSection(id="backdoor", type="serial", mode="receive", device=device, same_code_s=0.0)


def serialised(serial: str) -> bytes:
    """A GS1-128 label of EAN13's item carrying a serial number (21)."""
    return f"]C101{'0' + EAN13}21{serial}".encode()


async def test_a_serial_number_received_again_within_a_day_is_refused_however_the_wall_clock_jumps(
    tmp_path: Path,
) -> None:
    """Found: the day a serial number booked twice is caught in was timed on the wall clock, so a clock jumping
    ahead (NTP putting right a clock hours off) shortened it: a phone received again 20 hours later, 25 by the
    jumped clock, was booked as a second phone. While the agent runs the day is timed on the monotonic clock;
    across a restart, the time stopped counts by the wall clock (at most a day). (An item booked after a jump
    ahead is caught up to the jump longer: refusing is the safe side.)"""
    wall, mono = [1_700_000_000_000], [100.0]
    hour_ms = 3_600_000
    path = tmp_path / "outbox.sqlite3"

    async def receive(router: ModeRouter, serial: str) -> ScanResult:
        raw = serialised(serial)
        return (
            await router.route("backdoor", hardware.Scan("backdoor", raw, wall[0]), hardware.decode(raw), None)
        ).result

    async with Outbox.open(path, agent_id="store-1", location=LOCATION, wall_clock_ms=lambda: wall[0]) as outbox:
        outbox._monotonic_s = lambda: mono[0]
        router = ModeRouter(outbox, CATALOG, [section(tmp_path / "dock")], location=LOCATION, wall_clock_ms=lambda: wall[0], monotonic_s=lambda: mono[0])  # fmt: skip
        assert await receive(router, "SN1") is ScanResult.BOOKED
        wall[0] += 5 * hour_ms + 1000  # the wall clock jumps five hours ahead; a second passes
        mono[0] += 1.0
        wall[0] += 20 * hour_ms  # 20 hours later: 25 by the wall clock
        mono[0] += 20 * 3600.0
        assert await receive(router, "SN1") is ScanResult.FAILED  # received again within the day: refused
        assert await receive(router, "SN2") is ScanResult.BOOKED
        wall[0] += 4 * hour_ms + 2000  # a day and a second after SN1 (the jump aside): a new receipt
        mono[0] += 4 * 3600.0 + 2.0
        assert await receive(router, "SN1") is ScanResult.BOOKED
        wall[0] += 23 * hour_ms  # the wall clock jumps 23 hours ahead, and SN3 is received
        assert await receive(router, "SN3") is ScanResult.BOOKED
    wall[0] += hour_ms  # the agent restarts an hour later (its monotonic clock anew): SN2 was received 5 hours ago
    mono[0] = 7.0
    async with Outbox.open(path, agent_id="store-1", location=LOCATION, wall_clock_ms=lambda: wall[0]) as outbox:
        outbox._monotonic_s = lambda: mono[0]
        router = ModeRouter(outbox, CATALOG, [section(tmp_path / "dock")], location=LOCATION, wall_clock_ms=lambda: wall[0], monotonic_s=lambda: mono[0])  # fmt: skip
        assert await receive(router, "SN2") is ScanResult.FAILED
        assert await receive(router, "SN3") is ScanResult.FAILED
        wall[0] += 48 * hour_ms
        mono[0] += 48 * 3600.0
        assert await receive(router, "SN2") is ScanResult.BOOKED  # two days later, by both clocks: a new receipt
        events = await outbox.booked(LOCATION, "MUG-01")
    assert [ev.attrs["serial"] for ev in reversed(events)] == ["SN1", "SN2", "SN1", "SN3", "SN2"]
