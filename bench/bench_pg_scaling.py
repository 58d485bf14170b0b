"""Where the work of PostgreSQL ingest goes with 1, 2 and 4 hub processes on one database (issue 16).

This machine has 2 cores, so N hubs beside PostgreSQL cannot show scaling by
throughput. Instead each run measures what scaling is made of, per 1,000
events, so docs/scaling.md can work out N hubs on N cores on paper:

* CPU-seconds in each hub process (its decoding workers included), in the
  PostgreSQL backends serving the hubs (``/proc/<pid>/stat`` of the backends
  whose client port is one of the hubs' connections), in PostgreSQL's own
  background processes, and in this load generator;
* wait time of those backends, sampled from ``pg_stat_activity`` every
  ``--sample-ms``: ``Lock`` waits (advisory = the batch key locks,
  transactionid/tuple = a row lock such as the change-feed counter's), WAL and
  other waits, and the time a backend sits inside a transaction waiting for
  its hub (``idle in transaction``: the hub's Python between statements);
* the serialised part: the change-feed counter's critical section (the
  counter UPDATE, the change rows, the newest-id read and COMMIT with its WAL
  flush, run by the hub's own ``PostgresIngest.flush_changes``), replayed
  alone on one connection with a batch's worth of change rows.

    python -m bench.bench_pg_scaling [--url postgresql://…] [--hubs 1 2 4] [--agents 8] [--batches 25] [--runs 3]

Each measurement gets a fresh schema in the database of ``--url`` (dropped after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import psutil

from bench.bench_ingest import BATCH, SKUS_PER_STORE, free_port
from bench.bench_pg_ingest import DEFAULT_URL, fresh_schema, pg_port, post_all, run_hub, sync_bodies, warm_up, workload
from bench.common import median, write_result
from hub.storage.ingest import NewChange
from hub.storage.postgres.ingest import PostgresIngest
from protocol import CountSnapshot, wall_ms_now

PROBE_BATCHES = 60  # critical sections replayed for the serialised part


def cpu_s(proc: psutil.Process) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def machine_busy_s() -> float:
    """CPU-seconds every core spent busy since boot (all processes, this machine)."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))


class CpuMeter:
    """CPU-seconds of a changing set of processes between ``start`` and ``stop``: a process first seen after
    ``start`` counts from 0 (it was born during the run)."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.procs: dict[int, psutil.Process] = {}

    def see(self, procs: list[psutil.Process], *, born_now: bool) -> None:
        for p in procs:
            if p.pid not in self.procs:
                self.procs[p.pid] = p
                self.first[p.pid] = 0.0 if born_now else cpu_s(p)
            self.last[p.pid] = cpu_s(p)

    def total_s(self) -> float:
        for pid, p in self.procs.items():
            now = cpu_s(p)
            if now:  # a process gone meanwhile keeps its last reading
                self.last[pid] = now
        return sum(self.last[pid] - self.first[pid] for pid in self.procs)


def tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def client_ports(procs: list[psutil.Process], pg_port: int) -> set[int]:
    """Local ports of the processes' TCP connections to the PostgreSQL on ``pg_port``."""
    ports: set[int] = set()
    for p in procs:
        try:
            conns = p.net_connections(kind="tcp")
        except psutil.Error:
            continue
        ports.update(c.laddr.port for c in conns if c.raddr and c.raddr.port == pg_port)
    return ports


def postgres_background() -> list[psutil.Process]:
    """PostgreSQL's own processes (checkpointer, WAL writer, …): children of the postmaster that serve no client."""
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if cmd.startswith("postgres: ") and "(" not in cmd and "[local]" not in cmd:
            out.append(p)
    return out


@dataclass
class Sampler:
    """A thread sampling the hubs' backends in ``pg_stat_activity`` (and their CPU) while the load runs."""

    url: str
    hubs: list[psutil.Process]
    sample_s: float
    waits_s: Counter[str] = field(default_factory=Counter)  # "Lock:advisory", "in transaction", "active", …
    samples: int = 0
    cpu_s: float = 0.0  # this thread's own CPU: the load generator's figure leaves it out
    hub_cpu: list[CpuMeter] = field(default_factory=list)
    backend_cpu: CpuMeter = field(default_factory=CpuMeter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    @property
    def pg_port(self) -> int:
        return pg_port(self.url)

    def start(self) -> None:
        self.hub_cpu = [CpuMeter() for _ in self.hubs]
        for meter, hub in zip(self.hub_cpu, self.hubs, strict=True):
            meter.see(tree(hub), born_now=False)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="pg-sampler", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(30)
        if self.error is not None:
            raise self.error

    def _backends(self, rows: list[asyncpg.Record]) -> list[psutil.Process]:
        out = []
        for r in rows:
            try:
                out.append(psutil.Process(r["pid"]))
            except psutil.Error:
                pass
        return out

    async def _run(self) -> None:
        started = time.thread_time()
        try:
            conn = await asyncpg.connect(self.url)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self.error = err
            self._ready.set()
            return
        sql = (
            "SELECT pid, state, wait_event_type, wait_event, left(query, 60) AS query FROM pg_stat_activity "
            "WHERE client_port = ANY($1::int[])"
        )
        try:
            ports = client_ports([p for h in self.hubs for p in tree(h)], self.pg_port)
            rows = await conn.fetch(sql, list(ports))
            self.backend_cpu.see(self._backends(rows), born_now=False)
            started = time.thread_time()  # from here on the load generator's clock runs too
            self._ready.set()
            last = time.perf_counter()
            last_ports = last
            while not self._stop.is_set():
                await asyncio.sleep(self.sample_s)
                now = time.perf_counter()
                if now - last_ports > 0.5:  # hubs open pool connections as load grows
                    for meter, hub in zip(self.hub_cpu, self.hubs, strict=True):
                        meter.see(tree(hub), born_now=True)
                    ports = client_ports([p for h in self.hubs for p in tree(h)], self.pg_port)
                    last_ports = now
                rows = await conn.fetch(sql, list(ports))
                dt = now - last
                last = now
                self.samples += 1
                self.backend_cpu.see(self._backends(rows), born_now=True)
                for r in rows:
                    self.waits_s[_state(r)] += dt
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self.error = err
            self._ready.set()
        finally:
            await conn.close()
            self.cpu_s = time.thread_time() - started


# What a sampled backend of a hub is doing (pg_stat_activity), by the names the summary adds up.
HOLDS_COUNTER = "holds the change-feed counter"  # between its counter UPDATE and the end of its COMMIT
WAITS_FOR_HUB = "in a transaction, waiting for its hub"


def _in_counter_section(query: str) -> bool:
    """A statement of the critical section: the counter's UPDATE with the change rows (``APPEND_SQL``, or the
    UPDATE and COPY of older versions) and the newest-id read."""
    return "change_counter" in query or query.startswith('COPY "changes"')  # (a COPY: versions before 5)


def _state(r: asyncpg.Record) -> str:
    kind, event, state, query = r["wait_event_type"], r["wait_event"], r["state"], r["query"] or ""
    if state == "idle":
        return "idle"
    if kind == "Lock":
        return f"Lock:{event}"
    if _in_counter_section(query) or (query.startswith("COMMIT") and state == "active"):
        return HOLDS_COUNTER  # every batch of the bench appends change rows, so its COMMIT ends the section
    if state == "idle in transaction":
        return WAITS_FOR_HUB
    return "running a statement" if kind is None else f"{kind}:{event}"


async def critical_section_ms(store_url: str, rows: int) -> float:
    """Median wall time of the change-feed counter's critical section: the hub's ``flush_changes`` of ``rows``
    change rows, the newest-id read (``hub.storage.store``) and COMMIT, one at a time on one connection."""
    conn = await asyncpg.connect(store_url)
    try:
        changes = [
            NewChange(CountSnapshot("STORE-001", f"SKU-{i:04d}", 5, 0, 5, 0), (os.urandom(16),)) for i in range(rows)
        ]
        times = []
        for _ in range(PROBE_BATCHES):
            tr = conn.transaction()
            await tr.start()
            tx = PostgresIngest(conn, set())
            await tx.append_changes(changes, wall_ms_now())
            t0 = time.perf_counter()
            await tx.flush_changes()
            await conn.fetchval("SELECT last_id FROM change_counter")
            await tr.commit()
            times.append((time.perf_counter() - t0) * 1000)
        return median(times)
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Run:
    hubs: int
    events: int
    elapsed_s: float
    hub_cpu_s: tuple[float, ...]
    backend_cpu_s: float
    background_cpu_s: float
    loadgen_cpu_s: float
    machine_busy_s: float
    waits_s: dict[str, float]
    samples: int
    critical_ms: float
    changes_per_batch: float


async def one_run(url: str, hubs: int, agents: int, batches: int, seed: int, sample_s: float) -> Run:
    async with fresh_schema(url) as store_url:
        plans = await workload(store_url, agents, batches, seed)
        bodies = sync_bodies(plans)
        ports = [free_port() for _ in range(hubs)]
        procs = [run_hub(store_url, port) for port in ports]
        try:
            warm = await warm_up(store_url, ports, seed)
            sampler = Sampler(url, [psutil.Process(p.pid) for p in procs], sample_s)
            sampler.start()
            background = CpuMeter()
            background.see(postgres_background(), born_now=False)
            me = psutil.Process()
            loadgen0, busy0 = cpu_s(me), machine_busy_s()
            t0 = time.perf_counter()
            await asyncio.gather(
                *(post_all(f"http://127.0.0.1:{ports[i % hubs]}", token, b) for i, (token, b) in enumerate(bodies))
            )
            elapsed = time.perf_counter() - t0
            busy = machine_busy_s() - busy0
            sampler.stop()
            loadgen = cpu_s(me) - loadgen0 - sampler.cpu_s
            hub_cpu = tuple(m.total_s() for m in sampler.hub_cpu)
            backend_cpu = sampler.backend_cpu.total_s()
            background_cpu = background.total_s()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
        conn = await asyncpg.connect(store_url)
        try:
            stored = await conn.fetchval("SELECT count(*) FROM events")
            changes = await conn.fetchval("SELECT COALESCE(sum(last_id - first_id + 1), 0)::int8 FROM change_runs")
        finally:
            await conn.close()
        total = agents * batches * BATCH
        assert stored == total + warm, f"the hubs stored {stored} of {total + warm} events"
        per_batch = changes / (agents * batches + len(ports))
        critical = await critical_section_ms(store_url, round(per_batch))
    return Run(
        hubs, total, elapsed, hub_cpu, backend_cpu, background_cpu, loadgen, busy, dict(sampler.waits_s),
        sampler.samples, critical, per_batch,
    )  # fmt: skip


ROW_LOCKS = ("Lock:transactionid", "Lock:tuple")  # waiting for another transaction's row: the counter's


def wait_ms(run: Run, keys: Callable[[str], bool]) -> float:
    """Sampled time of the hubs' backends in the states ``keys`` picks, in ms per 1,000 events."""
    return sum(v for w, v in run.waits_s.items() if keys(w)) / (run.events / 1000) * 1000


def summarise(runs: list[Run]) -> dict[str, object]:
    """One table row: medians over the runs; CPU in seconds and waits in ms per 1,000 events."""

    def k(run: Run, seconds: float) -> float:
        return seconds / (run.events / 1000)

    hubs = runs[0].hubs
    return {
        "hub processes": hubs,
        "events/s": median([r.events / r.elapsed_s for r in runs]),
        "hub CPU-s/1k (all hubs)": median([k(r, sum(r.hub_cpu_s)) for r in runs]),
        "PostgreSQL CPU-s/1k": median([k(r, r.backend_cpu_s) for r in runs]),
        "PostgreSQL background CPU-s/1k": median([k(r, r.background_cpu_s) for r in runs]),
        "load generator CPU-s/1k": median([k(r, r.loadgen_cpu_s) for r in runs]),
        "key lock waits ms/1k": median([wait_ms(r, lambda w: w == "Lock:advisory") for r in runs]),
        "row lock waits ms/1k": median([wait_ms(r, lambda w: w in ROW_LOCKS) for r in runs]),
        "other lock waits ms/1k": median(
            [wait_ms(r, lambda w: w.startswith("Lock:") and w not in ROW_LOCKS and w != "Lock:advisory") for r in runs]
        ),
        "counter held ms/batch": median([wait_ms(r, lambda w: w == HOLDS_COUNTER) for r in runs]),
        "critical section alone ms/batch": median([r.critical_ms for r in runs]),
        "waiting for the hub in a transaction ms/1k": median([wait_ms(r, lambda w: w == WAITS_FOR_HUB) for r in runs]),
        "WAL waits ms/1k": median([wait_ms(r, lambda w: "WAL" in w) for r in runs]),
        "change rows/batch": median([r.changes_per_batch for r in runs]),
        "machine busy (cores of 2)": median([r.machine_busy_s / r.elapsed_s for r in runs]),
    }


PROJECTED_HUBS = (1, 2, 4, 8, 16, 32)


def projection(runs: list[Run]) -> list[dict[str, object]]:
    """N hubs on N cores, on paper, from every run's figures (docs/scaling.md has the model).

    Each hub on a core of its own ingests at most 1,000 / c_h events/s (c_h: hub CPU-s per 1,000 events);
    PostgreSQL needs c_p CPU-s per 1,000 events; the change-feed counter lets one batch through at a time, for
    h per batch, so all hubs together commit at most B / h batches of B events a second. The counter's wait
    per batch follows M/D/1: h·ρ / (2(1 − ρ)) at utilisation ρ. Two values of h bound it: as measured under
    load here (the hub's event loop takes turns while holding it) and the critical section alone."""
    c_h = median([sum(r.hub_cpu_s) / (r.events / 1000) for r in runs])
    c_p = median([r.backend_cpu_s / (r.events / 1000) for r in runs])
    held_s = median([wait_ms(r, lambda w: w == HOLDS_COUNTER) for r in runs]) / 1000  # per 1,000 events = a batch
    alone_s = median([r.critical_ms for r in runs]) / 1000
    out = []
    for n in PROJECTED_HUBS:
        hubs_cap = n * 1000 / c_h
        row: dict[str, object] = {
            "hubs, one core each": n,
            "hubs can take events/s": hubs_cap,
            "PostgreSQL cores to keep up": n * c_p / c_h,
        }
        for label, h in (("counter held as measured", held_s), ("critical section alone", alone_s)):
            cap = BATCH / h
            x = min(hubs_cap, cap * 0.9)  # the counter at 90 %: waits grow without bound as it nears 100 %
            rho = x * h / BATCH
            row[f"events/s, {label}"] = x
            row[f"counter wait ms/batch, {label}"] = h * rho / (2 * (1 - rho)) * 1000
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="a PostgreSQL database the bench may create schemas in")
    parser.add_argument("--hubs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--batches", type=int, default=25, help="1,000-event batches per agent")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sample-ms", type=float, default=20.0, help="pg_stat_activity sampling interval")
    args = parser.parse_args()
    rows = []
    every: list[Run] = []
    load = os.getloadavg()[0]
    for hubs in args.hubs:
        runs = []
        for run in range(args.runs):
            r = asyncio.run(one_run(args.url, hubs, args.agents, args.batches, run, args.sample_ms / 1000))
            runs.append(r)
            figures = "; ".join(f"{key} {value:.3g}" for key, value in summarise([r]).items() if key != "hub processes")
            each = ", ".join(f"{c / (r.events / 1000):.3f}" for c in r.hub_cpu_s)
            states = {w: round(v, 2) for w, v in sorted(r.waits_s.items())}
            print(f"{hubs} hub(s), run {run + 1}: {figures}; hub CPU each {each}; every state sampled (s): {states}")
        rows.append(summarise(runs))
        every += runs
    command = (
        f"python -m bench.bench_pg_scaling --hubs {' '.join(map(str, args.hubs))} --agents {args.agents} "
        f"--batches {args.batches} --runs {args.runs}"
    )
    write_result(
        "issue16_pg_scaling",
        title="PostgreSQL ingest with 1, 2 and 4 hub processes: CPU and lock waits per 1,000 events (issue 16)",
        command=command,
        rows=rows,
        notes=(
            f"{args.agents} agents (one location each, {SKUS_PER_STORE} SKUs) post {args.batches} batches of {BATCH:,} "
            "events each over HTTP, concurrently, spread round-robin over the hub processes (the workload of "
            "bench_pg_ingest.py), on a machine whose cores the hubs, PostgreSQL and the load generator share; each "
            "hub first takes one batch of an agent of its own, before the clock starts (its pool "
            "connections start then, not inside the figures). CPU: "
            "/proc of each hub process with its decoding worker if it started one, of the PostgreSQL backends serving the hubs' "
            "connections, of PostgreSQL's own background processes (checkpointer, WAL writer …: they serve anything "
            "else on the server too) and of the load generator. Waits: the hubs' backends sampled in "
            f"pg_stat_activity every {args.sample_ms:g} ms (time = samples × interval): key locks = advisory lock "
            "waits (batches of the same location and SKU bucket), row locks = waits for another transaction's row "
            "(the change-feed counter's); counter held = time a backend held the counter row (from its UPDATE to "
            "the end of its COMMIT, idle turns of its hub included); waiting for the hub = idle in a transaction. "
            "Critical section alone: the hub's own PostgresIngest.flush_changes of a batch's change rows, the "
            f"newest-id read and COMMIT, replayed {PROBE_BATCHES} times on one connection after the run. Median of "
            f"{args.runs} runs. Load average before the first run {load:.2f}; CPU-seconds of a process grow when "
            "the other processes on the machine compete for its cores. bench_pg_scaling_model: N hubs on N cores."
        ),
    )
    write_result(
        "issue16_pg_scaling_model",
        title="N hubs on N cores, projected from the measured CPU per event and critical section (issue 16)",
        command=command,
        rows=projection(every),
        notes=(
            "On paper, from the runs above (docs/scaling.md explains the model): each hub on a core of its own takes "
            "1,000 / (hub CPU-s per 1,000 events) events/s; PostgreSQL needs its CPU-s per 1,000 events on cores of "
            "its own; the change-feed counter lets one 1,000-event batch through at a time, so the hubs together "
            "commit at most 1,000 / h events/s, h the time a batch holds the counter — as measured under load here "
            "(its hub's event loop takes turns while holding it) or the critical section alone. Projected events/s "
            "is the smaller of the hubs' capacity and 90 % of the counter's; the counter's wait per batch follows "
            "M/D/1 at that utilisation. Figures medians of every run of every hub count."
        ),
    )


if __name__ == "__main__":
    main()
