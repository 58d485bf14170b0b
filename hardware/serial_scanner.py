"""Serial barcode scanners (RS-232, USB CDC/VCP via pyserial-asyncio-fast; serial device servers over TCP).

    config = SerialScannerConfig(reader_id="backdoor", port="/dev/serial/by-id/usb-Honeywell_...-if00")
    async with SerialScanner(config, on_status=mark_reader) as scanner:
        async for scan in scanner.scans():
            ...

The port is a device path (prefer the stable /dev/serial/by-id/ symlink) or
``socket://host:port`` for a serial device server. Frames end at CR, LF or
CRLF, or after ``idle_gap_s`` of silence for scanners that send no suffix
(``idle_gap_s = 0``: no idle gap, frames end only at CR/LF). Its default is
longer for a device server, whose link may pause inside a scan; and once a
scanner ended a scan with its suffix, its frames wait for the suffix (up to
``SUFFIX_WAIT_S``, then the frame is cut off) instead of ending at the gap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from hardware.config import (
    check_backoff,
    check_bool,
    check_idle_gap,
    check_number,
    check_reader_id,
    config_from_mapping,
)
from hardware.errors import HardwareError, ScannerClosed, ScannerConfigError, ScannerDisconnected
from hardware.framing import FRAME_MAX_BYTES, Frame, FrameSplitter
from hardware.reader import RECONNECT_INITIAL_S, RECONNECT_MAX_S, ScannerReader, StatusCallback

try:
    import serial
    import serial.tools.list_ports
    import serial_asyncio_fast
except ImportError as err:  # pyserial missing or unable to load here: the reader says so when it opens
    serial = serial_asyncio_fast = None  # type: ignore[assignment]
    NO_PYSERIAL: str | None = (
        f"serial scanners need pyserial, which cannot be loaded on this machine ({err}); install shelfsync[agent]"
    )
else:
    NO_PYSERIAL = None

    class _KeepingSerial(serial.Serial):  # type: ignore[misc]
        """pyserial's port, whose ``open()`` keeps the bytes already waiting in the port.

        pyserial's POSIX ``open()`` ends with ``tcflush(TCIFLUSH)``: whatever the device sent before the port was
        configured — a scan made as a replugged scanner came back (a pty or a CDC scanner hands it over at open,
        or on DTR), a device server's buffer — was thrown away. A scanner sends scans, nothing stale: they are
        kept. (pyserial on Windows purges in ``open()`` itself; the reader's reconnect warning covers that.)"""

        _opening = False

        def open(self) -> None:
            self._opening = True
            try:
                super().open()
            finally:
                self._opening = False

        def _reset_input_buffer(self) -> None:
            if not self._opening:
                super()._reset_input_buffer()


log = logging.getLogger(__name__)

IDLE_GAP_S = 0.05
# A device server forwards a scan as the bytes come off its serial line, in TCP segments that a retransmission
# (0.2 s at least) or a Wi-Fi link may hold apart: the idle gap of a socket:// scanner is this unless it is set.
SOCKET_IDLE_GAP_S = 0.5
IDLE_GAP_AUTO = "auto"  # idle_gap_s by the port: IDLE_GAP_S, or SOCKET_IDLE_GAP_S for socket://
IDLE_GAP_MAX_S = 5.0
# How long a frame waits for its suffix once the scanner ended a scan with one (or the idle gap, when longer);
# then the frame is delivered cut off, and frames end at the idle gap again until a suffix is seen again.
SUFFIX_WAIT_S = 1.0
CONNECT_TIMEOUT_S = 10.0  # for socket:// device servers
# A socket:// device server that went away is tried this often while its connects fail (refused, unreachable,
# unanswered), whatever the backoff has grown to: only a connection tells it is back, and what is scanned on it
# until then is lost. Each reconnect waits at most RECONNECT_TIMEOUT_S for an answer.
AWAY_RETRY_S = 1.0
RECONNECT_TIMEOUT_S = 3.0
# A device server's connection (the first one too) counts once it lasted this long: one that takes each connection
# and closes it at once (ser2net while another client holds its port) is not there, and what it said is no scan.
SETTLE_S = 0.5
# TCP keepalive of a socket:// connection: a device server or network scanner that lost power and came back has
# forgotten the connection without a word; probed after this much silence, it answers with a reset.
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_PROBES = 3  # unanswered probes (a device server that is not back) before the connection is given up
# A connection's silence is given up after KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_PROBES (11 s) whether
# or not the reader has sent something: keepalive sends no probe while sent bytes wait for their acknowledgement, and
# without a limit on that (``_give_up_after``) Linux retransmitted them for about 15 minutes before giving up.
BAUDRATE_MAX = 4_000_000
PARITIES = ("N", "E", "O", "M", "S")
WINDOWS_PORT = re.compile(r"(?:\\\\\.\\)?COM[1-9][0-9]{0,2}", re.IGNORECASE)  # COM3, \\.\COM12
TELNET_IAC = b"\xff"
TELNET_NEGOTIATION = frozenset(range(0xFA, 0xFF))  # SB, WILL, WONT, DO, DONT
_PARITY_WORDS = {"none": "N", "even": "E", "odd": "O", "mark": "M", "space": "S"}


@dataclass(frozen=True, slots=True)
class SerialScannerConfig:
    """Every setting of one serial scanner. Not every scanner is 8N1: match its manual."""

    reader_id: str
    port: str  # /dev/serial/by-id/... or socket://host:port
    baudrate: int = 9600
    bytesize: int = 8  # 5, 6, 7 or 8
    parity: str = "N"  # N, E, O, M or S
    stopbits: float = 1  # 1, 1.5 or 2
    rtscts: bool = False
    xonxoff: bool = False
    # "auto" (kept as the number it stands for): IDLE_GAP_S, or SOCKET_IDLE_GAP_S for socket://; 0 or None (kept
    # as None): frames end only at CR/LF
    idle_gap_s: float | str | None = IDLE_GAP_AUTO
    reconnect_initial_s: float = RECONNECT_INITIAL_S
    reconnect_max_s: float = RECONNECT_MAX_S
    max_frame_bytes: int = FRAME_MAX_BYTES

    def __post_init__(self) -> None:
        check_reader_id(self.reader_id)
        _check_port(self.port)
        if (
            isinstance(self.baudrate, bool)
            or not isinstance(self.baudrate, int)
            or not 0 < self.baudrate <= BAUDRATE_MAX
        ):
            raise ScannerConfigError(f"baudrate must be a whole number from 1 to {BAUDRATE_MAX}, got {self.baudrate!r}")
        if self.bytesize not in (5, 6, 7, 8) or isinstance(self.bytesize, bool):
            raise ScannerConfigError(f"bytesize must be 5, 6, 7 or 8, got {self.bytesize!r}")
        if self.parity not in PARITIES:
            raise ScannerConfigError(
                f"parity must be one of N, E, O, M, S (none, even, odd, mark, space), got {self.parity!r}"
            )
        if self.stopbits not in (1, 1.5, 2) or isinstance(self.stopbits, bool):
            raise ScannerConfigError(f"stopbits must be 1, 1.5 or 2, got {self.stopbits!r}")
        check_bool("rtscts", self.rtscts)
        check_bool("xonxoff", self.xonxoff)
        gap = self.idle_gap_s
        if gap == IDLE_GAP_AUTO:
            gap = SOCKET_IDLE_GAP_S if self.is_socket else IDLE_GAP_S
        object.__setattr__(self, "idle_gap_s", check_idle_gap(gap, 0.001, IDLE_GAP_MAX_S, "CR/LF", IDLE_GAP_AUTO))
        check_backoff(self.reconnect_initial_s, self.reconnect_max_s)
        check_number("max_frame_bytes", self.max_frame_bytes, 16, 1 << 20)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> SerialScannerConfig:
        """From a config table; also accepts parity as a word (``parity = "even"``)."""
        values = dict(mapping) if isinstance(mapping, Mapping) else mapping
        if isinstance(values, dict) and isinstance(values.get("parity"), str):
            parity = values["parity"]
            values["parity"] = _PARITY_WORDS.get(parity.lower(), parity.upper())
        return config_from_mapping(cls, values, "serial scanner")

    @property
    def is_socket(self) -> bool:
        return self.port.startswith("socket://")

    @property
    def idle_gap(self) -> float | None:
        """``idle_gap_s`` as the number of seconds it stands for (None: no idle gap)."""
        return cast(float | None, self.idle_gap_s)  # a number or None since __post_init__


def _check_port(port: object) -> None:
    if not isinstance(port, str) or not port.strip():
        raise ScannerConfigError(f"port must be a device path or socket://host:port, got {port!r}")
    if "://" in port:
        parts = urllib.parse.urlsplit(port)
        try:
            port_number = parts.port
        except ValueError:
            port_number = None
        if parts.scheme != "socket" or not parts.hostname or port_number is None:
            raise ScannerConfigError(
                f"port {port!r} is not supported; use a device path or socket://host:port for a serial device server"
            )
    elif not port.startswith("/") and not WINDOWS_PORT.fullmatch(port):
        raise ScannerConfigError(
            f"port {port!r} must be an absolute device path such as /dev/serial/by-id/..., or a Windows COM port (COM3)"
        )


class _Suffix:
    """Whether a reader's scanner ends its scans with a suffix (CR/LF): learned from its bytes, kept across the
    reader's connections."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False


class _SerialLink(asyncio.Protocol):
    """The asyncio protocol of one open port: bytes in, frames out. ``on_telnet`` hears a connection that opens
    with telnet negotiation (a device server not in raw TCP mode).

    A frame ends at CR/LF, or after ``idle_gap_s`` of silence; once ``suffix`` was seen (a burst of bytes ended
    with a line end) it ends only at CR/LF, or is cut off after ``SUFFIX_WAIT_S`` of silence (the idle gap when
    longer), which makes the idle gap end frames again: a pause on the link inside a scan does not split it."""

    def __init__(
        self,
        deliver: Callable[[Frame], None],
        idle_gap_s: float | None,
        max_frame_bytes: int,
        on_telnet: Callable[[], None] | None = None,
        suffix: _Suffix | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._deliver = deliver
        self._on_telnet = on_telnet
        self._idle_gap_s = idle_gap_s
        self._suffix = suffix if suffix is not None else _Suffix()
        self._splitter = FrameSplitter(max_frame_bytes)
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self.made: asyncio.Future[None] = self._loop.create_future()
        self._lost: asyncio.Future[BaseException | None] = self._loop.create_future()

    @property
    def lost(self) -> asyncio.Future[BaseException | None]:
        return self._lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if not self.made.done():
            self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._on_telnet is not None:  # only a connection's first bytes
            if data[:1] == TELNET_IAC and data[1:2] and data[1] in TELNET_NEGOTIATION:
                self._on_telnet()
            self._on_telnet = None
        frames = self._splitter.feed(data)
        for frame in frames:
            self._deliver(frame)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._splitter.pending:
            if any(frame.complete for frame in frames):
                self._suffix.seen = True  # the bytes so far ended at a line end: the scanner sends a suffix
        elif self._idle_gap_s is not None:
            wait_s = max(self._idle_gap_s, SUFFIX_WAIT_S) if self._suffix.seen else self._idle_gap_s
            self._timer = self._loop.call_later(wait_s, self._idle)

    def eof_received(self) -> bool:
        return False  # a device server hung up: close, which reports the loss

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        frame = self._splitter.flush(complete=False)
        if frame is not None:
            self._deliver(Frame(frame.data, False, by_disconnect=True))
        if not self.made.done():
            self.made.set_exception(ConnectionError("the port closed while it was being opened"))
        if not self._lost.done():
            self._lost.set_result(exc)

    def _idle(self) -> None:
        self._timer = None
        suffix_missing, self._suffix.seen = self._suffix.seen, False
        frame = self._splitter.flush(complete=not suffix_missing)  # a scan whose suffix never came is cut off
        if frame is not None:
            self._deliver(Frame(frame.data, frame.complete, by_gap=frame.complete))

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def pause(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def abort(self) -> None:
        # A transport already closing (the device went away) reports the loss by itself; aborting
        # it again would run pyserial-asyncio-fast's teardown twice.
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()


class SerialScanner(ScannerReader):
    """One serial scanner; see the module docstring. ``on_status`` hears every availability change."""

    def __init__(self, config: SerialScannerConfig, *, on_status: StatusCallback | None = None) -> None:
        if not isinstance(config, SerialScannerConfig):
            raise ScannerConfigError(f"SerialScanner needs a SerialScannerConfig, got {type(config).__name__}")
        super().__init__(
            config.reader_id,
            config.port,
            reconnect_initial_s=config.reconnect_initial_s,
            reconnect_max_s=config.reconnect_max_s,
            on_status=on_status,
        )
        self._config = config
        self._connected_once = False  # a socket:// reader reached its device server once: reconnects wait less
        self._lookup: asyncio.Future[list[Any]] | None = None  # the device server's host name being looked up
        self._telnet_said = False
        self._suffix = _Suffix()  # whether the scanner ends its scans with CR/LF, across its connections

    @property
    def config(self) -> SerialScannerConfig:
        return self._config

    def _device_present(self) -> bool | None:
        """Whether the device path exists now, or a Windows COM port is in the system's list of ports (a
        replugged scanner's reappears); None for a device server, which only a connection tells."""
        if self._config.is_socket:
            return None
        if self._config.port.startswith("/"):
            return os.path.exists(self._config.port)
        try:
            listed = com_ports()
        except (OSError, ValueError) as err:  # the system would not list its ports: wait the backoff out
            log.debug("Scanner %r cannot list the serial ports: %s", self.reader_id, err)
            return None
        return _com_name(self._config.port) in {_com_name(name) for name in listed}

    def _retry_while_away_s(self) -> float | None:
        return AWAY_RETRY_S if self._config.is_socket else None

    def _settle_s(self) -> float:
        return SETTLE_S if self._config.is_socket else 0.0

    def _say_telnet(self) -> None:
        """Once per reader: the device server's port is in telnet (or RFC 2217) mode, not raw TCP. Its
        negotiation lands in the first scan of each connection, which ``decode`` refuses as bytes that are not
        text; the operator would look for a baud rate or parity that does not match."""
        if not self._telnet_said:
            self._telnet_said = True
            log.warning(
                "Scanner %r on %s: the device server speaks telnet (it opened the connection with telnet "
                "negotiation, which arrives in the first scan); set its port to raw TCP mode.",
                self.reader_id, self._config.port,
            )  # fmt: skip

    def send(self, data: bytes) -> None:
        """Write bytes to the scanner (a beep or trigger command from its manual)."""
        if self._closed:
            raise ScannerClosed(f"scanner {self.reader_id!r} is closed")
        link = self._link
        if not isinstance(link, _SerialLink):
            reason = self.status.error.reason if self.status.error is not None else "it is not connected yet"
            raise ScannerDisconnected(self.reader_id, self._config.port, reason)
        link.write(bytes(data))

    async def _open(self) -> _SerialLink:
        if NO_PYSERIAL is not None:
            raise HardwareError(NO_PYSERIAL)
        cfg = self._config
        loop = asyncio.get_running_loop()
        on_telnet = self._say_telnet if cfg.is_socket and not self._telnet_said else None
        link = _SerialLink(self._deliver, cfg.idle_gap, cfg.max_frame_bytes, on_telnet, self._suffix)
        if cfg.is_socket:  # a device server that does not answer must not stall the reconnect loop
            # a reconnect is tried every second while the server is away: a short wait for an answer
            async with asyncio.timeout(RECONNECT_TIMEOUT_S if self._connected_once else CONNECT_TIMEOUT_S):
                transport = await self._connect(link)
            self._connected_once = True
            _keep_alive(transport.get_extra_info("socket"))
        else:
            port = await loop.run_in_executor(None, _open_port, cfg)
            try:
                await serial_asyncio_fast.connection_for_serial(loop, lambda: link, port)
            except BaseException:
                port.close()
                raise
        await link.made
        return link

    async def _connect(self, link: _SerialLink) -> asyncio.BaseTransport:
        """Connect to the device server, a raw TCP connection (its line settings are the server's own).

        A host name is looked up in a worker thread of the loop's shared pool, which a timeout cannot stop: a
        reader has one lookup running at most, and a retry waits for it. (While the network is down the name
        service may hang too; lookups started every second piled up and took the pool from everything else.)"""
        loop = asyncio.get_running_loop()
        parts = urllib.parse.urlsplit(self._config.port)
        host, port = parts.hostname or "", parts.port or 0  # both there: checked with the configuration
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if self._lookup is None or self._lookup.done():
                self._lookup = loop.run_in_executor(None, socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
                self._lookup.add_done_callback(_retrieved)
            addresses = [info[4][0] for info in await asyncio.shield(self._lookup)]
        else:
            addresses = [host]  # an address: asyncio connects without a lookup
        error: OSError | None = None
        for address in dict.fromkeys(addresses):
            try:
                transport, _ = await loop.create_connection(lambda: link, address, port)
                return transport
            except OSError as err:  # the next address, as asyncio's own create_connection does
                error = err
        raise error or OSError(f"{host} has no address")


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Take a lookup's outcome, so one that no attempt waited for any more is not reported as never retrieved."""
    if not future.cancelled():
        future.exception()


def serial_options(config: SerialScannerConfig) -> dict[str, Any]:
    """The pyserial keyword arguments for a configuration."""
    options: dict[str, Any] = {
        "baudrate": config.baudrate,
        "bytesize": config.bytesize,
        "parity": config.parity,
        "stopbits": config.stopbits,
        "rtscts": config.rtscts,
        "xonxoff": config.xonxoff,
    }
    if not config.is_socket:
        options["exclusive"] = True  # two readers on one scanner would each get half the bytes
    return options


def com_ports() -> set[str]:
    """The serial ports the system lists now (COM3, ... on Windows), by pyserial."""
    if NO_PYSERIAL is not None:
        raise OSError(NO_PYSERIAL)
    return {port.device for port in serial.tools.list_ports.comports()}


def _com_name(port: str) -> str:
    """COM12 for COM12, com12 and \\\\.\\COM12."""
    return port.upper().removeprefix("\\\\.\\")


# The TCP option that ends a connection whose sent bytes stay unacknowledged this long, where the socket module does
# not name it: Windows' TCP_MAXRT (ws2ipdef.h; seconds, Windows Vista and later) and macOS's TCP_RXT_CONNDROPTIME
# (netinet/tcp.h; seconds). Linux's is TCP_USER_TIMEOUT, in milliseconds.
WINDOWS_TCP_MAXRT = 5
MACOS_TCP_RXT_CONNDROPTIME = 0x80


def _give_up_after(silent_s: int) -> tuple[int, int] | None:
    """(option, value) at IPPROTO_TCP that gives a connection up once bytes it sent stay unacknowledged for
    ``silent_s``, on this system; None where there is none."""
    if (user_timeout := getattr(socket, "TCP_USER_TIMEOUT", None)) is not None:  # Linux
        return user_timeout, silent_s * 1000
    if sys.platform == "win32":
        return getattr(socket, "TCP_MAXRT", WINDOWS_TCP_MAXRT), silent_s
    if sys.platform == "darwin":
        return getattr(socket, "TCP_RXT_CONNDROPTIME", MACOS_TCP_RXT_CONNDROPTIME), silent_s
    return None


def _keep_alive(sock: Any) -> None:
    """Turn on TCP keepalive on a device server's connection, with short timers where the system lets them be set
    (Linux, Windows 10 and later, macOS; elsewhere the system's own timers apply), and a limit as long as
    keepalive's whole schedule on the time bytes sent to a device server that went silent (a beep command) may stay
    unacknowledged (``_give_up_after``), so they do not keep the connection for the system's retransmissions (about
    15 minutes on Linux)."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = getattr(socket, "TCP_KEEPIDLE", None) or getattr(socket, "TCP_KEEPALIVE", None)  # macOS: TCP_KEEPALIVE
    give_up = _give_up_after(KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_PROBES) or (None, 0)
    for option, value in (
        (idle, KEEPALIVE_IDLE_S),
        (getattr(socket, "TCP_KEEPINTVL", None), KEEPALIVE_INTERVAL_S),
        (getattr(socket, "TCP_KEEPCNT", None), KEEPALIVE_PROBES),
        give_up,
    ):
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError as err:  # an older system without this timer
                log.debug("TCP option %s of a device server's connection is not settable here: %s", option, err)


def _open_port(config: SerialScannerConfig) -> serial.Serial:
    """Open a device path non-blocking, in a worker thread; close it again if configuring it fails."""
    port = _KeepingSerial(None, timeout=0, write_timeout=0, **serial_options(config))
    port.port = config.port
    port.open()
    return port
