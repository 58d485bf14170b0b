"""SerialScanner against real pseudo-terminals (and a real TCP device server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import logging
import termios
import threading
from pathlib import Path

import pytest

from hardware import (
    FRAME_MAX_BYTES,
    GS,
    ScannerClosed,
    ScannerConfigError,
    ScannerDisconnected,
    SerialScanner,
    SerialScannerConfig,
    decode,
)
from hardware.reader import APPEAR_POLL_S, CUT_OFFS_SAID_MAX, QUEUE_PAUSE_SCANS
from hardware.serial_scanner import serial_options
from tests.hardware.scanner_helpers import WAIT_S, PtyScanner, ScanTaker, StatusLog

FAST = {"reconnect_initial_s": 0.02, "reconnect_max_s": 0.1}


def config(port: Path | str, **overrides: object) -> SerialScannerConfig:
    """A configuration with fast reconnects, for tests."""
    return SerialScannerConfig(**{"reader_id": "backdoor", "port": str(port), **FAST, **overrides})  # type: ignore[arg-type]


def reader_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hardware.reader" and r.levelno == level]


async def test_frames_end_at_cr_lf_and_crlf_without_empty_frames(pty_scanner: PtyScanner, statuses: StatusLog) -> None:
    async with SerialScanner(config(pty_scanner.link, idle_gap_s=None), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        pty_scanner.write(b"CR-ONLY\rLF-ONLY\nCRLF\r\nDOUBLE\r\n\r\n\nLAST\r\n")
        scans = await ScanTaker(scanner).take(5)
    assert [s.raw for s in scans] == [b"CR-ONLY", b"LF-ONLY", b"CRLF", b"DOUBLE", b"LAST"]
    assert all(s.complete and not s.by_gap and s.reader_id == "backdoor" and s.received_at_ms > 0 for s in scans)


async def test_a_barcode_split_across_writes_is_one_frame(pty_scanner: PtyScanner, statuses: StatusLog) -> None:
    async with SerialScanner(config(pty_scanner.link, idle_gap_s=None), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        await pty_scanner.write_slowly([b"]E05901", b"2341", b"23457\r", b"\n]E4963", b"85074\r\n"], 0.02)
        scans = await ScanTaker(scanner).take(2)
    assert [s.text for s in scans] == ["]E05901234123457", "]E496385074"]
    assert decode(scans[0].text).gtin == "05901234123457"


async def test_fragments_within_the_idle_gap_stay_one_frame(pty_scanner: PtyScanner, statuses: StatusLog) -> None:
    async with SerialScanner(config(pty_scanner.link, idle_gap_s=2.0), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        await pty_scanner.write_slowly([b"4006", b"3813", b"33931"], 0.02)
        scan = await ScanTaker(scanner).one()
    assert scan.raw == b"4006381333931" and scan.complete


async def test_no_suffix_scanner_frames_end_after_the_idle_gap(pty_scanner: PtyScanner, statuses: StatusLog) -> None:
    async with SerialScanner(config(pty_scanner.link, idle_gap_s=0.05), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        taker = ScanTaker(scanner)
        pty_scanner.write(b"5901234123457")
        first = await taker.one()
        pty_scanner.write(b"BIN-A-12")
        second = await taker.one()
    assert (first.raw, second.raw) == (b"5901234123457", b"BIN-A-12")
    assert first.complete and second.complete
    assert first.by_gap and second.by_gap  # ended where the line went quiet: the agent reads pieces by it


async def test_an_over_long_run_is_one_cut_off_scan_and_its_tail_is_not_a_scan(
    pty_scanner: PtyScanner, statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    """20,000 bytes without a line end arrive over the pty in many reads; the part after the cut used to be
    taken for a scan of its own once its CRLF came. Now the whole run is one cut-off scan and one warning."""
    caplog.set_level(logging.WARNING, logger="hardware.reader")
    async with SerialScanner(config(pty_scanner.link, idle_gap_s=None), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        taker = ScanTaker(scanner)
        writing = asyncio.create_task(asyncio.to_thread(pty_scanner.write, b"7" * 20_000 + b"\r\n"))  # > the pty buffer
        cut = await taker.one()
        await writing
        pty_scanner.write(b"5901234123457\r\n")
        good = await taker.one()
    assert (cut.raw, cut.complete) == (b"7" * FRAME_MAX_BYTES, False)
    assert (good.raw, good.complete) == (b"5901234123457", True)
    assert len([m for m in reader_records(caplog, logging.WARNING) if "cut-off scan" in m]) == 1


async def test_a_burst_of_over_long_runs_is_warned_of_in_a_few_lines_not_a_line_each(
    pty_scanner: PtyScanner, statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    """A scanner spewing 60 over-long runs made 60 cut-off warnings; now ``CUT_OFFS_SAID_MAX`` of them, one
    sentence that the rest are not logged, and one when a complete scan ends the burst. Every scan is delivered."""
    caplog.set_level(logging.INFO, logger="hardware.reader")
    runs = 60
    async with SerialScanner(config(pty_scanner.link, idle_gap_s=None), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        taker = ScanTaker(scanner)
        burst = (b"7" * (FRAME_MAX_BYTES + 100) + b"\r\n") * runs + b"5901234123457\r\n"
        writing = asyncio.create_task(asyncio.to_thread(pty_scanner.write, burst))  # > the pty buffer
        scans = await taker.take(runs + 1)
        await writing
    assert [s.complete for s in scans] == [False] * runs + [True]
    warnings = reader_records(caplog, logging.WARNING)
    assert len([m for m in warnings if "as a cut-off scan" in m]) == CUT_OFFS_SAID_MAX
    assert len(warnings) == CUT_OFFS_SAID_MAX + 1
    assert f"delivered {CUT_OFFS_SAID_MAX} cut-off scans in a row" in warnings[-1]
    ended = f"Scanner 'backdoor' on {pty_scanner.link} delivered a complete scan after {runs} cut-off scans in a row."
    assert ended in reader_records(caplog, logging.INFO)


async def test_gs1_with_group_separators_decodes(pty_scanner: PtyScanner, statuses: StatusLog) -> None:
    label = f"]C10109501101530003172601311010LOT-42{GS}21SN0001{GS}3102001250\r\n".encode()
    async with SerialScanner(config(pty_scanner.link), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        pty_scanner.write(label)
        scan = await ScanTaker(scanner).one()
    decoded = decode(scan.text)
    assert scan.raw == label[:-2]
    assert decoded.gtin == "09501101530003"
    assert decoded.expiry is not None and decoded.expiry.isoformat() == "2026-01-31"
    assert (decoded.lot, decoded.serial) == ("10LOT-42", "SN0001")
    assert decoded.net_weight is not None and str(decoded.net_weight.value) == "12.50"
    assert [e.ai for e in decoded.elements] == ["01", "17", "10", "21", "3102"]


async def test_unplug_marks_unavailable_logs_once_and_replug_recovers(
    pty_scanner: PtyScanner, statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hardware")
    async with SerialScanner(config(pty_scanner.link), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        taker = ScanTaker(scanner)
        pty_scanner.write(b"BEFORE-1\r\nBEFORE-2\r\n")
        before = await taker.take(2)

        pty_scanner.unplug()
        down = await statuses.wait(available=False)
        assert not scanner.available
        assert isinstance(down.error, ScannerDisconnected)
        assert "backdoor" in str(down.error) and str(pty_scanner.link) in str(down.error)
        with pytest.raises(ScannerDisconnected):
            scanner.send(b"beep")
        async with asyncio.timeout(WAIT_S):  # let several reconnect attempts fail
            while len([m for m in reader_records(caplog, logging.DEBUG) if "still cannot open" in m]) < 3:
                await asyncio.sleep(0.01)

        pty_scanner.plug()
        await statuses.wait(available=True)
        pty_scanner.write(b"AFTER\r\n")
        after = await taker.one()

    assert [s.raw for s in before] == [b"BEFORE-1", b"BEFORE-2"]
    assert after.raw == b"AFTER"
    warnings = reader_records(caplog, logging.WARNING)
    assert len(warnings) == 2 and "went away" in warnings[0] and "is back" in warnings[1]
    assert [s.available for s in statuses.items] == [True, False, True, False]  # the last: closed


async def test_partial_frame_at_unplug_is_delivered_as_cut_off(pty_scanner: PtyScanner, statuses: StatusLog) -> None:
    async with SerialScanner(config(pty_scanner.link, idle_gap_s=None), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        taker = ScanTaker(scanner)
        pty_scanner.write(b"WHOLE\r\n]E059012341")
        whole = await taker.one()  # the write has reached the tty ...
        await pty_scanner.wait_read()  # ... and the reader has taken all of it
        pty_scanner.unplug()
        cut = await taker.one()
    assert (whole.raw, whole.complete) == (b"WHOLE", True)
    assert (cut.raw, cut.complete) == (b"]E059012341", False)


async def test_missing_port_at_start_is_unavailable_until_it_appears(
    tmp_path: Path, statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hardware")
    link = tmp_path / "usb-Zebra_DS2208-if00"
    async with SerialScanner(config(link), on_status=statuses) as scanner:
        down = await statuses.wait(available=False)
        assert down.error is not None and "No such file or directory" in str(down.error)
        async with asyncio.timeout(WAIT_S):
            while not any("still cannot open" in m for m in reader_records(caplog, logging.DEBUG)):
                await asyncio.sleep(0.01)
        device = PtyScanner(link)
        try:
            await statuses.wait(available=True)
            device.write(b"HELLO\n")
            assert (await ScanTaker(scanner).one()).raw == b"HELLO"
        finally:
            device.close()
    warnings = reader_records(caplog, logging.WARNING)
    assert len(warnings) == 1 and "cannot open" in warnings[0]
    assert any("opened" in m and "after" in m for m in reader_records(caplog, logging.INFO))


async def test_line_settings_reach_the_port(pty_scanner: PtyScanner, statuses: StatusLog) -> None:
    # A pty accepts speed, stop bits and flow control; some kernels refuse 7 data bits or parity on a
    # pty, so those are checked on the options handed to pyserial below.
    cfg = config(pty_scanner.link, baudrate=19200, stopbits=2, rtscts=True, xonxoff=True)
    async with SerialScanner(cfg, on_status=statuses):
        await statuses.wait(available=True)
        assert pty_scanner.slave is not None
        iflag, _oflag, cflag, _lflag, ispeed, _ospeed, _cc = termios.tcgetattr(pty_scanner.slave)
    assert cflag & termios.CSTOPB
    assert cflag & termios.CRTSCTS
    assert iflag & termios.IXON and iflag & termios.IXOFF
    assert ispeed == termios.B19200


def test_every_line_setting_is_handed_to_pyserial() -> None:
    cfg = config("/dev/ttyUSB0", baudrate=2400, bytesize=7, parity="O", stopbits=1.5, rtscts=True, xonxoff=False)
    assert serial_options(cfg) == {
        "baudrate": 2400,
        "bytesize": 7,
        "parity": "O",
        "stopbits": 1.5,
        "rtscts": True,
        "xonxoff": False,
        "exclusive": True,
    }
    assert "exclusive" not in serial_options(config("socket://127.0.0.1:4001"))


async def test_default_line_settings_are_8n1(pty_scanner: PtyScanner, statuses: StatusLog) -> None:
    async with SerialScanner(config(pty_scanner.link), on_status=statuses):
        await statuses.wait(available=True)
        assert pty_scanner.slave is not None
        iflag, _oflag, cflag, _lflag, ispeed, _ospeed, _cc = termios.tcgetattr(pty_scanner.slave)
    assert cflag & termios.CSIZE == termios.CS8
    assert not cflag & (termios.PARENB | termios.CSTOPB | termios.CRTSCTS)
    assert not iflag & termios.IXON
    assert ispeed == termios.B9600


async def test_a_second_reader_cannot_share_the_port(pty_scanner: PtyScanner) -> None:
    first_log, second_log = StatusLog(), StatusLog()
    async with SerialScanner(config(pty_scanner.link, reader_id="first"), on_status=first_log):
        await first_log.wait(available=True)
        async with SerialScanner(config(pty_scanner.link, reader_id="second"), on_status=second_log) as second:
            down = await second_log.wait(available=False)
            assert not second.available
    assert down.error is not None and "second" in str(down.error)


async def test_send_writes_to_the_scanner(pty_scanner: PtyScanner, statuses: StatusLog) -> None:
    async with SerialScanner(config(pty_scanner.link), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        scanner.send(b"\x16T\r")  # a Honeywell trigger command
        received = await asyncio.wait_for(asyncio.to_thread(pty_scanner.read_from_reader), WAIT_S)
    assert received == b"\x16T\r"


async def test_socket_device_server_partial_frame_and_reconnect(statuses: StatusLog) -> None:
    connections: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()

    async def on_client(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await connections.put(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        async with SerialScanner(config(f"socket://{host}:{port}", idle_gap_s=None), on_status=statuses) as scanner:
            taker = ScanTaker(scanner)
            first = await asyncio.wait_for(connections.get(), WAIT_S)
            await statuses.wait(available=True)
            first.write(b"]E05901234123457\r\n]C0PALLET-7")
            await first.drain()
            first.close()  # the device server drops the line mid-frame
            scans = await taker.take(2)
            down = await statuses.wait(available=False)

            second = await asyncio.wait_for(connections.get(), WAIT_S)
            await statuses.wait(available=True)
            second.write(b"AGAIN\n")
            await second.drain()
            again = await taker.one()
            second.close()
    finally:
        server.close()
        await server.wait_closed()
    assert [(s.raw, s.complete) for s in scans] == [(b"]E05901234123457", True), (b"]C0PALLET-7", False)]
    assert down.error is not None and "closed the connection" in str(down.error)
    assert again.raw == b"AGAIN"


async def test_slow_consumer_pauses_reading_and_loses_nothing(pty_scanner: PtyScanner, statuses: StatusLog) -> None:
    count = QUEUE_PAUSE_SCANS * 3
    payload = b"".join(b"ITEM-%05d\r\n" % i for i in range(count))
    writer = threading.Thread(target=pty_scanner.write, args=(payload,), daemon=True)  # may block on a full pty
    async with SerialScanner(config(pty_scanner.link, idle_gap_s=None), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        writer.start()
        async with asyncio.timeout(WAIT_S):  # nobody consumes: the reader fills its queue, then pauses
            while scanner.pending_scans < QUEUE_PAUSE_SCANS or pty_scanner.unread_bytes() == 0:
                await asyncio.sleep(0.005)
        held_back = scanner.pending_scans
        scans = await ScanTaker(scanner).take(count)
        await asyncio.to_thread(writer.join, WAIT_S)
    assert held_back < count  # paused: the rest waited in the kernel's buffer
    assert [s.raw for s in scans] == [b"ITEM-%05d" % i for i in range(count)]
    assert scanner.pending_scans == 0


async def test_close_is_idempotent_and_use_after_close_is_a_clear_error(pty_scanner: PtyScanner) -> None:
    scanner = SerialScanner(config(pty_scanner.link))
    async with scanner:
        pass
    await scanner.close()
    with pytest.raises(ScannerClosed, match="closed"):
        await anext(scanner.scans())
    with pytest.raises(ScannerClosed):
        scanner.send(b"x")
    with pytest.raises(ScannerClosed):
        scanner.start()


async def test_close_ends_a_running_consumer(pty_scanner: PtyScanner, statuses: StatusLog) -> None:
    scanner = SerialScanner(config(pty_scanner.link), on_status=statuses)
    scanner.start()
    await statuses.wait(available=True)
    seen: list[bytes] = []

    async def consume() -> None:
        async for scan in scanner.scans():
            seen.append(scan.raw)

    consumer = asyncio.create_task(consume())
    pty_scanner.write(b"ONE\r\n")
    async with asyncio.timeout(WAIT_S):
        while not seen:
            await asyncio.sleep(0.005)
    await scanner.close()
    await asyncio.wait_for(consumer, WAIT_S)
    assert seen == [b"ONE"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"parity": "X"}, "parity"),
        ({"bytesize": 9}, "bytesize"),
        ({"stopbits": 3}, "stopbits"),
        ({"baudrate": 0}, "baudrate"),
        ({"port": "rfc2217://127.0.0.1:7000"}, "not supported"),
        ({"port": "ttyUSB0"}, "absolute"),
        ({"reader_id": "back door"}, "reader_id"),
        ({"idle_gap_s": -1}, r"idle_gap_s must be 0 \(no idle gap: frames end only at CR/LF\) or a number"),
        ({"idle_gap_s": "null"}, "idle_gap_s must be 0"),
        ({"idle_gap_s": float("nan")}, "idle_gap_s must be 0"),
        ({"idle_gap_s": False}, "idle_gap_s must be 0"),
        ({"idle_gap_s": 6}, "from 0.001 to 5"),
        ({"reconnect_initial_s": 5.0, "reconnect_max_s": 1.0}, "must not exceed"),
        ({"rtscts": "yes"}, "rtscts"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_sentence(overrides: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"port": "/dev/ttyUSB0", **overrides}
    with pytest.raises(ScannerConfigError, match=message):
        config(**settings)  # type: ignore[arg-type]


def test_idle_gap_0_in_a_config_file_turns_the_idle_gap_off() -> None:
    """TOML has no null: idle_gap_s = 0 is how a config file says "frames end only at CR/LF"."""
    table = {"reader_id": "dock-2", "port": "/dev/ttyS0"}
    assert SerialScannerConfig.from_mapping({**table, "idle_gap_s": 0}).idle_gap_s is None
    assert SerialScannerConfig.from_mapping({**table, "idle_gap_s": 0.0}).idle_gap_s is None
    assert SerialScannerConfig.from_mapping(table).idle_gap_s == 0.05
    assert SerialScannerConfig.from_mapping({**table, "idle_gap_s": 1}).idle_gap_s == 1.0


def test_the_idle_gap_left_unset_or_auto_is_longer_for_a_device_server() -> None:
    """A device server's link may pause inside a scan: left unset (or ``"auto"``), a socket:// reader's idle gap
    is 0.5 s, a device path's 0.05 s; a value that is set is kept on both, and a word other than auto is refused
    with the forms it may take."""
    device, server = (
        {"reader_id": "dock-2", "port": "/dev/ttyS0"},
        {"reader_id": "dock-3", "port": "socket://10.0.0.7:4001"},
    )
    assert [SerialScannerConfig.from_mapping(t).idle_gap_s for t in (device, server)] == [0.05, 0.5]
    auto = [SerialScannerConfig.from_mapping({**t, "idle_gap_s": "auto"}).idle_gap_s for t in (device, server)]
    assert auto == [0.05, 0.5]
    assert SerialScannerConfig.from_mapping({**server, "idle_gap_s": 0.05}).idle_gap_s == 0.05
    assert SerialScannerConfig.from_mapping({**server, "idle_gap_s": 0}).idle_gap_s is None
    with pytest.raises(ScannerConfigError, match=r"from 0.001 to 5, or 'auto' \(the default\), got 'fast'"):
        SerialScannerConfig.from_mapping({**server, "idle_gap_s": "fast"})


async def test_with_the_idle_gap_off_a_pause_mid_line_is_one_frame(
    pty_scanner: PtyScanner, statuses: StatusLog
) -> None:
    async with SerialScanner(config(pty_scanner.link, idle_gap_s=0), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        taker = ScanTaker(scanner)
        pty_scanner.write(b"590123")
        await pty_scanner.wait_read()
        await asyncio.sleep(0.3)  # far longer than the default idle gap (0.05 s), which would end the frame here
        pty_scanner.write(b"4123457\r\n")
        scan = await taker.one()
    assert (scan.raw, scan.complete) == (b"5901234123457", True)


def test_config_from_a_table() -> None:
    cfg = SerialScannerConfig.from_mapping(
        {"reader_id": "dock-2", "port": "socket://127.0.0.1:4001", "baudrate": 19200, "parity": "even", "bytesize": 7}
    )
    assert (cfg.parity, cfg.bytesize, cfg.baudrate, cfg.is_socket) == ("E", 7, 19200, True)
    with pytest.raises(ScannerConfigError, match="unknown serial scanner setting"):
        SerialScannerConfig.from_mapping({"reader_id": "x", "port": "/dev/ttyS0", "speed": 9600})
    with pytest.raises(ScannerConfigError, match="incomplete"):
        SerialScannerConfig.from_mapping({"reader_id": "x"})


async def test_a_scan_sent_as_a_replugged_scanner_comes_back_is_delivered_and_staff_are_told_to_check(
    pty_scanner: PtyScanner, statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by scanning right after plugging a scanner back in: the scan waited in the port until the reader
    opened it again, and pyserial's open() threw it away (tcflush(TCIFLUSH) at the end of every POSIX open).
    Now the open keeps it; the reconnect is a warning that a scan made meanwhile may have been lost (a driver
    may drop what comes while its port is closed), so staff scan again."""
    caplog.set_level(logging.DEBUG, logger="hardware")
    async with SerialScanner(config(pty_scanner.link, idle_gap_s=None), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        taker = ScanTaker(scanner)
        pty_scanner.unplug()
        await statuses.wait(available=False)
        pty_scanner.plug()
        pty_scanner.write(b"]E05901234123457\r\n")  # scanned before the reader opened the port again
        scan = await taker.one()
        await statuses.wait(available=True)
    assert (scan.raw, scan.complete) == (b"]E05901234123457", True)
    back = [m for m in reader_records(caplog, logging.WARNING) if "is back" in m]
    assert len(back) == 1 and back[0].endswith(
        "a scan made while it was away or coming back may have been lost, so scan again what was scanned then."
    ), back


async def test_a_replugged_scanner_is_opened_when_its_device_appears_not_after_the_backoff(
    pty_scanner: PtyScanner, statuses: StatusLog
) -> None:
    """After a long outage the reader waited up to reconnect_max_s between opens, so a scanner plugged back in
    stayed unread that long (and what it sent meanwhile was the driver's to keep or drop). A missing device path
    is now watched, and the port opened as soon as it is back."""
    slow = {"reconnect_initial_s": 60.0, "reconnect_max_s": 120.0}  # far beyond every wait of this test
    async with SerialScanner(config(pty_scanner.link, **slow), on_status=statuses) as scanner:
        await statuses.wait(available=True)
        taker = ScanTaker(scanner)
        pty_scanner.unplug()
        await statuses.wait(available=False)
        await asyncio.sleep(APPEAR_POLL_S * 2)  # the reader waits out its backoff, looking for the device
        pty_scanner.plug()
        await statuses.wait(available=True)
        pty_scanner.write(b"AFTER\r\n")
        assert (await taker.one()).raw == b"AFTER"
