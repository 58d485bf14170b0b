"""A catch-up batch sent with ``Expect: 100-continue`` takes its slot before its body is sent (hub/catchup.py).

Real HTTP on 127.0.0.1 to a hub over a real SQLite file, with raw sockets that send a request's head and wait:
a batch past the line is answered ``429`` with ``Retry-After`` without a byte of its body sent; a batch past the
slots waits in line before the hub answers ``100 Continue``, then is uploaded and stored; a small sync is answered
``100 Continue`` at once; a slot taken from the head is given back whatever becomes of the request. And an agent's
replicator, through a relay that counts what it uploads, sends none of a refused batch's body.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from agent import Movement, Outbox, Replicator
from hub import catchup
from hub.app import SETTINGS_KEY
from hub.catchup import CATCHUP_BODY_BYTES, SLOTS_KEY
from hub.drain import GATE_KEY
from hub.storage import HubStore
from hub.storage.base import AgentIdentity
from hub.storage.sqlite.store import SqliteHubStore
from hub.storage.sqlite.writer import InlineConnection
from protocol import MSGPACK_CONTENT_TYPE, Kind, SyncRequest, decode_sync_response, encode_sync_request
from protocol.routes import SYNC_CATCHUP_BYTES
from tests.harness.inprocess import hub_in_process
from tests.hub.test_catchup_slots import BIG, events, headers_of

WAIT_S = 10.0  # the longest any wait below takes
HEAD_MAX_BYTES = 1024  # more than the head of any request below


async def send_head(
    port: int, token: str, length: int, content_type: str = MSGPACK_CONTENT_TYPE, more: str = ""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection and send a sync's head asking ``Expect: 100-continue``, and no byte of its body.
    ``more``: header lines to add, each ending in CRLF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /v1/sync HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: {content_type}"
        f"\r\nContent-Length: {length}\r\n{more}Expect: 100-continue\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer's status, headers (lower-case names) and body (by its Content-Length; none for a 1xx)."""
    async with asyncio.timeout(WAIT_S):
        status = int((await reader.readline()).split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0"))) if status >= 200 else b""
    return status, headers, body


async def revoked_and_reader(store: HubStore, location: str) -> tuple[str, str]:
    """A revoked agent's credential (for S2) and a reader's credential for ``location``, added in that order."""
    revoked_id, revoked = await store.add_agent(["S2"])
    await store.revoke_agent(revoked_id)
    _, reader = await store.add_agent([location], role="reader")
    return revoked, reader


async def body_when_asked(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes, what: str = "the request"
) -> tuple[int, dict[str, str], bytes]:
    """Take the ``100 Continue`` a head asking for it was sent, send ``body``, close, and return the final answer."""
    try:
        status, _, _ = await read_answer(reader)
        assert status == 100, f"{what} was not asked for its body"
        writer.write(body)
        await writer.drain()
        return await read_answer(reader)
    finally:
        writer.close()


async def test_a_catch_up_batch_past_the_line_is_refused_before_a_byte_of_its_body_is_sent(tmp_path: Path) -> None:
    async with hub_in_process(tmp_path / "hub.db") as hub, aiohttp.ClientSession() as session:
        agent_id, token = await hub.store.add_agent(["S1"])
        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S1", BIG)))
        assert len(body) > CATCHUP_BODY_BYTES
        slots = hub.app[SLOTS_KEY]
        slots.total, slots.queue_max = 0, 0  # no catch-up batch is taken now: every one is asked to come back

        reader, writer = await send_head(hub.port, token, len(body))
        try:
            status, headers, answer = await read_answer(reader)  # answered with the head alone
        finally:
            writer.close()
        assert status == 429, "the hub asked for the body (100 Continue) of a batch it could not take"
        assert int(headers["retry-after"]) >= 1 and headers["connection"] == "close"  # the body will not come
        assert b"rate_limited" in answer and b"send this one again in" in answer
        assert (slots.refused, slots.running, slots.waiting) == (1, 0, 0)
        assert sum(c.on_hand for c in await hub.store.counts(location="S1")) == 0  # nothing of it was stored

        slots.total = 1  # a slot came free: the same batch, sent again as an agent does, is taken and stored
        async with session.post(f"{hub.url}/v1/sync", data=body, headers=headers_of(token), expect100=True) as resp:
            status, answer = resp.status, await resp.read()
        assert status == 200 and decode_sync_response(answer).hwm == BIG
        assert sum(c.on_hand for c in await hub.store.counts(location="S1")) == -BIG
        assert (slots.running, slots.waiting) == (0, 0)


async def test_a_catch_up_batch_past_the_slots_waits_in_line_before_it_is_sent_and_then_is_stored(
    tmp_path: Path,
) -> None:
    """One slot, taken by another store's batch while the writer is busy: the batch asking to continue waits in
    line with no byte of its body at the hub, is answered ``100 Continue`` once that batch is committed and its
    slot handed over, and is stored."""
    async with hub_in_process(tmp_path / "hub.db") as hub, aiohttp.ClientSession() as session:
        store = hub.store
        assert isinstance(store, SqliteHubStore)
        first_id, first_token = await store.add_agent(["S1"])
        agent_id, token = await store.add_agent(["S2"])
        first = encode_sync_request(SyncRequest(first_id, 1, events(first_id, "S1", BIG)))
        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S2", BIG)))
        slots = hub.app[SLOTS_KEY]
        slots.total = 1
        release = threading.Event()

        async def busy(_: InlineConnection) -> None:  # another batch under way on the writer
            release.wait(WAIT_S)

        async def post_first() -> int:
            async with session.post(f"{hub.url}/v1/sync", data=first, headers=headers_of(first_token)) as resp:
                await resp.read()
                return resp.status

        under_way = asyncio.ensure_future(store._write("another store's batch", busy, events=10_000))
        reader, writer = None, None
        try:
            admitted = asyncio.ensure_future(post_first())
            deadline = time.monotonic() + WAIT_S
            while slots.running < 1:
                assert time.monotonic() < deadline, "the first catch-up batch did not come in"
                await asyncio.sleep(0.01)
            reader, writer = await send_head(hub.port, token, len(body))
            while slots.waiting < 1:
                assert time.monotonic() < deadline, "the batch asking to continue did not wait in line for its slot"
                assert not reader.at_eof() and not admitted.done()
                await asyncio.sleep(0.01)
        finally:
            release.set()
            await under_way
        try:
            status, _, _ = await read_answer(reader)
            assert status == 100
            stored_first = sum(c.on_hand for c in await store.counts(location="S1"))
            assert stored_first == -BIG, "100 Continue came before the slot was handed over"
            writer.write(body)
            await writer.drain()
            status, _, answer = await read_answer(reader)
        finally:
            writer.close()
        assert await admitted == 200
        assert status == 200 and decode_sync_response(answer).hwm == BIG
        assert sum(c.on_hand for c in await store.counts(location="S2")) == -BIG
        assert (slots.waited, slots.refused, slots.running, slots.waiting) == (1, 0, 0, 0)


async def test_a_live_sale_asking_to_continue_is_answered_at_once_while_the_line_is_full(tmp_path: Path) -> None:
    async with hub_in_process(tmp_path / "hub.db") as hub:
        agent_id, token = await hub.store.add_agent(["LIVE"])
        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "LIVE", 1)))
        slots = hub.app[SLOTS_KEY]
        slots.total, slots.queue_max = 0, 0
        reader, writer = await send_head(hub.port, token, len(body))
        try:
            status, _, _ = await read_answer(reader)
            writer.write(body)
            await writer.drain()
            stored, _, answer = await read_answer(reader)
        finally:
            writer.close()
        assert status == 100 and stored == 200 and decode_sync_response(answer).hwm == 1
        assert slots.refused == 0


async def test_a_slot_taken_from_the_head_is_given_back_whatever_becomes_of_the_request(tmp_path: Path) -> None:
    """With one slot and no line: a batch whose client goes away after ``100 Continue`` and one whose client sends
    half its body and goes each leave the slot free for the next; one refused for its Content-Type takes none."""
    async with hub_in_process(tmp_path / "hub.db") as hub, aiohttp.ClientSession() as session:
        agent_id, token = await hub.store.add_agent(["S1"])
        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S1", BIG)))
        slots = hub.app[SLOTS_KEY]
        slots.total, slots.queue_max = 1, 0

        async def slot_free() -> None:
            deadline = time.monotonic() + WAIT_S
            while slots.running:
                assert time.monotonic() < deadline, "the slot was not given back"
                await asyncio.sleep(0.01)

        for sent in (b"", body[: len(body) // 2]):
            reader, writer = await send_head(hub.port, token, len(body))
            status, _, _ = await read_answer(reader)
            assert status == 100 and slots.running == 1  # the slot is this batch's, its body not sent yet
            writer.write(sent)
            await writer.drain()
            writer.close()  # gone
            await writer.wait_closed()
            await slot_free()

        reader, writer = await send_head(hub.port, token, len(body), content_type="application/json")
        try:
            status, _, _ = await read_answer(reader)  # refused from its head: no slot taken
        finally:
            writer.close()
        assert status == 415 and slots.running == 0

        async with session.post(f"{hub.url}/v1/sync", data=body, headers=headers_of(token), expect100=True) as resp:
            assert resp.status == 200 and decode_sync_response(await resp.read()).hwm == BIG
        assert (slots.running, slots.waiting, slots.refused) == (0, 0, 0)


class Relay:
    """A TCP relay on 127.0.0.1 in front of the hub, counting the bytes clients send through it."""

    def __init__(self, hub_port: int) -> None:
        self.hub_port = hub_port
        self.sent = 0
        self.url = ""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Relay]:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        from_hub, to_hub = await asyncio.open_connection("127.0.0.1", self.hub_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, counted: bool) -> None:
            try:
                while data := await src.read(64 * 1024):
                    self.sent += len(data) if counted else 0
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(client, to_hub, True), pipe(from_hub, to_client, False), return_exceptions=True)


async def test_an_agents_catch_up_batch_refused_by_the_hub_is_not_uploaded_and_taken_later(tmp_path: Path) -> None:
    """The replicator sends its catch-up batch asking to continue: while the hub's line is full it is refused
    from its head, twice, with less than a few KiB sent in all; once a slot is free it is stored, once."""
    backlog = 5_000  # one batch of batch_size: over the catch-up size
    async with hub_in_process(tmp_path / "hub.db") as hub, Relay(hub.port).running() as relay:
        agent_id, token = await hub.store.add_agent(["S1"])
        slots = hub.app[SLOTS_KEY]
        slots.total, slots.queue_max = 0, 0
        async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location="S1") as outbox:
            await outbox.record([Movement("S1", f"SKU-{n % 50}", Kind.SALE, -1, "pos:test") for n in range(backlog)])
            replicator = Replicator(
                outbox, relay.url, token, batch_size=backlog, retry_base_s=0.01, retry_max_s=0.05, timeout_s=WAIT_S,
                rng=random.Random(5),
            )  # fmt: skip
            async with replicator:
                deadline = time.monotonic() + 3 * WAIT_S
                while slots.refused < 2:
                    assert time.monotonic() < deadline, "the agent's catch-up batch was not refused twice"
                    await asyncio.sleep(0.01)
                uploaded_while_refused = relay.sent
                assert replicator.state.sync_state == "rate_limited"
                slots.total, slots.queue_max = 4, 12
                await asyncio.wait_for(replicator.wait_for(lambda s: s.sent_events == backlog), 3 * WAIT_S)
        uploaded = relay.sent
        assert sum(c.on_hand for c in await hub.store.counts(location="S1")) == -backlog
    assert uploaded_while_refused < 4 * HEAD_MAX_BYTES + 1024, "a refused batch's body was uploaded"  # + handshake
    assert uploaded - uploaded_while_refused > SYNC_CATCHUP_BYTES  # the batch, uploaded once it was taken


async def test_an_agent_revoked_while_catching_up_uploads_no_batch_and_stops_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's credential is revoked just after its handshake is answered: its catch-up batch, sent asking to
    continue, is refused 401 from its head, with less than a few KiB sent in all; the agent reports its
    credentials refused and sends nothing more until they are fixed (``auth_retry_s``), not the batch again."""
    backlog = 5_000  # one batch of batch_size: over the catch-up size
    async with hub_in_process(tmp_path / "hub.db") as hub, Relay(hub.port).running() as relay:
        store = hub.store
        agent_id, token = await store.add_agent(["S1"])
        looked_up: list[str] = []
        authenticate = store.authenticate

        async def revoked_after_the_handshake(token: str) -> AgentIdentity | None:
            looked_up.append(token)
            if len(looked_up) == 2:
                await store.revoke_agent(agent_id)
            return await authenticate(token)

        monkeypatch.setattr(store, "authenticate", revoked_after_the_handshake)
        async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location="S1") as outbox:
            await outbox.record([Movement("S1", f"SKU-{n % 50}", Kind.SALE, -1, "pos:test") for n in range(backlog)])
            replicator = Replicator(
                outbox, relay.url, token, batch_size=backlog, retry_base_s=0.01, retry_max_s=0.05, timeout_s=WAIT_S,
                auth_retry_s=600.0, rng=random.Random(5),
            )  # fmt: skip
            async with replicator:
                state = await asyncio.wait_for(replicator.wait_for(lambda s: s.credentials_refused), 3 * WAIT_S)
                with pytest.raises(TimeoutError):  # no try again before auth_retry_s, whatever it is sent
                    await asyncio.wait_for(replicator.wait_for(lambda s: s.attempts > state.attempts), 1.0)
        assert state.sync_state == "credentials_refused" and "HTTP 401" in (state.last_error or "")
        assert len(looked_up) == 2  # the handshake, then the batch's head: nothing more
        assert relay.sent < 3 * HEAD_MAX_BYTES, f"{relay.sent} bytes sent for a batch refused from its head"
        assert (await store.counts(location="S1")) == []


async def refused_without_expect(
    port: int, token: str, body: bytes, content_type: str = MSGPACK_CONTENT_TYPE
) -> tuple[int, dict[str, str], bytes]:
    """A sync sent whole without ``Expect``: what the middlewares answer it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST /v1/sync HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: "
            f"{content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        return await read_answer(reader)
    finally:
        writer.close()


def count_lookups(monkeypatch: pytest.MonkeyPatch, store: HubStore) -> list[str]:
    """The tokens ``store.authenticate`` is asked about from now on, in order (it still answers them)."""
    looked_up: list[str] = []
    authenticate = store.authenticate

    async def counted(token: str) -> AgentIdentity | None:
        looked_up.append(token)
        return await authenticate(token)

    monkeypatch.setattr(store, "authenticate", counted)
    return looked_up


def without_numbers(problem: bytes) -> dict[str, object]:
    """A problem's fields with its numbers (a Retry-After's seconds, counted down meanwhile) left out."""
    fields = json.loads(problem)
    return {k: re.sub(r"\d+", "N", v) if isinstance(v, str) else v for k, v in fields.items()}


async def test_a_rate_limited_agents_catch_up_batch_is_refused_from_its_head_and_counted_once(tmp_path: Path) -> None:
    """A bucket of two: a batch asking to continue takes one token (its head is counted, the middleware does not
    count it again), the next the last; the third is refused 429 from its head, with the Retry-After, RateLimit
    fields and problem the middleware gives a batch sent without asking, and takes no catch-up slot."""
    async with hub_in_process(tmp_path / "hub.db", rate_limit_per_s=0.001, rate_limit_burst=2) as hub:
        agent_id, token = await hub.store.add_agent(["S1"])
        slots = hub.app[SLOTS_KEY]
        left = []
        for first in (1, BIG + 1):
            body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S1", BIG, first=first)))
            reader, writer = await send_head(hub.port, token, len(body))
            stored, headers, _ = await body_when_asked(reader, writer, body)
            assert stored == 200
            left.append(headers["ratelimit"])
        assert [h.split(";")[1] for h in left] == ["r=1", "r=0"], "a batch asking to continue was counted twice"

        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S1", BIG, first=2 * BIG + 1)))
        reader, writer = await send_head(hub.port, token, len(body))
        try:
            status, headers, problem = await read_answer(reader)  # answered with the head alone
        finally:
            writer.close()
        assert status == 429, "the hub asked for the body (100 Continue) of a batch its rate limit refuses"
        assert headers["connection"] == "close" and headers["ratelimit"].startswith('"writes";r=0;')
        assert int(headers["retry-after"]) > 900 and "ratelimit-policy" in headers
        assert (slots.running, slots.waiting, slots.refused) == (0, 0, 0)  # no slot was taken for it

        status, unasked, unasked_problem = await refused_without_expect(hub.port, token, body)
        assert status == 429 and abs(int(unasked["retry-after"]) - int(headers["retry-after"])) <= 1
        assert unasked["ratelimit-policy"] == headers["ratelimit-policy"]
        assert without_numbers(problem) == without_numbers(unasked_problem)
        assert b"rate_limit_per_s" in problem
        assert sum(c.on_hand for c in await hub.store.counts(location="S1")) == -2 * BIG


async def test_a_draining_hub_refuses_a_sync_from_its_head_and_one_waiting_in_line_as_soon_as_it_drains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot: a batch holds it (answered ``100 Continue``, its body not sent yet) and another waits in line
    when the hub starts draining. The one in line is answered 503 at once, while the slot is still held, not
    ``100 Continue`` once it is handed the slot; a sync asking to continue then is answered 503 from its head;
    the batch in flight is stored."""
    monkeypatch.setattr(catchup, "UPLOAD_MIN_S", 6 * WAIT_S)  # the first batch keeps its slot while it waits
    async with hub_in_process(tmp_path / "hub.db") as hub:
        first_id, first_token = await hub.store.add_agent(["S1"])
        agent_id, token = await hub.store.add_agent(["S2"])
        first = encode_sync_request(SyncRequest(first_id, 1, events(first_id, "S1", BIG)))
        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S2", BIG)))
        slots = hub.app[SLOTS_KEY]
        slots.total, slots.wait_s = 1, 6 * WAIT_S  # the one in line is not sent away for its wait meanwhile
        gate = hub.app[GATE_KEY]
        first_reader, first_writer = await send_head(hub.port, first_token, len(first))
        reader, writer = await send_head(hub.port, token, len(body))
        try:
            status, _, _ = await read_answer(first_reader)
            assert status == 100
            deadline = time.monotonic() + WAIT_S
            while slots.waiting < 1 or gate.active < 1:
                assert time.monotonic() < deadline, "the second batch did not wait in line"
                await asyncio.sleep(0.01)
            draining = asyncio.ensure_future(gate.drain(WAIT_S))

            status, headers, problem = await read_answer(reader)  # the first batch's body is not sent yet
            assert status == 503, "a batch in line while the hub drains was asked for its body"
            assert headers["connection"] == "close" and b"shutting down" in problem
            assert (slots.running, slots.waiting) == (1, 0)  # the slot is still the first batch's

            for length in (len(body), 100):  # a catch-up batch, a live sale
                late_reader, late_writer = await send_head(hub.port, token, length)
                try:
                    late, late_headers, late_problem = await read_answer(late_reader)
                finally:
                    late_writer.close()
                assert late == 503, "a draining hub asked for a body it will refuse (100 Continue)"
                assert late_headers["connection"] == "close" and b"shutting down" in late_problem

            first_writer.write(first)
            await first_writer.drain()
            stored, _, _ = await read_answer(first_reader)
            assert stored == 200  # in flight when the drain began: finished
            assert await asyncio.wait_for(draining, WAIT_S)
        finally:
            first_writer.close()
            writer.close()
        assert (slots.running, slots.waiting) == (0, 0)
        assert sum(c.on_hand for c in await hub.store.counts(location="S2")) == 0


async def test_a_sync_asking_to_continue_has_its_credential_looked_up_once_and_refused_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Expect handler hands the identity it looked up to the auth middleware: one lookup a request, a known
    agent's or not (the batch's transaction confirms it, not another lookup once the body has come); an unknown or
    revoked credential is refused 401 and a reader's 403, as without ``Expect``."""
    async with hub_in_process(tmp_path / "hub.db") as hub, aiohttp.ClientSession() as session:
        store = hub.store
        agent_id, token = await store.add_agent(["S1"])
        revoked_token, reader_token = await revoked_and_reader(store, "S1")
        looked_up = count_lookups(monkeypatch, store)
        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S1", BIG)))
        async with session.post(f"{hub.url}/v1/sync", data=body, headers=headers_of(token), expect100=True) as resp:
            assert resp.status == 200 and decode_sync_response(await resp.read()).hwm == BIG
        assert looked_up == [token], "the credential of a batch asking to continue was looked up twice"

        for sent, expected, said in (
            (revoked_token, 401, b"unknown or has been revoked"),
            ("ssk_unknown", 401, b"unknown or has been revoked"),
            (reader_token, 403, b"reader credential cannot send events"),
        ):
            looked_up.clear()
            async with session.post(f"{hub.url}/v1/sync", data=body, headers=headers_of(sent), expect100=True) as resp:
                assert (resp.status, resp.headers.get("WWW-Authenticate") is not None) == (expected, expected == 401)
                assert said in await resp.read()
            assert len(looked_up) == 1, f"a credential refused {expected} was looked up {len(looked_up)} times"
        assert (hub.app[SLOTS_KEY].running, hub.app[SLOTS_KEY].refused) == (0, 0)


async def test_a_sync_its_head_condemns_is_refused_before_100_continue_as_without_expect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoked, unknown or malformed credential (401), a reader's (403), a Content-Length over
    ``max_body_bytes`` (413), a body that is not msgpack or is compressed (415): each sync asking to continue is
    answered from its head, catch-up batch or live sale, with ``Connection: close`` and never ``100 Continue``,
    so not a byte of its body is sent; the credential is looked up once; the problem is the one the same sync
    gets after its body without ``Expect``."""
    async with hub_in_process(tmp_path / "hub.db") as hub:
        store = hub.store
        agent_id, token = await store.add_agent(["S1"])
        revoked_token, reader_token = await revoked_and_reader(store, "S1")
        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S1", BIG)))
        sale = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S1", 1)))
        limit = hub.app[SETTINGS_KEY].max_body_bytes
        looked_up = count_lookups(monkeypatch, store)
        cases: list[tuple[str, bytes | int, str, str, int, bytes]] = [
            (revoked_token, body, MSGPACK_CONTENT_TYPE, "", 401, b"unknown or has been revoked"),
            ("ssk_unknown", sale, MSGPACK_CONTENT_TYPE, "", 401, b"unknown or has been revoked"),
            ("", sale, MSGPACK_CONTENT_TYPE, "", 401, b"the form 'Bearer <token>'"),
            (reader_token, body, MSGPACK_CONTENT_TYPE, "", 403, b"reader credential cannot send events"),
            (token, body, "application/json", "", 415, b"must be msgpack"),
            (token, sale, "application/json", "", 415, b"must be msgpack"),
            (token, limit + 1, MSGPACK_CONTENT_TYPE, "", 413, b"max_body_bytes"),
            (token, body, MSGPACK_CONTENT_TYPE, "Content-Encoding: gzip\r\n", 415, b"without compression"),
        ]
        for sent, data, content_type, more, expected, said in cases:
            looked_up.clear()
            length = data if isinstance(data, int) else len(data)
            reader, writer = await send_head(hub.port, sent, length, content_type, more)
            try:
                status, headers, problem = await read_answer(reader)  # answered with the head alone
            finally:
                writer.close()
            assert status == expected, f"a sync refused {expected} from its head was answered {status} first"
            assert headers["connection"] == "close"  # its body will not come
            assert said in problem and ("www-authenticate" in headers) == (expected == 401)
            assert len(looked_up) == (1 if sent else 0), f"the credential was looked up {len(looked_up)} times"
            if isinstance(data, bytes) and not more:  # the same sync sent whole without Expect: the same answer
                unasked_status, _, unasked = await refused_without_expect(hub.port, sent, data, content_type)
                assert unasked_status == expected and without_numbers(problem) == without_numbers(unasked)
        slots = hub.app[SLOTS_KEY]
        assert (slots.running, slots.waiting, slots.refused) == (0, 0, 0)
        assert sum(c.on_hand for c in await store.counts(location="S1")) == 0


async def test_a_batch_uploading_slower_than_its_slot_allows_gives_the_slot_to_the_next_and_is_stored_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot, a line of one. A batch given its slot from its head sends half its body and stalls: once its
    upload deadline (catchup.upload_deadline_s, shortened here) passes, its slot goes to the batch waiting in
    line, which is asked for its body and stored while the slow one still uploads; the slow one, once its body
    has come, takes a slot again and is stored too, and nothing is answered 408."""
    monkeypatch.setattr(catchup, "UPLOAD_MIN_S", 0.2)
    monkeypatch.setattr(catchup, "UPLOAD_MIN_BYTES_PER_S", 1e12)
    async with hub_in_process(tmp_path / "hub.db") as hub:
        slow_id, slow_token = await hub.store.add_agent(["S1"])
        agent_id, token = await hub.store.add_agent(["S2"])
        slow = encode_sync_request(SyncRequest(slow_id, 1, events(slow_id, "S1", BIG)))
        body = encode_sync_request(SyncRequest(agent_id, 1, events(agent_id, "S2", BIG)))
        slots = hub.app[SLOTS_KEY]
        slots.total, slots.queue_max = 1, 1
        slow_reader, slow_writer = await send_head(hub.port, slow_token, len(slow))
        reader, writer = None, None
        try:
            status, _, _ = await read_answer(slow_reader)
            assert status == 100 and slots.running == 1
            slow_writer.write(slow[: len(slow) // 2])
            await slow_writer.drain()
            reader, writer = await send_head(hub.port, token, len(body))
            status, _, _ = await read_answer(reader)  # within WAIT_S: before QUEUE_WAIT_S ends its wait with 429
            assert status == 100, "the batch in line was not handed the slot of the one stalled in its upload"
            writer.write(body)
            await writer.drain()
            stored, _, answer = await read_answer(reader)
            assert stored == 200 and decode_sync_response(answer).hwm == BIG
            assert not slow_reader.at_eof()  # the slow one still uploads: not cut off

            slow_writer.write(slow[len(slow) // 2 :])
            await slow_writer.drain()
            stored, _, answer = await read_answer(slow_reader)
            assert stored == 200 and decode_sync_response(answer).hwm == BIG
        finally:
            slow_writer.close()
            if writer is not None:
                writer.close()
        assert sum(c.on_hand for c in await hub.store.counts(location="S1")) == -BIG
        assert sum(c.on_hand for c in await hub.store.counts(location="S2")) == -BIG
        assert (slots.running, slots.waiting, slots.refused) == (0, 0, 0)


class SlotsClock:
    """hub.catchup's clock (its ``time``), the real one plus what a test adds: a slow upload or a long commit
    without waiting for one."""

    def __init__(self) -> None:
        self.added_s = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.added_s


async def test_a_slow_upload_does_not_raise_the_retry_after_given_to_other_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slot, no line. A store given its slot from its head takes 600 s (on the slots' clock) to upload its
    body and 5 s to be committed; then another store holds the slot and a third is refused 429: the hold measured
    for Retry-After is the commit's, so the third is asked back in seconds, not in minutes."""
    clock = SlotsClock()
    monkeypatch.setattr(catchup, "time", clock)
    async with hub_in_process(tmp_path / "hub.db") as hub:
        store = hub.store
        (slow_id, slow_token), (_, token), (_, third_token) = [await store.add_agent([f"S{n}"]) for n in (1, 2, 3)]
        slow = encode_sync_request(SyncRequest(slow_id, 1, events(slow_id, "S1", BIG)))
        slots = hub.app[SLOTS_KEY]
        slots.total, slots.queue_max = 1, 0
        ingest = store.ingest

        async def committed_in_5_s(*args: object, **kwargs: object) -> object:
            clock.added_s += 5.0
            return await ingest(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "ingest", committed_in_5_s)
        reader, writer = await send_head(hub.port, slow_token, len(slow))
        try:
            status, _, _ = await read_answer(reader)
            assert status == 100 and slots.running == 1
            writer.write(slow[: len(slow) // 2])
            await writer.drain()
            clock.added_s += 600.0  # the rest of its body comes 600 s later (within its upload deadline here)
            writer.write(slow[len(slow) // 2 :])
            await writer.drain()
            stored, _, _ = await read_answer(reader)
        finally:
            writer.close()
        assert stored == 200 and slots.running == 0
        held_s = slots.hold_s
        assert held_s >= catchup.HOLD_S_FIRST + catchup.HOLD_WEIGHT * (5.0 - catchup.HOLD_S_FIRST)  # its commit

        reader, writer = await send_head(hub.port, token, len(slow))  # another store's batch holds the slot
        third_reader, third_writer = await send_head(hub.port, third_token, len(slow))
        try:
            status, _, _ = await read_answer(reader)
            refused, headers, _ = await read_answer(third_reader)
        finally:
            writer.close()
            third_writer.close()
        assert (status, refused) == (100, 429)
        assert int(headers["retry-after"]) < 60, "one store's slow upload made every store wait minutes"
        assert held_s < 60


async def test_a_slots_hold_counts_from_its_batchs_work_and_a_slot_given_back_before_it_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the slots' own clock: a slot taken from a head and given back before its body came (its client went
    away, its upload too slow) leaves the mean hold as it was; one whose body took 100 s and whose commit took 3 s
    counts 3 s."""
    clock = SlotsClock()
    monkeypatch.setattr(catchup, "time", clock)
    slots = catchup.CatchUpSlots(total=1)
    big = CATCHUP_BODY_BYTES + 1
    gone = await slots.reserve("A", big)
    assert gone is not None
    clock.added_s += 100.0
    gone.release()
    assert slots.hold_s == catchup.HOLD_S_FIRST and slots.running == 0

    slot = await slots.reserve("A", big)
    assert slot is not None
    clock.added_s += 100.0  # its body uploads
    slot.working()
    clock.added_s += 3.0  # the hub commits it
    slot.release()
    worked = catchup.HOLD_S_FIRST + catchup.HOLD_WEIGHT * (3.0 - catchup.HOLD_S_FIRST)
    assert worked <= slots.hold_s < worked + 1.0 and slots.running == 0
