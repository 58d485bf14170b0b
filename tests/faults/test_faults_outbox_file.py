"""The outbox file deleted or replaced while a real agent runs with its hub unreachable.

Deleted (`rm outbox.sqlite3*`): the agent writes its open file back at the path, says so once, keeps
recording into it, and every movement it acknowledged reaches the hub once it is reachable. Replaced by
another file (a backup put back) or written over in place: the agent saves its own beside it, says so once
and exits 1; the restart uses the file now at the path and takes the saved copy's movements into it, to be sent
with its own (`shelfsync-agent outbox send` sends a copy by hand, in its own epoch).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import RESERVE_MIB
from tests.faults.helpers import Simulation, Store, drained, hub_events, verify, wait_until
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json
from tests.harness.sqlite_copy import backup as sqlite_backup

DELETED_SAID = "was deleted while the agent ran"
REPLACED_SAID = "was replaced by another file while the agent ran"


def _cli(store: Store, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(store.config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _record_by_hand(store: Store, sku: str) -> str:
    done = _cli(store, "record", "--sku", sku, "--kind", "receive", "--qty", "1")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _reach_the_hub(store: Store, hub: HubProcess) -> None:
    store.hub_url = hub.url
    store.write_config()


def test_an_outbox_deleted_under_the_running_agent_loses_nothing(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    total = 600
    unreachable = f"http://127.0.0.1:{free_port()}"
    store = make_store(hub, unreachable, simulation=Simulation(total, rate_per_s=200, seed=11))
    hub.start()
    agent = store.start()
    agent.wait_for_printed("the first movements", lambda lines: sum(line.startswith("recorded") for line in lines) >= 50)
    for suffix in ("", "-wal", "-shm"):
        store.outbox.with_name(store.outbox.name + suffix).unlink(missing_ok=True)
    agent.wait_for_log(DELETED_SAID)
    wait_until("the simulation completes", store.simulation_complete)
    by_hand = _record_by_hand(store, "BY-HAND")
    assert agent.stop() == 0
    assert agent.log.count(DELETED_SAID) == 1 and "Traceback" not in agent.log, agent.log[-3000:]

    _reach_the_hub(store, hub)
    resumed = store.start()
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert resumed.stop() == 0
    held = verify(hub, [store])
    assert len(held) == total + 1, "every simulated movement and the one recorded by hand, none twice"
    assert by_hand in held


def test_an_outbox_replaced_under_the_running_agent_is_saved_and_sent(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    store = make_store(hub, f"http://127.0.0.1:{free_port()}")
    hub.start()
    agent = store.start()
    agent.wait_for_log("started with outbox")
    recorded = [_record_by_hand(store, f"EARLY-{i}") for i in range(2)]
    backup = store.data_dir / "backup.sqlite3"
    sqlite_backup(store.outbox, backup)
    recorded += [_record_by_hand(store, f"LATE-{i}") for i in range(2)]
    os.replace(backup, store.outbox)  # the backup put back while the agent runs

    assert agent.wait(60) == 1, "the agent stops so that its restart uses the file now at the path"
    assert agent.log.count(REPLACED_SAID) == 1 and "Traceback" not in agent.log, agent.log[-3000:]
    saved = sorted(store.data_dir.glob("outbox.sqlite3.replaced-*[0-9Z]"))
    assert len(saved) == 1 and str(saved[0]) in agent.log
    assert "2 movements the hub has not acknowledged" not in agent.log  # it holds all four
    assert "4 movements the hub has not acknowledged" in agent.log

    _reach_the_hub(store, hub)
    sent = _cli(store, "outbox", "send", str(saved[0]))  # by hand, before the agent runs again
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith(f"The hub holds every movement of {saved[0]}")
    resumed = store.start()  # finds the copy sent by hand holding nothing the hub lacks, and renames it
    wait_until("the saved copy is set aside", lambda: len(_sent_copies(store)) == 1)
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert resumed.stop() == 0
    assert not saved[0].exists()
    held = verify(hub, [store], extra_outboxes=_sent_copies(store))
    assert set(recorded) <= set(held) and len(held) == 4
    assert set(hub_events(hub.db)) == set(held)


OVERWRITTEN_SAID = "was overwritten in place while the agent ran"


def test_a_backup_copied_over_the_running_outbox_is_saved_and_sent(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    # `cp backup.sqlite3 outbox.sqlite3` writes into the file the agent has open: the agent kept recording into its
    # WAL over the backup, and its next checkpoint mixed the two ("database disk image is malformed" at the restart).
    store = make_store(hub, f"http://127.0.0.1:{free_port()}")
    hub.start()
    agent = store.start()
    agent.wait_for_log("started with outbox")
    recorded = [_record_by_hand(store, f"EARLY-{i}") for i in range(2)]
    backup = store.data_dir / "backup.sqlite3"
    sqlite_backup(store.outbox, backup)
    kept = backup.read_bytes()
    recorded += [_record_by_hand(store, f"LATE-{i}") for i in range(2)]
    shutil.copyfile(backup, store.outbox)  # what `cp` does: the same file, its bytes replaced

    assert agent.wait(30) == 1, "the agent stops writing the file, and stops so that its restart uses the copy"
    assert agent.log.count(OVERWRITTEN_SAID) == 1 and "Traceback" not in agent.log, agent.log[-3000:]
    assert store.outbox.read_bytes() == kept, "nothing of the agent's WAL was copied into the backup"
    saved = sorted(store.data_dir.glob("outbox.sqlite3.replaced-*[0-9Z]"))
    assert len(saved) == 1 and str(saved[0]) in agent.log
    assert "4 movements the hub has not acknowledged" in agent.log

    _reach_the_hub(store, hub)
    resumed = store.start()  # sends the saved copy itself
    wait_until("the saved copy is sent", lambda: len(_sent_copies(store)) == 1)
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert resumed.stop() == 0
    assert "1 saved copies of this agent's outbox lie beside it" in resumed.log and str(saved[0]) in resumed.log
    held = verify(hub, [store], extra_outboxes=_sent_copies(store))
    assert set(recorded) <= set(held) and len(held) == 4
    assert set(hub_events(hub.db)) == set(held)


TAKEN_SAID = "was taken into the outbox"
UNREADABLE_SAID = "cannot be read as an outbox of this agent"


def _saved_by_the_agent(store: Store, hub: HubProcess) -> tuple[Path, list[str]]:
    """A running agent whose outbox is replaced by a backup while the hub is unreachable: it saves its own (all four
    movements, none acknowledged) beside the backup and exits 1."""
    agent = store.start()
    agent.wait_for_log("started with outbox")
    recorded = [_record_by_hand(store, f"EARLY-{i}") for i in range(2)]
    backup = store.data_dir / "backup.sqlite3"
    sqlite_backup(store.outbox, backup)
    recorded += [_record_by_hand(store, f"LATE-{i}") for i in range(2)]
    os.replace(backup, store.outbox)
    assert agent.wait(60) == 1
    (saved,) = sorted(store.data_dir.glob("outbox.sqlite3.replaced-*[0-9Z]"))
    return saved, recorded


def _sent_copies(store: Store) -> list[Path]:
    return sorted(p for p in store.data_dir.glob("outbox.sqlite3.taken-*") if not p.name.endswith(("-wal", "-shm")))


def _status(store: Store) -> dict[str, Any]:
    done = _cli(store, "status", "--json")
    return json.loads(done.stdout)


def test_saved_copies_beside_the_outbox_are_sent_by_the_agent_at_its_start(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    store = make_store(hub, f"http://127.0.0.1:{free_port()}")
    hub.start()
    saved, recorded = _saved_by_the_agent(store, hub)
    # a second copy of the same history: every event of it is one the hub already holds when it is sent
    twin = saved.with_name(saved.name + "-2")
    sqlite_backup(saved, twin)

    _reach_the_hub(store, hub)
    resumed = store.start()
    wait_until("both saved copies are sent", lambda: len(_sent_copies(store)) == 2)
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert not saved.exists() and not twin.exists()
    assert resumed.log.count(TAKEN_SAID) == 2, resumed.log[-3000:]
    status = _status(store)
    assert status["saved_copies"] == 0 and status["saved_copy_events"] == 0, status
    assert resumed.stop() == 0
    held = verify(hub, [store], extra_outboxes=_sent_copies(store))  # each event once in the hub's ledger
    assert set(recorded) == set(held) and len(held) == 4
    assert set(hub_events(hub.db)) == set(held)


def test_a_saved_copy_is_taken_into_the_outbox_with_the_hub_down_and_a_malformed_one_is_left_alone(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    store = make_store(hub, hub.url)  # the hub is down until the end
    _, recorded = _saved_by_the_agent(store, hub)
    malformed = store.outbox.with_name(f"{store.outbox.name}.replaced-20200101T000000Z")
    garbage = b"this is no database " * 100
    malformed.write_bytes(garbage)

    resumed = store.start()
    resumed.wait_for_log(UNREADABLE_SAID)
    resumed.wait_for_log(TAKEN_SAID)  # the hub down: the copy's movements wait in the outbox, not in the copy
    recorded.append(_record_by_hand(store, "WHILE-WAITING"))
    status = _status(store)
    assert status["saved_copies"] == 0 and status["saved_copy_events"] == 0, status
    assert status["saved_copies_unreadable"] == 1, status
    assert status["backlog"] == 5, status  # the restored outbox's 2, the copy's 2 it lacked, and the new one
    assert "saved copies" in _cli(store, "status").stdout

    hub.start()
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert malformed.read_bytes() == garbage, "the malformed copy is left as it was"
    assert resumed.stop() == 0
    assert resumed.log.count(UNREADABLE_SAID) == 1 and str(malformed) in resumed.log, resumed.log[-3000:]
    assert resumed.log.count(TAKEN_SAID) == 1
    held = verify(hub, [store], extra_outboxes=_sent_copies(store))
    assert set(recorded) == set(held) and len(held) == 5


def test_a_copy_put_beside_the_running_outbox_is_taken_into_it(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    """Found: saved copies were looked for only at the agent's start; one an operator put beside the outbox of a
    running agent (or one another run saved) waited for the next restart."""
    store = make_store(hub, hub.url)
    saved, recorded = _saved_by_the_agent(store, hub)
    away = store.data_dir.parent / saved.name
    os.replace(saved, away)  # kept elsewhere for now
    resumed = store.start()
    resumed.wait_for_log("started with outbox")
    recorded.append(_record_by_hand(store, "BEFORE-THE-COPY"))
    os.replace(away, saved)  # the operator puts it back while the agent runs
    resumed.wait_for_log(TAKEN_SAID)
    assert not saved.exists() and len(_sent_copies(store)) == 1
    hub.start()
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert resumed.stop() == 0
    held = verify(hub, [store], extra_outboxes=_sent_copies(store))
    assert set(recorded) == set(held) and len(held) == 5


def test_the_outbox_is_sent_while_a_saved_copy_could_not_be(hub: HubProcess, make_store: Callable[..., Store]) -> None:
    """Found: the outbox's own movements were sent only once every saved copy was, and a copy sent to a hub that
    did not answer held them back for as long: here for good, the copy's sender keeping the hub address it began
    with after the configuration was reloaded (SIGHUP) with the hub's new one."""
    store = make_store(hub, hub.url)
    _, recorded = _saved_by_the_agent(store, hub)
    hub.start()
    store.hub_url = f"http://127.0.0.1:{free_port()}"  # where the hub no longer answers
    store.write_config()
    resumed = store.start()
    resumed.wait_for_log("started with outbox")
    recorded.append(_record_by_hand(store, "WHILE-DOWN"))
    _reach_the_hub(store, hub)
    os.kill(resumed.pid, signal.SIGHUP)
    resumed.wait_for_log("Configuration reloaded")
    wait_until("the outbox drains", lambda: drained([store], hub.db), timeout_s=60)
    assert resumed.stop() == 0
    held = verify(hub, [store], extra_outboxes=_sent_copies(store))
    assert set(recorded) == set(held) and len(held) == 5


def test_a_saved_copy_sent_at_the_start_is_not_listed_as_a_second_copy_of_the_agent(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    # The hub acknowledged more than the backup holds, and both files hold movements it lacks: the restart forks
    # into a new epoch, and the saved copy is sent in the epoch it had. Two epochs of one agent each syncing after
    # the other began are what the hub lists as two copies sending at once (agent_copies).
    store = make_store(hub, hub.url, batch_size=1)  # a request per movement: the two files' requests interleave
    reader = add_credential(hub.db, role="reader").token
    hub.start()
    agent = store.start()
    agent.wait_for_log("started with outbox")
    recorded = [_record_by_hand(store, f"EARLY-{i}") for i in range(2)]
    wait_until("the first two reach the hub", lambda: drained([store], hub.db))
    backup = store.data_dir / "backup.sqlite3"
    sqlite_backup(store.outbox, backup)
    recorded.append(_record_by_hand(store, "ACKED"))
    wait_until("the third reaches the hub", lambda: drained([store], hub.db))
    assert hub.stop() == 0
    recorded += [_record_by_hand(store, f"SAVED-{i}") for i in range(6)]  # only the saved copy will hold these
    os.replace(backup, store.outbox)
    assert agent.wait(60) == 1

    resumed = store.start()  # the hub is still down: the restored outbox records on
    resumed.wait_for_log("started with outbox")
    recorded += [_record_by_hand(store, f"RESTORED-{i}") for i in range(6)]
    hub.start()
    wait_until("the saved copy is sent", lambda: len(_sent_copies(store)) == 1)
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    resumed.wait_for_log("restored from a backup, copied or rolled back")
    listed = get_json(f"{hub.url}/v1/exceptions?kind=agent_copies", reader)["exceptions"]
    assert resumed.stop() == 0
    assert listed == [], listed
    held = verify(hub, [store], extra_outboxes=_sent_copies(store))
    assert set(recorded) == set(held) and len(held) == 15


def test_the_running_agent_keeps_a_disk_reserve_and_status_says_when_it_is_in_use(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    """agent.reserve: `run` keeps reserve_mib beside the outbox for scans a full disk refuses; `status` (another
    process) reads from the file how much of it is left, and the agent puts back what was given once there is room."""
    store = make_store(hub, hub.url)
    reserve = store.outbox.with_name(store.outbox.name + ".reserve")
    agent = store.start()
    agent.wait_for_log("started with outbox")
    wait_until("the reserve is made", lambda: reserve.exists() and reserve.stat().st_size == RESERVE_MIB << 20)
    status = _status(store)
    assert (status["disk_reserve_bytes"], status["disk_reserve_held_bytes"]) == (RESERVE_MIB << 20,) * 2, status
    assert "disk reserve" not in _cli(store, "status").stdout

    os.truncate(reserve, 1 << 20)  # as the agent leaves it after giving back steps to a full disk
    status = _status(store)
    assert status["disk_reserve_held_bytes"] == 1 << 20, status
    assert "disk reserve IN USE: 1.0 of 8 MiB left" in _cli(store, "status").stdout
    wait_until("the reserve is put back", lambda: reserve.stat().st_size == RESERVE_MIB << 20, timeout_s=60)
    assert agent.stop() == 0
    assert "holds its 8 MiB again" in agent.log, agent.log[-3000:]
