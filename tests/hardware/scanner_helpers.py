"""Test helpers: real pseudo-terminals standing in for serial scanners, a device server on 127.0.0.1, a status
recorder, a scan taker."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import struct
import termios
import tty
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Self

from hardware import ReaderStatus, Scan, ScannerReader

WAIT_S = 5.0  # every wait in these tests is bounded by this


class PtyScanner:
    """A scanner on a pseudo-terminal, reached through a symlink like /dev/serial/by-id/usb-...-if00.

    ``plug()`` makes a fresh pty and points the symlink at it; ``unplug()`` closes
    the master side, which is what a reader sees when a USB-serial cable is pulled.
    """

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master: int | None = None
        self.slave: int | None = None
        self.plug()

    def plug(self) -> None:
        assert self.master is None, "unplug first"
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)  # nothing canonical or echoed before the reader configures it
        tmp = self.link.with_name(self.link.name + ".new")
        if tmp.is_symlink():
            tmp.unlink()
        tmp.symlink_to(os.ttyname(self.slave))
        os.replace(tmp, self.link)  # atomic, like udev updating a by-id link

    def write(self, data: bytes) -> None:
        assert self.master is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    async def write_slowly(self, parts: list[bytes], delay_s: float) -> None:
        for part in parts:
            self.write(part)
            await asyncio.sleep(delay_s)

    def unread_bytes(self) -> int:
        """Bytes the reader has not read yet (the tty's input queue)."""
        assert self.slave is not None
        return int(struct.unpack("i", fcntl.ioctl(self.slave, termios.FIONREAD, b"\0\0\0\0"))[0])

    async def wait_read(self) -> None:
        """Wait until the reader has taken every byte written (no event exists for this: poll, bounded)."""
        async with asyncio.timeout(WAIT_S):
            while self.unread_bytes():
                await asyncio.sleep(0.005)

    def read_from_reader(self) -> bytes:
        """What the reader wrote to the device."""
        assert self.master is not None
        return os.read(self.master, 4096)

    def unplug(self) -> None:
        for fd in (self.master, self.slave):
            if fd is not None:
                os.close(fd)
        self.master = self.slave = None

    def close(self) -> None:
        self.unplug()


class StatusLog:
    """An ``on_status`` callback that tests can wait on."""

    def __init__(self) -> None:
        self.items: list[ReaderStatus] = []
        self._changed = asyncio.Event()

    def __call__(self, status: ReaderStatus) -> None:
        self.items.append(status)
        self._changed.set()

    async def wait(self, *, available: bool) -> ReaderStatus:
        async with asyncio.timeout(WAIT_S):
            while not (self.items and self.items[-1].available is available):
                self._changed.clear()
                await self._changed.wait()
        return self.items[-1]


class ScanTaker:
    """One consumer of ``reader.scans()`` with bounded waits."""

    def __init__(self, reader: ScannerReader) -> None:
        self._iter: AsyncIterator[Scan] = reader.scans()

    async def take(self, count: int = 1) -> list[Scan]:
        out = []
        async with asyncio.timeout(WAIT_S):
            for _ in range(count):
                out.append(await anext(self._iter))
        return out

    async def one(self) -> Scan:
        return (await self.take(1))[0]


class DeviceServer:
    """A raw TCP device server on 127.0.0.1: each connection the reader makes is queued for the test.

    ``go_away()`` closes it and every connection, as a device server that lost power or its service;
    ``come_back()`` listens again on the same port. With ``refusal`` set, it takes each connection, sends the
    refusal and closes it at once, as ser2net does while another client holds its port."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
        self.greeting = b""  # sent as soon as a connection is taken: what the server buffered meanwhile
        self.refusal: bytes | None = None
        self.taken = 0  # connections taken, refused ones too
        self.server: asyncio.Server | None = None
        self.port = 0
        self.url = ""
        self._open: list[asyncio.StreamWriter] = []

    async def _on_client(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.taken += 1
        if self.refusal is not None:
            writer.write(self.refusal)
            writer.close()
            return
        if self.greeting:
            writer.write(self.greeting)
            self.greeting = b""
        self._open.append(writer)
        await self.connections.put(writer)

    async def __aenter__(self) -> Self:
        await self.come_back()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.go_away()

    async def come_back(self) -> None:
        self.server = await asyncio.start_server(self._on_client, "127.0.0.1", self.port)
        host, self.port = self.server.sockets[0].getsockname()[:2]
        self.url = f"socket://{host}:{self.port}"

    async def go_away(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self._open:
            writer.close()
        self._open.clear()
        await self.server.wait_closed()

    async def next(self) -> asyncio.StreamWriter:
        return await asyncio.wait_for(self.connections.get(), WAIT_S)


async def next_available(server: DeviceServer, statuses: StatusLog) -> asyncio.StreamWriter:
    """The device server's end of the reader's next connection, once the reader says it is available."""
    link = await server.next()
    await statuses.wait(available=True)
    return link


async def send_scan(link: asyncio.StreamWriter, taker: ScanTaker, data: bytes) -> Scan:
    """Send ``data`` from the device server's end of ``link`` and return the next scan the reader delivers."""
    link.write(data)
    await link.drain()
    return await taker.one()
