"""Movements held while the hub's own clock was wrong: a real hub process whose wall clock jumps two hours ahead
(tests/harness/shifted_clock.py), two real agent processes with right clocks, on each backend.

Found: with the clock window at a minute and the hub's clock two hours ahead, every sale of every store was held
in quarantine (its sender's clock "two hours behind the hub's"), and once the hub had named its own clock as the
wrong one, those movements still waited for an admin to resolve them one by one, where "apply at receipt" books
each at the hub's wrong time of receipt. Now each movement held while the stores agreed the hub's clock was off
(and those held in the minutes before it noticed, whose sender's clock was off by as much) carries how far
(``hub_clock_off_ms``), and is applied at its own time, the one its store's right clock gave it: by the hub
itself once its clock is right again, or all at once by an admin (``POST /v1/quarantine/release``) or by
``shelfsync-hub quarantine release``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.faults.helpers import Store, _query, wait_until
from tests.harness.commands import hub_env, new_hub_db
from tests.harness.credentials import Credential, add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import get_json
from tests.harness.shifted_clock import SCRIPT, SHIFT_FILE_ENV

HOUR_MS = 3_600_000
WAIT_S = 60.0


def pending(hub: HubProcess, token: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = get_json(f"{hub.url}/v1/quarantine", token)["quarantine"]
    return rows


def record_sale(store: Store) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "record", "--sku", "SKU-A", "--kind", "sale", "--qty", "-1",
         "--config", str(store.config)],
        capture_output=True, check=False, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def post_release(hub: HubProcess, token: str) -> Any:
    req = urllib.request.Request(
        f"{hub.url}/v1/quarantine/release", data=b"", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def held_while_the_hubs_clock_ran_ahead(db: Path | str, tmp_path: Path, how: str) -> None:
    shift = tmp_path / "hub-clock-shift-ms"
    shift.write_text("0", encoding="ascii")
    hub = HubProcess(
        tmp_path / "hub.log", db=db, port=0, python=(sys.executable, SCRIPT),
        env={**os.environ, SHIFT_FILE_ENV: str(shift), "SHELFSYNC_HUB_CLOCK_WINDOW_S": "60"},
    )  # fmt: skip
    stores = [
        Store(f"store-{n}", f"S00{n}", add_credential(db, f"S00{n}"), tmp_path / f"store-{n}", "") for n in (1, 2)
    ]
    admin: Credential = add_credential(db, role="admin")
    try:
        hub.start()
        runs = []
        for store in stores:
            store.hub_url = hub.url
            store.write_config()
            with open(store.config, "a", encoding="utf-8") as config:  # the [replicator] table is the file's last
                config.write("heartbeat_s = 0.3\n")
            runs.append(store.start())
        wait_until(
            "both stores synced with the hub's clock right",
            lambda: sum(
                a["clock_skew_ms"] is not None for a in get_json(f"{hub.url}/v1/agents", admin.token)["agents"]
            ) == 2,
            WAIT_S,
        )  # fmt: skip

        shift.write_text(str(2 * HOUR_MS), encoding="ascii")  # the hub's clock jumps two hours ahead
        for store in stores:  # maybe before the hub noticed its clock
            record_sale(store)
        wait_until(
            "the hub to name its own clock",
            lambda: get_json(f"{hub.url}/v1/status", admin.token)["hub_clock"] is not None, WAIT_S,
        )  # fmt: skip
        for store in stores:  # after it noticed
            record_sale(store)
        wait_until("the four sales to be held", lambda: len(pending(hub, admin.token)) == 4, WAIT_S)
        wait_until(  # those held before it noticed are marked in the background
            "every held sale to say the hub's clock was off",
            lambda: all(q["hub_clock_off_ms"] is not None for q in pending(hub, admin.token)), WAIT_S,
        )  # fmt: skip
        held = pending(hub, admin.token)
        assert all(abs(q["hub_clock_off_ms"] - 2 * HOUR_MS) < 60_000 for q in held), held
        assert _query(db, "SELECT event_id FROM events") == []

        if how == "itself":
            shift.write_text("0", encoding="ascii")  # the hub's clock is set right: it releases them itself
            wait_until("the hub to release the held sales", lambda: pending(hub, admin.token) == [], WAIT_S)
            released_by = "hub"
            wait_until(
                "the hub's log to say so", lambda: "hub released 4 event(s) held because of the hub's" in hub.log
            )
        elif how == "admin":  # the admin trusts the stores, the hub's clock still wrong: one call for the lot
            assert post_release(hub, admin.token) == {"released": 4, "left": 0}
            released_by = admin.agent_id
        else:
            done = subprocess.run(
                [sys.executable, "-m", "hub", "quarantine", "release", "--db", str(db)],
                env=hub_env(LOGNAME="ops-oncall", USER="ops-oncall"), capture_output=True, check=False, text=True,
                timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("Released 4 movement(s) held because of the hub's own clock"), done.stdout
            released_by = "ops-oncall (shelfsync-hub)"  # the OS user who ran it
        assert pending(hub, admin.token) == []
        applied = get_json(f"{hub.url}/v1/quarantine?status=applied", admin.token)["quarantine"]
        assert sorted(q["resolved_by"] for q in applied) == [released_by] * 4, applied
        # each sale at its own time, the one its store's right clock gave it, not at the hub's time of receipt
        booked = dict(_query(db, "SELECT event_id, occurred_at FROM events"))
        assert {bytes(k).hex(): v for k, v in booked.items()} == {
            q["event_id"].replace("-", ""): q["occurred_at"] for q in applied
        }, (booked, applied)
        counts = {
            (c["location"], c["sku"]): c["on_hand"] for c in get_json(f"{hub.url}/v1/counts", admin.token)["counts"]
        }
        assert counts == {("S001", "SKU-A"): -2, ("S002", "SKU-A"): -2}, counts
        for run in runs:
            assert run.stop() == 0
    finally:
        for store in stores:
            store.kill_all()
        hub.close()


@pytest.mark.parametrize("how", ["itself", "admin", "cli"])
def test_movements_held_by_the_hubs_own_clock_are_released_at_their_own_time_sqlite(tmp_path: Path, how: str) -> None:
    held_while_the_hubs_clock_ran_ahead(new_hub_db(tmp_path / "hub.db"), tmp_path, how)


@pytest.mark.parametrize("how", ["itself", "admin", "cli"])
def test_movements_held_by_the_hubs_own_clock_are_released_at_their_own_time_postgres(
    pg_url: str, tmp_path: Path, how: str
) -> None:
    held_while_the_hubs_clock_ran_ahead(pg_url, tmp_path, how)
