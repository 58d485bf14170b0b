"""A hub on 127.0.0.1 over a real SQLite file, and agents that sync to it — for the feed helper's tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from hub import HubStore
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    SyncResponse,
    decode_sync_response,
    encode_sync_request,
)
from tests.harness.clock import RECENT_MS
from tests.harness.inprocess import hub_in_process
from tests.hub.event_factory import EventFactory


@dataclass
class Agent:
    """A store agent with its credential; ``sync`` sends its next events through the hub's HTTP API."""

    agent_id: str
    token: str
    events: EventFactory
    client: TestClient[Any, Any]
    at_ms: float = 0.0

    async def sync(self, *moves: tuple[Kind, int] | tuple[Kind, int, str]) -> SyncResponse:
        """Send one batch: each move is (kind, qty) or (kind, qty, sku)."""
        batch = []
        for move in moves:
            self.at_ms += 1
            sku = move[2] if len(move) == 3 else None
            batch.append(self.events(move[0], move[1], at_ms=self.at_ms, sku=sku))
        return await self.send(batch)

    async def send(self, batch: Sequence[StockEvent]) -> SyncResponse:
        """Send exactly these events (a resend, for instance)."""
        body = encode_sync_request(SyncRequest(self.agent_id, self.events.epoch, tuple(batch)))
        resp = await self.client.post(
            "/v1/sync",
            data=body,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": MSGPACK_CONTENT_TYPE},
        )
        assert resp.status == 200, await resp.text()
        return decode_sync_response(await resp.read())


@dataclass
class Hub:
    store: HubStore
    client: TestClient[Any, Any]
    reader: str  # a reader credential

    async def agent(self, location: str = "S1", sku: str = "A") -> Agent:
        agent_id, token = await self.store.add_agent([location])
        return Agent(agent_id, token, EventFactory(agent_id, 1, location, sku, base_ms=RECENT_MS), self.client)

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.reader}"}

    async def get_json(self, path: str, token: str | None = None, status: int = 200) -> Any:
        resp = await self.client.get(path, headers=self.auth(token))
        assert resp.status == status, await resp.text()
        return await resp.json()


@contextlib.asynccontextmanager
async def running_hub(tmp_path: Path, **settings: Any) -> AsyncIterator[Hub]:
    """A hub in this process over tmp_path/hub.db (``tests.harness.inprocess``), with a reader credential."""
    async with running_hub_at(tmp_path / "hub.db", **settings) as hub:
        yield hub


@contextlib.asynccontextmanager
async def running_hub_at(db: Path | str, **settings: Any) -> AsyncIterator[Hub]:
    """A hub in this process over ``db`` (a SQLite file or a PostgreSQL schema's URL), with a reader credential."""
    async with hub_in_process(db, **settings) as served:
        _, reader = await served.store.add_agent([], role="reader")
        yield Hub(served.store, served.client, reader)


def unsent_bytes(local_port: int, remote_port: int) -> int:
    """What the kernel holds unsent on the 127.0.0.1 connection local_port -> remote_port (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if (local, remote) == (local_port, remote_port):
            return int(fields[4].split(":")[0], 16)
    return 0
