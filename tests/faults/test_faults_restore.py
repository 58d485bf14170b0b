"""The hub restored from an older backup gets back, from the agent, everything it lost.

While a real agent records and syncs, a consistent copy of the live hub
database is taken (SQLite's online backup); later the hub is SIGKILLed, its
database replaced by that older copy and the hub started again. The agent's
handshake finds the hub's mark below its own acknowledged one, rewinds and
sends the lost events again. Short run: one restore; long run: three.

The agent may also reach the restored hub with a batch rather than a
handshake (it saw no failure: the hub came back while it waited out a 429);
the last test pins down, at the store, that the hub then keeps its older
mark instead of raising it over the seqs it lost.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hub import open_store
from hub.storage.base import AgentIdentity
from protocol import Kind, StockEvent, new_event_id, pack_hlc, wall_ms_now
from tests.faults.helpers import Simulation, Store, drained, hub_events, scale, verify, wait_until
from tests.harness.hub_process import HubProcess
from tests.harness.sqlite_copy import backup


def restore(hub: HubProcess, copy: Path) -> None:
    live = Path(hub.db)
    for leftover in (live, live.with_name(live.name + "-wal"), live.with_name(live.name + "-shm")):
        leftover.unlink(missing_ok=True)
    backup(copy, live)


def test_a_hub_restored_from_an_older_backup_gets_every_lost_event_again(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    restores, total = scale(1, 3), scale(3_000, 9_000)
    store = make_store(hub, hub.url, simulation=Simulation(total, rate_per_s=600, seed=8, batch=5), batch_size=100)
    hub.start()
    agent = store.start()

    for n in range(restores):
        copy = tmp_path / f"hub-backup-{n}.db"
        base = len(hub_events(Path(hub.db)))
        wait_until("some events reach the hub", lambda base=base: len(hub_events(Path(hub.db))) >= base + 300)
        backup(Path(hub.db), copy)
        in_backup = len(hub_events(copy))
        wait_until("more events reach the hub", lambda n=in_backup: len(hub_events(Path(hub.db))) >= n + 500)
        hub.kill()  # the disk is lost
        restore(hub, copy)
        assert len(hub_events(Path(hub.db))) == in_backup
        hub.start()

    wait_until("the simulation completes", store.simulation_complete)
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert agent.stop() == 0
    held = verify(hub, [store])
    assert len(held) == total
    assert "restored from a backup" in store.log(), "the agent says why it sends old events again"


async def test_a_batch_sent_to_a_restored_hub_without_a_handshake_never_hides_the_lost_seqs(tmp_path: Path) -> None:
    """The agent may reach a restored hub with a batch, not a handshake (it saw no failure: the hub came back
    while it waited). The hub commits the batch and answers its older mark — and must keep that mark, or the
    resend of the lost seqs would be acknowledged past them."""
    def ev(seq: int) -> StockEvent:
        now = wall_ms_now()
        return StockEvent(new_event_id(), who.agent_id, 1, seq, "S1", "A", Kind.RECEIVE, 1, pack_hlc(now, seq), now, "api:t")

    live, older = tmp_path / "hub.db", tmp_path / "older.db"
    async with open_store(str(live)) as store:
        agent_id, _ = await store.add_agent(["S1"])
        who = AgentIdentity(agent_id, frozenset({"S1"}))
        events = [ev(seq) for seq in range(1, 11)]
        assert (await store.ingest(who, 1, events[:3])).hwm == 3
    backup(live, older)  # holds 1..3
    async with open_store(str(live)) as store:
        assert (await store.ingest(who, 1, events[3:6], acked_seq=3)).hwm == 6  # 4..6: lost with the disk
    async with open_store(str(older)) as store:  # restored
        first = await store.ingest(who, 1, events[6:8], acked_seq=6)  # 7..8, no handshake before
        assert first.hwm == 3 and first.applied == 2
        resend = await store.ingest(who, 1, events[3:5], acked_seq=3)  # the agent rewound: 4..5
        assert resend.hwm == 5, "the mark covers only what the hub holds without a gap"
        rest = await store.ingest(who, 1, events[5:], acked_seq=5)
        assert (rest.hwm, rest.applied, rest.duplicates) == (10, 3, 2)
        assert [c.on_hand for c in await store.counts()] == [10]
