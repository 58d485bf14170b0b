"""A till still writing its export while a real agent watches the drop folder, and what staff do with exports.

A real ``python -m agent run`` process watches a real folder and syncs to a
real hub. The till writes in chunks and pauses — once in the middle of a line —
and the assertions are about the store's outbox: each row recorded once, as the
till finally wrote it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from tests.adversarial.pos_drop import HEADER, SETTLE_S, WAIT_S, drop_store, export_row, skus_of
from tests.faults.helpers import Store, wait_until
from tests.harness.hub_process import HubProcess


def test_a_till_pausing_in_the_middle_of_a_line_has_that_row_recorded_once_whole(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    """Taken while it ended mid-line, ``…,GOOD-9,1,sale,go`` was a sale with ref "go"; the till then wrote
    "od-9" into the filed copy, which was imported again: the row was two sales."""
    store, drop = drop_store(hub, make_store, tmp_path)
    last = export_row(9)
    cut = last.index(",good-9") + len(",go")
    with (drop / "sales.csv").open("w", encoding="utf-8") as till:  # the till keeps its export open
        till.write(HEADER + "".join(export_row(i) for i in range(9)) + last[:cut])
        till.flush()
        time.sleep(SETTLE_S * 5)  # the scenario: the till pauses longer than settle_s (not synchronisation)
        till.write(last[cut:])
    wait_until("every row is in the outbox", lambda: len(skus_of(store, "GOOD")) == 10, WAIT_S)
    assert _refs(store, "GOOD-9") == ["good-9"]


def _refs(store: Store, sku: str) -> list[str]:
    """The refs of the outbox's movements of ``sku``, one per movement."""
    with sqlite3.connect(store.outbox, timeout=30) as db:
        return sorted(ref for (ref,) in db.execute("SELECT ref FROM events WHERE sku = ?", (sku,)))


def test_a_till_writing_on_while_its_export_is_read_has_each_row_recorded_once_whole(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    """The reader went on past what it had hashed, to wherever the till was: a row cut at the end of the
    file (``…,LATE-0,1,sale,la``) was recorded as a sale of its own, and again whole once the file settled."""
    rows = 20_000
    store, drop = drop_store(hub, make_store, tmp_path, batch_rows=50)
    late = export_row(0, "LATE")
    cut = late.index(",late-0") + len(",la")
    with (drop / "day.csv").open("w", encoding="utf-8") as till:
        till.write(HEADER + "".join(export_row(i) for i in range(rows)))
        till.flush()
        wait_until("the import is under way", lambda: len(skus_of(store, "GOOD")) > 0, WAIT_S)
        till.write(late[:cut])  # the till writes on, in a chunk that ends in the middle of a row
        till.flush()
        store.runs[-1].wait_for_log("changed while it was being imported", WAIT_S)
        till.write(late[cut:])
    wait_until("every row is in the outbox", lambda: len(skus_of(store, "GOOD")) == rows and skus_of(store, "LATE"), WAIT_S)
    assert _refs(store, "LATE-0") == ["late-0"]
    wait_until("the export is filed", lambda: (drop / "processed" / "day.csv").exists(), WAIT_S)


def test_thousands_of_exports_at_once_leave_one_log_line_each(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    """Besides its one summary line per export, the log had watchfiles' "N changes detected" at every change
    of the folder: 400 more lines for 3,000 exports, saying nothing a person can act on."""
    files = 200
    store, drop = drop_store(hub, make_store, tmp_path)
    staged = tmp_path / "staged"
    staged.mkdir()
    for n in range(files):
        (staged / f"till-{n:04d}.csv").write_text(HEADER + export_row(n), encoding="utf-8")
    for n in range(files):
        os.replace(staged / f"till-{n:04d}.csv", drop / f"till-{n:04d}.csv")
    wait_until("every export is filed", lambda: len(list((drop / "processed").glob("*.csv"))) == files, WAIT_S)
    assert len(skus_of(store, "GOOD")) == files
    log = store.runs[-1].log
    assert log.count("Imported the POS export") == files
    assert "changes detected" not in log and "change detected" not in log, log[-2000:]


def test_an_export_cut_short_and_rewritten_while_it_is_read_leaves_no_row_of_the_seam(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    """The reader went on in the new, shorter version from where it was in the old one: the middle of a
    line, a bad row (``COND-12,1,sale,second-12``, an issue sent to the hub) or worse one that reads well
    (``6-12-06,…`` is June 12, 2006)."""
    first, second = 20_000, 4_000
    store, drop = drop_store(hub, make_store, tmp_path, batch_rows=50)
    target = drop / "day.csv"
    target.write_text(HEADER + "".join(export_row(i, "FIRST") for i in range(first)), encoding="utf-8")
    wait_until("the import is under way", lambda: len(skus_of(store, "FIRST")) > 0, WAIT_S)
    with target.open("w", encoding="utf-8") as till:  # the till exports the day again, over the same file
        till.write(HEADER + "".join(export_row(i, "SECOND") for i in range(second)))
    wait_until("the new version is imported", lambda: len(skus_of(store, "SECOND")) == second, WAIT_S)
    wait_until("the export is filed", lambda: (drop / "processed" / "day.csv").exists(), WAIT_S)
    with sqlite3.connect(store.data_dir / "pos-import.sqlite", timeout=30) as db:
        assert db.execute("SELECT line, reason, raw FROM quarantine").fetchall() == []
    with sqlite3.connect(store.outbox, timeout=30) as db:
        skus = {sku for (sku,) in db.execute("SELECT sku FROM events")}
    assert {s for s in skus if not s.startswith(("FIRST-", "SECOND-"))} == set()


def test_a_till_pausing_in_the_middle_of_a_line_longer_than_ten_settles_has_that_row_recorded_once_whole(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    """The protection was a wait of 10 × settle_s: a till that paused longer in the middle of a row had the cut
    row (``…,GOOD-9,1,sale,go``) recorded as a sale of its own, and the whole row as a second one."""
    store, drop = drop_store(hub, make_store, tmp_path)
    last = export_row(9)
    cut = last.index(",good-9") + len(",go")
    with (drop / "sales.csv").open("w", encoding="utf-8") as till:  # the till keeps its export open
        till.write(HEADER + "".join(export_row(i) for i in range(9)) + last[:cut])
        till.flush()
        time.sleep(SETTLE_S * 10 * 2)  # the scenario: a pause twice as long as the old protection
        till.write(last[cut:])
    wait_until("the export is filed", lambda: (drop / "processed" / "sales.csv.report.json").exists(), WAIT_S)
    assert len(skus_of(store, "GOOD")) == 10
    assert _refs(store, "GOOD-9") == ["good-9"]


def test_a_row_finished_after_it_was_imported_as_it_stood_is_never_a_second_sale(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    """A file whose last line has no line break is imported as it stands once it stayed unchanged for
    ``unfinished_line_s`` (an export that simply ends so). A till that finishes that row even later must not make
    it a second sale: the finished row is that row, and as it differs it is quarantined with a reason."""
    store, drop = drop_store(hub, make_store, tmp_path, extra="unfinished_line_s = 1.0\n")
    last = export_row(9)
    cut = last.index(",good-9") + len(",go")
    with (drop / "sales.csv").open("w", encoding="utf-8") as till:
        till.write(HEADER + "".join(export_row(i) for i in range(9)) + last[:cut])
        till.flush()
        wait_until("the export is filed", lambda: (drop / "processed" / "sales.csv.report.json").exists(), WAIT_S)
        till.write(last[cut:])  # into the filed copy: a move keeps the open file
    store.runs[-1].wait_for_log("changed after it was imported and filed in processed/", WAIT_S)
    assert len(skus_of(store, "GOOD")) == 10
    assert _refs(store, "GOOD-9") == ["go"]
    with sqlite3.connect(store.data_dir / "pos-import.sqlite", timeout=30) as db:
        ((line, reason),) = db.execute("SELECT line, reason FROM quarantine").fetchall()
    assert line == 11
    assert reason.startswith("line 11 was imported as it stood, without a line break, after ") and (
        "the POS finished it later and it differs" in reason
    ), reason
