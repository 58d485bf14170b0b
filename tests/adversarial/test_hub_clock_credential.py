"""A credential issued while the hub's own clock was ahead: real ``shelfsync-hub agent add`` and hub processes
(the first with its wall clock shifted, tests/harness/shifted_clock.py), a real agent process, on each backend.

Found: with the hub's clock two days ahead, ``agent add`` stored the credential's creation time two days in the
future. Once the hub's clock was set right, every movement of that store was held in quarantine as "before its
credential was created" (hub.clock_window.BEFORE_AGENT), for as long as the clock had been off: a store with a
right clock quarantined by the hub's own past error. A creation time ahead of the hub's clock is now no reason
to hold a movement (the hub's clock was wrong then, so it says nothing about when the credential was made).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.faults.helpers import Store, _query, hub_events, wait_until
from tests.harness.commands import hub_env, new_hub_db
from tests.harness.credentials import Credential, add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.shifted_clock import SCRIPT, SHIFT_FILE_ENV

DAY_MS = 86_400_000
WAIT_S = 60.0


def agent_add_with_the_hub_clock_ahead(db: Path | str, tmp_path: Path, location: str) -> Credential:
    shift = tmp_path / "hub-clock-shift-ms"
    shift.write_text(str(2 * DAY_MS), encoding="ascii")
    done = subprocess.run(
        [sys.executable, SCRIPT, "-m", "hub", "agent", "add", "--db", str(db), "--location", location],
        env={**hub_env(), SHIFT_FILE_ENV: str(shift)}, capture_output=True, check=False, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    return Credential(said["agent_id"], said["credential"])


def a_sale_of_a_store_whose_credential_the_hub_dated_ahead(db: Path | str, tmp_path: Path) -> None:
    cred = agent_add_with_the_hub_clock_ahead(db, tmp_path, "S001")
    hub = HubProcess(tmp_path / "hub.log", db=db, port=0, env=dict(os.environ))  # the hub's clock is right again
    store = Store("store-1", "S001", cred, tmp_path / "store-1", "")
    try:
        hub.start()
        store.hub_url = hub.url
        store.write_config()
        run = store.start()
        done = subprocess.run(
            [sys.executable, "-m", "agent", "record", "--sku", "SKU-A", "--kind", "sale", "--qty", "-1",
             "--config", str(store.config)],
            capture_output=True, check=False, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        wait_until(
            "the sale to reach the hub",
            lambda: bool(hub_events(db, ["S001"])) or bool(_query(db, "SELECT quarantine_id FROM quarantine")),
            WAIT_S,
        )
        assert _query(db, "SELECT detail FROM quarantine") == []
        assert [(e.sku, e.kind, e.qty) for e in hub_events(db, ["S001"]).values()] == [("SKU-A", "sale", -1)]
        assert run.stop() == 0
    finally:
        store.kill_all()
        hub.close()


def test_a_credential_dated_ahead_by_the_hubs_clock_does_not_hold_its_stores_sales_sqlite(tmp_path: Path) -> None:
    a_sale_of_a_store_whose_credential_the_hub_dated_ahead(new_hub_db(tmp_path / "hub.db"), tmp_path)


def test_a_credential_dated_ahead_by_the_hubs_clock_does_not_hold_its_stores_sales_postgres(
    pg_url: str, tmp_path: Path
) -> None:
    a_sale_of_a_store_whose_credential_the_hub_dated_ahead(pg_url, tmp_path)


def a_credential_made_while_the_stores_say_the_hubs_clock_is_ahead(db: Path | str, tmp_path: Path) -> None:
    """Found: even with the "ahead of the hub's clock holds nothing" rule, the stored creation time stayed two
    days in the future, so once real time passed it, it applied again: a store's movements of the two days
    before it, sent after it, were held as "before its credential was created". Now, when the stores that synced
    lately agree the hub's clock is off (their skews in the database, as ``GET /v1/status`` reads them), ``agent
    add`` dates the credential by their time."""
    shift = tmp_path / "hub-clock-shift-ms"
    shift.write_text(str(2 * DAY_MS), encoding="ascii")  # the hub machine's clock runs two days ahead
    hub = HubProcess(
        tmp_path / "hub.log", db=db, port=0, python=(sys.executable, SCRIPT),
        env={**os.environ, SHIFT_FILE_ENV: str(shift)},
    )  # fmt: skip
    stores = [
        Store(f"store-{n}", f"S00{n}", add_credential(db, f"S00{n}"), tmp_path / f"store-{n}", "") for n in (1, 2)
    ]
    try:
        hub.start()
        for store in stores:
            store.hub_url = hub.url
            store.write_config()
            store.start()
        wait_until(
            "both stores to have synced with the hub's clock ahead",
            lambda: len(_query(db, "SELECT agent_id FROM agents WHERE clock_skew_ms > 86400000")) == 2,
            WAIT_S,
        )
        done = subprocess.run(
            [sys.executable, SCRIPT, "-m", "hub", "agent", "add", "--db", str(db), "--location", "S003"],
            env={**hub_env(), SHIFT_FILE_ENV: str(shift)}, capture_output=True, check=False, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        said = "ahead of theirs: the new credential is dated by their time, not the hub's."  # 2 days, give or take ms
        assert "The stores that synced lately put the hub's clock " in done.stderr and said in done.stderr, done.stderr
        agent_id = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)["agent_id"]
        [(created_ms,)] = _query(db, "SELECT created_ms FROM agents WHERE agent_id = ?", (agent_id,))
        assert abs(created_ms - time.time() * 1000) < 60_000, "dated by the stores' right time, not two days ahead"
    finally:
        for store in stores:
            store.kill_all()
        hub.close()


def test_a_credential_made_while_the_stores_say_the_hubs_clock_is_ahead_is_dated_by_theirs_sqlite(
    tmp_path: Path,
) -> None:
    a_credential_made_while_the_stores_say_the_hubs_clock_is_ahead(new_hub_db(tmp_path / "hub.db"), tmp_path)


def test_a_credential_made_while_the_stores_say_the_hubs_clock_is_ahead_is_dated_by_theirs_postgres(
    pg_url: str, tmp_path: Path
) -> None:
    a_credential_made_while_the_stores_say_the_hubs_clock_is_ahead(pg_url, tmp_path)
