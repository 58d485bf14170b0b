"""A running agent with a POS drop folder, for the tests that drop hostile exports into it
(test_found_pos_exports.py, test_found_pos_hygiene.py): start it, place an export, wait for its report."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.faults.helpers import Store, outbox_events, wait_until
from tests.harness.hub_process import HubProcess

WAIT_S = 90.0
SETTLE_S = 0.3
HEADER = "date,time,sku,qty,kind,ref\n"


def export_row(i: int, prefix: str = "GOOD") -> str:
    """A good sale of today (inside the hub's clock window), unique per ``i``."""
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30) + timedelta(seconds=i % 1200)
    return f"{at:%Y-%m-%d},{at:%H:%M:%S},{prefix}-{i},1,sale,{prefix.lower()}-{i}\n"


def drop_store(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path, batch_rows: int = 2000, extra: str = ""
) -> tuple[Store, Path]:
    hub.start()
    store = make_store(hub, hub.url)
    drop = tmp_path / "drop"
    with store.config.open("a") as config:
        config.write(
            f'\n[pos]\nwatch_dir = "{drop}"\nsettle_s = {SETTLE_S}\nprofile = "generic"\nbatch_rows = {batch_rows}\n'
            + extra
        )
    store.start()
    wait_until("the agent watches its drop folder", lambda: (drop / "processed").is_dir(), WAIT_S)
    return store, drop


def place_export(drop: Path, name: str, text: str) -> Path:
    """Write the export beside the folder and rename it in, as a well-behaved till does."""
    staged = drop.parent / f"staged-{name}"
    staged.write_text(text, encoding="utf-8")
    target = drop / name
    os.replace(staged, target)
    return target


def report_of(drop: Path, name: str) -> dict[str, object] | None:
    for sub in ("processed", "failed"):
        path = drop / sub / f"{name}.report.json"
        if path.exists():
            return dict(json.loads(path.read_text(encoding="utf-8")))
    return None


def wait_report(drop: Path, name: str) -> dict[str, object]:
    wait_until(f"{name} is filed with its report", lambda: report_of(drop, name) is not None, WAIT_S)
    report = report_of(drop, name)
    assert report is not None
    return report


def skus_of(store: Store, prefix: str) -> set[str]:
    return {e.sku for e in outbox_events(store.outbox).values() if e.sku.startswith(prefix + "-")}
