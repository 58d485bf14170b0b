"""The local count cache when the acknowledged mark moves past batches whose counts never reached it: the real hub
on 127.0.0.1 over a real SQLite file, the agent's outbox on another, the fault proxy (tests.faults.proxy) between
them losing answers the hub sent, and the count cache's change feed off (it may be off, or behind).

Found: the counts of a batch come only with its answer. When that answer was lost (the hub booked the batch) and
the handshake after it found the hub's mark past the batch, or when the agent restarted while a full disk kept the
answers' counts only in memory (tests/agent/test_counts_full_disk.py), the mark moved past the movements without
their counts: they were neither pending nor in the cached hub count, and staff saw the count from before them (10
received, 5 more received: 10) until the next sync of that SKU or a change of it on the feed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from agent import Movement, Outbox, Replicator, count_refresh
from agent import outbox as outbox_module
from agent.feed import CountFeed
from hub import HubSettings, create_app, open_store, views
from hub.openapi import API_VERSION
from protocol import CountSnapshot, Kind, SyncResponse
from protocol.feed import FeedChange
from protocol.hlc import pack_hlc, wall_ms_now
from protocol.routes import API_VERSION_HEADER
from tests.agent.test_counts_full_disk import FullDisk, eventually
from tests.faults.proxy import FaultProxy, RequestInfo
from tests.harness.inprocess import ServedHub, serve_app

LOC = "S001"
WAIT_S = 30.0
DAY_MS = 86_400_000
FAST: dict[str, Any] = {
    "batch_size": 1_000, "tick_s": 0.05, "retry_base_s": 0.01, "retry_max_s": 0.05, "timeout_s": 10.0,
    "heartbeat_s": 3_600.0, "rng": random.Random(7),
}  # fmt: skip


class Losses:
    """What the proxy loses: with ``lose_batch`` set before a replicator starts, the answer to its first sync after
    its handshake (a batch: the hub committed it); and every answer to a read of the counts while ``counts_down``."""

    def __init__(self) -> None:
        self.lose_batch = False
        self.lose_next_batch = False  # the answer to the next sync carrying events, with a replicator running
        self.counts_down = False
        self.lost: list[RequestInfo] = []
        self.syncs: list[RequestInfo] = []  # since lose_batch was set
        self.counts_reads = 0
        self.handshake_bytes = 0  # the body of a sync without events, as the last one seen

    def __call__(self, info: RequestInfo, status: int) -> bool:
        if info.path.startswith("/v1/counts"):
            self.counts_reads += 1
            return self.counts_down
        if info.path == "/v1/sync" and (self.handshake_bytes == 0 or info.body_bytes < self.handshake_bytes):
            self.handshake_bytes = info.body_bytes
        carries_events = info.body_bytes > self.handshake_bytes + 40  # one event is ~69 bytes
        if self.lose_next_batch and info.path == "/v1/sync" and status == 200 and carries_events:
            self.lose_next_batch = False
            self.lost.append(info)
            return True
        if self.lose_batch and info.path == "/v1/sync":
            self.syncs.append(info)
            if len(self.syncs) == 2 and status == 200:  # the handshake went through; the batch's answer is lost
                assert info.body_bytes > self.syncs[0].body_bytes, "the second sync carries no events"
                self.lose_batch = False
                self.lost.append(info)
                return True
        return False


@dataclass
class Setup:
    hub: ServedHub
    proxy: FaultProxy
    outbox: Outbox
    token: str
    losses: Losses

    async def on_hand(self, sku: str) -> int:
        return (await self.outbox.counts.local_count(LOC, sku)).on_hand

    async def acked(self, seq: int) -> bool:
        return (await self.outbox.stats()).acked_seq >= seq

    def replicator(self, **kw: Any) -> Replicator:
        return Replicator(self.outbox, self.proxy.url, self.token, **{**FAST, **kw})


@asynccontextmanager
async def store_and_hub(tmp_path: Path, **outbox_kw: Any) -> AsyncIterator[Setup]:
    async with open_store(str(tmp_path / "hub.db")) as store:
        agent_id, token = await store.add_agent([LOC])
        app = create_app(store, HubSettings(db=str(tmp_path / "hub.db")))
        losses = Losses()
        async with (
            serve_app(app) as hub,
            FaultProxy(hub.port, on_response=losses) as proxy,
            Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location=LOC, **outbox_kw) as outbox,
        ):
            yield Setup(hub, proxy, outbox, token, losses)


def dock(sku: str, qty: int, kind: Kind = Kind.RECEIVE) -> Movement:
    return Movement(LOC, sku, kind, qty, "scanner:dock")


async def synced(s: Setup, *movements: Movement) -> None:
    await s.outbox.record(list(movements))
    async with s.replicator() as replicator:
        await asyncio.wait_for(replicator.wait_synced(), WAIT_S)


async def test_a_lost_answer_then_a_handshake_past_the_batch_reads_the_skus_counts_from_the_hub(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent")
    async with store_and_hub(tmp_path) as s:
        await synced(s, dock("A", 10), dock("B", 4))
        assert (await s.on_hand("A"), await s.on_hand("B")) == (10, 4)

        await s.outbox.record([dock("A", 5), dock("B", -1, Kind.SALE)])  # seq 3 and 4, one batch
        s.losses.lose_batch = True
        async with s.replicator():
            await eventually("the handshake after the lost answer acknowledges the batch", lambda: s.acked(4))
            assert s.losses.lost, "no answer was lost"
            await eventually("A's count holds the 5 received", lambda: _is(s.on_hand, "A", 15))
            await eventually("the hub's counts are read again", lambda: _refreshed(s.outbox, "A", 15))
        a = await s.outbox.counts.local_count(LOC, "A")
        b = await s.outbox.counts.local_count(LOC, "B")
        assert (a.on_hand, a.pending_events, a.stale_events) == (15, 0, 0)
        assert (b.on_hand, b.pending_events, b.stale_events) == (3, 0, 0)
        hub_b = await s.outbox.counts.hub_count(LOC, "B")
        assert hub_b is not None and hub_b.on_hand == 3  # the hub's own count, read again
        assert s.losses.counts_reads == 1, "one read of the two SKUs"


async def test_until_the_hubs_counts_can_be_read_the_local_count_adds_the_movements_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The read fails (the hub's answers to it are lost): the count staff see still holds their movement, once,
    flagged as not yet in the hub's count held here; the read is tried again, and once it goes through the flag
    goes."""
    caplog.set_level(logging.DEBUG, logger="agent")
    async with store_and_hub(tmp_path) as s:
        await synced(s, dock("A", 10))
        await s.outbox.record([dock("A", 5)])
        s.losses.lose_batch = s.losses.counts_down = True
        async with s.replicator():
            await eventually("the handshake acknowledges the batch", lambda: s.acked(2))
            await eventually("the counts were asked for", lambda: _at_least(lambda: s.losses.counts_reads, 2))
            a = await s.outbox.counts.local_count(LOC, "A")
            assert (a.on_hand, a.pending_events, a.stale_events) == (15, 0, 1)
            hub_a = await s.outbox.counts.hub_count(LOC, "A")
            assert hub_a is not None and hub_a.on_hand == 10  # what the hub last said, without the 5
            assert "could not be read" in caplog.text

            s.losses.counts_down = False
            await eventually("the hub's counts are read again", lambda: _refreshed(s.outbox, "A", 15))
        a = await s.outbox.counts.local_count(LOC, "A")
        assert (a.on_hand, a.pending_events, a.stale_events) == (15, 0, 0)
        assert "were read again" in caplog.text


async def test_an_agent_restarted_while_a_full_disk_kept_the_counts_in_memory_reads_them_from_the_hub(
    tmp_path: Path,
) -> None:
    async with store_and_hub(tmp_path) as s:
        await synced(s, dock("A", 10))

        async def at_hub() -> int:
            (status,) = await s.hub.store.agent_status(s.outbox.agent_id)
            return int(status.hwm.get(s.outbox.epoch, 0))

        await s.outbox.record([dock("A", 5)])  # seq 2, a batch of its own
        await s.outbox.record([dock("B", -1, Kind.SALE)])  # seq 3
        disk = FullDisk(s.outbox)
        async with s.replicator(batch_size=1):
            await eventually("the hub holds seq 3", lambda: _is(lambda _: at_hub(), "", 3))
            assert (await s.outbox.stats()).acked_seq == 1 and disk.refused >= 2
        # The agent stops (the counts it kept in memory are gone), the disk has room again, it starts again.
        disk.full = False
        async with s.replicator(batch_size=1):
            await eventually("the handshake acknowledges seq 3", lambda: s.acked(3))
            await eventually("A's count holds the 5 received", lambda: _refreshed(s.outbox, "A", 15))
            await eventually("B's count holds the sale", lambda: _refreshed(s.outbox, "B", -1))
        assert (await s.on_hand("A"), await s.on_hand("B")) == (15, -1)


async def test_many_skus_are_read_in_chunks_of_their_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found: above 10 due SKUs the agent read the location's whole counts page by page (a big store's thousands of
    rows for a few SKUs). Now a chunk of due SKUs a request (4 here), ``sku`` repeated, and only theirs."""
    monkeypatch.setattr(count_refresh, "SKUS_PER_REQUEST", 4)
    skus = [f"SKU-{i:02}" for i in range(count_refresh.FEW_KEYS + 5)]
    async with store_and_hub(tmp_path) as s:
        others = [f"AAA-NOT-DUE-{i}" for i in range(8)]  # before the due SKUs: the location's pages would read them
        await synced(s, *[dock(sku, 10) for sku in skus], *[dock(sku, 1) for sku in others])
        await s.outbox.record([dock(sku, -2, Kind.SALE) for sku in skus])
        s.losses.lose_batch = True
        async with s.replicator():
            await eventually("the handshake acknowledges the batch", lambda: s.acked(2 * len(skus) + len(others)))
            for sku in skus:
                await eventually(f"{sku}'s count is read again", lambda: _refreshed(s.outbox, sku, 8))  # noqa: B023
        assert s.losses.counts_reads == 4, "15 SKUs, 4 a request"
        assert [await s.on_hand(sku) for sku in others] == [1] * len(others)


@pytest.mark.parametrize("how", ["refused", "held"])
async def test_a_due_sku_waiting_for_its_pending_movement_is_read_once_the_hub_refuses_or_holds_it(
    tmp_path: Path, how: str
) -> None:
    """Found: a due SKU is not read while it has a pending movement (its answer brings the count); when the hub then
    refused that movement (or held it in its clock quarantine), the answer brought no count of the SKU, and nothing
    read it again: it stayed due, its movements flagged as not in the hub's count, until the agent's next start or
    the next lost answer. Now the answer that settles a due SKU's pending movements without its count has it read."""
    async with store_and_hub(tmp_path) as s:
        await synced(s, dock("A", 10))
        await s.outbox.record([dock("A", 5)])  # seq 2: its answer is lost, and the hub's counts cannot be read
        s.losses.lose_batch = s.losses.counts_down = True
        async with s.replicator():
            await eventually("the handshake acknowledges the batch", lambda: s.acked(2))
            await eventually("the counts were asked for", lambda: _at_least(lambda: s.losses.counts_reads, 1))
        # Before the agent starts again, a movement of A the hub will not count: a transfer naming no destination
        # (refused), or one stamped days ahead of the hub's clock (held for an operator there).
        if how == "refused":
            await s.outbox.record([Movement(LOC, "A", Kind.TRANSFER_OUT, -1, "scanner:dock", ref="T-1")])
        else:
            ahead = pack_hlc(wall_ms_now() + 3 * DAY_MS, 0)
            await s.outbox.record([Movement(LOC, "A", Kind.SALE, -1, "scanner:dock", occurred_at=ahead)])
        s.losses.counts_down = False
        reads = s.losses.counts_reads
        async with s.replicator():  # its first read, after the handshake, passes A by: seq 3 is pending
            await eventually("the hub answers seq 3", lambda: s.acked(3))
            await eventually("A's count is read again", lambda: _refreshed(s.outbox, "A", 15))
        assert s.losses.counts_reads == reads + 1
        (rejected,) = await s.outbox.list_rejected()
        assert rejected.code == ("invalid_transfer" if how == "refused" else "quarantined")


async def test_a_due_sku_whose_movements_outlive_the_outboxs_retention_keeps_them_and_is_due_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: a SKU whose hub count could not be read (here the hub's answers to the read are lost; the syncs go
    through, so acknowledged movements age) stayed due after retention purged its movements: the local count then
    lacked them (15 received, 10 shown), while the SKU stayed due, and due for ever. Now, when retention purges a
    due SKU's movements, they are added to the hub's count held here, as the local count added them, and the SKU
    is due no more; one WARNING says so, however many purges follow while the counts cannot be read."""
    caplog.set_level(logging.DEBUG, logger="agent")
    monkeypatch.setattr(outbox_module, "PURGE_EVERY_MS", 0)  # every answer purges what is past retention
    async with store_and_hub(tmp_path, retention_s=0.5) as s:  # retention: 0.5 s of the hub's answers
        await synced(s, dock("A", 10), dock("B", 4))
        await s.outbox.record([dock("A", 5)])  # seq 3: its answer is lost, and the counts cannot be read
        s.losses.lose_batch = s.losses.counts_down = True
        async with s.replicator(heartbeat_s=0.05):
            await eventually("the handshake acknowledges the batch", lambda: s.acked(3))
            await eventually("retention purges seq 3", lambda: _purged(tmp_path, 3))
            await eventually("A is due no more", lambda: _not_due(s.outbox))
            a = await s.outbox.counts.local_count(LOC, "A")
            assert (a.on_hand, a.pending_events, a.stale_events) == (15, 0, 0)

            s.losses.lose_next_batch = True  # B's sale is lost the same way, and purged later
            await s.outbox.record([dock("B", -1, Kind.SALE)])  # seq 4
            await eventually("the handshake acknowledges B's sale", lambda: s.acked(4))
            await eventually("retention purges seq 4", lambda: _purged(tmp_path, 4))
            await eventually("B is due no more", lambda: _not_due(s.outbox))
            b = await s.outbox.counts.local_count(LOC, "B")
            assert (b.on_hand, b.pending_events, b.stale_events) == (3, 0, 0)
        said = [r for r in caplog.records if "longer than the outbox keeps" in r.getMessage()]
        assert [r.levelno for r in said] == [logging.WARNING, logging.DEBUG], [r.getMessage() for r in said]
        hub_a, hub_b = await s.outbox.counts.hub_count(LOC, "A"), await s.outbox.counts.hub_count(LOC, "B")
        assert hub_a is not None and hub_b is not None and (hub_a.on_hand, hub_b.on_hand) == (15, 3)


async def _purged(tmp_path: Path, seq: int) -> bool:
    with contextlib.closing(sqlite3.connect(tmp_path / "outbox.sqlite3")) as conn:
        return conn.execute("SELECT count(*) FROM events WHERE seq = ?", (seq,)).fetchone()[0] == 0


async def _not_due(outbox: Outbox) -> bool:
    return await outbox.counts.due_locations() == []


def test_a_chunk_keeps_its_query_under_the_hubs_request_line() -> None:
    long = ["é" * 32 + f"{i:03}" for i in range(count_refresh.SKUS_PER_REQUEST)]  # 6 bytes a character, encoded
    chunk = count_refresh.chunk_of(long)
    assert 1 < len(chunk) < len(long) and chunk == long[: len(chunk)]
    assert len("&".join(f"sku={quote(sku, safe='')}" for sku in chunk)) <= count_refresh.QUERY_MAX_BYTES
    assert count_refresh.chunk_of(["X" * 9_000]) == ["X" * 9_000]  # one at least (the hub refuses it: tried again)


def older_hub(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The hub as before API 1.10: a repeated ``sku`` is a 400 ("given more than once"), or (``ignores``) a hub
    answering the location's counts whatever SKUs are named."""
    if how == "refuses":
        taking = views.Query.__init__
        monkeypatch.setattr(
            views.Query, "__init__", lambda q, request, allowed, repeatable=(): taking(q, request, allowed)
        )
    else:
        monkeypatch.setattr(views.Query, "skus", lambda q, maximum: None)


@pytest.mark.parametrize("how", ["refuses", "ignores"])
async def test_an_older_hub_has_many_skus_read_as_the_locations_counts_page_by_page_until_the_last_one_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A hub before 1.10 does not read several SKUs: more SKUs than are read one by one are then read as the
    location's counts, a page at a time (4 here), stopping at the last due SKU; a SKU not due keeps its own count
    (here the hub's changed without this store's knowing: a count the agent does not follow since its feed is
    off)."""
    caplog.set_level(logging.INFO, logger="agent")
    older_hub(monkeypatch, how)
    monkeypatch.setattr(count_refresh, "PAGE_LIMIT", 4)
    skus = [f"SKU-{i:02}" for i in range(count_refresh.FEW_KEYS + 5)]
    async with store_and_hub(tmp_path) as s:
        others = [f"ZZZ-NOT-DUE-{i}" for i in range(8)]  # after the due SKUs, on pages never read
        await synced(s, *[dock(sku, 10) for sku in skus], *[dock(sku, 1) for sku in others])
        await s.outbox.record([dock(sku, -2, Kind.SALE) for sku in skus])
        s.losses.lose_batch = True
        async with s.replicator():
            await eventually("the handshake acknowledges the batch", lambda: s.acked(2 * len(skus) + len(others)))
            for sku in skus:
                await eventually(f"{sku}'s count is read again", lambda: _refreshed(s.outbox, sku, 8))  # noqa: B023
        assert s.losses.counts_reads == 1 + 4, "the chunk refused, the pages up to the last due SKU (15, 4 a page)"
        assert [await s.on_hand(sku) for sku in others] == [1] * len(others)
        assert "does not read several SKUs in one request" in caplog.text


async def test_an_older_hub_has_a_few_skus_read_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    older_hub(monkeypatch, "refuses")
    async with store_and_hub(tmp_path) as s:
        await synced(s, dock("A", 10), dock("B", 4))
        await s.outbox.record([dock("A", 5), dock("B", -1, Kind.SALE)])
        s.losses.lose_batch = True
        async with s.replicator():
            await eventually("the handshake acknowledges the batch", lambda: s.acked(4))
            await eventually("A's count is read again", lambda: _refreshed(s.outbox, "A", 15))
            await eventually("B's count is read again", lambda: _refreshed(s.outbox, "B", 3))
        assert s.losses.counts_reads == 1 + 2, "the chunk refused, then one read each of the two SKUs"


class OlderHubServed:
    """The real hub served straight to the agent (no proxy: a hub not serving is seen as it is, connections
    refused), as before API 1.10 while ``old``: a repeated ``sku`` is a 400 and its answers name no API version (as
    before 1.11). ``lose_next_batch``: the hub commits the next sync carrying events, and the connection is cut
    before its answer. ``counts_reads``: the reads of its counts."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.old = True
        self.lose_next_batch = False
        self.lost = self.counts_reads = 0
        self._handshake_bytes = 0
        taking = views.Query.__init__

        def query(q: views.Query, request: Any, allowed: Any, repeatable: Any = ()) -> None:
            taking(q, request, allowed, () if self.old else repeatable)

        monkeypatch.setattr(views.Query, "__init__", query)

    def app(self, store: Any, db: Path) -> web.Application:
        app = create_app(store, HubSettings(db=str(db)))
        app.on_response_prepare.append(self._answer)  # after the hub's own: it sees and changes what they set
        return app

    async def _answer(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.old:
            response.headers.popall(API_VERSION_HEADER, None)
        if request.path.startswith("/v1/counts"):
            self.counts_reads += 1
        if request.path == "/v1/sync" and response.status == 200:
            size = request.content_length or 0
            self._handshake_bytes = min(self._handshake_bytes or size, size)
            if self.lose_next_batch and size > self._handshake_bytes + 40:  # it carries events
                self.lose_next_batch = False
                self.lost += 1
                assert request.transport is not None
                request.transport.abort()


async def test_an_older_hub_is_read_as_such_until_it_restarts_or_names_another_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: the agent did not remember that its hub does not read several SKUs in one request: every read of due
    SKUs first asked in chunks, met the 400, and then read as before 1.10, saying so each time. Now the hub is
    remembered (its URL, the API version its answers name) and read as before 1.10 straight away, said once, until
    it is found not serving (a restart: connections refused) or its answers name another version (an upgrade)."""
    caplog.set_level(logging.INFO, logger="agent")
    hub = OlderHubServed(monkeypatch)
    async with open_store(str(tmp_path / "hub.db")) as store:
        agent_id, token = await store.add_agent([LOC])
        served = serve_app(hub.app(store, tmp_path / "hub.db"))
        url = (await served.__aenter__()).url
        try:
            async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location=LOC) as outbox:
                replicator = Replicator(outbox, url, token, **{**FAST, "heartbeat_s": 0.05})
                async with replicator:

                    async def lost_then_read(sales: int) -> int:
                        """A and B sold, their answer lost: how many reads of the hub's counts it took."""
                        reads, lost = hub.counts_reads, hub.lost
                        hub.lose_next_batch = True
                        await outbox.record([dock("A", -1, Kind.SALE), dock("B", -1, Kind.SALE)])
                        last = (await outbox.stats()).last_seq
                        await eventually("the sale is acknowledged", lambda: _acked(outbox, last))
                        assert hub.lost == lost + 1, "no answer was lost"
                        await eventually("A is read again", lambda: _refreshed(outbox, "A", 10 - sales))
                        await eventually("B is read again", lambda: _refreshed(outbox, "B", 4 - sales))
                        return hub.counts_reads - reads

                    await outbox.record([dock("A", 10), dock("B", 4)])
                    await asyncio.wait_for(replicator.wait_synced(), WAIT_S)
                    assert await lost_then_read(1) == 1 + 2, "the chunk refused, then one read each"
                    assert await lost_then_read(2) == 2, "one read each, straight away"

                    await served.__aexit__(None, None, None)  # the hub restarts (as old as it was)
                    await asyncio.wait_for(replicator.wait_for(lambda st: st.sync_state == "unreachable"), WAIT_S)
                    served = serve_app(hub.app(store, tmp_path / "hub.db"), port=int(url.rsplit(":", 1)[1]))
                    await served.__aenter__()
                    await asyncio.wait_for(replicator.wait_for(lambda st: st.sync_state == "ok"), WAIT_S)
                    assert await lost_then_read(3) == 1 + 2, "learned again after the restart"

                    hub.old = False  # upgraded, the answers name its version
                    assert await lost_then_read(4) == 2, "as before, until an answer names another version"
                    assert await lost_then_read(5) == 1, "both SKUs in one request"
        finally:
            await served.__aexit__(None, None, None)
    said = [r for r in caplog.records if "does not read several SKUs in one request" in r.getMessage()]
    assert len(said) == 2, [r.getMessage() for r in said]


def remembered_older(url: str, version: str | None) -> count_refresh.HubForms:
    """What the replicator keeps once the hub at ``url``, its answers naming ``version``, refused several SKUs."""
    forms = count_refresh.HubForms()
    forms.heard(url, version)
    forms.refused(url, count_refresh.SkusRefused("it answered HTTP 400 to several SKUs (a test's older hub)"))
    assert not forms.reads_several(url)
    return forms


async def _forgotten(forms: count_refresh.HubForms, url: str) -> bool:
    return forms.reads_several(url)


async def test_a_counts_read_refused_a_connection_or_answered_503_forgets_the_older_hub(tmp_path: Path) -> None:
    """The reads of the hub's counts find the hub not serving themselves (a restart, an upgrade's too): a 503 or a
    connection refused makes what was learned of its reads be learned again, whatever version the answers name."""
    async with open_store(str(tmp_path / "hub.db")) as store:
        _agent_id, token = await store.add_agent([LOC])
        async with serve_app(create_app(store, HubSettings(db=str(tmp_path / "hub.db")))) as hub:
            url = hub.url + count_refresh.COUNTS_PATH
            forms = remembered_older(url, API_VERSION)
            query = [("location", LOC), ("sku", "A")]
            async with aiohttp.ClientSession() as session:
                await count_refresh._page(session, url, token, query, 1, forms)
                assert not forms.reads_several(url), "an answer naming the same version changes nothing"
                await store.close()  # the hub serves no more: 503
                with pytest.raises(count_refresh.RefreshFailed, match="HTTP 503"):
                    await count_refresh._page(session, url, token, query, 1, forms)
                assert forms.reads_several(url), "a 503 to the counts read left the older hub remembered"
    forms = remembered_older(url, None)  # nothing listens there now: the connection is refused
    async with aiohttp.ClientSession() as session:
        with pytest.raises(count_refresh.RefreshFailed, match="could not be read"):
            await count_refresh._page(session, url, token, query, 1, forms)
    assert forms.reads_several(url), "a connection refused to the counts read left the older hub remembered"


async def test_the_change_feed_refused_a_connection_or_answered_503_forgets_the_older_hub(tmp_path: Path) -> None:
    """The change feed follows the hub beside the replicator: when it finds the hub not serving (a 503, a connection
    refused), what the counts read learned of that hub is learned again."""
    fast: dict[str, Any] = {"wait_s": 0.0, "retry_base_s": 0.01, "retry_max_s": 0.05, "rng": random.Random(7)}
    async with open_store(str(tmp_path / "hub.db")) as store:
        agent_id, token = await store.add_agent([LOC])
        async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location=LOC) as outbox:
            async with serve_app(create_app(store, HubSettings(db=str(tmp_path / "hub.db")))) as hub:
                url, counts_url = hub.url, hub.url + count_refresh.COUNTS_PATH
                forms = remembered_older(counts_url, API_VERSION)
                await store.close()  # the hub serves no more: 503
                async with CountFeed(outbox, url, token, **fast):
                    await eventually("the feed's 503 forgets the older hub", lambda: _forgotten(forms, counts_url))
            forms = remembered_older(counts_url, API_VERSION)  # nothing listens there now: connections are refused
            async with CountFeed(outbox, url, token, **fast):
                await eventually("a connection refused to the feed forgets it", lambda: _forgotten(forms, counts_url))


async def _acked(outbox: Outbox, seq: int) -> bool:
    return (await outbox.stats()).acked_seq >= seq


async def _is(value: Callable[[str], Awaitable[int]], sku: str, want: int) -> bool:
    return await value(sku) == want


async def _at_least(value: Callable[[], int], want: int) -> bool:
    return value() >= want


async def _refreshed(outbox: Outbox, sku: str, want: int) -> bool:
    hub = await outbox.counts.hub_count(LOC, sku)
    local = await outbox.counts.local_count(LOC, sku)
    return hub is not None and hub.on_hand == want and local.stale_events == 0 and local.on_hand == want


async def test_a_due_sku_takes_a_feed_change_only_from_the_position_its_movements_were_acknowledged_at(
    tmp_path: Path,
) -> None:
    """The outbox alone (agent.counts, "due"): a change of the feed from before the answer that acknowledged the
    movements may or may not hold them, so it is not stored (it would count them twice, or lose one); one at that
    position or later holds them, and the SKU is no longer due."""
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id="store-1", location=LOC) as outbox:
        await outbox.record([dock("A", 10)])
        first = SyncResponse(outbox.agent_id, outbox.epoch, 1, counts=(CountSnapshot(LOC, "A", 10, 0, 10),),
                             server_time_ms=1_000, change_id=5)  # fmt: skip
        assert (await outbox.apply_answer(first, clock_skew_ms=0, counted=(1, 1))).due == 0
        await outbox.record([dock("A", 5)])
        handshake = SyncResponse(outbox.agent_id, outbox.epoch, 2, server_time_ms=2_000, change_id=9)
        assert (await outbox.apply_answer(handshake, clock_skew_ms=0)).due == 1  # its batch's answer was lost
        a = await outbox.counts.local_count(LOC, "A")
        assert (a.on_hand, a.pending_events, a.stale_events) == (15, 0, 1)

        at = await outbox.feed_position()
        older = FeedChange(7, LOC, "A", 12, 0, 12, 0, 1_500)  # another client's +2, before the 5 or after them?
        assert await outbox.apply_changes([older], after=at, cursor=7)
        a = await outbox.counts.local_count(LOC, "A")
        assert (a.on_hand, a.stale_events) == (15, 1), "a change from before the acknowledgement was stored"

        newer = FeedChange(9, LOC, "A", 17, 0, 17, 0, 2_000)
        assert await outbox.apply_changes([newer], after=await outbox.feed_position(), cursor=9)
        a = await outbox.counts.local_count(LOC, "A")
        assert (a.on_hand, a.pending_events, a.stale_events) == (17, 0, 0)
        assert await outbox.counts.due_locations() == []
