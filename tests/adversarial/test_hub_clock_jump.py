"""The hub's own clock jumps while right-clocked stores sync: a real hub process whose wall clock is shifted
(tests/harness/shifted_clock.py) and two real agent processes with honest clocks.

Found: with the hub's clock three hours behind, every store's ``status`` said ``clock WRONG: this machine's
clock is 3.0 hours ahead of the hub's; set it right`` and ``GET /v1/agents`` showed each agent three hours off,
while nothing at the hub said that its own clock was the one that moved: head office was led to have every
store set a right clock wrong (after which each agent stamps its movements with the moment the clock was set
back, for three hours). Past the clock window (a day) every movement of every store was held in quarantine with
"this machine's clock should be checked". Stores whose clocks agree with each other and not with the hub
point at the hub's clock; the hub now says so, and tells those stores in its sync answers
(``Shelfsync-Hub-Clock-Off-Ms``), whose ``status`` and log then say the hub's clock is wrong and theirs right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.faults.helpers import Store, hub_events, wait_until
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json
from tests.harness.shifted_clock import SCRIPT, SHIFT_FILE_ENV

HOUR_MS = 3_600_000
WAIT_S = 60.0
HUB_WRONG = (
    "clock        the HUB's clock is WRONG, not this machine's. The hub says its own clock is 3.0 hours behind this"
    " store's and the other stores' clocks"
)


def suspicion(hub: HubProcess, token: str) -> dict | None:
    found: dict | None = get_json(f"{hub.url}/v1/status", token)["hub_clock"]
    return found


def test_a_hub_clock_hours_behind_its_stores_is_named_by_the_hub_and_not_blamed_on_them(tmp_path: Path) -> None:
    shift = tmp_path / "hub-clock-shift-ms"
    shift.write_text("0", encoding="ascii")
    hub = HubProcess(
        tmp_path / "hub.log", db=tmp_path / "hub.db", port=free_port(),
        env={**os.environ, SHIFT_FILE_ENV: str(shift)}, python=(sys.executable, SCRIPT),
    )  # fmt: skip
    stores = [
        Store(f"store-{n}", f"S00{n}", add_credential(hub.db, f"S00{n}"), tmp_path / f"store-{n}", "") for n in (1, 2)
    ]
    reader = add_credential(hub.db, role="reader")
    try:
        hub.start()
        runs = []
        for store in stores:
            store.hub_url = hub.url
            store.write_config()
            with open(store.config, "a", encoding="utf-8") as config:  # the [replicator] table is the file's last
                config.write("heartbeat_s = 0.3\n")
            runs.append(store.start())
        wait_until("both stores synced", lambda: len(get_json(f"{hub.url}/v1/agents", reader.token)["agents"]) == 3)
        wait_until(
            "both stores synced with the hub's clock right",
            lambda: all(
                a["clock_skew_ms"] is not None for a in get_json(f"{hub.url}/v1/agents", reader.token)["agents"]
                if a["role"] == "agent"
            ),
            WAIT_S,
        )  # fmt: skip
        assert suspicion(hub, reader.token) is None

        shift.write_text(str(-3 * HOUR_MS), encoding="ascii")  # the hub's clock jumps three hours back
        wait_until("the hub to name its own clock", lambda: suspicion(hub, reader.token) is not None, WAIT_S)
        found = suspicion(hub, reader.token)
        assert found is not None
        assert sorted(found["agents"]) == sorted(s.cred.agent_id for s in stores)
        assert abs(found["offset_ms"] + 3 * HOUR_MS) < 60_000, found
        assert found["message"].startswith(
            "The hub's clock looks wrong: 2 of the 2 agents that synced in the last 10 minutes put it 3.0 hours"
            " behind their clocks, which agree with each other within a minute"
        ), found
        wait_until(
            "the hub's log to say it", lambda: "ERROR hub.app: The hub's clock looks wrong: 2 of the 2" in hub.log
        )
        for store in stores:  # each store is told the hub's clock is off, not its own, and not to change it
            wait_until(
                "the store to say the hub's clock is off", lambda store=store: HUB_WRONG in status_of(store), WAIT_S
            )
            said = status_of(store)
            assert "this machine's clock is right, leave it as it is" in said, said
            assert "WRONG: this machine's clock" not in said, said
            assert "set it right" not in said, said
            report = json.loads(status_of(store, "--json"))
            assert abs(report["hub_clock_off_ms"] + 3 * HOUR_MS) < 60_000, report
            wait_until(
                "the store's log to say it",
                lambda store=store: (
                    "WARNING agent.replicator: The hub says its own clock is 3.0 hours behind" in store.log()
                ),
            )

        shift.write_text("0", encoding="ascii")  # the hub's clock is set right
        wait_until("the hub to take its clock back", lambda: suspicion(hub, reader.token) is None, WAIT_S)
        wait_until(
            "the hub's log to say so", lambda: "INFO hub.app: The hub's clock agrees with its agents' again" in hub.log
        )
        for store in stores:
            wait_until("the store to stop saying so", lambda store=store: HUB_WRONG not in status_of(store), WAIT_S)
            assert "WRONG" not in status_of(store)
            assert json.loads(status_of(store, "--json"))["hub_clock_off_ms"] is None
        for run in runs:
            assert run.stop() == 0
        assert hub_events(hub.db) == {}
    finally:
        for store in stores:
            store.kill_all()
        hub.close()


def status_of(store: Store, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "status", *args, "--config", str(store.config)],
        capture_output=True, check=False, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout
