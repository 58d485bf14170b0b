"""A regional outage ends: N stores catch up at once; what the other stores and the hub's readers see meanwhile.

N agent processes (``python -m agent run``) each drain a backlog recorded straight into their outbox (as
``bench_catchup`` does) into one hub process, 10,000 events a request and two in flight. Meanwhile, on the same
hub:

- a live store sells: one sale a request, every ``--live-every`` seconds, posted as its agent would
  (``POST /v1/sync``, the columnar body); the figure is each request's time until its answer, the sale's
  acknowledgement;
- a load balancer checks ``GET /healthz`` every 0.5 s with a 5 s timeout (a timeout is counted, at 5 s);
- a dashboard reads the live store's counts (``GET /v1/locations/{loc}/counts``) and the change feed
  (``GET /v1/changes``, what webhooks and channel pushers read) every second.

The clock runs from the agents' start until every backlog is acknowledged, and the hub is checked to hold
every event once.

    python -m bench.bench_regional --agents 10 --events 30000                # SQLite
    python -m bench.bench_regional --agents 10 --events 30000 --pg   # a fresh schema of the test PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from agent import Movement, Outbox
from bench.common import median, percentile, write_result
from bench.soak import free_port, start_hub
from hub import open_store
from protocol import MSGPACK_CONTENT_TYPE, Kind, SyncRequest, encode_sync_request

RECORD_CHUNK = 5_000
HEALTH_TIMEOUT_S = 5.0  # a load balancer's check
HEALTH_EVERY_S = 0.5
READ_EVERY_S = 1.0
LIVE_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 1_800.0
LIVE = "LIVE-1"


async def build_backlog(outbox_path: Path, agent_id: str, location: str, events: int) -> None:
    outbox_path.parent.mkdir(parents=True, exist_ok=True)
    async with Outbox.open(outbox_path, agent_id=agent_id, location=location, synchronous="normal") as outbox:
        for start in range(0, events, RECORD_CHUNK):
            n = min(RECORD_CHUNK, events - start)
            await outbox.record(
                [Movement(location, f"SKU-{(start + i) % 500:03d}", Kind.SALE if i % 4 else Kind.RECEIVE,
                          -1 if i % 4 else 5, "pos:bench") for i in range(n)]
            )  # fmt: skip


def agent_config(folder: Path, agent_id: str, location: str, token: str, url: str) -> Path:
    path = folder / "agent.toml"
    path.write_text(
        f'[agent]\nid = "{agent_id}"\nlocation = "{location}"\ntoken = "{token}"\nhub_url = "{url}"\n'
        f'data_dir = "{folder.as_posix()}"\nsynchronous = "normal"\n\n'
        "[replicator]\nbatch_size = 1000\ntick_s = 1.0\nretry_base_s = 0.2\nretry_max_s = 2.0\ntimeout_s = 120.0\n"
    )
    return path


def acked(outbox_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(outbox_path, timeout=30)) as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone()[0])


async def timed(
    session: aiohttp.ClientSession, fn: Callable[[aiohttp.ClientSession], Awaitable[int]], out: list[float],
    failures: list[str], timeout_s: float,
) -> None:  # fmt: skip
    started = time.perf_counter()
    try:
        status = await asyncio.wait_for(fn(session), timeout_s)
    except (TimeoutError, aiohttp.ClientError, OSError) as err:
        out.append(timeout_s if isinstance(err, TimeoutError) else time.perf_counter() - started)
        failures.append(type(err).__name__)
        return
    out.append(time.perf_counter() - started)
    if status != 200:
        failures.append(f"HTTP {status}")


async def probe(every_s: float, stop: asyncio.Event, one: Callable[[], Awaitable[None]]) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await one()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, every_s - (time.perf_counter() - started)))


async def live_store(
    url: str, token: str, agent_id: str, outbox_path: Path, every_s: float, stop: asyncio.Event,
    out: list[float], failures: list[str],
) -> int:  # fmt: skip
    """Sell one item every ``every_s`` and send it at once; return how many sales were acknowledged."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}
    acknowledged = 0
    async with (
        Outbox.open(outbox_path, agent_id=agent_id, location=LIVE) as outbox,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIVE_TIMEOUT_S)) as session,
    ):
        after = 0
        n = 0
        while not stop.is_set():
            started = time.perf_counter()
            await outbox.record([Movement(LIVE, f"SKU-{n % 50:03d}", Kind.SALE, -1, "pos:live")])
            n += 1
            pending = (await outbox.outgoing(100, after=after)).events
            body = encode_sync_request(SyncRequest(agent_id, outbox.epoch, pending, acked_seq=after))

            async def post(s: aiohttp.ClientSession, body: bytes = body) -> int:
                async with s.post(f"{url}/v1/sync", data=body, headers=headers) as resp:
                    await resp.read()
                    return resp.status

            before = len(failures)
            await timed(session, post, out, failures, LIVE_TIMEOUT_S)
            if len(failures) == before:
                after = pending[-1].seq
                acknowledged = after
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, every_s - (time.perf_counter() - started)))
    return acknowledged


def summary(name: str, values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values] or [0.0]
    return {"name": name, "n": len(values), "p50": percentile(ms, 50), "p99": percentile(ms, 99), "max": max(ms)}


async def one(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """One run, on a fresh schema of the test PostgreSQL server with ``--pg``."""
    if not args.pg:
        return await run(args, root, str(root / "hub.db"))
    from tests.harness.pg import fresh_schema

    async with fresh_schema("bench") as url:
        return await run(args, root, url)


async def run(args: argparse.Namespace, root: Path, db: str) -> dict[str, Any]:
    locations = [f"STORE-{i + 1:03d}" for i in range(args.agents)]
    async with open_store(db) as store:
        creds = [await store.add_agent([loc]) for loc in locations]
        live_id, live_token = await store.add_agent([LIVE])
        _, reader_token = await store.add_agent([], role="reader")
    started = time.perf_counter()
    await asyncio.gather(*(
        build_backlog(root / loc / "outbox.sqlite3", agent_id, loc, args.events)
        for loc, (agent_id, _) in zip(locations, creds, strict=True)
    ))  # fmt: skip
    print(f"recorded {args.agents} backlogs of {args.events:,} events in {time.perf_counter() - started:.1f} s")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    hub = await start_hub(db, port, root / "hub.log")  # type: ignore[arg-type]
    health: list[float] = []
    health_failures: list[str] = []
    live: list[float] = []
    live_failures: list[str] = []
    counts: list[float] = []
    changes: list[float] = []
    read_failures: list[str] = []
    stop = asyncio.Event()
    reader = {"Authorization": f"Bearer {reader_token}"}

    async def get(path: str, headers: dict[str, str] | None = None) -> Callable[[aiohttp.ClientSession], Awaitable[int]]:
        async def one(s: aiohttp.ClientSession) -> int:
            async with s.get(f"{url}{path}", headers=headers) as resp:
                await resp.read()
                return resp.status

        return one

    agents: list[asyncio.subprocess.Process] = []
    try:
        async with aiohttp.ClientSession() as session:
            healthz = await get("/healthz")
            counts_get = await get(f"/v1/locations/{LIVE}/counts", reader)
            changes_get = await get("/v1/changes?limit=100", reader)
            probes = [
                asyncio.create_task(probe(HEALTH_EVERY_S, stop, lambda: timed(
                    session, healthz, health, health_failures, HEALTH_TIMEOUT_S))),
                asyncio.create_task(probe(READ_EVERY_S, stop, lambda: timed(
                    session, counts_get, counts, read_failures, 60.0))),
                asyncio.create_task(probe(READ_EVERY_S, stop, lambda: timed(
                    session, changes_get, changes, read_failures, 60.0))),
            ]  # fmt: skip
            live_task = asyncio.create_task(live_store(
                url, live_token, live_id, root / LIVE / "outbox.sqlite3", args.live_every, stop, live, live_failures))
            await asyncio.sleep(2.0)  # the live store's and the probes' figures before the outage ends
            quiet = (list(live), list(health))
            drain_started = time.perf_counter()
            for loc, (agent_id, token) in zip(locations, creds, strict=True):
                config = agent_config(root / loc, agent_id, loc, token, url)
                with (root / loc / "agent.log").open("ab") as out:
                    agents.append(await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "agent", "run", "--config", str(config), stdout=out, stderr=out))
            while True:
                done = [acked(root / loc / "outbox.sqlite3") for loc in locations]
                if all(d >= args.events for d in done):
                    break
                if time.perf_counter() - drain_started > DRAIN_TIMEOUT_S:
                    raise SystemExit(f"the backlogs did not drain within {DRAIN_TIMEOUT_S:.0f} s")
                for proc in agents:
                    if proc.returncode is not None:
                        raise SystemExit(f"an agent exited with {proc.returncode}; see {root}")
                await asyncio.sleep(0.5)
            drain_s = time.perf_counter() - drain_started
            stop.set()
            live_acked = await live_task
            await asyncio.gather(*probes)
    finally:
        stop.set()
        for proc in agents:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in agents:
            await asyncio.wait_for(proc.wait(), 60)
        hub.send_signal(signal.SIGTERM)
        await asyncio.wait_for(hub.wait(), 120)
    async with open_store(db) as store:
        held = {loc: sum(int(r.on_hand) for r in await store.counts(location=loc)) for loc in locations}
    expected = sum(5 if i % 4 == 0 else -1 for i in range(args.events))
    wrong = {loc: n for loc, n in held.items() if n != expected}
    if wrong:
        raise SystemExit(f"stock after the catch-up is not what the backlogs say ({expected}): {wrong}")
    n_live, n_health = len(quiet[0]), len(quiet[1])
    return {
        "drain_s": drain_s,
        "live_acked": live_acked,
        "live": summary("live", live[n_live:]),
        "live_quiet": summary("live quiet", quiet[0]),
        "health": summary("health", health[n_health:]),
        "counts": summary("counts", counts),
        "changes": summary("changes", changes),
        "health_failures": health_failures,
        "live_failures": live_failures,
        "read_failures": read_failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10, help="stores catching up at once")
    parser.add_argument("--events", type=int, default=30_000, help="each one's backlog")
    parser.add_argument("--live-every", type=float, default=0.25, help="seconds between the live store's sales")
    parser.add_argument("--pg", action="store_true", help="a fresh schema of the test PostgreSQL server, not SQLite")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--label", default="", help="a word for the result's name (before/after)")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    runs = []
    for number in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            r = asyncio.run(one(args, Path(tmp)))
        runs.append(r)
        print(f"run {number + 1}: drained in {r['drain_s']:.1f} s")
        for key in ("live_quiet", "live", "health", "counts", "changes"):
            s = r[key]
            print(f"  {s['name']:>10}: n={s['n']:4d} p50 {s['p50']:7.1f} ms  p99 {s['p99']:7.1f} ms  max {s['max']:7.1f} ms")
        print(f"  failures: health {r['health_failures'][:5]} live {r['live_failures'][:5]} reads {r['read_failures'][:5]}")
    backend = "postgresql" if args.pg else "sqlite"
    rows: list[dict[str, Any]] = [{"measure": "all backlogs drained (s)", "value": median([r["drain_s"] for r in runs]),
                                   "baseline": "", "ratio": "", "target": ""}]
    for key, what, target in (
        ("live", "a live store's sale acknowledged (ms) p50 / p99 / max", "p99 < 1,000"),
        ("health", "GET /healthz (ms) p50 / p99 / max", "max < 5,000 (a load balancer's timeout)"),
        ("counts", "GET /v1/locations/{loc}/counts (ms) p50 / p99 / max", ""),
        ("changes", "GET /v1/changes (ms) p50 / p99 / max", ""),
    ):
        s = {k: median([r[key][k] for r in runs]) for k in ("p50", "p99", "max")}
        rows.append({"measure": what, "value": f"{s['p50']:.0f} / {s['p99']:.0f} / {s['max']:.0f}", "baseline": "",
                     "ratio": "", "target": target})
    load_end = os.getloadavg()[0]
    write_result(
        f"regional_{backend}" + (f"_{args.label}" if args.label else ""),
        title=f"A regional outage ends: {args.agents} stores catch up {args.events:,} events each ({backend})",
        command=f"python -m bench.bench_regional --agents {args.agents} --events {args.events} --runs {args.runs}"
        + (" --pg" if args.pg else ""),
        rows=rows,
        notes=(
            f"Median of {args.runs} run(s). Real hub and agent processes on 127.0.0.1; each agent sends 10,000 events "
            f"a request, two in flight. A live store posts one sale every {args.live_every:g} s; /healthz every "
            f"{HEALTH_EVERY_S:g} s (timeout {HEALTH_TIMEOUT_S:g} s); reads every {READ_EVERY_S:g} s. Load average "
            f"(1 min) {load_start:.1f} at the start, {load_end:.1f} at the end, on {os.cpu_count()} cores."
        ),
    )


if __name__ == "__main__":
    main()
