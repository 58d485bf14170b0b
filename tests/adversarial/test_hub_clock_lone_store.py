"""Whose clock is wrong, when the hub cannot tell: a real hub process with a right clock and real agent processes,
one of them with its wall clock three hours ahead (tests/harness/shifted_clock.py).

Found: a store alone (or stores that disagree with each other) with its clock three hours off the hub's was told
``clock WRONG: this machine's clock is 3.0 hours ahead of the hub's; set it right``, though a skew says only how
far apart two clocks are: had the hub's clock been the wrong one, the store was told to set a right clock wrong.
Now the hub says, in its sync answer (``Shelfsync-Hub-Clock-Agreed``), when most of the other stores that synced
lately agree with its clock; only then is the store's clock called wrong. Without it the store says the two
clocks disagree and to check both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.faults.helpers import Store, wait_until
from tests.harness.agent_process import AgentProcess
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.shifted_clock import SCRIPT, SHIFT_FILE_ENV

HOUR_MS = 3_600_000
WAIT_S = 60.0
LONE = (
    "clock        OFF: this machine's clock and the hub's disagree by 3.0 hours (this machine's is ahead of the"
    " hub's), and no other store's clock tells which one is wrong: check both against a time server (NTP) before"
    " changing either"
)
ODD_ONE = (
    "clock        WRONG: this machine's clock is 3.0 hours ahead of the hub's, and 1 other store that synced lately"
    " agrees with the hub's clock; set it right"
)


def status_of(store: Store, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "status", *args, "--config", str(store.config)],
        capture_output=True, check=False, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout


def configured(store: Store, hub: HubProcess) -> None:
    store.hub_url = hub.url
    store.write_config()
    with open(store.config, "a", encoding="utf-8") as config:  # the [replicator] table is the file's last
        config.write("heartbeat_s = 0.3\n")


def test_a_lone_store_is_told_the_clocks_disagree_and_the_odd_one_out_that_its_clock_is_wrong(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path / "hub.log", db=tmp_path / "hub.db", port=0)
    ahead, right = (
        Store(f"store-{n}", f"S00{n}", add_credential(hub.db, f"S00{n}"), tmp_path / f"store-{n}", "") for n in (1, 2)
    )
    shift = tmp_path / "store-1-clock-shift-ms"
    shift.write_text(str(3 * HOUR_MS), encoding="ascii")  # store 1's machine runs three hours ahead
    runs: list[AgentProcess] = []
    try:
        hub.start()
        configured(ahead, hub)
        runs.append(AgentProcess(
            ahead.config, ahead.data_dir / "agent.log", ahead.printed, python=(sys.executable, SCRIPT),
            env={**os.environ, SHIFT_FILE_ENV: str(shift)},
        ))  # fmt: skip
        wait_until("the lone store to say the clocks disagree", lambda: LONE in status_of(ahead), WAIT_S)
        said = status_of(ahead)
        assert "WRONG" not in said and "set it right" not in said, said
        assert json.loads(status_of(ahead, "--json"))["hub_clock_agreed"] is None

        configured(right, hub)  # a second store, its clock right: the hub's clock agrees with it
        runs.append(right.start())
        wait_until("the store whose clock is off to be told it is wrong", lambda: ODD_ONE in status_of(ahead), WAIT_S)
        assert json.loads(status_of(ahead, "--json"))["hub_clock_agreed"] == 1
        said = status_of(right)
        assert "clock        " not in said, said  # within a minute of the hub's: nothing to say
        for run in runs:
            assert run.stop() == 0
    finally:
        for run in runs:
            run.kill()
        hub.close()
