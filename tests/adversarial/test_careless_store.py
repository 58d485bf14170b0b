"""A careless store and its IT contractor against real hub and agent processes.

(a) An agent re-pointed to another location (``[agent] location`` S001 → S002 in its configuration) with
    movements of S001 still unsent: they are booked at S001, where they happened, new ones at S002, and the
    local count cache holds the hub's counts of S002, including what others booked there before the move.
(b) An agent pointed at a staging hub (a copy of production's database) and back: every movement reaches
    production once, and the count cache holds production's counts, not what staging numbered the same.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.faults.helpers import Store, hub_events, outbox_events, outbox_meta, verify, wait_until
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port
from tests.harness.sqlite_copy import backup as sqlite_backup

ROOT = Path(__file__).resolve().parents[2]
COMMAND_TIMEOUT_S = 60.0


def record(store: Store, sku: str, kind: str, qty: int) -> str:
    """``shelfsync-agent record``; what it said on stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "agent", "record", "--config", str(store.config), "--sku", sku, "--kind", kind,
         "--qty", str(qty)],
        capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr


def cached(outbox: Path, location: str, sku: str) -> int | None:
    """The on-hand figure the agent's count cache holds for (location, sku), None when it holds none."""
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT on_hand FROM counts WHERE location = ? AND sku = ?", (location, sku)).fetchone()
    finally:
        conn.close()
    return None if row is None else int(row[0])


def newest_change(hub_db: Path) -> int:
    conn = sqlite3.connect(hub_db)
    try:
        return int(conn.execute("SELECT COALESCE(MAX(change_id), 0) FROM changes").fetchone()[0])
    finally:
        conn.close()


def feed_caught_up(store: Store, hub_db: Path) -> bool:
    return int(outbox_meta(store.outbox).get("feed_cursor") or 0) >= newest_change(hub_db)


def test_an_agent_moved_to_another_location_books_its_backlog_where_it_happened_and_learns_its_new_counts(
    hub: HubProcess, tmp_path: Path
) -> None:
    other = Store("store-2", "S002", add_credential(hub.db, "S002"), tmp_path / "store-2", hub.url)
    other.write_config()
    moved = Store("store-1", "S001", add_credential(hub.db, "S001", "S002"), tmp_path / "store-1", hub.url)
    moved.write_config()
    hub.start()
    record(other, "SKU-X", "receive", 10)  # booked at S002 before the first store's agent moves there
    other_run = other.start()
    wait_until("S002's receipt at the hub", lambda: len(hub_events(hub.db, ["S002"])) == 1)
    assert other_run.stop() == 0

    record(moved, "SKU-A", "receive", 5)
    run = moved.start()
    wait_until("S001's receipt at the hub", lambda: len(hub_events(hub.db, ["S001"])) == 1)
    wait_until("the feed read past S002's receipt", lambda: feed_caught_up(moved, hub.db))
    assert run.stop() == 0
    record(moved, "SKU-A", "sale", -2)  # still at S001, unsent when the contractor edits the configuration

    moved.location = "S002"
    moved.write_config()
    said = record(moved, "SKU-Y", "receive", 3)  # after the move: at S002
    assert (
        f"The outbox {moved.outbox} was for location S001 and is now for S002 (the configuration changed): its 1"
        " movements recorded at S001 and not yet sent are sent as S001's, new ones are booked at S002"
    ) in said
    run = moved.start()
    wait_until("every movement at the hub", lambda: len(hub_events(hub.db)) == 4)
    wait_until("the feed caught up again", lambda: feed_caught_up(moved, hub.db))
    assert run.stop() == 0

    booked = {(e.location, e.sku, e.qty) for e in hub_events(hub.db).values()}
    assert booked == {("S002", "SKU-X", 10), ("S001", "SKU-A", 5), ("S001", "SKU-A", -2), ("S002", "SKU-Y", 3)}
    assert cached(moved.outbox, "S002", "SKU-Y") == 3
    assert cached(moved.outbox, "S002", "SKU-X") == 10, "the count cache of S002 misses what was booked there"
    before = Store("store-1 at S001", "S001", moved.cred, moved.data_dir, hub.url)  # the same outbox, before the move
    verify(hub, [moved, other, before])


def test_an_agent_sent_to_a_staging_hub_and_back_delivers_everything_to_production_and_keeps_its_counts(
    hub: HubProcess, tmp_path: Path
) -> None:
    store = Store("store-1", "S001", add_credential(hub.db, "S001"), tmp_path / "store-1", hub.url)
    store.write_config()
    till = Store("till-2", "S001", add_credential(hub.db, "S001"), tmp_path / "till-2", hub.url)
    till.write_config()
    hub.start()
    record(store, "SKU-A", "receive", 5)
    run = store.start()
    wait_until("SKU-A at production", lambda: len(hub_events(hub.db)) == 1)
    wait_until("the feed caught up with production", lambda: feed_caught_up(store, Path(hub.db)))
    assert run.stop() == 0

    staging_db = tmp_path / "staging.db"
    sqlite_backup(Path(hub.db), staging_db)  # the contractor's staging hub: a copy of production
    staging = HubProcess(tmp_path / "staging.log", db=staging_db, port=free_port())
    try:
        staging.start()
        for sku in ("SKU-Z", "SKU-Y", "SKU-X", "SKU-W", "SKU-V"):  # production goes on meanwhile, further than staging
            record(till, sku, "receive", 7)
        till_run = till.start()
        wait_until("the till's receipts at production", lambda: len(hub_events(hub.db)) == 6)
        assert till_run.stop() == 0

        store.hub_url = staging.url
        store.write_config()
        for sku in ("SKU-B", "SKU-C", "SKU-D"):
            record(store, sku, "receive", 1)
        run = store.start()
        wait_until("three receipts at staging", lambda: len(hub_events(staging_db)) == 4)
        wait_until("the feed caught up with staging", lambda: feed_caught_up(store, staging_db))
        assert run.stop() == 0
    finally:
        staging.close()

    store.hub_url = hub.url  # and back to production
    store.write_config()
    run = store.start()
    wait_until("the staging receipts at production", lambda: len(hub_events(hub.db)) == 9)
    wait_until("the feed caught up with production again", lambda: feed_caught_up(store, Path(hub.db)))
    assert run.stop() == 0

    assert cached(store.outbox, "S001", "SKU-B") == 1
    missed = [sku for sku in ("SKU-Z", "SKU-Y", "SKU-X", "SKU-W", "SKU-V") if cached(store.outbox, "S001", sku) != 7]
    assert not missed, f"the count cache misses production's changes of {missed}"
    verify(hub, [store, till])


def test_an_outbox_replaced_by_an_empty_one_while_the_agent_is_stopped_loses_nothing_new(
    hub: HubProcess, tmp_path: Path
) -> None:
    store = Store("store-1", "S001", add_credential(hub.db, "S001"), tmp_path / "store-1", hub.url)
    store.write_config()
    hub.start()
    for sku in ("SKU-A", "SKU-B", "SKU-C"):
        record(store, sku, "receive", 4)
    run = store.start()
    wait_until("the first three at the hub", lambda: len(hub_events(hub.db)) == 3)
    assert run.stop() == 0
    first = outbox_events(store.outbox)

    for name in ("outbox.sqlite3", "outbox.sqlite3-wal", "outbox.sqlite3-shm"):  # staff "fixed" it
        (store.data_dir / name).unlink(missing_ok=True)
    (store.data_dir / "outbox.sqlite3").write_bytes(b"")
    for sku in ("SKU-A", "SKU-B", "SKU-D"):
        record(store, sku, "sale", -1)
    run = store.start()
    wait_until("the new three at the hub", lambda: len(hub_events(hub.db)) == 6)
    assert run.stop() == 0
    held = hub_events(hub.db)
    assert set(first) | set(outbox_events(store.outbox)) == set(held)


def test_an_agent_moved_in_its_configuration_only_says_at_start_that_the_hub_will_refuse_its_movements(
    hub: HubProcess, tmp_path: Path
) -> None:
    cred = add_credential(hub.db, "S001")
    store = Store("store-1", "S002", cred, tmp_path / "store-1", hub.url)  # the hub still binds it to S001
    store.write_config()
    hub.start()
    run = store.start()
    said = (
        f"The hub binds this agent's credential ({cred.agent_id}) to S001, not to S002 as [agent] location says:"
        " every movement recorded at S002 is refused by the hub (forbidden_location) and set aside; bind the"
        f" credential to S002 on the hub (`shelfsync-hub agent bind {cred.agent_id} --location S001 --location S002`),"
        " or set location back."
    )
    wait_until("the agent says so", lambda: said in store.log())
    assert run.stop() == 0
    assert store.log().count(said) == 1


def bind(hub: HubProcess, agent_id: str, *locations: str) -> str:
    """``shelfsync-hub agent bind`` against the serving hub's database; what it printed."""
    args = [arg for loc in locations for arg in ("--location", loc)]
    done = subprocess.run(
        [sys.executable, "-m", "hub", "agent", "bind", "--db", str(hub.db), agent_id, *args],
        capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def agent_cli(store: Store, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args, "--config", str(store.config)],
        capture_output=True, check=False, text=True, timeout=COMMAND_TIMEOUT_S, cwd=ROOT,
    )  # fmt: skip


def test_movements_refused_before_the_credential_was_bound_to_the_new_location_are_delivered_by_resend(
    hub: HubProcess, tmp_path: Path
) -> None:
    cred = add_credential(hub.db, "S001")
    store = Store("store-1", "S001", cred, tmp_path / "store-1", hub.url)
    store.write_config()
    hub.start()
    record(store, "SKU-A", "receive", 5)
    store.location = "S002"  # moved in its configuration before the hub's operator bound the credential there
    store.write_config()
    record(store, "SKU-B", "receive", 3)
    record(store, "SKU-C", "receive", 2)
    run = store.start()
    wait_until("two movements set aside", lambda: len(outbox_events(store.outbox, set_aside=True)) == 2)
    refused = set(outbox_events(store.outbox, set_aside=True))
    held = agent_cli(store, "resend", "--all")
    assert held.returncode == 3 and "another shelfsync agent is already running" in held.stderr, held.stderr
    assert run.stop() == 0
    assert set(hub_events(hub.db)) == set(outbox_events(store.outbox))  # S001's receipt only

    said = bind(hub, cred.agent_id, "S001", "S002")  # the operator binds it, as the agent's ERROR said; no restart
    assert said == f"{cred.agent_id} is now bound to S001, S002 (was S001).\n"
    done = agent_cli(store, "resend", "--code", "forbidden_location")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (
        "2 set-aside movements are queued again, after the 0 waiting; the agent sends them when it runs."
    )
    assert outbox_events(store.outbox, set_aside=True) == {}
    assert set(outbox_events(store.outbox)) >= refused  # the same event ids
    run = store.start()
    wait_until("the refused two at the hub", lambda: len(hub_events(hub.db)) == 3)
    wait_until("acknowledged", lambda: outbox_meta(store.outbox)["acked_seq"] == outbox_meta(store.outbox)["last_seq"])
    assert run.stop() == 0
    booked = {(e.location, e.sku, e.qty) for e in hub_events(hub.db).values()}
    assert booked == {("S001", "SKU-A", 5), ("S002", "SKU-B", 3), ("S002", "SKU-C", 2)}
    before = Store("store-1 at S001", "S001", cred, store.data_dir, hub.url)
    verify(hub, [store, before])
