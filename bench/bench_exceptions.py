"""The exceptions list at chain scale: each page's answer time on a SQLite hub of many stores' transfers, stock
and import issues, with each filter the dashboard and ops tooling send (``HubStore.exceptions``, 100 rows).

The rows are written straight into the hub's tables (after ``open_store`` made its schema), not ingested: a chain's
400,000 transfers are seeded in seconds. Of the transfers 1 % were closed short, 1 % received over, 0.5 %
misdirected and 0.5 % are still open; the rest were received in full (no finding). Each store also holds ``--skus``
stock rows and 5 unknown barcodes, and 200 import issues. Prints the median of three reads of each page.

    python -m bench.bench_exceptions [--stores 200] [--transfers 2000] [--skus 500] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from hub.storage import open_store

DAY_MS = 86_400_000


def seed(db: Path, stores: int, transfers: int, skus: int, now: int) -> None:
    """The hub's rows, written in one transaction, then ANALYZE (what a long-running hub's optimize leaves)."""
    rng = random.Random(7)
    rows = []
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
            rows.append(
                (f"T{s}-{i}", f"SKU-{i % skus:05d}", 3, received, src, dst, in_to, src if in_to else None, at - 1000,
                 closed, at)
            )  # fmt: skip
    stock = [
        (f"S{s + 1:03d}", f"SKU-{k:05d}", rng.randint(0, 40), now - rng.randrange(DAY_MS))
        for s in range(stores)
        for k in range(skus)
    ]
    stock += [
        (f"S{s + 1:03d}", f"unknown:{s:04d}{u:09d}", -1, now - rng.randrange(DAY_MS))
        for s in range(stores)
        for u in range(5)
    ]
    issues = [
        (f"a{s}", f"i{s}-{j}", f"S{s + 1:03d}", "pos.csv", j, "bad", "raw", now - rng.randrange(30 * DAY_MS))
        for s in range(stores)
        for j in range(200)
    ]
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO transfers (ref, sku, shipped, received, out_from, out_to, in_to, in_from, shipped_at_ms, "
            "closed_at, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO stock (location, sku, on_hand, reserved, in_transit, safety_stock, updated_at_ms) "
            "VALUES (?, ?, ?, 0, 0, 0, ?)",
            stock,
        )
        conn.executemany("INSERT INTO import_issues VALUES (?, ?, ?, ?, ?, ?, ?, ?)", issues)
        conn.execute("ANALYZE")


def cases(now: int) -> dict[str, dict[str, object]]:
    return {
        "the chain": {},
        "location=S042": {"location": "S042"},
        "kind=transfer_short": {"kind": "transfer_short"},
        "since=1h": {"since_ms": now - 3_600_000},
        "location=S042&since=1d": {"location": "S042", "since_ms": now - DAY_MS},
        "kind=import_quarantine&location=S042": {"kind": "import_quarantine", "location": "S042"},
        "kind=unknown_barcode": {"kind": "unknown_barcode"},
    }


async def measure(db: Path, now: int) -> None:
    async with open_store(str(db)) as store:
        for name, kw in cases(now).items():
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                rows = await store.exceptions(limit=100, transfer_open_max_ms=3_600_000, **kw)  # type: ignore[arg-type]
                times.append((time.perf_counter() - t0) * 1000)
            print(f"{statistics.median(times):9.1f} ms {len(rows):4d} rows  {name}", flush=True)


async def create(db: Path) -> None:
    async with open_store(str(db)):
        pass  # the current schema, migrations and all


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stores", type=int, default=200)
    ap.add_argument("--transfers", type=int, default=2000)
    ap.add_argument("--skus", type=int, default=500)
    ap.add_argument("--dir", type=Path)
    args = ap.parse_args()
    db = (args.dir or Path(tempfile.mkdtemp(prefix="shelfsync-exc-"))) / "hub.db"
    now = int(time.time() * 1000)
    if not db.exists():
        asyncio.run(create(db))
        t0 = time.perf_counter()
        seed(db, args.stores, args.transfers, args.skus, now)
        print(f"seeded in {time.perf_counter() - t0:.0f} s", flush=True)
    asyncio.run(measure(db, now))


if __name__ == "__main__":
    main()
