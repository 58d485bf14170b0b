"""Upgrading a hub database from the first schema to this one (SQLite); test_upgrade_postgres.py runs the same
scenario on PostgreSQL.

A version-1 database is written row by row as the first shelfsync left it — three credentials (an agent, a
reader, a revoked agent), an agent's mark, two events and the counts they made, a refused event — then opened by
this shelfsync: every migration runs in turn, and everything is still there and still works: credentials
authenticate (the revoked one does not), marks, ledger, counts and the refusal are kept, a resend is a duplicate,
new events apply on top, the change feed and the exceptions list answer.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from event_factory import EventFactory

from hub.storage import HubStore, SqliteHubStore
from hub.storage.credentials import new_token, token_hash
from hub.storage.ingest import event_row
from hub.storage.sql import EVENT_FIELDS
from hub.storage.sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from protocol import Kind, StockEvent, wall_ms_now

AGENT, READER, REVOKED = "store-1", "dashboard", "old-till"
LOCATION, SKU = "S1", "SKU-1"


@dataclass(frozen=True, slots=True)
class V1Hub:
    """What a version-1 hub held: tokens to sign in with, and the events behind its counts."""

    agent_token: str
    reader_token: str
    revoked_token: str
    events: tuple[StockEvent, ...]  # receive 5, sale -1 at S1: on hand 4
    refused: StockEvent  # the agent's event for S2, which it may not write
    epoch: int


def v1_hub() -> V1Hub:
    make = EventFactory(AGENT, epoch=7, location=LOCATION, sku=SKU, base_ms=wall_ms_now() - 3_600_000)
    events = (make(Kind.RECEIVE, 5, at_ms=0), make(Kind.SALE, -1, at_ms=1_000))
    refused = make(Kind.RECEIVE, 2, at_ms=2_000, location="S2")
    return V1Hub(new_token(AGENT), new_token(READER), new_token(REVOKED), events, refused, 7)


def v1_rows(h: V1Hub) -> dict[str, tuple[str, list[tuple[Any, ...]]]]:
    """table -> (column list, rows): the same on both backends' version-1 schemas (PostgreSQL adds event_ids)."""
    last = h.events[-1]
    return {
        "agents": (
            "agent_id, token_sha256, role, locations, created_ms, revoked_ms, last_sync_ms, clock_skew_ms",
            [
                (AGENT, token_hash(h.agent_token), "agent", json.dumps([LOCATION]), 1, None, 1_000, 12),
                (READER, token_hash(h.reader_token), "reader", "[]", 1, None, None, None),
                (REVOKED, token_hash(h.revoked_token), "agent", json.dumps([LOCATION]), 1, 500, None, None),
            ],
        ),
        "agent_hwm": ("agent_id, epoch, hwm, updated_ms", [(AGENT, h.epoch, h.refused.seq, 1_000)]),
        "events": (
            f"{EVENT_FIELDS}, effect, variance, duplicates, received_at_ms",
            [(ev.event_id, *event_row(ev), "applied", None, 0, 1_000) for ev in h.events],
        ),
        "stock": (
            "location, sku, on_hand, reserved, in_transit, safety_stock, max_at, max_agent, max_seq, max_id, "
            "updated_at_ms",
            [(LOCATION, SKU, 4, 0, 0, 0, last.occurred_at, AGENT, last.seq, last.event_id, 1_000)],
        ),
        "rejections": (
            f"{EVENT_FIELDS}, content_hash, code, detail, attempts, received_at_ms",
            [
                (
                    h.refused.event_id, *event_row(h.refused), h.refused.content_hash, "forbidden_location",
                    f"agent {AGENT} may not write location S2", 1, 1_000,
                )  # fmt: skip
            ],
        ),
    }


async def check_upgraded(store: HubStore, h: V1Hub, schema_version: int) -> None:
    """Everything the version-1 hub held is there and works, and the hub takes new events on top."""
    assert (await store.health())["schema_version"] == schema_version
    who = await store.authenticate(h.agent_token)
    assert who is not None and (who.agent_id, who.locations) == (AGENT, frozenset({LOCATION}))
    reader = await store.authenticate(h.reader_token)
    assert reader is not None and reader.role == "reader"
    assert await store.authenticate(h.revoked_token) is None  # revoked stays revoked

    status = {s.agent_id: s for s in await store.agent_status()}
    assert set(status) == {AGENT, READER, REVOKED} and status[REVOKED].revoked
    assert status[AGENT].hwm == {h.epoch: h.refused.seq} and status[AGENT].last_sync_ms == 1_000

    ledger = await store.ledger(location=LOCATION)
    assert sorted(r.event_id for r in ledger) == sorted(ev.event_id for ev in h.events)
    (row,) = await store.counts(location=LOCATION)
    assert (row.sku, row.on_hand, row.available) == (SKU, 4, 4)
    exceptions = await store.exceptions()
    assert [e.kind for e in exceptions if e.kind == "rejected_event"] == ["rejected_event"], exceptions

    again = await store.ingest(who, h.epoch, list(h.events))  # the agent resends what the old hub had
    assert (again.applied, again.duplicates, again.rejected) == (0, 2, ())
    make = EventFactory(AGENT, epoch=h.epoch, location=LOCATION, sku=SKU, base_ms=wall_ms_now() - 60_000)
    make.seq = h.refused.seq
    sale = make(Kind.SALE, -3, at_ms=0)
    result = await store.ingest(who, h.epoch, [sale], backlog=0)
    assert result.applied == 1 and result.hwm == sale.seq
    (row,) = await store.counts(location=LOCATION)
    assert row.on_hand == 1
    changes = await store.changes(0, 100)
    assert changes and changes[-1].on_hand == 1  # the change feed (schema 2) starts with the first new change


# --- SQLite ---------------------------------------------------------------------------


def _insert(conn: sqlite3.Connection, rows: dict[str, tuple[str, list[tuple[Any, ...]]]]) -> None:
    for table, (columns, values) in rows.items():
        marks = ", ".join("?" * len(values[0]))
        conn.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)


def _write_v1(db: Path, h: V1Hub) -> None:
    conn = sqlite3.connect(db)
    try:
        conn.executescript(MIGRATIONS[1]() + "\nPRAGMA user_version = 1;")
        _insert(conn, v1_rows(h))
        conn.commit()
    finally:
        conn.close()


def _user_version(db: Path) -> Sequence[Any]:
    conn = sqlite3.connect(db)
    try:
        return (conn.execute("PRAGMA user_version").fetchone()[0], conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def test_a_version_1_sqlite_hub_upgrades_to_the_current_schema_and_keeps_working(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    h = v1_hub()
    _write_v1(db, h)
    async with SqliteHubStore.open(db) as store:
        await check_upgraded(store, h, SCHEMA_VERSION)
    assert _user_version(db) == (SCHEMA_VERSION, "ok") and SCHEMA_VERSION == max(MIGRATIONS)
    async with SqliteHubStore.open(db) as store:  # opened again: nothing left to migrate, the data still there
        (row,) = await store.counts(location=LOCATION)
        assert row.on_hand == 1


async def test_each_intermediate_sqlite_version_upgrades_too(tmp_path: Path) -> None:
    """A hub stopped at any version in between (2 … current − 1) is brought forward the same way."""
    h = v1_hub()
    for version in range(2, SCHEMA_VERSION):
        db = tmp_path / f"hub-v{version}.db"
        _write_v1(db, h)
        conn = sqlite3.connect(db)
        try:
            for step in range(2, version + 1):
                conn.executescript(f"BEGIN;\n{MIGRATIONS[step]()}\nPRAGMA user_version = {step};\nCOMMIT;")
        finally:
            conn.close()
        assert _user_version(db)[0] == version
        async with SqliteHubStore.open(db) as store:
            await check_upgraded(store, h, SCHEMA_VERSION)
