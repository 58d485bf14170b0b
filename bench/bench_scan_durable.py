"""Scan to durable: one serial reader (a pty) through decode, catalog lookup and the outbox (synchronous=FULL).

The agent's real path is measured: ``ScanService`` reading a ``SerialScanner``
on a pseudo-terminal, journaling each raw scan, decoding it, routing it through
``ModeRouter`` (catalog lookup, pack size, GS1 attrs) and ``Outbox.record()``
with ``synchronous = FULL``, then journaling the outcome.

- sustained scans/s: N frames written to the pty master as fast as the kernel
  takes them; from the first byte written to the Nth scan decided;
- scan-to-durable latency: one frame at a time, from the moment its last byte
  is written to the pty master to the moment ``Outbox.record()`` returns
  (the movement is committed and fsynced); p50 / p99;
- for comparison, in the same run on the same disk: ``Outbox.record()`` of one
  movement alone (p50), i.e. what the scan path adds on top of the commit.

A pty has no baud rate: a real scanner at 115200 baud sends at most ~500
twenty-byte frames per second, and a person scans ~1 per second.

    python -m bench.bench_scan_durable [--scans 2000] [--latency-scans 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pty
import tempfile
import threading
import time
import tty
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hardware
from agent.catalog import Catalog, CatalogItem
from agent.config import ScannerSection
from agent.outbox import Movement, Outbox, RecordResult
from agent.scan_journal import ScanJournal
from agent.scanning import ModeRouter, ScanService
from bench.common import median, percentile, write_result
from protocol import Kind

LOCATION = "S001"
CATALOG_ITEMS = 10_000
WAIT_S = 600.0


def check_digit(body: str) -> str:
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


def gtin(body: str) -> str:
    return body + check_digit(body)


def catalog() -> tuple[Catalog, list[bytes]]:
    """A 10,000-item catalog (each/case pairs) and a mix of frames: each, case, GS1 with lot/expiry, unknown, text."""
    items: list[CatalogItem] = []
    for i in range(CATALOG_ITEMS // 2):
        each = gtin(f"590{i:09d}")
        items.append(CatalogItem("0" + each, f"SKU-{i:05d}"))
        items.append(CatalogItem(gtin("1" + each[:-1]), f"SKU-{i:05d}", 12))
    frames = []
    for i in range(64):
        each = gtin(f"590{i * 71:09d}")
        case = gtin("1" + each[:-1])
        frames.append(f"]E0{each}".encode())
        frames.append(f"]I1{case}".encode())
        frames.append(f"]C101{case}1727123110LOT-{{i:04d}}".format(i=i).encode())
    frames.append(f"]E0{gtin('400638133393')}".encode())  # not in the catalog: booked as unknown
    frames.append(b"]C0TOTE-00731")
    return Catalog(items), frames


class TimedOutbox:
    """The outbox, with the moment each ``record()`` returned (the movement durable)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.returned: list[float] = []

    async def record(self, movements: Sequence[Movement], **kw: Any) -> RecordResult:
        result = await self.outbox.record(movements, **kw)
        self.returned.append(time.perf_counter())
        return result


class PtyPort:
    def __init__(self, directory: Path) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.link = directory / "usb-Bench_Scanner-if00"
        self.link.symlink_to(os.ttyname(self.slave))

    def write(self, data: bytes) -> float:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view[:65536]) :]
        return time.perf_counter()

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


async def one_run(directory: Path, scans: int, latency_scans: int) -> dict[str, Any]:
    items, frames = catalog()
    port = PtyPort(directory)
    device = hardware.SerialScannerConfig(reader_id="bench", port=str(port.link), idle_gap_s=None)
    section = ScannerSection(id="bench", type="serial", mode="receive", device=device)
    try:
        async with (
            Outbox.open(
                directory / "outbox.sqlite3", agent_id="bench-agent", location=LOCATION, synchronous="full"
            ) as outbox,
            ScanJournal.open(directory / "scans.sqlite3") as journal,
        ):
            timed = TimedOutbox(outbox)
            router = ModeRouter(timed, items, [section], location=LOCATION, journal=journal)  # type: ignore[arg-type]
            async with ScanService([section], router, journal) as service:
                await service.wait_status("bench", available=True, timeout_s=30.0)
                # warm-up: first transactions, page cache, code paths
                port.write(b"".join(f + b"\r\n" for f in frames[:20]))
                await service.wait_decided(20, WAIT_S)

                # sustained throughput: everything at once, from a writer thread
                blob = b"".join(frames[i % len(frames)] + b"\r\n" for i in range(scans))
                base = service.outcomes
                started = time.perf_counter()
                writer = threading.Thread(target=port.write, args=(blob,))
                writer.start()
                await service.wait_decided(base + scans, WAIT_S)
                elapsed = time.perf_counter() - started
                writer.join()

                # latency: one frame at a time, idle reader
                latencies: list[float] = []
                for i in range(latency_scans):
                    before = len(timed.returned)
                    target = service.outcomes + 1
                    written = port.write(frames[i % len(frames)] + b"\r\n")
                    await service.wait_decided(target, WAIT_S)
                    assert len(timed.returned) == before + 1
                    latencies.append(timed.returned[-1] - written)
            booked = (await outbox.stats()).last_seq

            # the commit alone, same file, same disk
            alone: list[float] = []
            for i in range(latency_scans):
                m = Movement(LOCATION, f"SKU-{i % 50:05d}", Kind.RECEIVE, 1, "scanner:bench")
                t0 = time.perf_counter()
                await outbox.record([m])
                alone.append(time.perf_counter() - t0)
    finally:
        port.close()
    assert booked == 20 + scans + latency_scans, f"{booked} events booked"
    return {
        "rate": scans / elapsed,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "alone50": percentile(alone, 50),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scans", type=int, default=2000, help="frames per throughput run")
    parser.add_argument("--latency-scans", type=int, default=500, help="frames per latency run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir)")
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            r = asyncio.run(one_run(Path(tmp), args.scans, args.latency_scans))
        results.append(r)
        print(
            f"run {run + 1}: {r['rate']:,.0f} scans/s sustained; scan-to-durable p50 {r['p50'] * 1e3:.2f} ms "
            f"p99 {r['p99'] * 1e3:.2f} ms; record() alone p50 {r['alone50'] * 1e3:.2f} ms"
        )
    rate = median([r["rate"] for r in results])
    p50, p99 = median([r["p50"] for r in results]), median([r["p99"] for r in results])
    alone = median([r["alone50"] for r in results])
    write_result(
        "scan_durable",
        title="Scan to durable: one serial reader (pty) into the outbox, synchronous=FULL",
        command=f"python -m bench.bench_scan_durable --scans {args.scans} --latency-scans {args.latency_scans} --runs {args.runs}",
        rows=[
            {"measure": "sustained scans/s (decode, catalog, record, journal)", "value": round(rate, 1)},
            {
                "measure": "scan-to-durable p50 (ms)",
                "value": round(p50 * 1e3, 3),
                "Outbox.record() alone p50 (ms)": round(alone * 1e3, 3),
                "ratio": round(p50 / alone, 2),
            },
            {"measure": "scan-to-durable p99 (ms)", "value": round(p99 * 1e3, 3)},
        ],
        notes=(
            f"{args.scans} frames per throughput run, {args.latency_scans} one-at-a-time frames for latency, "
            f"median of {args.runs} runs; catalog of {CATALOG_ITEMS:,} items; each scan is one outbox transaction "
            f"(fsync) plus two scan-journal writes (synchronous=NORMAL); on {os.path.realpath(args.dir or tempfile.gettempdir())}. "
            "A pty has no baud rate: this is the software ceiling."
        ),
    )


if __name__ == "__main__":
    main()
