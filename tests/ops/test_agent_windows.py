"""The agent's core as on a Windows store PC: no termios, fcntl, pwd, grp or resource, no SIGHUP, an event loop
that cannot watch signals (tests/ops/packaging_blockers.py --windows) — against a real hub on 127.0.0.1.

What it runs there: every module imports; ``run`` records (simulator), replicates, serves the local API for
handhelds and keeps going while its POSIX-only scanner readers say in one sentence why they cannot open; a
POS export is imported by hand; ``status`` answers; Ctrl+C stops it gracefully."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.localapi.auth import hash_pin
from hardware.serial_scanner import NO_PYSERIAL
from hardware.wedge import NO_EVDEV
from tests.faults.helpers import hub_events, outbox_events, wait_until
from tests.harness.agent_process import AgentProcess
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port

ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 60.0
WAIT_S = 60.0
SIMULATED = 20
IMPORTED = 5  # of the export below: 6 rows, one quarantined


def pos_export(path: Path) -> Path:
    """A generic POS export of the last hour (an older one would be held in the hub's clock quarantine)."""
    hour_ago = datetime.now(UTC).replace(microsecond=0, tzinfo=None) - timedelta(hours=1)
    rows = [("MUG-01", 24, "receive", "PO-77"), ("MUG-01", 1, "sale", "R-1"), ("MUG-02", 1, "sale", "R-2"),
            ("MUG-01", 20, "count", "CS-1"), ("MUG-01", -2, "adjust", ""), ("MUG-01", 1, "teleport", "")]  # fmt: skip
    lines = ["date,sku,qty,kind,ref,location"]
    lines += [f"{(hour_ago + timedelta(minutes=i)).isoformat()},{sku},{qty},{kind},{ref},S001" for i, (sku, qty, kind, ref) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def as_on_windows(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.ops.packaging_blockers", "--windows", *args]


def run(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFSYNC_AGENT_")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        as_on_windows(*args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=ROOT, env=env
    )


def test_the_blocker_is_real(tmp_path: Path) -> None:
    """Control: under it, what Windows lacks is missing (else the tests below prove nothing)."""
    for module in ("termios", "fcntl", "pwd", "grp", "resource"):
        done = run("-m", module)
        assert done.returncode != 0 and f"No module named '{module}'" in done.stderr, module
    (tmp_path / "probe_windows.py").write_text(
        "import asyncio, signal\n"
        "print(hasattr(signal, 'SIGHUP'))\n"
        "loop = asyncio.new_event_loop()\n"
        "try:\n    loop.add_signal_handler(signal.SIGTERM, print)\nexcept NotImplementedError:\n    print('refused')\n"
    )
    assert run("-m", "probe_windows", pythonpath=tmp_path).stdout.split() == ["False", "refused"]


def test_every_agent_module_imports_without_the_posix_only_modules() -> None:
    done = run("--import-all", "protocol,hardware,agent", "-m", "agent", "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("shelfsync-agent ")


def test_the_core_runs_records_replicates_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub.log", db=tmp_path / "hub.db", port=free_port())
    try:
        issued = subprocess.run(
            [sys.executable, "-m", "hub", "agent", "add", "--db", hub.db, "--location", "S001", "--id", "store-w",
             "--hub-url", hub.url],
            capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=ROOT, check=True,
        ).stdout  # fmt: skip
        token = tomllib.loads(issued)["agent"]["token"]
        hub.start()
        api_port = free_port()
        config = tmp_path / "store" / "agent.toml"
        config.parent.mkdir()
        config.write_text(
            f"""[agent]
id = "store-w"
location = "S001"
token = "{token}"
hub_url = "{hub.url}"

[replicator]
tick_s = 0.2
retry_base_s = 0.05
retry_max_s = 0.5

[simulate]
count = {SIMULATED}
rate_per_s = 0

[localapi]
enabled = true
port = {api_port}

[localapi.staff]
anna = "{hash_pin('2468')}"

[[scanner]]
id = "backdoor"
type = "serial"
port = "COM3"
mode = "receive"

[[scanner]]
id = "desk"
type = "wedge"
device = "/dev/input/by-id/usb-scanner-event-kbd"
mode = "damage"
""",
            encoding="utf-8",
        )
        log_path = tmp_path / "agent.log"
        agent = AgentProcess(config, log_path, cwd=ROOT, python=as_on_windows())
        try:
            imported = run("-m", "agent", "import", "--config", str(config), "--no-progress", str(pos_export(tmp_path / "sales.csv")))
            assert imported.returncode == 3, imported.stderr  # imported, one row quarantined
            assert f"{IMPORTED} imported" in imported.stdout

            outbox = config.parent / "outbox.sqlite3"
            wait_until("the outbox", outbox.exists, WAIT_S)
            wait_until(
                "every movement at the hub",
                lambda: len(outbox_events(outbox)) == SIMULATED + IMPORTED
                and set(hub_events(Path(hub.db))) == set(outbox_events(outbox)),
                WAIT_S,
            )
            with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=5) as resp:
                assert json.loads(resp.read())["agent_id"] == "store-w"

            wait_until("a status that shows all well", lambda: run("-m", "agent", "status", "--config", str(config)).returncode == 0, WAIT_S)
            report = json.loads(run("-m", "agent", "status", "--config", str(config), "--json").stdout)
            assert (report["backlog"], report["sync_state"], report["agent_running"]) == (0, "ok", True)
            readers = {r["reader_id"]: r for r in report["scanners"]}
            assert readers["desk"]["available"] is False and readers["desk"]["error"] == NO_EVDEV
            # pyserial itself loads on Windows; here its POSIX half cannot, and the reader says that in one sentence
            assert readers["backdoor"]["available"] is False
            assert readers["backdoor"]["error"].startswith("serial scanners need pyserial, which cannot be loaded")
            assert NO_PYSERIAL is None  # outside the blocker, pyserial loads

            assert agent.stop(signal.SIGINT) == 0  # Ctrl+C: what a service manager (NSSM) sends to stop it
        finally:
            agent.kill()
        log = log_path.read_text()
        assert "Agent store-w stopped; 0 events wait for the hub in the outbox." in log
        assert "Traceback" not in log
        assert run("-m", "agent", "status", "--config", str(config)).returncode == 3  # not running any more
    finally:
        hub.close()
