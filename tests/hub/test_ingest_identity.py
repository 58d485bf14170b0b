"""Event identity and epoch lineage on the hub (issue 12, points 1 and 3), on both backends.

An event is identified by (sending credential, event id): no credential can pre-empt, conflict
with or shadow another's. Two deliveries are the same event iff their movement content is equal;
epoch and seq are delivery data. A mark is stored with the sender's lineage digest, and an epoch
seen for the first time starts at the sender's ``epoch_base``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.storage import AgentIdentity, HubStore, Lineage, SqliteHubStore, StoreOpener
from hub.storage.postgres import PostgresHubStore
from protocol import Kind, StockEvent
from protocol.codec import chain_over
from tests.hub.event_factory import EventFactory


def chain(tag: str) -> bytes:
    return hashlib.blake2b(tag.encode(), digest_size=16).digest()


class IdentityContract:
    def open_store(self, tmp_path: Path) -> StoreOpener[HubStore]:
        raise NotImplementedError

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[HubStore]:
        async with self.open_store(tmp_path) as store:
            yield store

    async def agent(self, store: HubStore, *locations: str) -> AgentIdentity:
        _, token = await store.add_agent(list(locations))
        who = await store.authenticate(token)
        assert who is not None
        return who

    async def test_one_id_from_two_credentials_is_two_events(self, store: HubStore) -> None:
        a, b = await self.agent(store, "S1"), await self.agent(store, "S1")
        squatter = EventFactory(b.agent_id, epoch=7)(Kind.ADJUST, 100, at_ms=1)
        mine = EventFactory(a.agent_id, epoch=1)(Kind.RECEIVE, 5, at_ms=2, event_id=squatter.event_id)
        first = await store.ingest(b, 7, [squatter])
        second = await store.ingest(a, 1, [mine])
        assert (first.applied, second.applied, second.rejected, second.duplicates) == (1, 1, (), 0)
        assert [(r.on_hand) for r in await store.counts(location="S1")] == [105]
        ledger = await store.ledger(location="S1")
        assert sorted((r.agent_id, r.qty, r.effect) for r in ledger) == sorted(
            [(a.agent_id, 5, "applied"), (b.agent_id, 100, "applied")]
        )
        # each resends its own: a duplicate of its own, never of the other's
        again_a = await store.ingest(a, 1, [mine])
        again_b = await store.ingest(b, 7, [squatter])
        assert (again_a.duplicates, again_a.rejected, again_b.duplicates, again_b.rejected) == (1, (), 1, ())
        ledger = await store.ledger(location="S1")
        assert {r.agent_id: r.duplicates for r in ledger} == {a.agent_id: 1, b.agent_id: 1}

    async def test_a_refused_attempt_does_not_shadow_another_credentials_event(self, store: HubStore) -> None:
        a, b = await self.agent(store, "S1"), await self.agent(store, "S2")
        # b tries a location it is not bound to, with the id a uses next: refused, and a's event still counts
        squat = EventFactory(b.agent_id, epoch=1)(Kind.RECEIVE, 9, at_ms=1, location="S1")
        refused = await store.ingest(b, 1, [squat])
        assert [r.code for r in refused.rejected] == ["forbidden_location"]
        mine = EventFactory(a.agent_id, epoch=1)(Kind.RECEIVE, 9, at_ms=1, event_id=squat.event_id)
        result = await store.ingest(a, 1, [mine])
        assert (result.applied, result.rejected) == (1, ())
        assert [r.on_hand for r in await store.counts(location="S1")] == [9]
        # a conflicting attempt of a's own id is a's rejection, next to b's, each its own row
        other = EventFactory(a.agent_id, epoch=1)(Kind.RECEIVE, 8, at_ms=1, event_id=squat.event_id, seq=2)
        conflict = await store.ingest(a, 1, [other])
        assert [r.code for r in conflict.rejected] == ["conflict"]
        rejected = [r for r in await store.ledger() if r.effect == "rejected"]
        assert sorted((r.agent_id, r.qty) for r in rejected) == sorted([(a.agent_id, 8), (b.agent_id, 9)])
        assert [r.on_hand for r in await store.counts(location="S1")] == [9]

    async def test_the_same_movement_under_another_epoch_and_seq_is_a_duplicate(self, store: HubStore) -> None:
        a = await self.agent(store, "S1")
        ev = EventFactory(a.agent_id, epoch=1)(Kind.RECEIVE, 5, at_ms=1, seq=3)
        await store.ingest(a, 1, [ev])
        resent = StockEvent(*ev._replace(epoch=2, seq=9))  # a forked outbox resends its row in a new epoch
        result = await store.ingest(a, 2, [resent])
        assert (result.applied, result.duplicates, result.rejected) == (0, 1, ())
        (row,) = await store.ledger(location="S1")
        assert (row.epoch, row.seq, row.duplicates) == (1, 3, 1)  # the stored event keeps its first delivery
        assert [r.on_hand for r in await store.counts(location="S1")] == [5]

    async def test_the_same_id_with_other_content_from_one_credential_is_a_conflict(self, store: HubStore) -> None:
        a = await self.agent(store, "S1")
        ev = EventFactory(a.agent_id, epoch=1)(Kind.RECEIVE, 5, at_ms=1, seq=3)
        await store.ingest(a, 1, [ev])
        changed = StockEvent(*ev._replace(epoch=2, seq=9, qty=6))
        result = await store.ingest(a, 2, [changed])
        assert (result.applied, result.duplicates) == (0, 0)
        assert [r.code for r in result.rejected] == ["conflict"]
        assert [r.on_hand for r in await store.counts(location="S1")] == [5]

    async def test_the_mark_keeps_the_lineage_digest_of_the_batch_that_raised_it(self, store: HubStore) -> None:
        a = await self.agent(store, "S1")
        ev = EventFactory(a.agent_id, epoch=1)
        first = await store.ingest(a, 1, [ev(Kind.RECEIVE, 1, at_ms=1), ev(Kind.RECEIVE, 1, at_ms=2)],
                                   lineage=Lineage(chain("2")))  # fmt: skip
        assert (first.hwm, first.chain) == (2, chain("2"))
        # a batch below the mark (another copy of the outbox) neither lowers it nor replaces its digest
        low = EventFactory(a.agent_id, epoch=1)
        result = await store.ingest(a, 1, [low(Kind.RECEIVE, 1, at_ms=3)], lineage=Lineage(chain("other 1")))
        assert (result.hwm, result.chain, result.applied) == (2, chain("2"), 1)
        handshake = await store.ingest(a, 1, [], 2, lineage=Lineage(chain("2")))
        assert (handshake.hwm, handshake.chain) == (2, chain("2"))
        # a sender from before lineages raises it without one
        legacy = await store.ingest(a, 1, [ev(Kind.RECEIVE, 1, at_ms=4)])
        assert (legacy.hwm, legacy.chain) == (3, None)

    async def test_a_batch_behind_the_mark_moves_it_only_along_the_marks_lineage(self, store: HubStore) -> None:
        """A batch whose sender's acknowledged mark is below the stored one (sent ahead of an answer, or resent
        after one was lost) moves the mark only if its events above it link the mark's digest to the sender's."""
        a = await self.agent(store, "S1")
        ev, clone = EventFactory(a.agent_id, epoch=1), EventFactory(a.agent_id, epoch=1)
        mine = [ev(Kind.RECEIVE, 1, at_ms=i) for i in range(1, 12)]  # seqs 1-11 of this outbox
        theirs = [clone(Kind.RECEIVE, 1, at_ms=i) for i in range(1, 8)]  # seqs 1-7 of a copy, other movements

        def digest(events: list[StockEvent], start: bytes = bytes(16)) -> bytes:
            return chain_over(start, [e.event_id for e in events])

        def lineage(history: list[StockEvent], upto: int) -> Lineage:
            return Lineage(digest(history[:upto]))

        first = await store.ingest(a, 1, mine[:3], lineage=lineage(mine, 3))
        assert (first.hwm, first.chain) == (3, digest(mine[:3]))
        ahead = await store.ingest(a, 1, mine[3:5], 0, lineage=lineage(mine, 5), after_seq=3)  # its own: it moves
        assert (ahead.hwm, ahead.chain) == (5, digest(mine[:5]))
        copy = await store.ingest(a, 1, theirs[5:7], 0, lineage=lineage(theirs, 7), after_seq=5)  # the copy's 6-7
        assert (copy.hwm, copy.chain, copy.applied) == (5, digest(mine[:5]), 2)  # stored, but the mark is not its
        # seq 7 set aside by its sender (the hub refused it once): 6 and 8 cannot be told, so the mark stays …
        gap = await store.ingest(a, 1, [mine[5], mine[7]], 3, lineage=lineage(mine, 8), after_seq=5)
        assert (gap.hwm, gap.chain, gap.applied) == (5, digest(mine[:5]), 2)
        # … the sender takes it (its own digest at 5) and sends from there: it moves
        again = await store.ingest(a, 1, [mine[5], mine[7]], 5, lineage=lineage(mine, 8))
        assert (again.hwm, again.chain, again.duplicates) == (8, digest(mine[:8]), 2)
        # a resend behind the mark reaching past it, one of its events refused: its lineage runs through 8
        s2 = EventFactory(a.agent_id, epoch=1, location="S2")(Kind.RECEIVE, 1, at_ms=9, seq=10)
        history = [*mine[:9], s2, mine[10]]
        past = await store.ingest(a, 1, history[7:11], 5, lineage=lineage(history, 11))  # 8 again, 9-11 new
        assert [r.code for r in past.rejected] == ["forbidden_location"]
        assert (past.hwm, past.chain) == (11, digest(history))
        assert sum(r.on_hand for r in await store.counts(location="S1")) == 11  # mine but 7 and 10, the copy's 6-7

    async def test_a_new_epoch_starts_at_its_base(self, store: HubStore) -> None:
        a = await self.agent(store, "S1")
        base = Lineage(chain("40"), 40, chain("40"))
        handshake = await store.ingest(a, 9, [], 40, lineage=base)
        assert (handshake.hwm, handshake.chain) == (40, chain("40"))  # nothing to resend below the base
        ev = EventFactory(a.agent_id, epoch=9)
        ev.seq = 40
        batch = await store.ingest(a, 9, [ev(Kind.SALE, -1, at_ms=1)], 40, lineage=Lineage(chain("41"), 40, chain("40")))
        assert (batch.hwm, batch.chain) == (41, chain("41"))
        (status,) = await store.agent_status(a.agent_id)
        assert status.hwm == {9: 41}

    async def test_a_hub_that_lost_an_epoch_rewinds_its_agent_to_the_base_only(self, store: HubStore) -> None:
        a = await self.agent(store, "S1")
        # the agent acknowledged up to 55 in epoch 9 (based at 40); this hub never saw epoch 9
        result = await store.ingest(a, 9, [], 55, lineage=Lineage(chain("55"), 40, chain("40")))
        assert (result.hwm, result.chain) == (40, chain("40"))


class TestSqliteIdentity(IdentityContract):
    def open_store(self, tmp_path: Path) -> StoreOpener[HubStore]:
        return SqliteHubStore.open(tmp_path / "hub.db")


class TestPostgresIdentity(IdentityContract):
    url: str

    @pytest.fixture(autouse=True)
    async def _schema(self, pg_url: str) -> AsyncIterator[None]:
        self.url = pg_url
        yield

    def open_store(self, tmp_path: Path) -> StoreOpener[HubStore]:
        return PostgresHubStore.open(self.url)


# --- schema version 4: a version-3 database keeps its events, now keyed by credential ------------

V3_AGENT = "agent-00000001"
V3_EVENT_ID = bytes(range(16))
V3_TOKEN_HASH = "x"


def v3_rows() -> list[tuple[str, tuple[object, ...]]]:
    """(table, row) of a version-3 hub: one agent, its mark, one event and one refused attempt."""
    event = (V3_EVENT_ID, V3_AGENT, 1, 1, "S1", "A", "receive", 5, 1 << 16, 1, "api:t", None, None, None)
    return [
        ("agents (agent_id, token_sha256, role, locations, created_ms)", (V3_AGENT, V3_TOKEN_HASH, "agent", '["S1"]', 0)),
        ("agent_hwm (agent_id, epoch, hwm, updated_ms)", (V3_AGENT, 1, 1, 0)),
        (
            ("stock (location, sku, on_hand, reserved, in_transit, safety_stock, max_at, max_agent, max_seq, max_id, "
            "updated_at_ms)"),
            ("S1", "A", 5, 0, 0, 0, 1 << 16, V3_AGENT, 1, V3_EVENT_ID, 0),
        ),
        (
            ("events (event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, "
            "reason, attrs, effect, variance, duplicates, received_at_ms)"),
            (*event, "applied", None, 0, 0),
        ),
        (
            ("rejections (event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, "
            "reason, attrs, content_hash, code, detail, attempts, received_at_ms)"),
            (*event[:7], 6, *event[8:], b"h" * 16, "conflict", "no", 1, 0),
        ),
    ]


async def check_v3_data_after_migration(store: HubStore) -> None:
    (status,) = await store.agent_status(V3_AGENT)
    assert status.hwm == {1: 1}
    ledger = await store.ledger(location="S1")
    assert sorted((r.agent_id, r.qty, r.effect) for r in ledger) == [(V3_AGENT, 5, "applied"), (V3_AGENT, 6, "rejected")]
    other = await TestSqliteIdentity.agent(TestSqliteIdentity(), store, "S1")
    mine = EventFactory(other.agent_id)(Kind.RECEIVE, 2, at_ms=2, event_id=V3_EVENT_ID)
    assert (await store.ingest(other, 1, [mine])).applied == 1  # the old id is no longer global
    assert [r.on_hand for r in await store.counts(location="S1")] == [7]


async def test_a_version_3_sqlite_database_migrates_its_events_and_rejections(tmp_path: Path) -> None:
    import sqlite3

    from hub.storage.sqlite.schema import MIGRATIONS

    db = tmp_path / "hub.db"
    conn = sqlite3.connect(db)
    for step in (1, 2, 3):
        conn.executescript(MIGRATIONS[step].read())
    for table, row in v3_rows():
        conn.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    async with SqliteHubStore.open(db) as store:
        await check_v3_data_after_migration(store)
    conn = sqlite3.connect(db)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    conn.close()
    assert {"events_order", "events_counts", "events_time", "events_ref", "rejections_time"} <= indexes


async def test_a_version_3_postgres_database_migrates_its_events_and_rejections(pg_url: str) -> None:
    import asyncpg

    from hub.storage.postgres.schema import MIGRATIONS

    conn = await asyncpg.connect(pg_url)
    try:
        async with conn.transaction():
            await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)")
            for step in (1, 2, 3):
                await conn.execute(MIGRATIONS[step].read())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)
            for table, row in v3_rows():
                marks = ", ".join(f"${i}" for i in range(1, len(row) + 1))
                await conn.execute(f"INSERT INTO {table} VALUES ({marks})", *row)
            await conn.execute("INSERT INTO event_ids (event_id, location) VALUES ($1, 'S1')", V3_EVENT_ID)
        async with PostgresHubStore.open(pg_url) as store:
            await check_v3_data_after_migration(store)
        keys = await conn.fetch("SELECT DISTINCT agent_id, event_id FROM events WHERE event_id = $1 ORDER BY 1", V3_EVENT_ID)
        assert [r[0] for r in keys] == sorted([V3_AGENT, keys[1][0]])  # one id, two agents: two events
        located = await conn.fetch("SELECT agent_id, location FROM agent_locations ORDER BY agent_id")
        assert [tuple(r) for r in located] == sorted([(V3_AGENT, "S1"), (keys[1][0], "S1")])
    finally:
        await conn.close()
