"""A POS export read by an agent whose own clock is days behind: its rows are the till's, not future ones.

A real ``python -m agent run`` process whose wall clock is shifted (tests/harness/shifted_clock.py), as a store
PC whose clock jumped back while it was offline (a flat CMOS battery, a wrong hand correction), watches a real
drop folder; the till that writes the exports keeps the right time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from tests.adversarial.pos_drop import HEADER, SETTLE_S, WAIT_S, export_row, place_export, skus_of, wait_report
from tests.faults.helpers import Store, hub_events, wait_until
from tests.harness.agent_process import AgentProcess
from tests.harness.hub_process import HubProcess
from tests.harness.shifted_clock import SCRIPT, SHIFT_FILE_ENV

DAYS_BEHIND = 3
DAY_MS = 86_400_000


def test_an_export_read_while_the_agents_clock_is_days_behind_is_imported_not_quarantined_as_future(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    """Found: every row of a till's export was quarantined as "in the future" (and the file filed in failed/)
    when the agent's own clock was more than future_tolerance_s behind: good sales, never booked unless a person
    found them and dropped the file again once the clock was right. A row is in the future now only when it is
    also later than the export file was written, which the till's clock (or its file server's) dates."""
    hub.start()
    store = make_store(hub, hub.url)
    drop = tmp_path / "drop"
    store.write_config()
    with store.config.open("a") as config:
        config.write(f'\n[pos]\nwatch_dir = "{drop}"\nsettle_s = {SETTLE_S}\nprofile = "generic"\n')
    shift = tmp_path / "clock-shift"
    shift.write_text(str(-DAYS_BEHIND * DAY_MS))
    run = AgentProcess(
        store.config, store.data_dir / "agent.log", store.printed,
        env={**os.environ, SHIFT_FILE_ENV: str(shift)}, python=(sys.executable, SCRIPT),
    )  # fmt: skip
    store.runs.append(run)
    wait_until("the agent watches its drop folder", lambda: (drop / "processed").is_dir(), WAIT_S)

    typo = export_row(99).replace(export_row(99)[:4], str(int(export_row(99)[:4]) + 1), 1)  # a year too late
    place_export(drop, "sales.csv", HEADER + "".join(export_row(i) for i in range(20)) + typo)
    report = wait_report(drop, "sales.csv")
    assert report["status"] == "imported" and report["imported"] == 20, {
        k: v for k, v in report.items() if k != "quarantine"
    } | {"quarantine": report["quarantine"][:2]}  # type: ignore[index]
    assert [q["line"] for q in report["quarantine"]] == [22], report["quarantine"]  # type: ignore[index,union-attr]
    assert "in the future" in report["quarantine"][0]["reason"]  # type: ignore[index]
    assert skus_of(store, "GOOD") == {f"GOOD-{i}" for i in range(20)}
    assert hub.db is not None
    wait_until(
        "the hub has the 20 sales",
        lambda: len([e for e in hub_events(hub.db, [store.location]).values() if e.sku.startswith("GOOD-")]) == 20,  # type: ignore[arg-type]
        WAIT_S,
    )
