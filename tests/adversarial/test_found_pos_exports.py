"""Hostile and careless POS exports dropped into a running agent's drop folder.

A real ``python -m agent run`` process watches a real folder and syncs to a
real hub. Each test drops what a broken till, a careless script or an
attacker leaves there — a quote never closed, a line of 64 MB, a header of
100,000 columns, an export replaced while it is being read, a file created
empty and written a moment later — and asserts what the store sees: every
good row reaches the outbox, the bad ones are quarantined with a reason, and
the agent's memory stays flat.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from tests.adversarial.pos_drop import (
    HEADER,
    SETTLE_S,
    WAIT_S,
    drop_store,
    export_row,
    place_export,
    skus_of,
    wait_report,
)
from tests.faults.helpers import Store, wait_until
from tests.harness.hub_process import HubProcess

LONG_LINE_CHARS = 64 << 20
RSS_GROWTH_MAX_BYTES = 32 << 20  # reading a 64 MB line whole costs well over 100 MB
WIDE_COLUMNS = 100_000


def test_a_quote_never_closed_swallows_no_good_row(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    store, drop = drop_store(hub, make_store, tmp_path)
    at = datetime.now(UTC) - timedelta(minutes=5)
    broken = f'{at:%Y-%m-%d},{at:%H:%M:%S},"SKU-OPEN,1,sale,open\n'  # a quote opened, never closed
    stray = f'{at:%Y-%m-%d},{at:%H:%M:%S},"SKU-STRAY,1,sale,stray\n'  # closes the quote of the one before it
    text = HEADER + export_row(0) + broken + "".join(export_row(i) for i in range(1, 301)) + stray + "".join(
        export_row(i) for i in range(301, 401)
    ) + broken
    place_export(drop, "sales.csv", text)
    report = wait_report(drop, "sales.csv")
    assert report["status"] == "imported", report
    assert report["imported"] == 401, {k: v for k, v in report.items() if k != "quarantine"}
    assert skus_of(store, "GOOD") == {f"GOOD-{i}" for i in range(401)}
    quarantine = report["quarantine"]
    assert isinstance(quarantine, list)
    lines = {q["line"]: q["reason"] for q in quarantine}
    assert set(lines) == {3, 304, 405}, lines
    assert "never closed" in lines[3]


def test_a_64_mb_line_is_quarantined_unread_with_flat_memory(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    store, drop = drop_store(hub, make_store, tmp_path)
    agent = psutil.Process(store.runs[-1].pid)
    staged = drop.parent / "staged-long.csv"
    with staged.open("w", encoding="utf-8") as out:
        out.write(HEADER + export_row(0))
        block = "A" * (1 << 20)
        for _ in range(LONG_LINE_CHARS // len(block)):
            out.write(block)
        out.write("\n" + export_row(1))
    peak_before = _peak_rss(agent)
    os.replace(staged, drop / "long.csv")
    report = wait_report(drop, "long.csv")
    assert _peak_rss(agent) - peak_before < RSS_GROWTH_MAX_BYTES
    assert report["status"] == "imported" and report["imported"] == 2, report
    assert [(q["line"], "longer than" in q["reason"]) for q in report["quarantine"]] == [(3, True)], report  # type: ignore[index,union-attr]
    assert skus_of(store, "GOOD") == {"GOOD-0", "GOOD-1"}


def test_a_header_of_100000_columns_fails_the_file_with_a_reason(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    store, drop = drop_store(hub, make_store, tmp_path)
    header = HEADER.strip() + "," + ",".join(f"c{i}" for i in range(WIDE_COLUMNS)) + "\n"
    place_export(drop, "wide.csv", header + "".join(export_row(i).strip() + "," * WIDE_COLUMNS + "\n" for i in range(3)))
    report = wait_report(drop, "wide.csv")
    assert report["status"] == "failed", {k: v for k, v in report.items() if k != "quarantine"}
    assert "header row" in str(report["error"]) and "longer than" in str(report["error"])
    assert (drop / "failed" / "wide.csv").exists()
    assert store.runs[-1].alive()


def test_an_export_replaced_while_it_is_read_is_imported_whole(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    first_rows = 20_000
    store, drop = drop_store(hub, make_store, tmp_path, batch_rows=50)
    target = place_export(drop, "day.csv", HEADER + "".join(export_row(i, "FIRST") for i in range(first_rows)))
    wait_until("the import of the first export is under way", lambda: len(skus_of(store, "FIRST")) > 0, WAIT_S)
    staged = drop.parent / "staged-second.csv"
    staged.write_text(HEADER + "".join(export_row(i, "SECOND") for i in range(200)), encoding="utf-8")
    os.replace(staged, target)  # the till re-exports the day under the same name
    assert len(skus_of(store, "FIRST")) < first_rows, "the first export was imported before it was replaced"
    wait_until("every row of both exports is in the outbox", lambda: len(skus_of(store, "SECOND")) == 200, WAIT_S)
    assert len(skus_of(store, "FIRST")) == first_rows
    wait_until("the second export is filed away", lambda: not target.exists(), WAIT_S)


def test_an_export_created_empty_and_written_later_is_imported(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    store, drop = drop_store(hub, make_store, tmp_path)
    target = drop / "late.csv"
    target.touch()  # the till opens its export, then takes a while to compute it
    time.sleep(SETTLE_S * 5)  # the scenario: longer than settle_s with nothing written (not synchronisation)
    target.write_text(HEADER + "".join(export_row(i) for i in range(10)), encoding="utf-8")
    report = wait_report(drop, "late.csv")
    assert report["status"] == "imported" and report["imported"] == 10, report
    assert skus_of(store, "GOOD") == {f"GOOD-{i}" for i in range(10)}


def _peak_rss(process: psutil.Process) -> int:
    with open(f"/proc/{process.pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")
