"""The exceptions list at chain scale: each page's answer time on a SQLite or PostgreSQL hub of many stores'
transfers, stock, import issues, held events and channel refusals, with each filter the dashboard and ops tooling
send (``HubStore.exceptions``, 100 rows).

The rows are written straight into the hub's tables (after ``open_store`` made its schema), not ingested: a chain's
400,000 transfers are seeded in seconds. Of the transfers 1 % were closed short, 1 % received over, 0.5 %
misdirected and 0.5 % are still open (one in ten of those shipped to a location the hub does not know); the rest
were received in full (no finding). Each store has booked events (so it is a known destination) and holds
``--skus`` stock rows and 5 unknown barcodes, 200 import issues, 20 events held for their clock and 20 levels a
channel refused. Prints the median of ``--repeat`` reads of each page (three).

    python -m bench.bench_exceptions [--stores 200] [--transfers 2000] [--skus 500] [--repeat 3]
                                     [--dir DIR | --url [URL]]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from bench.bench_pg_ingest import DEFAULT_URL, with_schema
from hub.storage import open_store

DAY_MS = 86_400_000


Tables = dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]
EVENT_COLUMNS = (
    "location", "event_id", "agent_id", "epoch", "seq", "sku", "kind", "qty", "occurred_at", "wall_ms", "source",
    "ref", "reason", "attrs", "effect", "variance", "duplicates", "received_at_ms",
)  # fmt: skip
TRANSFER_COLUMNS = (
    "ref", "sku", "shipped", "received", "out_from", "out_to", "in_to", "in_from", "shipped_at_ms", "closed_at",
    "updated_at_ms",
)  # fmt: skip
QUARANTINE_COLUMNS = (
    "event_id", "agent_id", "epoch", "seq", "location", "sku", "kind", "qty", "occurred_at", "wall_ms", "source",
    "ref", "reason", "attrs", "detail", "attempts", "received_at_ms", "status",
)  # fmt: skip


def rows(stores: int, transfers: int, skus: int, now: int) -> Tables:
    """The hub's rows, table by table (columns, rows)."""
    rng = random.Random(7)
    moved = []
    for s in range(stores):
        src = f"S{s + 1:03d}"
        for i in range(transfers):
            dst = f"S{rng.randrange(stores) + 1:03d}"
            at = now - rng.randrange(90 * DAY_MS)
            received, closed, in_to = 3, None, dst
            p = rng.random()
            if p < 0.01:
                received, closed = 1, at  # closed short
            elif p < 0.02:
                received = 4  # over
            elif p < 0.025:
                in_to = "S999"  # misdirected
            elif p < 0.03:
                received, in_to = 0, None  # still open
                if rng.random() < 0.1:
                    dst = f"X{rng.randrange(5)}"  # a location the hub does not know
            moved.append(
                (f"T{s}-{i}", f"SKU-{i % skus:05d}", 3, received, src, dst, in_to, src if in_to else None, at - 1000,
                 closed, at)
            )  # fmt: skip
    stock = [
        (f"S{s + 1:03d}", f"SKU-{k:05d}", rng.randint(0, 40), 0, 0, 0, now - rng.randrange(DAY_MS))
        for s in range(stores)
        for k in range(skus)
    ]
    stock += [
        (f"S{s + 1:03d}", f"unknown:{s:04d}{u:09d}", -1, 0, 0, 0, now - rng.randrange(DAY_MS))
        for s in range(stores)
        for u in range(5)
    ]
    issues = [
        (f"a{s}", f"i{s}-{j}", f"S{s + 1:03d}", "pos.csv", j, "bad", "raw", now - rng.randrange(30 * DAY_MS))
        for s in range(stores)
        for j in range(200)
    ]
    events = [  # what makes each store a known destination: something was booked there
        (f"S{s + 1:03d}", uuid.UUID(int=s + 1).bytes, "bench", 1, s + 1, "SKU-00000", "receive", 1, now << 16, now,
         "bench", None, None, None, "applied", None, 0, now)
        for s in range(stores)
    ]  # fmt: skip
    held = [
        (uuid.UUID(int=10**6 + s * 20 + j).bytes, "bench", 1, 10**6 + s * 20 + j, f"S{s + 1:03d}", "SKU-00001",
         "receive", 1, (now + 3 * DAY_MS) << 16, now + 3 * DAY_MS, "bench", None, None, None, "ahead", 1,
         now - rng.randrange(30 * DAY_MS), "pending")
        for s in range(stores)
        for j in range(20)
    ]  # fmt: skip
    refused = [
        ("shop", f"item{s}-{j}\tloc{s}", f"SKU-{j:05d}", f"S{s + 1:03d}", 3, "refused", now - rng.randrange(DAY_MS))
        for s in range(stores)
        for j in range(20)
    ]
    return {
        "transfers": (TRANSFER_COLUMNS, moved),
        "stock": (("location", "sku", "on_hand", "reserved", "in_transit", "safety_stock", "updated_at_ms"), stock),
        "import_issues": (
            ("agent_id", "issue_id", "location", "file", "line", "reason", "raw", "received_at_ms"),
            issues,
        ),
        "events": (EVENT_COLUMNS, events),
        "quarantine": (QUARANTINE_COLUMNS, held),
        "channel_refusals": (("channel", "level_key", "sku", "location", "quantity", "detail", "at_ms"), refused),
    }


def seed(db: Path, tables: Tables) -> None:
    """The rows, written in one transaction, then ANALYZE (what a long-running hub's optimize leaves)."""
    with sqlite3.connect(db) as conn:
        for table, (columns, values) in tables.items():
            marks = ", ".join("?" for _ in columns)
            conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", values)
        conn.execute("ANALYZE")


async def seed_pg(url: str, tables: Tables) -> None:
    """The rows by COPY, the PostgreSQL hub's list of where each agent booked events, then ANALYZE."""
    conn = await asyncpg.connect(url)
    try:
        for table, (columns, values) in tables.items():
            await conn.copy_records_to_table(table, records=values, columns=list(columns))
        await conn.execute("INSERT INTO agent_locations SELECT DISTINCT agent_id, location FROM events")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def cases(now: int) -> dict[str, dict[str, object]]:
    return {
        "the chain": {},
        "location=S042": {"location": "S042"},
        "kind=transfer_short": {"kind": "transfer_short"},
        "since=1h": {"since_ms": now - 3_600_000},
        "location=S042&since=1d": {"location": "S042", "since_ms": now - DAY_MS},
        "kind=import_quarantine&location=S042": {"kind": "import_quarantine", "location": "S042"},
        "kind=unknown_barcode": {"kind": "unknown_barcode"},
        "kind=transfer_overdue": {"kind": "transfer_overdue"},
        "kind=transfer_overdue&location=S042": {"kind": "transfer_overdue", "location": "S042"},
        "kind=transfer_unknown_destination": {"kind": "transfer_unknown_destination"},
        "kind=clock_quarantine": {"kind": "clock_quarantine"},
        "kind=clock_quarantine&location=S042": {"kind": "clock_quarantine", "location": "S042"},
        "kind=channel_refused": {"kind": "channel_refused"},
        "kind=channel_refused&location=S042": {"kind": "channel_refused", "location": "S042"},
    }


async def measure(db: str, now: int, repeat: int) -> None:
    async with open_store(db) as store:
        for name, kw in cases(now).items():
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                rows = await store.exceptions(limit=100, transfer_open_max_ms=3_600_000, **kw)  # type: ignore[arg-type]
                times.append((time.perf_counter() - t0) * 1000)
            print(f"{statistics.median(times):9.1f} ms {len(rows):4d} rows  {name}", flush=True)


async def create(db: str) -> None:
    async with open_store(db):
        pass  # the current schema, migrations and all


async def on_postgres(url: str, tables: Tables, now: int, repeat: int) -> None:
    """The same rows in a new schema of ``url``'s database, measured, then dropped."""
    schema = f"bench_exc_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        store_url = with_schema(url, schema)
        await create(store_url)
        t0 = time.perf_counter()
        await seed_pg(store_url, tables)
        print(f"seeded in {time.perf_counter() - t0:.0f} s", flush=True)
        await measure(store_url, now, repeat)
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stores", type=int, default=200)
    ap.add_argument("--transfers", type=int, default=2000)
    ap.add_argument("--skus", type=int, default=500)
    ap.add_argument("--dir", type=Path, help="the SQLite hub's folder (kept, and measured again when it holds one)")
    ap.add_argument("--url", nargs="?", const=DEFAULT_URL, help=f"a PostgreSQL database instead ({DEFAULT_URL})")
    ap.add_argument("--repeat", type=int, default=3, help="reads of each page, of which the median is printed")
    args = ap.parse_args()
    now = int(time.time() * 1000)
    if args.url is not None:
        asyncio.run(on_postgres(args.url, rows(args.stores, args.transfers, args.skus, now), now, args.repeat))
        return
    db = (args.dir or Path(tempfile.mkdtemp(prefix="shelfsync-exc-"))) / "hub.db"
    if not db.exists():
        asyncio.run(create(str(db)))
        t0 = time.perf_counter()
        seed(db, rows(args.stores, args.transfers, args.skus, now))
        print(f"seeded in {time.perf_counter() - t0:.0f} s", flush=True)
    asyncio.run(measure(str(db), now, args.repeat))


if __name__ == "__main__":
    main()
