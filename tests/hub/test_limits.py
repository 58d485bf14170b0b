"""The hub's guards for the open internet, in process: budgets, counts in the log, masked secrets, refusals.

The black-box attacks on a real hub process are in tests/adversarial/test_hub_exposure.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from hub import HubSettings, HubStore, create_app, limits, open_store, serve
from hub import server as server_module
from hub.auth import PUBLIC_ROUTES_KEY
from hub.config import ConfigError, settings_from_mapping
from hub.limits import (
    ACCEPT_SLACK,
    CONNECTIONS_MIN,
    FD_RESERVE,
    REFUSED_LINGER_MAX,
    ConnectionGuard,
    fd_budget,
    parse_error_reason,
)
from hub.openapi import API_VERSION
from hub.server import secrets_of
from hub.webhook_spec import WebhookSpec
from protocol.logsafety import RepeatLog, SecretFilter, secrets_masked
from protocol.routes import API_VERSION_HEADER, HUB_ID_HEADER
from tests.harness.inprocess import serve_app
from tests.harness.net import free_port

STEP_TIMEOUT_S = 20.0
TOKEN = "tok-0123456789abcdef-secret"


# --- RepeatLog ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_a_flood_is_one_line_at_once_then_one_count_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    repeats = RepeatLog(logging.getLogger("test.repeat"), "refused", "malformed request", clock_s=clock)
    caplog.set_level(logging.INFO, "test.repeat")
    assert repeats.record("10.0.0.1", "Bad status line") is True
    for i in range(1233):
        clock.now_s += 0.01
        assert repeats.record("10.0.0.2", f"Invalid header value char {i}") is False
    assert [r.getMessage() for r in caplog.records] == [
        "refused 1 malformed request in the last 60 s, last from 10.0.0.1: Bad status line"
    ]
    clock.now_s += 60.0
    repeats.record("10.0.0.3", "Invalid method encountered")
    assert caplog.records[-1].getMessage() == (
        "refused 1,234 malformed requests in the last 60 s, last from 10.0.0.3: Invalid method encountered"
    )
    repeats.flush()  # nothing pending: nothing logged
    assert len(caplog.records) == 2 and repeats.total == 1235


def test_a_count_is_flushed_by_a_timer_when_the_flood_stops(caplog: pytest.LogCaptureFixture) -> None:
    async def flood() -> None:
        repeats = RepeatLog(logging.getLogger("test.repeat"), "refused", "thing", interval_s=0.2)
        for _ in range(5):
            repeats.record("10.0.0.1", "why")
        await asyncio.sleep(0.5)  # the interval's timer logs the four still pending; nothing else will

    caplog.set_level(logging.INFO, "test.repeat")
    asyncio.run(flood())
    assert [r.getMessage().split(" in the last")[0] for r in caplog.records] == ["refused 1 thing", "refused 4 things"]


def test_detail_is_one_printable_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "test.repeat")
    repeats = RepeatLog(logging.getLogger("test.repeat"), "refused", "request", clock_s=FakeClock())
    repeats.record("x", "first\x1b[31m\nINFO forged line")
    assert [r.getMessage() for r in caplog.records] == ["refused 1 request in the last 60 s, last from x: first?[31m"]


# --- SecretFilter ---------------------------------------------------------------------------


def test_the_secret_filter_masks_tokens_passwords_and_literals() -> None:
    masking = SecretFilter(["pg-secret", "hook-secret-1234"])
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "got %s from %s with %s", (f"Bearer {TOKEN}", "postgresql://u:pw@db/x",
                                                                   "hook-secret-1234"), None,
    )  # fmt: skip
    try:
        raise ValueError(f"connecting to postgres://hub:pg-secret@10.0.0.9/hub failed; Authorization: bearer {TOKEN}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert masking.filter(record)
    text = logging.Formatter().format(record)
    for secret in (TOKEN, "pg-secret", "hook-secret-1234", ":pw@"):
        assert secret not in text
    assert "Bearer ***" in text and "postgresql://u:***@db/x" in text and "ValueError" in text


def test_secrets_of_settings_are_the_db_password_and_webhook_secrets() -> None:
    settings = HubSettings(db="postgresql://hub:p%40ss-word@db.example/hub")
    assert set(secrets_of(settings)) == {"p%40ss-word", "p@ss-word"}
    assert secrets_of(HubSettings(db="/var/lib/hub.db")) == []
    hook = WebhookSpec("shop", "https://shop:pw%2F1@shop.example/h?key=a%2Bb", "hook-secret-1234")
    assert set(secrets_of(HubSettings(db="/var/lib/hub.db", webhooks=(hook,)))) == {
        "hook-secret-1234", "pw%2F1", "pw/1", "key=a%2Bb", "key=a+b"
    }  # fmt: skip


def test_secrets_masked_covers_every_root_handler_and_is_removed_after(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with secrets_masked(["very-secret-password"]):
        logging.getLogger("test.mask").info("the url is postgresql://u:very-secret-password@h/db")
    logging.getLogger("test.mask").info("after: very-secret-password")
    assert "very-secret-password" not in caplog.records[0].getMessage()
    assert "very-secret-password" in caplog.records[1].getMessage()


# --- budgets and the guard ---------------------------------------------------------------------


def test_the_connection_budget_keeps_files_for_the_database_and_a_burst_of_accepts() -> None:
    auto = fd_budget(0, soft_limit=1024, in_use=10)
    assert auto.max_connections == 1024 - 10 - FD_RESERVE - ACCEPT_SLACK - REFUSED_LINGER_MAX
    assert auto.clipped_from is None and "1024" in auto.describe()
    assert fd_budget(100, soft_limit=1024, in_use=10).max_connections == 100
    clipped = fd_budget(5000, soft_limit=1024, in_use=10)
    assert clipped.max_connections == auto.max_connections and clipped.clipped_from == 5000
    assert fd_budget(0, soft_limit=200, in_use=10).max_connections == CONNECTIONS_MIN


class FakeConnection:
    def __init__(self, name: str) -> None:
        self.remote = name
        self.closed = False

    def give_way(self) -> None:
        self.closed = True


def test_the_guard_closes_the_connection_idle_the_longest_and_refuses_when_all_are_busy() -> None:
    guard = ConnectionGuard(max_connections=3, header_timeout_s=10.0)
    a, b, c, d, e = (FakeConnection(n) for n in "abcde")
    for conn in (a, b, c):
        assert guard.opened(conn)  # type: ignore[arg-type]
    guard.busy(a)  # type: ignore[arg-type]
    guard.idle(b)  # type: ignore[arg-type]  (b answered a request: now idle the shortest)
    assert guard.opened(d)  # type: ignore[arg-type]
    assert c.closed and not a.closed and not b.closed  # c was idle the longest
    for conn in (b, d):
        guard.busy(conn)  # type: ignore[arg-type]
    assert not guard.opened(e)  # type: ignore[arg-type]
    assert guard.open_count == 3 and guard.refused.total == 1 and guard.evicted.total == 1


def test_a_parse_error_is_described_without_the_bytes_that_caused_it() -> None:
    assert parse_error_reason(None, "Invalid HTTP header: b'Authorization: Bearer abc123'") == "Invalid HTTP header"
    assert parse_error_reason(None, "Bad status line 'GET /?token=abc123 HTTP/7'") == "Bad status line"
    assert parse_error_reason(None, "Got more than 8190 bytes when reading: b'Authorization: x'.") == (
        "Got more than 8190 bytes when reading"
    )
    duplicate = "Duplicate 'Content-Length' header found"
    assert parse_error_reason(None, duplicate + ".") == duplicate
    assert parse_error_reason(None, "") == "not an HTTP request"


# --- settings ---------------------------------------------------------------------------------------


def test_the_new_settings_have_defaults_bounds_and_take_whole_numbers() -> None:
    table = {"db": "x", "header_timeout_s": 5, "keepalive_timeout_s": 45, "max_connections": 9}
    settings = settings_from_mapping(table)
    assert (settings.header_timeout_s, settings.keepalive_timeout_s, settings.max_connections) == (5.0, 45.0, 9)
    defaults = HubSettings()
    assert (defaults.header_timeout_s, defaults.keepalive_timeout_s, defaults.max_connections) == (10.0, 30.0, 0)
    for key, value in (("header_timeout_s", 0), ("keepalive_timeout_s", 7200), ("max_connections", -1)):
        with pytest.raises(ConfigError, match=key):
            settings_from_mapping({"db": "x", key: value})


# --- the app: compressed and malformed bodies, floods of failures ------------------------------------------


@pytest.fixture
async def app_client(store: HubStore) -> AsyncIterator[tuple[web.Application, TestClient[Any, Any]]]:
    app = create_app(store, HubSettings(db="unused", rate_limit_per_s=0))

    async def boom(request: web.Request) -> web.Response:
        raise KeyError("a bug")

    app.router.add_get("/boom", boom, name="healthz_boom")
    app[PUBLIC_ROUTES_KEY] = app[PUBLIC_ROUTES_KEY] | {"healthz_boom"}
    async with serve_app(app) as served:
        yield app, served.client


async def test_a_compressed_body_is_refused_after_authentication_and_never_inflated(
    store: HubStore, app_client: tuple[web.Application, TestClient[Any, Any]]
) -> None:
    _, client = app_client
    _agent_id, token = await store.add_agent(["S001"])
    bomb = gzip.compress(bytes(10 * 1024 * 1024))
    headers = {"Content-Type": "application/msgpack", "Content-Encoding": "gzip"}
    resp = await client.post("/v1/sync", data=bomb, headers=headers)
    assert resp.status == 401  # no credential: refused before anything looks at the body
    resp = await client.post("/v1/sync", data=bomb, headers={**headers, "Authorization": f"Bearer {token}"})
    assert resp.status == 415
    message = (await resp.json())["detail"]
    assert message == (
        "this hub takes request bodies without compression, got Content-Encoding 'gzip'; send the body uncompressed"
    )


async def test_unexpected_errors_and_unknown_credentials_are_counted_not_logged_each(
    app_client: tuple[web.Application, TestClient[Any, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    _app, client = app_client
    caplog.set_level(logging.INFO, "hub")
    for _ in range(20):
        assert (await client.get("/boom")).status == 500
        assert (await client.get("/v1/ledger", headers={"Authorization": f"Bearer {TOKEN}"})).status == 401
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and "failed 1 request with an unexpected error" in tracebacks[0].getMessage()
    assert len(caplog.records) == 2  # the first of each, at once
    await client.close()  # the app's cleanup logs the counts still pending
    messages = [r.getMessage() for r in caplog.records]
    assert any("failed 19 requests with an unexpected error" in m for m in messages)
    assert any("refused 19 requests with an unknown or revoked credential" in m for m in messages)
    assert all(TOKEN not in m for m in messages)


# --- serve: the guard in a real server ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _serving(tmp_path: Path, header_timeout_s: float, **more: Any) -> AsyncIterator[tuple[str, str, int]]:
    """A hub (``serve``) of three connections on 127.0.0.1: an agent's token, its URL and its port; ``more``: other
    settings."""
    db = tmp_path / "hub.db"
    async with open_store(db) as s:
        _agent_id, token = await s.add_agent(["S001"])
    port = free_port()
    settings = HubSettings(
        db=str(db),
        port=port,
        max_connections=3,
        header_timeout_s=header_timeout_s,
        **{"body_timeout_s": 3600.0, **more},
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    try:
        yield token, url, port
    finally:
        stop.set()
        await asyncio.wait_for(task, STEP_TIMEOUT_S)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, str, int]]:
    async with _serving(tmp_path, header_timeout_s=0.5) as hub:
        yield hub


@pytest.fixture
async def served_patient(tmp_path: Path) -> AsyncIterator[tuple[str, str, int]]:
    """As ``served``, with a request head given all the test's time (a head held back is not answered 408)."""
    async with _serving(tmp_path, header_timeout_s=STEP_TIMEOUT_S) as hub:
        yield hub


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), STEP_TIMEOUT_S)


async def test_idle_connections_give_way_and_busy_ones_are_kept(served: tuple[str, str, int]) -> None:
    token, url, port = served
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]  # over the budget of 3
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as resp:
        assert resp.status == 200
    busy = []
    for _ in range(3):  # each holds a connection in its body read (body_timeout_s is an hour)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/sync HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\nExpect: 100-continue\r\n"
            "Content-Type: application/msgpack\r\nContent-Length: 1000\r\n\r\n".encode()
        )
        await writer.drain()  # "100 Continue" says the hub is handling the request: the connection is busy
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT_S) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"x")
        busy.append((reader, writer))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await _read_all(reader)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"limit of open connections" in answer
    for r, _w in idle:  # every idle one gave way, and says why to a client that sends a request on it now
        given_way = await _read_all(r)
        assert given_way.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in given_way, given_way
    for _, w in busy + idle + [(reader, writer)]:
        w.close()


@pytest.mark.parametrize("path", ["/v1/changes?wait=60", "/v1/changes/stream"])
async def test_long_polls_and_streams_leave_room_for_every_other_request(
    served: tuple[str, str, int], path: str
) -> None:
    """A credential holding every connection in long-polls (or change streams) used to lock out /healthz and every
    agent: a waiting long-poll is busy, so each new connection was refused 503 for as long as they waited (for
    ever, re-polled). They may hold all but a tenth of the budget (here 2 of 3); one more is refused 503."""
    token, url, port = served
    waiting = []
    for _ in range(3):  # the budget of 3
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        await writer.drain()
        waiting.append((reader, writer))
    heads = [asyncio.ensure_future(reader.readuntil(b"\r\n\r\n")) for reader, _ in waiting]
    done, pending = await asyncio.wait(heads, timeout=STEP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    assert done, "all three were let in to wait"
    first = done.pop().result()
    if "stream" in path:  # the two streams let in may have answered their head first
        done, pending = await asyncio.wait(heads, timeout=STEP_TIMEOUT_S)
        firsts = [h.result() for h in done]
        assert sorted(h.split(b" ")[1] for h in firsts) == [b"200", b"200", b"503"], firsts
        first = next(h for h in firsts if b" 503 " in h)
    else:
        assert len(pending) == 2  # the two others wait
    assert first.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in first, first
    async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as resp:
        assert resp.status == 200
    for task in heads:
        task.cancel()
    for _, writer in waiting:
        writer.close()


async def test_a_slow_request_head_is_answered_408(served: tuple[str, str, int]) -> None:
    _token, _url, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: h\r\n")
    await writer.drain()
    answer = await _read_all(reader)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"header_timeout_s" in answer
    writer.close()


async def _hold_every_connection(
    token: str, port: int, n: int = 3
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``n`` connections each busy in a request (its body read waits: body_timeout_s is an hour)."""
    busy = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/sync HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\nExpect: 100-continue\r\n"
            "Content-Type: application/msgpack\r\nContent-Length: 1000\r\n\r\n".encode()
        )
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT_S) == b"HTTP/1.1 100 Continue\r\n\r\n"
        busy.append((reader, writer))
    return busy


async def test_a_client_over_the_connection_budget_sends_its_request_and_reads_a_503_not_a_reset(
    served: tuple[str, str, int],
) -> None:
    """Past max_connections the hub wrote its 503 and closed the connection at once, so the request the client
    sent meanwhile was answered with a reset: a client that sends its whole request before it reads (an agent's
    sync of a megabyte, asyncio's drain, http.client) failed on a reset and never read the 503 (200 clients
    against 50 connections of a hub process: 13,932 refused, 5,025 503s read). A refused connection now takes
    and drops what its client sends until the client closes (a second at most), then closes."""
    token, _url, port = served
    busy = await _hold_every_connection(token, port)
    body = bytes(1 << 20)
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/sync HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/msgpack\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await asyncio.wait_for(writer.drain(), STEP_TIMEOUT_S)  # a reset: ConnectionResetError
        answer = await _read_all(reader)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer, answer
        writer.close()
    for _, writer in busy:
        writer.close()


async def _after_one_request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A keep-alive connection whose first request was answered whole: idle between two requests."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT_S)
    assert head.startswith(b"HTTP/1.1 200 ")
    length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
    await reader.readexactly(length)
    return reader, writer


def _assert_given_way(answer: bytes) -> None:
    head = answer.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0].startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in head, answer
    assert b"Connection: close" in head and b"limit of open connections" in answer, answer


async def test_an_idle_connection_that_gives_way_answers_the_next_request_its_client_sends_503(
    served: tuple[str, str, int],
) -> None:
    """At the budget the connection idle the longest gives way. One idle between two requests of a keep-alive
    client was closed without a word, as any idle keep-alive connection may be; but its client may send its next
    request before it sees the close (it was sending it just then), and that request was lost to a reset or an
    end of file. A client library sends a GET again on a new connection then, never a POST such as /v1/sync (200
    clients against 50 connections for 10 s: 1,303 answers lost so). Such a connection is answered 503 with
    Retry-After and Connection: close before it closes, as one that has not sent a request yet: a request its
    client sends before it sees the close reads that answer."""
    token, _url, port = served
    kept_alive = await _after_one_request(port)
    fresh = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    busy = await _hold_every_connection(token, port)  # three more: the three idle ones give way
    kept_alive[1].write(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")  # its client has not read the close yet
    _assert_given_way(await _read_all(kept_alive[0]))
    for reader, _ in fresh:
        _assert_given_way(await _read_all(reader))
    for _, writer in [kept_alive, *fresh, *busy]:
        writer.close()


async def test_a_request_arriving_as_its_keep_alive_connection_gives_way_is_answered_503(
    served_patient: tuple[str, str, int],
) -> None:
    """A keep-alive client's next request is on its way (its head has begun to arrive) when its connection gives
    way: the request is answered 503 with Retry-After, not cut off with a reset under its client."""
    token, _url, port = served_patient
    reader, writer = await _after_one_request(port)
    writer.write(f"POST /v1/sync HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n".encode())
    await writer.drain()
    busy = await _hold_every_connection(token, port)  # the third makes the one idle connection give way
    writer.write(b"Content-Type: application/msgpack\r\nContent-Length: 4\r\n\r\n\x94\x00\x00\x00")
    _assert_given_way(await _read_all(reader))
    for _, w in [(reader, writer), *busy]:
        w.close()


async def test_past_the_refusals_the_hub_lingers_on_a_refused_client_still_reads_its_503(
    served: tuple[str, str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused connections linger (they drop what their client sends until it closes) so that a client sending its
    whole request first reads the 503 rather than a reset; at most REFUSED_LINGER_MAX do so at once, for the files
    the budget keeps for them. Past that, a refused connection was closed at once, and its client, still sending,
    failed on a reset and never read its 503 (a flood's first requests lost). Now the one that has lingered the
    longest (its client had the most time to read its answer) closes to make room, and the new one lingers."""
    monkeypatch.setattr(limits, "REFUSED_LINGER_MAX", 4)
    monkeypatch.setattr(limits, "REFUSED_LINGER_S", STEP_TIMEOUT_S)  # they linger until their clients close
    token, _url, port = served
    busy = await _hold_every_connection(token, port)
    lingering = []
    for _ in range(4):  # refused; their clients read the answer's head and hold on
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT_S)
        assert head.startswith(b"HTTP/1.1 503 "), head
        lingering.append((reader, writer))
    body = bytes(1 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /v1/sync HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/msgpack\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await asyncio.wait_for(writer.drain(), STEP_TIMEOUT_S)  # a reset: ConnectionResetError
    _assert_given_way(await _read_all(reader))
    oldest = await _read_all(lingering[0][0])  # closed by the hub to keep the bound, its answer whole before
    assert oldest.endswith(b"}"), oldest
    for _, w in [(reader, writer), *lingering, *busy]:
        w.close()


# --- every answer names the hub's API version, those made below the app too -------------------------------------

MALFORMED_REQUESTS: dict[str, bytes] = {  # answered 400 by aiohttp's parser, below the app
    "not HTTP": b"GARBAGE\r\n\r\n",
    "a TLS client hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),
    "a header without a colon": b"GET /healthz HTTP/1.1\r\nHost: h\r\nBad Header\r\n\r\n",
    "a request line too long": b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
    "a header too long": b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    "too many headers": b"GET /healthz HTTP/1.1\r\nHost: h\r\n"
    + b"".join(b"X-%d: y\r\n" % i for i in range(300))
    + b"\r\n",
}


def _names_version(answer: bytes, status: int, hub_id: bool = True) -> None:
    """``answer`` (raw, its head at least) has ``status`` and names the API version (and the database)."""
    lines = answer.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert lines[0].split(b" ")[1] == str(status).encode(), answer[:300]
    names = dict(line.lower().partition(b": ")[::2] for line in lines[1:])
    assert names.get(API_VERSION_HEADER.lower().encode()) == API_VERSION.encode(), answer[:400]
    assert (HUB_ID_HEADER.lower().encode() in names) is hub_id, answer[:400]


async def _answer_to(port: int, raw: bytes) -> bytes:
    """The answer's head (and what follows it in the same read) to ``raw`` sent on a new connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT_S)
    finally:
        writer.close()


@pytest.fixture
async def served_limited(tmp_path: Path) -> AsyncIterator[tuple[str, str, int]]:
    """As ``served``, with a write rate of three requests and one refused sign-in per client at once."""
    async with _serving(
        tmp_path, header_timeout_s=0.5, rate_limit_per_s=0.01, rate_limit_burst=3, refused_attempts_per_s=0.01,
        refused_attempts_burst=1,
    ) as hub:  # fmt: skip
        yield hub


async def test_every_answer_below_the_app_names_the_api_version(served_limited: tuple[str, str, int]) -> None:
    """API 1.11 names the hub's API version on every answer (Shelfsync-Api-Version), by which an agent tells an
    upgraded hub. The app's signal named it on its routes' answers, but not on those made below the app: aiohttp's
    400 to a malformed request, the connection guard's 408 to a slow head and its 503s at the connection budget."""
    token, _url, port = served_limited
    for what, raw in MALFORMED_REQUESTS.items():
        answer = await _rest_of(port, raw)
        assert b"not valid HTTP/1.1" in answer, what
        _names_version(answer, 400)
    auth = f"Authorization: Bearer {token}\r\n".encode()
    for raw, status in (
        (b"GET /nowhere HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 404),
        (b"DELETE /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 405),
        (b"PUT /v1/catalog HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}", 417),
        (b"POST /v1/sync HTTP/1.1\r\nHost: h\r\n" + auth + b"Content-Type: application/msgpack\r\n"
         b"Content-Length: 999999999\r\n\r\n", 413),
        (b"POST /v1/sync HTTP/1.1\r\nHost: h\r\n" + auth + b"Content-Type: application/msgpack\r\n"
         b"Content-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", 415),
        (b"POST /v1/sync HTTP/1.1\r\nHost: h\r\n" + auth + b"Content-Type: application/msgpack\r\n"
         b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n", 400),  # a broken chunked body
        (b"GET /healthz HTTP/1.1\r\nHost: h\r\n", 408),  # the head never ends (header_timeout_s)
    ):  # fmt: skip
        _names_version(await _answer_to(port, raw), status)
    events = b'{"events": []}'
    write = (b"POST /v1/events HTTP/1.1\r\nHost: h\r\n" + auth + b"Content-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n" % len(events) + events)  # fmt: skip
    statuses = [(await _answer_to(port, write)).split(b" ")[1] for _ in range(2)]
    assert statuses[-1] == b"429", statuses
    _names_version(await _answer_to(port, write), 429)  # the write rate
    sign_in = b"token=nope"
    form = (b"POST /dashboard/sign-in HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(sign_in) + sign_in)  # fmt: skip
    _names_version(await _answer_to(port, form), 403)
    _names_version(await _answer_to(port, form), 429)  # the client's refused attempts


async def test_the_answers_at_the_connection_budget_name_the_api_version(served: tuple[str, str, int]) -> None:
    token, _url, port = served
    idle = await asyncio.open_connection("127.0.0.1", port)
    busy = await _hold_every_connection(token, port)
    _names_version(await _read_all(idle[0]), 503)  # given way to a new connection
    _names_version(await _answer_to(port, b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"), 503)  # over the budget
    for _, writer in [idle, *busy]:
        writer.close()


async def test_a_body_too_slow_and_a_long_poll_past_its_share_name_the_api_version(tmp_path: Path) -> None:
    async with _serving(tmp_path, header_timeout_s=5.0, body_timeout_s=0.3) as (token, _url, port):
        auth = f"Authorization: Bearer {token}\r\n".encode()
        slow = (b"POST /v1/sync HTTP/1.1\r\nHost: h\r\n" + auth + b"Content-Type: application/msgpack\r\n"
                b"Content-Length: 100\r\n\r\nab")  # fmt: skip
        _names_version(await _answer_to(port, slow), 408)
        poll = b"GET /v1/changes?wait=60 HTTP/1.1\r\nHost: h\r\n" + auth + b"\r\n"
        waiting = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for _, writer in waiting:
            writer.write(poll)
        heads = [asyncio.ensure_future(reader.readuntil(b"\r\n\r\n")) for reader, _ in waiting]
        done, _ = await asyncio.wait(heads, timeout=STEP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        _names_version(done.pop().result(), 503)  # all but a tenth of the budget wait already
        for task in heads:
            task.cancel()
        for _, writer in waiting:
            writer.close()


async def test_a_hub_still_opening_its_database_names_the_api_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until its database is open the hub answers from hub.starting (/livez 200, anything else 503): those answers
    name the API version too (the database's id is not known yet)."""
    opening = asyncio.Event()
    real_open = server_module.open_store

    @contextlib.asynccontextmanager
    async def held_open(*args: Any, **kwargs: Any) -> AsyncIterator[HubStore]:
        await opening.wait()
        async with real_open(*args, **kwargs) as store:
            yield store

    monkeypatch.setattr(server_module, "open_store", held_open)
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(HubSettings(db=str(tmp_path / "hub.db"), port=port), stop))
    try:
        for _ in range(400):
            with contextlib.suppress(OSError):
                answer = await _answer_to(port, b"GET /livez HTTP/1.1\r\nHost: h\r\n\r\n")
                break
            await asyncio.sleep(0.05)
        _names_version(answer, 200, hub_id=False)
        _names_version(await _answer_to(port, b"GET /v1/ledger HTTP/1.1\r\nHost: h\r\n\r\n"), 503, hub_id=False)
        _names_version(await _rest_of(port, MALFORMED_REQUESTS["not HTTP"]), 400, hub_id=False)
    finally:
        opening.set()
        stop.set()
        await asyncio.wait_for(task, STEP_TIMEOUT_S)


async def _rest_of(port: int, raw: bytes) -> bytes:
    """The whole answer to ``raw`` on a new connection, read until the hub closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return await _read_all(reader)
    finally:
        writer.close()
