"""The lifecycle of a channel's long-running loop (docs/design.md, "How the code is shaped").

The loop's shape, its backoff value and its failure log are the tree's one
kind (``protocol.retry``: ``run_turns``, ``Backoff``, ``Health``); they are
named here too for the channel code. ``LoopTask`` runs one such loop as a
task: ``start`` once, ``stop`` safe twice, or ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self

from protocol.retry import Backoff, Health, TurnFailed, run_turns

__all__ = ["Backoff", "Health", "LoopTask", "TurnFailed", "run_turns"]


class LoopTask:
    """A loop running as one task: ``start`` once, ``stop`` (safe twice), or ``async with``.

    A subclass gives ``run()`` (the loop, which ends when ``self._stopped`` is set) and ``loop_name``
    (the task's name, and what a stopped one refuses to start again as); it calls ``super().__init__()``.
    """

    loop_name = "loop"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._stopped:
            raise RuntimeError(f"{self.loop_name}: a stopped loop cannot start again")
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=self.loop_name)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The running loop's task (done: the loop ended by itself), or None before ``start`` and after ``stop``."""
        return self._task

    async def stop(self) -> None:
        """Stop the loop (work in flight is abandoned; what it stored stays); safe twice."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():  # one that ended by itself is not raised again: ``task`` tells why
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
