"""Slow store disks: record-to-durable and two scanners, with every fsync delayed (issue 16).

Back-office PCs have slow disks. This runs the measurement in a child process
under ``strace``'s syscall fault injection, which delays the return of every
``fsync`` / ``fdatasync`` by ``--fsync-delay-ms`` (5 ms by default): the data
reaches the disk as usual, only later, as on a disk whose flush takes 5 ms.

Measured in that child, on the same delayed disk:

1. **plain commit** (the baseline): one row inserted and committed by plain
   sqlite3 in WAL mode with ``synchronous = FULL`` (what the outbox uses);
2. **record-to-durable**: ``Outbox.record()`` of one movement, from the call
   to its return (the movement committed and flushed); p50 / p99;
3. **two scanners**: two serial scanners (pseudo-terminals) through the
   agent's real scan path (``ScanService`` → ``ModeRouter`` → outbox), each
   sending ``--scan-rate`` scans per second for ``--seconds``. Every scan's
   latency runs from its last byte written to its record's return. The run
   passes when every scan is booked (none lost) and the queue does not grow:
   the p50 of the last third is compared with that of the first third.
   A headroom run does the same at ``--headroom-rate`` (80 scans/s each, four
   times a busy person), where commits must be grouped to keep up: without
   grouping (one flush per scan) the queue grew there (last third ÷ first
   third 3.5, p50 192 ms, measured before the outbox grouped its commits).

    python -m bench.bench_slow_disk                       # 5 ms fsync, 2 × 20 scans/s for 30 s
    python -m bench.bench_slow_disk --fsync-delay-ms 20   # a very slow disk
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hardware
from agent.config import ScannerSection
from agent.outbox import Movement, Outbox, RecordResult
from agent.scan_journal import ScanJournal
from agent.scanning import ModeRouter, ScanService
from bench.bench_scan_durable import PtyPort, catalog
from bench.common import median, percentile, write_result
from protocol import Kind

LOCATION = "S001"
WAIT_S = 600.0


def plain_commits(directory: Path, n: int) -> list[float]:
    path = directory / "plain.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, sku TEXT NOT NULL, qty INTEGER NOT NULL)")
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (sku, qty) VALUES (?, ?)", (f"SKU-{i % 50}", 1))
        conn.execute("COMMIT")
        out.append(time.perf_counter() - t0)
    conn.close()
    return out


async def records(directory: Path, n: int) -> list[float]:
    out = []
    async with Outbox.open(directory / "record.sqlite3", agent_id="bench", location=LOCATION) as outbox:
        for i in range(n):
            m = Movement(LOCATION, f"SKU-{i % 50:05d}", Kind.RECEIVE, 1, "scanner:bench")
            t0 = time.perf_counter()
            await outbox.record([m])
            out.append(time.perf_counter() - t0)
    return out


class TimedOutbox:
    """The outbox, with when each record of each scanner returned (its movements durable)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.returned: dict[str, list[float]] = defaultdict(list)

    async def record(self, movements: Sequence[Movement], **kw: Any) -> RecordResult:
        result = await self.outbox.record(movements, **kw)
        now = time.perf_counter()
        for m in movements:
            self.returned[m.source].append(now)
        return result


def pace(port: PtyPort, frames: list[bytes], rate_per_s: float, start: float, written: list[float], seed: int) -> None:
    """Write the frames at Poisson times of ``rate_per_s`` from ``start`` (a person scanning, independent of the
    other scanner: sometimes two scans arrive together)."""
    rng = random.Random(seed)
    due = start
    for frame in frames:
        due += rng.expovariate(rate_per_s)
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        written.append(port.write(frame + b"\r\n"))


async def two_scanners(directory: Path, rate_per_s: float, seconds: float) -> dict[str, Any]:
    items, frames = catalog()
    each = [f for f in frames if f.startswith(b"]E0")][:50]  # catalogued single items: one record per scan
    for name in ("front", "back"):
        (directory / name).mkdir()
    ports = {name: PtyPort(directory / name) for name in ("front", "back")}
    sections = [
        ScannerSection(
            id=name, type="serial", mode="receive",
            device=hardware.SerialScannerConfig(reader_id=name, port=str(port.link), idle_gap_s=None),
        )
        for name, port in ports.items()
    ]  # fmt: skip
    per_scanner = int(rate_per_s * seconds)
    written: dict[str, list[float]] = {name: [] for name in ports}
    try:
        async with (
            Outbox.open(directory / "outbox.sqlite3", agent_id="bench", location=LOCATION) as outbox,
            ScanJournal.open(directory / "scans.sqlite3") as journal,
        ):
            timed = TimedOutbox(outbox)
            router = ModeRouter(timed, items, sections, location=LOCATION, journal=journal)  # type: ignore[arg-type]
            async with ScanService(sections, router, journal) as service:
                for name in ports:
                    await service.wait_status(name, available=True, timeout_s=30.0)
                start = time.perf_counter() + 0.2
                threads = [
                    threading.Thread(
                        target=pace,
                        args=(port, [each[i % len(each)] for i in range(per_scanner)], rate_per_s, start,
                              written[name], seed),
                    )
                    for seed, (name, port) in enumerate(ports.items())
                ]
                for t in threads:
                    t.start()
                await service.wait_decided(2 * per_scanner, WAIT_S)
                for t in threads:
                    t.join()
            booked = (await outbox.stats()).last_seq
    finally:
        for port in ports.values():
            port.close()
    latencies: list[tuple[float, float]] = []  # (written, latency)
    for name in ports:
        returned = timed.returned[f"scanner:{name}"]
        assert len(returned) == len(written[name]) == per_scanner, (name, len(returned), len(written[name]))
        latencies += [(w, r - w) for w, r in zip(written[name], returned, strict=True)]
    latencies.sort()
    third = len(latencies) // 3
    first = [lat for _, lat in latencies[:third]]
    last = [lat for _, lat in latencies[-third:]]
    all_lat = [lat for _, lat in latencies]
    return {
        "sent": 2 * per_scanner,
        "booked": booked,
        "p50": percentile(all_lat, 50),
        "p99": percentile(all_lat, 99),
        "first_third_p50": percentile(first, 50),
        "last_third_p50": percentile(last, 50),
    }


def inner(args: argparse.Namespace) -> None:
    results = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            root = Path(tmp)
            plain = plain_commits(root, args.n)
            rec = asyncio.run(records(root, args.n))
            scan_dir = root / "scan"
            scan_dir.mkdir()
            scans = asyncio.run(two_scanners(scan_dir, args.scan_rate, args.seconds))
            fast_dir = root / "headroom"
            fast_dir.mkdir()
            fast = asyncio.run(two_scanners(fast_dir, args.headroom_rate, args.seconds / 2))
        results.append({"plain": percentile(plain, 50), "record50": percentile(rec, 50), "record99": percentile(rec, 99),
                        **scans, "headroom": fast})  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
    print("RESULTS " + json.dumps(results), flush=True)


def outer(args: argparse.Namespace) -> None:
    strace = shutil.which("strace")
    if strace is None:
        raise SystemExit("strace is needed to delay fsync (apt-get install strace)")
    delay_us = int(args.fsync_delay_ms * 1000)
    command = [
        strace, "-f", "-qq", "--seccomp-bpf", "-o", "/dev/null", "-e", "trace=fsync,fdatasync",
        "-e", f"inject=fsync,fdatasync:delay_exit={delay_us}",
        sys.executable, "-m", "bench.bench_slow_disk", "--inner",
        "--n", str(args.n), "--runs", str(args.runs), "--scan-rate", str(args.scan_rate), "--seconds", str(args.seconds),
        "--headroom-rate", str(args.headroom_rate),
        *(["--dir", args.dir] if args.dir else []),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    sys.stderr.write(done.stderr[-4000:])
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULTS ")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"the measurement under strace failed (exit {done.returncode}):\n{done.stdout[-2000:]}")
    runs = json.loads(line[len("RESULTS ") :])
    plain = median([r["plain"] for r in runs])
    rec50, rec99 = median([r["record50"] for r in runs]), median([r["record99"] for r in runs])
    lost = sum(r["sent"] - r["booked"] for r in runs)
    first, last = median([r["first_third_p50"] for r in runs]), median([r["last_third_p50"] for r in runs])
    ms = 1e3
    rows = [
        {"measure": "record-to-durable p50 (ms)", "value": rec50 * ms, "plain FULL commit p50 (ms)": plain * ms,
         "ratio": rec50 / plain, "target": "≤ 1.2"},
        {"measure": "record-to-durable p99 (ms)", "value": rec99 * ms, "plain FULL commit p50 (ms)": "", "ratio": "", "target": ""},
        {"measure": f"two scanners × {args.scan_rate:g} scans/s, scan-to-durable p50 (ms)",
         "value": median([r["p50"] for r in runs]) * ms, "plain FULL commit p50 (ms)": "", "ratio": "", "target": ""},
        {"measure": f"two scanners × {args.scan_rate:g} scans/s, scan-to-durable p99 (ms)",
         "value": median([r["p99"] for r in runs]) * ms, "plain FULL commit p50 (ms)": "", "ratio": "", "target": ""},
        {"measure": "two scanners: p50 of the last third ÷ the first third (queue growing if ≫ 1)",
         "value": last / first, "plain FULL commit p50 (ms)": "", "ratio": "", "target": "≈ 1"},
        {"measure": "two scanners: scans lost", "value": lost, "plain FULL commit p50 (ms)": "", "ratio": "", "target": "0"},
        {"measure": f"headroom, two scanners × {args.headroom_rate:g} scans/s: p50 / p99 (ms)",
         "value": f"{median([r['headroom']['p50'] for r in runs]) * ms:.1f} / {median([r['headroom']['p99'] for r in runs]) * ms:.1f}",
         "plain FULL commit p50 (ms)": "", "ratio": "", "target": ""},
        {"measure": f"headroom, two scanners × {args.headroom_rate:g} scans/s: last third ÷ first third; lost",
         "value": f"{median([r['headroom']['last_third_p50'] / r['headroom']['first_third_p50'] for r in runs]):.2f}; "
                  f"{sum(r['headroom']['sent'] - r['headroom']['booked'] for r in runs)}",
         "plain FULL commit p50 (ms)": "", "ratio": "", "target": ""},
    ]  # fmt: skip
    write_result(
        "slow_disk",
        title=f"Slow store disk: every fsync delayed {args.fsync_delay_ms:g} ms (issue 16)",
        command="python -m bench.bench_slow_disk " + " ".join(sys.argv[1:]),
        rows=rows,
        notes=(
            f"Every fsync/fdatasync of the measuring process delayed {args.fsync_delay_ms:g} ms on return by strace's "
            f"syscall fault injection (-e inject=fsync,fdatasync:delay_exit=…), on "
            f"{os.path.realpath(args.dir or tempfile.gettempdir())}. {args.n} single-movement records and {args.n} plain "
            f"commits per run; two pseudo-terminal scanners at {args.scan_rate:g} scans/s each for {args.seconds:g} s "
            f"through the agent's scan path (catalog lookup, scan journal, outbox with synchronous=FULL); "
            f"{sum(r['sent'] for r in runs):,} scans sent over {args.runs} run(s), {sum(r['booked'] for r in runs):,} booked. "
            f"Median of {args.runs} runs."
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--fsync-delay-ms", type=float, default=5.0)
    parser.add_argument("--n", type=int, default=300, help="records and plain commits per run")
    parser.add_argument("--scan-rate", type=float, default=20.0, help="scans per second per scanner")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the two-scanner run")
    parser.add_argument("--headroom-rate", type=float, default=80.0,
                        help="scans per second per scanner in the headroom run (half as long)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args)
    else:
        outer(args)


if __name__ == "__main__":
    main()
