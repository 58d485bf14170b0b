"""Framing of what a device server (``socket://``) forwards over a slow link: one scan in several TCP segments
with pauses between them, from a real device server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from hardware import SerialScanner, SerialScannerConfig, serial_scanner
from tests.hardware.scanner_helpers import DeviceServer, ScanTaker, StatusLog, next_available

FAST = {"reconnect_initial_s": 0.02, "reconnect_max_s": 0.1}
PAUSE_S = 0.2  # between the pieces of one scan: a retransmitted segment on a LAN, a device server over Wi-Fi


async def forward(writer: asyncio.StreamWriter, pieces: list[bytes], pause_s: float = PAUSE_S) -> None:
    """Send a scan in pieces, each its own TCP segment, with a pause after each but the last."""
    for i, piece in enumerate(pieces):
        if i:
            await asyncio.sleep(pause_s)
        writer.write(piece)
        await writer.drain()


@asynccontextmanager
async def forwarding(
    statuses: StatusLog, **settings: float
) -> AsyncIterator[tuple[DeviceServer, SerialScannerConfig, asyncio.StreamWriter, ScanTaker]]:
    """A reader "dock" on a device server on 127.0.0.1 (``settings`` added to its config), connected and available:
    the server, the reader's config, the server's end of the link and a taker of the reader's scans."""
    async with DeviceServer() as server:
        cfg = SerialScannerConfig(reader_id="dock", port=server.url, **FAST, **settings)  # type: ignore[arg-type]
        async with SerialScanner(cfg, on_status=statuses) as scanner:
            taker = ScanTaker(scanner)
            yield server, cfg, await next_available(server, statuses), taker


@pytest.mark.parametrize("suffix", [b"\r\n", b""], ids=["suffix CR LF", "no suffix"])
async def test_a_scan_a_device_server_forwards_in_pieces_is_one_scan(suffix: bytes, statuses: StatusLog) -> None:
    """A device server forwarded one barcode in three segments 0.2 s apart: the idle gap of 0.05 s ended a scan
    at each pause, so one barcode was three scans (two cut GTINs and a stray number), whether or not the scanner
    sends a suffix. Now a socket:// reader's idle gap is 0.5 s unless it is set: one scan, and the next one is
    its own."""
    async with forwarding(statuses) as (_, cfg, link, taker):
        await forward(link, [b"]E0590", b"1234123", b"457" + suffix])
        first = await taker.one()
        await forward(link, [b"]E0400", b"6381333931" + suffix])
        second = await taker.one()
    assert [(s.raw, s.complete) for s in (first, second)] == [
        (b"]E05901234123457", True),
        (b"]E04006381333931", True),
    ]
    assert cfg.idle_gap_s == serial_scanner.SOCKET_IDLE_GAP_S


async def test_a_scanner_that_sends_a_suffix_is_framed_by_it_not_split_by_a_longer_pause(
    statuses: StatusLog,
) -> None:
    """The idle gap is for scanners that send no suffix; one that does had its scan split all the same when a
    pause on the link outlasted the gap. Now once a scanner ended its scans with CR/LF, a pause longer than the
    idle gap (here 0.1 s, the pause 0.4 s) waits for the suffix."""
    async with forwarding(statuses, idle_gap_s=0.1) as (_, _, link, taker):
        await forward(link, [b"]E05901234123457\r\n"])
        first = await taker.one()
        await forward(link, [b"]E0400638", b"1333931\r\n"], pause_s=0.4)
        second = await taker.one()
    assert [(s.raw, s.complete) for s in (first, second)] == [
        (b"]E05901234123457", True),
        (b"]E04006381333931", True),
    ]


async def test_a_scan_whose_suffix_never_comes_is_delivered_cut_off_and_the_idle_gap_frames_again(
    statuses: StatusLog, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scanner that ends its scans with CR/LF sends one whose suffix never comes (lost on the serial line at the
    device server): it is delivered cut off once ``SUFFIX_WAIT_S`` passed, not taken for a complete scan, and
    said. The reader then frames by the idle gap again until the scanner sends a suffix again, so a scanner set to
    send none since reads on (its next scan is complete after the idle gap)."""
    monkeypatch.setattr(serial_scanner, "SUFFIX_WAIT_S", 0.3)
    caplog.set_level(logging.WARNING, logger="hardware")
    async with forwarding(statuses, idle_gap_s=0.05) as (server, _, link, taker):
        await forward(link, [b"]E05901234123457\r\n"])
        first = await taker.one()
        await forward(link, [b"]E0400638133393"])
        cut = await taker.one()
        await forward(link, [b"]E09780201379629"])
        unsuffixed = await taker.one()
    assert [(s.raw, s.complete) for s in (first, cut, unsuffixed)] == [
        (b"]E05901234123457", True),
        (b"]E0400638133393", False),
        (b"]E09780201379629", True),
    ]
    assert [r.getMessage() for r in caplog.records] == [
        (
            f"Scanner 'dock' on {server.url} delivered 15 bytes as a cut-off scan (the frame never ended before the "
            "device stopped, or it outgrew the frame limit and the rest of it, up to its line end, is skipped)."
        )
    ]
