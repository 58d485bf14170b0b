"""What the agent's loops that talk to the hub share: one task, one HTTP session, a stop that is safe twice.

The replicator, the report sender and the catalog each run one background
task (STYLE.md item 5) over one ``aiohttp`` session; they subclass
``HubLoop`` and write their own ``start()`` and ``_run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, Self

import aiohttp


class HubLoop:
    """A background task and the HTTP session it uses; ``async with`` starts and stops it."""

    timeout_s: float

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        raise NotImplementedError

    def _http(self) -> aiohttp.ClientSession:
        """The session, opened on first use, each request bounded by ``timeout_s``."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    def _launch(self, run: Coroutine[Any, Any, None], name: str) -> None:
        self._task = asyncio.create_task(run, name=name)

    async def stop(self) -> None:
        """Stop the loop and close the session. Safe twice; starting again afterwards raises."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
