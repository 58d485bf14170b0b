"""Hub reads on PostgreSQL with 10,000,000 events in the ledger: p50/p99 latency of
one location's counts and one SKU's history, through the store API and over HTTP.

The ledger is loaded with COPY straight into the hub's schema (events, agent_locations),
with effects and count variances computed as the resolver would, the secondary
indexes built after the load, and one consistent stock row per (location, sku);
then the hub's own read paths are timed, one request at a time.

    python -m bench.bench_pg_reads [--url postgresql://…] [--events 10000000] [--locations 100] [--skus 5000]
                                   [--samples 300] [--keep | --reuse SCHEMA]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import urllib.request
import uuid
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg

from bench.bench_ingest import free_port
from bench.bench_pg_ingest import DEFAULT_URL, with_schema
from bench.common import percentile, write_result
from hub.storage import open_store
from protocol import pack_hlc, wall_ms_now

SPAN_MS = 30 * 24 * 3600 * 1000  # the ledger covers 30 days
COPY_CHUNK = 250_000
EVENT_COLUMNS = [
    "location", "event_id", "agent_id", "epoch", "seq", "sku", "kind", "qty", "occurred_at", "wall_ms", "source",
    "ref", "reason", "attrs", "effect", "variance", "duplicates", "received_at_ms",
]  # fmt: skip
# kind, weight, quantities drawn from
KINDS: list[tuple[str, int, list[int]]] = [
    ("sale", 70, [-1, -1, -1, -2, -3]),
    ("receive", 24, list(range(6, 25))),
    ("return", 3, [1]),
    ("adjust", 2, [-2, -1, 1, 2]),
    ("count", 1, list(range(41))),
]
COUNT = len(KINDS) - 1
SECONDARY_INDEX_MEMORY = "1GB"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Ledger:
    """The synthetic ledger, drawn once (compact arrays), then resolved in two passes."""

    def __init__(self, n: int, locations: int, skus: int, agents: list[str], seed: int) -> None:
        rng = random.Random(seed)
        self.n, self.skus = n, skus
        self.agents = agents
        self.loc = array("H", rng.choices(range(locations), k=n))
        self.sku = array("H", rng.choices(range(skus), k=n))
        self.kind = array("B", rng.choices(range(len(KINDS)), weights=[w for _, w, _ in KINDS], k=n))
        pick = [array("q", rng.choices(q, k=n)) if len(q) > 1 else None for _, _, q in KINDS]
        self.qty = array("q", (pick[k][i] if pick[k] is not None else KINDS[k][2][0] for i, k in enumerate(self.kind)))  # type: ignore[index]
        self.start_ms = wall_ms_now() - SPAN_MS
        self.step_ms = max(1, SPAN_MS // n)
        # pass 1: the last count of every key (events are drawn in time order)
        self.last_count = array("q", [-1]) * (locations * skus)
        for i, k in enumerate(self.kind):
            if k == COUNT:
                self.last_count[self.loc[i] * skus + self.sku[i]] = i

    def key(self, i: int) -> int:
        return self.loc[i] * self.skus + self.sku[i]

    def event_id(self, i: int) -> bytes:
        ms = self.start_ms + i * self.step_ms
        return ((ms << 80) | (0x7 << 76) | i).to_bytes(16, "big")

    async def records(
        self, locations: list[str], skus: list[str], stock: dict[int, list[Any]]
    ) -> AsyncIterator[tuple[Any, ...]]:
        """Pass 2: every event row in COPY order, with its effect and (counts) variance;
        fills ``stock`` with each key's final on_hand, last count and newest event."""
        seqs = [0] * len(self.agents)
        running = array("q", [0]) * len(self.last_count)
        now = wall_ms_now()
        for i in range(self.n):
            key, k, qty = self.key(i), self.kind[i], self.qty[i]
            li = self.loc[i]
            seqs[li] += 1
            ms = self.start_ms + i * self.step_ms
            at = pack_hlc(ms, 0)
            eid = self.event_id(i)
            order = (at, self.agents[li], seqs[li], eid)
            if k == COUNT:
                variance: int | None = qty - running[key]
                running[key] = qty
                effect = "applied"
                entry = stock.setdefault(key, [0, None, None])
                entry[1] = order
            else:
                variance = None
                running[key] += qty
                effect = "superseded" if i < self.last_count[key] else "applied"
                entry = stock.setdefault(key, [0, None, None])
            entry[0] = running[key]
            entry[2] = order
            yield (
                locations[li], eid, self.agents[li], 1, seqs[li], skus[self.sku[i]], KINDS[k][0], qty, at, ms,
                "pos:bench", None, None, None, effect, variance, 0, now,
            )  # fmt: skip
            if i % 1_000_000 == 999_999:
                log(f"  {i + 1:,} events written")
        self.seqs = seqs


async def load(url: str, n: int, n_locations: int, n_skus: int, seed: int) -> dict[str, Any]:
    """Create the hub schema (by opening a store) and fill it; return what the timings need."""
    locations = [f"STORE-{i + 1:03d}" for i in range(n_locations)]
    skus = [f"SKU-{i:05d}" for i in range(n_skus)]
    async with open_store(url) as store:
        agents = [(await store.add_agent([loc]))[0] for loc in locations]
        _, reader_token = await store.add_agent([], role="reader")
    log(f"drawing {n:,} events over {n_locations} locations x {n_skus} SKUs")
    ledger = Ledger(n, n_locations, n_skus, agents, seed)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"SET maintenance_work_mem = '{SECONDARY_INDEX_MEMORY}'")
        secondary = [
            (r["indexname"], r["indexdef"])
            for r in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                "AND tablename = 'events' AND indexname NOT LIKE '%pkey'"
            )
        ]
        for name, _ in secondary:
            await conn.execute(f'DROP INDEX "{name}"')
        log("loading events by COPY (secondary indexes dropped)")
        stock: dict[int, list[Any]] = {}
        t0 = time.perf_counter()
        records = ledger.records(locations, skus, stock)
        done = False
        while not done:
            chunk = []
            async for rec in records:
                chunk.append(rec)
                if len(chunk) >= COPY_CHUNK:
                    break
            else:
                done = True
            if chunk:
                await conn.copy_records_to_table("events", records=chunk, columns=EVENT_COLUMNS)
        log(f"events loaded in {time.perf_counter() - t0:.0f} s; building {len(secondary)} secondary indexes")
        t0 = time.perf_counter()
        for _, definition in secondary:  # a partitioned index reads "ON ONLY" (the parent alone): build them all
            await conn.execute(definition.replace(" ON ONLY ", " ON ", 1))
        invalid = await conn.fetchval(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND NOT i.indisvalid"
        )
        assert invalid == 0, f"{invalid} indexes were not rebuilt"
        log(f"indexes built in {time.perf_counter() - t0:.0f} s; writing {len(stock):,} stock rows")
        await conn.execute("INSERT INTO agent_locations (agent_id, location) SELECT DISTINCT agent_id, location FROM events")
        now = wall_ms_now()
        await conn.copy_records_to_table(
            "stock",
            records=[
                (locations[key // n_skus], skus[key % n_skus], on_hand, 0, 0, 0,
                 *(last or (None, None, None, None)), *newest, now)
                for key, (on_hand, last, newest) in stock.items()
            ],
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO agent_hwm (agent_id, epoch, hwm, updated_ms) VALUES ($1, 1, $2, $3)",
            [(agent, seq, now) for agent, seq in zip(agents, ledger.seqs, strict=True)],
        )
        log("VACUUM ANALYZE")
        for table in ("events", "agent_locations", "stock", "agent_hwm"):
            await conn.execute(f"VACUUM ANALYZE {table}")
        size = await conn.fetchval(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )
        log(f"loaded: {size} on disk")
    finally:
        await conn.close()
    return {"locations": locations, "skus": skus, "reader": reader_token, "size": size}


async def existing(url: str) -> dict[str, Any]:
    """What the timings need from a schema loaded before (``--reuse``)."""
    conn = await asyncpg.connect(url)
    try:
        locations = [r[0] for r in await conn.fetch("SELECT DISTINCT location FROM stock ORDER BY 1")]
        skus = [r[0] for r in await conn.fetch("SELECT DISTINCT sku FROM stock WHERE location = $1", locations[0])]
        size = await conn.fetchval(
            "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        )
    finally:
        await conn.close()
    async with open_store(url) as store:
        _, reader = await store.add_agent([], role="reader")
    return {"locations": locations, "skus": skus, "reader": reader, "size": size}


async def timed(samples: int, warmup: int, call: Callable[[], Awaitable[int]]) -> tuple[list[float], int]:
    """Latencies in ms of ``samples`` calls (after ``warmup`` untimed ones), and the rows of the last."""
    rows = 0
    for _ in range(warmup):
        await call()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        rows = await call()
        out.append((time.perf_counter() - t0) * 1000)
    return out, rows


# The hub's read budget per credential (read_bytes_per_s) off: these benches measure what reads cost, and one reader
# asking for pages of 10,000 counts in a loop is what the budget exists to slow down.
READ_BUDGET_OFF = {"SHELFSYNC_HUB_READ_BYTES_PER_S": "0"}


def run_hub(url: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "serve", "--db", url, "--port", str(port), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
        env={**os.environ, **READ_BUDGET_OFF},
    )
    for _ in range(400):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("hub did not start")


async def measure(url: str, data: dict[str, Any], samples: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    locations, skus = data["locations"], data["skus"]
    rows: list[dict[str, Any]] = []
    warmup = max(5, samples // 10)

    def add(path: str, what: str, latencies: list[float], n: int) -> None:
        rows.append({"read": what, "via": path, "rows (last read)": n, "p50 ms": percentile(latencies, 50),
                     "p99 ms": percentile(latencies, 99), "samples": len(latencies)})  # fmt: skip
        log(f"{path:9s} {what}: p50 {percentile(latencies, 50):.2f} ms, p99 {percentile(latencies, 99):.2f} ms")

    async with open_store(url) as store:

        async def location_counts() -> int:
            return len(await store.counts(location=rng.choice(locations), limit=10_000))

        async def sku_history() -> int:
            return len(await store.ledger(sku=rng.choice(skus), limit=100))

        async def key_history() -> int:
            return len(await store.ledger(location=rng.choice(locations), sku=rng.choice(skus), limit=100))

        async def sku_counts() -> int:
            return len(await store.counts(sku=rng.choice(skus), limit=10_000))

        async def exceptions() -> int:
            return len(await store.exceptions(location=rng.choice(locations), limit=100))

        for what, call in (
            ("one location's counts (all its SKUs)", location_counts),
            ("one SKU's history, every location (newest 100 events)", sku_history),
            ("one SKU's history at one location (newest 100 events)", key_history),
            ("one SKU's counts at every location", sku_counts),
            ("one location's exceptions", exceptions),
        ):
            add("store API", what, *await timed(samples, warmup, call))

    port = free_port()
    hub = run_hub(url, port)
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {data['reader']}"}
        async with aiohttp.ClientSession(headers=headers) as session:

            async def get(path: str, key: str) -> int:
                async with session.get(base + path) as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"{path}: {resp.status} {body}")
                    return len(body[key])

            async def http_location_counts() -> int:
                return await get(f"/v1/locations/{rng.choice(locations)}/counts?limit=10000", "counts")

            async def http_sku_history() -> int:
                return await get(f"/v1/ledger?sku={rng.choice(skus)}&limit=100", "events")

            async def http_key_history() -> int:
                return await get(
                    f"/v1/ledger?location={rng.choice(locations)}&sku={rng.choice(skus)}&limit=100", "events"
                )

            for what, call in (
                ("one location's counts (all its SKUs)", http_location_counts),
                ("one SKU's history, every location (newest 100 events)", http_sku_history),
                ("one SKU's history at one location (newest 100 events)", http_key_history),
            ):
                add("HTTP", what, *await timed(samples, warmup, call))
    finally:
        hub.terminate()
        hub.wait(timeout=60)
    return rows


async def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    admin = await asyncpg.connect(args.url)
    schema = args.reuse or f"bench_reads_{uuid.uuid4().hex[:8]}"
    url = with_schema(args.url, schema)
    try:
        if args.reuse:
            data = await existing(url)
        else:
            await admin.execute(f'CREATE SCHEMA "{schema}"')
            data = await load(url, args.events, args.locations, args.skus, args.seed)
        events = await admin.fetchval(f'SELECT count(*) FROM "{schema}".events')
        data["events"] = events
        return await measure(url, data, args.samples, args.seed), data, schema
    finally:
        if not args.keep and not args.reuse:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        elif not args.reuse:
            log(f"kept the loaded schema {schema}; time it again with --reuse {schema}")
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL database the bench may create a schema in")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--locations", type=int, default=100)
    parser.add_argument("--skus", type=int, default=5_000, help="SKUs per location")
    parser.add_argument("--samples", type=int, default=300, help="timed reads per measure")
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--keep", action="store_true", help="keep the loaded schema for --reuse")
    parser.add_argument("--reuse", metavar="SCHEMA", help="time a schema loaded by an earlier --keep run")
    args = parser.parse_args()
    rows, data, _ = asyncio.run(run(args))
    write_result(
        "issue6_pg_reads",
        title=f"Hub reads on PostgreSQL with {data['events']:,} events in the ledger (issue 6)",
        command=f"python -m bench.bench_pg_reads --events {args.events} --locations {args.locations} "
        f"--skus {args.skus} --samples {args.samples}",
        rows=rows,
        notes=(
            f"{data['events']:,} events over 30 days at {len(data['locations'])} locations x {len(data['skus']):,} "
            f"SKUs (uniformly drawn; ~1 % counts, so most deltas are superseded by a later count), loaded with COPY "
            f"into the hub's schema (16 hash partitions by location; {data['size']} with indexes), effects and "
            "variances as the resolver computes them, one stock row per (location, sku), then VACUUM ANALYZE. "
            "Reads one at a time, each for a random location/SKU, after warm-up reads (the data set fits the OS page "
            "cache, not PostgreSQL's 128 MB shared_buffers). 'store API' is PostgresHubStore.counts/ledger/exceptions "
            "in this process; 'HTTP' is a `shelfsync-hub serve` process on 127.0.0.1 answering GET "
            "/v1/locations/{location}/counts?limit=10000 and /v1/ledger?sku=…&limit=100 (JSON encoding included; "
            "the read budget per credential, read_bytes_per_s, off). "
            "PostgreSQL 15 with default settings on the same machine."
        ),
    )


if __name__ == "__main__":
    main()
