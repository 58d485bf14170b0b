"""Acknowledged events stay in the outbox for the retention period whatever either clock does: real SQLite files,
a stand-in hub on 127.0.0.1 whose clock the test sets wrong, and a machine clock the test moves by hand."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from pathlib import Path

import pytest

from agent import Movement, Outbox, Replicator
from protocol import Kind, wall_ms_now
from tests.agent.agent_fakehub import FakeHub

AGENT = "store-1"
LOC = "S001"
WAIT_S = 15.0
DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS


class FakeWall:
    """This machine's clock, moved by hand (ms)."""

    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


async def sync(outbox: Outbox, hub: FakeHub, sku: str) -> None:
    """Record one sale of ``sku`` and run a replicator until the hub has acknowledged it (handshake, then batch)."""
    await outbox.record([Movement(LOC, sku, Kind.SALE, -1, "pos:acme")])
    replicator = Replicator(
        outbox, hub.url, "token-1", tick_s=0.1, retry_base_s=0.01, retry_max_s=0.05, heartbeat_s=3600,
        rng=random.Random(3),
    )  # fmt: skip
    async with replicator:
        await asyncio.wait_for(replicator.wait_synced(), WAIT_S)


def kept(path: Path) -> list[str]:
    """The SKUs of the rows the outbox file still holds, read with a connection of its own."""
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT sku FROM events ORDER BY seq")]


@pytest.mark.parametrize(
    ("wrong", "direction"),
    [("hub", +1), ("hub", -1), ("local", +1), ("local", -1)],
    ids=["hub-a-year-ahead", "hub-a-year-behind", "local-a-year-ahead", "local-a-year-behind"],
)
async def test_a_clock_a_year_wrong_neither_shortens_nor_freezes_retention(
    wrong: str, direction: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a hub answering with its clock a year ahead: the outbox took that time as now and purged every
    acknowledged event at once, so a hub restored from a backup could no longer be sent them. A hub a year behind
    did the same once its clock was put right (what it acknowledged was stamped a year in the past). Now
    acknowledgements age by the lesser of what the two clocks moved: a wrong clock either way ages nothing, and
    time both clocks agree on still purges."""
    caplog.set_level(logging.WARNING, logger="agent.outbox")
    path = tmp_path / "outbox.sqlite3"
    wall = FakeWall(wall_ms_now())
    async with (
        FakeHub() as hub,
        Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall, retention_s=2 * 86_400.0) as outbox,
    ):
        await sync(outbox, hub, "A")  # both clocks right
        if wrong == "hub":
            hub.skew_ms = direction * YEAR_MS
        else:
            wall.now_ms += direction * YEAR_MS
        await sync(outbox, hub, "B")  # one clock a year wrong
        assert kept(path) == ["A", "B"]
        hub.skew_ms, wall.now_ms = 0, wall_ms_now()  # put right
        await sync(outbox, hub, "C")
        assert kept(path) == ["A", "B", "C"]  # a restored hub can still be sent all three
        hub.skew_ms, wall.now_ms = 3 * DAY_MS, wall.now_ms + 3 * DAY_MS  # three days later, by both clocks
        await sync(outbox, hub, "D")
        assert kept(path) == ["D"]  # the retention period passed for the three: it is not frozen either
    said = [r.getMessage() for r in caplog.records if "acknowledged events age by" in r.getMessage()]
    assert len(said) == 2, said  # one sentence when the clock went wrong, one when it was put right


async def test_two_hubs_hours_apart_answering_in_turn_warn_once_an_hour_each_way_and_retention_stays_right(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found with two hubs whose clocks are three hours apart answering one agent in turn: every answer moved the
    hub's clock three hours one way or the other, and the clocks-apart WARNING repeated at every answer. Now it
    is said once for each direction, again only an hour later; the retention clock still moves by neither jump."""
    caplog.set_level(logging.WARNING, logger="agent.outbox")
    path = tmp_path / "outbox.sqlite3"
    wall = FakeWall(wall_ms_now())
    apart_ms = 3 * 3_600_000
    async with (
        FakeHub() as hub,
        Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall, retention_s=2 * 86_400.0) as outbox,
    ):
        for turn in range(8):
            hub.skew_ms = apart_ms * (turn % 2)  # the first hub, then the second, in turn
            await sync(outbox, hub, f"T{turn}")
        said = [r.getMessage() for r in caplog.records if "acknowledged events age by" in r.getMessage()]
        assert len(said) == 2, said
        assert "its clock moved +3.0 h" in said[0] and "its clock moved -3.0 h" in said[1]
        monotonic_s = outbox._monotonic_s
        outbox._monotonic_s = lambda: monotonic_s() + 3_601.0  # an hour later
        for turn in (8, 9):
            hub.skew_ms = apart_ms * (turn % 2)
            await sync(outbox, hub, f"T{turn}")
        said = [r.getMessage() for r in caplog.records if "acknowledged events age by" in r.getMessage()]
        assert len(said) == 4, said
        assert kept(path) == [f"T{turn}" for turn in range(10)]  # the jumps aged nothing
        hub.skew_ms, wall.now_ms = 3 * DAY_MS, wall.now_ms + 3 * DAY_MS  # three days later, by both clocks
        await sync(outbox, hub, "D")
        assert kept(path) == ["D"]  # and retention is not frozen either


async def test_movements_sent_again_to_a_restored_hub_are_kept_from_that_acknowledgement(tmp_path: Path) -> None:
    """Found: the outbox kept the acknowledgements of a hub that was then restored from an older backup, and aged
    the movements it sent the restored hub again from the first acknowledgement, not from the restored hub's: they
    were purged that much earlier, so a second restore (the first copy found bad, an older one put back) within
    retention_days of the resend could no longer be sent them. A rewind now forgets the acknowledgements above
    the hub's mark."""
    path = tmp_path / "outbox.sqlite3"
    wall = FakeWall(wall_ms_now())
    async with (
        FakeHub() as hub,
        Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall, retention_s=2 * 86_400.0) as outbox,
    ):
        await sync(outbox, hub, "A")
        await sync(outbox, hub, "B")
        hub.skew_ms += 3 * DAY_MS // 2  # a day and a half later, both clocks agreeing
        wall.now_ms += 3 * DAY_MS // 2
        hub.restore(AGENT, outbox.epoch, 0)  # from a backup made before A
        await sync(outbox, hub, "C")  # A and B sent again, acknowledged now
        assert hub.on_hand(LOC, "A") == hub.on_hand(LOC, "B") == -1
        hub.skew_ms += DAY_MS
        wall.now_ms += DAY_MS
        await sync(outbox, hub, "D")  # two and a half days after A and B were first acknowledged, one after again
        assert kept(path) == ["A", "B", "C", "D"]


async def test_movements_sent_again_in_a_new_epoch_from_0_are_kept_from_that_acknowledgement(tmp_path: Path) -> None:
    """Found: a hub restored with another history of this outbox's epoch below its acknowledged mark (its seq is
    another copy's movement) makes the outbox fork to a new epoch numbered from 0, and it sends everything again;
    the acknowledgements of the old epoch stayed, so the movements sent again aged from the first hub's
    acknowledgement and were purged that much earlier. The fork now forgets the acknowledgements above its base."""
    path = tmp_path / "outbox.sqlite3"
    wall = FakeWall(wall_ms_now())
    async with (
        FakeHub() as hub,
        Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall, retention_s=2 * 86_400.0) as outbox,
    ):
        await sync(outbox, hub, "A")
        await sync(outbox, hub, "B")
        old = outbox.epoch
        hub.skew_ms += 3 * DAY_MS // 2  # a day and a half later, both clocks agreeing
        wall.now_ms += 3 * DAY_MS // 2
        hub.restore(AGENT, old, 0)  # from a backup made before A …
        forked = await outbox.mark_acked(1, b"\x01" * 16, hub_ms=wall.now_ms)  # … whose seq 1 is another copy's
        assert (forked.forked_from_epoch, forked.acked_seq) == (old, 0)
        await sync(outbox, hub, "C")  # A and B sent again in the new epoch, acknowledged now
        assert outbox.epoch != old and hub.on_hand(LOC, "A") == hub.on_hand(LOC, "B") == -1
        hub.skew_ms += DAY_MS
        wall.now_ms += DAY_MS
        await sync(outbox, hub, "D")  # two and a half days after A and B were first acknowledged, one after again
        assert kept(path) == ["A", "B", "C", "D"]
