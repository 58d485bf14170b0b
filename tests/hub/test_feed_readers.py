"""The change feed under hostile or careless readers: a read budget per credential, streams whose client stopped
reading, over real HTTP on 127.0.0.1 (the budget of connections is tests/hub/test_limits.py's)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from hub import HubStore, feed
from hub.feed import STALLED_KEY, STREAMS_KEY
from protocol import Kind
from tests.harness.clock import RECENT_MS
from tests.hub.event_factory import EventFactory
from tests.hub.feed_helpers import Hub, running_hub, unsent_bytes

BOUND_S = 20.0  # every wait in these tests is bounded by this


async def fill(store: HubStore, changes: int) -> None:
    """``changes`` changes at S1, one SKU each, committed by a store agent of their own."""
    agent_id, token = await store.add_agent(["S1"])
    who = await store.authenticate(token)
    assert who is not None
    events = EventFactory(agent_id, 1, "S1", "A", base_ms=RECENT_MS)
    for start in range(0, changes, 1000):
        batch = [events(Kind.RECEIVE, 1, at_ms=start + i, sku=f"H-{start + i:05d}") for i in range(1000)]
        await store.ingest(who, 1, batch, acked_seq=events.seq - len(batch))


async def read_to_the_end(hub: Hub, token: str, cursor: str = "0") -> tuple[int, str, dict[str, Any]]:
    """Pages of 1,000 from ``cursor`` until the last; (the status that ended it, the cursor, its headers and body)."""
    while True:
        resp = await hub.client.get(f"/v1/changes?cursor={cursor}&limit=1000", headers=hub.auth(token))
        body = await resp.json(content_type=None)
        if resp.status != 200:
            return resp.status, cursor, {"headers": dict(resp.headers), "body": body}
        cursor = body["cursor"]
        if not body["more"]:
            return resp.status, cursor, {"headers": dict(resp.headers), "body": body}


# --- the read budget ------------------------------------------------------------------------------------------


async def test_a_looping_full_history_reader_is_answered_429_while_followers_and_agents_are_not(
    tmp_path: Path,
) -> None:
    """Reads of the feed were not limited at all: five clients reading its whole history in a loop took a store
    agent's GET /v1/counts from 10 ms to 74 ms at the median. Each credential now has a budget of rows read from
    the database; a reader following its cursor takes its pages from what the feed read once for all, and never
    comes near it."""
    async with running_hub(tmp_path, feed_read_rows_per_s=20.0, feed_read_burst=4_000) as hub:
        await fill(hub.store, 3_000)
        agent = await hub.agent("S1")
        _, follower = await hub.store.add_agent([], role="reader")
        status, cursor, _ = await read_to_the_end(hub, follower)  # its first read: the history, once
        assert status == 200

        statuses = []
        for _ in range(3):  # the looping reader: its whole history again and again
            status, _, refused = await read_to_the_end(hub, hub.reader)
            statuses.append(status)
            if status != 200:
                break
        assert statuses == [200, 429]
        assert int(refused["headers"]["Retry-After"]) >= 1
        assert refused["headers"]["Content-Type"].startswith("application/problem+json")
        assert refused["body"]["code"] == "rate_limited" and "feed_read_rows_per_s" in refused["body"]["detail"]
        assert refused["headers"]["RateLimit-Policy"] == '"feed-reads";q=4000;w=200'
        resp = await hub.client.get("/v1/changes/stream?cursor=0", headers=hub.auth())
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1, "its stream too"

        for n in range(5):  # meanwhile a store agent syncs and a reader follows its cursor
            await agent.sync((Kind.SALE, -1, f"H-{n:05d}"))
            status, cursor, answer = await read_to_the_end(hub, follower, cursor)
            assert status == 200 and len(answer["body"]["changes"]) == 1
            resp = await hub.client.get("/v1/counts?location=S1&limit=10", headers=hub.auth(agent.token))
            assert resp.status == 200
        long_poll = asyncio.ensure_future(
            hub.client.get(f"/v1/changes?cursor={cursor}&wait=10", headers=hub.auth(follower))
        )
        await asyncio.sleep(0.2)
        await agent.sync((Kind.SALE, -1, "H-00010"))
        async with asyncio.timeout(BOUND_S):
            resp = await long_poll
        assert resp.status == 200 and len((await resp.json())["changes"]) == 1


async def test_a_stream_replaying_history_waits_for_its_budget_instead_of_reading_on(tmp_path: Path) -> None:
    """A stream from cursor 0 reads the history itself, page by page; past its credential's budget it waits for
    the budget to refill (here a row a second) rather than read on."""
    async with running_hub(tmp_path, feed_read_rows_per_s=1.0, feed_read_burst=1_000) as hub:
        await fill(hub.store, 3_000)
        resp = await hub.client.get("/v1/changes/stream?cursor=0", headers=hub.auth())
        assert resp.status == 200
        ids: list[int] = []

        async def read_changes(until: int) -> None:
            while len(ids) < until:
                line = (await resp.content.readline()).decode()
                if line.startswith("data: ") and "change_id" in line:
                    ids.append(json.loads(line.removeprefix("data: "))["change_id"])

        async with asyncio.timeout(BOUND_S):
            await read_changes(1_000)  # what its budget allows at once: ten pages of 100
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):  # unlimited, the other 2,000 came within milliseconds
                await read_changes(3_000)
        resp.close()
        assert 1_000 <= len(ids) <= 1_500 and ids == sorted(ids)


# --- streams whose client stopped reading ---------------------------------------------------------------------


STALLED = 20


def count_reads(store: HubStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """From now on, each read of the change feed the store makes (its arguments)."""
    reads: list[tuple[Any, ...]] = []
    changes = store.changes

    async def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(args)
        return await changes(*args, **kwargs)

    monkeypatch.setattr(store, "changes", counted)
    return reads


async def test_streams_whose_clients_never_read_hold_little_and_are_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """200 stream clients that never read cost the hub 89 MB and slowed 12,000 changes' syncs from 0.4 s to 13 s:
    each stream wrote on until the kernel's buffers of its connection were full (megabytes on loopback), then
    waited on it for two minutes. Now what a stream's connection holds unsent, in the hub and in the kernel, is
    bounded, and a stream whose client takes none of it for ``STREAM_STALL_S`` is cut (its client resumes from its
    Last-Event-ID)."""
    monkeypatch.setattr(feed, "STREAM_STALL_S", 3.0)
    caplog.set_level(logging.INFO, "hub.feed")
    async with running_hub(tmp_path) as hub:
        await fill(hub.store, 5_000)  # some 1.8 MB of events a stream: more than a connection's buffers hold
        streams = hub.client.server.app[STREAMS_KEY]
        clients = []
        try:
            for _ in range(STALLED):
                client = socket.socket()
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
                client.connect(("127.0.0.1", hub.client.port))
                client.sendall(
                    f"GET /v1/changes/stream?cursor=0 HTTP/1.1\r\nHost: hub\r\n"
                    f"Authorization: Bearer {hub.reader}\r\n\r\n".encode()
                )
                clients.append(client)
            held: list[tuple[int, int]] = []

            async def settled() -> None:  # each stream's send waits on its full buffer, or BOUND_S has passed
                loop = asyncio.get_running_loop()
                deadline = loop.time() + BOUND_S
                while loop.time() < deadline:
                    ports = {t: t.get_extra_info("peername")[1] for t in streams}
                    held[:] = [(t.get_write_buffer_size(), unsent_bytes(hub.client.port, p)) for t, p in ports.items()]
                    if len(held) == STALLED and all(t.get_protocol().writing_paused for t in ports):
                        return
                    await asyncio.sleep(0.1)

            await settled()
            assert len(held) == STALLED
            for buffered, unsent in held:  # what the hub's transport and the kernel hold unsent for each
                assert buffered <= feed.STREAM_BUFFER_BYTES + 70_000, held  # + aiohttp's writer's 64 KiB
                assert buffered + unsent <= 512 * 1024, held

            # and they cost the commit path nothing: no stream waits for a change, so not even the watch reads one
            reads = count_reads(hub.store, monkeypatch)
            agent = await hub.agent("S1")
            for n in range(5):
                await agent.sync(*((Kind.RECEIVE, 1, f"N-{n}-{i:03d}") for i in range(200)))
            assert reads == [], "a stalled stream reads nothing more until its client takes what it was sent"

            async with asyncio.timeout(BOUND_S):  # then cut, each
                while streams:
                    await asyncio.sleep(0.1)
            for client in clients:
                client.settimeout(BOUND_S)
                with contextlib.suppress(ConnectionResetError):
                    while client.recv(1 << 16):
                        pass
        finally:
            for client in clients:
                client.close()
        assert hub.client.server.app[STALLED_KEY].total == STALLED
    cut = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cut ")]
    assert [m.split(" whose ")[0] for m in cut] == ["cut 1 change stream", f"cut {STALLED - 1} change streams"], cut
    assert "took nothing of what the hub sent for 3 s (it resumes from its Last-Event-ID)" in cut[0]
