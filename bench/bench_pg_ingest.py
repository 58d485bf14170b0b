"""Hub ingest on PostgreSQL over HTTP: 8 concurrent agents, 1 and 2 hub processes on one database.

Two baselines, measured in the same run as the hubs, on the same rows:

* plain COPY (asyncpg ``copy_records_to_table``) of the batches' events into
  the same ledger table (the hub's schema: partitions and indexes), one
  transaction per 1,000 rows from 8 concurrent connections (issue 6; the
  ratio issue 16 asks ≥ 0.4 of for one hub), just before the hubs and again
  just after them, its rate the mean of the two;
* plain writes of every row the hubs wrote (read back from their schema, right after them): per
  batch its events and its share of the change feed's runs by COPY, the stock rows
  it touched and the agent's mark by upsert (and with an agent's first batch
  the row that says where it stores events) — the PostgreSQL
  counterpart of bench_ingest.py's executemany baseline. It shows how much of
  the gap is the rows a hub must write besides the ledger, and how much is
  the hub's own work (HTTP, decoding, dedupe, resolution, locks).

    python -m bench.bench_pg_ingest [--url postgresql://…] [--agents 8] [--batches 25] [--runs 3] [--hubs 1 2]

Each measurement gets a fresh schema in the database of ``--url`` (dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil

from bench.bench_ingest import BATCH, SKUS_PER_STORE, free_port, make_events
from bench.common import median, write_result
from hub.storage import open_store
from hub.storage.ingest import attrs_json
from hub.storage.sql import STOCK_FIELDS
from protocol import StockEvent, SyncRequest, encode_sync_request, wall_ms_now

DEFAULT_URL = "postgresql://shelfsync:shelfsync@127.0.0.1:5432/shelfsync_test"


def pg_port(url: str) -> int:
    """The TCP port of a PostgreSQL URL (5432 when it names none): the benches find the backends by it."""
    return urlsplit(url).port or 5432


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


PROFILE_ARGS: list[str] = []  # e.g. ["-m", "cProfile", "-o", "hub.prof"] to profile a hub process


def run_hub(url: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, *PROFILE_ARGS, "-m", "hub", "serve", "--db", url, "--port", str(port), "--log-level", "WARNING"],
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


def sync_bodies(plans: list[tuple[str, list[StockEvent]]]) -> list[tuple[str, list[bytes]]]:
    """Each agent's token and its events as encoded sync bodies of ``BATCH`` events (before any clock starts)."""
    out = []
    for token, evs in plans:
        batches = [tuple(evs[i : i + BATCH]) for i in range(0, len(evs), BATCH)]
        out.append((token, [encode_sync_request(SyncRequest(batch[0].agent_id, 1, batch)) for batch in batches]))
    return out


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


@dataclass(frozen=True, slots=True)
class Written:
    """Every row the hubs wrote, read back after the run, for the all-rows baseline."""

    events: list[tuple[object, ...]]  # EVENT_COLUMNS, by agent then seq
    locations: dict[str, list[tuple[object, ...]]]  # agent_id -> its agent_locations rows
    stock: dict[tuple[str, str], tuple[object, ...]]  # the table's columns, final values
    changes: list[tuple[object, ...]]  # RUN_FIELDS: the change feed's runs (schema 17), by last_id
    marks: dict[str, tuple[object, ...]]  # agent_id -> the agent_hwm row


RUN_FIELDS = [  # the change feed's runs (hub.storage.postgres.feed)
    "last_id", "first_id", "location", "skus", "on_hand", "reserved", "available", "in_transit", "event_ids",
    "id_ends", "at_ms",
]  # fmt: skip
WARM_UP = "WARMUP-"  # the locations of the warm-up agents, left out of every figure


async def warm_up(store_url: str, ports: list[int], seed: int) -> int:
    """One batch to each hub, from an agent of its own, before the clock starts: the hub starts its decoding
    worker and opens pool connections, as the baselines open theirs before their clocks start. Returns the
    events sent."""
    rng = random.Random(seed + 1_000)
    sends = []
    async with open_store(store_url) as store:
        for i, port in enumerate(ports):
            location = f"{WARM_UP}{i + 1:03d}"
            agent_id, token = await store.add_agent([location])
            body = encode_sync_request(SyncRequest(agent_id, 1, tuple(make_events(agent_id, location, BATCH, rng))))
            sends.append(post_all(f"http://127.0.0.1:{port}", token, [body]))
    await asyncio.gather(*sends)
    return len(ports) * BATCH


async def read_written(conn: asyncpg.Connection) -> Written:
    """Every row the hubs wrote for the measured agents (not the warm-up's)."""
    mine = f"location NOT LIKE '{WARM_UP}%'"
    events = [
        tuple(r)
        for r in await conn.fetch(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE {mine} ORDER BY agent_id, seq")
    ]
    located: dict[str, list[tuple[object, ...]]] = {}
    for r in await conn.fetch(f"SELECT agent_id, location FROM agent_locations WHERE {mine}"):
        located.setdefault(r[0], []).append(tuple(r))
    stock = {(r[0], r[1]): tuple(r) for r in await conn.fetch(f"SELECT * FROM stock WHERE {mine}")}
    changes = [
        tuple(r)
        for r in await conn.fetch(f"SELECT {', '.join(RUN_FIELDS)} FROM change_runs WHERE {mine} ORDER BY last_id")
    ]
    agents = {row[EVENT_COLUMNS.index("agent_id")] for row in events}
    marks = {
        r[0]: tuple(r)
        for r in await conn.fetch("SELECT agent_id, epoch, hwm, updated_ms, chain FROM agent_hwm")
        if r[0] in agents
    }
    return Written(events, located, stock, changes, marks)


async def hub_ingest(
    url: str,
    hubs: int,
    agents: int,
    batches: int,
    seed: int,
    before: Callable[[list[StockEvent]], Awaitable[object]] | None = None,
) -> tuple[float, list[StockEvent], Written]:
    """The hubs' rate, their events and what they wrote; ``before(events)`` runs once the events are made,
    before any hub starts (the COPY baseline's first half: see ``main``)."""
    async with fresh_schema(url) as store_url:
        plans = await workload(store_url, agents, batches, seed)
        if before is not None:
            await before([ev for _, evs in plans for ev in evs])
        bodies = sync_bodies(plans)
        ports = [free_port() for _ in range(hubs)]
        procs = [run_hub(store_url, port) for port in ports]
        try:
            await warm_up(store_url, ports, seed)
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
            written = await read_written(conn)
        finally:
            await conn.close()
    total = agents * batches * BATCH
    assert len(written.events) == total, f"the hubs stored {len(written.events)} of {total} events"
    return total / elapsed, [ev for _, evs in plans for ev in evs], written


def backends_cpu_s(conns: list[asyncpg.Connection]) -> float:
    """CPU-seconds the PostgreSQL backends of ``conns`` have used so far (/proc, through psutil)."""
    total = 0.0
    for conn in conns:
        times = psutil.Process(conn.get_server_pid()).cpu_times()
        total += times.user + times.system
    return total


async def plain_copy(url: str, events: list[StockEvent], agents: int) -> tuple[float, float]:
    """The same rows into the same (empty) ledger table by COPY, 1,000 per transaction, one connection per agent:
    rows/s, and the CPU-seconds per 1,000 rows of the PostgreSQL backends that wrote them."""
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

            cpu0 = backends_cpu_s(conns)
            t0 = time.perf_counter()
            await asyncio.gather(*(copy(c, rows) for c, rows in zip(conns, by_agent.values(), strict=False)))
            elapsed = time.perf_counter() - t0
            cpu = backends_cpu_s(conns) - cpu0
        finally:
            for c in conns:
                await c.close()
    return len(events) / elapsed, cpu / (len(events) / 1000)


async def plain_writes(url: str, written: Written, agents: int) -> tuple[float, float]:
    """Every row the hubs wrote, into the same (empty) tables, one transaction per 1,000-event batch from one
    connection per agent: the batch's events and its share of the change feed's runs by COPY, the stock rows of the
    keys it touched and the agent's mark by upsert (``INSERT … ON CONFLICT``, the rows as one array of the
    table's row type), and with an agent's first batch its ``agent_locations`` row. No HTTP, no decoding, no
    dedupe, no resolution, no locks."""
    ix = {c: i for i, c in enumerate(EVENT_COLUMNS)}
    per_agent: dict[str, list[tuple[object, ...]]] = {}
    for row in written.events:
        per_agent.setdefault(str(row[ix["agent_id"]]), []).append(row)
    n_batches = sum(-(-len(rows) // BATCH) for rows in per_agent.values())
    share = -(-len(written.changes) // n_batches)
    plans: list[list[dict[str, list[tuple[object, ...]]]]] = []
    number = 0
    for agent_id, rows in per_agent.items():
        plan = []
        for i in range(0, len(rows), BATCH):
            part = rows[i : i + BATCH]
            keys = {(str(r[ix["location"]]), str(r[ix["sku"]])) for r in part}
            plan.append({
                "events": part,
                "locations": written.locations.get(agent_id, []) if i == 0 else [],  # with its first events
                "changes": written.changes[number * share : (number + 1) * share],
                "stock": [written.stock[k] for k in sorted(keys) if k in written.stock],
                "mark": [written.marks[agent_id]],
            })  # fmt: skip
            number += 1
        plans.append(plan)
    stock_columns = ", ".join(f"{c} = excluded.{c}" for c in STOCK_FIELDS.split(", ")[2:])
    async with fresh_schema(url) as store_url:
        conns = [await asyncpg.connect(store_url) for _ in plans]
        try:

            async def write(conn: asyncpg.Connection, plan: list[dict[str, list[tuple[object, ...]]]]) -> None:
                for batch in plan:
                    async with conn.transaction():
                        await conn.copy_records_to_table("events", records=batch["events"], columns=EVENT_COLUMNS)
                        if batch["locations"]:
                            await conn.executemany(
                                "INSERT INTO agent_locations (agent_id, location) VALUES ($1, $2)", batch["locations"]
                            )
                        if batch["changes"]:
                            await conn.copy_records_to_table(
                                "change_runs", records=batch["changes"], columns=RUN_FIELDS
                            )
                        await conn.execute(
                            f"INSERT INTO stock SELECT * FROM unnest($1::stock[]) "
                            f"ON CONFLICT (location, sku) DO UPDATE SET {stock_columns}",
                            batch["stock"],
                        )
                        await conn.executemany(
                            "INSERT INTO agent_hwm (agent_id, epoch, hwm, updated_ms, chain) "
                            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agent_id, epoch) DO UPDATE SET "
                            "hwm = excluded.hwm, updated_ms = excluded.updated_ms, chain = excluded.chain",
                            batch["mark"],
                        )

            cpu0 = backends_cpu_s(conns)
            t0 = time.perf_counter()
            await asyncio.gather(*(write(c, plan) for c, plan in zip(conns, plans, strict=True)))
            elapsed = time.perf_counter() - t0
            cpu = backends_cpu_s(conns) - cpu0
        finally:
            for c in conns:
                await c.close()
    return len(written.events) / elapsed, cpu / (len(written.events) / 1000)


def figures(
    hubs: int,
    hub_rates: list[float],
    copy_rates: list[float],
    all_rates: list[float],
    copy_cpu: list[float],
    all_cpu: list[float],
) -> list[dict[str, object]]:
    """The rows of one hub count: each figure beside its baseline from the same runs (medians)."""
    name = f"{hubs} hub{'s' if hubs > 1 else ''}"
    return [
        {"measure": f"{name}: events/s against COPY of the ledger rows", "hub over HTTP": median(hub_rates),
         "COPY of the ledger rows, rows/s": median(copy_rates),
         "ratio": median([h / c for h, c in zip(hub_rates, copy_rates, strict=True)]),
         "target": "≥ 0.4" if hubs == 1 else ""},
        {"measure": f"{name}: events/s against plain writes of every row the hubs wrote",
         "hub over HTTP": median(hub_rates), "plain writes of every row, events/s": median(all_rates),
         "ratio": median([h / a for h, a in zip(hub_rates, all_rates, strict=True)])},
        {"measure": f"{name}: PostgreSQL CPU-s per 1,000 events of the baselines (COPY / every row)",
         "value": f"{median(copy_cpu):.4f} / {median(all_cpu):.4f}"},
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL database the bench may create schemas in")
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--batches", type=int, default=25, help="1,000-event batches per agent")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hubs", type=int, nargs="+", default=[1, 2], help="hub processes, one measurement each")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    per_run: list[str] = []
    for hubs in args.hubs:
        hub_rates, copy_rates, all_rates, copy_cpu, all_cpu = [], [], [], [], []
        bracket: list[str] = []  # each run's COPY rates before and after the hubs
        for run in range(args.runs):
            # The COPY baseline brackets the hubs: once just before them, once just after, the same rows each time;
            # its rate is the mean of the two, so a drift of the shared machine's speed during a run weighs on
            # both sides of the ratio alike.
            copies: list[tuple[float, float]] = []

            async def copy_before(events: list[StockEvent], copies: list[tuple[float, float]] = copies) -> None:
                copies.append(await plain_copy(args.url, events, args.agents))

            rate, events, written = asyncio.run(
                hub_ingest(args.url, hubs, args.agents, args.batches, seed=run, before=copy_before)
            )
            copies.append(asyncio.run(plain_copy(args.url, events, args.agents)))
            copy, copy_k = statistics.mean(c[0] for c in copies), statistics.mean(c[1] for c in copies)
            bracket.append(f"{copies[0][0] / 1000:.0f}k/{copies[1][0] / 1000:.0f}k")
            every, every_k = asyncio.run(plain_writes(args.url, written, args.agents))
            hub_rates.append(rate)
            copy_rates.append(copy)
            all_rates.append(every)
            copy_cpu.append(copy_k)
            all_cpu.append(every_k)
            print(f"{hubs} hub(s), run {run + 1}: hub {rate:,.0f} events/s; plain COPY of the ledger rows {copy:,.0f} "
                  f"rows/s ({bracket[-1]} before/after; ratio {rate / copy:.2f}, PostgreSQL {copy_k:.4f} CPU-s/1k); "
                  "plain writes of every row "
                  f"{every:,.0f} events/s (ratio {rate / every:.2f}, PostgreSQL {every_k:.4f} CPU-s/1k); "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        ratios = [h / c for h, c in zip(hub_rates, copy_rates, strict=True)]
        all_ratios = [h / a for h, a in zip(hub_rates, all_rates, strict=True)]
        rows += figures(hubs, hub_rates, copy_rates, all_rates, copy_cpu, all_cpu)
        per_run.append(
            f"{hubs} hub(s): {' '.join(f'{r:.2f}' for r in ratios)} to the COPY (its rows/s before/after the hubs: "
            f"{' '.join(bracket)}), {' '.join(f'{r:.2f}' for r in all_ratios)} to every row"
        )
    write_result(
        "issue6_pg_ingest",
        title="Hub ingest over HTTP, PostgreSQL backend, against COPY of the same rows (issues 6, 16)",
        command=f"python -m bench.bench_pg_ingest --agents {args.agents} --batches {args.batches} --runs {args.runs} "
        f"--hubs {' '.join(map(str, args.hubs))}",
        rows=rows,
        notes=(
            f"{args.agents} agents (one location each, {SKUS_PER_STORE} SKUs), {args.batches} batches of {BATCH:,} "
            "events each, sent concurrently over HTTP to `shelfsync-hub serve --db postgresql://…` processes on "
            "127.0.0.1 (agents spread round-robin over the hubs; bodies encoded before the clock starts; each hub "
            "first takes one batch of an agent of its own, so its pool connections are up, as "
            "the baselines' connections are, before the clock starts). Agents send their events as columns (the "
            "form agents send; a 1,000-event body is ~69 KB, decoded in place). Each hub "
            "decodes, authenticates, locks the batch's keys, dedupes, resolves and commits the events, "
            "the stock rows, the change feed and the agent's mark in one transaction. Same workload as the SQLite "
            "bench (bench_ingest.py). Baseline of the first row of each hub count: COPY of the same events into "
            "the same partitioned `events` table (hub schema, all indexes) with `copy_records_to_table`, "
            "measured just before the hubs start and again just after they stop (each time into a fresh schema), "
            "its rate the mean of the two, "
            f"{BATCH:,} rows per transaction from {args.agents} concurrent connections: no HTTP, no decoding, no "
            "dedupe, no resolution, no other "
            "table. Baseline of the second row: every row the hubs wrote, read back from their schema, "
            "written per batch in one transaction — events, event ids and the batch's share of the change feed's runs "
            "by COPY, "
            "its stock rows and the agent's mark by upsert. PostgreSQL 15 with its default settings (fsync on, "
            "synchronous_commit on, shared_buffers 128 MB), on the same machine as the hubs and the load generator. "
            f"Median of {args.runs} runs, each on a fresh schema; in a run the COPY, the hubs, the COPY again and "
            "the plain writes follow each other; "
            f"ratios per run: {'; '.join(per_run)}. "
            "PostgreSQL CPU-s/1k: /proc of the baselines' backends while they wrote; the hubs' (and their "
            "backends') CPU per 1,000 events: bench_pg_scaling.py."
        ),
    )


if __name__ == "__main__":
    main()
