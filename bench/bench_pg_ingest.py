"""Hub ingest on PostgreSQL over HTTP: 8 concurrent agents, 1 and 2 hub processes on one database.

Baseline (issue 6): a plain COPY (asyncpg ``copy_records_to_table``) of the same
rows into the same ledger table (the hub's schema: partitions and indexes), one
transaction per 1,000 rows from 8 concurrent connections, in the same run.

    python -m bench.bench_pg_ingest [--url postgresql://…] [--agents 8] [--batches 25] [--runs 3]

Each measurement gets a fresh schema in the database of ``--url`` (dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg

from bench.bench_ingest import BATCH, SKUS_PER_STORE, free_port, make_events
from bench.common import median, write_result
from hub.storage import open_store
from hub.storage.ingest import attrs_json
from protocol import StockEvent, SyncRequest, encode_sync_request, wall_ms_now

DEFAULT_URL = "postgresql://shelfsync:shelfsync@127.0.0.1:5432/shelfsync_test"
EVENT_COLUMNS = [
    "location", "event_id", "agent_id", "epoch", "seq", "sku", "kind", "qty", "occurred_at", "wall_ms", "source",
    "ref", "reason", "attrs", "effect", "variance", "duplicates", "received_at_ms",
]  # fmt: skip


def with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"search_path": schema})) if q)
    return urlunsplit(parts._replace(query=query))


@asynccontextmanager
async def fresh_schema(url: str) -> AsyncIterator[str]:
    """A new schema with the hub's tables (migrated by opening a store); dropped after."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        store_url = with_schema(url, schema)
        async with open_store(store_url):
            pass
        yield store_url
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


def run_hub(url: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--db", url, "--port", str(port), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("hub did not start")


async def post_all(url: str, token: str, bodies: list[bytes]) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        for body in bodies:
            async with session.post(f"{url}/v1/sync", data=body, headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"hub answered {resp.status}: {await resp.text()}")
                await resp.read()


async def workload(store_url: str, agents: int, batches: int, seed: int) -> list[tuple[str, list[StockEvent]]]:
    """Credentials for ``agents`` agents (one store each) and their events."""
    rng = random.Random(seed)
    out = []
    async with open_store(store_url) as store:
        for i in range(agents):
            location = f"STORE-{i + 1:03d}"
            agent_id, token = await store.add_agent([location])
            out.append((token, make_events(agent_id, location, batches * BATCH, rng)))
    return out


async def hub_ingest(url: str, hubs: int, agents: int, batches: int, seed: int) -> tuple[float, list[StockEvent]]:
    async with fresh_schema(url) as store_url:
        plans = await workload(store_url, agents, batches, seed)
        bodies = [
            (token, [encode_sync_request(SyncRequest(evs[0].agent_id, 1, tuple(evs[i : i + BATCH]))) for i in range(0, len(evs), BATCH)])
            for token, evs in plans
        ]  # fmt: skip
        ports = [free_port() for _ in range(hubs)]
        procs = [run_hub(store_url, port) for port in ports]
        try:
            t0 = time.perf_counter()
            await asyncio.gather(
                *(post_all(f"http://127.0.0.1:{ports[i % hubs]}", token, b) for i, (token, b) in enumerate(bodies))
            )
            elapsed = time.perf_counter() - t0
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
        conn = await asyncpg.connect(store_url)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM events")
        finally:
            await conn.close()
    total = agents * batches * BATCH
    assert stored == total, f"the hubs stored {stored} of {total} events"
    return total / elapsed, [ev for _, evs in plans for ev in evs]


async def plain_copy(url: str, events: list[StockEvent], agents: int) -> float:
    """The same rows into the same (empty) ledger table by COPY, 1,000 per transaction, one connection per agent."""
    now = wall_ms_now()
    by_agent: dict[str, list[tuple[object, ...]]] = {}
    for e in events:
        by_agent.setdefault(e.agent_id, []).append(
            (e.location, e.event_id, e.agent_id, e.epoch, e.seq, e.sku, e.kind.value, e.qty, e.occurred_at, e.wall_ms,
             e.source, e.ref, e.reason, attrs_json(e.attrs) if e.attrs else None, "applied", None, 0, now)
        )  # fmt: skip
    async with fresh_schema(url) as store_url:
        conns = [await asyncpg.connect(store_url) for _ in range(agents)]
        try:

            async def copy(conn: asyncpg.Connection, rows: list[tuple[object, ...]]) -> None:
                for i in range(0, len(rows), BATCH):
                    async with conn.transaction():
                        await conn.copy_records_to_table("events", records=rows[i : i + BATCH], columns=EVENT_COLUMNS)

            t0 = time.perf_counter()
            await asyncio.gather(*(copy(c, rows) for c, rows in zip(conns, by_agent.values(), strict=False)))
            elapsed = time.perf_counter() - t0
        finally:
            for c in conns:
                await c.close()
    return len(events) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL database the bench may create schemas in")
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--batches", type=int, default=25, help="1,000-event batches per agent")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for hubs in (1, 2):
        hub_rates, base_rates = [], []
        for run in range(args.runs):
            rate, events = asyncio.run(hub_ingest(args.url, hubs, args.agents, args.batches, seed=run))
            base = asyncio.run(plain_copy(args.url, events, args.agents))
            hub_rates.append(rate)
            base_rates.append(base)
            print(f"{hubs} hub(s), run {run + 1}: hub {rate:,.0f} events/s; plain COPY {base:,.0f} rows/s; "
                  f"ratio {rate / base:.2f}", flush=True)  # fmt: skip
        hub_rate, base_rate = median(hub_rates), median(base_rates)
        rows.append(
            {"hub processes": hubs, "agents": args.agents, "hub events/s": hub_rate, "plain COPY rows/s": base_rate,
             "ratio": hub_rate / base_rate}
        )  # fmt: skip
    write_result(
        "issue6_pg_ingest",
        title="Hub ingest over HTTP, PostgreSQL backend, 1 and 2 hub processes (issue 6)",
        command=f"python -m bench.bench_pg_ingest --agents {args.agents} --batches {args.batches} --runs {args.runs}",
        rows=rows,
        notes=(
            f"{args.agents} agents (one location each, {SKUS_PER_STORE} SKUs), {args.batches} batches of {BATCH:,} "
            "events each, sent concurrently over HTTP to `shelfsync-hub serve --db postgresql://…` processes on "
            "127.0.0.1 (agents spread round-robin over the hubs; bodies encoded before the clock starts). Each hub "
            "decodes, authenticates, locks the batch's keys, dedupes, resolves and commits the events, their ids, "
            "the stock rows, the change feed and the agent's mark in one transaction. Same workload as the SQLite "
            "bench (bench_ingest.py). The baseline COPYs the same rows into the same partitioned `events` table "
            f"(hub schema, all indexes) with `copy_records_to_table`, {BATCH:,} rows per transaction from "
            f"{args.agents} concurrent connections: no HTTP, no decoding, no dedupe, no resolution, no other table. "
            "PostgreSQL 15 with its default settings (fsync on, synchronous_commit on, shared_buffers 128 MB), on "
            f"the same machine as the hubs and the load generator. Median of {args.runs} runs, each on a fresh schema."
        ),
    )


if __name__ == "__main__":
    main()
