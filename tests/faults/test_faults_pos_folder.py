"""A store agent whose POS drop folder cannot be used — read-only, not there yet, a share not mounted yet, or one
that drops away while it runs — keeps running, says so once, and takes the folder when it can be used.

Every test runs a real hub and a real ``python -m agent run`` process with a simulation feeding its outbox and
the local API on, and the drop folder on real tmpfs mounts (``tests.harness.small_disk.Mounts``: root on Linux).
The agent exited with code 1 at start ("the POS drop folder … cannot be claimed for this agent (Read-only file
system)"): scanners, staff sessions and replication stopped with it.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.adversarial.pos_drop import HEADER, SETTLE_S, WAIT_S, export_row, report_of, skus_of
from tests.faults.helpers import Simulation, Store, drained, outbox_events, verify, wait_until
from tests.harness.agent_process import AgentProcess, local_api_section
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port
from tests.harness.small_disk import Mounts

RETRY_S = 0.5  # [pos] folder_retry_s: how often the agent tries the folder again (30 s unless set)
SIMULATED = 40


def _store(hub: HubProcess, make_store: Callable[..., Store], drop: Path) -> tuple[Store, int]:
    """A store whose agent simulates sales, serves the local API, and watches ``drop``; and the API's port."""
    hub.start()
    store = make_store(hub, hub.url, simulation=Simulation(count=SIMULATED, rate_per_s=40.0, seed=7))
    port = free_port()
    with store.config.open("a") as config:
        config.write(
            f'\n[pos]\nwatch_dir = "{drop}"\nsettle_s = {SETTLE_S}\nprofile = "generic"\nfolder_retry_s = {RETRY_S}\n'
            f"\n{local_api_section(port)}"
        )
    return store, port


def _status(port: int) -> dict[str, Any]:
    """``GET /api/v1/status`` of the agent's local API, signed in as a handheld would."""

    def call(method: str, path: str, body: dict[str, str] | None = None, token: str = "") -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
            conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            resp = conn.getresponse()
            answer = json.loads(resp.read())
            assert resp.status == 200, answer
            return dict(answer)
        finally:
            conn.close()

    token = call("POST", "/api/v1/login", {"staff": "ana", "pin": "4711"})["token"]
    return call("GET", "/api/v1/status", token=token)


def _said(agent: AgentProcess, sentence: str, times: int) -> None:
    """Until the agent's log holds ``sentence`` ``times`` times (it fails if the agent ends first)."""
    wait_until(f"{sentence!r} is logged {times} times", lambda: agent.log.count(sentence) >= times or not agent.alive())
    assert agent.alive(), agent.log[-3000:]
    assert agent.log.count(sentence) == times, agent.log[-3000:]


def _export(at: Path, name: str, first: int, n: int = 5) -> None:
    (at / name).write_text(HEADER + "".join(export_row(i) for i in range(first, first + n)), encoding="utf-8")


def _waiting_while_the_rest_works(hub: HubProcess, store: Store, agent: AgentProcess, port: int, drop: Path) -> str:
    """The agent waits for ``drop`` and says why, once; sales sync, the local API answers; the sentence."""
    said = agent.wait_for_log(
        rf"The POS drop folder {drop} cannot be used \(([^)]+)\); the agent runs on without POS imports and tries "
        rf"again every {RETRY_S:g} s\."
    )
    agent.wait_for_printed("the simulation ends", lambda printed: f"simulation complete {SIMULATED}" in printed, WAIT_S)
    wait_until("every simulated sale reaches the hub", lambda: drained([store], hub.db), WAIT_S)
    status = _status(port)
    assert status["pos_import"] == {
        "watch_dir": str(drop),
        "state": "waiting_for_folder",
        "problem": said.group(1),
        "held": [],
    }
    assert agent.alive()
    return said.group(0)


def _imported_once(store: Store, agent: AgentProcess, drop: Path, name: str, prefix_range: range) -> None:
    wait_until(f"{name} is imported and filed", lambda: report_of(drop, name) is not None, WAIT_S)
    assert agent.alive(), agent.log[-2000:]
    report = report_of(drop, name)
    assert report is not None and report["status"] == "imported", report
    wanted = {f"GOOD-{i}" for i in prefix_range}
    booked = [e.sku for e in outbox_events(store.outbox).values() if e.sku in wanted]
    assert sorted(booked) == sorted(wanted), "each row of the export is booked exactly once"


def test_a_read_only_drop_folder_waits_and_is_taken_once_writable_also_when_it_turns_read_only_while_running(
    hub: HubProcess, make_store: Callable[..., Store], mounts: Mounts, tmp_path: Path
) -> None:
    drop = mounts.tmpfs(tmp_path / "drop")
    _export(drop, "early.csv", 0)
    mounts.read_only(drop)
    store, port = _store(hub, make_store, drop)
    agent = store.start()

    sentence = _waiting_while_the_rest_works(hub, store, agent, port, drop)
    assert "Read-only file system" in sentence
    assert agent.log.count("cannot be used") == 1, "said once, not at every attempt"

    mounts.writable(drop)
    agent.wait_for_log(rf"The POS drop folder {drop} can be used now; watching it\.")
    _imported_once(store, agent, drop, "early.csv", range(5))
    assert _status(port)["pos_import"] == {"watch_dir": str(drop), "state": "watching", "problem": None, "held": []}

    # read-only while it runs: an export dropped just before is neither lost nor booked twice
    _export(drop, "late.csv", 100)
    mounts.read_only_view(drop)
    _said(agent, f"The POS drop folder {drop} cannot be used (Read-only file system)", 2)
    assert _status(port)["pos_import"]["state"] == "waiting_for_folder"
    mounts.umount(drop)  # writable again
    _imported_once(store, agent, drop, "late.csv", range(100, 105))
    wait_until("every event reaches the hub", lambda: drained([store], hub.db), WAIT_S)
    assert agent.alive()
    assert agent.stop() == 0
    verify(hub, [store])


def test_a_drop_folder_that_cannot_be_made_yet_is_made_and_taken_once_it_can_be(
    hub: HubProcess, make_store: Callable[..., Store], mounts: Mounts, tmp_path: Path
) -> None:
    disk = mounts.tmpfs(tmp_path / "disk")
    mounts.read_only(disk)
    drop = disk / "pos" / "drop"  # not there, and not to be made while the disk is read-only
    store, port = _store(hub, make_store, drop)
    agent = store.start()

    sentence = _waiting_while_the_rest_works(hub, store, agent, port, drop)
    assert "Read-only file system" in sentence

    mounts.writable(disk)
    agent.wait_for_log(rf"The POS drop folder {drop} can be used now; watching it\.")
    _export(drop, "sales.csv", 0)
    _imported_once(store, agent, drop, "sales.csv", range(5))
    wait_until("every event reaches the hub", lambda: drained([store], hub.db), WAIT_S)
    assert agent.stop() == 0
    verify(hub, [store])


def test_a_share_mounted_after_the_agent_started_is_taken_and_one_that_drops_away_is_waited_for(
    hub: HubProcess, make_store: Callable[..., Store], mounts: Mounts, tmp_path: Path
) -> None:
    root = mounts.tmpfs(tmp_path / "root")  # the store PC's own disk, where the share's mount point is
    (root / "pos-share").mkdir()
    mounts.read_only(root)
    drop = root / "pos-share"
    store, port = _store(hub, make_store, drop)
    agent = store.start()
    _waiting_while_the_rest_works(hub, store, agent, port, drop)

    share = mounts.tmpfs(tmp_path / "server-share")  # the share, with the till's exports in it already
    _export(share, "monday.csv", 0)
    mounts.bind(share, drop)
    agent.wait_for_log(rf"The POS drop folder {drop} can be used now; watching it\.")
    _imported_once(store, agent, drop, "monday.csv", range(5))

    mounts.umount(drop)  # the share drops off the network
    _said(agent, f"The POS drop folder {drop} cannot be used (Read-only file system)", 2)
    assert _status(port)["pos_import"]["state"] == "waiting_for_folder"
    _export(share, "tuesday.csv", 100)  # the till goes on writing to the share
    mounts.bind(share, drop)  # and it comes back
    _said(agent, f"The POS drop folder {drop} can be used now; watching it.", 2)
    _imported_once(store, agent, drop, "tuesday.csv", range(100, 105))
    wait_until("every event reaches the hub", lambda: drained([store], hub.db), WAIT_S)
    assert skus_of(store, "GOOD") == {f"GOOD-{i}" for i in (*range(5), *range(100, 105))}
    assert agent.stop() == 0
    verify(hub, [store])


def test_a_drop_folder_path_that_is_a_file_is_refused_at_start_with_one_sentence(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    not_a_folder = tmp_path / "drop.csv"
    not_a_folder.write_text(HEADER, encoding="utf-8")
    store, _ = _store(hub, make_store, not_a_folder)
    agent = store.start()
    assert agent.wait(WAIT_S) == 2
    assert (
        f"[pos] watch_dir {not_a_folder} is a file, not a folder; name the folder the POS drops its exports into"
        in agent.log
    )
    assert "Traceback" not in agent.log
