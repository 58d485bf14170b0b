"""Two copies of one agent sending at once, seen by the hub and listed for head office (both backends).

A careless store clones its back-office PC, or starts an old disk image beside the running one: two outboxes of
one agent (same agent id, same credential, same epoch) record and sync. One of them finds the hub's mark is not its
history and forks to a new epoch; from then on each copy syncs in its own epoch, and every movement gets through
once. Before, only the agents' logs said so, and ``GET /v1/agents`` showed two epochs: nobody at head office saw it.
Now, while two epochs of one agent both go on syncing, the exceptions list holds one ``agent_copies`` entry naming
the agent, both epochs and where each was last seen from; it is gone once only one of them syncs. An outbox merely
restored from a backup (the old one gone) forks too, and is not listed: its old epoch syncs no more.

Real parts: a hub process (``python -m hub serve``) on 127.0.0.1 on a SQLite file or a PostgreSQL schema, and
the agent's own outbox and replicator on two copies of one outbox file.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent import Movement, Outbox, Replicator
from hub.storage import exceptions, open_store
from hub.storage.keys import ExceptionFilter
from protocol import Kind, SyncRequest, SyncResponse, decode_sync_response, encode_sync_request, wall_ms_now
from protocol.codec import MSGPACK_CONTENT_TYPE
from protocol.routes import SYNC_PATH
from tests.harness.commands import hub_env
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json
from tests.harness.pg import fresh_schema
from tests.harness.sqlite_copy import backup

WINDOW_S = 3  # the hub's agent_copies_window_s here: a copy silent this long no longer counts as sending
HEARTBEAT_S = 0.2  # each copy tells the hub it is alive this often when it has nothing to send
WAIT_S = 60.0
FAST = {"tick_s": 0.05, "retry_base_s": 0.01, "retry_max_s": 0.2, "timeout_s": 10.0, "heartbeat_s": HEARTBEAT_S}


@pytest.fixture
async def hub_db(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The hub's database: a SQLite file, or a fresh PostgreSQL schema."""
    if backend == "postgres":
        async with fresh_schema("copies") as url:
            yield url
    else:
        yield str(tmp_path / "hub.db")


@contextlib.contextmanager
def serving(db: str, tmp_path: Path) -> Iterator[HubProcess]:
    hub = HubProcess(
        tmp_path / "hub.log", db=db, port=free_port(), env=hub_env(SHELFSYNC_HUB_AGENT_COPIES_WINDOW_S=str(WINDOW_S))
    )
    hub.start()
    try:
        yield hub
    finally:
        assert hub.stop() == 0, hub.log
        assert "Traceback" not in hub.log, hub.log


async def credentials(db: str) -> tuple[str, str, str]:
    """An agent credential bound to S1 (its id and token) and a reader's token."""
    async with open_store(db) as store:
        agent_id, token = await store.add_agent(["S1"])
        _, reader = await store.add_agent([], role="reader")
    return agent_id, token, reader


async def copies_listed(hub: HubProcess, reader: str) -> list[dict[str, Any]]:
    answer = await asyncio.to_thread(get_json, f"{hub.url}/v1/exceptions?limit=10000", reader)
    return [e for e in answer["exceptions"] if e["kind"] == "agent_copies"]


async def eventually(what: str, check: Any) -> Any:
    """Poll the coroutine function ``check`` until it answers something true; fail naming ``what``."""
    async with asyncio.timeout(WAIT_S):
        while not (found := await check()):
            await asyncio.sleep(0.1)
    return found


async def drained(outbox: Outbox) -> None:
    """Wait until the hub acknowledged every movement of ``outbox``."""

    async def done() -> bool:
        stats = await outbox.stats()
        return stats.backlog == 0 and stats.acked_seq == stats.last_seq

    await eventually(f"{outbox.path} drains", done)


def sale(sku: str) -> Movement:
    return Movement("S1", sku, Kind.SALE, -1, "pos:test")


async def first_history(outbox_path: Path, agent_id: str, hub: HubProcess, token: str, n: int) -> None:
    """``n`` sales recorded and acknowledged by the hub, then the outbox closed."""
    async with (
        Outbox.open(outbox_path, agent_id=agent_id, location="S1") as outbox,
        Replicator(outbox, hub.url, token, **FAST),  # type: ignore[arg-type]
    ):
        await outbox.record([sale("A") for _ in range(n)])
        await drained(outbox)


async def test_two_copies_of_one_outbox_syncing_are_listed_until_one_stops(hub_db: str, tmp_path: Path) -> None:
    agent_id, token, reader = await credentials(hub_db)
    machine_a, machine_b = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"
    with serving(hub_db, tmp_path) as hub:
        await first_history(machine_a, agent_id, hub, token, 5)
        backup(machine_a, machine_b)  # the back-office PC cloned: same agent id, credential and epoch
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(Outbox.open(machine_a, agent_id=agent_id, location="S1"))
            b = await stack.enter_async_context(Outbox.open(machine_b, agent_id=agent_id, location="S1"))
            replicators = {}
            for name, outbox in (("a", a), ("b", b)):
                replicators[name] = await stack.enter_async_context(Replicator(outbox, hub.url, token, **FAST))  # type: ignore[arg-type]
            await a.record([sale("B") for _ in range(3)])  # each copy records its own movements
            await b.record([sale("C") for _ in range(4)])
            await drained(a)
            await drained(b)
            assert a.epoch != b.epoch  # one of them forked

            (listed,) = await eventually("the two copies are listed", lambda: copies_listed(hub, reader))
            assert listed["location"] == "S1"
            assert listed["data"]["agent_id"] == agent_id
            copies = listed["data"]["copies"]
            assert sorted(c["epoch_text"] for c in copies) == sorted([str(a.epoch), str(b.epoch)])
            assert all(c["peer"] == "127.0.0.1" and c["last_sync_ms"] for c in copies), copies
            assert (
                agent_id in listed["detail"] and str(a.epoch) in listed["detail"] and str(b.epoch) in listed["detail"]
            )
            assert "127.0.0.1" in listed["detail"]
            kind_only = await asyncio.to_thread(
                get_json, f"{hub.url}/v1/exceptions?kind=agent_copies&location=S1", reader
            )
            assert [e["data"]["agent_id"] for e in kind_only["exceptions"]] == [agent_id]
            elsewhere = await asyncio.to_thread(
                get_json, f"{hub.url}/v1/exceptions?kind=agent_copies&location=S2", reader
            )
            assert elsewhere["exceptions"] == []

            await replicators["b"].stop()  # the clone is switched off; the store's own PC goes on
            await eventually("the entry is gone", lambda: _none(copies_listed(hub, reader)))
            await a.record([sale("D")])
            await drained(a)
            assert await copies_listed(hub, reader) == []

    async with open_store(hub_db) as store:  # every movement of both copies counted once
        counts = {r.sku: r.on_hand for r in await store.counts()}
    assert counts == {"A": -5, "B": -3, "C": -4, "D": -1}


async def test_a_copy_sending_past_the_other_copys_mark_forks(hub_db: str, tmp_path: Path) -> None:
    """The interleaving the test above met about one run in four: both copies have shaken hands at the mark (5),
    copy A's batch (6-8) is acknowledged, then copy B's (6-9, acknowledged mark 5) arrives. The hub took B's
    chain at 9 as the mark's, B found its own lineage there and A found its own at 8: both drained in one epoch,
    and only A's next request (a minute later for an idle agent) could tell. The hub holds A's seqs 6-8, not
    B's: it keeps its mark, B finds A's chain at 8 and forks."""
    agent_id, token, _ = await credentials(hub_db)
    machine_a, machine_b = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"
    with serving(hub_db, tmp_path) as hub:
        await first_history(machine_a, agent_id, hub, token, 5)
        backup(machine_a, machine_b)
        async with contextlib.AsyncExitStack() as stack:
            a = await stack.enter_async_context(Outbox.open(machine_a, agent_id=agent_id, location="S1"))
            b = await stack.enter_async_context(Outbox.open(machine_b, agent_id=agent_id, location="S1"))
            replicators = {}
            for name, outbox in (("a", a), ("b", b)):
                replicators[name] = await stack.enter_async_context(Replicator(outbox, hub.url, token, **FAST))  # type: ignore[arg-type]
                await replicators[name].wait_synced()  # its handshake: the hub's mark (5) is its own
            await a.record([sale("B") for _ in range(3)])
            await drained(a)
            await replicators["a"].stop()  # A's PC goes quiet: nothing it sends later tells either copy
            epoch = a.epoch
            await b.record([sale("C") for _ in range(4)])
            await drained(b)
            assert b.epoch != epoch  # B forked
            assert (await b.stats()).forked_from_epoch == epoch
            assert a.epoch == epoch and (await a.stats()).acked_seq == 8
    async with open_store(hub_db) as store:  # every movement of both copies counted once
        counts = {r.sku: r.on_hand for r in await store.counts()}
    assert counts == {"A": -5, "B": -3, "C": -4}


async def send(
    hub: HubProcess, token: str, outbox: Outbox, n: int, *, acked: int, after: int = 0, after_seq: int | None = None
) -> SyncResponse:
    """One request as the replicator makes it, sent by hand so the test chooses the order the hub meets them in:
    ``n`` of ``outbox``'s events above ``after`` (0: above its acknowledged mark) with the lineage the outbox
    reports for them, ``acked`` the acknowledged mark the request states, following on from ``after_seq``."""
    out = await outbox.outgoing(n, after=after)
    request = SyncRequest(
        outbox.agent_id, outbox.epoch, out.events, acked_seq=acked, chain=out.chain,
        epoch_base=out.epoch_base or None, base_chain=out.base_chain, sent_ms=outbox.wall_ms(), after_seq=after_seq,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as session,
        session.post(hub.url + SYNC_PATH, data=encode_sync_request(request), headers=headers) as http,
    ):
        assert http.status == 200, await http.text()
        return decode_sync_response(await http.read())


async def stored(outbox: Outbox, answer: SyncResponse) -> tuple[int, int | None]:
    """The replicator's step for an answer it stores: the outbox takes the hub's mark (or forks). Its acknowledged
    mark then, and the epoch it left (None: none)."""
    result = await outbox.apply_answer(answer, clock_skew_ms=None)
    return result.acked_seq, result.forked_from_epoch


async def drain_both(hub: HubProcess, token: str, a: Outbox, b: Outbox) -> None:
    """Both copies' replicators run until each outbox is acknowledged to its end."""
    async with (
        Replicator(a, hub.url, token, **FAST),  # type: ignore[arg-type]
        Replicator(b, hub.url, token, **FAST),  # type: ignore[arg-type]
    ):
        await drained(a)
        await drained(b)


async def marks(db: str, agent_id: str) -> dict[int, int]:
    async with open_store(db) as store:
        (status,) = await store.agent_status(agent_id)
    return dict(status.hwm)


async def test_a_copys_batch_sent_ahead_landing_above_the_other_copys_mark_forks_it_at_once(
    hub_db: str, tmp_path: Path
) -> None:
    """Both copies at the mark (5). Copy A's batch 6-8 is acknowledged; copy B, catching up, had sent its batch
    9-11 ahead of its 6-8 (``after_seq`` 8), and the hub meets it now: it follows on from the mark's seq, and all
    its events lie above it. The hub took B's chain at 11 as the mark's; B's 6-8 then found B's own lineage at
    11, and only A's next request (a minute later for an idle agent) could tell: the two copies drained into one
    epoch meanwhile. B's batch does not run through A's digest at 8: the mark stays, B forks on its first answer
    and A goes on in the epoch."""
    agent_id, token, _ = await credentials(hub_db)
    machine_a, machine_b = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"
    with serving(hub_db, tmp_path) as hub:
        await first_history(machine_a, agent_id, hub, token, 5)
        backup(machine_a, machine_b)
        async with (
            Outbox.open(machine_a, agent_id=agent_id, location="S1") as a,
            Outbox.open(machine_b, agent_id=agent_id, location="S1") as b,
        ):
            epoch = a.epoch
            await a.record([sale("B") for _ in range(3)])  # seqs 6-8
            await b.record([sale("C") for _ in range(6)])  # seqs 6-11: other movements
            assert await stored(a, await send(hub, token, a, 3, acked=5)) == (8, None)
            ahead = await send(hub, token, b, 3, acked=5, after=8, after_seq=8)  # B's 9-11, sent ahead
            first = await send(hub, token, b, 3, acked=5)  # B's 6-8
            assert await stored(b, first) == (5, epoch)  # B forked at once, based at the mark it knew
            assert ahead.hwm == 8  # not B's: the replicator does not store it (it acknowledges no seq of its batch)
            assert b.epoch != epoch
            await a.record([sale("D")])  # seq 9: A goes on in its epoch
            assert await stored(a, await send(hub, token, a, 1, acked=8)) == (9, None)
            assert a.epoch == epoch
            await drain_both(hub, token, a, b)
            assert a.epoch == epoch and (await b.stats()).forked_from_epoch == epoch
            b_epoch = b.epoch
    assert await marks(hub_db, agent_id) == {epoch: 9, b_epoch: 11}
    async with open_store(hub_db) as store:  # every movement of both copies counted once
        counts = {r.sku: r.on_hand for r in await store.counts()}
    assert counts == {"A": -5, "B": -3, "C": -6, "D": -1}


async def test_copies_whose_batches_share_seqs_above_the_mark_are_told_apart_at_once(
    hub_db: str, tmp_path: Path
) -> None:
    """Both copies send 6-8 and, ahead of it, 9-11: the same seqs, other event ids. A's 9-11 is met first (stored,
    the mark stays at 5), then A's 6-8 (mark 8, A's digest), then B's 9-11, whose seqs the hub holds as A's.
    B's batch does not run through A's digest at 8: the mark stays and B forks on its 6-8's answer; A's 9-11,
    sent again, is acknowledged with A's lineage (before, B's digest stood at 11 and A forked in turn)."""
    agent_id, token, _ = await credentials(hub_db)
    machine_a, machine_b = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"
    with serving(hub_db, tmp_path) as hub:
        await first_history(machine_a, agent_id, hub, token, 5)
        backup(machine_a, machine_b)
        async with (
            Outbox.open(machine_a, agent_id=agent_id, location="S1") as a,
            Outbox.open(machine_b, agent_id=agent_id, location="S1") as b,
        ):
            epoch = a.epoch
            await a.record([sale("B") for _ in range(6)])
            await b.record([sale("C") for _ in range(6)])
            early = await send(hub, token, a, 3, acked=5, after=8, after_seq=8)
            assert (early.hwm, early.duplicates) == (5, 0)  # stored, not acknowledged: not stored by A
            assert await stored(a, await send(hub, token, a, 3, acked=5)) == (8, None)
            ahead = await send(hub, token, b, 3, acked=5, after=8, after_seq=8)
            assert await stored(b, await send(hub, token, b, 3, acked=5)) == (5, epoch)  # B forked at once
            assert ahead.hwm == 8
            again = await send(hub, token, a, 3, acked=8)  # A sends its 9-11 again, one batch at a time now
            assert again.duplicates == 3
            assert await stored(a, again) == (11, None)
            assert a.epoch == epoch
            await drain_both(hub, token, a, b)
            assert a.epoch == epoch and (await b.stats()).forked_from_epoch == epoch
            b_epoch = b.epoch
    assert await marks(hub_db, agent_id) == {epoch: 11, b_epoch: 11}
    async with open_store(hub_db) as store:
        counts = {r.sku: r.on_hand for r in await store.counts()}
    assert counts == {"A": -5, "B": -6, "C": -6}


async def test_a_copys_resend_after_a_lost_answer_reaching_above_the_mark_forks_it(
    hub_db: str, tmp_path: Path
) -> None:
    """Copy A's 6-8 is acknowledged (mark 8); copy B's 6-8 is stored but the mark stays, and that answer is lost.
    B sends again from its mark (5), more this time: 6-11. The hub holds B's 6-8 now, so nothing up to the mark
    is new, and 9-11 lie above it: the mark took B's chain at 11 and B went on. Its 9-11 do not run through A's
    digest at 8: the mark stays and B forks on this answer."""
    agent_id, token, _ = await credentials(hub_db)
    machine_a, machine_b = tmp_path / "a.sqlite3", tmp_path / "b.sqlite3"
    with serving(hub_db, tmp_path) as hub:
        await first_history(machine_a, agent_id, hub, token, 5)
        backup(machine_a, machine_b)
        async with (
            Outbox.open(machine_a, agent_id=agent_id, location="S1") as a,
            Outbox.open(machine_b, agent_id=agent_id, location="S1") as b,
        ):
            epoch = a.epoch
            await a.record([sale("B") for _ in range(3)])
            await b.record([sale("C") for _ in range(6)])
            assert await stored(a, await send(hub, token, a, 3, acked=5)) == (8, None)
            assert (await send(hub, token, b, 3, acked=5)).hwm == 8  # the answer is lost on its way
            again = await send(hub, token, b, 6, acked=5)
            assert await stored(b, again) == (5, epoch)  # B forked
            assert again.duplicates == 3
            await a.record([sale("D")])
            assert await stored(a, await send(hub, token, a, 1, acked=8)) == (9, None)
            await drain_both(hub, token, a, b)
            assert a.epoch == epoch and (await b.stats()).forked_from_epoch == epoch
            b_epoch = b.epoch
    assert await marks(hub_db, agent_id) == {epoch: 9, b_epoch: 11}
    async with open_store(hub_db) as store:
        counts = {r.sku: r.on_hand for r in await store.counts()}
    assert counts == {"A": -5, "B": -3, "C": -6, "D": -1}


async def test_a_resend_above_the_mark_after_lost_answers_moves_the_mark_and_forks_nothing(
    hub_db: str, tmp_path: Path
) -> None:
    """One outbox, no copy: its batch 9-11 sent ahead is met first (stored, mark 5), its 6-8 is committed (mark 8)
    and that answer is lost. The replicator starts again from its acknowledged mark: 6-8 once more and, ahead of
    it, 9-14 (three held above the mark already, three new). The hub meets 9-14 first: its lineage runs through
    the digest at 8, which is this outbox's own, so the mark moves to 14; the answers acknowledge both batches
    and the outbox stays in its epoch."""
    agent_id, token, _ = await credentials(hub_db)
    path = tmp_path / "a.sqlite3"
    with serving(hub_db, tmp_path) as hub:
        await first_history(path, agent_id, hub, token, 5)
        async with Outbox.open(path, agent_id=agent_id, location="S1") as a:
            epoch = a.epoch
            await a.record([sale("B") for _ in range(9)])  # seqs 6-14
            assert (await send(hub, token, a, 3, acked=5, after=8, after_seq=8)).hwm == 5
            assert (await send(hub, token, a, 3, acked=5)).hwm == 8  # the answer is lost on its way
            ahead = await send(hub, token, a, 6, acked=5, after=8, after_seq=8)
            assert (ahead.hwm, ahead.duplicates) == (14, 3)
            first = await send(hub, token, a, 3, acked=5)
            assert (first.hwm, first.duplicates) == (14, 3)
            assert await stored(a, first) == (14, None)
            assert await stored(a, ahead) == (14, None)
            assert a.epoch == epoch and (await a.stats()).forked_from_epoch is None
    assert await marks(hub_db, agent_id) == {epoch: 14}
    async with open_store(hub_db) as store:
        counts = {r.sku: r.on_hand for r in await store.counts()}
    assert counts == {"A": -5, "B": -9}


async def _none(listed: Any) -> bool:
    return not await listed


async def test_an_outbox_restored_from_a_backup_is_not_listed_as_two_copies(hub_db: str, tmp_path: Path) -> None:
    agent_id, token, reader = await credentials(hub_db)
    live, saved = tmp_path / "outbox.sqlite3", tmp_path / "backup.sqlite3"
    with serving(hub_db, tmp_path) as hub:
        await first_history(live, agent_id, hub, token, 5)
        backup(live, saved)
        async with (
            Outbox.open(live, agent_id=agent_id, location="S1") as outbox,
            Replicator(outbox, hub.url, token, **FAST),  # type: ignore[arg-type]
        ):
            await outbox.record([sale("B") for _ in range(4)])
            await drained(outbox)
            old_epoch = outbox.epoch
        for leftover in (live, live.with_name(live.name + "-wal"), live.with_name(live.name + "-shm")):
            leftover.unlink(missing_ok=True)  # the disk died; last week's backup is put back
        backup(saved, live)
        async with Outbox.open(live, agent_id=agent_id, location="S1") as outbox:
            await outbox.record([sale("C") for _ in range(6)])  # seqs 6..11 again, other movements
            async with Replicator(outbox, hub.url, token, **FAST):  # type: ignore[arg-type]
                await drained(outbox)
                assert outbox.epoch != old_epoch  # it forked
                # the restored copy goes on syncing (heartbeats) for three windows: never listed as two copies
                for _ in range(int(3 * WINDOW_S / HEARTBEAT_S)):
                    assert await copies_listed(hub, reader) == []
                    await asyncio.sleep(HEARTBEAT_S)
    async with open_store(hub_db) as store:
        counts = {r.sku: r.on_hand for r in await store.counts()}
        (status,) = await store.agent_status(agent_id)
    assert counts == {"A": -5, "B": -4, "C": -6}
    assert len(status.hwm) == 2  # both epochs are on the agent list, as before


class _Counted:
    """``exceptions.agent_copies``' database, a plain connection to the hub's SQLite file that counts the steps its
    statements take (SQLite's progress handler, every 1,000 virtual machine instructions)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path)
        self.thousands = 0

        def tick() -> int:
            self.thousands += 1
            return 0

        self.conn.set_progress_handler(tick, 1_000)

    async def fetch(self, sql: str, params: Any = ()) -> list[Any]:
        return self.conn.execute(sql, tuple(params)).fetchall()


async def test_an_agent_syncing_in_thousands_of_epochs_costs_the_list_no_more_than_its_newest(tmp_path: Path) -> None:
    """The epoch is the sender's: one credential can sync in thousands of them within the window (a broken agent
    forking at every sync, or a stolen token at the hub's 50 writes a second). Each was checked against every
    other: 6,600 took 4 s a read of the exceptions list (and of /metrics), growing with their square. Only the 20
    epochs of an agent that synced last are checked now; two real copies among them are listed as before."""
    path = tmp_path / "hub.db"
    async with open_store(path) as store:
        _, token = await store.add_agent(["S001"])
        who = await store.authenticate(token)
        assert who is not None
        now_ms = wall_ms_now()
        with contextlib.closing(sqlite3.connect(path)) as db, db:  # 2,000 epochs one after another, none at once
            db.executemany(
                "INSERT INTO agent_hwm (agent_id, epoch, hwm, updated_ms, first_ms, prev_ms) VALUES (?, ?, 0, ?, ?, ?)",
                [(who.agent_id, 100 + e, now_ms - 200_000 + e * 90 + 50, now_ms - 200_000 + e * 90,
                  now_ms - 200_000 + e * 90 + 10) for e in range(2_000)],
            )  # fmt: skip
        for _ in range(3):  # and two copies syncing in turn now, as in the tests above
            for epoch in (10, 11):
                await store.ingest(who, epoch, [])
                await asyncio.sleep(0.002)  # the hub tells the syncs apart by their milliseconds
        listed = await store.exceptions(kind="agent_copies", copies_window_ms=600_000)
    assert [(r.data["count"], [c["epoch"] for c in r.data["copies"]]) for r in listed] == [(2, [11, 10])]
    counted = _Counted(path)
    with contextlib.closing(counted.conn):
        rows = await exceptions.agent_copies(counted, ExceptionFilter(), 100, None, wall_ms_now() - 600_000)
    assert [r.data["count"] for r in rows] == [2]
    # before: 108,000 thousand steps (each of 2,000 epochs against the 2,000); now about 20 epochs against them
    assert counted.thousands < 5_000, counted.thousands
