"""``python -m bench.pg_replay [--agents 8] [--batches 24] [--offline]``: CPU of one PostgreSQL batch, in process.

The HTTP benches (``bench_pg_ingest``, ``bench_pg_scaling``) move by ±5 % from run to run on a shared
2-core VM; a change worth a few percent of the hub's CPU needs a steadier figure. This replays real
sync bodies of 1,000 events (``bench.bench_ingest.make_events``, encoded as agents send them) through
``decode_sync_request`` and ``HubStore.ingest`` on one event loop, one batch at a time, and prints per
batch the CPU time of this thread (the hub's work without HTTP) and of the PostgreSQL backends serving
it (``/proc`` through psutil). CPU time, not wall time: other processes on the cores do not count.

With ``--statements``, each database call of the measured batches is timed too: the CPU of this thread
(``time.thread_time``) and of the backend that ran it (``/proc/<pid>/schedstat``) around the call, summed
per statement (named by its first words) and printed per batch, with the WAL PostgreSQL wrote per batch
(``pg_stat_wal``: the whole server's, so on a cluster nothing else writes to).

With ``--offline``, each batch is first booked for real while its database calls and answers are
recorded, then decoded, prepared and booked again many times against a connection that answers what
PostgreSQL answered: the hub's own Python alone (decode, ``prepare_batch``, the shared algorithm and
the adapter building its rows), without the driver, the socket or the event loop's turns.

With ``--stores N``, each agent has N stores and each batch holds 1,000 events of each (N × 1,000 events, the
shape of N agents' batches booked in one transaction); the figures per 1,000 events compare batch sizes. Run
``--agents 2 --stores 4`` against ``--agents 8``: the same stores and events.

Compare two versions of the code by running this alternately in their trees (``PYTHONPATH``). Each run
gets a fresh schema in the database of ``--url`` (the test database unless told; dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import asyncpg
import psutil

from bench.bench_ingest import BATCH, make_events
from bench.bench_pg_ingest import DEFAULT_URL, fresh_schema, pg_port
from hub.clock_window import ClockWindow
from hub.storage import open_store
from hub.storage.base import AgentIdentity, Lineage
from hub.storage.ingest import apply_batch, prepare_batch
from hub.storage.postgres.ingest import PostgresIngest, batch_keys, lock_keys, sender_lockable, stock_lockable
from protocol import SyncRequest, decode_sync_request, encode_sync_request, wall_ms_now
from protocol.ids import new_event_id
from protocol.runtime import SERVING_GC_THRESHOLDS

WINDOW_MS = 30 * 86_400_000  # a clock window the generated stamps are well inside


def backends_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


async def my_backends() -> list[int]:
    """The PostgreSQL backends whose client is one of this process's connections."""
    ports = {
        c.laddr.port
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == pg_port(DEFAULT_URL)
    }
    conn = await asyncpg.connect(DEFAULT_URL)
    try:
        rows = await conn.fetch("SELECT pid, client_port FROM pg_stat_activity WHERE pid <> pg_backend_pid()")
    finally:
        await conn.close()
    return [r[0] for r in rows if r[1] in ports]


async def sync_bodies(store: Any, agents: int, batches: int, stores: int = 1) -> list[tuple[AgentIdentity, bytes]]:
    """(sender, body) of every batch, round robin over the agents. Each agent has ``stores`` stores of its own, and
    each of its batches holds 1,000 events of each, numbered and given ids in the order the batch holds them."""
    rng, plans = random.Random(7), []
    for i in range(agents):
        locations = [f"STORE-{i * stores + k + 1:03d}" for k in range(stores)]
        agent_id, token = await store.add_agent(locations)
        who = await store.authenticate(token)
        if stores == 1:
            events = make_events(agent_id, locations[0], batches * BATCH, rng)
        else:
            each = [make_events(agent_id, location, batches * BATCH, rng) for location in locations]
            mixed = (e for j in range(0, batches * BATCH, BATCH) for events in each for e in events[j : j + BATCH])
            events = [e._replace(seq=seq, event_id=new_event_id()) for seq, e in enumerate(mixed, 1)]
        size = stores * BATCH
        bodies = [
            encode_sync_request(SyncRequest(agent_id, 1, tuple(events[j : j + size])))
            for j in range(0, len(events), size)
        ]
        plans.append((who, bodies))
    return [(who, bodies[j]) for j in range(batches) for who, bodies in plans]


async def ingest(store: Any, who: AgentIdentity, body: bytes) -> None:
    sync = decode_sync_request(body)
    await store.ingest(
        who, sync.epoch, sync.events, sync.acked_seq, lineage=Lineage(sync.chain, sync.epoch_base or 0, sync.base_chain),
        clock_window_ms=WINDOW_MS, sent_ms=sync.sent_ms,
    )  # fmt: skip


def _runtime_s(pid: int) -> float:
    """CPU time a process has run so far, in ns resolution (``/proc/<pid>/schedstat``)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


def _statement(name: str, args: tuple[Any, ...]) -> str:
    if name == "copy_records_to_table":
        return f"COPY {args[0]}"
    return re.sub(r"\s+", " ", str(args[0]) if args else "")[:60]


@contextmanager
def per_statement() -> Iterator[dict[str, list[float]]]:
    """While open, every call of asyncpg's query methods (BEGIN and COMMIT among them) adds one call, this thread's
    CPU and its backend's CPU to the returned table, by statement. A bench's own instrument: it wraps the driver's
    methods for the while."""
    table: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    cls = asyncpg.connection.Connection
    saved = {n: getattr(cls, n) for n in ("execute", "fetch", "fetchrow", "fetchval", "copy_records_to_table")}

    def timed(name: str) -> Any:
        original = saved[name]

        async def call(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> Any:
            pid = self.get_server_pid()
            pg0, hub0 = _runtime_s(pid), time.thread_time()
            try:
                return await original(self, *args, **kwargs)
            finally:
                hub1, pg1 = time.thread_time(), _runtime_s(pid)
                row = table[_statement(name, args)]
                row[0] += 1
                row[1] += hub1 - hub0
                row[2] += pg1 - pg0

        return call

    for name in saved:
        setattr(cls, name, timed(name))
    try:
        yield table
    finally:
        for name, original in saved.items():
            setattr(cls, name, original)


async def _wal() -> tuple[int, int, int]:
    conn = await asyncpg.connect(DEFAULT_URL)
    try:
        row = await conn.fetchrow("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
    finally:
        await conn.close()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def replay(agents: int, batches: int, statements: bool = False, stores: int = 1) -> dict[str, Any]:
    async with fresh_schema(DEFAULT_URL) as url, open_store(url) as store:
        order = await sync_bodies(store, agents, batches, stores)
        for who, body in order[:agents]:  # each agent's first batch creates its stock rows: not measured
            await ingest(store, who, body)
        pids = await my_backends()
        wal0 = await _wal() if statements else (0, 0, 0)
        with per_statement() if statements else nullcontext({}) as table:
            pg0, hub0 = backends_cpu_s(pids), time.thread_time()
            for who, body in order[agents:]:
                await ingest(store, who, body)
            hub1, pg1 = time.thread_time(), backends_cpu_s(pids)
        wal1 = await _wal() if statements else (0, 0, 0)
    n = len(order) - agents
    out: dict[str, Any] = {
        "batches": n,
        "hub_ms": round((hub1 - hub0) / n * 1e3, 2),
        "pg_ms": round((pg1 - pg0) / n * 1e3, 2),
        "hub_ms_per_1000": round((hub1 - hub0) / (n * stores) * 1e3, 2),
        "pg_ms_per_1000": round((pg1 - pg0) / (n * stores) * 1e3, 2),
    }
    if statements:
        out["wal_per_batch"] = dict(
            zip(("records", "full_page_images", "bytes"), (round((b - a) / n) for a, b in zip(wal0, wal1)))
        )
        out["per_batch"] = {
            sql: {"calls": round(calls / n, 2), "hub_ms": round(hub / n * 1e3, 3), "pg_ms": round(pg / n * 1e3, 3)}
            for sql, (calls, hub, pg) in sorted(table.items(), key=lambda kv: -kv[1][2])
        }
    return out


class _Recorder:
    """A connection that records what each call answered."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.answers = conn, []

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            answer = await getattr(self.conn, name)(*args, **kwargs)
            self.answers.append(answer)
            return answer

        return call


class _Answering:
    """A connection that answers each call as the recorded one did (records handed to COPY are built)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = iter(answers)

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, records: Any = None, **kwargs: Any) -> Any:
            if records is not None:
                list(records)
            return next(self.answers)

        return call


async def book(conn: Any, batch: Any, now_ms: int) -> None:
    """``PostgresHubStore._booking`` of one batch on ``conn``."""
    keys, locks = batch_keys(batch)
    locks.update(map(stock_lockable, keys))
    locks.add(sender_lockable(batch.who.agent_id))
    await lock_keys(conn, locks)
    tx = PostgresIngest(conn, locks)
    await tx.preload(batch, keys)
    await apply_batch(tx, batch, now_ms)
    await tx.flush_changes()


def prepared(who: AgentIdentity, body: bytes) -> Any:
    sync = decode_sync_request(body)
    clock = ClockWindow(wall_ms_now(), WINDOW_MS, who.created_ms)
    return prepare_batch(who, sync.epoch, sync.events, sync.acked_seq, lineage=Lineage(), clock=clock)


async def offline(agents: int, batches: int, repeats: int, stores: int = 1) -> dict[str, Any]:
    recorded = []
    async with fresh_schema(DEFAULT_URL) as url, open_store(url) as store:
        order = await sync_bodies(store, agents, batches, stores)
        for i, (who, body) in enumerate(order):
            async with store._pool.acquire() as conn, conn.transaction():  # the store's pool: a bench of its internals
                recorder, now_ms = _Recorder(conn), wall_ms_now()
                await book(recorder, prepared(who, body), now_ms)
            if i >= agents:
                recorded.append((who, body, recorder.answers, now_ms))
    stages: dict[str, list[float]] = {"decode": [], "prepare": [], "booking": []}
    gc.disable()
    for _ in range(repeats):
        for who, body, answers, now_ms in recorded:
            t0 = time.thread_time()
            sync = decode_sync_request(body)
            t1 = time.thread_time()
            batch = prepare_batch(
                who, sync.epoch, sync.events, sync.acked_seq, lineage=Lineage(),
                clock=ClockWindow(wall_ms_now(), WINDOW_MS, who.created_ms),
            )  # fmt: skip
            t2 = time.thread_time()
            await book(_Answering(answers), batch, now_ms)
            t3 = time.thread_time()
            stages["decode"].append(t1 - t0)
            stages["prepare"].append(t2 - t1)
            stages["booking"].append(t3 - t2)
    gc.enable()
    out: dict[str, Any] = {"batches": len(recorded), "repeats": repeats}
    for name, times in stages.items():
        out[f"{name}_ms_median"] = round(statistics.median(times) * 1e3, 3)
        out[f"{name}_ms_min"] = round(min(times) * 1e3, 3)
    return out


def main() -> None:
    global DEFAULT_URL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--batches", type=int, default=24, help="per agent; each agent's first is not measured")
    parser.add_argument(
        "--stores", type=int, default=1, help="stores per agent: each batch holds 1,000 events of each (see the doc)"
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL database the bench may create schemas in")
    parser.add_argument(
        "--statements", action="store_true", help="CPU per statement and WAL per batch (see the module doc)"
    )
    parser.add_argument("--offline", action="store_true", help="the hub's own Python alone (see the module doc)")
    parser.add_argument("--repeats", type=int, default=20, help="with --offline: bookings of each recorded batch")
    args = parser.parse_args()
    DEFAULT_URL = args.url
    gc.set_threshold(*SERVING_GC_THRESHOLDS)
    if args.offline:
        result = asyncio.run(offline(args.agents, args.batches, args.repeats, args.stores))
    else:
        result = asyncio.run(replay(args.agents, args.batches, args.statements, args.stores))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
