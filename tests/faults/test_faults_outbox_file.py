"""The outbox file deleted or replaced while a real agent runs with its hub unreachable.

Deleted (`rm outbox.sqlite3*`): the agent writes its open file back at the path, says so once, keeps
recording into it, and every movement it acknowledged reaches the hub once it is reachable. Replaced by
another file (a backup put back): the agent saves its own beside it, says so once and exits 1; the restart
uses the file now at the path, and `shelfsync-agent outbox send` sends the saved copy's movements.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable

from tests.faults.helpers import Simulation, Store, drained, hub_events, verify, wait_until
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port
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
    source, copy = sqlite3.connect(store.outbox), sqlite3.connect(backup)
    source.backup(copy)
    source.close()
    copy.close()
    recorded += [_record_by_hand(store, f"LATE-{i}") for i in range(2)]
    os.replace(backup, store.outbox)  # the backup put back while the agent runs

    assert agent.wait(60) == 1, "the agent stops so that its restart uses the file now at the path"
    assert agent.log.count(REPLACED_SAID) == 1 and "Traceback" not in agent.log, agent.log[-3000:]
    saved = sorted(store.data_dir.glob("outbox.sqlite3.replaced-*[0-9Z]"))
    assert len(saved) == 1 and str(saved[0]) in agent.log
    assert "2 movements the hub has not acknowledged" not in agent.log  # it holds all four
    assert "4 movements the hub has not acknowledged" in agent.log

    _reach_the_hub(store, hub)
    resumed = store.start()
    sent = _cli(store, "outbox", "send", str(saved[0]))
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith(f"The hub holds every movement of {saved[0]}")
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert resumed.stop() == 0
    held = verify(hub, [store], extra_outboxes=[saved[0]])
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
    resumed = store.start()
    sent = _cli(store, "outbox", "send", str(saved[0]))
    assert sent.returncode == 0, sent.stderr
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert resumed.stop() == 0
    assert "1 saved copies of this agent's outbox lie beside it" in resumed.log and str(saved[0]) in resumed.log
    held = verify(hub, [store], extra_outboxes=[saved[0]])
    assert set(recorded) <= set(held) and len(held) == 4
    assert set(hub_events(hub.db)) == set(held)
