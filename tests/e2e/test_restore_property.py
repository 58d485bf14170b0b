"""Issue 12, point 1, as a property: whatever happens to copies of an outbox, the hub ends up with
exactly the movements recorded, each once.

A hub store (a real SQLite file) and agents driving real ``Outbox`` files through the wire codec,
the way the replicator does (a handshake, then batches; the answer may be lost after the hub
committed). Any interleaving of

- record: movements into one copy;
- sync: some requests of one copy, the last answer possibly lost after the commit;
- backup: a copy of one outbox file (SQLite's online backup API, while it is open);
- restore: one copy's file replaced by an earlier backup (what a restore or VM rollback does);
- copy: a second running copy of one outbox "on another machine" (a new Outbox on a copied file);
- crash: one copy closed without syncing, then opened again;

ends — after every copy syncs to quiescence — with the hub holding every movement any copy holds,
nothing nobody recorded, each once, and on_hand the sum of their quantities. (A movement a restore
wiped from the only file that held it before it reached the hub is gone from every copy: the hub
may or may not have it, depending on whether it got there first.)
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import Movement, Outbox
from hub.storage import AgentIdentity, HubStore, Lineage, SqliteHubStore
from protocol import (
    Kind,
    SyncRequest,
    SyncResponse,
    decode_sync_request,
    decode_sync_response,
    encode_sync_request,
    encode_sync_response,
)

LOCATION = "S1"
SKUS = ("A", "B", "C")
BATCH = 3  # small, so that a sync often stops half-way
COPIES_MAX = 3
QUIESCE_ROUNDS_MAX = 8
QUIESCE_REQUESTS_MAX = 200

copy_index = st.integers(0, COPIES_MAX - 1)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("record"), copy_index, st.integers(1, 4)),
        st.tuples(st.just("sync"), copy_index, st.integers(1, 4), st.booleans()),
        st.tuples(st.just("backup"), copy_index),
        st.tuples(st.just("restore"), copy_index, st.integers(0, 7)),
        st.tuples(st.just("copy"), copy_index),
        st.tuples(st.just("crash"), copy_index),
    ),
    max_size=24,
)


def sqlite_backup(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite file (another connection's committed state)."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def file_ids(path: Path) -> set[bytes]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT event_id FROM events")}


@dataclass
class World:
    root: Path
    store: HubStore
    who: AgentIdentity
    copies: list[tuple[Path, Outbox]] = field(default_factory=list)
    backups: list[Path] = field(default_factory=list)
    qty: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # every movement ever recorded
    files: int = 0

    def new_file(self, what: str) -> Path:
        self.files += 1
        return self.root / f"{what}-{self.files}.sqlite3"

    async def open(self, path: Path) -> Outbox:
        return await Outbox.open(path, agent_id=self.who.agent_id, location=LOCATION)

    async def sync(self, outbox: Outbox, requests: int, *, lose_last_answer: bool = False) -> None:
        """What the replicator does after (re)connecting: a handshake, then batches in seq order."""
        handshake = True
        for n in range(requests):
            out = await outbox.outgoing(0 if handshake else BATCH)
            if not handshake and not out.events:
                return
            acked = (await outbox.stats()).acked_seq
            wire = SyncRequest(
                outbox.agent_id, outbox.epoch, out.events, acked_seq=acked,
                chain=out.chain, epoch_base=out.epoch_base or None, base_chain=out.base_chain,
            )  # fmt: skip
            req = decode_sync_request(encode_sync_request(wire))
            result = await self.store.ingest(
                self.who, req.epoch, req.events, req.acked_seq,
                lineage=Lineage(req.chain, req.epoch_base or 0, req.base_chain),
            )  # fmt: skip
            assert result.rejected == (), f"the hub refused events: {result.rejected[0].reason}"
            if lose_last_answer and n == requests - 1:
                return  # committed at the hub; the answer never arrived
            answer = SyncResponse(result.agent_id, result.epoch, result.hwm, result.rejected, result.duplicates,
                                  result.counts, 0, result.chain)  # fmt: skip
            await outbox.apply_answer(decode_sync_response(encode_sync_response(answer)), clock_skew_ms=None)
            handshake = False

    async def hub_ids(self) -> Counter[bytes]:
        rows = await self.store.ledger(location=LOCATION, limit=100_000)
        return Counter(r.event_id for r in rows if r.effect != "rejected")

    async def apply(self, op: tuple[object, ...]) -> None:
        kind, index = op[0], int(op[1])  # type: ignore[call-overload]
        path, outbox = self.copies[index % len(self.copies)]
        slot = index % len(self.copies)
        if kind == "record":
            n = int(op[2])  # type: ignore[call-overload]
            moves = [Movement(LOCATION, SKUS[(len(self.qty) + i) % 3], Kind.RECEIVE, len(self.qty) + i + 1, "api:t")
                     for i in range(n)]  # fmt: skip
            for ev in (await outbox.record(moves)).events:
                self.qty[ev.event_id] = (ev.sku, ev.qty)
        elif kind == "sync":
            await self.sync(outbox, int(op[2]), lose_last_answer=bool(op[3]))  # type: ignore[call-overload]
        elif kind == "backup":
            target = self.new_file("backup")
            sqlite_backup(path, target)
            self.backups.append(target)
        elif kind == "restore" and self.backups:
            source = self.backups[int(op[2]) % len(self.backups)]  # type: ignore[call-overload]
            await outbox.close()
            for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                leftover.unlink(missing_ok=True)
            sqlite_backup(source, path)
            self.copies[slot] = (path, await self.open(path))
        elif kind == "copy" and len(self.copies) < COPIES_MAX:
            target = self.new_file("machine")
            sqlite_backup(path, target)
            self.copies.append((target, await self.open(target)))
        elif kind == "crash":
            await outbox.close()
            self.copies[slot] = (path, await self.open(path))

    async def quiesce(self) -> None:
        for _ in range(QUIESCE_ROUNDS_MAX):
            for _, outbox in self.copies:
                await self.sync(outbox, QUIESCE_REQUESTS_MAX)
            backlogs = [(await outbox.stats()).backlog for _, outbox in self.copies]
            if not any(backlogs):
                return
        raise AssertionError(f"the copies did not settle: backlogs {backlogs}")


async def scenario(root: Path, ops: list[tuple[object, ...]]) -> None:
    async with SqliteHubStore.open(root / "hub.db") as store:
        _, token = await store.add_agent([LOCATION])
        who = await store.authenticate(token)
        assert who is not None
        world = World(root, store, who)
        first = world.new_file("machine")
        world.copies.append((first, await world.open(first)))
        try:
            for op in ops:
                await world.apply(op)
            await world.quiesce()
            held = await world.hub_ids()
            in_files = set().union(*(file_ids(path) for path, _ in world.copies))
            assert in_files <= set(held), "a movement some copy holds never reached the hub"
            assert set(held) <= set(world.qty), "the hub holds a movement nobody recorded"
            assert max(held.values(), default=1) == 1, "a movement is held twice"
            sums: Counter[str] = Counter()
            for event_id in held:
                sku, qty = world.qty[event_id]
                sums[sku] += qty
            counts = {r.sku: r.on_hand for r in await store.counts(location=LOCATION)}
            assert {sku: n for sku, n in counts.items() if n} == {sku: n for sku, n in sums.items() if n}
        finally:
            for _, outbox in world.copies:
                await outbox.close()


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ops=operations)
def test_any_restore_copy_and_crash_ends_with_every_movement_at_the_hub_once(ops: list[tuple[object, ...]]) -> None:
    with tempfile.TemporaryDirectory(prefix="shelfsync-restore-") as root:
        asyncio.run(scenario(Path(root), ops))


def test_the_issue_12_story_as_one_example(tmp_path: Path) -> None:
    """Back up, keep recording and syncing, restore the backup, record more, sync: nothing lost."""
    asyncio.run(
        scenario(
            tmp_path,
            [("record", 0, 3), ("sync", 0, 4, False), ("backup", 0), ("record", 0, 4), ("sync", 0, 4, False),
             ("restore", 0, 0), ("record", 0, 2), ("copy", 0), ("record", 1, 2), ("record", 0, 1)],
        )
    )
