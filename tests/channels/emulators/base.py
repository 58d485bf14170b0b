"""What both emulators share: an aiohttp server on 127.0.0.1 and misbehaviour on demand."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Self

from aiohttp import web

FAULTS = (
    "http_500", "http_503", "slow", "drop", "drop_after", "throttle", "throttle_bare", "cas_miss", "429",
    "ok_no_counts", "ok_errors",
)  # fmt: skip


class Faults:
    """A queue of faults, one per request: ``queue("http_500", "slow")`` fails the next two requests.

    * ``http_500`` / ``http_503``: answer that status with the vendor's error body;
    * ``slow``: wait ``slow_s`` before answering (longer than a client's timeout, to test it);
    * ``drop``: close the connection before doing anything;
    * ``drop_after``: do the work, then close the connection without answering;
    * ``throttle`` (Shopify): answer THROTTLED; ``429``: answer 429 with ``Retry-After`` (``retry_after_s``,
      no header when it is None);
    * ``throttle_bare`` (Shopify): answer THROTTLED without ``extensions.cost`` (no ``throttleStatus``);
    * ``cas_miss`` (Shopify): change the first level the request sets just before it is applied;
    * ``ok_no_counts`` (Square): apply nothing and answer HTTP 200 with no ``counts`` (``{"changes": []}``);
    * ``ok_errors`` (Square): apply nothing and answer HTTP 200 with an ``errors`` list.
    """

    def __init__(self) -> None:
        self._queue: deque[str] = deque()
        self.slow_s = 5.0
        self.retry_after_s: int | str | None = 1
        self.seen: list[str] = []

    def queue(self, *faults: str) -> None:
        for f in faults:
            if f not in FAULTS:
                raise ValueError(f"unknown fault {f!r}; the faults are {', '.join(FAULTS)}")
        self._queue.extend(faults)

    def next(self) -> str | None:
        fault = self._queue.popleft() if self._queue else None
        if fault is not None:
            self.seen.append(fault)
        return fault

    @property
    def pending(self) -> int:
        return len(self._queue)


class EmulatorServer:
    """An aiohttp application served on 127.0.0.1 on a free port; ``async with`` starts and stops it."""

    def __init__(self) -> None:
        self.app = web.Application(client_max_size=8 * 1024 * 1024)
        self.faults = Faults()
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> Self:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def drop(request: web.Request) -> web.StreamResponse:
    """Close the client's connection without an answer."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    await asyncio.sleep(0)
    raise asyncio.CancelledError  # aiohttp treats a handler cancelled on a lost connection as routine
