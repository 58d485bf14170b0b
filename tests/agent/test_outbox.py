"""The outbox on real SQLite files: durability, atomicity, idempotence, the clock, set-asides, the mark."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path

import pytest

from agent import EventConflict, InvalidMovement, Movement, Outbox, OutboxClosed, OutboxError, OutboxMissing
from agent import outbox as outbox_module
from agent.db import SqliteThread
from protocol import Kind, Rejection, derived_event_id, pack_hlc, unpack_hlc

AGENT = "store-1"
LOC = "S001"
DAY_MS = 86_400_000


class FakeWall:
    """A wall clock the test moves by hand (ms)."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def sale(sku: str = "SKU-1", qty: int = -1, **kw: object) -> Movement:
    return Movement(LOC, sku, Kind.SALE, qty, "pos:acme", **kw)  # type: ignore[arg-type]


async def test_events_survive_reopen_with_same_epoch_and_seq_continues(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        first = await outbox.record([sale("A"), sale("B"), Movement(LOC, "A", Kind.RECEIVE, 12, "scanner:dock-1")])
        epoch = outbox.epoch
    assert [ev.seq for ev in first.events] == [1, 2, 3]

    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        assert outbox.epoch == epoch
        pending = await outbox.pending(100)
        assert pending == first.events
        more = await outbox.record([sale("C")])
    assert more.events[0].seq == 4
    assert more.events[0].epoch == epoch


async def test_a_recreated_file_gets_a_new_epoch_and_starts_at_seq_1(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([sale(), sale()])
        old_epoch = outbox.epoch
    path.unlink()  # the -wal file may be left behind; it must not be replayed into the new file

    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        assert outbox.epoch != old_epoch
        assert await outbox.pending(100) == ()
        result = await outbox.record([sale()])
    assert result.events[0].seq == 1


async def test_a_bad_movement_records_none_of_its_batch(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        with pytest.raises(InvalidMovement, match=r"movement 1 \(sale of 'B'\).*qty.*negative"):
            await outbox.record([sale("A"), sale("B", qty=+3), sale("C")])
        stats = await outbox.stats()
        assert (stats.backlog, stats.last_seq) == (0, 0)
        ok = await outbox.record([sale("A")])
    assert ok.events[0].seq == 1  # the failed batch used no seq


async def test_recording_the_same_event_ids_again_is_a_no_op(tmp_path: Path) -> None:
    ids = [derived_event_id(1_700_000_000_000, f"pos-row-{n}".encode()) for n in range(3)]
    when = pack_hlc(1_700_000_000_000, 0)
    batch = [sale(f"SKU-{n}", event_id=ids[n], occurred_at=when) for n in range(3)]
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        first = await outbox.record(batch[:2])
        again = await outbox.record(batch)
        assert [ev.event_id for ev in first.events] == ids[:2]
        assert again.duplicates == tuple(ids[:2])
        assert [ev.event_id for ev in again.events] == [ids[2]]
        assert again.events[0].seq == 3
        assert again.events[0].occurred_at == when
        assert (await outbox.stats()).backlog == 3


async def test_the_same_event_id_with_different_content_is_refused_and_records_nothing(tmp_path: Path) -> None:
    event_id = derived_event_id(1_700_000_000_000, b"pos-row-1")
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([sale("A", event_id=event_id)])
        with pytest.raises(InvalidMovement, match="already recorded with a different qty"):
            await outbox.record([sale("NEW"), sale("A", qty=-2, event_id=event_id)])
        assert [ev.sku for ev in await outbox.pending(10)] == ["A"]


async def test_the_clock_never_goes_back_across_reopen_even_if_the_wall_clock_does(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    wall = FakeWall()
    async with Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall) as outbox:
        before = (await outbox.record([sale(), sale()])).events[-1].occurred_at
        wall.now_ms -= 60_000  # NTP steps the clock back a minute
        during = (await outbox.record([sale()])).events[0].occurred_at
    assert during > before

    wall.now_ms -= DAY_MS  # and a day more while the agent was down
    async with Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall) as outbox:
        after = (await outbox.record([sale()])).events[0].occurred_at
    assert after > during
    assert unpack_hlc(after)[0] == unpack_hlc(before)[0]  # wall part held, counter advanced


async def test_two_writers_on_one_file_issue_distinct_seqs_and_a_monotonic_clock(tmp_path: Path) -> None:
    """``shelfsync-agent record`` may write while ``run`` holds the file open."""
    path = tmp_path / "o.sqlite3"
    slow = FakeWall(1_700_000_000_000)
    async with (
        Outbox.open(path, agent_id=AGENT, location=LOC) as one,
        Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=slow) as two,
    ):
        a = await one.record([sale("A")])
        b = await two.record([sale("B")])  # its wall clock is years behind
        c = await one.record([sale("C")])
        events = [*a.events, *b.events, *c.events]
    assert [ev.seq for ev in events] == [1, 2, 3]
    assert events[0].occurred_at < events[1].occurred_at < events[2].occurred_at


async def test_set_aside_events_leave_the_backlog_and_are_listed_with_their_reason(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        events = (await outbox.record([sale("A"), sale("B"), sale("C")])).events
        bad = events[1]
        assert await outbox.set_aside([Rejection(bad.event_id, bad.seq, "invalid", "sku B is not sold here")]) == 1
        assert [ev.sku for ev in await outbox.pending(10)] == ["A", "C"]
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        rejected = await outbox.list_rejected()
        assert [(r.event, r.code, r.reason) for r in rejected] == [(bad, "invalid", "sku B is not sold here")]
        stats = await outbox.stats()
        assert (stats.backlog, stats.set_aside) == (2, 1)
        # re-recording a set-aside event (a POS re-import) does not put it back in the queue
        again = await outbox.record([sale("B", event_id=bad.event_id, occurred_at=bad.occurred_at)])
        assert again.duplicates == (bad.event_id,)
        assert (await outbox.stats()).backlog == 2


async def test_events_the_hub_holds_in_its_clock_quarantine_are_said_in_one_line_per_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An export older than the store's credential had every row held: one WARNING per event, 10,000 a batch."""
    caplog.set_level(logging.DEBUG, logger="agent.outbox")
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        events = (await outbox.record([sale(f"S{i}") for i in range(50)])).events
        reason = "its clock reads 2024-01-01, before this agent's credential was issued"
        held = [Rejection(ev.event_id, ev.seq, outbox_module.HELD_CODE, reason) for ev in events[5:45]]
        assert await outbox.set_aside(held) == 0  # held by the hub: not set aside here
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    whole = "The hub holds 40 events (seq 6 to 45) in its clock quarantine, for an operator to apply or refuse there;"
    assert said == [f"{whole} the first: {reason}."]


async def test_the_acked_mark_rewinds_when_the_hub_mark_goes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([sale(f"S{n}") for n in range(5)])
        assert (await outbox.mark_acked(5)).backlog == 0
        assert await outbox.pending(10) == ()
        with caplog.at_level(logging.WARNING, logger="agent.outbox"):
            result = await outbox.mark_acked(2)
        assert result.rewound and result.backlog == 3
        assert [ev.seq for ev in await outbox.pending(10)] == [3, 4, 5]
    assert "below the 5 it acknowledged before" in caplog.text


async def test_a_hub_ahead_of_the_outbox_forks_it_to_a_new_epoch_and_keeps_every_row_pending(tmp_path: Path) -> None:
    """A file restored from a backup must not reuse the hub's seqs of its epoch, nor skip its own rows
    (tests/agent/test_outbox_lineage.py has the rest)."""
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([sale()])
        old_epoch = outbox.epoch
        result = await outbox.mark_acked(40)
        assert result.forked_from_epoch == old_epoch and outbox.epoch != old_epoch
        await outbox.record([sale()])
        assert [(ev.seq, ev.epoch) for ev in await outbox.pending(10)] == [(1, outbox.epoch), (2, outbox.epoch)]


async def test_acknowledged_events_are_kept_for_the_retention_period_then_purged(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    wall = FakeWall()
    hub_ms = wall.now_ms  # the hub's clock, as its answers tell it
    retention_s = 2 * 86_400.0
    async with Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall, retention_s=retention_s) as outbox:
        events = (await outbox.record([sale("A"), sale("B"), sale("C")])).events
        await outbox.set_aside([Rejection(events[0].event_id, 1, "invalid", "no")])
        await outbox.mark_acked(2, hub_ms=hub_ms)
    hub_ms += DAY_MS
    wall.now_ms += DAY_MS  # retention runs on time both clocks agree on
    async with Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall, retention_s=retention_s) as outbox:
        await outbox.mark_acked(0, hub_ms=hub_ms)  # still within retention: everything can be resent
        assert [ev.seq for ev in await outbox.pending(10)] == [2, 3]
        await outbox.mark_acked(2, hub_ms=hub_ms)
    hub_ms += 3 * DAY_MS
    wall.now_ms += 3 * DAY_MS
    async with Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall, retention_s=retention_s) as outbox:
        await outbox.mark_acked(2, hub_ms=hub_ms)  # the hub's clock is now past B's retention: B is purged
        await outbox.mark_acked(0, hub_ms=hub_ms)  # a rewind resends only what is kept: the set-aside A and C stay
        assert [ev.seq for ev in await outbox.pending(10)] == [3]
        assert [r.event.sku for r in await outbox.list_rejected()] == ["A"]


async def test_a_wrong_local_clock_never_ages_acknowledged_events(tmp_path: Path) -> None:
    """Retention runs on the hub's clock: a machine clock a century ahead purges nothing, so a hub restored
    from a backup can still be sent everything it lost."""
    path = tmp_path / "o.sqlite3"
    wall = FakeWall()
    hub_ms = wall.now_ms
    async with Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall, retention_s=86_400.0) as outbox:
        await outbox.record([sale("A"), sale("B")])
        await outbox.mark_acked(2, hub_ms=hub_ms)
        wall.now_ms += 100 * 365 * DAY_MS  # a dead CMOS battery, a wrong year typed
        await outbox.record([sale("C")])
        await outbox.mark_acked(3, hub_ms=hub_ms + 60_000)
    async with Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall, retention_s=86_400.0) as outbox:
        await outbox.mark_acked(0, hub_ms=hub_ms + 120_000)  # the hub was restored: all three can be resent
        assert [ev.sku for ev in await outbox.pending(10)] == ["A", "B", "C"]


async def test_a_hub_clock_once_far_ahead_does_not_stop_the_purge_for_good(tmp_path: Path) -> None:
    """Found by answering a sync with a hub clock a year ahead, then right again: the hub's time was kept at
    its maximum, so every later acknowledgement was stamped a year ahead and nothing was purged for a year (60
    days of trading later, every row was still there). Now the purge runs on the hub's clock as put right."""
    path = tmp_path / "o.sqlite3"
    wall = FakeWall()
    hub_ms = wall.now_ms
    async with Outbox.open(path, agent_id=AGENT, location=LOC, wall_clock_ms=wall, retention_s=2 * 86_400.0) as outbox:
        await outbox.record([sale("A")])
        await outbox.mark_acked(1, hub_ms=hub_ms + 365 * DAY_MS)  # one answer from a hub a year ahead
        for day in range(1, 11):  # its clock is put right; ten days of trading, one sale a day
            wall.now_ms += DAY_MS
            await outbox.record([sale(f"D{day}")])
            await outbox.mark_acked(1 + day, hub_ms=hub_ms + day * DAY_MS)
        await outbox.mark_acked(0, hub_ms=hub_ms + 10 * DAY_MS)  # a rewind resends everything still kept
        kept = [ev.sku for ev in await outbox.pending(100)]
    assert kept == ["D9", "D10"]  # two days of retention on the hub's right clock: D8 was acknowledged 2 days ago


async def test_record_wakes_the_replicator_after_commit(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        assert not outbox.new_data.is_set()
        await outbox.record([sale()])
        assert outbox.new_data.is_set()


async def test_tally_counts_in_the_same_transaction(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        await outbox.record([sale(), sale()], tally="sim")
        await outbox.record([sale()])
        with pytest.raises(InvalidMovement):
            await outbox.record([sale(), sale(qty=4)], tally="sim")
        assert await outbox.tally("sim") == 2


async def test_close_twice_is_safe_and_calls_after_close_raise(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC)
    await outbox.close()
    await outbox.close()
    for call in (
        outbox.record([sale()]),
        outbox.pending(1),
        outbox.stats(),
        outbox.mark_acked(1),
        outbox.counts.local_count(LOC, "A"),
    ):
        with pytest.raises(OutboxClosed, match="is closed"):
            await call


async def test_open_refuses_another_agents_file_a_missing_file_and_a_non_outbox(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    async with Outbox.open(path, agent_id=AGENT, location=LOC):
        pass
    with pytest.raises(OutboxError, match="belongs to agent 'store-1', not 'store-2'"):
        await Outbox.open(path, agent_id="store-2", location=LOC)
    with pytest.raises(OutboxMissing, match="no outbox at"):
        await Outbox.open(tmp_path / "nope.sqlite3", agent_id=AGENT, location=None, create=False)
    assert not (tmp_path / "nope.sqlite3").exists()
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match="not a usable shelfsync outbox"):
        await Outbox.open(junk, agent_id=AGENT, location=LOC)
    with pytest.raises(OutboxError, match="synchronous must be one of full, normal"):
        await Outbox.open(tmp_path / "x.sqlite3", agent_id=AGENT, location=LOC, synchronous="off")
    with pytest.raises(OutboxError, match="location"):
        await Outbox.open(tmp_path / "y.sqlite3", agent_id=AGENT, location="bad location")


@pytest.mark.parametrize("journal", ["delete", "wal"])
async def test_opening_another_programs_database_only_to_read_it_changes_nothing_in_it(
    tmp_path: Path, journal: str
) -> None:
    """``create=False`` (``outbox send FILE``, ``status``) changes nothing in the file it opens: a hub's backup handed
    to ``outbox send`` by mistake was switched to WAL before it was refused, and a backup in WAL mode is then taken
    for a live database (a hub refuses to back up over it). It is refused now, its bytes and mode as they were."""
    other = tmp_path / "hub-backup.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute(f"PRAGMA journal_mode = {journal}")
        conn.execute("CREATE TABLE events (event_id BLOB PRIMARY KEY)")
        conn.commit()
    before = other.read_bytes()
    with pytest.raises(OutboxError, match=f"{other} is not a (usable )?shelfsync outbox"):
        await Outbox.open(other, agent_id=None, location=None, create=False)
    assert other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub-backup.db"]  # nothing left beside it


async def test_synchronous_normal_is_accepted(tmp_path: Path) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC, synchronous="normal") as outbox:
        await outbox.record([sale()])
        assert (await outbox.stats()).backlog == 1


async def test_the_backlog_figure_matches_the_pending_events_through_acks_set_asides_and_rewinds(
    tmp_path: Path,
) -> None:
    async with Outbox.open(tmp_path / "o.sqlite3", agent_id=AGENT, location=LOC) as outbox:

        async def agree() -> None:
            stats = await outbox.stats()
            pending = await outbox.pending(10_000)
            assert stats.backlog == len(pending)
            assert stats.oldest_pending_ms == (pending[0].wall_ms if pending else None)

        events = (await outbox.record([sale(f"SKU-{n % 3}") for n in range(20)])).events
        await agree()
        await outbox.set_aside([Rejection(ev.event_id, ev.seq, "invalid", "no") for ev in events[3:6]])
        await agree()
        await outbox.mark_acked(10)  # some set-asides now below the mark
        await agree()
        await outbox.set_aside([Rejection(events[15].event_id, 16, "invalid", "no")])
        await agree()
        await outbox.mark_acked(4)  # the hub was restored: the mark goes back
        await agree()
        await outbox.mark_acked(20)
        await agree()
        assert (await outbox.stats()).backlog == 0


async def test_opening_waits_while_another_process_holds_the_new_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent starting while ``record`` opens the same outbox (or the reverse) can meet SQLite's "database is
    locked" without its busy handler (seen under load in the adversarial suite): the open tries again for a
    while instead of calling the file unusable, and says "locked", not "unusable", if it never frees."""
    path = tmp_path / "o.sqlite3"
    real_connect = SqliteThread._connect
    refusals = [sqlite3.OperationalError("database is locked")] * 3

    def connect(self: SqliteThread) -> None:
        if refusals:
            raise refusals.pop()
        real_connect(self)

    monkeypatch.setattr(SqliteThread, "_connect", connect)
    async with Outbox.open(path, agent_id=AGENT, location=LOC) as outbox:
        assert (await outbox.record([sale()])).events[0].seq == 1
    assert refusals == []

    monkeypatch.setattr(outbox_module, "OPEN_BUSY_S", 0.2)
    refusals.extend([sqlite3.OperationalError("database is locked")] * 1000)
    with pytest.raises(OutboxError, match="stayed locked by another process"):
        await Outbox.open(path, agent_id=AGENT, location=LOC)


async def test_events_of_a_saved_copy_are_taken_over_as_they_are_and_those_held_already_are_duplicates(
    tmp_path: Path,
) -> None:
    """agent.saved: a copy's movements recorded in the outbox with their ids, stamps and wall times, new seqs."""
    async with Outbox.open(tmp_path / "copy.sqlite3", agent_id=AGENT, location=LOC, wall_clock_ms=FakeWall()) as copy:
        shared = await copy.record([sale("A")])
        own = await copy.record([sale("B"), sale("C")])
        events = (await copy.outgoing(10)).events
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=AGENT, location=LOC) as outbox:
        first = shared.events[0]
        await outbox.record([sale("A", event_id=first.event_id, occurred_at=first.occurred_at)])  # the backup's
        await outbox.record([sale("D")])
        taken = await outbox.take_over(events)
        assert [ev.event_id for ev in taken.events] == [ev.event_id for ev in own.events]
        assert taken.duplicates == (shared.events[0].event_id,)
        held = {ev.event_id: ev for ev in await outbox.pending(10)}
        for ev in own.events:
            assert (held[ev.event_id].occurred_at, held[ev.event_id].wall_ms) == (ev.occurred_at, ev.wall_ms)
        assert [ev.seq for ev in taken.events] == [3, 4] and held[ev.event_id].epoch == outbox.epoch
        changed = own.events[0].stamped(seq=1, occurred_at=own.events[0].occurred_at + 1, wall_ms=0)
        with pytest.raises(EventConflict, match="already recorded with a different occurred_at"):
            await outbox.take_over([changed])
        assert len(await outbox.pending(10)) == 4
