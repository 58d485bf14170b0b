"""A contractor moves the agent's data to another folder (``[agent] data_dir``) while movements wait unsent.

Found with real hub and agent processes: the agent started on a new, empty outbox in the new folder, said
nothing, and ``status`` showed a backlog of 0 with the hub reachable — all well — while the two sales recorded
before the move waited in the old folder's outbox, which nothing would ever send. The hub, which had heard this
agent id from the old outbox, saw a new epoch and said nothing either. Now the agent, on an outbox that had never
synced when it started, reads the hub's record of its credential and says when the hub holds movements of this
agent id from another outbox; the old outbox sent by hand (``shelfsync-agent outbox send``) delivers them once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.adversarial.test_careless_store import record
from tests.faults.helpers import Store, hub_events, outbox_events, verify, wait_until
from tests.harness.agent_process import AgentProcess
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess

ROOT = Path(__file__).resolve().parents[2]


def test_an_agent_started_on_a_new_data_dir_names_the_outbox_the_hub_heard_it_from_before(
    hub: HubProcess, tmp_path: Path
) -> None:
    store = Store("store-1", "S001", add_credential(hub.db, "S001"), tmp_path / "old-data", hub.url)
    store.write_config()
    hub.start()
    record(store, "SKU-A", "receive", 5)
    run = store.start()
    wait_until("the receipt at the hub", lambda: len(hub_events(hub.db)) == 1)
    assert run.stop() == 0
    old_outbox = store.outbox
    old_epoch = int(subprocess.run(
        [sys.executable, "-m", "agent", "status", "--config", str(store.config), "--json"],
        capture_output=True, check=False, text=True, timeout=60, cwd=ROOT,
    ).stdout.split('"epoch": ')[1].split(",")[0])  # fmt: skip
    hub.stop()
    record(store, "SKU-A", "sale", -1)  # the hub down: unsent
    record(store, "SKU-A", "sale", -2)

    config = store.config
    store.data_dir = tmp_path / "new-data"  # the contractor's edit: data_dir only, the file stays where it was
    text = config.read_text(encoding="utf-8").replace((tmp_path / "old-data").as_posix(), store.data_dir.as_posix())
    config.write_text(text, encoding="utf-8")
    hub.start()
    run = AgentProcess(config, tmp_path / "agent-new.log", store.printed)  # the file where it was
    said = run.wait_for_log(r"WARNING agent.catalog: This agent's outbox .* is new, .*")
    assert str(store.data_dir / "outbox.sqlite3") in said.group(0)
    assert f"epoch {old_epoch} up to seq 1" in said.group(0)
    assert "shelfsync-agent outbox send" in said.group(0)
    assert run.stop() == 0
    assert len(hub_events(hub.db)) == 1  # the two sales wait in the old folder

    sent = subprocess.run(
        [sys.executable, "-m", "agent", "outbox", "send", str(old_outbox), "--config", str(config), "--wait-s", "60"],
        capture_output=True, check=False, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert set(hub_events(hub.db)) == set(outbox_events(old_outbox))
    before = Store("store-1 before the move", "S001", store.cred, tmp_path / "old-data", hub.url)
    verify(hub, [store, before])
