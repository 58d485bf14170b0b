"""The dashboard's calls against a hub seeded at retail scale: answer time and bytes of each call the
dashboard's pages make, with a SQLite hub (``python -m hub serve``) seeded through the store's ingest.

Everything a page reads should grow with what it shows, not with the ledger or the stock table: this
prints each call's time and size so a call that reads a whole table stands out.

    python -m bench.bench_dashboard [--stores 200] [--skus 500] [--events-per-key 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.bench_ingest import free_port
from bench.bench_pg_reads import run_hub
from hub.storage import open_store
from hub.storage.base import AgentIdentity
from protocol import Kind, StockEvent, new_event_id, pack_hlc, wall_ms_now

BATCH = 5_000


def move(
    events: list[StockEvent], agent_id: str, loc: str, sku: str, kind: Kind, qty: int, at_ms: int,
    source: str = "pos:bench",
) -> None:  # fmt: skip
    """Append the agent's next movement at ``loc`` to ``events``."""
    seq = len(events) + 1
    events.append(
        StockEvent(new_event_id(), agent_id, 1, seq, loc, sku, kind, qty, pack_hlc(at_ms, seq), at_ms, source)
    )


async def seed(db: Path, stores: int, skus: int, per_key: int, seed_: int) -> str:
    """Agents for ``stores`` stores, a count of every SKU at each and ``per_key`` sales after it; a few
    unknown barcodes and negative counts. Returns a reader token."""
    rng = random.Random(seed_)
    async with open_store(str(db)) as store:
        _, reader = await store.add_agent([], role="reader")
        t0 = time.perf_counter()
        now = wall_ms_now()
        for s in range(stores):
            loc = f"S{s + 1:03d}"
            agent_id, _ = await store.add_agent([loc])
            who = AgentIdentity(agent_id, frozenset({loc}))
            events: list[StockEvent] = []
            for k in range(skus):
                move(events, agent_id, loc, f"SKU-{k:05d}", Kind.COUNT, rng.randint(0, 40), now - 86_400_000)
                for _ in range(per_key):
                    move(events, agent_id, loc, f"SKU-{k:05d}", Kind.SALE, -rng.randint(1, 3), now - 3_600_000)
            for u in range(5):
                move(events, agent_id, loc, f"unknown:{s:04d}{u:09d}", Kind.SALE, -1, now - 600_000, "scanner:bench")
            acked = 0
            for i in range(0, len(events), BATCH):
                r = await store.ingest(who, 1, events[i : i + BATCH], acked_seq=acked)
                acked = r.hwm
            if s % 20 == 19:
                print(f"  {s + 1} stores seeded in {time.perf_counter() - t0:.0f} s", flush=True)
    return reader


CALLS = [
    "/v1/status",
    "/v1/exceptions?limit=10000",
    "/v1/channels",
    "/v1/catalog",
    "/v1/counts?limit=10000",
    "/v1/counts?location=S001&limit=10000",
    "/v1/counts?sku=SKU-00007",
    "/v1/ledger?sku=SKU-00007&limit=50",
    "/v1/quarantine?status=pending&limit=1000",
]


async def measure(base: str, reader: str) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {reader}"}) as session:
        for path in CALLS:
            t0 = time.perf_counter()
            async with session.get(base + path) as resp:
                body = await resp.read()
            ms = (time.perf_counter() - t0) * 1000
            print(f"{resp.status} {ms:9.1f} ms {len(body):>12,} B  {path}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stores", type=int, default=200)
    ap.add_argument("--skus", type=int, default=500)
    ap.add_argument("--events-per-key", type=int, default=2)
    ap.add_argument("--dir", type=Path)
    args = ap.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="shelfsync-dash-"))
    db = folder / "hub.db"
    token_file = folder / "reader.token"
    if token_file.exists():
        reader = token_file.read_text()
    else:
        reader = asyncio.run(seed(db, args.stores, args.skus, args.events_per_key, 7))
        token_file.write_text(reader)
    port = free_port()
    hub = run_hub(str(db), port)
    try:
        asyncio.run(measure(f"http://127.0.0.1:{port}", reader))
    finally:
        hub.terminate()
        hub.wait(timeout=60)


if __name__ == "__main__":
    main()
