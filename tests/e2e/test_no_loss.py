"""Issue 2's promise end to end: nothing lost, nothing counted twice.

A real agent process records 5,000 simulated movements while the hub (a real
process on 127.0.0.1) is stopped and restarted twice and the agent itself is
SIGKILLed at random moments twelve times. Afterwards the hub's ledger holds
each event exactly once, every movement the agent acknowledged is in it, and
the counts equal the expected sums exactly.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

from agent.simulate import SOURCE, simulated_movement
from tests.harness.agent_process import AgentProcess, write_agent_config
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json

LOCATION = "STORE-1"
SKUS = ("SKU-A", "SKU-B", "SKU-C", "SKU-D")
TOTAL = 5_000
SEED = 11
KILLS = 12
RATE_PER_S = 500  # while the agent is killed again and again
DRAIN_TIMEOUT_S = 120.0


def test_agent_and_hub_crashes_lose_nothing_and_count_nothing_twice(tmp_path: Path) -> None:
    rng = random.Random(2026)
    hub_db = tmp_path / "hub.db"
    cred = add_credential(hub_db, LOCATION)
    hub = HubProcess(tmp_path / "hub.log", db=hub_db, port=free_port())
    config = write_agent_config(
        tmp_path / "agent.toml", cred=cred, location=LOCATION, hub_url=hub.url,
        extra=f"[simulate]\ncount = {TOTAL}\nrate_per_s = {RATE_PER_S}\nseed = {SEED}\nskus = {json.dumps(SKUS)}\n",
    )
    printed: list[str] = []
    hub.start()
    try:
        for run in range(KILLS):
            if run in (3, 8):
                hub.stop(signal.SIGKILL if run == 3 else signal.SIGTERM)  # one crash, one clean stop
            if run in (5, 10):
                hub.start()
            agent = AgentProcess(config, tmp_path / "agent.log", printed)
            time.sleep(rng.uniform(0.4, 1.4))
            assert agent.alive(), f"agent died on its own; see {tmp_path / 'agent.log'}"
            agent.kill()

        acked_before_last_run = {line.split()[1] for line in printed if line.startswith("recorded ")}
        assert len(acked_before_last_run) < TOTAL, "the kills should land while movements are still being recorded"

        # The last run only finishes the simulation (movement n is the same at any pace and in any batch):
        # unpaced and 100 to a commit, it takes a second instead of the ten it takes at the pace of the kills.
        config.write_text(config.read_text().replace(f"rate_per_s = {RATE_PER_S}\n", "rate_per_s = 0\nbatch = 100\n"))
        agent = AgentProcess(config, tmp_path / "agent.log", printed)
        try:
            ledger = _wait_for_ledger(hub.url, cred.token)
        finally:
            assert agent.stop() == 0
    finally:
        if hub.proc is not None:
            assert hub.stop() == 0

    # Each event exactly once in the hub's ledger.
    ids = Counter(row["event_id"] for row in ledger)
    assert len(ids) == TOTAL and max(ids.values()) == 1
    # Every movement the agent acknowledged (printed after commit) reached the hub.
    acked = {line.split()[1] for line in printed if line.startswith("recorded ")}
    assert acked <= set(ids)
    assert any(line == f"simulation complete {TOTAL}" for line in printed)
    # Counts equal the expected sums exactly.
    expected: Counter[str] = Counter()
    for n in range(TOTAL):
        m = simulated_movement(LOCATION, SKUS, SEED, n)
        expected[m.sku] += m.qty
    hub = HubProcess(tmp_path / "hub.log", db=hub_db, port=free_port())
    with hub:
        counts = get_json(f"{hub.url}/v1/locations/{LOCATION}/counts", cred.token)
    got = {row["sku"]: row["on_hand"] for row in counts["counts"]}
    assert got == dict(expected)
    assert all(row["source"] == SOURCE for row in ledger)
    # Both databases are intact.
    for db in (hub_db, tmp_path / "outbox.sqlite3"):
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _wait_for_ledger(url: str, token: str) -> list[dict]:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = get_json(f"{url}/v1/ledger?location={LOCATION}&limit=10000", token)["events"]
        if len(rows) >= TOTAL:
            return rows
        time.sleep(0.25)
    raise AssertionError(f"the hub holds {len(rows)} of {TOTAL} events after {DRAIN_TIMEOUT_S} s")
