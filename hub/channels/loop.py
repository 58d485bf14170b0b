"""The one shape of a channel's long-running loop, and its backoff value (docs/design.md, "How the code is shaped").

``Backoff`` is a frozen value: the delay after the n-th failure in a row is
drawn from [ceiling/2, ceiling], ceiling = min(max_s, base_s × 2^(n−1)).
``Health`` logs the first failure of a run as a warning and the recovery
once, so a channel that is down for an hour writes two lines, not thousands.
(Both are written to be moved to one shared place when issue 15 gives the tree
one loop type.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Self

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 300.0


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float = BACKOFF_BASE_S
    max_s: float = BACKOFF_MAX_S

    def delay_s(self, failures: int, rng: random.Random | None = None) -> float:
        """How long to wait after ``failures`` failures in a row (0 after none), with jitter."""
        if failures <= 0:
            return 0.0
        ceiling_s = min(self.max_s, self.base_s * 2 ** min(failures - 1, 30))
        return (rng or random).uniform(ceiling_s / 2, ceiling_s)


class Health:
    """Failures in a row of one loop, logged once when they start and once when they end."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self.failures = 0
        self.last_error: str | None = None

    def failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.failures == 1:
            self._log.warning("%s failed (%s); retrying with backoff", self._what, error)

    def succeeded(self) -> None:
        if self.failures:
            self._log.info("%s works again after %d failed attempt(s)", self._what, self.failures)
        self.failures = 0
        self.last_error = None


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

    async def stop(self) -> None:
        """Stop the loop (work in flight is abandoned; what it stored stays); safe twice."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
