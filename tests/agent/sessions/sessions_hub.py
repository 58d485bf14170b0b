"""A real hub for the session tests: SqliteHubStore in tmp_path and its real app over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from agent.outbox import Outbox
from agent.replicator import Replicator
from hub import HubStore
from tests.harness.inprocess import hub_in_process

SYNC_WAIT_S = 20.0


class ClockMs:
    """A wall clock the test moves by hand (milliseconds)."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@asynccontextmanager
async def running_hub(tmp_path: Path) -> AsyncIterator[tuple[HubStore, str]]:
    """(store, url) of a hub in this process (``tests.harness.inprocess``) serving until the block ends."""
    async with hub_in_process(tmp_path / "hub.db") as served:
        yield served.store, served.url


async def sync(outbox: Outbox, url: str, token: str) -> None:
    """Send everything pending to the hub with the real replicator; return once it is acknowledged."""
    async with Replicator(outbox, url, token, tick_s=0.05, retry_base_s=0.05, retry_max_s=0.2) as replicator:
        await asyncio.wait_for(replicator.wait_synced(), SYNC_WAIT_S)
