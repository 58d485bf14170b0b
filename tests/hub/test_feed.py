"""The change feed over real HTTP: cursor pages, long-poll, server-sent events, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub import HubSettings, open_store, serve
from hub.drain import GATE_KEY
from hub.feed import FEED_KEY, change_check, end_streams
from hub.storage.base import AgentIdentity
from protocol import Kind
from tests.harness.clock import RECENT_MS
from tests.harness.hub_process import HubProcess
from tests.harness.net import wait_until
from tests.hub.event_factory import EventFactory
from tests.hub.feed_helpers import Hub, running_hub, running_hub_at, unsent_bytes

BOUND_S = 10.0  # every wait in these tests is bounded by this


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path, change_recheck_s=60.0) as h:  # only a poke can wake a waiter quickly
        yield h


async def wait_until_waiting(hub: Hub, n: int = 1) -> None:
    watch = hub.client.server.app[FEED_KEY]
    async with asyncio.timeout(BOUND_S):
        while watch.waiting < n:
            await asyncio.sleep(0.005)


async def test_every_change_is_served_exactly_once_across_cursor_resumes(hub: Hub) -> None:
    a, b = await hub.agent("S1"), await hub.agent("S2")
    await a.sync((Kind.RECEIVE, 10, "A"), (Kind.RECEIVE, 5, "B"))
    await b.sync((Kind.RECEIVE, 7, "A"))
    seen: list[dict[str, Any]] = []
    cursor = "0"
    for round_ in range(12):
        page = await hub.get_json(f"/v1/changes?cursor={cursor}&limit=2")
        seen += page["changes"]
        cursor = page["cursor"]
        if round_ == 1:  # more changes commit while a reader is half-way through
            await a.sync((Kind.SALE, -1, "A"), (Kind.SALE, -2, "B"), (Kind.RECEIVE, 1, "C"))
            await b.sync((Kind.SALE, -3, "A"))
        if not page["changes"] and not page["more"]:
            break
    ids = [c["change_id"] for c in seen]
    assert ids == sorted(set(ids)), "each change once, in commit order"
    assert ids == [r.change_id for r in await hub.store.changes(0, 1000)]
    last = {(c["location"], c["sku"]): c for c in seen}
    assert {k: v["on_hand"] for k, v in last.items()} == {
        ("S1", "A"): 9,
        ("S1", "B"): 3,
        ("S1", "C"): 1,
        ("S2", "A"): 4,
    }
    assert last[("S1", "A")]["available"] == 9 and len(last[("S1", "A")]["event_ids"]) >= 1
    again = await hub.get_json(f"/v1/changes?cursor={cursor}")
    assert again == {"changes": [], "cursor": cursor, "more": False}


async def test_a_cursor_names_its_change_and_the_forms_from_before_are_still_taken(hub: Hub) -> None:
    """A cursor names its change; the history alone (as hubs gave it out before) is taken and answered with its
    change named, the decimal id alone in its own form; a cursor naming another change under its id is a 410."""
    agent = await hub.agent()
    await agent.sync((Kind.RECEIVE, 4))
    await agent.sync((Kind.SALE, -1), (Kind.RECEIVE, 2, "B"))
    page = await hub.get_json("/v1/changes")
    ids = [c["change_id"] for c in page["changes"]]
    assert len(ids) == 3
    history = hub.store.feed_history
    first = (await hub.store.changes(0, 1))[0]
    named = f"{first.change_id}.{history}{change_check(first)}"
    assert (await hub.get_json("/v1/changes?limit=1"))["cursor"] == named
    from_named = await hub.get_json(f"/v1/changes?cursor={named}")
    assert [c["change_id"] for c in from_named["changes"]] == ids[1:] and from_named["cursor"] == page["cursor"]
    alone = await hub.get_json(f"/v1/changes?cursor={first.change_id}.{history}")
    assert alone == from_named
    decimal = await hub.get_json(f"/v1/changes?cursor={first.change_id}")
    assert [c["change_id"] for c in decimal["changes"]] == ids[1:] and decimal["cursor"] == str(ids[-1])
    at_head = await hub.get_json(f"/v1/changes?cursor={page['cursor']}&location=S1&sku=B")
    assert at_head == {"changes": [], "cursor": page["cursor"], "more": False}
    filtered = await hub.get_json(f"/v1/changes?cursor={named}&sku=A")  # past the change of B: named too
    assert [c["sku"] for c in filtered["changes"]] == ["A"] and filtered["cursor"] == page["cursor"]

    other = f"{first.change_id}.{history}{'0' * 8 if change_check(first) != '0' * 8 else '1' * 8}"
    for cursor in (other, f"{ids[-1] + 1}.{history}{change_check(first)}"):  # another change; none of that id
        problem = await hub.get_json(f"/v1/changes?cursor={cursor}", status=410)
        assert "earlier history" in problem["detail"] and "from the start" in problem["detail"], problem
    problem = await hub.get_json(f"/v1/changes?cursor=0.{history}{change_check(first)}", status=400)
    assert "must be a cursor the hub gave out" in problem["detail"]


async def test_a_long_poll_wakes_when_an_agent_syncs(hub: Hub) -> None:
    agent = await hub.agent()
    await agent.sync((Kind.RECEIVE, 4))
    cursor = (await hub.get_json("/v1/changes"))["cursor"]
    poll = asyncio.create_task(hub.get_json(f"/v1/changes?cursor={cursor}&wait=30"))
    await wait_until_waiting(hub)
    assert not poll.done()
    await agent.sync((Kind.SALE, -1))
    page = await asyncio.wait_for(poll, BOUND_S)  # far less than wait=30 and the 60 s re-check: the poke woke it
    assert [(c["sku"], c["on_hand"]) for c in page["changes"]] == [("A", 3)]
    last = await hub.store.changes(page["changes"][-1]["change_id"] - 1, 1)
    assert page["cursor"] == f"{last[0].change_id}.{hub.store.feed_history}{change_check(last[0])}" != cursor


async def test_a_long_poll_sees_a_commit_of_another_hub_process_by_rechecking(tmp_path: Path) -> None:
    async with running_hub(tmp_path, change_recheck_s=0.05) as hub:
        agent_id, _ = await hub.store.add_agent(["S1"])
        poll = asyncio.create_task(hub.get_json("/v1/changes?cursor=0&wait=30"))
        await wait_until_waiting(hub)
        # Committed straight into the database: no route of this process pokes the feed.
        events = EventFactory(agent_id, location="S1")
        await hub.store.ingest(AgentIdentity(agent_id, frozenset({"S1"})), 1, [events(Kind.RECEIVE, 2, at_ms=1)])
        page = await asyncio.wait_for(poll, BOUND_S)
        assert [(c["location"], c["on_hand"]) for c in page["changes"]] == [("S1", 2)]


async def test_a_long_poll_with_nothing_new_answers_empty_with_the_same_cursor(hub: Hub) -> None:
    agent = await hub.agent()
    await agent.sync((Kind.RECEIVE, 1))
    cursor = (await hub.get_json("/v1/changes"))["cursor"]
    page = await hub.get_json(f"/v1/changes?cursor={cursor}&wait=0.2")
    assert page == {"changes": [], "cursor": cursor, "more": False}


async def test_a_filtered_cursor_skips_other_locations_but_never_a_match(hub: Hub) -> None:
    s1, s2 = await hub.agent("S1"), await hub.agent("S2")
    await s1.sync((Kind.RECEIVE, 1))
    await s2.sync((Kind.RECEIVE, 2), (Kind.RECEIVE, 3, "B"))
    page = await hub.get_json("/v1/changes?cursor=0&location=S2")
    assert [(c["location"], c["sku"]) for c in page["changes"]] == [("S2", "A"), ("S2", "B")]
    await s1.sync((Kind.RECEIVE, 1))
    quiet = await hub.get_json(f"/v1/changes?cursor={page['cursor']}&location=S2")
    assert quiet["changes"] == [] and int(quiet["cursor"]) > int(page["cursor"])  # moved past S1's change
    await s2.sync((Kind.SALE, -1, "B"))
    later = await hub.get_json(f"/v1/changes?cursor={quiet['cursor']}&location=S2&sku=B")
    assert [(c["sku"], c["on_hand"]) for c in later["changes"]] == [("B", 2)]


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("cursor=abc", "cursor must be"),
        ("cursor=-1", "cursor must be"),
        ("wait=61", "wait must be"),
        ("wait=nan", "wait must be"),
        ("limit=0", "limit must be"),
        ("limit=5001", "limit must be"),
        ("location=bad%20code", "not a location code"),
        ("since=3", "unknown query parameter"),
    ],
)
async def test_bad_parameters_are_answered_400_with_a_sentence(hub: Hub, query: str, needle: str) -> None:
    body = await hub.get_json(f"/v1/changes?{query}", status=400)
    assert needle in body["detail"]


async def test_the_feed_needs_a_credential(hub: Hub) -> None:
    resp = await hub.client.get("/v1/changes")
    assert resp.status == 401


# --- server-sent events -------------------------------------------------------


async def next_event(resp: aiohttp.ClientResponse) -> dict[str, str]:
    """The next SSE event (comment lines such as pings are skipped)."""
    fields: dict[str, str] = {}
    async with asyncio.timeout(BOUND_S):
        while True:
            line = (await resp.content.readline()).decode()
            if not line:
                raise AssertionError(f"the stream ended; got so far {fields}")
            line = line.rstrip("\r\n")
            if not line:
                if fields:
                    return fields
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            fields[key] = fields.get(key, "") + value.removeprefix(" ")


async def test_the_stream_delivers_changes_live_and_resumes_from_last_event_id(hub: Hub) -> None:
    agent = await hub.agent()
    await agent.sync((Kind.RECEIVE, 6))
    resp = await hub.client.get("/v1/changes/stream", headers=hub.auth())
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    ready = await next_event(resp)
    assert ready["event"] == "ready"
    start = json.loads(ready["data"])["cursor"]
    await agent.sync((Kind.SALE, -2))
    change = await next_event(resp)
    assert change["event"] == "change"
    data = json.loads(change["data"])
    assert (data["location"], data["sku"], data["on_hand"], data["available"]) == ("S1", "A", 4, 4)
    row = (await hub.store.changes(data["change_id"] - 1, 1))[0]
    assert change["id"] == f"{data['change_id']}.{hub.store.feed_history}{change_check(row)}"
    assert data["change_id"] > int(start.split(".")[0])
    resp.close()

    await agent.sync((Kind.SALE, -1))  # while nobody listens
    resumed = await hub.client.get("/v1/changes/stream", headers={**hub.auth(), "Last-Event-ID": change["id"]})
    assert json.loads((await next_event(resumed))["data"]) == {"cursor": change["id"]}
    missed = json.loads((await next_event(resumed))["data"])
    assert (missed["on_hand"], missed["change_id"]) == (3, data["change_id"] + 1)
    resumed.close()


async def test_one_commit_wakes_every_open_stream_with_one_read_and_one_credential_check(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each open stream used to read the new changes and its credential itself when a commit woke them all: with
    hundreds open, one commit queued hundreds of reads ahead of every other request. The watch reads the changes
    once, and the streams of one credential share one check of it (begun after that read)."""
    streams_n = 20
    agent = await hub.agent()
    await agent.sync((Kind.RECEIVE, 6))
    streams = [await hub.client.get("/v1/changes/stream", headers=hub.auth()) for _ in range(streams_n)]
    for stream in streams:
        assert (await next_event(stream))["event"] == "ready"
    await wait_until_waiting(hub, streams_n)
    reads = count_reads(hub, monkeypatch)
    await agent.sync((Kind.SALE, -2))
    for stream in streams:
        change = await next_event(stream)
        assert change["event"] == "change" and json.loads(change["data"])["on_hand"] == 4
    assert reads.count("changes") == 1 and reads.count("reader") == 1, reads
    for stream in streams:
        stream.close()


def count_reads(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, each read of the change feed ("changes") and each credential check ("reader", or "other" for
    another token) the hub's store makes, in order."""
    reads: list[str] = []
    changes, authenticate = hub.store.changes, hub.store.authenticate

    async def counted_changes(*args: Any, **kwargs: Any) -> Any:
        reads.append("changes")
        return await changes(*args, **kwargs)

    async def counted_authenticate(token: str) -> Any:
        reads.append("reader" if token == hub.reader else "other")
        return await authenticate(token)

    monkeypatch.setattr(hub.store, "changes", counted_changes)
    monkeypatch.setattr(hub.store, "authenticate", counted_authenticate)
    return reads


async def test_one_commit_answers_every_waiting_long_poll_with_one_read_and_one_credential_check(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the streams: each waiting long-poll used to read the new changes and its credential itself when a
    commit woke them all. With 1,500 long-polls re-polling on a hub process, /v1/counts right after a commit took
    63 to 80 ms at the median and up to 678 ms (1.3 ms with none); 11 to 47 ms and up to 368 ms with one read."""
    polls_n = 20
    agent = await hub.agent()
    await agent.sync((Kind.RECEIVE, 6))
    cursor = (await hub.get_json("/v1/changes"))["cursor"]
    polls = [asyncio.create_task(hub.get_json(f"/v1/changes?wait=30&cursor={cursor}")) for _ in range(polls_n)]
    await wait_until_waiting(hub, polls_n)
    reads = count_reads(hub, monkeypatch)
    await agent.sync((Kind.SALE, -2))
    async with asyncio.timeout(BOUND_S):
        pages = await asyncio.gather(*polls)
    for page in pages:
        assert [c["on_hand"] for c in page["changes"]] == [4] and page["cursor"] != cursor
    assert reads.count("changes") == 1 and reads.count("reader") == 1, reads


async def test_the_stream_from_cursor_zero_replays_history_for_one_sku(hub: Hub) -> None:
    agent = await hub.agent()
    await agent.sync((Kind.RECEIVE, 1, "A"), (Kind.RECEIVE, 2, "B"), (Kind.SALE, -1, "B"))
    resp = await hub.client.get("/v1/changes/stream?cursor=0&sku=B", headers=hub.auth())
    await next_event(resp)
    first = json.loads((await next_event(resp))["data"])
    assert (first["sku"], first["on_hand"]) == ("B", 1)  # one batch: one change per (location, sku)
    resp.close()


async def test_a_bad_last_event_id_is_refused(hub: Hub) -> None:
    resp = await hub.client.get("/v1/changes/stream", headers={**hub.auth(), "Last-Event-ID": "x1"})
    assert resp.status == 400
    assert "Last-Event-ID" in (await resp.json())["detail"]


async def test_stopping_the_hub_ends_streams_and_answers_long_polls(hub: Hub) -> None:
    stream = await hub.client.get("/v1/changes/stream", headers=hub.auth())
    await next_event(stream)
    poll = asyncio.create_task(hub.get_json("/v1/changes?wait=30"))
    await wait_until_waiting(hub, 2)
    await end_streams(hub.client.server.app)
    page = await asyncio.wait_for(poll, BOUND_S)
    assert page["changes"] == []
    async with asyncio.timeout(BOUND_S):
        assert await stream.content.read() == b""  # the stream ended


async def test_a_stopping_hub_process_does_not_wait_for_open_streams(tmp_path: Path) -> None:
    """serve() ends streams before draining: with shutdown_timeout_s=30 it still stops within the bound."""
    db = tmp_path / "hub.db"
    async with open_store(db) as store:
        _, reader = await store.add_agent([], role="reader")
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    class Listening(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            found = re.search(r"listening on (http://\S+),", record.getMessage())
            if found and not listening.done():
                listening.set_result(found.group(1))

    logger = logging.getLogger("hub.server")
    handler, old_level = Listening(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    stop = asyncio.Event()
    settings = HubSettings(db=str(db), port=0, shutdown_timeout_s=30.0)
    server = asyncio.create_task(serve(settings, stop))
    try:
        base = await asyncio.wait_for(listening, BOUND_S)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {reader}"}) as http:
            stream = await http.get(f"{base}/v1/changes/stream")
            assert (await next_event(stream))["event"] == "ready"  # the stream is in flight
            stop.set()
            await asyncio.wait_for(server, BOUND_S)  # far below shutdown_timeout_s: nothing waited for the stream
            async with asyncio.timeout(BOUND_S):
                assert await stream.content.read() == b""
    finally:
        stop.set()
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        if not server.done():
            server.cancel()


# --- a credential that ends while its stream or long-poll is open ------------------------------------------


async def next_delivery(resp: aiohttp.ClientResponse) -> dict[str, str] | None:
    """The next event of a stream, or None when the stream ended."""
    try:
        return await next_event(resp)
    except AssertionError:
        return None


async def test_a_revoked_credentials_open_stream_delivers_nothing_committed_after_and_ends(hub: Hub) -> None:
    agent = await hub.agent()
    reader_id, reader = await hub.store.add_agent([], role="reader")
    stream = await hub.client.get("/v1/changes/stream", headers=hub.auth(reader))
    assert (await next_event(stream))["event"] == "ready"
    await agent.sync((Kind.RECEIVE, 1))
    assert (await next_event(stream))["event"] == "change"  # delivered while the credential held
    await wait_until_waiting(hub)
    assert await hub.store.revoke_agent(reader_id)
    await agent.sync((Kind.RECEIVE, 2))  # committed after the revocation
    event = await next_delivery(stream)
    assert event is not None and event["event"] == "error", event
    assert "revoked" in json.loads(event["data"])["message"]
    async with asyncio.timeout(BOUND_S):
        assert await stream.content.read() == b""  # and then the stream ends


async def test_a_signed_out_sessions_open_stream_delivers_nothing_committed_after_and_ends(hub: Hub) -> None:
    agent = await hub.agent()
    signed_in = await hub.client.post("/dashboard/sign-in", data={"token": hub.reader}, allow_redirects=False)
    assert signed_in.status == 303, await signed_in.text()
    cookie = {"Cookie": f"shelfsync_session={signed_in.cookies['shelfsync_session'].value}"}
    stream = await hub.client.get("/v1/changes/stream", headers=cookie)
    assert (await next_event(stream))["event"] == "ready"
    await wait_until_waiting(hub)
    signed_out = await hub.client.post("/dashboard/sign-out", headers=cookie, allow_redirects=False)
    assert signed_out.status == 303
    await agent.sync((Kind.RECEIVE, 2))
    event = await next_delivery(stream)
    assert event is not None and event["event"] == "error", event
    async with asyncio.timeout(BOUND_S):
        assert await stream.content.read() == b""
    again = await hub.client.get("/v1/changes/stream", headers=cookie)  # the dashboard's reconnect: to sign-in
    assert again.status == 401


async def test_a_long_poll_of_a_credential_revoked_while_it_waits_is_answered_401(hub: Hub) -> None:
    agent = await hub.agent()
    reader_id, reader = await hub.store.add_agent([], role="reader")
    poll = asyncio.create_task(hub.client.get("/v1/changes?wait=30", headers=hub.auth(reader)))
    await wait_until_waiting(hub)
    assert await hub.store.revoke_agent(reader_id)
    await agent.sync((Kind.RECEIVE, 2))
    resp = await asyncio.wait_for(poll, BOUND_S)
    assert resp.status == 401, await resp.text()
    assert "revoked" in (await resp.json())["detail"]


async def test_a_revocation_by_another_process_ends_an_open_stream_sqlite(tmp_path: Path) -> None:
    await revocation_by_another_process_ends_an_open_stream(str(tmp_path / "hub.db"))


async def test_a_revocation_by_another_process_ends_an_open_stream_postgres(pg_url: str) -> None:
    await revocation_by_another_process_ends_an_open_stream(pg_url)


async def revocation_by_another_process_ends_an_open_stream(db: str) -> None:
    """`shelfsync-hub agent revoke` (another store over the same database) is noticed: the stream asks the store."""
    async with open_store(db) as store:
        reader_id, reader = await store.add_agent([], role="reader")
    async with running_hub_at(db) as hub:
        agent = await hub.agent()
        stream = await hub.client.get("/v1/changes/stream", headers=hub.auth(reader))
        assert (await next_event(stream))["event"] == "ready"
        await wait_until_waiting(hub)
        async with open_store(db) as elsewhere:
            assert await elsewhere.revoke_agent(reader_id)
        await agent.sync((Kind.RECEIVE, 2))
        event = await next_delivery(stream)
        assert event is not None and event["event"] == "error", event


async def test_a_long_poll_whose_client_went_away_stops_waiting(hub: Hub) -> None:
    """A client that gives up on its long-poll (a timeout shorter than wait, a reconnect loop) used to leave its
    handler waiting out the whole wait (up to 60 s): 200 such attempts were 200 handlers waiting a minute."""
    app = hub.client.server.app
    for _ in range(200):
        _, writer = await asyncio.open_connection("127.0.0.1", hub.client.server.port)
        writer.write(
            f"GET /v1/changes?wait=60 HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {hub.reader}\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()
    async with asyncio.timeout(BOUND_S):
        while app[GATE_KEY].active or app[FEED_KEY].waiting:
            await asyncio.sleep(0.05)
    page = await hub.get_json("/v1/changes?wait=0.1")  # a client that stays is answered as before
    assert page["changes"] == []


async def test_a_stream_whose_client_left_before_it_began_is_no_error(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closes its connection as its stream is set up (a tab closed, a reconnect cancelled) used to
    fail an assertion in aiohttp-sse: an ERROR with a traceback, "failed N requests with an unexpected error"."""
    caplog.set_level(logging.INFO)
    request = f"GET /v1/changes/stream HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {hub.reader}\r\n\r\n"
    for _ in range(100):
        client = socket.socket()
        client.setblocking(False)
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", hub.client.server.port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        client.send(request.encode())
        client.close()
    app = hub.client.server.app
    async with asyncio.timeout(BOUND_S):
        while app[GATE_KEY].active:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    stream = await hub.client.get("/v1/changes/stream", headers=hub.auth())  # a client that stays is served
    assert (await next_event(stream))["event"] == "ready"
    stream.close()


# --- a stream whose client stopped reading -------------------------------------------------------------------


def test_a_stopping_hub_cuts_a_stream_whose_client_stopped_reading(tmp_path: Path) -> None:
    """A client that stops reading (a frozen tab, a hung consumer) used to hold SIGTERM for 40 s.

    Its stream sat in a send waiting for a full socket buffer to drain, so it counted as a request in flight:
    the stop waited out shutdown_timeout_s (30 s), warned that a request was still running, then waited for
    aiohttp's own cancel. Now the stop cuts that one connection after a second; the client resumes later
    from its Last-Event-ID.
    """
    db = tmp_path / "hub.db"

    async def fill() -> str:  # some 4,800 changes of ~900 bytes: more than the kernel buffers of one connection
        async with open_store(db) as store:
            agent_id, token = await store.add_agent(["S1"])
            _, reader = await store.add_agent([], role="reader")
            who = await store.authenticate(token)
            assert who is not None
            events = EventFactory(agent_id, 1, "S1", "A", base_ms=RECENT_MS)
            for n in range(80):
                batch = [events(Kind.RECEIVE, 1, at_ms=n * 1000 + i, sku=f"SKU-{i % 60:02d}") for i in range(1000)]
                await store.ingest(who, 1, batch, acked_seq=events.seq - len(batch))
            return reader

    reader = asyncio.run(fill())
    config = tmp_path / "hub.toml"
    config.write_text("[hub]\nshutdown_timeout_s = 30.0\n")
    hub = HubProcess(tmp_path / "hub.log", "--config", str(config), db=db, port=0)
    client = socket.socket()
    try:
        hub.start()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read
        client.connect(("127.0.0.1", hub.port))
        request = f"GET /v1/changes/stream?cursor=0 HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {reader}\r\n\r\n"
        client.sendall(request.encode())
        me = client.getsockname()[1]
        seen: list[int] = []

        def stalled() -> bool:  # the kernel's queue is full and stays so: the hub's send waits
            seen.append(unsent_bytes(hub.port, me))
            return len(seen) > 20 and seen[-1] > 50_000 and len(set(seen[-20:])) == 1

        wait_until("the hub's side of the stream stalls", stalled, 60.0, poll_s=0.1)
        started = time.monotonic()
        code = hub.stop(signal.SIGTERM, timeout_s=20.0)  # it took 40 s
        took = time.monotonic() - started
    finally:
        client.close()
        hub.close()
    assert code == 0, hub.run_log
    assert took < 15.0, hub.run_log
    assert "still running after" not in hub.run_log
    assert "cut 1 change stream(s) whose client stopped reading" in hub.run_log


async def test_a_reader_that_notes_the_newest_change_before_the_counts_misses_nothing(hub: Hub) -> None:
    """The way back after a 410 that skips the history: note the newest change first (the stream's ``ready``),
    then take the counts, then go on from that cursor. A change committed between the counts and the cursor would
    be skipped if the cursor were taken after the counts (the order the guide first gave); taken before, it is
    applied once more, harmlessly (a change carries absolute values)."""
    agent = await hub.agent()
    await agent.sync((Kind.RECEIVE, 6))
    stream = await hub.client.get("/v1/changes/stream", headers=hub.auth())
    ready = await next_event(stream)
    stream.close()
    cursor = json.loads(ready["data"])["cursor"]
    await agent.sync((Kind.SALE, -2))  # between noting the cursor and reading the counts
    counts = {(c["location"], c["sku"]): c["on_hand"] for c in (await hub.get_json("/v1/counts"))["counts"]}
    await agent.sync((Kind.SALE, -1))  # after the counts
    page = await hub.get_json(f"/v1/changes?cursor={cursor}")
    for change in page["changes"]:
        counts[change["location"], change["sku"]] = change["on_hand"]
    assert counts == {("S1", "A"): 3}
    assert [c["on_hand"] for c in page["changes"]] == [4, 3]  # the one the counts held already comes again
