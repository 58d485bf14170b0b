"""Two batches in flight while catching up (agent.replicator, hub.storage.ingest ``_next_mark``): the real hub on
127.0.0.1 over a real SQLite file, the agent's outbox on another; the first of the two requests fails after the
second reached the hub, and nothing is lost or acknowledged before the hub holds it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent import Movement, Outbox, Replicator
from agent.outbox import AnswerResult
from hub import HubSettings, create_app, open_store
from protocol import Kind, SyncResponse, decode_sync_request, decode_sync_response
from protocol.routes import SYNC_PATH, SYNC_PIPELINE_HEADER
from tests.harness.inprocess import serve_app

LOC = "S001"
EVENTS = 12_500  # above the replicator's CATCHUP_BACKLOG: it catches up, two batches in flight
WAIT_S = 60.0
AHEAD_WAIT_S = 10.0  # how long the first batch is held for a batch sent ahead of its answer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FailFirst:
    """Holds the first batch of a catch-up until a batch sent ahead of its answer was committed, then fails it:
    ``"503"`` (the hub never sees it), ``"cut"`` (the connection is closed, the hub never sees it), or
    ``"cut_after_commit"`` (the hub commits it, the answer is lost); ``"late"``: passes it on then (the hub met
    the batch sent ahead first)."""

    how: str
    ahead_done: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False
    ahead_seen: list[tuple[int, int]] = field(default_factory=list)  # (after_seq, the hub's answered mark)

    def middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        @web.middleware
        async def fail_first(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self.handle(request, handler)

        return fail_first

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != SYNC_PATH or request.method != "POST":
            return await handler(request)
        sync = decode_sync_request(await request.read())
        if sync.after_seq is not None:
            response = await handler(request)
            if isinstance(response, web.Response) and isinstance(response.body, bytes):
                self.ahead_seen.append((sync.after_seq, decode_sync_response(response.body).hwm))
            self.ahead_done.set()
            return response
        if self.failed or not sync.events:
            return await handler(request)
        self.failed = True
        try:
            await asyncio.wait_for(self.ahead_done.wait(), AHEAD_WAIT_S)
        except TimeoutError:
            return await handler(request)  # no batch came ahead of this one's answer: nothing to fail
        if self.how == "late":
            return await handler(request)
        if self.how == "503":
            raise web.HTTPServiceUnavailable(text="the hub is overloaded")
        if self.how == "cut_after_commit":
            await handler(request)
        assert request.transport is not None
        request.transport.close()
        raise asyncio.CancelledError  # the client's connection is gone: nothing to answer


@pytest.mark.parametrize("how", ["503", "cut", "cut_after_commit", "late"])
async def test_the_first_of_two_batches_in_flight_failing_loses_nothing_and_acknowledges_nothing_early(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    fault = FailFirst(how)
    async with open_store(str(tmp_path / "hub.db")) as store:
        agent_id, token = await store.add_agent([LOC])
        app = create_app(store, HubSettings(db=str(tmp_path / "hub.db")))
        app.middlewares.append(fault.middleware())
        async with (
            serve_app(app) as hub,
            Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location=LOC) as outbox,
        ):
            movements = [Movement(LOC, f"SKU-{i % 50}", Kind.RECEIVE, 1, "pos:acme") for i in range(EVENTS)]
            await outbox.record(movements)
            marks = spy_marks(outbox)
            replicator = Replicator(
                outbox, hub.url, token, batch_size=500, tick_s=0.2, retry_base_s=0.01, retry_max_s=0.05,
                timeout_s=20.0, rng=random.Random(7),
            )  # fmt: skip
            async with replicator:
                await asyncio.wait_for(replicator.wait_synced(), WAIT_S)
            stats = await outbox.stats()
            (status,) = await store.agent_status(agent_id)
            counts = await store.counts(limit=1000)
    assert fault.ahead_done.is_set(), "the replicator never sent a batch before the one before it was answered"
    assert fault.failed
    if how != "cut_after_commit":  # the first batch never reached the hub: the one ahead acknowledged none of it
        after_seq, hwm = fault.ahead_seen[0]
        assert hwm < after_seq
    assert (stats.acked_seq, stats.backlog) == (EVENTS, 0)
    assert status.hwm == {outbox.epoch: EVENTS}
    assert sum(row.on_hand for row in counts) == EVENTS  # every event stored, none twice
    assert marks == sorted(marks), f"the acknowledged mark went back: {marks}"
    assert "restored from an older copy" not in caplog.text  # the hub's warning is for a hub that lost seqs


def spy_marks(outbox: Outbox) -> list[int]:
    """The acknowledged mark after each answer the outbox stores."""
    marks: list[int] = []
    apply_answer = outbox.apply_answer

    async def spy(resp: SyncResponse, **kw: Any) -> AnswerResult:
        result = await apply_answer(resp, **kw)
        marks.append(result.acked_seq)
        return result

    outbox.apply_answer = spy  # type: ignore[method-assign]
    return marks


@dataclass
class OlderHub:
    """What a hub from before ``after_seq`` does: answers without ``SYNC_PIPELINE_HEADER`` and refuses the field."""

    ahead_refused: int = 0
    batches: int = 0

    def middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        @web.middleware
        async def older(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path != SYNC_PATH or request.method != "POST":
                return await handler(request)
            sync = decode_sync_request(await request.read())
            if sync.after_seq is not None:
                self.ahead_refused += 1
                raise web.HTTPBadRequest(text="unknown field(s) after_seq")
            self.batches += bool(sync.events)
            response = await handler(request)
            response.headers.popall(SYNC_PIPELINE_HEADER, None)
            return response

        return older


async def test_an_agent_sends_one_batch_at_a_time_to_a_hub_that_does_not_say_it_reads_after_seq(
    tmp_path: Path,
) -> None:
    older = OlderHub()
    async with open_store(str(tmp_path / "hub.db")) as store:
        agent_id, token = await store.add_agent([LOC])
        app = create_app(store, HubSettings(db=str(tmp_path / "hub.db")))
        app.middlewares.append(older.middleware())
        async with (
            serve_app(app) as hub,
            Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location=LOC) as outbox,
        ):
            movements = [Movement(LOC, f"SKU-{i % 50}", Kind.RECEIVE, 1, "pos:acme") for i in range(EVENTS)]
            await outbox.record(movements)
            replicator = Replicator(
                outbox, hub.url, token, batch_size=500, tick_s=0.2, retry_base_s=0.01, retry_max_s=0.05,
                timeout_s=20.0, rng=random.Random(7),
            )  # fmt: skip
            async with replicator:
                await asyncio.wait_for(replicator.wait_synced(), WAIT_S)
            stats = await outbox.stats()
            counts = await store.counts(limit=1000)
    assert older.ahead_refused == 0 and older.batches >= 3
    assert (stats.acked_seq, stats.backlog) == (EVENTS, 0)
    assert sum(row.on_hand for row in counts) == EVENTS
