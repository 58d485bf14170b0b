"""The POS store during a large import: peak WAL, what a kept checkpoint holds, and what a resume costs.

    python -m bench.bench_pos_store --rows 1000000 [--append 100000]

One Square export (bench.bench_pos_import's generator) is imported into a fresh
outbox and POS store as the drop folder imports it (the checkpoint kept for the
filed copy), with the store's ``-wal`` file sampled every 20 ms; then the
export's next ``--append`` rows (1 by default) are appended and the import goes
on from that checkpoint, timed in its parts (the scan, which hashes the file and
its prefix, and the rest). ``summary_kib`` is the summary of occurrence counts
the checkpoint kept, and ``alike_chance`` the chance that one of the rows
appended has the fingerprint of a row read before (then the file is read again
from its first line: ``resume_reread``). Prints JSON; writes no results file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from bench.bench_pos_import import generate


async def _run(tmp: Path, rows: int, append: int) -> dict[str, float]:
    from agent.outbox import Outbox
    from agent.pos import PosImportConfig, PosImporter, PosStore, occurrences
    from agent.pos import importer as importer_module

    export = tmp / "square.csv"
    whole = tmp / "whole.csv"
    generate(whole, rows + append)  # the same rows, in the same order, and ``append`` more
    with whole.open("rb") as src, export.open("wb") as dst:
        for _ in range(rows + 1):
            dst.write(src.readline())
        appended = src.read()
    whole.unlink()
    config = PosImportConfig()
    outbox_path = tmp / "outbox.sqlite3"
    store_path = config.store_path_for(outbox_path)
    wal = Path(f"{store_path}-wal")
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], wal.stat().st_size)
            except FileNotFoundError:
                pass
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out: dict[str, float] = {"rows": rows, "file_mib": round(export.stat().st_size / (1 << 20), 1)}
    async with (
        Outbox.open(outbox_path, agent_id="bench", location="S001", synchronous="normal") as outbox,
        PosStore.open(store_path) as store,
    ):
        importer = PosImporter(outbox, store, config)
        started = time.perf_counter()
        report = await importer.import_file(export, keep_checkpoint=True)
        out["import_s"] = round(time.perf_counter() - started, 2)
        stop.set()
        sampler.join()
        out["peak_wal_mib"] = round(peak[0] / (1 << 20), 2)
        with sqlite3.connect(store_path) as db:
            kept = db.execute("SELECT coalesce(sum(length(packed)), 0) FROM checkpoint_counts").fetchone()[0]
            kept += db.execute("SELECT coalesce(sum(length(state)), 0) FROM checkpoints").fetchone()[0]
            summary = db.execute("SELECT coalesce(sum(length(packed)), 0) FROM checkpoint_counts").fetchone()[0]
        out["checkpoint_kept_mib"] = round(kept / (1 << 20), 2)
        out["summary_kib"] = round(summary / 1024, 1)
        width = occurrences._FINGERPRINT_BYTES
        out["fingerprint_bytes"] = width
        out["alike_chance"] = float(f"{1 - (1 - rows / 2 ** (8 * width)) ** append:.2g}")
        out["store_mib"] = round(store_path.stat().st_size / (1 << 20), 2)
        with export.open("ab") as f:
            f.write(appended)
        timed: dict[str, float] = {}
        scan = importer_module.scan_file

        def timed_scan(*a: object, **kw: object) -> object:
            t = time.perf_counter()
            try:
                return scan(*a, **kw)  # type: ignore[arg-type]
            finally:
                timed["scan_s"] = time.perf_counter() - t

        importer_module.scan_file = timed_scan  # type: ignore[assignment]
        parse = importer_module._FileParse
        opened = parse.open
        opens = [0]

        def counted_open(inner: importer_module._FileParse) -> object:
            opens[0] += 1
            return opened(inner)

        parse.open = counted_open  # type: ignore[method-assign,assignment]
        started = time.perf_counter()
        again = await importer.import_file(export, keep_checkpoint=True, go_on_from=report.import_id)
        out["resume_s"] = round(time.perf_counter() - started, 2)
        out["resume_scan_s"] = round(timed.get("scan_s", 0.0), 2)
        out["resume_recorded"] = again.recorded_now
        out["resume_reread"] = opens[0] > 1  # read again from its first line
        importer_module.scan_file = scan
        parse.open = opened  # type: ignore[method-assign]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--append", type=int, default=1, help="rows appended before the import goes on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pos-store-") as tmp:
        print(json.dumps(asyncio.run(_run(Path(tmp), args.rows, args.append))))


if __name__ == "__main__":
    main()
