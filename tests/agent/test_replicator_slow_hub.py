"""A hub slower than the agent's timeout_s on large batches (agent.replicator, SLOW_HUB_FLOOR): the real hub on
127.0.0.1 over a real SQLite file, made slow by a middleware that holds bodies of many events past the agent's
timeout before passing them on (the hub commits them late, after the agent gave up on the answer)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from agent import Movement, Outbox, Replicator
from hub import HubSettings, create_app, open_store
from protocol import Kind, decode_sync_request
from protocol.routes import SYNC_PATH
from tests.agent.test_replicator_pipeline import spy_marks
from tests.harness.inprocess import serve_app

LOC = "S001"
EVENTS = 9_000  # below the replicator's CATCHUP_BACKLOG: batches of batch_size
BATCH = 800
TIMEOUT_S = 0.5
SLOW_OVER = 300  # the hub is slow on bodies of more events than this …
SLOW_TIMES = 2  # … the first this many times
WAIT_S = 20.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class SlowHub:
    """Holds a sync of more than ``SLOW_OVER`` events three times the agent's timeout, then passes it on."""

    sizes: list[int] = field(default_factory=list)  # events of each sync that carried some, as received
    slowed: int = 0

    def middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        @web.middleware
        async def slow(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path == SYNC_PATH and request.method == "POST":
                events = len(decode_sync_request(await request.read()).events)
                if events:
                    self.sizes.append(events)
                if events > SLOW_OVER and self.slowed < SLOW_TIMES:
                    self.slowed += 1
                    await asyncio.sleep(3 * TIMEOUT_S)
            return await handler(request)

        return slow


async def test_a_hub_too_slow_for_a_big_batch_gets_smaller_ones_then_full_ones_again_and_every_event_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.replicator")
    slow = SlowHub()
    async with open_store(str(tmp_path / "hub.db")) as store:
        agent_id, token = await store.add_agent([LOC])
        app = create_app(store, HubSettings(db=str(tmp_path / "hub.db")))
        app.middlewares.append(slow.middleware())
        async with (
            serve_app(app) as hub,
            Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location=LOC) as outbox,
        ):
            await outbox.record([Movement(LOC, f"SKU-{i % 50}", Kind.RECEIVE, 1, "pos:acme") for i in range(EVENTS)])
            marks = spy_marks(outbox)
            replicator = Replicator(
                outbox, hub.url, token, batch_size=BATCH, tick_s=0.2, retry_base_s=0.01, retry_max_s=0.05,
                timeout_s=TIMEOUT_S, rng=random.Random(7),
            )  # fmt: skip
            async with replicator:
                await asyncio.wait_for(replicator.wait_synced(), WAIT_S)
            await asyncio.sleep(3 * TIMEOUT_S)  # the batches held when the agent gave up are committed meanwhile
            stats = await outbox.stats()
            (status,) = await store.agent_status(agent_id)
            counts = await store.counts(limit=1000)
    # halved on each timeout, then a quarter more after each batch answered in time (the next batch, read while
    # one is on its way, at the size before), back to batch_size
    grown = slow.sizes[2 : slow.sizes.index(BATCH, 2) + 1]
    assert slow.sizes[:2] == [800, 400] and grown[0] == 200 and grown == sorted(grown), slow.sizes
    assert {250, 312, 390, 487, 608, 760} <= set(grown), slow.sizes
    said = [r.getMessage() for r in caplog.records if "did not answer a batch of" in r.getMessage()]
    assert len(said) == 2 and "a batch of 800 events within 0.5 s; sending at most 400 per batch" in said[0], said
    assert "answers batches in time again" in caplog.text
    assert (stats.acked_seq, stats.backlog) == (EVENTS, 0)
    assert status.hwm == {outbox.epoch: EVENTS}
    assert sum(row.on_hand for row in counts) == EVENTS  # every event stored, none twice
    assert marks == sorted(marks), f"the acknowledged mark went back: {marks}"
