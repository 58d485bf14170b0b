"""A scanner unplugged and plugged back in mid-barcode: a device server (``socket://``, as ser2net or a network
scanner) over real TCP on 127.0.0.1, and a port whose read fails at unplug (a pty, as a Windows COM port)."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import socket
import struct
import threading
from pathlib import Path

import pytest

from hardware import FRAME_MAX_BYTES, SerialScanner, SerialScannerConfig, reader, serial_scanner
from hardware.reader import APPEAR_POLL_S, QUEUE_PAUSE_SCANS
from tests.hardware.scanner_helpers import (
    WAIT_S,
    DeviceServer,
    PtyScanner,
    ScanTaker,
    StatusLog,
    next_available,
    send_scan,
)

TCP_REPAIR = getattr(socket, "TCP_REPAIR", 19)  # Linux; Python names it from 3.12
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux
# Linux's numbers, read before a test takes a name away to stand in for a system that lacks it
TCP_KEEPIDLE = socket.TCP_KEEPIDLE
LINUX_TCP_TIMERS = (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT, socket.TCP_USER_TIMEOUT)
SYSTEM_KEEPALIVE = tuple(  # the kernel's own timers, which a socket has unless told otherwise
    int(Path(f"/proc/sys/net/ipv4/tcp_keepalive_{name}").read_text()) for name in ("time", "intvl", "probes")
)
FAST = {"reconnect_initial_s": 0.02, "reconnect_max_s": 0.1}


def close(writer: asyncio.StreamWriter) -> None:
    writer.close()


def reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP reset, as a device server whose service is restarted does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def forget(writer: asyncio.StreamWriter) -> None:
    """Close the connection without a word on the wire (``TCP_REPAIR``): a device server or network scanner that
    lost power and came back has forgotten it, while the reader's end still looks open. Needs CAP_NET_ADMIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    writer.transport.abort()


def silence(writer: asyncio.StreamWriter) -> None:
    """Make the device server's end drop every packet that reaches it, unanswered (a socket filter that accepts
    nothing): a device server that lost power, or whose cable was pulled, says nothing more, not even a reset,
    and the reader's end still looks open. No tool is needed (no iptables, no netem), nor any privilege."""
    sock = writer.get_extra_info("socket")
    drop_all = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET|BPF_K 0: keep no byte
    program = struct.pack("HP", 1, ctypes.addressof(drop_all))  # struct sock_fprog; the kernel copies it
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)


def config(port: str) -> SerialScannerConfig:
    return SerialScannerConfig(reader_id="dock", port=port, idle_gap_s=None, **FAST)  # type: ignore[arg-type]


def said_cut_off(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hardware.reader" and "cut" in r.getMessage()]


@pytest.mark.parametrize("drop", ["close", "reset"])
async def test_a_device_server_dropping_the_line_mid_barcode_loses_no_scan_and_says_the_cut_once(
    drop: str, statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    """ser2net drops the connection (FIN, or a reset when it restarts) in the middle of a barcode and takes the
    reader's next connection, handing over at once what was scanned meanwhile. Every complete scan arrives, and
    the cut barcode is delivered once, marked cut off, in a sentence that says why and what to do."""
    caplog.set_level(logging.DEBUG, logger="hardware")
    async with DeviceServer() as server, SerialScanner(config(server.url), on_status=statuses) as scanner:
        taker = ScanTaker(scanner)
        first = await server.next()
        await statuses.wait(available=True)
        first.write(b"]E05901234123457\r\n]C0PAL")
        await first.drain()
        assert (await taker.one()).raw == b"]E05901234123457"  # the cut bytes reached the reader too
        server.greeting = b"]E04006381333931\r\n"  # scanned while the reader was reconnecting
        close(first) if drop == "close" else reset(first)
        cut = await taker.one()
        second = await server.next()
        buffered = await taker.one()
        second.write(b"]E09780201379629\r\n")
        await second.drain()
        last = await taker.one()
    assert [(s.raw, s.complete) for s in (cut, buffered, last)] == [
        (b"]C0PAL", False),
        (b"]E04006381333931", True),
        (b"]E09780201379629", True),
    ]
    assert said_cut_off(caplog) == [
        f"Scanner 'dock' on {server.url}: a scan was cut off by the disconnect (6 bytes: ']C0PAL'); scan it again."
    ]


@pytest.fixture
def fast_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keepalive probes a device server's connection after 1 s of silence, then once a second."""
    monkeypatch.setattr(serial_scanner, "KEEPALIVE_IDLE_S", 1)
    monkeypatch.setattr(serial_scanner, "KEEPALIVE_INTERVAL_S", 1)


@pytest.mark.usefixtures("fast_keepalive")
async def test_a_device_server_that_restarted_without_a_word_is_noticed_and_reconnected(
    statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    """A network scanner or device server unplugged from power and plugged back in forgets the connection
    without sending anything: the reader's end stayed open and "available" for ever, reading nothing, and every
    scan after the replug was lost (the device server had no connection to send it to). Found by forgetting the
    server's end with TCP_REPAIR. Now TCP keepalive probes it; the answer (a reset) ends it and the reader
    reconnects."""
    caplog.set_level(logging.INFO, logger="hardware")
    async with DeviceServer() as server, SerialScanner(config(server.url), on_status=statuses) as scanner:
        taker = ScanTaker(scanner)
        first = await next_available(server, statuses)
        first.write(b"]E05901234123457\r\n]C0PAL")
        await first.drain()
        assert (await taker.one()).raw == b"]E05901234123457"
        forget(first)
        down = await statuses.wait(available=False)
        cut = await taker.one()
        second = await next_available(server, statuses)
        after = await send_scan(second, taker, b"]E09780201379629\r\n")
    assert down.error is not None and "reset" in down.error.reason
    assert [(s.raw, s.complete) for s in (cut, after)] == [(b"]C0PAL", False), (b"]E09780201379629", True)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [m for m in warnings if "went away" in m or "is back" in m] == [
        (
            f"Scanner 'dock' on {server.url} went away (Connection reset by peer); scans made until it returns may be"
            " lost; reconnecting."
        ),
        warnings[-1],
    ] and warnings[-1].startswith(f"Scanner 'dock' is back on {server.url} after ")


@pytest.mark.usefixtures("fast_keepalive")
@pytest.mark.parametrize("sending", [True, False], ids=["a command unsent", "nothing to send"])
async def test_a_device_server_gone_silent_is_given_up_and_reconnected(
    sending: bool, statuses: StatusLog, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device server powered off, or its cable pulled, answers nothing more: no FIN, no reset. With a command
    sent to the scanner (a beep) and not yet acknowledged, keepalive does not probe (TCP sends no probe while data
    waits for its acknowledgement) and the kernel retransmits for about 15 minutes before it gives up: the reader
    stayed "available" on the dead connection that long (found by silencing the server's end with a socket filter
    that drops every packet; the test timed out). Now the connection has TCP_USER_TIMEOUT as long as keepalive's
    whole schedule: unacknowledged data is given up as soon as silence would be. With nothing to send, keepalive
    gives it up as before. Either way the reader reports it unavailable, timed out, and reconnects. (The timers are
    shortened for the test: 1 s of silence, then one probe a second later.)"""
    monkeypatch.setattr(serial_scanner, "KEEPALIVE_PROBES", 1)
    caplog.set_level(logging.INFO, logger="hardware")
    async with DeviceServer() as server, SerialScanner(config(server.url), on_status=statuses) as scanner:
        taker = ScanTaker(scanner)
        first = await next_available(server, statuses)
        silence(first)
        if sending:
            scanner.send(b"\x16T\r")  # a Honeywell trigger command
        down = await statuses.wait(available=False)
        second = await next_available(server, statuses)
        after = await send_scan(second, taker, b"]E09780201379629\r\n")
    timed_out = os.strerror(errno.ETIMEDOUT)
    assert down.error is not None and down.error.reason == timed_out
    assert (after.raw, after.complete) == (b"]E09780201379629", True)
    went = [r.getMessage() for r in caplog.records if "went away" in r.getMessage()]
    assert went == [
        f"Scanner 'dock' on {server.url} went away ({timed_out}); scans made until it returns may be lost; reconnecting."
    ]


TCP_TIMERS = ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT")


@pytest.mark.parametrize(
    ("system", "missing", "expected"),
    [
        ("Linux", (), (5, 2, 3, 11_000)),
        ("macOS", ("TCP_KEEPIDLE", "TCP_USER_TIMEOUT"), (5, 2, 3, 0)),  # idle is named TCP_KEEPALIVE there
        ("Windows", ("TCP_USER_TIMEOUT",), (5, 2, 3, 0)),
        ("a system without TCP timers", TCP_TIMERS, SYSTEM_KEEPALIVE + (0,)),
    ],
)
async def test_a_device_server_connection_has_the_keepalive_and_user_timeout_the_system_offers(
    system: str,
    missing: tuple[str, ...],
    expected: tuple[int, int, int, int],
    statuses: StatusLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The options as set on the reader's real socket (getsockopt): keepalive after 5 s of silence, a probe every
    2 s, given up after 3, and on Linux TCP_USER_TIMEOUT of the same 11 s. Where the socket module does not offer
    a timer (its name is missing, as on macOS and Windows) the others are set all the same, macOS's idle time under
    its own name, and the reader connects and reads as everywhere."""
    for name in missing:
        monkeypatch.delattr(socket, name)
    if system == "macOS":
        monkeypatch.setattr(socket, "TCP_KEEPALIVE", TCP_KEEPIDLE, raising=False)
    async with DeviceServer() as server, SerialScanner(config(server.url), on_status=statuses) as scanner:
        first = await server.next()
        await statuses.wait(available=True)
        sock = scanner._link._transport.get_extra_info("socket")  # type: ignore[union-attr]
        options = tuple(sock.getsockopt(socket.IPPROTO_TCP, option) for option in LINUX_TCP_TIMERS)
        keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        first.write(b"]E09780201379629\r\n")
        await first.drain()
        scan = await ScanTaker(scanner).one()
    assert (keepalive, options) == (1, expected)
    assert scan.raw == b"]E09780201379629"


class RecordingSocket:
    """The options a connection's socket is given (``setsockopt``): the system under test is not this one."""

    def __init__(self) -> None:
        self.options: dict[tuple[int, int], int] = {}

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options[level, option] = value


@pytest.mark.parametrize(
    ("platform", "names", "option"),
    [
        ("win32", ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"), 5),  # TCP_MAXRT (ws2ipdef.h), seconds
        ("darwin", ("TCP_KEEPALIVE", "TCP_KEEPINTVL", "TCP_KEEPCNT"), 0x80),  # TCP_RXT_CONNDROPTIME, seconds
    ],
)
def test_on_windows_and_macos_a_device_server_connection_gives_unacknowledged_bytes_up_after_11_s(
    platform: str, names: tuple[str, ...], option: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows and macOS have no TCP_USER_TIMEOUT: a beep command sent to a device server gone silent (power cut,
    cable pulled) held the connection for the system's retransmissions, the reader "available" meanwhile. Their own
    options (which their socket modules do not name) now limit it to keepalive's schedule, 11 s, as on Linux. Set
    on a socket that records them: this machine's kernel reads option numbers as its own."""
    monkeypatch.delattr(socket, "TCP_USER_TIMEOUT")
    for name in ("TCP_KEEPIDLE", "TCP_KEEPALIVE", "TCP_MAXRT", "TCP_RXT_CONNDROPTIME"):
        monkeypatch.delattr(socket, name, raising=False)
    for name, number in zip(names, (101, 102, 103), strict=True):  # numbers of the system's keepalive timers
        monkeypatch.setattr(socket, name, number, raising=False)
    monkeypatch.setattr(serial_scanner.sys, "platform", platform)
    sock = RecordingSocket()
    serial_scanner._keep_alive(sock)
    assert sock.options == {
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE): 1,
        (socket.IPPROTO_TCP, 101): 5,
        (socket.IPPROTO_TCP, 102): 2,
        (socket.IPPROTO_TCP, 103): 3,
        (socket.IPPROTO_TCP, option): 11,
    }


async def test_a_tty_read_failing_at_unplug_says_the_cut_once_and_the_replug_reads_on(
    pty_scanner: PtyScanner, statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    """The path a Windows COM port takes too: the read raises pyserial's SerialException when the scanner is
    pulled (here a pty's master closed), and the port is opened again once it is back."""
    caplog.set_level(logging.DEBUG, logger="hardware")
    async with SerialScanner(config(str(pty_scanner.link)), on_status=statuses) as scanner:
        taker = ScanTaker(scanner)
        await statuses.wait(available=True)
        pty_scanner.write(b"]E05901234123457\r\n]E0400638")
        assert (await taker.one()).raw == b"]E05901234123457"
        await pty_scanner.wait_read()
        pty_scanner.unplug()
        cut = await taker.one()
        await statuses.wait(available=False)
        pty_scanner.plug()
        await statuses.wait(available=True)
        pty_scanner.write(b"]E04006381333931\r\n")
        again = await taker.one()
    assert [(s.raw, s.complete) for s in (cut, again)] == [(b"]E0400638", False), (b"]E04006381333931", True)]
    said = f"Scanner 'dock' on {pty_scanner.link}: a scan was cut off by the disconnect (9 bytes: ']E0400638');"
    assert said_cut_off(caplog) == [f"{said} scan it again."]


async def test_a_replugged_com_port_is_opened_when_it_is_listed_again_not_after_the_backoff(
    tmp_path: Path, statuses: StatusLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Windows the reader waited the whole backoff (up to reconnect_max_s) before opening a replugged COM
    port again, and what the scanner sent meanwhile was lost with the closed port. Now it looks for the port in
    pyserial's list of ports while it waits. Here pyserial opens ``COM7`` relative to the working directory,
    a link to a real pty; only Windows' port list is stood in for (the ports whose link exists)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(serial_scanner, "com_ports", lambda: {p.name for p in tmp_path.glob("COM*") if p.exists()})
    device = PtyScanner(tmp_path / "COM7")
    slow = {"reconnect_initial_s": 60.0, "reconnect_max_s": 120.0}  # far beyond every wait of this test
    cfg = SerialScannerConfig(reader_id="dock", port="COM7", idle_gap_s=None, **slow)  # type: ignore[arg-type]
    try:
        async with SerialScanner(cfg, on_status=statuses) as scanner:
            taker = ScanTaker(scanner)
            await statuses.wait(available=True)
            device.unplug()
            await statuses.wait(available=False)
            (tmp_path / "COM7").unlink()  # Windows drops the port from its list when the scanner is pulled
            await asyncio.sleep(APPEAR_POLL_S * 2)  # the reader waits out its backoff, looking for the port
            device.plug()
            await statuses.wait(available=True)
            device.write(b"]E04006381333931\r\n")
            assert (await taker.one()).raw == b"]E04006381333931"
    finally:
        device.close()


def test_a_com_port_is_looked_for_in_pyserials_list_of_ports() -> None:
    """pyserial's own list, as the system gives it (here Linux's, which has no COM7): not found, so the reader
    keeps looking while it waits, instead of not knowing (None) and waiting the backoff out."""
    cfg = SerialScannerConfig(reader_id="dock", port="COM7")
    assert SerialScanner(cfg)._device_present() is False


async def test_a_device_server_back_after_an_outage_is_read_again_at_once_not_after_a_30_s_backoff(
    statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    """A device server that went away (a power cut, a restart) was reconnected only when the backoff, grown to
    up to 30 s, ran out: scans made on it in between went to a server with nobody connected and were lost. Now
    a socket scanner tries to connect every second while the device server is not there. Here its backoff is
    30 s from the first retry on; the scanner reads again well within the tests' bound of 5 s."""
    caplog.set_level(logging.DEBUG, logger="hardware")
    slow = {"reconnect_initial_s": 30.0, "reconnect_max_s": 30.0}
    async with DeviceServer() as server:
        cfg = SerialScannerConfig(reader_id="dock", port=server.url, idle_gap_s=None, **slow)  # type: ignore[arg-type]
        async with SerialScanner(cfg, on_status=statuses) as scanner:
            taker = ScanTaker(scanner)
            await server.next()
            await statuses.wait(available=True)
            await server.go_away()
            await statuses.wait(available=False)
            await asyncio.sleep(serial_scanner.AWAY_RETRY_S * 2.5)  # it stays away: the reader's connects are refused
            await server.come_back()
            back = await server.next()
            await statuses.wait(available=True)
            back.write(b"]E04006381333931\r\n")
            await back.drain()
            assert (await taker.one()).raw == b"]E04006381333931"
    refused = [r for r in caplog.records if "still cannot open" in r.getMessage()]
    assert refused and all(r.levelno == logging.DEBUG for r in refused)


async def test_a_device_server_away_a_while_is_said_once_gone_once_back_and_the_cut_scan_once(
    statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    """Scans made while a device server is unreachable are lost: the reader says so once when it goes, once
    when it is back, and the scan cut at the drop once, however many connects are refused in between; its
    status changes twice."""
    caplog.set_level(logging.DEBUG, logger="hardware")
    async with DeviceServer() as server, SerialScanner(config(server.url), on_status=statuses) as scanner:
        taker = ScanTaker(scanner)
        first = await server.next()
        await statuses.wait(available=True)
        first.write(b"]E05901234123457\r\n]C0PAL")
        await first.drain()
        assert (await taker.one()).raw == b"]E05901234123457"
        await server.go_away()
        cut = await taker.one()
        down = await statuses.wait(available=False)
        async with asyncio.timeout(WAIT_S):
            while len([r for r in caplog.records if "still cannot open" in r.getMessage()]) < 3:
                await asyncio.sleep(0.01)
        await server.come_back()
        second = await server.next()
        await statuses.wait(available=True)
        second.write(b"]E09780201379629\r\n")
        await second.drain()
        after = await taker.one()
    assert [(s.raw, s.complete) for s in (cut, after)] == [(b"]C0PAL", False), (b"]E09780201379629", True)]
    assert down.error is not None and down.error.reason == "the device closed the connection"
    assert [s.available for s in statuses.items] == [True, False, True, False]  # the last: closed
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"Scanner 'dock' on {server.url}: a scan was cut off by the disconnect (6 bytes: ']C0PAL'); scan it again.",
        (
            f"Scanner 'dock' on {server.url} went away (the device closed the connection); scans made until it returns"
            " may be lost; reconnecting."
        ),
        warnings[2],
    ]
    assert warnings[2].startswith(f"Scanner 'dock' is back on {server.url} after ")


async def test_a_device_server_that_refuses_each_connection_is_said_once_and_its_words_are_no_scan(
    statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    """ser2net, while another client holds its port, takes each connection, says "Port already in use" and
    closes it. The reader said "is back" and "went away" (two warnings, two status changes) on every retry, and
    delivered the refusal as a complete scan each time, which an agent books as a receipt of an unknown item
    "Port already in use". Now a reopened connection counts as back only once it has lasted a moment: the
    refusals are one warning, the status stays unavailable, and what the server said is delivered cut off,
    never as a scan."""
    caplog.set_level(logging.DEBUG, logger="hardware")
    async with DeviceServer() as server, SerialScanner(config(server.url), on_status=statuses) as scanner:
        taker = ScanTaker(scanner)
        first = await server.next()
        await statuses.wait(available=True)
        server.refusal = b"Port already in use\r\n"
        first.close()  # the other client took the port meanwhile
        await statuses.wait(available=False)
        refusals = await taker.take(3)
        server.refusal = None  # the other client let go
        second = await server.next()
        await statuses.wait(available=True)
        second.write(b"]E09780201379629\r\n")
        await second.drain()
        after = await taker.one()
    assert [(s.raw, s.complete) for s in refusals] == [(b"Port already in use", False)] * 3
    assert (after.raw, after.complete) == (b"]E09780201379629", True)
    assert [s.available for s in statuses.items] == [True, False, True, False]  # the last: closed
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        (
            f"Scanner 'dock' on {server.url} went away (the device closed the connection); scans made until it returns"
            " may be lost; reconnecting."
        ),
        (
            f"Scanner 'dock' on {server.url} took the connection and closed it again at once (the device closed the "
            "connection), sending 'Port already in use', which is delivered cut off, not as a scan; retrying on the "
            "backoff (does another client hold its port?)."
        ),
        warnings[2],
    ]
    assert warnings[2].startswith(f"Scanner 'dock' is back on {server.url} after ")


async def test_a_device_server_that_refuses_each_connection_is_retried_on_the_backoff_not_every_second(
    statuses: StatusLog,
) -> None:
    """The retry every second is for a device server that is not there; one that is there and closes each
    connection at once is not hammered: after one early retry the reader waits its backoff (here 30 s)."""
    slow = {"reconnect_initial_s": 30.0, "reconnect_max_s": 30.0}
    async with DeviceServer() as server:
        cfg = SerialScannerConfig(reader_id="dock", port=server.url, idle_gap_s=None, **slow)  # type: ignore[arg-type]
        async with SerialScanner(cfg, on_status=statuses):
            first = await server.next()
            await statuses.wait(available=True)
            server.refusal = b""
            first.close()
            await statuses.wait(available=False)
            await asyncio.sleep(serial_scanner.AWAY_RETRY_S * 3.5)  # past three retries of a server not there
            taken = server.taken
    assert taken <= 2


async def test_a_device_server_closing_an_idle_connection_is_reconnected_without_a_false_alarm(
    statuses: StatusLog, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ser2net closes a connection that was quiet for its port's timeout (600 s in its usual configuration): a
    scanner nobody used for ten minutes made a "went away ... may be lost" and an "is back ... scan again"
    warning, and two status changes, every ten minutes, though the reader was connected again at once and
    nothing was lost. Now a long-lived connection the server closed is reopened at once before anything is
    said: taken, that is one line at INFO; refused, the outage is said as before. (A connection lasted long
    here when it lived ``STABLE_LINK_S``, shortened for the test.)"""
    monkeypatch.setattr(reader, "STABLE_LINK_S", 0.2)
    caplog.set_level(logging.INFO, logger="hardware")
    async with DeviceServer() as server, SerialScanner(config(server.url), on_status=statuses) as scanner:
        taker = ScanTaker(scanner)
        first = await server.next()
        await statuses.wait(available=True)
        for _ in range(2):
            await asyncio.sleep(serial_scanner.SETTLE_S + reader.STABLE_LINK_S * 2)  # nobody scans
            first.close()  # the server's idle timeout
            first = await server.next()
        first.write(b"]E09780201379629\r\n")
        await first.drain()
        assert (await taker.one()).raw == b"]E09780201379629"
        assert [s.available for s in statuses.items] == [True]
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        await asyncio.sleep(serial_scanner.SETTLE_S + reader.STABLE_LINK_S * 2)
        await server.go_away()  # closed, and this time not there to take the new connection: said at once
        down = await statuses.wait(available=False)
    assert down.error is not None and down.error.reason == "the device closed the connection"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        (
            f"Scanner 'dock' on {server.url} went away (the device closed the connection); scans made until it returns"
            " may be lost; reconnecting."
        )
    ]
    reopened = f"Scanner 'dock' on {server.url} closed the connection (the device closed the connection);"
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith(reopened)] == [
        f"{reopened} a new one was taken at once.",
    ] * 2


async def test_a_device_server_sending_megabytes_without_a_line_end_gives_one_cut_off_scan_and_reads_on(
    statuses: StatusLog,
) -> None:
    """A device server relaying line noise (a scanner at the wrong baud rate) sends 4 MB without CR/LF; the
    reader keeps at most ``max_frame_bytes`` of it, delivers that once cut off, and reads the next scan."""
    async with DeviceServer() as server, SerialScanner(config(server.url), on_status=statuses) as scanner:
        taker = ScanTaker(scanner)
        first = await server.next()
        await statuses.wait(available=True)
        first.write(b"\xff\x00~" * 1_400_000 + b"\r\n]E09780201379629\r\n")
        await first.drain()
        scans = await taker.take(2)
    assert [(len(s.raw), s.complete) for s in scans] == [(FRAME_MAX_BYTES, False), (16, True)]


async def test_a_device_server_named_by_a_host_name_holds_one_lookup_at_a_time_while_dns_hangs(
    statuses: StatusLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the store's network goes down, its DNS server and the device server go with it. A reconnect that
    gave up waiting left its lookup running in a worker thread of the event loop's shared pool, and with a
    retry every second those piled up: the pool (six threads on a two-core machine) then stalled whatever else
    needed it, the POS importer, the hub's own DNS lookups, handheld logins. Now a reader has at most one lookup
    running, and a retry waits for that one. Only the name service is stood in for: it answers for
    ``dock-server.test`` while the network is up and hangs while it is down; the connections are real."""
    monkeypatch.setattr(serial_scanner, "AWAY_RETRY_S", 0.05)
    monkeypatch.setattr(serial_scanner, "RECONNECT_TIMEOUT_S", 0.2)
    resolve = socket.getaddrinfo
    network_up, hanging, most_hanging = threading.Event(), [0], [0]
    network_up.set()
    lock = threading.Lock()

    def getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> object:
        if host != "dock-server.test":
            return resolve(host, port, *args, **kwargs)  # type: ignore[arg-type]
        with lock:
            hanging[0] += 1
            most_hanging[0] = max(most_hanging[0], hanging[0])
        try:
            network_up.wait(WAIT_S)
        finally:
            with lock:
                hanging[0] -= 1
        return resolve("127.0.0.1", port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        async with DeviceServer() as server:
            cfg = config(f"socket://dock-server.test:{server.port}")
            async with SerialScanner(cfg, on_status=statuses) as scanner:
                taker = ScanTaker(scanner)
                await server.next()
                await statuses.wait(available=True)
                network_up.clear()
                await server.go_away()
                await statuses.wait(available=False)
                await asyncio.sleep(serial_scanner.RECONNECT_TIMEOUT_S * 6)  # a retry every 0.05 s meanwhile
                await server.come_back()
                network_up.set()
                back = await server.next()
                await statuses.wait(available=True)
                # A connection the reader gave up on (its 0.2 s ran out as the server took it, on a loaded
                # machine) is followed by the one it reads: the scan goes to the newest taken.
                while not server.connections.empty():
                    back = server.connections.get_nowait()
                back.write(b"]E04006381333931\r\n")
                await back.drain()
                assert (await taker.one()).raw == b"]E04006381333931"
    finally:
        network_up.set()
    assert most_hanging[0] == 1


async def test_a_device_server_refusing_from_the_start_gives_no_scan_and_an_unavailable_status_that_says_why(
    statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    """Another client already holds the device server's port when the agent starts: the first connection was
    taken for the scanner being there, so the refusal was delivered as a complete scan (booked as an unknown
    item) and the status said available. Now the first connection settles like every other."""
    caplog.set_level(logging.INFO, logger="hardware")
    async with DeviceServer() as server:
        server.refusal = b"Port already in use\r\n"
        async with SerialScanner(config(server.url), on_status=statuses) as scanner:
            taker = ScanTaker(scanner)
            refusals = await taker.take(2)
            down = await statuses.wait(available=False)
            server.refusal = None
            first = await server.next()
            await statuses.wait(available=True)
            first.write(b"]E09780201379629\r\n")
            await first.drain()
            after = await taker.one()
    assert [(s.raw, s.complete) for s in refusals] == [(b"Port already in use", False)] * 2
    assert (after.raw, after.complete) == (b"]E09780201379629", True)
    assert down.error is not None
    assert down.error.reason == "it took the connection and closed it again at once (the device closed the connection)"
    assert [s.available for s in statuses.items] == [False, True, False]  # the last: closed
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "took the connection and closed it again at once" in warnings[0]
    assert any(r.getMessage().startswith(f"Scanner 'dock' opened {server.url} after ") for r in caplog.records)


async def test_a_device_server_in_telnet_mode_is_named_once_for_what_it_is(
    statuses: StatusLog, caplog: pytest.LogCaptureFixture
) -> None:
    """A ser2net port in telnet mode (or a device server in RFC 2217 mode) opens every connection with telnet
    negotiation, which landed in the first scan: the operator was told of bytes that are not text and of a
    baud rate or parity that does not match, which is not it. Now the reader says once what the device server
    speaks and what to set; the bytes are still delivered as they came (and refused by ``decode``)."""
    caplog.set_level(logging.INFO, logger="hardware")
    async with DeviceServer() as server, SerialScanner(config(server.url), on_status=statuses) as scanner:
        taker = ScanTaker(scanner)
        server.greeting = b"\xff\xfb\x03\xff\xfb\x01\xff\xfd\x03\xff\xfe\x22]E04006381333931\r\n"
        first = await server.next()
        await statuses.wait(available=True)
        negotiated = await taker.one()
        first.close()
        await statuses.wait(available=False)
        second = await server.next()
        await statuses.wait(available=True)
        second.write(b"\xff\xfb\x03\xff\xfb\x01]E09780201379629\r\n")  # every connection: said once all the same
        await second.drain()
        again = await taker.one()
    assert (negotiated.raw, again.raw) == (
        b"\xff\xfb\x03\xff\xfb\x01\xff\xfd\x03\xff\xfe\x22]E04006381333931",
        b"\xff\xfb\x03\xff\xfb\x01]E09780201379629",
    )
    said = [r.getMessage() for r in caplog.records if "telnet" in r.getMessage()]
    assert said == [
        (
            f"Scanner 'dock' on {server.url}: the device server speaks telnet (it opened the connection with telnet "
            "negotiation, which arrives in the first scan); set its port to raw TCP mode."
        )
    ]
    assert [r.levelno for r in caplog.records if "telnet" in r.getMessage()] == [logging.WARNING]


async def test_what_a_device_server_sends_while_its_connection_settles_is_held_back_by_the_kernel_not_read_on(
    statuses: StatusLog,
) -> None:
    """The frames of a connection not yet settled are held by the reader; a device server pouring out lines
    at once (a buffer of noise) filled that hold without limit for as long as the connection settled. Now the
    hold pauses reading at the queue's limit, as the queue does, and the rest waits in the kernel."""
    count = QUEUE_PAUSE_SCANS * 100
    async with DeviceServer() as server:
        server.greeting = b"".join(b"ITEM-%06d\r\n" % i for i in range(count))
        async with SerialScanner(config(server.url), on_status=statuses) as scanner:
            await server.next()
            await statuses.wait(available=True)  # settled: what was held is queued; nobody consumes yet
            held_back = scanner.pending_scans
            scans = await ScanTaker(scanner).take(count)
    assert held_back < count
    assert [s.raw for s in scans] == [b"ITEM-%06d" % i for i in range(count)]


async def test_a_reader_closed_while_its_connection_settles_still_delivers_what_came(statuses: StatusLog) -> None:
    """Closing the reader in the middle of the settle delivers what the device server sent meanwhile, as it
    came, and what was cut by the close once, cut off."""
    async with DeviceServer() as server:
        server.greeting = b"]E04006381333931\r\n]C0PAL"
        scanner = SerialScanner(config(server.url), on_status=statuses)
        async with scanner:
            await server.next()
            await asyncio.sleep(serial_scanner.SETTLE_S / 5)  # the greeting reaches the reader, which holds it
            settling = not statuses.items
        scans = [scan async for scan in scanner.scans()]
    assert [(s.raw, s.complete) for s in scans] == [(b"]E04006381333931", True), (b"]C0PAL", False)]
    assert settling
