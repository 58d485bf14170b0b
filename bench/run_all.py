"""Run every benchmark script in bench/, then rewrite docs/benchmarks.md (``bench.report``).

    python -m bench.run_all                 # modest sizes: a few minutes each (what `make bench` runs)
    python -m bench.run_all --full          # the sizes the issues name: an hour or more
    python -m bench.run_all --only bench_catchup soak

Each script runs in a process of its own, one after the other (they measure
the machine; running two at once would measure each other). A script found in
bench/ that is not in ``PLANS`` runs with its own defaults. The PostgreSQL
benchmarks run only when a server answers on 127.0.0.1:5432 (``.ci/start-postgres``
starts one). One failing script does not stop the others; the exit status is 1
if any failed.

The full-size flags (``--full`` passes none: each script's defaults are the full size):

    bench_record           --n 2000 --runs 5
    bench_ingest           --agents 8 --batches 25 --runs 5
    bench_pos_import       --sizes 100000 300000 1000000
    bench_scanner          --frames 20000
    bench_scan_durable     --scans 2000 --latency-scans 500 --runs 3
    bench_catchup          --events 1000000 --runs 3
    bench_eventsourcing    --n 2000 --runs 3
    soak                   --stores 100 --minutes 10
    bench_slow_disk        --runs 3 --seconds 30
    bench_channels         --seconds 60 --runs 3 --burst 10000 --burst-skus 500
    bench_pg_ingest        --agents 8 --batches 25 --runs 3 --hubs 1 2
    bench_pg_scaling       --hubs 1 2 4 --agents 8 --batches 25 --runs 3
    bench_pg_reads         --events 10000000 --locations 100 --skus 5000
    bench_upgrade          --events 2000000 --runs 3
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SCRIPT_TIMEOUT_S = 3 * 3600
PG_ADDRESS = ("127.0.0.1", 5432)


@dataclass(frozen=True, slots=True)
class Plan:
    modest: tuple[str, ...]  # arguments for the quick run; the full run passes none (the defaults)
    needs_postgres: bool = False


PLANS: dict[str, Plan] = {
    "bench_record": Plan(("--n", "1000", "--runs", "3")),
    "bench_ingest": Plan(("--agents", "8", "--batches", "25", "--runs", "5")),  # the size: ~2 min
    "bench_pos_import": Plan(("--sizes", "100000")),
    "bench_scanner": Plan(("--frames", "5000")),
    "bench_scan_durable": Plan(("--scans", "1000", "--latency-scans", "200", "--runs", "2")),
    "bench_catchup": Plan(("--events", "1000000", "--runs", "3")),  # the size, the baseline on the same million: ~5 min
    "bench_eventsourcing": Plan(("--n", "1000", "--runs", "3")),
    "soak": Plan(("--stores", "20", "--minutes", "1")),
    "bench_slow_disk": Plan(("--runs", "1", "--seconds", "15")),
    "bench_channels": Plan(("--seconds", "20", "--runs", "2", "--burst", "2000", "--burst-skus", "200", "--naive-max-s", "30")),
    "bench_pg_ingest": Plan(("--agents", "8", "--batches", "5", "--runs", "3"), needs_postgres=True),
    "bench_pg_scaling": Plan(("--batches", "5", "--runs", "2"), needs_postgres=True),
    "bench_pg_reads": Plan(("--events", "200000", "--locations", "20", "--skus", "500", "--samples", "100"), needs_postgres=True),
    "bench_upgrade": Plan(("--events", "500000", "--runs", "3"), needs_postgres=True),
}  # fmt: skip


def scripts() -> list[str]:
    """Every benchmark script in bench/: bench_*.py and soak.py, planned ones first in PLANS order."""
    found = {p.stem for p in BENCH_DIR.glob("bench_*.py")} | ({"soak"} if (BENCH_DIR / "soak.py").exists() else set())
    return [name for name in PLANS if name in found] + sorted(found - set(PLANS))


def postgres_up() -> bool:
    try:
        with socket.create_connection(PG_ADDRESS, timeout=1.0):
            return True
    except OSError:
        return False


def run(name: str, args: tuple[str, ...]) -> bool:
    command = [sys.executable, "-m", f"bench.{name}", *args]
    print(f"\n=== {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    try:
        code = subprocess.run(command, cwd=ROOT, timeout=SCRIPT_TIMEOUT_S, check=False).returncode
    except subprocess.TimeoutExpired:
        print(f"=== {name} did not finish within {SCRIPT_TIMEOUT_S} s", flush=True)
        return False
    print(f"=== {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
    return code == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the sizes the issues name (each script's defaults)")
    parser.add_argument("--only", nargs="+", metavar="SCRIPT", help="run only these (e.g. bench_catchup soak)")
    args = parser.parse_args()
    names = scripts()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"no benchmark script {', '.join(unknown)} in bench/; there are {', '.join(names)}")
        names = [n for n in names if n in args.only]
    pg = postgres_up()
    failed: list[str] = []
    skipped: list[str] = []
    for name in names:
        plan = PLANS.get(name)
        if plan is not None and plan.needs_postgres and not pg:
            skipped.append(name)
            print(f"\n=== {name} skipped: no PostgreSQL answers on {PG_ADDRESS[0]}:{PG_ADDRESS[1]}", flush=True)
            continue
        if plan is None:
            print(f"\n=== {name} is not in bench.run_all.PLANS: running it with its own defaults", flush=True)
        if not run(name, () if args.full or plan is None else plan.modest):
            failed.append(name)
    subprocess.run([sys.executable, "-m", "bench.report"], cwd=ROOT, check=True)
    if skipped:
        print(f"skipped (no PostgreSQL): {', '.join(skipped)}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)
    print("every benchmark ran")


if __name__ == "__main__":
    main()
