"""The local API against a hostile device on the store's Wi-Fi: what such a device could do, and can do no more.

Real HTTP on 127.0.0.1 to the real server. A device on a store network takes whatever address it likes (another
free IPv4 address of the /24, any of the 2^64 of its IPv6 network): here, the loopback network's 127.0.0.0/8, each
address bound as a connection's source.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

import agent.localapi.app as localapi_app
from agent.localapi import LocalApiServer, guard
from agent.localapi.auth import FAILURES_MAX, STAFF_FAILURES_MAX
from tests.agent.localapi_helpers import local_api

STEP_TIMEOUT_S = 10.0


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[LocalApiServer]:
    async with local_api(tmp_path, 64) as running:
        yield running


async def _sign_in(server: LocalApiServer, pin: str, source: str) -> int:
    """The status of ana's sign-in with ``pin`` from the address ``source``."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    timeout = aiohttp.ClientTimeout(total=STEP_TIMEOUT_S)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        http.post(f"{server.url}/api/v1/login", json={"staff": "ana", "pin": pin}) as answer,
    ):
        return answer.status


async def test_guessing_one_staff_ids_pin_from_ever_new_addresses_is_braked(server: LocalApiServer) -> None:
    assert await _sign_in(server, "4711", "127.0.0.1") == 200  # ana's own handheld, before anyone guesses
    answers = [await _sign_in(server, f"{n:04d}", f"127.0.1.{n + 1}") for n in range(STAFF_FAILURES_MAX + 3)]
    # Each address had one wrong PIN: the per-device brake alone let a device with many addresses guess for ever
    # (a 4-digit PIN fell in minutes). Past the staff id's budget, every further guess from a new address waits.
    assert answers[:STAFF_FAILURES_MAX] == [401] * STAFF_FAILURES_MAX
    assert answers[STAFF_FAILURES_MAX:] == [429] * 3
    assert await _sign_in(server, "4711", "127.0.2.1") == 429  # even the right PIN, from a device never signed in on
    assert await _sign_in(server, "4711", "127.0.0.1") == 200  # ana's own handheld signs in as before


async def test_a_device_cutting_its_request_body_off_is_one_line_in_the_log_not_a_traceback(
    server: LocalApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the server is reading the body
        writer.transport.abort()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while not any("cut off" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.05)
    assert await _sign_in(server, "4711", "127.0.0.1") == 200  # serving on
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    cut = [r.getMessage() for r in caplog.records if "cut off" in r.getMessage()]
    assert len(cut) == 1, cut  # one line, counted (agent.localapi.guard), however many devices do it
    assert "127.0.0.1" in cut[0] and "POST /api/v1/login" in cut[0], cut


@pytest.mark.parametrize("typed", ["٤٧١١", "۴۷۱۱", "４７１１"], ids=["arabic-indic", "persian", "full-width"])
async def test_a_pin_typed_on_a_keyboard_of_another_scripts_digits_signs_in(server: LocalApiServer, typed: str) -> None:
    """The PIN field asks a phone for its numeric keyboard, which in an Arabic or Persian locale types its own
    digits: ana's 4711 typed so was 'unknown staff id or wrong PIN', and she could not sign in at all."""
    assert await _sign_in(server, typed, "127.0.0.1") == 200
    assert await _sign_in(server, "٤٧١٢", "127.0.0.1") == 401  # a wrong PIN in those digits is still wrong


async def test_the_page_may_be_framed_by_no_page_in_a_browser_without_frame_ancestors_either(
    server: LocalApiServer,
) -> None:
    """CSP's frame-ancestors keeps another site from drawing the handheld page under its own (clickjacking: a tap
    on its button lands on Close or Yes) in a current browser; the WebView of an older handheld scanner knows only
    X-Frame-Options, and the page did not send it."""
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/static/handheld.js", "/api/v1/me", "/no-such-page"):
            async with http.get(server.url + path) as answer:
                assert answer.headers.get("X-Frame-Options") == "DENY", (path, dict(answer.headers))
                assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]


async def test_connections_waiting_for_bodies_that_never_come_give_way_to_a_handheld(tmp_path: Path) -> None:
    """One device opened as many connections as the local API holds, each with a sign-in's head and one byte of
    its body, and opened them again as each was cut off at the body's deadline (15 s): every handheld was
    answered 503 for as long as it went on. Now, every connection busy, the one that has waited the longest for
    its body (past guard.BODY_STALL_S) gives way to the new one, answered 503 itself."""
    slots = 3
    async with local_api(tmp_path, slots) as running:
        held = []
        for _ in range(slots):
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            writer.write(
                b"POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            await writer.drain()
            held.append((reader, writer))
        async with asyncio.timeout(STEP_TIMEOUT_S):  # each is waiting for its body, past the stall's mark
            while running.guard.open_count < slots or not all(
                h.body_since is not None and h.body_since <= time.monotonic() - guard.BODY_STALL_S
                for h in list(running.guard._open)
            ):
                await asyncio.sleep(0.05)
        assert await _sign_in(running, "4711", "127.0.0.1") == 200
        first = await asyncio.wait_for(held[0][0].read(), STEP_TIMEOUT_S)  # the first to wait gave way
        assert first.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in first, first
        for _, writer in held:
            writer.close()


async def test_sign_ins_refused_while_a_device_waits_are_counted_in_one_log_line_not_one_each(
    server: LocalApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A device that keeps sending sign-ins while it must wait costs the agent no hash, so it sends thousands a
    second: each wrote a WARNING line (2,000 lines, 420 kB, in 1.1 s from one device against a real agent)."""
    caplog.set_level(logging.INFO)
    statuses = [await _sign_in(server, "0000", "127.0.0.1") for _ in range(FAILURES_MAX + 40)]
    assert statuses == [401] * FAILURES_MAX + [429] * 40
    refused = [r.getMessage() for r in caplog.records if r.name == "agent.localapi.app"]
    wrong = [m for m in refused if "wrong PIN." in m]
    waiting = [m for m in refused if "waiting" in m or "too many" in m]
    assert len(wrong) == FAILURES_MAX  # each wrong PIN, said at once: what the staff and the brake went by
    assert len(waiting) == 1, waiting  # the first refusal at once; the rest counted, at most one line a minute
    assert "127.0.0.1" in waiting[0] and "'ana'" in waiting[0], waiting


async def test_sign_ins_of_staff_ids_that_do_not_exist_are_counted_in_one_log_line(
    server: LocalApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Guesses of ever new staff ids from ever new addresses pass every brake (each costs a hash, no more): 800
    from 40 addresses in 27 s against a real agent wrote 800 WARNING lines. A wrong PIN of a configured staff id is
    still said at once, one line each."""
    caplog.set_level(logging.INFO)
    connector = aiohttp.TCPConnector(local_addr=("127.0.4.1", 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        for n in range(12):
            async with http.post(f"{server.url}/api/v1/login", json={"staff": f"guess{n}", "pin": "0000"}) as answer:
                assert answer.status == 401
    assert await _sign_in(server, "0000", "127.0.4.2") == 401
    said = [r.getMessage() for r in caplog.records if r.name == "agent.localapi.app"]
    assert [m for m in said if "'ana'" in m] == [
        "Sign-in refused for staff id 'ana' from 127.0.4.2: unknown staff id or wrong PIN."
    ]
    unknown = [m for m in said if "guess" in m]
    assert len(unknown) == 1 and "no such staff id" in unknown[0] and "127.0.4.1" in unknown[0], unknown


async def test_bodies_cut_off_at_their_deadline_are_counted_in_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A device can keep as many requests waiting for their bodies as the API holds connections, again as each is
    cut off: a log line each (256 every 15 s, for as long as it goes on)."""
    monkeypatch.setattr(localapi_app, "BODY_TIMEOUT_S", 0.5)
    caplog.set_level(logging.INFO)
    async with local_api(tmp_path, 16) as running:

        async def never_ending_body() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            writer.write(
                b"POST /api/v1/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            answer = await asyncio.wait_for(reader.read(), STEP_TIMEOUT_S)
            writer.close()
            return answer

        answers = await asyncio.gather(*(never_ending_body() for _ in range(6)))
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
    said = [r.getMessage() for r in caplog.records if r.name == "agent.localapi.app"]
    cut = [m for m in said if "did not arrive within" in m]
    assert len(cut) == 2, cut  # the first at once, the other five counted and said as the API stops
    assert "5 requests" in cut[1] and "POST /api/v1/login" in cut[1], cut


async def test_a_delivery_note_typed_full_width_or_with_an_invisible_character_is_the_same_note(
    server: LocalApiServer,
) -> None:
    """'dn-9000 ' was DN-9000 to the check that keeps one delivery from being received in two sessions, but full-width
    'ＤＮ-９０００' (an input method's) and 'DN-9000' with a zero-width space or direction mark (a paste, an RTL
    keyboard) opened a second session for the same note, and its goods were booked twice."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/api/v1/login", json={"staff": "ana", "pin": "4711"}) as answer:
            auth = {"Authorization": f"Bearer {(await answer.json())['token']}"}

        async def open_receive(ref: str) -> tuple[int, str]:
            async with http.post(
                f"{server.url}/api/v1/sessions", json={"type": "receive", "ref": ref}, headers=auth
            ) as answer:
                body = await answer.json()
                return answer.status, body["session"]["id"] if answer.status == 201 else body["error"]["message"]

        status, first = await open_receive("DN-9000")
        assert status == 201
        status, said = await open_receive("ＤＮ-９０００")
        assert status == 409 and first in said, said
        for hidden in ("DN-9000\u200b", "\u200eDN-9000"):
            status, said = await open_receive(hidden)
            assert status == 400 and "invisible character" in said, said
        async with http.post(
            f"{server.url}/api/v1/sessions/{first}/scans", json={"sku": "SKU-1", "qty": 2}, headers=auth
        ) as answer:
            assert answer.status == 201
        async with http.post(f"{server.url}/api/v1/sessions/{first}/close", json={}, headers=auth) as answer:
            assert answer.status == 200
        async with http.post(
            f"{server.url}/api/v1/sessions", json={"type": "receive", "ref": "ＤＮ-９０００"}, headers=auth
        ) as answer:
            assert answer.status == 409 and (await answer.json())["error"]["code"] == "already_received"
