"""How a job's loop (a channel's pusher, a webhook's deliverer) proves to ``hub.leases.lead`` that it is alive.

The lock connection's checks prove the hub process alive to the other hubs; they cannot tell that one job's loop
hangs on an await that never ends while the hub runs on. The loop's ``Heartbeat`` can: ``lead`` gives up a job
whose loop has been silent past its own bound for ``lease_stale_s``. This module imports nothing of the hub, so
the channel connectors deep inside a loop can beat its heartbeat (``beat``).
"""

from __future__ import annotations

import contextvars
import time

# lease_stale_s unless the config says otherwise (hub.config): hub.storage.postgres.leases.LEASE_STALE_S too.
DEFAULT_LEASE_STALE_S = 30.0
# lease_retry_s unless the config says otherwise: how often a hub checks the locks it holds (``hub.leases.lead``),
# and a standing-by hub tries to take the jobs it does not run.
DEFAULT_LEASE_RETRY_S = 3.0


class Heartbeat:
    """How a job's loop proves to ``lead`` that it is alive, not stuck on an await that never ends.

    The loop says, before each await it makes, how long that await may take at most (``beat``: a request's
    timeout, a backoff's sleep, a wait for changes). Once that bound has run out and the loop has been silent
    ``lease_stale_s`` longer, it is stuck: ``lead`` stops the job and gives its lease back, so another hub takes
    it over. A slow request within its timeout is not stuck. The lock connection's checks cannot tell this:
    ``lead`` goes on checking while the job's own loop hangs."""

    def __init__(self) -> None:
        self._until = time.monotonic()

    def beat(self, for_s: float = 0.0) -> None:
        """The loop is alive now, and what it awaits next ends within ``for_s``."""
        self._until = time.monotonic() + max(0.0, for_s)

    def overdue_s(self) -> float:
        """How long the loop has been silent past the bound it last gave (negative: not yet due)."""
        return time.monotonic() - self._until


# The heartbeat of the job loop running in this task (set by the loop itself): a request made deep inside it (a
# channel's connector) gives its timeout as the bound, without every layer between passing the heartbeat down.
BEATING: contextvars.ContextVar[Heartbeat | None] = contextvars.ContextVar("shelfsync_heartbeat", default=None)


def beat(for_s: float = 0.0) -> None:
    """``Heartbeat.beat`` of the job loop this task runs, if any (an admin request's task has none)."""
    heartbeat = BEATING.get()
    if heartbeat is not None:
        heartbeat.beat(for_s)
