"""Step 20 (transfers keyed by destination) on a ledger of many transfers, on SQLite and on PostgreSQL: what the
upgrade leaves, how its work grows with the ledger, and what it says as it begins to read the ledger.

The step was rewritten to read the ledger once and to sum each location's in transit once per (destination, SKU)
(bench/bench_upgrade.py: on 2,000,000 events its first version took 9–20 s, most of it one sum per stock row and,
on SQLite, one lookup of every event of a ref per transfer). A database already at schema 20 never runs it again,
so the rewrite must leave what the first version left: the first version's script is kept in
tests/fixtures/migrations/ and both are run on the same schema-19 database. And what both leave must be what a
hub of this version builds from the same events as they arrive: a fresh hub ingests them, and its transfers and in
transit are compared with the upgraded hub's.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hub import open_store
from hub.storage.ingest import event_row
from hub.storage.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from hub.storage.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from hub.storage.sqlite.schema import SCHEMA_VERSION as SQLITE_VERSION
from hub.storage.sqlite.schema import script_statements
from protocol import Kind, StockEvent
from tests.harness.pg import fresh_schema
from tests.hub.event_factory import EventFactory

OLD = 19
STEP = 20
RECEIVED_MS = 1_700_000_100_000
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "migrations"
EVENT_COLUMNS = (
    "event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs, "
    "effect, variance, received_at_ms"
)
STOCK_COLUMNS = "location, sku, on_hand, reserved, in_transit, safety_stock, updated_at_ms"
TRANSFER_COLUMNS = (
    "dest, ref, sku, shipped, received, out_from, out_to, in_to, in_from, shipped_at_ms, closed_at, shippers"
)
STORES = [f"S{i}" for i in range(1, 9)]
BUNDLE = "KIT"  # a bundle SKU: its own row's in transit is left to its parts' next movement


def _agent(location: str) -> str:
    return f"agent-{location.lower()}"


def _events() -> list[StockEvent]:
    """Transfers of every shape the step reads: stores numbering their transfers alike (T-1 to several
    destinations), two stores shipping one ref to one destination (shared), received in full, short with a final
    receipt, in part, not at all, at the wrong store, closed twice; and many small ones, so that each destination
    has several transfers of several SKUs."""
    f = {loc: EventFactory(_agent(loc), location=loc) for loc in STORES}
    out: list[StockEvent] = []
    t = 0

    def ship(src: str, dest: str, ref: str, sku: str, qty: int) -> None:
        nonlocal t
        t += 1
        out.append(f[src](Kind.TRANSFER_OUT, -qty, at_ms=t, ref=ref, sku=sku, attrs={"to": dest}))

    def receive(at: str, ref: str, sku: str, qty: int, src: str | None, final: bool = False) -> None:
        nonlocal t
        t += 1
        attrs: dict[str, Any] = {"from": src} if src else {}
        if final:
            attrs["final"] = True
        out.append(f[at](Kind.TRANSFER_IN, qty, at_ms=t, ref=ref, sku=sku, attrs=attrs))

    ship("S1", "S3", "T-1", "A", 6)
    ship("S2", "S4", "T-1", "A", 4)
    receive("S3", "T-1", "A", 5, "S1", final=True)  # short by 1
    receive("S4", "T-1", "A", 2, "S2")  # in part: 2 still in transit
    ship("S1", "S3", "T-9", "B", 3)
    ship("S2", "S3", "T-9", "B", 2)  # two shippers of T-9 to S3
    receive("S3", "T-9", "B", 3, "S1")
    ship("S1", "S6", "T-7", "C", 3)
    receive("S5", "T-7", "C", 3, "S1")  # at the wrong store: S6 keeps 3 in transit
    ship("S7", "S8", "T-2", "A", 5)
    receive("S8", "T-2", "A", 5, "S7", final=True)
    receive("S8", "T-2", "A", 1, None, final=True)  # a second final receipt: the first one closed it
    for n in range(60):  # each store's own T-100…: refs shared across stores, each to one destination
        src, dest = STORES[n % 8], STORES[(n * 3 + 1) % 8]
        if src == dest:
            continue
        ref, sku = f"T-{100 + n // 8}", "ABC"[n % 3]
        ship(src, dest, ref, sku, 1 + n % 5)
        if n % 4:
            receive(dest, ref, sku, max(1, n % 5 - (n % 3 == 0)), src, final=n % 2 == 0)
    for loc in STORES:
        f[loc](Kind.RECEIVE, 10, at_ms=t + 1, ref="PO-1", sku="A")  # not a transfer, with a ref
        f[loc](Kind.SALE, -1, at_ms=t + 2, sku="B")  # not a transfer, without one
    return out


def _extra_rows() -> list[tuple[Any, ...]]:
    """Rows a hub of schema 19 may hold that no hub of this version books: a bundle's own transfer (effect
    expanded: its parts are events of their own) and a receipt whose final is not true."""
    f = EventFactory(_agent("S1"), location="S1", sku=BUNDLE)
    g = EventFactory(_agent("S2"), location="S2", sku="A")
    kit = f(Kind.TRANSFER_OUT, -2, at_ms=900, ref="T-KIT", attrs={"to": "S2"})
    odd = g(Kind.TRANSFER_IN, 1, at_ms=901, ref="T-ODD", attrs={"final": "yes", "from": "S1"})
    return [_row(kit, "expanded"), _row(odd, "applied")]


def _row(ev: StockEvent, effect: str = "applied") -> tuple[Any, ...]:
    return (ev.event_id, *event_row(ev), effect, None, RECEIVED_MS)


def _stock_rows(events: list[StockEvent]) -> list[tuple[Any, ...]]:
    """A stock row for every location and SKU the events touch or ship to, each with a stale in transit (what the
    old key made of it is not the point: the step sums it again), and the bundle's row, which it leaves."""
    keys = {(ev.location, ev.sku) for ev in events}
    keys |= {(ev.attrs["to"], ev.sku) for ev in events if ev.kind is Kind.TRANSFER_OUT}
    keys |= {("S5", "Z")}  # in transit and no transfer at all: 0 after the step

    def stale(loc: str, sku: str) -> int:
        return 9 if (loc, sku) == ("S5", "Z") else 7 * ((int(loc[1:]) + ord(sku)) % 2)

    rows = [(loc, sku, 0, 0, stale(loc, sku), 0, RECEIVED_MS) for loc, sku in sorted(keys)]
    return [*rows, ("S2", BUNDLE, 0, 0, 4, 0, RECEIVED_MS)]


def _schema_19_rows(events: list[StockEvent], *, extra: bool) -> dict[str, list[tuple[Any, ...]]]:
    rows = [_row(ev) for ev in events] + (_extra_rows() if extra else [])
    return {"events": rows, "stock": _stock_rows(events)}


BUNDLE_RECIPE = "INSERT INTO bundle_recipes (sku, version, valid_from_ms, components, set_by) VALUES ('KIT', 1, 0, '{\"A\": 2}', 'admin')"


def _sqlite_19(db: Path, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    conn = sqlite3.connect(db)
    try:
        for step in range(1, OLD + 1):
            conn.executescript(f"BEGIN;\n{SQLITE_MIGRATIONS[step].read()}\nPRAGMA user_version = {step};\nCOMMIT;")
        columns = {"events": EVENT_COLUMNS, "stock": STOCK_COLUMNS}
        for table, values in rows.items():
            marks = ", ".join("?" * len(values[0]))
            conn.executemany(f"INSERT INTO {table} ({columns[table]}) VALUES ({marks})", values)
        conn.execute(BUNDLE_RECIPE)
        conn.commit()
    finally:
        conn.close()


async def _postgres_19(url: str, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)")
        for step in range(1, OLD + 1):
            async with conn.transaction():
                await conn.execute(PG_MIGRATIONS[step].read())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)
        columns = {"events": EVENT_COLUMNS, "stock": STOCK_COLUMNS}
        for table, values in rows.items():
            marks = ", ".join(f"${i}" for i in range(1, len(values[0]) + 1))
            await conn.executemany(f"INSERT INTO {table} ({columns[table]}) VALUES ({marks})", values)
        await conn.execute(BUNDLE_RECIPE)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _database(backend: str, tmp_path: Path, name: str) -> AsyncIterator[str]:
    """A place for one hub database: a file, or a fresh PostgreSQL schema."""
    if backend == "sqlite":
        yield str(tmp_path / f"{name}.db")
        return
    async with fresh_schema(f"u20{name}") as url:
        yield url


async def _build_19(backend: str, where: str, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    if backend == "sqlite":
        _sqlite_19(Path(where), rows)
    else:
        await _postgres_19(where, rows)


async def _fetch(backend: str, where: str, sql: str) -> list[tuple[Any, ...]]:
    if backend == "sqlite":
        conn = sqlite3.connect(where)
        try:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    pg = await asyncpg.connect(where)
    try:
        return [tuple(r) for r in await pg.fetch(sql)]
    finally:
        await pg.close()


async def _run_step(backend: str, where: str, script: str) -> None:
    """Run one step's script as the hub's migrate does (SQLite: statement by statement in one transaction)."""
    if backend == "sqlite":
        conn = sqlite3.connect(where, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in script_statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {STEP}")
            conn.execute("COMMIT")
        finally:
            conn.close()
        return
    pg = await asyncpg.connect(where)
    try:
        async with pg.transaction():
            await pg.execute(script)
            await pg.execute("INSERT INTO schema_migrations VALUES ($1, 0)", STEP)
    finally:
        await pg.close()


TRANSFERS_SQL = f"SELECT {TRANSFER_COLUMNS}, updated_at_ms FROM transfers ORDER BY dest, ref, sku"
STOCK_SQL = "SELECT location, sku, on_hand, in_transit, updated_at_ms FROM stock ORDER BY location, sku"
SQLITE_SCHEMA_SQL = (
    "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
)
POSTGRES_SCHEMA_SQL = (
    "SELECT 'column', table_name::text, column_name::text, data_type::text || ' ' || is_nullable::text || ' ' || "
    "COALESCE(collation_name::text, '') || ' ' || COALESCE(column_default, '') FROM information_schema.columns "
    "WHERE table_schema = current_schema() UNION ALL "
    "SELECT 'index', tablename::text, indexname::text, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
    "ORDER BY 1, 2, 3"
)


async def _state(backend: str, where: str) -> dict[str, list[tuple[Any, ...]]]:
    schema_sql = SQLITE_SCHEMA_SQL if backend == "sqlite" else POSTGRES_SCHEMA_SQL
    schema = await _fetch(backend, where, schema_sql)
    if backend == "postgres":  # each database is a schema of its own, named in its indexes' definitions
        [(name,)] = await _fetch(backend, where, "SELECT current_schema()")
        schema = [tuple(str(v).replace(f"{name}.", "") for v in r) for r in schema]
    return {
        "transfers": await _fetch(backend, where, TRANSFERS_SQL),
        "stock": await _fetch(backend, where, STOCK_SQL),
        "schema": schema,
    }


async def test_step_20_leaves_what_its_first_version_left(backend: str, tmp_path: Path) -> None:
    events = _events()
    rows = _schema_19_rows(events, extra=True)
    migrations = SQLITE_MIGRATIONS if backend == "sqlite" else PG_MIGRATIONS
    first = (FIXTURES / f"{backend}_020_first.sql").read_text(encoding="utf-8")
    async with _database(backend, tmp_path, "first") as old, _database(backend, tmp_path, "now") as new:
        await _build_19(backend, old, rows)
        await _build_19(backend, new, rows)
        await _run_step(backend, old, first)
        await _run_step(backend, new, migrations[STEP].read())
        left, now = await _state(backend, old), await _state(backend, new)
        assert now["transfers"] == left["transfers"]
        assert now["stock"] == left["stock"]
        assert now["schema"] == left["schema"]
        # the ledger had transfers of each shape, and the step changed in transit both ways
        assert len(now["transfers"]) > 40
        assert any(r[11] == "S1,S2" for r in now["transfers"])
        in_transit = {(r[0], r[1]): r[3] for r in now["stock"]}
        assert in_transit[("S5", "Z")] == 0 and in_transit[("S6", "C")] >= 3 and in_transit[("S2", BUNDLE)] == 4


async def _fresh_hub(where: str, events: list[StockEvent]) -> None:
    """A hub of this version ingesting ``events`` as their stores send them."""
    async with open_store(where) as store:
        for loc in STORES:
            _, token = await store.add_agent([loc], agent_id=_agent(loc))
            who = await store.authenticate(token)
            assert who is not None
            mine = [ev for ev in events if ev.agent_id == who.agent_id]
            assert (await store.ingest(who, 1, mine)).rejected == ()


async def test_an_upgraded_hub_holds_the_transfers_a_fresh_hub_builds_from_the_same_events(
    backend: str, tmp_path: Path
) -> None:
    events = _events()
    async with _database(backend, tmp_path, "upgraded") as upgraded, _database(backend, tmp_path, "fresh") as fresh:
        await _build_19(backend, upgraded, _schema_19_rows(events, extra=False))
        async with open_store(upgraded):
            pass
        await _fresh_hub(fresh, events)
        transfers_sql = f"SELECT {TRANSFER_COLUMNS} FROM transfers ORDER BY dest, ref, sku"
        rebuilt = await _fetch(backend, upgraded, transfers_sql)
        assert rebuilt == await _fetch(backend, fresh, transfers_sql)
        assert len(rebuilt) > 40
        in_transit = "SELECT location, sku, in_transit FROM stock WHERE in_transit <> 0 AND sku <> 'KIT' ORDER BY 1, 2"
        assert await _fetch(backend, upgraded, in_transit) == await _fetch(backend, fresh, in_transit)


async def test_step_20_says_how_many_events_it_reads(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The step's first line says how many events it reads: counted on SQLite (from an index, in a blink), and
    on PostgreSQL from the statistics of each partition of events, a partition without any counted."""
    events = _events()
    caplog.set_level(logging.INFO, logger="hub.storage.migrations")
    async with _database(backend, tmp_path, "said") as where:
        rows = _schema_19_rows(events, extra=False)
        await _build_19(backend, where, rows)
        n = len(rows["events"])
        about = ""
        if backend == "postgres":
            conn = await asyncpg.connect(where)
            try:
                await conn.execute("ANALYZE events")  # as autovacuum leaves a hub's ledger: its size estimated
            finally:
                await conn.close()
            about = "about "
        async with open_store(where):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "hub.storage.migrations"]
    began = [line for line in lines if f"to schema version {STEP} (" in line and line.startswith("Migrating")]
    assert len(began) == 1, lines
    assert (
        f"step 1 of {SQLITE_VERSION - OLD}: it reads the ledger's {about}{n:,} events to rebuild the transfers by "
        "destination from their transfer events; the hub serves once the migration is done." in began[0]
    ), began


async def test_a_postgres_ledger_without_statistics_is_counted(
    pg_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hub.storage.migrations")
    rows = _schema_19_rows(_events(), extra=False)
    async with fresh_schema("u20count") as url:
        await _postgres_19(url, rows)
        async with open_store(url):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "hub.storage.migrations"]
    assert any(f"it reads the ledger's {len(rows['events']):,} events to rebuild" in line for line in lines), lines


def _sqlite_ledger(transfers: int) -> sqlite3.Connection:
    """A schema-19 SQLite hub in memory whose ledger grows with ``transfers``: each transfer its own SKU (so the
    stock rows grow too), two of three received, 20 sales with their receipt refs beside each, 10 stores numbering
    their transfers alike."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for step in range(1, OLD + 1):
        conn.executescript(f"BEGIN;\n{SQLITE_MIGRATIONS[step].read()}\nPRAGMA user_version = {step};\nCOMMIT;")
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
        for k in range(20):
            event(f"S{(t + k) % 10}", sku, "sale", -1, f"R-{t}-{k}", None)
    conn.executemany(f"INSERT INTO events ({EVENT_COLUMNS}) VALUES ({', '.join('?' * 17)})", rows)
    conn.executemany(
        f"INSERT INTO stock ({STOCK_COLUMNS}) VALUES (?, ?, 0, 0, 0, 0, 0)",
        sorted(keys | {(f"S{d}", "K0") for d in range(10)}),
    )
    return conn


def _work(conn: sqlite3.Connection, script: str) -> int:
    """The work of running ``script`` (rolled back after), in hundreds of SQLite's virtual machine instructions:
    the same on every machine and every run, unlike its time."""
    counted = [0]

    def tick() -> int:
        counted[0] += 1
        return 0

    conn.set_progress_handler(tick, 100)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in script_statements(script):
            conn.execute(statement)
    finally:
        conn.execute("ROLLBACK")
        conn.set_progress_handler(None, 0)
    return counted[0]


def test_step_20_on_sqlite_works_in_step_with_the_ledger() -> None:
    """Four times the ledger (transfers, their SKUs' stock rows, the sales beside them) is about four times the
    step's work. The first version's grew with the square: each stock row summed the transfers to its location,
    each transfer looked up every event of its ref, and the ledger was walked through the sales' refs."""
    small, big = _sqlite_ledger(500), _sqlite_ledger(2000)
    try:
        first = (FIXTURES / "sqlite_020_first.sql").read_text(encoding="utf-8")
        assert _work(big, first) / _work(small, first) > 8  # the measure tells the first version's growth apart
        now = SQLITE_MIGRATIONS[STEP].read()
        assert _work(big, now) / _work(small, now) < 5
    finally:
        small.close()
        big.close()
