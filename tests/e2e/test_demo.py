"""The README's demo command works: hub, agent, simulated scanner and POS export all reach the hub."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.e2e.procs import free_port

DEMO_SECONDS = 20  # the scanner starts 3 s in and scans every 1.5 s; a loaded machine starts the agent slowly


def test_demo_runs_and_every_source_reaches_the_hub(tmp_path: Path) -> None:
    port = free_port()
    while port + 1 > 65535:
        port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "hub.demo", "--dir", str(tmp_path / "demo"), "--port", str(port),
         "--duration", str(DEMO_SECONDS), "--movements", "100"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "STORE-1 on hand: " in done.stdout and "COFFEE-250G" in done.stdout
    assert f"http://127.0.0.1:{port + 1}/" in done.stdout  # the handheld page
    with sqlite3.connect(tmp_path / "demo" / "hub.db") as db:
        sources = dict(db.execute("SELECT source, count(*) FROM events GROUP BY source").fetchall())
        case = db.execute(
            "SELECT qty FROM events WHERE source = 'scanner:backdoor' AND sku = 'MUG-WHITE'"
        ).fetchall()
    assert sources.get("api:simulate", 0) > 0
    assert sources.get("scanner:backdoor", 0) >= 2
    assert any(src.startswith("pos:") for src in sources)
    assert (12,) in case  # the GTIN-14 case counted as its pack of 12
