"""Every route that takes a body decides from its head what its body cannot change (hub/heads.py).

Real HTTP on 127.0.0.1 to a hub over a real SQLite file, with raw sockets that send a request's head asking
``Expect: 100-continue`` and wait: a write route refuses a revoked credential, a reader's or an agent's credential
where it takes another role, a body over its limit, compressed or of the wrong type, before ``100 Continue`` and
with the problem the same request gets after its body; a draining hub's 503 says when to come back
(``Retry-After``), from the head too; a database failing at the head's credential lookup is answered 503 from the
head, not after the body.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from hub.app import SETTINGS_KEY
from hub.catchup import SLOTS_KEY
from hub.drain import GATE_KEY
from hub.starting import create_starting_app
from hub.storage.base import AgentIdentity, StoreClosed, StoreError
from hub.storage.migrations import MigrationProgress
from protocol import MSGPACK_CONTENT_TYPE, SyncRequest, encode_sync_request
from tests.harness.inprocess import hub_in_process
from tests.hub.test_catchup_expect import (
    body_when_asked,
    count_lookups,
    read_answer,
    revoked_and_reader,
    without_numbers,
)
from tests.hub.test_catchup_slots import events

JSON = "application/json"
EVENT = {"id": "o-1", "location": "WEB", "sku": "MUG-01", "kind": "sale", "qty": -1, "occurred_at": 1_765_000_000_000}


async def send(
    port: int, method: str, path: str, token: str, body: bytes | int, content_type: str = JSON, more: str = "",
    *, expect: bool = True,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:  # fmt: skip
    """Open a connection and send a request's head (``Expect: 100-continue`` when ``expect``), and its body too when
    not; ``body`` an int: only a Content-Length of that many bytes. ``more``: header lines, each ending in CRLF."""
    length = body if isinstance(body, int) else len(body)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    asked = "Expect: 100-continue\r\n" if expect else ""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n{more}{asked}\r\n".encode()
    )
    if not expect and isinstance(body, bytes):
        writer.write(body)
    await writer.drain()
    return reader, writer


async def answer_of(
    port: int, method: str, path: str, token: str, body: bytes | int, content_type: str = JSON, more: str = "",
    *, expect: bool = True,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """The first answer to a request sent as ``send`` sends it; the connection is closed after it."""
    reader, writer = await send(port, method, path, token, body, content_type, more, expect=expect)
    try:
        return await read_answer(reader)
    finally:
        writer.close()


async def test_every_write_route_refuses_what_its_head_condemns_before_100_continue_as_without_expect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For each class of write route (events, an agent's reports, an admin's PUT, an admin's POST with a limit of
    its own, one that takes no body): a request asking to continue that its head condemns is answered from the
    head, with ``Connection: close``, never ``100 Continue``, its credential looked up once, and with the problem
    the same request gets after its body without ``Expect``."""
    async with hub_in_process(tmp_path / "hub.db") as hub:
        store = hub.store
        _, agent = await store.add_agent(["WEB"])
        revoked, reader = await revoked_and_reader(store, "WEB")
        _, admin = await store.add_agent([], role="admin")
        limit = hub.app[SETTINGS_KEY].max_body_bytes
        looked_up = count_lookups(monkeypatch, store)
        pushed = json.dumps({"events": [EVENT]}).encode()
        recipe = json.dumps({"components": [{"sku": "MUG-01", "qty": 2}]}).encode()
        items = json.dumps({"items": [{"barcode": "4006381333931", "sku": "MUG-01"}]}).encode()
        gzip = "Content-Encoding: gzip\r\n"
        cases: list[tuple[str, str, str, bytes | int, str, str, int, bytes]] = [
            ("POST", "/v1/events", revoked, pushed, JSON, "", 401, b"unknown or has been revoked"),
            ("POST", "/v1/events", "", pushed, JSON, "", 401, b"needs a credential"),
            ("POST", "/v1/events", reader, pushed, JSON, "", 403, b"reader credential cannot send events"),
            ("POST", "/v1/events", agent, pushed, MSGPACK_CONTENT_TYPE, "", 415, b"as JSON"),
            ("POST", "/v1/events", agent, limit + 1, JSON, "", 413, b"max_body_bytes"),
            ("POST", "/v1/events", agent, pushed, JSON, gzip, 415, b"without compression"),
            ("POST", "/v1/observations", reader, b"\x80", MSGPACK_CONTENT_TYPE, "", 403, b"cannot send observations"),
            ("POST", "/v1/observations", agent, b"{}", JSON, "", 415, b"must be msgpack"),
            ("POST", "/v1/import-issues", agent, b"{}", JSON, "", 415, b"must be msgpack"),
            ("POST", "/v1/import-issues?x=1", agent, b"\x80", MSGPACK_CONTENT_TYPE, "", 400, b"unknown"),
            ("PUT", "/v1/catalog", agent, items, JSON, "", 403, b"agent credential cannot change the catalog"),
            ("PUT", "/v1/catalog", reader, items, JSON, "", 403, b"reader credential cannot change the catalog"),
            ("PUT", "/v1/catalog", revoked, items, JSON, "", 401, b"unknown or has been revoked"),
            ("PUT", "/v1/catalog", admin, b"barcode,sku\n", "text/csv; charset=utf-7", "", 415, b"plain ASCII"),
            ("PUT", "/v1/bundles/GIFT-1", agent, recipe, JSON, "", 403, b"cannot set a bundle's recipe"),
            ("PUT", "/v1/locations/WEB/skus/MUG-01/safety-stock", reader, b'{"qty": 2}', JSON, "", 403,
             b"cannot change safety stock"),
            ("POST", "/v1/quarantine/1", agent, b'{"action": "discard"}', JSON, "", 403, b"cannot resolve held"),
            ("POST", "/v1/quarantine/1", admin, b" " * 2000, JSON, "", 413, b"under 1024 bytes"),
            ("POST", "/v1/channels/shop/reconcile", reader, b"{}", JSON, "", 403, b"cannot reconcile a channel"),
            ("POST", "/v1/channels/shop/reconcile", admin, b"{}", JSON, "", 400, b"takes no body"),
        ]  # fmt: skip
        for method, path, token, data, content_type, more, expected, said in cases:
            looked_up.clear()
            status, headers, problem = await answer_of(hub.port, method, path, token, data, content_type, more)
            assert status == expected, f"{method} {path} refused {expected} from its head was answered {status} first"
            assert headers["connection"] == "close", f"{method} {path}: its body will not come"
            assert said in problem, f"{method} {path}: {problem!r}"
            assert ("www-authenticate" in headers) == (expected == 401)
            assert len(looked_up) == (1 if token else 0), f"{method} {path}: looked up {len(looked_up)} times"
            if isinstance(data, bytes) and not more:  # the same request sent whole without Expect: the same answer
                unasked_status, _, unasked = await answer_of(
                    hub.port, method, path, token, data, content_type, expect=False
                )
                assert (unasked_status, without_numbers(unasked)) == (expected, without_numbers(problem)), path
        assert await store.counts(location="WEB") == []  # nothing of any was stored


async def test_a_write_its_head_does_not_condemn_is_asked_for_its_body_and_stored(tmp_path: Path) -> None:
    """A connector's events and an admin's catalog asking to continue are answered ``100 Continue``, then stored."""
    async with hub_in_process(tmp_path / "hub.db") as hub:
        _, agent = await hub.store.add_agent(["WEB"])
        _, admin = await hub.store.add_agent([], role="admin")
        items = json.dumps({"items": [{"barcode": "4006381333931", "sku": "MUG-01"}]}).encode()
        for method, path, token, body in (
            ("POST", "/v1/events", agent, json.dumps({"events": [EVENT]}).encode()),
            ("PUT", "/v1/catalog", admin, items),
        ):
            reader, writer = await send(hub.port, method, path, token, body)
            done, _, answer = await body_when_asked(reader, writer, body, f"{method} {path}")
            assert done == 200, answer
        assert [c.on_hand for c in await hub.store.counts(location="WEB")] == [-1]


async def test_a_draining_hub_says_when_to_come_back_from_a_requests_head_and_after_its_body(
    tmp_path: Path,
) -> None:
    """Once the hub drains, a read, a write sent whole and a sync or events asking to continue are each answered
    503 with a small ``Retry-After`` and ``Connection: close``; none asking to continue is asked for its body."""
    async with hub_in_process(tmp_path / "hub.db") as hub:
        agent_id, agent = await hub.store.add_agent(["WEB"])
        sync = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "WEB", 1)))
        pushed = json.dumps({"events": [EVENT]}).encode()
        assert await hub.app[GATE_KEY].drain(1.0)  # nothing in flight: drained at once
        for method, path, body, content_type, expect in (
            ("GET", "/v1/agents", b"", JSON, False),
            ("POST", "/v1/events", pushed, JSON, False),
            ("POST", "/v1/events", pushed, JSON, True),
            ("POST", "/v1/sync", sync, MSGPACK_CONTENT_TYPE, True),
        ):
            status, headers, problem = await answer_of(hub.port, method, path, agent, body, content_type, expect=expect)
            assert status == 503 and b"shutting down" in problem, f"{method} {path} (Expect: {expect}): {status}"
            assert 1 <= int(headers.get("retry-after", "0")) <= 5, f"{method} {path}: no Retry-After to come back"
            assert headers["connection"] == "close"
        assert await hub.store.counts(location="WEB") == []


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        (StoreError("the disk went away"), b"database is not available right now (the disk went away)"),
        (StoreClosed(), b"shutting down"),
    ],
)
async def test_a_database_failing_at_the_heads_credential_lookup_is_answered_503_from_the_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception, said: bytes
) -> None:
    """The store fails as the head's credential is looked up: a sync (catch-up batch or live sale) and a connector's
    events asking to continue are answered 503 with ``Retry-After`` and ``Connection: close`` from the head, the
    problem the same request gets after its body; no catch-up slot is taken; once the store answers again the
    batch is asked for its body and stored."""
    async with hub_in_process(tmp_path / "hub.db") as hub:
        store = hub.store
        agent_id, agent = await store.add_agent(["WEB"])
        big = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "WEB", 5_000)))
        sale = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "WEB", 1)))
        pushed = json.dumps({"events": [EVENT]}).encode()
        authenticate = store.authenticate
        failing = True

        async def flaky(token: str) -> AgentIdentity | None:
            if failing:
                raise failure
            return await authenticate(token)

        monkeypatch.setattr(store, "authenticate", flaky)
        for path, body, content_type in (
            ("/v1/sync", big, MSGPACK_CONTENT_TYPE),
            ("/v1/sync", sale, MSGPACK_CONTENT_TYPE),
            ("/v1/events", pushed, JSON),
        ):
            status, headers, problem = await answer_of(hub.port, "POST", path, agent, body, content_type)
            assert status == 503, f"{path} was answered {status} first while the database failed"
            assert said in problem and headers["connection"] == "close"
            assert 1 <= int(headers.get("retry-after", "0")) <= 5
            unasked_status, unasked_headers, unasked = await answer_of(
                hub.port, "POST", path, agent, body, content_type, expect=False
            )
            assert (unasked_status, unasked) == (503, problem)
            assert unasked_headers["retry-after"] == headers["retry-after"]
        slots = hub.app[SLOTS_KEY]
        assert (slots.running, slots.waiting, slots.refused) == (0, 0, 0)

        failing = False
        reader, writer = await send(hub.port, "POST", "/v1/sync", agent, big, MSGPACK_CONTENT_TYPE)
        stored, _, _ = await body_when_asked(reader, writer, big)
        assert stored == 200
        assert sum(c.on_hand for c in await store.counts(location="WEB")) == -5_000


async def test_a_hub_still_opening_its_database_answers_a_write_asking_to_continue_from_its_head() -> None:
    """While the hub opens (migrates) its database, every request is answered 503 with Retry-After (hub.starting):
    one asking to continue is answered so from its head, not asked for a body that cannot change the answer."""
    server = TestServer(create_starting_app(MigrationProgress("hub.db")), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        for path, content_type in (("/v1/sync", MSGPACK_CONTENT_TYPE), ("/v1/events", JSON)):
            status, headers, problem = await answer_of(server.port, "POST", path, "ssk_any", 500_000, content_type)
            assert status == 503, f"{path} was answered {status} first while the hub opens its database"
            assert headers["connection"] == "close" and int(headers["retry-after"]) >= 1
            assert b"unavailable" in problem
    finally:
        await server.close()


async def test_the_dashboards_forms_refuse_what_their_head_condemns_before_100_continue_as_without_expect(
    tmp_path: Path,
) -> None:
    """The dashboard's sign-in and sign-out forms (public: no credential) asking to continue are answered from the
    head what the head alone decides: a form posted from another origin (403), a sign-in form over its size or not
    sent as a form (400), a sign-out without a session of this hub (303 to the sign-in page, as after its body);
    never ``100 Continue``, with ``Connection: close`` and the answer the same form gets sent whole."""
    form = "application/x-www-form-urlencoded"
    async with hub_in_process(tmp_path / "hub.db") as hub:
        _, reader = await hub.store.add_agent([], role="reader")
        token = f"token={reader}".encode()
        elsewhere = "Origin: http://evil.example\r\n"
        nobody = "Cookie: shelfsync_session=not-a-session-of-this-hub\r\n"
        cases: list[tuple[str, bytes, str, str, int, bytes]] = [
            ("/dashboard/sign-in", token, form, elsewhere, 403, b"hub's own sign-in page"),
            ("/dashboard/sign-in", b"token=" + b"x" * 5000, form, "", 400, b"too large"),
            ("/dashboard/sign-in", json.dumps({"token": reader}).encode(), JSON, "", 400, b"sent as a form"),
            ("/dashboard/sign-out", b"", form, elsewhere + nobody, 403, b"from the dashboard itself"),
            ("/dashboard/sign-out", b"x=1", form, "", 303, b""),
            ("/dashboard/sign-out", b"x=1", form, nobody, 303, b""),
        ]  # fmt: skip
        for path, data, content_type, more, expected, said in cases:
            status, headers, answer = await answer_of(hub.port, "POST", path, "", data, content_type, more)
            assert status == expected, f"{path} {more!r}: {expected} from its head was answered {status} first"
            assert headers["connection"] == "close", f"{path}: its body will not come"
            assert said in answer, f"{path}: {answer!r}"
            assert headers.get("location") == ("/dashboard/sign-in" if expected == 303 else None)
            unasked_status, unasked_headers, unasked = await answer_of(
                hub.port, "POST", path, "", data, content_type, more, expect=False
            )
            assert (unasked_status, unasked, unasked_headers.get("location")) == (
                expected, answer, headers.get("location")
            ), path  # fmt: skip
        reader_, writer = await send(hub.port, "POST", "/dashboard/sign-in", "", token, form)
        status, headers, _ = await body_when_asked(reader_, writer, token, "a good sign-in")
        assert (status, headers["location"]) == (303, "/dashboard/"), "a good sign-in is asked for its body"
        session = headers["set-cookie"].split(";")[0]
        reader_, writer = await send(hub.port, "POST", "/dashboard/sign-out", "", b"", form, f"Cookie: {session}\r\n")
        status, headers, _ = await body_when_asked(reader_, writer, b"", "a signed-in sign-out")
        assert (status, headers["location"]) == (303, "/dashboard/sign-in")
        assert "Max-Age=0" in headers["set-cookie"], "the cookie is cleared"
