"""A regional outage ends: several stores catch up at once while another store sells.

Real processes on 127.0.0.1: one hub (SQLite), four agents each draining a backlog of 20,000 events recorded
while the hub was away (10,000 a request, two in flight), and a live store's agent recording sales meanwhile.
A load balancer's check polls ``/healthz`` throughout with a 5 s timeout. Afterwards: catch-up batches waited in
line for the hub's one slot (catchup_slots = 1; hub/catchup.py), the health check never failed, every backlog and every sale is in the
hub exactly once, and every sale the live store recorded is acknowledged (docs/scaling.md, "A regional outage").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from agent import Movement, Outbox
from protocol import Kind
from tests.harness.agent_process import AgentProcess, write_agent_config
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port

STORES = 4
BACKLOG = 20_000  # each: two catch-up requests of 10,000
LIVE = "LIVE-1"
SALES = 150
HEALTH_TIMEOUT_S = 5.0  # a load balancer's check: past it the hub is taken out of service
HEALTH_EVERY_S = 0.25
DRAIN_TIMEOUT_S = 240.0


async def record_backlog(outbox_path: Path, agent_id: str, location: str) -> None:
    """What the store sold while the hub was away, straight into its outbox."""
    async with Outbox.open(outbox_path, agent_id=agent_id, location=location, synchronous="normal") as outbox:
        for start in range(0, BACKLOG, 5_000):
            await outbox.record(
                [Movement(location, f"SKU-{(start + i) % 200:03d}", Kind.SALE, -1, "pos:test") for i in range(5_000)]
            )


def acked(outbox_path: Path) -> int:
    with contextlib.closing(sqlite3.connect(outbox_path, timeout=30)) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'acked_seq'").fetchone()
    return int(row[0]) if row else 0


class HealthChecks(threading.Thread):
    """``GET /healthz`` every ``HEALTH_EVERY_S`` with the load balancer's timeout; keeps what went wrong."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.failures: list[str] = []
        self.answered = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=HEALTH_TIMEOUT_S) as resp:
                    resp.read()
                    self.answered += 1
            except (urllib.error.URLError, TimeoutError, OSError) as err:
                self.failures.append(f"{time.monotonic() - started:.1f} s: {err}")
            self.halt.wait(HEALTH_EVERY_S)


def test_a_regional_catch_up_leaves_health_and_a_live_store_served_and_loses_nothing(tmp_path: Path) -> None:
    hub_db = tmp_path / "hub.db"
    stores = [f"STORE-{n}" for n in range(1, STORES + 1)]
    creds = {loc: add_credential(hub_db, loc) for loc in [*stores, LIVE]}
    for loc in stores:
        asyncio.run(record_backlog(tmp_path / loc / "outbox.sqlite3", creds[loc].agent_id, loc))
    # one slot: the stores' batches always meet the line, however fast this machine commits them
    hub = HubProcess(tmp_path / "hub.log", db=hub_db, port=free_port(), env={**os.environ, "SHELFSYNC_HUB_CATCHUP_SLOTS": "1"})
    selling = f"[simulate]\ncount = {SALES}\nrate_per_s = 5\nseed = 3\nskus = {json.dumps(['SKU-A', 'SKU-B'])}\n"
    configs = {
        loc: write_agent_config(
            tmp_path / loc / "agent.toml", cred=creds[loc], location=loc, hub_url=hub.url, timeout_s=120.0,
            extra=selling if loc == LIVE else "",
        )
        for loc in [*stores, LIVE]
    }
    printed: list[str] = []
    agents: list[AgentProcess] = []
    hub.start()
    health = HealthChecks(hub.url)
    health.start()
    try:
        agents.append(AgentProcess(configs[LIVE], tmp_path / "live.log", printed))  # selling before they return
        agents += [AgentProcess(configs[loc], tmp_path / f"{loc}.log") for loc in stores]
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not (
            all(acked(tmp_path / loc / "outbox.sqlite3") >= BACKLOG for loc in stores)
            and f"simulation complete {SALES}" in printed
            and acked(tmp_path / LIVE / "outbox.sqlite3") >= SALES
        ):
            assert time.monotonic() < deadline, f"not drained within {DRAIN_TIMEOUT_S:.0f} s; see {tmp_path}"
            assert all(a.alive() for a in agents), f"an agent exited; see {tmp_path}"
            time.sleep(0.5)
        scrape = urllib.request.Request(f"{hub.url}/metrics", headers={"Authorization": f"Bearer {creds[LIVE].token}"})
        with urllib.request.urlopen(scrape, timeout=HEALTH_TIMEOUT_S) as resp:
            metrics = resp.read().decode()
    finally:
        health.halt.set()
        for agent in agents:
            agent.stop()
        health.join(HEALTH_TIMEOUT_S * 2)
        hub.stop()

    assert health.failures == [], f"the load balancer's check failed {len(health.failures)} time(s): {health.failures}"
    assert health.answered > 0
    with contextlib.closing(sqlite3.connect(hub_db)) as conn:
        per_location = dict(conn.execute("SELECT location, count(*) FROM events GROUP BY location").fetchall())
        distinct = conn.execute("SELECT count(DISTINCT event_id) FROM events").fetchone()[0]
        on_hand = dict(conn.execute("SELECT location, sum(on_hand) FROM stock GROUP BY location").fetchall())
    assert per_location == {**{loc: BACKLOG for loc in stores}, LIVE: SALES}
    assert distinct == STORES * BACKLOG + SALES  # every event once
    assert all(on_hand[loc] == -BACKLOG for loc in stores)
    waited = next(line for line in metrics.splitlines() if line.startswith("shelfsync_catchup_waited_total "))
    assert float(waited.split()[1]) > 0, "no catch-up batch met the hub's cap: the test no longer covers the line"
    sales = {line.split()[1] for line in printed if line.startswith("recorded ")}
    assert len(sales) == SALES  # every sale the live store recorded, and acknowledged above
