"""A TCP proxy on 127.0.0.1 between a hub and its PostgreSQL that can stall: it keeps every connection open (the
kernel acknowledges every byte, answers every keepalive) and forwards nothing, as a hung pooler or a network
middlebox does; ``flow()`` forwards again what was held. It runs in a thread of its own, for tests that drive
processes with blocking calls.

    with StallingProxy(5432) as proxy:
        url = proxy.through(pg_url)  # the same URL, by way of the proxy
        proxy.stall(); ...; proxy.flow()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

LOOPBACK = "127.0.0.1"
CALL_TIMEOUT_S = 10.0
CHUNK_BYTES = 64 * 1024

T = TypeVar("T")


class StallingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-stall", daemon=True)
        self._thread.start()
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server = self._call(self._start)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def through(self, url: str) -> str:
        """``url`` (of the server this proxy leads to) by way of the proxy."""
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}{LOOPBACK}:{self.port}"))

    def stall(self) -> None:
        self._call_soon(self._flowing.clear)

    def flow(self) -> None:
        self._call_soon(self._flowing.set)

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for client, upstream in list(self._pairs):
                client.transport.abort()
                upstream.transport.abort()
            self._flowing.set()  # every pump then finds its connection gone and ends
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=CALL_TIMEOUT_S / 2)

        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self._call(stop)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CALL_TIMEOUT_S)
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(CALL_TIMEOUT_S)

    def _call_soon(self, fn: Callable[[], None]) -> None:
        async def run() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(CALL_TIMEOUT_S)

    async def _start(self) -> asyncio.Server:
        self._flowing.set()
        return await asyncio.start_server(self._accept, LOOPBACK, 0)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_r, up_w = await asyncio.open_connection(LOOPBACK, self.upstream_port)
        except OSError:
            client_w.transport.abort()
            self._tasks.discard(task)
            return
        pair = (client_w, up_w)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._pump(client_r, up_w), self._pump(up_r, client_w))
        finally:
            self._pairs.discard(pair)
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK_BYTES):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, RuntimeError):  # reset, or written to after the other side's abort
            pass
        finally:
            writer.transport.abort()
