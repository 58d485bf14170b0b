"""Hub ingest over HTTP: 8 concurrent agents posting 1,000-event batches to a real hub process.

Baseline (issue 2): a plain sqlite3 ``executemany`` of the same rows into the
same tables (the hub's own schema, indexes included, same PRAGMAs), one
transaction per 1,000 rows, in the same run. Target: ratio ≥ 0.5.

    python -m bench.bench_ingest [--agents 8] [--batches 25] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import median, write_result
from hub.storage import open_store
from protocol import Kind, StockEvent, SyncRequest, encode_sync_request, new_event_id, pack_hlc, wall_ms_now

BATCH = 1_000
PROFILE_ARGS: list[str] = []  # e.g. ["-m", "cProfile", "-o", "hub.prof"] to profile the hub process
SKUS_PER_STORE = 500


def make_events(agent_id: str, location: str, n: int, rng: random.Random) -> list[StockEvent]:
    start_ms = wall_ms_now() - 3_600_000
    events = []
    for seq in range(1, n + 1):
        roll = rng.random()
        if roll < 0.01:
            kind, qty = Kind.COUNT, rng.randint(0, 40)
        elif roll < 0.75:
            kind, qty = Kind.SALE, -rng.choice((1, 1, 2))
        elif roll < 0.95:
            kind, qty = Kind.RECEIVE, rng.randint(5, 20)
        else:
            kind, qty = Kind.RETURN, 1
        ms = start_ms + seq
        events.append(StockEvent(
            new_event_id(), agent_id, 1, seq, location, f"SKU-{rng.randrange(SKUS_PER_STORE):04d}", kind, qty,
            pack_hlc(ms, 0), ms, "scanner:bench",
        ))
    return events


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def setup_hub(db: Path, agents: int) -> list[tuple[str, str, str]]:
    creds = []
    async with await open_store(str(db)) as store:
        for i in range(agents):
            location = f"STORE-{i + 1:03d}"
            agent_id, token = await store.add_agent([location])
            creds.append((agent_id, token, location))
    return creds


async def post_all(url: str, token: str, bodies: list[bytes]) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"}
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            async with session.post(f"{url}/v1/sync", data=body, headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"hub answered {resp.status}: {await resp.text()}")
                await resp.read()


def run_hub(db: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, *PROFILE_ARGS, "-m", "hub", "serve", "--db", str(db), "--port", str(port), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    import urllib.request

    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("hub did not start")


def hub_ingest(tmp: Path, agents: int, batches: int, seed: int) -> float:
    db = tmp / "hub.db"
    creds = asyncio.run(setup_hub(db, agents))
    rng = random.Random(seed)
    per_agent: dict[str, list[StockEvent]] = {}
    plans = []
    for agent_id, token, location in creds:
        events = make_events(agent_id, location, batches * BATCH, rng)
        per_agent[agent_id] = events
        bodies = [encode_sync_request(SyncRequest(agent_id, 1, tuple(events[i:i + BATCH]))) for i in range(0, len(events), BATCH)]
        plans.append((token, bodies))
    port = free_port()
    hub = run_hub(db, port)
    try:
        url = f"http://127.0.0.1:{port}"

        async def all_agents() -> None:
            await asyncio.gather(*(post_all(url, token, bodies) for token, bodies in plans))

        t0 = time.perf_counter()
        asyncio.run(all_agents())
        elapsed = time.perf_counter() - t0
    finally:
        hub.terminate()
        hub.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert stored == agents * batches * BATCH, f"hub stored {stored} events"
    return agents * batches * BATCH / elapsed


def plain_executemany(tmp: Path, hub_db: Path) -> float:
    """The rows the hub wrote, into the same (empty) tables, with executemany: one transaction per batch.

    For each 1,000-event batch the hub committed: its event rows, the stock rows
    of the (location, sku) keys it touched, the agent's mark, and its change-feed
    rows if the schema has a feed — the same rows, the same tables, the same
    indexes and PRAGMAs, with none of the HTTP, decoding, dedupe or resolution.
    """
    db = tmp / "plain.db"
    asyncio.run(setup_hub(db, 0))  # the hub's schema, indexes and all
    src = sqlite3.connect(hub_db)
    tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    cols = {t: [r[1] for r in src.execute(f"PRAGMA table_info({t})")] for t in ("events", "stock", "agent_hwm", "changes") if t in tables}
    events = src.execute(f"SELECT {', '.join(cols['events'])} FROM events ORDER BY agent_id, seq").fetchall()
    stock = {(r[0], r[1]): r for r in src.execute(f"SELECT {', '.join(cols['stock'])} FROM stock")}
    hwm = {r[0]: r for r in src.execute(f"SELECT {', '.join(cols['agent_hwm'])} FROM agent_hwm")}
    changes = src.execute(f"SELECT {', '.join(cols['changes'])} FROM changes ORDER BY 1").fetchall() if "changes" in cols else []
    src.close()
    ix = {name: i for i, name in enumerate(cols["events"])}
    batches: list[dict[str, list[tuple[object, ...]]]] = []
    n_batches = max(1, -(-len(events) // BATCH))
    for number, start in enumerate(range(0, len(events), BATCH)):
        rows = events[start:start + BATCH]
        keys = {(r[ix["location"]], r[ix["sku"]]) for r in rows}
        batches.append({
            "events": rows,
            "stock": [stock[k] for k in keys if k in stock],
            "agent_hwm": [hwm[rows[0][ix["agent_id"]]]],
            # the feed rows, shared out evenly: the same number of rows in all
            "changes": changes[number * len(changes) // n_batches:(number + 1) * len(changes) // n_batches],
        })
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    sql = {
        t: f"INSERT OR REPLACE INTO {t} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})" for t, c in cols.items()
    }
    t0 = time.perf_counter()
    for batch in batches:
        conn.execute("BEGIN IMMEDIATE")
        for table, rows in batch.items():
            if rows:
                conn.executemany(sql[table], rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(events) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--batches", type=int, default=25, help="1,000-event batches per agent")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    hub_rates, base_rates = [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            rate = hub_ingest(Path(d), args.agents, args.batches, seed=run)
            base = plain_executemany(Path(d), Path(d) / "hub.db")
        hub_rates.append(rate)
        base_rates.append(base)
        print(f"run {run + 1}: hub {rate:,.0f} events/s; plain executemany {base:,.0f} rows/s; ratio {rate / base:.2f}")
    hub_rate, base_rate = median(hub_rates), median(base_rates)
    write_result(
        "issue2_hub_ingest",
        title="Hub ingest over HTTP, SQLite backend (issue 2)",
        command=f"python -m bench.bench_ingest --agents {args.agents} --batches {args.batches} --runs {args.runs}",
        rows=[
            {"measure": "events/s", "hub over HTTP": hub_rate, "plain sqlite3 executemany": base_rate,
             "ratio": hub_rate / base_rate, "target": "≥ 0.5"},
        ],
        notes=(
            f"{args.agents} agents (one location each, {SKUS_PER_STORE} SKUs), {args.batches} batches of {BATCH:,} events "
            "each, sent concurrently to one `shelfsync-hub serve` process on 127.0.0.1 (request bodies encoded before "
            "the clock starts; the hub decodes, authenticates, dedupes, resolves and commits every batch with the agent's "
            "mark in one transaction; on this machine one worker process decodes the bodies, see docs/scaling.md). "
            "~1 % counts, the rest sales, receipts and returns, in clock order. The baseline "
            "writes the rows the hub wrote — each batch's events, the stock rows of the keys it touched, the agent's "
            "mark and the change-feed rows — into the same tables (same indexes, WAL, synchronous=FULL) with "
            "`executemany`, one transaction per batch: no HTTP, no decoding, no dedupe, no resolution. "
            f"Median of {args.runs} runs."
        ),
    )


if __name__ == "__main__":
    main()
