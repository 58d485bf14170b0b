"""Every error answer is RFC 9457 problem details (application/problem+json), over real HTTP on 127.0.0.1 with a
real SQLite store: type (a URN of this project), title, status, detail (the one sentence), code, and the
route's own members; and the agent reads both this shape and the one older hubs send."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.huberrors import error_member, error_message
from hub import HubSettings, HubStore, create_app, problems
from hub.limits import ConnectionGuard, GuardedRunner
from protocol import MSGPACK_CONTENT_TYPE, SyncRequest, encode_sync_request
from tests.harness.inprocess import ClientFactory, hub_in_process

PROBLEM = "application/problem+json"
ANSWER_TIMEOUT_S = 10.0
POLL_S = 0.02


async def problem_of(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    """The problem details of an error answer, checked against RFC 9457 and the hub's conventions."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = json.loads(await resp.read())
    assert body["type"] == f"urn:shelfsync:problem:{code}"
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and len(body["detail"]) > 10 and "\n" not in body["detail"]
    assert "error" not in body, "the older shape is gone"
    return body


def bearer(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **more}


async def test_every_kind_of_refusal_is_problem_details(store: HubStore, make_client: ClientFactory) -> None:
    client = await make_client(rate_limit_per_s=0.5, rate_limit_burst=3)
    agent_id, agent = await store.add_agent(["S001"])
    _, reader = await store.add_agent([], role="reader")
    _, admin = await store.add_agent([], role="admin")
    msgpack = {"Content-Type": MSGPACK_CONTENT_TYPE}

    bad = await problem_of(await client.get("/v1/ledger?limit=0", headers=bearer(reader)), 400, "bad_request")
    assert "limit must be a whole number from 1 to 10000" in bad["detail"]
    unauthorized = await client.get("/v1/ledger")
    await problem_of(unauthorized, 401, "unauthorized")
    assert unauthorized.headers["WWW-Authenticate"].startswith("Bearer")
    forbidden = await problem_of(await client.put("/v1/catalog", json={"items": []}, headers=bearer(reader)), 403,
                                 "forbidden")  # fmt: skip
    assert "reader credential cannot change the catalog" in forbidden["detail"]
    await problem_of(await client.get("/v1/nowhere", headers=bearer(reader)), 404, "not_found")
    not_allowed = await client.delete("/v1/ledger", headers=bearer(reader))
    await problem_of(not_allowed, 405, "method_not_allowed")
    assert "GET" in not_allowed.headers["Allow"]
    await problem_of(await client.post("/v1/sync", data=b"{}", headers=bearer(agent, **{"Content-Type":
                     "application/json"})), 415, "unsupported_media_type")  # fmt: skip
    other = encode_sync_request(SyncRequest("agent-someone-else", 1, ()))
    wrong = await problem_of(await client.post("/v1/sync", data=other, headers=bearer(agent, **msgpack)), 403,
                             "forbidden")  # fmt: skip
    assert wrong["credential_agent_id"] == agent_id, "the route's own member beside the standard ones"
    invalid = await problem_of(await client.post("/v1/events", json={"events": [{"id": "x"}]}, headers=bearer(agent)),
                               422, "invalid_events")  # fmt: skip
    assert invalid["rejected"][0]["index"] == 0 and "missing field" in invalid["rejected"][0]["reason"]
    limited = await problem_of(await client.post("/v1/events", json={}, headers=bearer(agent)), 429, "rate_limited")
    assert "rate_limit_per_s" in limited["detail"]
    held = await problem_of(await client.post("/v1/quarantine/7", json={"action": "discard"}, headers=bearer(admin)),
                            404, "not_found")  # fmt: skip
    assert "GET /v1/quarantine lists them" in held["detail"]
    too_big = await client.post("/v1/quarantine/7", data=b"x" * 2048, headers=bearer(admin))
    await problem_of(too_big, 413, "payload_too_large")


async def test_a_database_failure_and_a_closed_store_are_problem_details(tmp_path: Path) -> None:
    async with hub_in_process(tmp_path / "hub.db") as served:
        _, reader = await served.store.add_agent([], role="reader")
        await served.store.close()
        closed = await problem_of(await served.client.get("/v1/agents", headers=bearer(reader)), 503, "unavailable")
        assert "try again" in closed["detail"]
        health = await problem_of(await served.client.get("/healthz"), 503, "unavailable")
        assert health["health"] == "unavailable" and "error" in health["db"]


async def test_a_malformed_request_is_problem_details_from_the_connection_guard(store: HubStore) -> None:
    app = create_app(store, HubSettings(db="x"))
    runner = GuardedRunner(app, ConnectionGuard(max_connections=16, header_timeout_s=5.0))
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and head.split()[1] == b"400"
        assert b"content-type: application/problem+json" in head.lower()
        problem = json.loads(body)
        assert problem["code"] == "bad_request" and problem["status"] == 400 and "not valid HTTP" in problem["detail"]
    finally:
        await runner.cleanup()


def test_the_problem_body_keeps_its_members_its_own() -> None:
    body = problems.body(409, "it was already applied; nothing was changed", rejected=[])
    assert body == {"type": "urn:shelfsync:problem:conflict", "title": problems.TITLES["conflict"], "status": 409,
                    "detail": "it was already applied; nothing was changed", "code": "conflict", "rejected": []}
    with pytest.raises(ValueError):
        problems.body(400, "x", type="https://elsewhere.example/problem")


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"type": "urn:shelfsync:problem:forbidden", "title": "t", "status": 403, "code": "forbidden",
                    "detail": "this credential belongs to agent a", "credential_agent_id": "a"}).encode(),
        json.dumps({"error": {"code": "forbidden", "message": "this credential belongs to agent a",
                              "credential_agent_id": "a"}}).encode(),  # an older hub's
    ],
)
def test_the_agent_reads_both_shapes(body: bytes) -> None:
    assert error_message(body) == "this credential belongs to agent a"
    assert error_member(body, "credential_agent_id") == "a"
    assert error_member(body, "code") == "forbidden"


def test_the_agent_shows_an_excerpt_of_anything_else() -> None:
    assert error_message(b"<html>502 Bad Gateway</html>") == "<html>502 Bad Gateway</html>"
    assert error_message(b"") == "no message"
    assert error_member(b'["a"]', "detail") is None
    assert error_message(b"x" * 1000) == "x" * 200



# --- answers from below the application: the connection guard and aiohttp's own -------------------------------


@asynccontextmanager
async def guarded(store: HubStore, max_connections: int = 16, header_timeout_s: float = 5.0) -> AsyncIterator[
        tuple[ConnectionGuard, int]]:  # fmt: skip
    """The hub's application served as ``hub serve`` serves it (hub.limits.GuardedRunner) on 127.0.0.1."""
    guard = ConnectionGuard(max_connections=max_connections, header_timeout_s=header_timeout_s)
    runner = GuardedRunner(create_app(store, HubSettings(db="x")), guard)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield guard, runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def exchange(port: int, head: bytes, *, eof: bool = False) -> bytes:
    """Send ``head`` on a new connection (then end it, with ``eof``) and read until the hub closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout=ANSWER_TIMEOUT_S)
    finally:
        writer.close()


def raw_problem(raw: bytes, status: int, code: str) -> tuple[bytes, dict[str, Any]]:
    """The head and problem details of a raw HTTP answer, checked as ``problem_of`` checks them."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split()[1] == str(status).encode(), raw[:300]
    assert b"content-type: application/problem+json" in head.lower(), raw[:300]
    problem: dict[str, Any] = json.loads(body)
    assert problem["status"] == status and problem["code"] == code and problem["type"].endswith(code)
    assert isinstance(problem["detail"], str) and len(problem["detail"]) > 10 and "\n" not in problem["detail"]
    return head, problem


async def test_an_expectation_aiohttp_refuses_before_the_app_is_problem_details(store: HubStore) -> None:
    async with guarded(store) as (_, port):
        raw = await exchange(port, b"PUT /v1/catalog HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nConnection: close\r\n"
                                   b"Content-Length: 2\r\n\r\n{}")  # fmt: skip
        _, problem = raw_problem(raw, 417, "http_417")
        assert "100-continue" in problem["detail"] and "200-ok" in problem["detail"]
        raw = await exchange(port, b"GET /v1/nowhere HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                   b"Connection: close\r\n\r\n")  # fmt: skip
        assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        raw_problem(raw.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n"), 404, "not_found")


async def test_a_client_gone_before_its_100_continue_is_counted_not_a_traceback(
    store: HubStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    attempts = 5
    _, admin = await store.add_agent([], role="admin")  # a head the hub finds good: it sends 100 Continue (hub.heads)
    async with guarded(store) as (guard, port):
        head = (f"PUT /v1/catalog HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nExpect: 100-continue\r\n"
                "Content-Length: 10\r\n\r\n").encode()  # fmt: skip
        answers = [await exchange(port, head, eof=True) for _ in range(attempts)]
        continued = sum(a.startswith(b"HTTP/1.1 100 Continue") for a in answers)
        for _ in range(int(ANSWER_TIMEOUT_S / POLL_S)):  # one gone while its credential was looked up: counted
            if guard.lost.total + continued == attempts:  # once its 100 Continue finds it gone, after its client
                break  # saw the connection close
            await asyncio.sleep(POLL_S)
        assert guard.lost.total + continued == attempts, "each either lost before its answer (counted) or answered"
        guard.flush()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert "Traceback" not in caplog.text
    if guard.lost.total:
        assert "lost 1 connection before its answer" in caplog.text


async def test_a_slow_head_and_a_full_house_are_problem_details(store: HubStore) -> None:
    async with guarded(store, max_connections=1, header_timeout_s=0.3) as (guard, port):
        raw = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost")  # the head never ends
        raw_problem(raw, 408, "request_timeout")
        _, writer = await asyncio.open_connection("127.0.0.1", port)  # busy: its body is still coming
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # public: read
            await writer.drain()
            for _ in range(int(ANSWER_TIMEOUT_S / POLL_S)):
                if guard.open_count == 1 and guard.idle_count == 0:
                    break
                await asyncio.sleep(POLL_S)
            assert guard.open_count == 1 and guard.idle_count == 0, "the first connection is busy"
            head, _ = raw_problem(await exchange(port, b""), 503, "unavailable")
            assert b"Retry-After: 1" in head.split(b"\r\n")
        finally:
            writer.close()


async def test_the_sign_in_form_answers_a_script_with_problem_details_and_a_browser_with_its_page(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    for_script = await client.post("/dashboard/sign-in", data={"token": "nope"}, allow_redirects=False)
    refused = await problem_of(for_script, 403, "forbidden")
    assert "unknown or has been revoked" in refused["detail"]
    await problem_of(await client.post("/dashboard/sign-in", data={}, allow_redirects=False), 400, "bad_request")
    for_browser = await client.post("/dashboard/sign-in", data={"token": "nope"}, allow_redirects=False,
                                    headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})  # fmt: skip
    assert for_browser.status == 403 and for_browser.content_type == "text/html"
    assert "unknown or has been revoked" in await for_browser.text()
