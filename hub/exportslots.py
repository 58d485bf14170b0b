"""At most so many CSV downloads at once: per credential and on the whole hub process.

A CSV answer (hub/csvexport.py) walks a whole list, page after page, for as
long as its client keeps reading; each page costs a database read and the
event loop's time to write it out, time that syncs wait for. Read routes have
no rate limit, so without a cap one reader credential opening downloads in
parallel could slow every store's syncs many times over.

Each download holds a slot from before its first read to its last byte. With
``export_max_per_credential`` of its credential's downloads running it is
answered ``429 rate_limited``, with ``export_max`` of the hub's running
``503 unavailable``; both before anything is read, with ``Retry-After``.
Slots live in this hub process: several hubs sharing one PostgreSQL database
each keep their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiohttp import web

from protocol.retry import retry_after_value

RETRY_AFTER_S = 5.0  # a download takes seconds at least; asking again sooner would only be refused again


class ExportSlots:
    """The CSV downloads running in this hub process, by credential. ``take`` is synchronous: no await can
    come between the check and the count, so the caps hold exactly on the one event loop."""

    def __init__(self, per_credential: int, total: int) -> None:
        self.per_credential = per_credential
        self.total = total
        self._running: dict[str, int] = {}
        self._total = 0

    @property
    def running(self) -> int:
        return self._total

    @contextlib.contextmanager
    def take(self, agent_id: str) -> Iterator[None]:
        """Hold a slot for ``agent_id`` for the block; a 429 or 503 (with Retry-After) when none is free."""
        retry_after = retry_after_value(RETRY_AFTER_S)
        if self._running.get(agent_id, 0) >= self.per_credential:
            raise web.HTTPTooManyRequests(
                text=f"{agent_id} has {self.per_credential} CSV download(s) running already "
                f"(export_max_per_credential); try again in {retry_after} s, when one has finished",
                headers={"Retry-After": retry_after},
            )
        if self._total >= self.total:
            raise web.HTTPServiceUnavailable(
                text=f"the hub is serving {self.total} CSV downloads already (export_max); "
                f"try again in {retry_after} s",
                headers={"Retry-After": retry_after},
            )
        self._running[agent_id] = self._running.get(agent_id, 0) + 1
        self._total += 1
        try:
            yield
        finally:
            self._total -= 1
            left = self._running[agent_id] - 1
            if left:
                self._running[agent_id] = left
            else:
                del self._running[agent_id]


SLOTS_KEY = web.AppKey("export_slots", ExportSlots)


def setup(app: web.Application, per_credential: int, total: int) -> None:
    app[SLOTS_KEY] = ExportSlots(per_credential, total)
