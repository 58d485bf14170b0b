"""Catching up after an outage: the replicator reads the next batch while one is on its way, and sends larger
batches while a large backlog waits — with every event still sent once, in seq order, and nothing skipped
when an answer refuses part of a batch or the hub asks for smaller ones (tests/agent/agent_fakehub.py on
127.0.0.1, a real outbox file)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent import Movement, Outbox, Replicator
from agent.replicator import CATCHUP_BACKLOG, CATCHUP_BATCH_FACTOR
from protocol import MAX_BATCH_EVENTS, Kind
from tests.agent.agent_fakehub import FakeHub

AGENT = "store-1"
LOC = "S001"
BATCH = 100
BACKLOG = CATCHUP_BACKLOG + 2_000
WAIT_S = 60.0


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as running:
        yield running


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=AGENT, location=LOC, synchronous="normal") as opened:
        for start in range(0, BACKLOG, 2_000):  # the store kept selling while the hub was out of reach
            await opened.record([Movement(LOC, "SKU-1", Kind.SALE, -1, "pos:acme") for _ in range(2_000)])
        yield opened


def replicator(outbox: Outbox, hub: FakeHub) -> Replicator:
    return Replicator(
        outbox, hub.url, hub.token, batch_size=BATCH, tick_s=0.1, retry_base_s=0.01, retry_max_s=0.05,
        timeout_s=10.0, rng=random.Random(5),
    )  # fmt: skip


def sent_once_in_order(hub: FakeHub, expected: list[int]) -> None:
    assert sorted(hub.applied) == expected
    assert hub.applied == expected  # first stored in seq order: nothing skipped and sent later


async def test_a_large_backlog_drains_in_larger_batches_each_event_once_with_a_true_backlog_report(
    hub: FakeHub, outbox: Outbox
) -> None:
    async with replicator(outbox, hub) as running:
        await asyncio.wait_for(running.wait_synced(), WAIT_S)
    batches = hub.batches()
    sizes = [len(b) for b in batches]
    large = BATCH * CATCHUP_BATCH_FACTOR
    assert sizes[0] == large and max(sizes) == large
    assert all(size <= BATCH for size in sizes[sizes.index(BATCH) :])  # back to batch_size once below the mark
    sent_once_in_order(hub, list(range(1, BACKLOG + 1)))
    reports = [(seen.seqs[0], seen.backlog) for seen in hub.requests if seen.seqs]
    assert all(backlog == BACKLOG - first + 1 for first, backlog in reports), reports  # this batch included
    stats = await outbox.stats()
    assert (stats.acked_seq, stats.backlog) == (BACKLOG, 0)


async def test_with_the_default_batch_size_a_large_backlog_goes_in_the_hubs_largest_batches(
    hub: FakeHub, outbox: Outbox
) -> None:
    """Each batch costs the hub a commit and a row per key it touched whatever its size: after an outage the
    agent sends as many events a request as the hub takes (10,000), then its batch_size again."""
    running = Replicator(outbox, hub.url, hub.token, tick_s=0.1, retry_base_s=0.01, timeout_s=10.0)
    async with running:
        await asyncio.wait_for(running.wait_synced(), WAIT_S)
    assert [len(b) for b in hub.batches()] == [MAX_BATCH_EVENTS, 1_000, 1_000]
    sent_once_in_order(hub, list(range(1, BACKLOG + 1)))


async def test_a_batch_refused_in_the_middle_of_a_catch_up_is_resent_without_the_bad_event_and_nothing_skipped(
    hub: FakeHub, outbox: Outbox
) -> None:
    bad = (await outbox.record([Movement(LOC, "SKU-BAD", Kind.SALE, -1, "pos:acme")])).events[0].seq
    await outbox.record([Movement(LOC, "SKU-1", Kind.SALE, -1, "pos:acme") for _ in range(300)])
    hub.invalid_skus.add("SKU-BAD")  # 422 for the batch holding it, whose successor was read ahead already
    async with replicator(outbox, hub) as running:
        await asyncio.wait_for(running.wait_synced(), WAIT_S)
    assert len(hub.batches(422)) == 1
    sent_once_in_order(hub, [seq for seq in range(1, BACKLOG + 302) if seq != bad])
    assert [r.event.seq for r in await outbox.list_rejected()] == [bad]


async def test_a_hub_that_refuses_large_batches_gets_smaller_ones_and_every_event_once(
    hub: FakeHub, outbox: Outbox
) -> None:
    hub.max_batch = 600  # the catch-up batches (1,000) are too large for this hub; half of them (500) are not
    async with replicator(outbox, hub) as running:
        await asyncio.wait_for(running.wait_synced(), WAIT_S)
        assert running.batch_size == BATCH
    assert [len(b) for b in hub.batches(413)] == [BATCH * CATCHUP_BATCH_FACTOR]
    assert max(len(b) for b in hub.batches()) == BATCH * CATCHUP_BATCH_FACTOR // 2
    sent_once_in_order(hub, list(range(1, BACKLOG + 1)))
