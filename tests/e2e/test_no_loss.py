"""Issue 2's promise end to end: nothing lost, nothing counted twice.

A real agent process records 5,000 simulated movements while the hub (a real
process on 127.0.0.1) is stopped and restarted twice and the agent itself is
SIGKILLed at random moments twelve times. Afterwards the hub's ledger holds
each event exactly once, every movement the agent acknowledged is in it, and
the counts equal the expected sums exactly.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

from agent.simulate import SOURCE, simulated_movement
from tests.e2e.procs import HubProcess, add_credential, free_port, get_json, start_agent, write_agent_config

LOCATION = "STORE-1"
SKUS = ("SKU-A", "SKU-B", "SKU-C", "SKU-D")
TOTAL = 5_000
SEED = 11
KILLS = 12
DRAIN_TIMEOUT_S = 120.0


def _collect(stream, lines: list[str]) -> threading.Thread:
    def pump() -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def test_agent_and_hub_crashes_lose_nothing_and_count_nothing_twice(tmp_path: Path) -> None:
    rng = random.Random(2026)
    hub_db = tmp_path / "hub.db"
    cred = add_credential(hub_db, "--location", LOCATION)
    hub = HubProcess(hub_db, free_port(), tmp_path / "hub.log")
    config = write_agent_config(
        tmp_path / "agent.toml", cred=cred, location=LOCATION, hub_url=hub.url,
        extra=f'[simulate]\ncount = {TOTAL}\nrate_per_s = 500\nseed = {SEED}\nskus = {list(SKUS)!r}\n'.replace("'", '"'),
    )
    printed: list[str] = []
    hub.start()
    try:
        for run in range(KILLS):
            if run in (3, 8):
                hub.stop(signal.SIGKILL if run == 3 else signal.SIGTERM)  # one crash, one clean stop
            if run in (5, 10):
                hub.start()
            agent = start_agent(config, tmp_path / "agent.log")
            reader = _collect(agent.stdout, printed)
            time.sleep(rng.uniform(0.4, 1.4))
            assert agent.poll() is None, f"agent died on its own; see {tmp_path / 'agent.log'}"
            agent.send_signal(signal.SIGKILL)
            agent.wait(timeout=20)
            reader.join(timeout=10)

        acked_before_last_run = {line.split()[1] for line in printed if line.startswith("recorded ")}
        assert len(acked_before_last_run) < TOTAL, "the kills should land while movements are still being recorded"

        agent = start_agent(config, tmp_path / "agent.log")
        reader = _collect(agent.stdout, printed)
        try:
            ledger = _wait_for_ledger(hub.url, cred.token)
        finally:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=30) == 0
            reader.join(timeout=10)
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
    hub = HubProcess(hub_db, free_port(), tmp_path / "hub.log")
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
