"""Restored, cloned and squatted: a careless store and a hostile credential against real processes.

(a) An outbox restored from an older backup records while the hub is unreachable, then reconnects:
    every movement of both histories reaches the hub once, and ``status`` says what happened.
(b) Two copies of one outbox run at once on two "machines" against one hub: both get through, and the hub's
    exceptions name the two copies (``agent_copies``) until one of them is switched off.
(c) Another credential sends, first, the event id a connector will use next: the connector's
    event still counts (ids are namespaced by the credential).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    derived_event_id,
    encode_sync_request,
    pack_hlc,
    wall_ms_now,
)
from tests.faults.helpers import Simulation, Store, drained, hub_events, outbox_meta, verify, wait_until
from tests.harness.agent_process import AgentProcess
from tests.harness.commands import hub_env
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import get_json
from tests.harness.sqlite_copy import backup as sqlite_backup


def replace_file(live: Path, source: Path) -> None:
    for leftover in (live, live.with_name(live.name + "-wal"), live.with_name(live.name + "-shm")):
        leftover.unlink(missing_ok=True)
    sqlite_backup(source, live)


def run_simulation(store: Store, count: int, heartbeat_s: float | None = None) -> AgentProcess:
    """Run the agent until its simulation has recorded ``count`` movements in total (resuming from its tally);
    ``heartbeat_s``: an idle agent tells the hub it is alive this often."""
    store.simulation = Simulation(count, rate_per_s=400, seed=5, batch=3)
    config = store.write_config()
    if heartbeat_s is not None:
        config.write_text(config.read_text().replace("[replicator]\n", f"[replicator]\nheartbeat_s = {heartbeat_s}\n"))
    agent = store.start()
    wait_until(f"{store.name} records {count} movements", store.simulation_complete)
    return agent


def epochs(hub_db: Path, agent_id: str) -> dict[int, int]:
    with sqlite3.connect(hub_db) as conn:
        return dict(conn.execute("SELECT epoch, hwm FROM agent_hwm WHERE agent_id = ?", (agent_id,)).fetchall())


def test_a_restored_outbox_that_recorded_offline_loses_nothing(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    store = make_store(hub, hub.url, batch_size=7)
    hub.start()
    agent = run_simulation(store, 40)
    wait_until("the first 40 reach the hub", lambda: drained([store], hub.db))
    assert agent.stop() == 0
    backup = tmp_path / "outbox-backup.sqlite3"
    sqlite_backup(store.outbox, backup)

    agent = run_simulation(store, 90)  # 50 more after the backup, all acknowledged by the hub
    wait_until("the next 50 reach the hub", lambda: drained([store], hub.db))
    assert agent.stop() == 0
    before_restore = tmp_path / "outbox-before-restore.sqlite3"
    sqlite_backup(store.outbox, before_restore)
    first_epoch = epochs(Path(hub.db), store.cred.agent_id)
    assert list(first_epoch.values()) == [90]

    hub.stop()  # the hub is unreachable while the restored outbox records
    replace_file(store.outbox, backup)
    agent = run_simulation(store, 70)  # the backup's tally is 40: 30 new movements, seqs 41..70
    hub.start()
    wait_until("the restored outbox drains", lambda: drained([store], hub.db))
    assert agent.stop() == 0

    held = verify(hub, [store], extra_outboxes=[before_restore])
    assert len(held) == 120  # 40 + 50 of the first history, 30 of the restored one
    marks = epochs(Path(hub.db), store.cred.agent_id)
    assert len(marks) == 2 and marks[next(iter(first_epoch))] == 90
    assert "restored from a backup, copied or rolled back" in store.log()
    stopped = subprocess.run(  # exit 3: no agent runs on this outbox any more (docs/agent.md)
        [sys.executable, "-m", "agent", "status", "--config", str(store.config)], capture_output=True, check=False, text=True, timeout=60
    )
    status = stopped.stdout
    assert stopped.returncode == 3, stopped.stderr
    assert f"forked from epoch {next(iter(first_epoch))}" in status, status
    assert "resent 30 events from seq 40" in status, status
    # The hub's agent list (and so the dashboard) shows both epochs, the current one last, exactly.
    (listed,) = [a for a in get_json(f"{hub.url}/v1/agents", store.cred.token)["agents"] if a["agent_id"] == store.cred.agent_id]
    current = outbox_meta(store.outbox)["epoch"]
    assert [int(e["epoch_text"]) for e in listed["epochs"]] == [next(iter(first_epoch)), current]
    assert listed["epochs"][-1]["epoch_text"] == str(current)


def copies_listed(hub: HubProcess, reader: str) -> list[dict[str, Any]]:
    return get_json(f"{hub.url}/v1/exceptions?kind=agent_copies", reader)["exceptions"]


def test_two_running_copies_of_one_outbox_both_get_through(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    first = make_store(hub, hub.url, name="machine-a", batch_size=5)
    reader = add_credential(hub.db, role="reader").token
    hub.env = hub_env(SHELFSYNC_HUB_AGENT_COPIES_WINDOW_S="3")  # a copy silent 3 s no longer counts as sending
    hub.start()
    agent = run_simulation(first, 30)
    wait_until("the first 30 reach the hub", lambda: drained([first], hub.db))
    assert agent.stop() == 0
    # the same outbox copied to a second PC: same credential, same agent id, same epoch
    second = Store("machine-b", first.location, first.cred, tmp_path / "machine-b", hub.url, batch_size=5)
    second.data_dir.mkdir(parents=True)
    sqlite_backup(first.outbox, second.outbox)
    try:
        runs = [run_simulation(s, 90, heartbeat_s=0.3) for s in (first, second)]  # both record 60 more at once
        wait_until("both copies drain", lambda: drained([first, second], hub.db))
        # head office sees it: one exception naming the agent and both epochs, each copy's last sync and address
        wait_until("the hub lists the two copies", lambda: bool(copies_listed(hub, reader)))
        (listed,) = copies_listed(hub, reader)
        running = {str(outbox_meta(s.outbox)["epoch"]) for s in (first, second)}
        assert len(running) == 2 and {c["epoch_text"] for c in listed["data"]["copies"]} == running, listed
        assert listed["data"]["agent_id"] == first.cred.agent_id and listed["location"] == first.location
        assert all(epoch in listed["detail"] for epoch in running) and "127.0.0.1" in listed["detail"], listed
        assert runs[1].stop() == 0  # the clone is switched off: the entry goes while the store's own PC syncs on
        wait_until("the entry is gone", lambda: not copies_listed(hub, reader))
        assert runs[0].stop() == 0
    finally:
        second.kill_all()
    held = verify(hub, [first, second])
    assert len(held) == 30 + 60 + 60
    assert "restored from a backup, copied or rolled back" in first.log() + second.log()


def post(url: str, token: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Authorization": f"Bearer {token}", "Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_an_id_another_credential_sent_first_does_not_shadow_the_owners_event(hub: HubProcess) -> None:
    connector = add_credential(hub.db, "WEB")
    squatter = add_credential(hub.db, "WEB")  # a second credential of the same channel
    hub.start()
    when_ms = wall_ms_now() - 60_000
    # the connector's next movement has a predictable id: derived from its credential, its own id and time
    target = derived_event_id(when_ms, f"api:{connector.agent_id}:order-77".encode())
    squat = StockEvent(target, squatter.agent_id, 1, 1, "WEB", "SKU-1", Kind.ADJUST, -500, pack_hlc(when_ms, 0),
                       when_ms, "api:squat")  # fmt: skip
    status, _ = post(hub.url + "/v1/sync", squatter.token, encode_sync_request(SyncRequest(squatter.agent_id, 1, (squat,))),
                     MSGPACK_CONTENT_TYPE)  # fmt: skip
    assert status == 200

    movement: dict[str, Any] = {"id": "order-77", "location": "WEB", "sku": "SKU-1", "kind": "receive", "qty": 12,
                                "occurred_at": when_ms}  # fmt: skip
    status, body = post(hub.url + "/v1/events", connector.token, json.dumps({"events": [movement]}).encode(),
                        "application/json")  # fmt: skip
    assert status == 200, body
    answer = json.loads(body)
    assert answer["events"][0]["status"] == "accepted" and answer["applied"] == 1, answer
    assert answer["counts"][0]["on_hand"] == 12 - 500  # both movements count, each once
    # and the owner's resend is its own duplicate, not a conflict with the squatter's
    status, body = post(hub.url + "/v1/events", connector.token, json.dumps({"events": [movement]}).encode(),
                        "application/json")  # fmt: skip
    assert status == 200 and json.loads(body)["duplicates"] == 1, body
    with sqlite3.connect(hub.db) as conn:
        owners = sorted(r[0] for r in conn.execute("SELECT agent_id FROM events WHERE event_id = ?", (target,)))
    assert owners == sorted([connector.agent_id, squatter.agent_id])
    assert len(hub_events(Path(hub.db))) == 1  # one id, two events (the helper keys by id alone)
