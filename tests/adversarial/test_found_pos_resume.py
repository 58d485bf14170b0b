"""A real agent killed in the middle of a long import, and a till that pauses in the middle of a row.

A real ``python -m agent run`` process watches a real drop folder and syncs to a real hub; it is killed with
SIGKILL while a large export is being imported, then started again. The assertions are about the store's files:
every row recorded once, the restarted import going on from where the first one durably got to, and no import
left ``running`` in the POS store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.adversarial.pos_drop import HEADER, WAIT_S, drop_store, export_row, place_export, wait_report
from tests.faults.helpers import Store, wait_until
from tests.harness.hub_process import HubProcess

ROWS = 200_000
BATCH_ROWS = 500


def _recorded(store: Store, prefix: str) -> int:
    if not store.outbox.exists():
        return 0
    with sqlite3.connect(store.outbox, timeout=30) as db:
        return int(db.execute("SELECT count(*) FROM events WHERE sku LIKE ?", (prefix + "-%",)).fetchone()[0])


def _imports(store: Store) -> list[tuple[str, str, str | None]]:
    with sqlite3.connect(store.data_dir / "pos-import.sqlite", timeout=30) as db:
        return db.execute("SELECT file_name, status, error FROM imports ORDER BY id").fetchall()


def test_an_agent_killed_in_the_middle_of_a_long_import_goes_on_from_where_it_got_to(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    """Started again, it read and parsed the whole file again (every row recorded so far a duplicate: minutes on
    a large export), and the first import's row stayed ``running`` in the POS store for ever."""
    store, drop = drop_store(hub, make_store, tmp_path, batch_rows=BATCH_ROWS)
    place_export(drop, "day.csv", HEADER + "".join(export_row(i) for i in range(ROWS)))
    wait_until("a good part of the export is recorded", lambda: _recorded(store, "GOOD") >= ROWS // 4, WAIT_S)
    store.runs[-1].kill()
    before = _recorded(store, "GOOD")
    assert before < ROWS, "the import ended before the agent was killed: nothing here tests a resumed import"
    restarted = store.start()
    report = wait_report(drop, "day.csv")
    assert _recorded(store, "GOOD") == ROWS
    assert report["status"] == "imported" and report["rows_read"] == ROWS, report
    assert report["imported"] + report["duplicates"] == ROWS, report
    # read again are only the rows recorded after the last checkpoint (written at least once a second), not all
    # of the rows recorded before the kill, as when the whole file was read again
    assert report["duplicates"] < before, (report, before)
    restarted.wait_for_log(r"day\.csv was interrupted at line [\d,]+; the import goes on from there")
    statuses = [status for _, status, _ in _imports(store)]
    assert statuses == ["resumed", "imported"], _imports(store)
