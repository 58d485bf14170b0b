"""``serve``: a request in flight when the hub is told to stop still gets its answer."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from hub import HubSettings, open_store, serve
from hub.server import display_db
from hub.storage import AgentIdentity, SqliteHubStore
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
)
from tests.harness.clock import RECENT_MS

STEP_TIMEOUT_S = 20.0
WALL_MS = RECENT_MS  # inside the hub's clock window (tests/harness/clock.py)
DAY = time.strftime("%Y-%m-%d", time.gmtime(WALL_MS // 1000))


class _LogWatch(logging.Handler):
    """Resolves a future per awaited message as soon as the hub logs it."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.waiting: dict[str, asyncio.Future[str]] = {}

    def expect(self, pattern: str) -> asyncio.Future[str]:
        self.waiting[pattern] = self.loop.create_future()
        return self.waiting[pattern]

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for pattern, fut in self.waiting.items():
            if not fut.done() and re.search(pattern, message):
                fut.set_result(message)


@pytest.fixture
async def log_watch() -> AsyncIterator[_LogWatch]:
    watch = _LogWatch()
    logger = logging.getLogger("hub.server")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(old_level)


async def test_stop_finishes_the_request_in_flight_then_closes_the_store(
    tmp_path: Path, log_watch: _LogWatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "hub.db"
    async with open_store(db) as store:
        agent_id, token = await store.add_agent(["S001"])

    # Know when the request is inside its handler: the hub has checked its credential.
    in_handler = asyncio.Event()
    authenticate = SqliteHubStore.authenticate

    async def spy(self: SqliteHubStore, token: str) -> AgentIdentity | None:
        who = await authenticate(self, token)
        in_handler.set()
        return who

    monkeypatch.setattr(SqliteHubStore, "authenticate", spy)

    listening = log_watch.expect(r"hub listening on http://127\.0\.0\.1:(\d+)")
    stopping = log_watch.expect(r"hub stopping")
    stop = asyncio.Event()
    server = asyncio.create_task(serve(HubSettings(db=str(db), port=0, shutdown_timeout_s=STEP_TIMEOUT_S), stop))
    port = re.search(r":(\d+),", await asyncio.wait_for(listening, STEP_TIMEOUT_S))[1]  # type: ignore[index]

    events = tuple(
        StockEvent(
            event_id=new_event_id(),
            agent_id=agent_id,
            epoch=1,
            seq=seq,
            location="S001",
            sku="SKU-1",
            kind=Kind.RECEIVE,
            qty=1,
            occurred_at=pack_hlc(WALL_MS + seq, 0),
            wall_ms=WALL_MS + seq,
            source="scanner:door-1",
        )
        for seq in range(1, 101)
    )
    body = encode_sync_request(SyncRequest(agent_id=agent_id, epoch=1, events=events))
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:100]
        await release.wait()  # the rest arrives only after the hub has begun to stop
        yield body[100:]

    timeout = aiohttp.ClientTimeout(total=STEP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http, aiohttp.ClientSession(timeout=timeout) as kept_alive:
        async with kept_alive.get(f"http://127.0.0.1:{port}/healthz") as resp:  # leaves an idle connection open
            assert resp.status == 200
        request = asyncio.create_task(
            http.post(
                f"http://127.0.0.1:{port}/v1/sync",
                data=slow_body(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE},
            )
        )
        await asyncio.wait_for(in_handler.wait(), STEP_TIMEOUT_S)
        stop.set()
        await asyncio.wait_for(stopping, STEP_TIMEOUT_S)
        async with kept_alive.get(f"http://127.0.0.1:{port}/healthz") as resp:  # a new request while draining
            assert resp.status == 503
            assert "shutting down" in (await resp.json())["detail"]
        release.set()
        async with await asyncio.wait_for(request, STEP_TIMEOUT_S) as resp:
            assert resp.status == 200, await resp.text()
            answer = decode_sync_response(await resp.read())

    await asyncio.wait_for(server, STEP_TIMEOUT_S)
    assert answer.hwm == 100
    async with open_store(db) as reopened:  # committed, and the hub let go of the file
        assert [(c.sku, c.on_hand) for c in await reopened.counts(location="S001")] == [("SKU-1", 100)]


def test_display_db_masks_a_url_password_and_resolves_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert display_db("hub.db") == str(tmp_path / "hub.db")
    assert display_db("postgresql://hub:s3cret@127.0.0.1/hub") == "postgresql://hub:***@127.0.0.1/hub"
    assert display_db("sqlite:///var/lib/hub.db") == "sqlite:///var/lib/hub.db"
