"""The caps on CSV downloads running at once (hub/exportslots.py), over real HTTP on a real SQLite file."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub import HubStore
from hub.exportslots import SLOTS_KEY
from tests.harness.inprocess import ServedHub, hub_in_process
from tests.hub.test_csv_exports import Till

BOUND_S = 10.0
EVENTS = 30_000  # a ledger far larger than what a client that reads nothing lets the sockets hold


async def open_download(hub: ServedHub, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Start a ledger download and read only its status line: the hub's handler stays on it, writing."""
    sock = socket.create_connection(("127.0.0.1", hub.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow client: little room to write into
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(
        f"GET /v1/ledger?format=csv HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    async with asyncio.timeout(BOUND_S):
        status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 200"), status
    return reader, writer


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[ServedHub]:
    async with hub_in_process(tmp_path / "hub.db", export_max_per_credential=1, export_max=2) as served:
        yield served


async def seed(store: HubStore) -> None:
    _, token = await store.add_agent(["S001"])
    who = await store.authenticate(token)
    assert who is not None
    till = Till(store, who)
    for start in range(0, EVENTS, 1_000):
        await till.record(*[("S001", "receive", 1, f"SKU-{start + i:05d}") for i in range(1_000)])


async def test_downloads_past_the_caps_are_refused_until_one_ends(hub: ServedHub) -> None:
    await seed(hub.store)
    tokens = [(await hub.store.add_agent([], role="reader"))[1] for _ in range(3)]
    slots = hub.app[SLOTS_KEY]

    first = await open_download(hub, tokens[0])
    assert slots.running == 1, "the first download ended: make the ledger larger"  # still writing to a client that does not read
    again = await hub.client.get("/v1/ledger?format=csv", headers={"Authorization": f"Bearer {tokens[0]}"})
    assert again.status == 429 and again.content_type == "application/problem+json"
    assert int(again.headers["Retry-After"]) >= 1
    assert "export_max_per_credential" in (await again.json())["detail"]

    second = await open_download(hub, tokens[1])  # another credential: within the hub's cap of 2
    assert slots.running == 2, "a download ended: make the ledger larger"
    third = await hub.client.get("/v1/ledger?format=csv", headers={"Authorization": f"Bearer {tokens[2]}"})
    assert third.status == 503 and third.content_type == "application/problem+json"
    assert int(third.headers["Retry-After"]) >= 1
    assert "export_max" in (await third.json())["detail"]
    json_page = await hub.client.get("/v1/ledger", headers={"Authorization": f"Bearer {tokens[2]}"})
    assert json_page.status == 200  # JSON pages are not downloads

    for _, writer in (first, second):
        writer.close()
    async with asyncio.timeout(BOUND_S):
        while slots.running:
            await asyncio.sleep(0.01)
    after = await hub.client.get("/v1/ledger?format=csv", headers={"Authorization": f"Bearer {tokens[0]}"})
    assert after.status == 200
    assert (await after.read()).count(b"\r\n") == EVENTS + 1  # the header and every event: a whole file
