"""Upgrading a hub of schema 19 in place, on SQLite and on PostgreSQL: the time of each step to the current
schema and the peak memory, on a ledger of realistic size.

Step 20 rebuilds the transfers from the transfer events the ledger stores (about 1 % of its events) and sums
each location's in transit again; step 24 (SQLite) indexes every event by location; step 25 reads the ledger's
adjusts carrying a ref (book-outs, about 5 % of the adjusts here), finds the receipts back at a shipper (1 % of
the transfers' SKU lines are received back), sums in transit again and appends a change row for every transfer
destination's stock row; step 26 drops the transfer rows adjusts alone made and indexes the adjusts carrying a
ref and the book-outs naming no transfer; step 28 words the book-out reason of the events stored before as the hub
does (a statement over every event) and makes the indexes of transfers with a finding again; step 29 words the
spellings step 28 missed (a statement over every event, on SQLite calling Python for the few it cannot tell by
LIKE). Each of these steps is reported on its own; the others are small. An operator
upgrading a hub waits for all of it before the hub serves, so this is what they wait for.

The schema-19 database is built once per size (migrations 1…19 applied as a hub of that version did, then the
ledger loaded in bulk: sales with their POS receipt refs, receipts, returns, adjusts, counts, and transfers
shipped between the stores, most of them received, some in part, some not yet), then copied for each run (SQLite:
the file; PostgreSQL: ``CREATE DATABASE … TEMPLATE``), and each run upgrades its copy by opening it with
``hub.open_store`` in a process of its own, as ``shelfsync-hub serve`` does.

Memory: the upgrading process's peak RSS above its RSS before the open (VmHWM; the SQLite hub migrates in
it), and on PostgreSQL the peak private memory (RssAnon) of the server backends working for the upgrade
(parallel workers too, sampled every 0.1 s) and the bytes the server spilled to temporary files.

    python -m bench.bench_upgrade [--backends sqlite postgres] [--events 2000000] [--runs 3] [--url postgresql://…]
                                  [--dir /tmp/shelfsync-bench-upgrade] [--keep] [--reuse]
                                  [--name upgrade_025] [--label "after"]

The PostgreSQL role of ``--url`` needs CREATEDB: each run's database is made and dropped beside the template.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.bench_pg_ingest import DEFAULT_URL
from bench.common import median, write_result
from protocol import pack_hlc

OLD = 19  # the schema the upgrade starts from
SPAN_MS = 180 * 24 * 3600 * 1000  # the ledger covers half a year
CHUNK = 100_000
EVENT_COLUMNS = (
    "event_id", "agent_id", "epoch", "seq", "location", "sku", "kind", "qty", "occurred_at", "wall_ms", "source",
    "ref", "reason", "attrs", "effect", "variance", "duplicates", "received_at_ms",
)  # fmt: skip
STOCK_COLUMNS = (
    "location", "sku", "on_hand", "reserved", "in_transit", "safety_stock", "last_count_at", "last_count_agent",
    "last_count_seq", "last_count_id", "max_at", "max_agent", "max_seq", "max_id", "updated_at_ms",
)  # fmt: skip
OLD_TRANSFER_COLUMNS = (
    "ref", "sku", "shipped", "received", "out_from", "out_to", "in_to", "in_from", "shipped_at_ms", "closed_at",
    "updated_at_ms",
)  # fmt: skip
# kind, weight, quantities drawn from; a sale carries its POS receipt number, a receipt its purchase order
KINDS: list[tuple[str, int, list[int]]] = [
    ("sale", 70, [-1, -1, -1, -2, -3]),
    ("receive", 24, list(range(6, 25))),
    ("return", 3, [1]),
    ("adjust", 2, [-2, -1, 1, 2]),
    ("count", 1, list(range(41))),
]
TRANSFER_SHARE = 0.01  # of the events, transfer_out and transfer_in
# about 5 % of the adjusts (qty_pick 0 or 1) carry a transfer's ref: a store booking out what it received by mistake
RETURN_SHARE = 0.01  # of the transfers' SKU lines, cancelled before they left: received back at the shipper
SAMPLE_S = 0.1
STEPS = (20, 23, 24, 25, 26, 28, 29)  # reported one by one: 20, 25, 28, 29 read the whole ledger, 24, 26 index it
# The reasons of the book-outs (the adjusts carrying a transfer's ref): two in ten spelled as a POS export or a
# person did, so steps 28 and 29 reword some (29 those with a no-break space, which 28 did not fold on SQLite).
# Every other adjust says "damaged".
BOOK_OUT_SPELLINGS = ("received by mistake, sent on",) * 8 + (
    "Received by mistake,  sent on",
    "Received by mistake,\u00a0sent on",
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Ledger:
    """The synthetic schema-19 ledger: regular movements drawn into compact arrays, transfers as a short list
    merged into them in time order; rows for events, stock and the old transfers table (keyed by ref, sku)."""

    def __init__(self, n: int, locations: int, skus: int, seed: int) -> None:
        rng = random.Random(seed)
        self.locations = [f"STORE-{i + 1:03d}" for i in range(locations)]
        self.skus = [f"SKU-{i:05d}" for i in range(skus)]
        self.agents = [f"agent-{loc.lower()}" for loc in self.locations]
        self.start_ms = 1_760_000_000_000
        self.step_ms = max(1, SPAN_MS // n)
        self.transfers = self._transfers(rng, int(n * TRANSFER_SHARE), n)
        regular = n - len(self.transfers)
        self.n = n
        self.loc = array("H", rng.choices(range(locations), k=regular))
        self.sku = array("H", rng.choices(range(skus), k=regular))
        self.kind = array("B", rng.choices(range(len(KINDS)), weights=[w for _, w, _ in KINDS], k=regular))
        self.qty_pick = array("B", rng.choices(range(41), k=regular))

    def _transfers(self, rng: random.Random, events: int, n: int) -> list[tuple[float, int, int, str, int, str]]:
        """(position, location, sku, kind, qty, ref, attrs) of every transfer event. Each store numbers its own
        transfers (T-1, T-2, …: stores that number alike share refs); a document ships 1–3 SKUs to another store;
        90 % are received (80 % of those with a final receipt, a tenth of them short), the rest still in transit
        or, one in ten of them, received back at the shipper (cancelled before it left)."""
        out: list[Any] = []
        numbers = [0] * len(self.locations)
        while len(out) < events:
            src = rng.randrange(len(self.locations))
            dest = rng.randrange(len(self.locations) - 1)
            dest += dest >= src
            numbers[src] += 1
            ref = f"T-{numbers[src]}"
            at = rng.uniform(0, n * 0.98)
            for sku in rng.sample(range(len(self.skus)), rng.choice((1, 1, 2, 3))):
                qty = rng.randint(1, 24)
                out.append((at, src, sku, "transfer_out", -qty, ref, {"to": self.locations[dest]}))
                if rng.random() < 0.9:
                    final = rng.random() < 0.8
                    got = qty - 1 if final and qty > 1 and rng.random() < 0.1 else qty
                    attrs = {"from": self.locations[src], **({"final": True} if final else {})}
                    later = min(n - 1.0, at + rng.uniform(1, n * 0.02))
                    out.append((later, dest, sku, "transfer_in", got, ref, attrs))
                elif rng.random() < RETURN_SHARE / 0.1:
                    later = min(n - 1.0, at + rng.uniform(1, n * 0.02))
                    back = {"from": self.locations[dest], "final": True}
                    out.append((later, src, sku, "transfer_in", qty, ref, back))
        out.sort(key=lambda t: t[0])
        return out

    def events(self, stock: dict[tuple[int, int], list[Any]]) -> Iterator[tuple[Any, ...]]:
        """Every event row in time order; fills ``stock`` with each key's on_hand and newest event."""
        seqs = [0] * len(self.locations)
        received = self.start_ms + SPAN_MS + 60_000
        t = 0
        regular = iter(range(len(self.loc)))
        for i in range(self.n):
            if t < len(self.transfers) and self.transfers[t][0] <= i:
                _, li, si, kind, qty, ref, attrs_d = self.transfers[t]
                t += 1
                attrs: str | None = json.dumps(attrs_d, separators=(",", ":"))
                reason: str | None = None
            else:
                r = next(regular, None)
                if r is None:
                    _, li, si, kind, qty, ref, attrs_d = self.transfers[t]
                    t += 1
                    attrs, reason = json.dumps(attrs_d, separators=(",", ":")), None
                else:
                    li, si, k = self.loc[r], self.sku[r], self.kind[r]
                    choices = KINDS[k][2]
                    kind, qty = KINDS[k][0], choices[self.qty_pick[r] % len(choices)]
                    ref = f"R-{li}-{r}" if kind == "sale" else (f"PO-{li}-{r // 5000}" if kind == "receive" else None)
                    if kind == "adjust" and self.qty_pick[r] < 2:  # -2 or -1: a book-out
                        ref = f"T-{r % 400 + 1}"
                    reason = (BOOK_OUT_SPELLINGS[r % len(BOOK_OUT_SPELLINGS)] if ref else "damaged") \
                        if kind == "adjust" else None  # fmt: skip
                    attrs = None
            seqs[li] += 1
            ms = self.start_ms + i * self.step_ms
            at = pack_hlc(ms, 0)
            eid = ((ms << 80) | (0x7 << 76) | i).to_bytes(16, "big")
            entry = stock.setdefault((li, si), [0, None])
            entry[0] = qty if kind == "count" else entry[0] + qty
            entry[1] = (at, self.agents[li], seqs[li], eid)
            yield (
                eid, self.agents[li], 1, seqs[li], self.locations[li], self.skus[si], kind, qty, at, ms, "pos:bench",
                ref, reason, attrs, "applied", None, 0, received,
            )  # fmt: skip

    def stock_rows(self, stock: dict[tuple[int, int], list[Any]]) -> list[tuple[Any, ...]]:
        """One stock row per key, its in transit what the transfers keyed by destination leave open."""
        in_transit: dict[tuple[int, int], int] = {}
        for (dest, _ref, sku), (shipped, received, closed) in self._by_destination().items():
            if not closed and shipped > received:
                in_transit[(dest, sku)] = in_transit.get((dest, sku), 0) + shipped - received
                stock.setdefault((dest, sku), [0, None])
        received = self.start_ms + SPAN_MS + 60_000
        return [
            (self.locations[li], self.skus[si], on_hand, 0, in_transit.get((li, si), 0), 0, None, None, None, None,
             *(newest or (None, None, None, None)), received)
            for (li, si), (on_hand, newest) in stock.items()
        ]  # fmt: skip

    def _by_destination(self) -> dict[tuple[int, str, int], list[Any]]:
        found: dict[tuple[int, str, int], list[Any]] = {}
        for _, li, si, kind, qty, ref, attrs in self.transfers:
            dest = self.locations.index(attrs["to"]) if kind == "transfer_out" else li
            entry = found.setdefault((dest, ref, si), [0, 0, False])
            if kind == "transfer_out":
                entry[0] -= qty
            else:
                entry[1] += qty
                entry[2] = entry[2] or bool(attrs.get("final"))
        return found

    def old_transfer_rows(self) -> list[tuple[Any, ...]]:
        """The schema-19 transfers table: one row per (ref, sku), as the old key merged them."""
        rows: dict[tuple[str, int], list[Any]] = {}
        for pos, li, si, kind, qty, ref, attrs in self.transfers:
            ms = self.start_ms + int(pos) * self.step_ms
            r = rows.setdefault((ref, si), [0, 0, None, None, None, None, None, None])
            if kind == "transfer_out":
                r[0] -= qty
                r[2] = r[2] or self.locations[li]
                r[3] = r[3] or attrs["to"]
                r[6] = r[6] or ms
            else:
                r[1] += qty
                r[4] = r[4] or self.locations[li]
                r[5] = r[5] or attrs["from"]
                if attrs.get("final") and r[7] is None:
                    r[7] = pack_hlc(ms, 0)
        received = self.start_ms + SPAN_MS + 60_000
        return [(ref, self.skus[si], *r, received) for (ref, si), r in rows.items()]


# --- building the schema-19 databases ------------------------------------------------------------------------------


def build_sqlite(path: Path, ledger: Ledger) -> None:
    from hub.storage.sqlite.schema import MIGRATIONS

    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for step in range(1, OLD + 1):
            conn.executescript(f"BEGIN;\n{MIGRATIONS[step].read()}\nPRAGMA user_version = {step};\nCOMMIT;")
        conn.execute("PRAGMA cache_size = -1000000")
        secondary = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL"
        ).fetchall()
        conn.execute("BEGIN")
        for name, _ in secondary:
            conn.execute(f'DROP INDEX "{name}"')
        stock: dict[tuple[int, int], list[Any]] = {}
        marks = ", ".join("?" * len(EVENT_COLUMNS))
        insert = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({marks})"
        rows = ledger.events(stock)
        while chunk := [row for _, row in zip(range(CHUNK), rows, strict=False)]:
            conn.executemany(insert, chunk)
        log(f"  events inserted; building {len(secondary)} secondary indexes")
        for _, sql in secondary:
            conn.execute(sql)
        for table, columns, values in (
            ("stock", STOCK_COLUMNS, ledger.stock_rows(stock)),
            ("transfers", OLD_TRANSFER_COLUMNS, ledger.old_transfer_rows()),
        ):
            conn.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", values
            )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def database_url(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def database_exists(url: str, name: str) -> bool:
    admin = await asyncpg.connect(url)
    try:
        return bool(await admin.fetchval("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name))
    finally:
        await admin.close()


async def build_postgres(url: str, template: str, ledger: Ledger) -> None:
    from hub.storage.postgres.schema import MIGRATIONS

    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{template}"')
        await admin.execute(f'CREATE DATABASE "{template}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(database_url(url, template))
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied_ms bigint NOT NULL)")
        for step in range(1, OLD + 1):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[step].read())
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", step)
        await conn.execute("SET maintenance_work_mem = '512MB'")
        secondary = [
            (r["indexname"], r["indexdef"])
            for r in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                "AND tablename = 'events' AND indexname NOT LIKE '%pkey'"
            )
        ]
        for name, _ in secondary:
            await conn.execute(f'DROP INDEX "{name}"')
        stock: dict[tuple[int, int], list[Any]] = {}
        rows = ledger.events(stock)
        while chunk := [row for _, row in zip(range(CHUNK), rows, strict=False)]:
            await conn.copy_records_to_table("events", records=chunk, columns=list(EVENT_COLUMNS))
        log(f"  events copied; building {len(secondary)} secondary indexes")
        for _, definition in secondary:
            await conn.execute(definition.replace(" ON ONLY ", " ON ", 1))
        await conn.copy_records_to_table("stock", records=ledger.stock_rows(stock), columns=list(STOCK_COLUMNS))
        await conn.copy_records_to_table(
            "transfers", records=ledger.old_transfer_rows(), columns=list(OLD_TRANSFER_COLUMNS)
        )
        for table in ("events", "stock", "transfers"):
            await conn.execute(f"VACUUM ANALYZE {table}")  # as autovacuum leaves a hub's tables
    finally:
        await conn.close()


# --- one upgrade, in a process of its own ----------------------------------------------------------------------------


class _Steps(logging.Handler):
    """The step lines the migration logs: "Migrated … to schema version N (name) in S s."."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.steps: list[dict[str, Any]] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if record.msg.startswith("Migrated the hub database"):
            _, step, name, took = record.args  # type: ignore[misc]
            self.steps.append({"step": step, "name": name, "s": round(float(took), 2)})


def _status_kib(field: str) -> int:
    """A figure of this process's /proc status: VmRSS now, VmHWM its peak (this program's own: ru_maxrss would
    carry the parent's peak over the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def upgrade_one(target: str) -> None:
    """Open ``target`` (a path or a URL) with the hub's own open, which migrates it; print what it took."""
    from hub import open_store

    steps = _Steps()
    logger = logging.getLogger("hub")
    logger.addHandler(steps)
    logger.setLevel(logging.DEBUG)
    before_kib = _status_kib("VmRSS")

    async def run() -> float:
        t0 = time.perf_counter()
        async with open_store(target):
            took = time.perf_counter() - t0
        return took

    took = asyncio.run(run())
    peak_kib = _status_kib("VmHWM")
    print(json.dumps({"s": took, "steps": steps.steps, "rss_before_kib": before_kib, "rss_peak_kib": peak_kib,
                      "lines": steps.lines}))  # fmt: skip


def _child(target: str, pg_database: str | None, url: str) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_upgrade", "--upgrade-one", target], stdout=subprocess.PIPE, text=True
    )
    sampler = _BackendMemory(url, pg_database) if pg_database else None
    if sampler:
        sampler.start()
    out, _ = proc.communicate()
    if sampler:
        sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"the upgrade of {target} failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if sampler:
        result["backend_peak_kib"] = sampler.peak_kib
    return result


class _BackendMemory:
    """The peak summed private memory (RssAnon) of the server processes connected to ``database``."""

    def __init__(self, url: str, database: str) -> None:
        self.url, self.database = url, database
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            while not self._stop.is_set():
                pids = [
                    r[0] for r in await conn.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                        self.database,
                    )
                ]  # fmt: skip
                total = 0
                for pid in pids:
                    try:
                        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                            if line.startswith("RssAnon:"):
                                total += int(line.split()[1])
                    except OSError:
                        pass
                self.peak_kib = max(self.peak_kib, total)
                await asyncio.sleep(SAMPLE_S)
        finally:
            await conn.close()


# --- the runs --------------------------------------------------------------------------------------------------------


def run_sqlite(template: Path, runs: int) -> list[dict[str, Any]]:
    results = []
    for run in range(runs):
        copy = template.with_name(f"run-{run}.db")
        for suffix in ("", "-wal", "-shm", ".feed-home"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(template, copy)
        os.sync()
        result = _child(str(copy), None, "")
        log(f"  sqlite run {run + 1}: {result['s']:.1f} s, steps {result['steps']}")
        results.append(result)
        for suffix in ("", "-wal", "-shm", ".feed-home"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)
    return results


async def run_postgres(url: str, template: str, runs: int) -> list[dict[str, Any]]:
    results = []
    for run in range(runs):
        name = f"{template}_run"
        admin = await asyncpg.connect(url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
            temp_before = await admin.fetchval("SELECT temp_bytes FROM pg_stat_database WHERE datname = $1", name)
        finally:
            await admin.close()
        try:
            result = await asyncio.to_thread(_child, database_url(url, name), name, url)
            admin = await asyncpg.connect(url)
            try:
                await asyncio.sleep(0.6)  # the statistics collector's flush
                temp = await admin.fetchval("SELECT temp_bytes FROM pg_stat_database WHERE datname = $1", name)
            finally:
                await admin.close()
            result["temp_bytes"] = int(temp or 0) - int(temp_before or 0)
        finally:
            admin = await asyncpg.connect(url)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            finally:
                await admin.close()
        log(f"  postgres run {run + 1}: {result['s']:.1f} s, steps {result['steps']}")
        results.append(result)
    return results


def summary(backend: str, n: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    def step_s(step: int) -> float:
        return median([next((s["s"] for s in r["steps"] if s["step"] == step), 0.0) for r in results])

    new = max(s["step"] for r in results for s in r["steps"])
    row: dict[str, Any] = {
        "measure": f"{backend}, {n:,} events",
        f"upgrade {OLD}→{new}, median (s)": round(median([r["s"] for r in results]), 2),
        **{f"step {step} (s)": step_s(step) for step in STEPS},
        "runs (s)": " / ".join(f"{r['s']:.1f}" for r in results),
        "hub process peak RSS above its start (MiB)": round(
            median([(r["rss_peak_kib"] - r["rss_before_kib"]) / 1024 for r in results]), 1
        ),
    }
    if backend == "postgres":
        row["server backends' peak RssAnon (MiB)"] = round(median([r["backend_peak_kib"] / 1024 for r in results]), 1)
        row["server temp files (MiB)"] = round(median([r["temp_bytes"] / 2**20 for r in results]), 1)
    return row


async def main_async(args: argparse.Namespace) -> None:
    rows: list[dict[str, Any]] = []
    drawn: dict[int, Ledger] = {}

    def ledger(n: int) -> Ledger:
        if n not in drawn:
            log(f"drawing a schema-{OLD} ledger of {n:,} events ({TRANSFER_SHARE:.0%} transfers)")
            drawn[n] = Ledger(n, args.locations, args.skus, args.seed)
            log(f"  {len(drawn[n].transfers):,} transfer events")
        return drawn[n]

    for n in args.events:
        if "sqlite" in args.backends:
            folder = Path(args.dir)
            folder.mkdir(parents=True, exist_ok=True)
            template = folder / f"hub19-{n}.db"
            if not (args.reuse and template.exists()):
                t0 = time.perf_counter()
                build_sqlite(template, ledger(n))
                log(
                    f"  sqlite schema {OLD} built in {time.perf_counter() - t0:.0f} s: {template.stat().st_size >> 20} MiB"
                )
            try:
                rows.append(summary("sqlite", n, run_sqlite(template, args.runs)))
            finally:
                if not args.keep:
                    template.unlink(missing_ok=True)
        if "postgres" in args.backends:
            name = f"shelfsync_bench_upgrade_{n}"
            if not (args.reuse and await database_exists(args.url, name)):
                t0 = time.perf_counter()
                await build_postgres(args.url, name, ledger(n))
                log(f"  postgres schema {OLD} built in {time.perf_counter() - t0:.0f} s")
            drawn.clear()  # its memory is not the upgrade's
            try:
                rows.append(summary("postgres", n, await run_postgres(args.url, name, args.runs)))
            finally:
                if not args.keep:
                    admin = await asyncpg.connect(args.url)
                    try:
                        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
                    finally:
                        await admin.close()
        log(f"  {rows[-1]}")
    command = "python -m bench.bench_upgrade " + " ".join(sys.argv[1:])
    write_result(
        args.name,
        title=f"Upgrading a hub of schema {OLD} in place: the steps that read the whole ledger ({', '.join(map(str, STEPS))})"
        + (f" — {args.label}" if args.label else ""),
        command=command,
        rows=rows,
        notes=(
            f"Each ledger: {args.locations} stores x {args.skus} SKUs, {TRANSFER_SHARE:.0%} of the events transfers "
            f"(stores numbering their transfers alike). Median of {args.runs} runs, each on a fresh copy of the "
            f"schema-{OLD} database, upgraded by hub.open_store in a process of its own. Memory: the upgrading "
            "process's peak RSS above its RSS before the open; on PostgreSQL also the server backends' peak private "
            "memory and the temp files they wrote."
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"])
    parser.add_argument("--events", type=int, nargs="+", default=[2_000_000])
    parser.add_argument("--locations", type=int, default=100)
    parser.add_argument("--skus", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--dir", default="/tmp/shelfsync-bench-upgrade")
    parser.add_argument("--name", default="upgrade_025", help="the result file's name (bench/results/NAME.json)")
    parser.add_argument("--label", default="", help="said after the title: what code this run measures")
    parser.add_argument("--keep", action="store_true", help="keep the schema-19 databases (to look into a step)")
    parser.add_argument("--reuse", action="store_true", help="upgrade copies of schema-19 databases kept before")
    parser.add_argument("--upgrade-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upgrade_one:
        upgrade_one(args.upgrade_one)
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
