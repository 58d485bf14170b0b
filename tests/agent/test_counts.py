"""The local count cache: hub answers plus pending events."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import Movement, Outbox
from agent import outbox as outbox_module
from agent.counts import HeldCounts
from protocol import CountSnapshot, Kind, Rejection, SyncResponse

AGENT = "store-1"
LOC = "S001"


def move(kind: Kind, qty: int, sku: str = "A", **kw: object) -> Movement:
    return Movement(LOC, sku, kind, qty, "scanner:1", **kw)  # type: ignore[arg-type]


def answer(outbox: Outbox, hwm: int, *counts: CountSnapshot, server_time_ms: int = 1_700_000_000_000) -> SyncResponse:
    return SyncResponse(outbox.agent_id, outbox.epoch, hwm, counts=counts, server_time_ms=server_time_ms)


async def test_local_count_is_the_hub_count_plus_pending_deltas(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([move(Kind.RECEIVE, 10), move(Kind.SALE, -1)])
        await outbox.apply_answer(answer(outbox, 2, CountSnapshot(LOC, "A", 9, 0, 9)), clock_skew_ms=0)
        hub = await outbox.counts.hub_count(LOC, "A")
        assert hub is not None and (hub.on_hand, hub.as_of_ms) == (9, 1_700_000_000_000)

        await outbox.record([move(Kind.SALE, -2), move(Kind.RETURN, 1), move(Kind.SALE, -5, sku="B")])
        local = await outbox.counts.local_count(LOC, "A")
        assert (local.on_hand, local.available, local.pending_events) == (8, 8, 2)

        other = await outbox.counts.local_count(LOC, "B")  # the hub never answered for B
        assert (other.on_hand, other.hub_as_of_ms, other.pending_events) == (-5, None, 1)
        assert other.available == 0


async def test_a_pending_count_replaces_on_hand_and_reservations_change_available(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([move(Kind.RECEIVE, 20)])
        # hub: 20 on hand, 2 reserved, safety stock 3 -> 15 available
        await outbox.apply_answer(answer(outbox, 1, CountSnapshot(LOC, "A", 20, 2, 15)), clock_skew_ms=0)
        await outbox.record([move(Kind.SALE, -4), move(Kind.COUNT, 12), move(Kind.SALE, -1), move(Kind.RESERVE, 3)])
        local = await outbox.counts.local_count(LOC, "A")
        assert (local.on_hand, local.reserved, local.available) == (11, 5, 3)


async def test_set_aside_events_do_not_count_and_acknowledged_ones_come_from_the_hub(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        events = (await outbox.record([move(Kind.RECEIVE, 10), move(Kind.SALE, -3)])).events
        await outbox.set_aside([Rejection(events[1].event_id, events[1].seq, "invalid", "no")])
        assert (await outbox.counts.local_count(LOC, "A")).on_hand == 10
        await outbox.apply_answer(answer(outbox, 2, CountSnapshot(LOC, "A", 7, 0, 7)), clock_skew_ms=0)
        local = await outbox.counts.local_count(LOC, "A")
        assert (local.on_hand, local.pending_events) == (7, 0)


async def test_an_older_answer_does_not_overwrite_a_newer_count(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        await outbox.apply_answer(
            answer(outbox, 0, CountSnapshot(LOC, "A", 5, 0, 5), server_time_ms=2_000), clock_skew_ms=0
        )
        await outbox.apply_answer(
            answer(outbox, 0, CountSnapshot(LOC, "A", 9, 0, 9), server_time_ms=1_000), clock_skew_ms=0
        )
        assert [c.on_hand for c in await outbox.counts.all_hub_counts(LOC)] == [5]


async def test_counts_of_answers_a_full_disk_refused_are_stored_with_the_answer_that_moves_the_mark_past_them(
    tmp_path: Path,
) -> None:
    """agent.counts.HeldCounts: the replicator sent on past answers it could not store (docs/design.md, "A full
    disk at the store"); the first answer stored moves the mark past their movements, so their counts go with it,
    and only then: stored with an answer below their mark, the movements would count twice (pending and the hub's)."""
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([move(Kind.RECEIVE, 10)])
        await outbox.apply_answer(answer(outbox, 1, CountSnapshot(LOC, "A", 10, 0, 10)), clock_skew_ms=0)
        await outbox.record([move(Kind.RECEIVE, 5), move(Kind.SALE, -1, sku="B"), move(Kind.SALE, -2, sku="C")])
        held = HeldCounts()  # the answers to seq 2 and 3, not stored
        held.add(2, [CountSnapshot(LOC, "A", 15, 0, 15)], 1_700_000_001_000, None)
        held.add(3, [CountSnapshot(LOC, "B", -1, 0, 0)], 1_700_000_002_000, None)
        assert (await outbox.counts.local_count(LOC, "A")).on_hand == 15  # pending, once

        await outbox.apply_answer(answer(outbox, 1, server_time_ms=1_700_000_003_000), clock_skew_ms=0, held=held)
        assert await outbox.counts.hub_count(LOC, "B") is None, "an answer below their mark does not store them"
        assert [(await outbox.counts.local_count(LOC, s)).on_hand for s in "ABC"] == [15, -1, -2]

        final = answer(outbox, 3, server_time_ms=1_700_000_004_000)  # a heartbeat's: no counts of its own
        await outbox.apply_answer(final, clock_skew_ms=0, held=held)
        a, b, c = [await outbox.counts.local_count(LOC, s) for s in "ABC"]
        assert (a.on_hand, a.pending_events, a.hub_as_of_ms) == (15, 0, 1_700_000_001_000)
        assert (b.on_hand, b.pending_events) == (-1, 0)
        assert (c.on_hand, c.pending_events) == (-2, 1)  # seq 4 is still on its way


async def test_retention_purging_a_due_keys_movements_keeps_them_in_its_count_without_the_pending_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox alone (agent.counts.keep_expiring): a due key whose acknowledged movements retention purges keeps
    them in the hub's count held here (a sale, a reservation), not its pending ones, and is due no more."""
    monkeypatch.setattr(outbox_module, "PURGE_EVERY_MS", 0)
    wall = [1_700_000_000_000]
    async with Outbox.open(
        tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC, retention_s=10.0, wall_clock_ms=lambda: wall[0]
    ) as outbox:
        await outbox.record([move(Kind.RECEIVE, 10)])
        first = answer(outbox, 1, CountSnapshot(LOC, "A", 10, 0, 10), server_time_ms=wall[0])
        await outbox.apply_answer(first, clock_skew_ms=0, counted=(1, 1))
        await outbox.record([move(Kind.SALE, -3), move(Kind.RESERVE, 2, ref="R-1")])  # seq 2, 3: answer lost
        wall[0] += 1_000
        assert (await outbox.apply_answer(answer(outbox, 3, server_time_ms=wall[0]), clock_skew_ms=0)).due == 1
        await outbox.record([move(Kind.SALE, -1)])  # seq 4, pending
        a = await outbox.counts.local_count(LOC, "A")
        assert (a.on_hand, a.reserved, a.pending_events, a.stale_events) == (6, 2, 1, 2)

        wall[0] += 20_000  # the hub's answers and this machine's clock: 20 s on, past the 10 s kept
        await outbox.apply_answer(answer(outbox, 3, server_time_ms=wall[0]), clock_skew_ms=0)
        assert await outbox.counts.due_locations() == []
        a = await outbox.counts.local_count(LOC, "A")
        assert (a.on_hand, a.reserved, a.pending_events, a.stale_events) == (6, 2, 1, 0)
        hub = await outbox.counts.hub_count(LOC, "A")
        assert hub is not None and (hub.on_hand, hub.reserved, hub.available) == (7, 2, 5)
        assert [ev.seq for ev in await outbox.booked(LOC, "A")] == [4]  # the acknowledged ones were purged
