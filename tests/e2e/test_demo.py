"""The README's demo command works: hub, agent, simulated scanner and POS export all reach the hub.

The demo runs as ``make demo`` runs it, until Ctrl-C: the test sends SIGINT once every source has reached the hub
and the counts line shows the POS export's products, so the demo lasts only as long as that takes.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hub.demo import DemoError, _handheld_port
from tests.harness.net import free_port, wait_until

DEMO_BOUND_S = 120  # --duration: the demo ends by itself then, should the test never get to press Ctrl-C
ARRIVAL_WAIT_S = 90.0  # the scanner starts 3 s in and scans every 1.5 s; a loaded machine starts the agent slowly
STOP_WAIT_S = 60.0


def _arrived(db: Path) -> tuple[dict[str, int], list[tuple[int]]]:
    """Events per source at the hub, and the quantities of the scanned case of MUG-WHITE."""
    if not db.exists():
        return {}, []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            sources = dict(conn.execute("SELECT source, count(*) FROM events GROUP BY source").fetchall())
            case = conn.execute(
                "SELECT qty FROM events WHERE source = 'scanner:backdoor' AND sku = 'MUG-WHITE'"
            ).fetchall()
    except sqlite3.OperationalError:  # the hub has not made its tables yet
        return {}, []
    return sources, case


def _every_source_arrived(db: Path) -> bool:
    sources, case = _arrived(db)
    pos = any(src.startswith("pos:") for src in sources)
    return sources.get("api:simulate", 0) > 0 and sources.get("scanner:backdoor", 0) >= 2 and pos and (12,) in case


def test_demo_runs_and_every_source_reaches_the_hub(tmp_path: Path) -> None:
    port = free_port()
    db, out_path, err_path = tmp_path / "demo" / "hub.db", tmp_path / "demo.out", tmp_path / "demo.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub.demo", "--dir", str(tmp_path / "demo"), "--port", str(port),
             "--duration", str(DEMO_BOUND_S), "--movements", "100"],
            stdout=out, stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip

    def shown() -> bool:
        assert proc.poll() is None, f"the demo ended early: {err_path.read_text()}"
        return _every_source_arrived(db) and "COFFEE-250G" in out_path.read_text()

    try:
        wait_until("every source reaches the hub and the counts line shows the POS export", shown, ARRIVAL_WAIT_S)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=STOP_WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_WAIT_S)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 0, stderr
    assert "STORE-1 on hand: " in stdout and "COFFEE-250G" in stdout
    handheld = re.search(r"^  handheld: +http://127\.0\.0\.1:(\d+)/ ", stdout, re.MULTILINE)
    assert handheld is not None and int(handheld.group(1)) != port, stdout  # the hub's + 1, or a free one if taken
    sources, case = _arrived(db)
    assert sources.get("api:simulate", 0) > 0
    assert sources.get("scanner:backdoor", 0) >= 2
    assert any(src.startswith("pos:") for src in sources)
    assert (12,) in case  # the GTIN-14 case counted as its pack of 12
    # Found: the demo wrote its agent's token and its reader credential under the umask (0644), beside a hub.db the
    # hub makes 0600; the folder and the files holding a credential are the owner's alone.
    work = tmp_path / "demo"
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    for secret in ("agent.toml", "reader.token"):
        assert stat.S_IMODE((work / secret).stat().st_mode) == 0o600, secret


def test_the_handheld_page_takes_the_port_after_the_hubs_or_a_free_one_when_that_is_taken() -> None:
    with socket.socket() as hub, socket.socket() as taken:
        hub.bind(("127.0.0.1", 0))
        port = hub.getsockname()[1]
        try:
            taken.bind(("127.0.0.1", port + 1))
        except OSError:  # another program has it already: taken either way
            pass
        chosen = _handheld_port(port, None)
        assert chosen not in (0, port, port + 1)  # taken: a free one, which the banner prints
        with pytest.raises(DemoError, match=f"cannot use port {port + 1} on 127.0.0.1 for the handheld page"):
            _handheld_port(port, port + 1)  # asked for and taken: one sentence
    with pytest.raises(DemoError, match="cannot share port"):  # the hub's port, free again as the demo left it
        _handheld_port(port, port)
    assert _handheld_port(65535, None) != 0  # no port after 65535: a free one
