"""A stop signal at any moment of the hub's start-up stops it cleanly, store closed, exit 0."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.harness.hub_process import HubProcess
from tests.harness.net import wait_until

WAIT_S = 30.0


def test_sigterm_while_zeroconf_starts_closes_the_store_and_exits_0(tmp_path: Path) -> None:
    # Zeroconf takes a second or two to announce; SIGTERM right after "hub listening" used to land before
    # the signal handlers were installed and kill the hub with its database open (exit -15).
    config = tmp_path / "hub.toml"
    config.write_text("[hub]\nadvertise = true\nshutdown_timeout_s = 1.0\n")
    hub = HubProcess(tmp_path / "hub.log", "--config", str(config), db=tmp_path / "hub.db", port=0)
    try:
        hub.spawn()
        wait_until("the hub says it listens", lambda: "hub listening on" in hub.run_log, WAIT_S)
        assert "Announcing hub" not in hub.run_log  # still inside the window the fix closes
        code = hub.stop(signal.SIGTERM)
    finally:
        hub.close()
    assert code == 0, hub.run_log
    assert "hub stopped; the database is closed" in hub.run_log
