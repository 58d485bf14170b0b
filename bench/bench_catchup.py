"""Catch-up after an outage: an agent drains a backlog of N events (default 1,000,000) to the hub.

The backlog is recorded into a real outbox while no hub is reachable. Then
the hub process starts and a real agent process (``python -m agent run``,
batches of 1,000) drains it; the clock runs from the agent's start until its
acknowledged mark reaches the last event. The agent's RSS is sampled all the
while: it should stay flat (the outbox is read a batch at a time).

Baseline ("steady ingest rate"): the same events, in the same 1,000-event
batches, posted back to back by a plain HTTP client to an identical fresh hub
— the hub's own ingest ceiling, measured in the same run on the whole backlog
by default (``--steady-events`` for fewer: a hub's inserts slow down as its
tables grow, so a baseline on the first 50,000 events only flatters it). The
ratio is catch-up rate / steady rate (1.0 = the agent adds nothing).

    python -m bench.bench_catchup                      # 1,000,000 events (the issue's size)
    python -m bench.bench_catchup --events 100000      # what `make bench` runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from agent import Movement, Outbox
from agent.replicator import CATCHUP_BACKLOG, CATCHUP_BATCH_FACTOR
from bench.common import median, write_result
from bench.soak import free_port, start_hub
from hub import open_store
from protocol import MSGPACK_CONTENT_TYPE, Kind, SyncRequest, encode_sync_request

LOCATION = "STORE-1"
RECORD_CHUNK = 5_000
BATCH = 1_000
SAMPLE_S = 0.5
STEADY_CHUNK = 50_000  # events read and encoded at a time for the baseline, the clock stopped
CATCHUP_TIMEOUT_S = 3_600.0


async def build_backlog(outbox_path: Path, agent_id: str, events: int) -> float:
    started = time.perf_counter()
    async with Outbox.open(outbox_path, agent_id=agent_id, location=LOCATION, synchronous="normal") as outbox:
        for start in range(0, events, RECORD_CHUNK):
            n = min(RECORD_CHUNK, events - start)
            await outbox.record(
                [Movement(LOCATION, f"SKU-{(start + i) % 500:03d}", Kind.SALE if i % 4 else Kind.RECEIVE,
                          -1 if i % 4 else 5, "pos:bench") for i in range(n)]
            )  # fmt: skip
    return time.perf_counter() - started


async def steady_rate(outbox_path: Path, url: str, token: str, agent_id: str, events: int) -> tuple[float, float]:
    """Post the first ``events`` of the backlog straight to a hub, batch after batch; events per second over
    the first ``STEADY_CHUNK`` (the hub nearly empty) and over them all.

    Read and encoded ``STEADY_CHUNK`` events at a time with the clock stopped (memory stays bounded)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}
    posting_s, posted, after, first_rate = 0.0, 0, 0, 0.0
    async with (
        Outbox.open(outbox_path, agent_id=None, location=None, create=False) as outbox,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session,
    ):
        while posted < events:
            pending = (await outbox.outgoing(min(STEADY_CHUNK, events - posted), after=after)).events
            if not pending:
                break
            bodies = [
                encode_sync_request(SyncRequest(agent_id, outbox.epoch, part, acked_seq=part[0].seq - 1))
                for part in (pending[i : i + BATCH] for i in range(0, len(pending), BATCH))
            ]
            started = time.perf_counter()
            for body in bodies:
                async with session.post(f"{url}/v1/sync", data=body, headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
            posting_s += time.perf_counter() - started
            posted += len(pending)
            after = pending[-1].seq
            first_rate = first_rate or posted / posting_s
    return first_rate, posted / posting_s


def agent_config(path: Path, agent_id: str, token: str, url: str) -> Path:
    path.write_text(
        f'[agent]\nid = "{agent_id}"\nlocation = "{LOCATION}"\ntoken = "{token}"\nhub_url = "{url}"\n'
        f'data_dir = "{path.parent.as_posix()}"\nsynchronous = "normal"\n\n'
        f"[replicator]\nbatch_size = {BATCH}\ntick_s = 1.0\nretry_base_s = 0.1\nretry_max_s = 2.0\ntimeout_s = 120.0\n"
    )
    return path


def acked(outbox_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(outbox_path, timeout=30)) as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone()[0])


async def catch_up(config: Path, outbox_path: Path, events: int, log: Path) -> tuple[float, list[tuple[int, int]]]:
    """Start the agent; return seconds until everything is acknowledged, and (acked, rss) samples."""
    samples: list[tuple[int, int]] = []
    with log.open("ab") as out:
        started = time.perf_counter()
        agent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "run", "--config", str(config), stdout=out, stderr=out
        )
    try:
        process = psutil.Process(agent.pid)
        while True:
            done = acked(outbox_path)
            with contextlib.suppress(psutil.Error):
                samples.append((done, process.memory_info().rss))
            if done >= events:
                return time.perf_counter() - started, samples
            if agent.returncode is not None:
                raise SystemExit(f"the agent exited with {agent.returncode}; see {log}")
            if time.perf_counter() - started > CATCHUP_TIMEOUT_S:
                raise SystemExit(f"the backlog did not drain within {CATCHUP_TIMEOUT_S:.0f} s")
            await asyncio.sleep(SAMPLE_S)
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
        await asyncio.wait_for(agent.wait(), 60)


def slope_mib_per_100k(samples: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS against events acknowledged, in MiB per 100,000 events."""
    points = [(a, r / 2**20) for a, r in samples if a > 0]
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx, my = sum(a for a, _ in points) / n, sum(r for _, r in points) / n
    var = sum((a - mx) ** 2 for a, _ in points)
    return 0.0 if var == 0 else sum((a - mx) * (r - my) for a, r in points) / var * 100_000


def steady_events(args: argparse.Namespace) -> int:
    events: int = args.events
    return events if args.steady_events is None else min(int(args.steady_events), events)


async def run(args: argparse.Namespace, root: Path) -> dict[str, float]:
    hub_db, steady_db = root / "hub.db", root / "steady-hub.db"
    async with open_store(str(hub_db)) as store:
        agent_id, token = await store.add_agent([LOCATION])
    shutil.copyfile(hub_db, steady_db)  # the same credential in an identical, empty hub
    outbox_path = root / "agent" / "outbox.sqlite3"
    outbox_path.parent.mkdir()
    build_s = await build_backlog(outbox_path, agent_id, args.events)
    print(f"recorded a backlog of {args.events:,} events in {build_s:.1f} s")

    port = free_port()
    steady_hub = await start_hub(steady_db, port, root / "steady-hub.log")
    try:
        steady_first, steady = await steady_rate(outbox_path, f"http://127.0.0.1:{port}", token, agent_id, steady_events(args))
    finally:
        steady_hub.send_signal(signal.SIGTERM)
        await asyncio.wait_for(steady_hub.wait(), 60)
    print(f"steady ingest: {steady:,.0f} events/s ({steady_first:,.0f} over the first {STEADY_CHUNK:,})")

    port = free_port()
    hub = await start_hub(hub_db, port, root / "hub.log")
    try:
        config = agent_config(root / "agent" / "agent.toml", agent_id, token, f"http://127.0.0.1:{port}")
        seconds, samples = await catch_up(config, outbox_path, args.events, root / "agent" / "agent.log")
    finally:
        hub.send_signal(signal.SIGTERM)
        await asyncio.wait_for(hub.wait(), 120)
    with contextlib.closing(sqlite3.connect(hub_db)) as conn:
        held = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    if held != args.events:
        raise SystemExit(f"the hub holds {held:,} events, not {args.events:,}")
    rss = [r / 2**20 for a, r in samples if a > 0] or [r / 2**20 for _, r in samples]  # from the first batch on
    return {
        "seconds": seconds,
        "rate": args.events / seconds,
        "steady": steady,
        "steady_first": steady_first,
        "rss_start": rss[0],
        "rss_max": max(rss),
        "rss_end": rss[-1],
        "slope": slope_mib_per_100k(samples),
        "build_s": build_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="the backlog (the issue's size: 1,000,000)")
    parser.add_argument(
        "--steady-events", type=int, default=None,
        help="events posted directly for the baseline (default: the whole backlog, so both fill the hub alike)",
    )
    parser.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=3, help="whole runs; each figure is the median of theirs")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    runs: list[dict[str, float]] = []
    for number in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            runs.append(asyncio.run(run(args, Path(tmp))))
        print(f"run {number + 1}: {runs[-1]['seconds']:.1f} s, ratios {runs[-1]['rate'] / runs[-1]['steady']:.2f} "
              f"(same events) and {runs[-1]['rate'] / runs[-1]['steady_first']:.2f} (first {STEADY_CHUNK:,})")
    r = {key: median([run_[key] for run_ in runs]) for key in runs[0]}
    ratio_all = median([run_["rate"] / run_["steady"] for run_ in runs])
    ratio_first = median([run_["rate"] / run_["steady_first"] for run_ in runs])
    load_end = os.getloadavg()[0]
    rss = f"{r['rss_start']:.0f} / {r['rss_max']:.0f} / {r['rss_end']:.0f}"
    rows: list[dict[str, Any]] = [
        {"measure": "catch-up (s)", "value": r["seconds"], "baseline": "", "ratio": "",
         "target": "≤ 40 for 1,000,000" if args.events == 1_000_000 else ""},
        {"measure": "events/s: catch-up / steady ingest of the same hub, the same events", "value": r["rate"],
         "baseline": r["steady"], "ratio": ratio_all, "target": "≥ 0.9"},
        {"measure": f"events/s: catch-up / steady ingest of its first {STEADY_CHUNK:,} (the hub nearly empty)",
         "value": r["rate"], "baseline": r["steady_first"], "ratio": ratio_first, "target": "≥ 0.9"},
        {"measure": "agent RSS after the first batch / max / end (MiB)", "value": rss, "baseline": "", "ratio": "",
         "target": ""},
        {"measure": "agent RSS slope (MiB per 100k events)", "value": r["slope"], "baseline": "", "ratio": "",
         "target": "flat: ~0"},
    ]
    write_result(
        "catchup",
        title=f"Catch-up of a {args.events:,}-event backlog after an outage (issues 8, 16)",
        command=f"python -m bench.bench_catchup --events {args.events} --runs {args.runs}"
        + (f" --steady-events {args.steady_events}" if args.steady_events is not None else ""),
        rows=rows,
        notes=(
            f"Median of {args.runs} runs (each figure, and each ratio of its run). "
            f"Backlog recorded with the hub unreachable ({r['build_s']:.0f} s to record, synchronous=normal), then "
            f"drained by a real agent process (batch_size {BATCH:,}; while {CATCHUP_BACKLOG:,} or more wait it sends "
            f"{BATCH * CATCHUP_BATCH_FACTOR:,} per request, two requests in flight with a hub that reads after_seq); the time includes the agent's start. Baseline, measured in "
            f"the same run: the hub's steady ingest rate, the first {steady_events(args):,} events of "
            f"the same stream posted back to back in batches of {BATCH:,} by a plain client to an identical empty hub, "
            f"timed over them all (the hub fills as the catch-up fills it) and over the first {STEADY_CHUNK:,} alone "
            f"(the hub nearly empty: its best rate, the stricter baseline). "
            f"On {os.path.realpath(args.dir or tempfile.gettempdir())}; load average (1 min) {load_start:.1f} at the "
            f"start, {load_end:.1f} at the end, on {os.cpu_count()} cores."
        ),
    )


if __name__ == "__main__":
    main()
