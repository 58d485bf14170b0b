"""Side by side with the eventsourcing library: the same stream of stock movements recorded into SQLite.

shelfsync: ``Outbox.record`` (WAL, synchronous=FULL, one ``BEGIN IMMEDIATE``
per call). eventsourcing (https://pypi.org/project/eventsourcing/): an
``Application`` over ``eventsourcing.sqlite`` (WAL), one ``StockItem``
aggregate per (location, SKU) kept in memory, each movement an aggregate
event, ``app.save()`` per call. Both durable at return, same disk, same run.

Two shapes: one movement per transaction (a scan at the back door), and 100
per transaction (a POS export batch; eventsourcing saves the touched
aggregates in one ``save``).

    python -m bench.bench_eventsourcing [--n 2000] [--runs 3]

Needs ``pip install eventsourcing`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from agent import Movement, Outbox
from bench.common import median, percentile, write_result
from protocol import Kind

LOCATION = "STORE-1"
SKUS = 50
BATCH = 100
NAMESPACE = uuid.UUID("6f7c1c8e-5d2a-4b7e-9a51-0d1f3b2a9c44")


def stream(n: int) -> list[tuple[str, Kind, int]]:
    """The movements both sides record: mostly sales, some receipts."""
    return [(f"SKU-{i % SKUS:02d}", Kind.RECEIVE if i % 10 == 0 else Kind.SALE, 12 if i % 10 == 0 else -1) for i in range(n)]


class StockItem(Aggregate):
    @event("Created")
    def __init__(self, location: str, sku: str) -> None:
        self.location = location
        self.sku = sku
        self.on_hand = 0

    @staticmethod
    def create_id(location: str, sku: str) -> uuid.UUID:
        return uuid.uuid5(NAMESPACE, f"{location}/{sku}")

    @event("Moved")
    def move(self, kind: str, qty: int, source: str) -> None:
        self.on_hand += qty


class Stock(Application[uuid.UUID]):
    pass


def eventsourcing_run(path: Path, moves: list[tuple[str, Kind, int]], batch: int) -> list[float]:
    app = Stock(env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)})
    items: dict[str, StockItem] = {}
    for k in range(SKUS):
        sku = f"SKU-{k:02d}"
        items[sku] = StockItem(LOCATION, sku)
    app.save(*items.values())
    latencies: list[float] = []
    for start in range(0, len(moves), batch):
        t0 = time.perf_counter()
        touched: dict[str, StockItem] = {}
        for sku, kind, qty in moves[start : start + batch]:
            item = items[sku]
            item.move(kind.value, qty, "pos:bench")
            touched[sku] = item
        app.save(*touched.values())
        latencies.append(time.perf_counter() - t0)
    app.close()
    return latencies


async def outbox_run(path: Path, moves: list[tuple[str, Kind, int]], batch: int) -> list[float]:
    latencies: list[float] = []
    async with Outbox.open(path, agent_id="bench-agent", location=LOCATION, synchronous="full") as outbox:
        for start in range(0, len(moves), batch):
            part = [Movement(LOCATION, sku, kind, qty, "pos:bench") for sku, kind, qty in moves[start : start + batch]]
            t0 = time.perf_counter()
            await outbox.record(part)
            latencies.append(time.perf_counter() - t0)
    return latencies


def summary(per_call: list[list[float]], batch: int) -> dict[str, float]:
    return {
        "p50_ms": median([percentile(run, 50) for run in per_call]) * 1e3,
        "p99_ms": median([percentile(run, 99) for run in per_call]) * 1e3,
        "events_per_s": median([batch * len(run) / sum(run) for run in per_call]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000, help="movements per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir)")
    args = parser.parse_args()
    moves = stream(args.n)
    rows: list[dict[str, Any]] = []
    for batch in (1, BATCH):
        ours: list[list[float]] = []
        theirs: list[list[float]] = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                ours.append(asyncio.run(outbox_run(Path(tmp) / "outbox.sqlite3", moves, batch)))
                theirs.append(eventsourcing_run(Path(tmp) / "eventsourcing.sqlite3", moves, batch))
        a, b = summary(ours, batch), summary(theirs, batch)
        print(f"batch {batch}: shelfsync {a}, eventsourcing {b}")
        shape = "1 movement per transaction" if batch == 1 else f"{batch} movements per transaction"
        rows += [
            {"measure": f"{shape}: p50 per call (ms)", "shelfsync outbox": a["p50_ms"], "eventsourcing + SQLite": b["p50_ms"], "ratio": a["p50_ms"] / b["p50_ms"]},
            {"measure": f"{shape}: p99 per call (ms)", "shelfsync outbox": a["p99_ms"], "eventsourcing + SQLite": b["p99_ms"], "ratio": a["p99_ms"] / b["p99_ms"]},
            {"measure": f"{shape}: movements/s", "shelfsync outbox": a["events_per_s"], "eventsourcing + SQLite": b["events_per_s"], "ratio": a["events_per_s"] / b["events_per_s"]},
        ]  # fmt: skip
    write_result(
        "eventsourcing",
        title="Recording movements: shelfsync's outbox next to the eventsourcing library on SQLite (issue 8)",
        command=f"python -m bench.bench_eventsourcing --n {args.n} --runs {args.runs}",
        rows=rows,
        notes=(
            f"The same {args.n:,} movements over {SKUS} SKUs, median of {args.runs} runs, both durable at return (WAL, "
            "synchronous FULL), on "
            f"{os.path.realpath(args.dir or tempfile.gettempdir())}. The outbox validates every movement against the wire "
            "contract, numbers it (seq, hybrid clock) and keeps the sync state; the eventsourcing application keeps one "
            "aggregate per SKU in memory and stores each movement as an aggregate event with optimistic versioning. "
            "Ratio < 1: shelfsync is faster (latency) — for movements/s, > 1 is faster."
        ),
    )


if __name__ == "__main__":
    main()
