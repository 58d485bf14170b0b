"""Scans per second, sustained, from one serial reader over a pseudo-terminal.

A writer thread pushes N frames into the pty's master side as fast as the
kernel takes them; one SerialScanner reads the slave side, frames the bytes,
and every scan is decoded (GTIN / GS1 / RCN / text mix). Reported:

- read+decode: frames per second from the first byte written to the last scan decoded;
- read only: the same without decode(), to show what framing costs;
- decode only: decode() over the same frames in memory, no I/O.

A pty has no baud rate, so this is the software ceiling: a real scanner at
115200 baud delivers at most ~500 twenty-byte frames per second, at 9600
baud ~45.

    python bench/bench_scanner.py --frames 20000 --json bench-scanner.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import pty
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hardware import GS, DecodeError, SerialScanner, SerialScannerConfig, decode

FRAMES = [
    b"]E05901234123457",
    b"]E496385074",
    ("]C10109501101530003172612311010BATCH-0042" + GS + "21SN00017").encode(),
    b"]E02012345102989",
    b"]C0TOTE-00731",
    ("]d2010950110153000317270630" + "10L4477" + GS + "21XK9Q2").encode(),
    b"]I110950110153004",
    b"]Q30109501101530003" + b"3103001250",
]
RCN_REGION = "gb"
WAIT_S = 120.0


def frames(count: int) -> list[bytes]:
    return [FRAMES[i % len(FRAMES)] for i in range(count)]


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:65536]) :]


async def run_reader(count: int, *, decode_each: bool) -> dict[str, Any]:
    master, slave = pty.openpty()
    tty.setraw(slave)
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "usb-bench-scanner-if00"
        link.symlink_to(os.ttyname(slave))
        available = asyncio.Event()
        config = SerialScannerConfig(reader_id="bench", port=str(link), baudrate=115200)  # default 50 ms idle gap on
        payload = b"".join(frame + b"\r\n" for frame in frames(count))
        errors = 0
        async with SerialScanner(config, on_status=lambda s: available.set() if s.available else None) as scanner:
            await asyncio.wait_for(available.wait(), 10)
            writer = threading.Thread(target=write_all, args=(master, payload), daemon=True)
            started = time.perf_counter()
            writer.start()
            received = 0
            async with asyncio.timeout(WAIT_S):
                async for scan in scanner.scans():
                    if decode_each:
                        try:
                            decode(scan.text, rcn_region=RCN_REGION)
                        except DecodeError:
                            errors += 1
                    received += 1
                    if received == count:
                        break
            elapsed = time.perf_counter() - started
            writer.join(10)
    os.close(master)
    os.close(slave)
    return {
        "frames": count,
        "bytes": len(payload),
        "seconds": round(elapsed, 3),
        "frames_per_s": round(count / elapsed),
        "decode_errors": errors,
    }


def run_decode_only(count: int) -> dict[str, Any]:
    texts = [f.decode() for f in frames(count)]
    started = time.perf_counter()
    for text in texts:
        decode(text, rcn_region=RCN_REGION)
    elapsed = time.perf_counter() - started
    return {"frames": count, "seconds": round(elapsed, 3), "frames_per_s": round(count / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000, help="frames to push (default 20000)")
    parser.add_argument("--json", type=Path, help="also write the result here as JSON")
    args = parser.parse_args()

    result: dict[str, Any] = {
        "bench": "scanner",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "read_and_decode": asyncio.run(run_reader(args.frames, decode_each=True)),
        "read_only": asyncio.run(run_reader(args.frames, decode_each=False)),
        "decode_only": run_decode_only(args.frames),
    }
    print("| measure | frames | seconds | frames/s |")
    print("|---|---|---|---|")
    for key in ("read_and_decode", "read_only", "decode_only"):
        row = result[key]
        print(f"| {key.replace('_', ' ')} | {row['frames']} | {row['seconds']} | {row['frames_per_s']} |")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
