"""The POS store during a large import: peak WAL, what a kept checkpoint holds, and what a resume costs.

    python -m bench.bench_pos_store --rows 1000000

One Square export (bench.bench_pos_import's generator) is imported into a fresh
outbox and POS store as the drop folder imports it (the checkpoint kept for the
filed copy), with the store's ``-wal`` file sampled every 20 ms; then one row is
appended and the import goes on from that checkpoint, timed in its parts (the
scan, which hashes the file and its prefix, and the rest). Prints JSON; writes
no results file.
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


async def _run(tmp: Path, rows: int) -> dict[str, float]:
    from agent.outbox import Outbox
    from agent.pos import PosImportConfig, PosImporter, PosStore
    from agent.pos import importer as importer_module

    export = tmp / "square.csv"
    generate(export, rows)
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
        out["checkpoint_kept_mib"] = round(kept / (1 << 20), 2)
        out["store_mib"] = round(store_path.stat().st_size / (1 << 20), 2)
        with export.open("rb") as f:
            f.seek(-300, 2)
            last = f.read().splitlines()[-1]
        with export.open("ab") as f:
            f.write(last.replace(b"Payment", b"Payment").replace(b",Counter,tok-", b",Counter,tok-x") + b"\r\n")
        timed: dict[str, float] = {}
        scan = importer_module.scan_file

        def timed_scan(*a: object, **kw: object) -> object:
            t = time.perf_counter()
            try:
                return scan(*a, **kw)  # type: ignore[arg-type]
            finally:
                timed["scan_s"] = time.perf_counter() - t

        importer_module.scan_file = timed_scan  # type: ignore[assignment]
        started = time.perf_counter()
        again = await importer.import_file(export, keep_checkpoint=True, go_on_from=report.import_id)
        out["resume_s"] = round(time.perf_counter() - started, 2)
        out["resume_scan_s"] = round(timed.get("scan_s", 0.0), 2)
        out["resume_recorded"] = again.recorded_now
        importer_module.scan_file = scan
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pos-store-") as tmp:
        print(json.dumps(asyncio.run(_run(Path(tmp), args.rows))))


if __name__ == "__main__":
    main()
