"""At most so many catch-up batches at once in this hub process; the others are asked to come back shortly.

After a regional outage, dozens of agents each send 10,000-event batches, two at a time. Taken all at once,
their bodies are read and decoded together (seconds of the event loop, during which ``/healthz`` and every
read wait: a load balancer's check timed out) and queue for the database together (on PostgreSQL they take
every pooled connection, and a live store's sale or a health check finds none within 5 s). One store's
catch-up needs two at a time; the writer or the database takes one after the other anyway.

So a sync whose body is announced bigger than ``CATCHUP_BODY_BYTES`` (an agent's 1,000-event batch is ~69 KiB,
its 10,000-event catch-up batch ~690 KiB) holds a slot from before its body is read to its answer; with
``CATCHUP_SLOTS`` of them running it is answered ``429`` with ``Retry-After`` before anything is read, and the
agent waits that long and sends it again (agent/replicator.py). Small syncs, reads and health checks never
wait for a slot. Slots live in this hub process: several hubs sharing one PostgreSQL database each keep their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiohttp import web

from protocol.retry import retry_after_value

CATCHUP_BODY_BYTES = 256 * 1024  # above: a catch-up batch (thousands of events)
CATCHUP_SLOTS = 4  # two stores' pipelines: enough to keep one writer (or a few connections) busy
RETRY_AFTER_S = 1.0  # a slot frees once a batch is committed: a second or so under load


class CatchUpSlots:
    """The catch-up batches this hub process is working on. ``take`` is synchronous: no await comes between
    the check and the count, so the cap holds exactly on the one event loop."""

    def __init__(self, total: int = CATCHUP_SLOTS) -> None:
        self.total = total
        self.running = 0
        self.refused = 0

    @contextlib.contextmanager
    def take(self, agent_id: str, content_length: int | None) -> Iterator[None]:
        """Hold a slot for the block if the body is a catch-up batch's; a 429 (with Retry-After) when none is free."""
        if content_length is None or content_length <= CATCHUP_BODY_BYTES:
            yield
            return
        if self.running >= self.total:
            self.refused += 1
            retry_after = retry_after_value(RETRY_AFTER_S)
            raise web.HTTPTooManyRequests(
                text=f"the hub is committing {self.total} catch-up batches already; {agent_id}, send this one "
                f"again in {retry_after} s",
                headers={"Retry-After": retry_after},
            )
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1


SLOTS_KEY = web.AppKey("catchup_slots", CatchUpSlots)


def setup(app: web.Application) -> None:
    app[SLOTS_KEY] = CatchUpSlots()
