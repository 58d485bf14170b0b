"""A device that trickles a request body cannot hold the local API's connections: its body has a deadline.

Found by attacking the API from outside: connections that sent a head and then one byte of body every few
seconds were never cut off, and once they filled every slot (guard.CONNECTIONS_MAX) every handheld got 503 for
as long as they dripped. Real HTTP on 127.0.0.1, the real server and guard, a small limit to keep it cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import agent.localapi.app as localapi_app
from agent.localapi import LocalApiServer, guard
from tests.agent.localapi_helpers import local_api

SLOTS = 4
DEADLINE_S = 1.0
WAIT_S = 10.0  # well past the deadline; without one the slots stay taken for the whole drip


@pytest.fixture
async def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalApiServer]:
    monkeypatch.setattr(localapi_app, "BODY_TIMEOUT_S", DEADLINE_S, raising=False)
    monkeypatch.setattr(guard, "BODY_STALL_S", 3600.0)  # the deadline alone frees them here (stalls: test_..._lan)
    async with local_api(tmp_path, SLOTS) as running:
        yield running


async def _drip(server: LocalApiServer) -> bytes:
    """Send a sign-in's head and then its body one byte at a time, until the server answers and closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(int(WAIT_S * 10)):
                await asyncio.sleep(0.1)
                writer.write(b" ")
                await writer.drain()

    dripping = asyncio.create_task(trickle())
    try:
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(WAIT_S + 2):
                return await reader.read()  # to the end: the server closes the connection
        return b""
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_trickled_body_is_cut_off_and_handhelds_get_in_again(server: LocalApiServer) -> None:
    drips = [asyncio.create_task(_drip(server)) for _ in range(SLOTS)]
    async with asyncio.timeout(WAIT_S):
        while server.guard.open_count < SLOTS:
            await asyncio.sleep(0.02)
    started = time.monotonic()
    statuses = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while time.monotonic() - started < WAIT_S:
            async with http.get(server.url + "/healthz") as resp:
                statuses.append(resp.status)
                if resp.status == 200:
                    break
            await asyncio.sleep(0.2)
    waited_s = time.monotonic() - started
    answers = await asyncio.gather(*drips)
    closed_s = time.monotonic() - started  # the connections are closed, not left draining for aiohttp's 10 s
    assert statuses[-1] == 200, f"every slot stayed taken by trickled bodies for {WAIT_S} s: {statuses[-3:]}"
    assert waited_s < DEADLINE_S + 5
    assert closed_s < DEADLINE_S + 5  # guard.LINGER_S (1 s) included
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert b'"request_timeout"' in answer and b"did not arrive within 1 s" in answer
