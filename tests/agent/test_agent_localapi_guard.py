"""The local API at its limit of connections answers every handheld it turns away, never cuts one off.

At ``connections_max`` the connection idle the longest gives way to a new one, and when every one is busy the new
one is refused ``503``. A keep-alive connection that gave way between two requests was closed without a word, and a
refused one was closed straight after its ``503``: a handheld sending its next request just then (a scan: a POST,
which no browser sends again by itself) lost it to an end of file or a reset. Real HTTP on 127.0.0.1, raw sockets,
the real server and guard, a small limit to keep it cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent.localapi import LocalApiServer, guard
from tests.agent.localapi_helpers import local_api

SLOTS = 3
STEP_TIMEOUT_S = 10.0


@pytest.fixture
async def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalApiServer]:
    # Bodies on their way keep every connection busy here however long the test takes; connections whose bodies
    # stall giving way is test_agent_localapi_lan's.
    monkeypatch.setattr(guard, "BODY_STALL_S", 3600.0)
    async with local_api(tmp_path, SLOTS) as running:
        yield running


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """What the server sent until it closed; what came before a reset, if it reset the connection."""
    got = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while chunk := await reader.read(65536):
                got += chunk
    return got


async def _after_one_request(server: LocalApiServer) -> Conn:
    """A keep-alive connection whose first request was answered whole: idle between two requests."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT_S)
    assert head.startswith(b"HTTP/1.1 401 "), head  # answered (no sign-in), and kept alive
    length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
    await asyncio.wait_for(reader.readexactly(length), STEP_TIMEOUT_S)
    return reader, writer


async def _busy(server: LocalApiServer, count: int) -> list[Conn]:
    """``count`` connections each in the middle of a request (a sign-in whose body is still on its way)."""
    held = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        held.append((reader, writer))
    return held


async def _until_every_connection_is_busy(server: LocalApiServer) -> None:
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while server.guard.open_count < SLOTS or any(h.idle for h in list(server.guard._open)):
            await asyncio.sleep(0.02)


def _assert_turned_away(answer: bytes) -> None:
    head = answer.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0].startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in head, answer
    assert b"Connection: close" in head and b"as many devices as it can" in answer, answer


def _close(*conns: Conn) -> None:
    for _, writer in conns:
        writer.close()


async def test_an_idle_keep_alive_connection_that_gives_way_answers_the_next_request_503(
    server: LocalApiServer,
) -> None:
    """A handheld's connection idle between two scans gave way to a new one without a word; the next scan it sent
    before it saw the close was lost to an end of file or a reset. It is answered 503 with Retry-After now."""
    kept_alive = await _after_one_request(server)
    busy = await _busy(server, SLOTS)  # the third makes the idle one give way
    await _until_every_connection_is_busy(server)
    kept_alive[1].write(b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # it has not read the close yet
    _assert_turned_away(await _read_all(kept_alive[0]))
    _close(kept_alive, *busy)


async def test_a_scan_arriving_as_its_keep_alive_connection_gives_way_is_answered_503(
    server: LocalApiServer,
) -> None:
    """A handheld's next scan is on its way (its head has begun to arrive) when its connection gives way: the scan
    is answered 503 with Retry-After (the page sends it again), not cut off under it."""
    reader, writer = await _after_one_request(server)
    writer.write(b"POST /api/v1/sessions/1/scans HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    await writer.drain()
    busy = await _busy(server, SLOTS)
    await _until_every_connection_is_busy(server)
    writer.write(b'Content-Type: application/json\r\nContent-Length: 15\r\n\r\n{"code": "123"}')
    _assert_turned_away(await _read_all(reader))
    _close((reader, writer), *busy)


async def _send_whole_scan(server: LocalApiServer) -> Conn:
    """A new connection that sends a 900 KiB scan whole before it reads anything."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = b'{"code": "' + b"1" * (900 * 1024) + b'"}'
    writer.write(
        b"POST /api/v1/sessions/1/scans HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await asyncio.wait_for(writer.drain(), STEP_TIMEOUT_S)
    return reader, writer


async def test_a_refused_handheld_that_sends_its_whole_scan_first_reads_its_503(server: LocalApiServer) -> None:
    """Every connection busy, a new one is refused 503 and was closed at once, its request unread: the kernel reset
    it, and a client that sends its whole request before it reads failed on the reset, never reading the 503. The
    refused connection now drops what its client sends until the client closes (a second at most)."""
    busy = await _busy(server, SLOTS)
    await _until_every_connection_is_busy(server)
    reader, writer = await _send_whole_scan(server)  # a reset: ConnectionResetError
    _assert_turned_away(await _read_all(reader))
    _close((reader, writer), *busy)


async def test_past_the_refusals_lingering_the_oldest_closes_and_a_new_client_still_reads_its_503(
    server: LocalApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most REFUSED_LINGER_MAX refused connections linger at once (their files come out of the agent's); past
    that, the one that has lingered the longest (its client had the most time to read its answer) closes to make
    room, and the new one lingers: its client, still sending, reads its 503 rather than a reset."""
    monkeypatch.setattr(guard, "REFUSED_LINGER_MAX", 2)
    monkeypatch.setattr(guard, "REFUSED_LINGER_S", STEP_TIMEOUT_S)  # they linger until their clients close
    busy = await _busy(server, SLOTS)
    await _until_every_connection_is_busy(server)
    lingering = []
    for _ in range(2):  # refused; their clients read the answer's head and hold on
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT_S)
        assert head.startswith(b"HTTP/1.1 503 "), head
        lingering.append((reader, writer))
    reader, writer = await _send_whole_scan(server)
    _assert_turned_away(await _read_all(reader))
    oldest = await _read_all(lingering[0][0])  # closed by the agent to keep the bound, its answer whole before
    assert oldest.endswith(b"}"), oldest
    _close((reader, writer), *lingering, *busy)


async def test_a_request_while_the_agent_shuts_down_is_told_when_to_try_again(
    server: LocalApiServer, tmp_path: Path
) -> None:
    """The ``503`` of an agent shutting down (its stores closing) had no ``Retry-After``: the handheld page showed it
    as an error, and the scan it carried was not sent again once the agent was back. It says ``Retry-After: 1`` now,
    as the guard's does, which the page waits out and sends the scan again."""
    sessions = server.context.sessions
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}"
        async with http.post(f"{base}/api/v1/login", json={"staff": "ana", "pin": "4711"}) as resp:
            token = (await resp.json())["token"]
        await sessions.store.close()  # the agent is stopping: its session store closes first
        async with http.get(f"{base}/api/v1/sessions", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert (resp.status, resp.headers.get("Retry-After")) == (503, "1")
            assert (await resp.json())["error"]["message"] == "the agent is shutting down; try again shortly"
