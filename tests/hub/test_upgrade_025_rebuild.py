"""Step 25 (receipts back, book-outs, the change feed told of every transfer destination) on a ledger of many
transfers, on SQLite and on PostgreSQL: what the upgrade leaves and how its work grows with the ledger.

The step was rewritten to read the ledger once in its own order on SQLite (its first version walked events_ref,
every sale's receipt ref, one lookup of the event each) and to sum each location's in transit once per
(destination, SKU) instead of once per stock row (bench/bench_upgrade.py, docs/benchmarks.md). A database already at
schema 25 never runs it again, so the rewrite must leave what the first version left: the first version's script is
kept in tests/fixtures/migrations/ and both are run on the same schema-24 database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg

from hub.storage.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from hub.storage.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from hub.storage.sqlite.schema import script_statements
from protocol import Kind, StockEvent
from tests.hub.event_factory import EventFactory
from tests.hub.test_upgrade_020_rebuild import (
    BUNDLE,
    EVENT_COLUMNS,
    FIXTURES,
    STOCK_COLUMNS,
    STORES,
    _agent,
    _build_19,
    _database,
    _fetch,
    _schema_19_rows,
    _work,
)
from tests.hub.test_upgrade_020_rebuild import _events as _transfers_020
from tests.hub.test_upgrade_020_rebuild import _state as _state_020

OLD = 19
STEP = 25
RECEIVED_MS = 1_700_000_100_000


def _events() -> list[StockEvent]:
    """Step 20's transfers of every shape, and what step 25 reads: receipts back at the shipper (of a ref shipped
    to one destination, to two, naming the destination it came back from, naming another, final or not), and
    book-outs (an adjust carrying a transfer's ref at the wrong store, at a store with no receipt of it, and one
    whose ref is its own source, which is none)."""
    out = _transfers_020()
    f = {loc: EventFactory(_agent(loc), location=loc) for loc in STORES}
    t = 10_000

    def add(loc: str, kind: Kind, qty: int, ref: str, sku: str, attrs: dict[str, Any] | None = None) -> None:
        nonlocal t
        t += 1
        out.append(f[loc](kind, qty, at_ms=t, ref=ref, sku=sku, attrs=attrs or {}))

    add("S1", Kind.TRANSFER_OUT, -4, "T-50", "A", {"to": "S2"})
    add("S1", Kind.TRANSFER_IN, 4, "T-50", "A", {"final": True})  # back, in full: S2's 4 close
    add("S3", Kind.TRANSFER_OUT, -5, "T-51", "B", {"to": "S4"})
    add("S3", Kind.TRANSFER_OUT, -2, "T-51", "B", {"to": "S5"})
    add("S3", Kind.TRANSFER_IN, 3, "T-51", "B", {"from": "S5"})  # back from S5, in part
    add("S6", Kind.TRANSFER_OUT, -6, "T-52", "C", {"to": "S7"})
    add("S6", Kind.TRANSFER_IN, 2, "T-52", "C", {"from": "S8"})  # names another source: no receipt back
    add("S2", Kind.TRANSFER_OUT, -3, "T-53", "A", {"to": "S4"})
    add("S4", Kind.TRANSFER_IN, 3, "T-53", "A", {"from": "S2", "final": True})
    add("S2", Kind.TRANSFER_IN, 1, "T-53", "A", {"final": True})  # back after it was received: closes earlier
    add("S5", Kind.ADJUST, -3, "T-7", "C")  # S5 received S1's T-7 by mistake and books it out
    add("S8", Kind.ADJUST, -1, "T-1", "A")  # a book-out with no receipt of it at S8
    add("S7", Kind.ADJUST, 2, "T-2", "A")
    add("S7", Kind.ADJUST, -2, "T-2", "A")
    for n in range(12):  # several receipts back across the stores' own T-100…
        src, dest = STORES[n % 8], STORES[(n * 3 + 1) % 8]
        if src != dest:
            add(src, Kind.TRANSFER_IN, 1, f"T-{100 + n // 8}", "ABC"[n % 3], {"final": n % 2 == 0})
    return out


def _upgrade_to(backend: str, step: int) -> Any:
    migrations = SQLITE_MIGRATIONS if backend == "sqlite" else PG_MIGRATIONS
    return [(v, migrations[v].read()) for v in range(OLD + 1, step + 1)]


async def _run(backend: str, where: str, steps: list[tuple[int, str]]) -> None:
    """Run each step's script as the hub's migrate does (SQLite: statement by statement in one transaction)."""
    if backend == "sqlite":
        conn = sqlite3.connect(where, isolation_level=None)
        try:
            for version, script in steps:
                conn.execute("BEGIN IMMEDIATE")
                for statement in script_statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
                conn.execute("COMMIT")
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(where)
    try:
        for version, script in steps:
            async with pg.transaction():
                await pg.execute(script)
                await pg.execute("INSERT INTO schema_migrations VALUES ($1, 0)", version)
    finally:
        await pg.close()


TRANSFERS_SQL = (
    "SELECT dest, ref, sku, shipped, received, returned, booked_out, final_at, closed_at, shippers, updated_at_ms "
    "FROM transfers ORDER BY dest, ref, sku"
)
SQLITE_CHANGES_SQL = (
    "SELECT change_id, location, sku, on_hand, reserved, available, in_transit, event_ids FROM changes "
    "ORDER BY change_id"
)
POSTGRES_CHANGES_SQL = (
    "SELECT last_id, first_id, location, skus, on_hand, reserved, available, in_transit, event_ids, id_ends "
    "FROM change_runs ORDER BY last_id"
)


async def _state(backend: str, where: str) -> dict[str, list[tuple[Any, ...]]]:
    changes = SQLITE_CHANGES_SQL if backend == "sqlite" else POSTGRES_CHANGES_SQL
    return {
        **await _state_020(backend, where),
        "transfers": await _fetch(backend, where, TRANSFERS_SQL),
        "changes": await _fetch(backend, where, changes),
    }


async def test_step_25_leaves_what_its_first_version_left(backend: str, tmp_path: Path) -> None:
    rows = _schema_19_rows(_events(), extra=True)
    first = (FIXTURES / f"{backend}_025_first.sql").read_text(encoding="utf-8")
    async with _database(backend, tmp_path, "first") as old, _database(backend, tmp_path, "now") as new:
        for where in (old, new):
            await _build_19(backend, where, rows)
            await _run(backend, where, _upgrade_to(backend, STEP - 1))
        await _run(backend, old, [(STEP, first)])
        await _run(backend, new, _upgrade_to(backend, STEP)[-1:])
        left, now = await _state(backend, old), await _state(backend, new)
        assert now == left
        # the step found receipts back and book-outs, changed in transit, and told the change feed
        transfers = {(r[0], r[1], r[2]): r for r in now["transfers"]}
        assert transfers[("S2", "T-50", "A")][5] == 4 and transfers[("S2", "T-50", "A")][8] is not None
        assert transfers[("S5", "T-51", "B")][5] == 3
        assert transfers[("S5", "T-7", "C")][6] == 3 and transfers[("S8", "T-1", "A")][6] == 1
        assert sum(1 for r in now["transfers"] if r[5] > 0) > 5
        in_transit = {(r[0], r[1]): r[3] for r in now["stock"]}
        assert in_transit[("S5", "Z")] == 0 and in_transit[("S2", BUNDLE)] == 4
        assert len(now["changes"]) > (20 if backend == "sqlite" else 5)


def _sqlite_ledger(transfers: int) -> sqlite3.Connection:
    """A schema-24 SQLite hub in memory whose ledger grows with ``transfers``: each transfer its own SKU (so the
    stock rows grow too), two of three received, one of seven received back, an adjust carrying a transfer's ref
    beside every fifth, 20 sales with their receipt refs beside each, 10 stores numbering their transfers alike."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for step in range(1, STEP):
        conn.execute("BEGIN")
        for statement in script_statements(SQLITE_MIGRATIONS[step].read()):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {step}")
        conn.execute("COMMIT")
    rows: list[tuple[Any, ...]] = []
    keys: set[tuple[str, str]] = set()

    def event(location: str, sku: str, kind: str, qty: int, ref: str, attrs: str | None) -> None:
        n = len(rows) + 1
        rows.append((n.to_bytes(16, "big"), f"agent-{location}", 1, n, location, sku, kind, qty, n, n, "api:test",
                     ref, None, attrs, "applied", None, RECEIVED_MS))  # fmt: skip
        keys.add((location, sku))

    numbers = [0] * 10
    for t in range(transfers):
        src, dest = t % 10, (t * 7 + 3) % 10
        dest = (dest + 1) % 10 if dest == src else dest
        numbers[src] += 1
        ref, sku = f"T-{numbers[src]}", f"K{t}"
        event(f"S{src}", sku, "transfer_out", -2, ref, f'{{"to": "S{dest}"}}')
        if t % 3:
            event(f"S{dest}", sku, "transfer_in", 2, ref, f'{{"from": "S{src}", "final": true}}')
        elif t % 7 == 0:
            event(f"S{src}", sku, "transfer_in", 2, ref, '{"final": true}')
        if t % 5 == 0:
            event(f"S{(dest + 1) % 10}", sku, "adjust", -1, ref, None)
        for k in range(20):
            event(f"S{(t + k) % 10}", sku, "sale", -1, f"R-{t}-{k}", None)
    conn.executemany(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({', '.join('?' * 17)})", rows)
    conn.executemany(f"INSERT INTO stock ({STOCK_COLUMNS}) VALUES (?, ?, 0, 0, 0, 0, 0)", sorted(keys))
    # the transfers step 20 would have made of these events (this step reads the table, not their events)
    conn.execute(
        "INSERT INTO transfers (dest, ref, sku, shipped, received, shippers, updated_at_ms) "
        "SELECT CASE kind WHEN 'transfer_out' THEN json_extract(attrs, '$.to') ELSE location END, ref, sku, "
        "SUM(CASE kind WHEN 'transfer_out' THEN -qty ELSE 0 END), SUM(CASE kind WHEN 'transfer_in' THEN qty ELSE 0 END), "
        "COALESCE(MIN(CASE kind WHEN 'transfer_out' THEN location END), ''), 0 "
        "FROM events WHERE kind IN ('transfer_out', 'transfer_in') GROUP BY 1, 2, 3"
    )
    return conn


def test_step_25_on_sqlite_works_in_step_with_the_ledger() -> None:
    """Four times the ledger (transfers, their SKUs' stock rows, the sales beside them) is about four times the
    step's work. The first version's grew with the square: each stock row summed the transfers to its location
    (twice, and once more to be told to the change feed), and the ledger was walked through the sales' refs."""
    small, big = _sqlite_ledger(500), _sqlite_ledger(2000)
    try:
        first = (FIXTURES / "sqlite_025_first.sql").read_text(encoding="utf-8")
        assert _work(big, first) / _work(small, first) > 8  # the measure tells the first version's growth apart
        now = SQLITE_MIGRATIONS[STEP].read()
        assert _work(big, now) / _work(small, now) < 5
    finally:
        small.close()
        big.close()
