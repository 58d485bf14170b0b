"""``python held_migration.py -m hub serve …``: the hub, its latest migration held at its end until the test says go.

A big ledger makes a step run for tens of seconds (docs/operations.md, Upgrades); a test cannot wait that long, nor
tell when it ends. This runs the real ``shelfsync-hub`` with one statement added to the end of the latest migration
of each backend, inside the step's transaction, that waits for the test:

- SQLite: ``SELECT shelfsync_test_hold()``, a function on every connection that returns once the file
  ``$SHELFSYNC_TEST_HOLD_FILE`` exists;
- PostgreSQL: ``SELECT pg_advisory_xact_lock_shared($SHELFSYNC_TEST_HOLD_KEY)``, which waits while the test holds
  that advisory lock;
- with ``$SHELFSYNC_TEST_STEP_FAILS`` set, PostgreSQL's step ends in a statement that fails instead.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from hub.storage.migrations import Migration

HOLD_FILE_ENV = "SHELFSYNC_TEST_HOLD_FILE"
HOLD_KEY_ENV = "SHELFSYNC_TEST_HOLD_KEY"
FAIL_ENV = "SHELFSYNC_TEST_STEP_FAILS"  # PostgreSQL: the step's last statement fails (a division by zero)
POLL_S = 0.05


def _hold() -> int:
    released = Path(os.environ[HOLD_FILE_ENV])
    while not released.exists():
        time.sleep(POLL_S)
    return 1


def _connect(*args: Any, _connect: Any = sqlite3.connect, **kwargs: Any) -> sqlite3.Connection:
    conn = _connect(*args, **kwargs)
    conn.create_function("shelfsync_test_hold", 0, _hold)
    return conn


def held() -> None:
    from hub.storage.postgres import schema as postgres_schema
    from hub.storage.sqlite import schema as sqlite_schema

    if HOLD_FILE_ENV in os.environ:
        sqlite3.connect = _connect  # type: ignore[assignment]
        _append(sqlite_schema.MIGRATIONS, "SELECT shelfsync_test_hold();")
    if HOLD_KEY_ENV in os.environ:
        _append(postgres_schema.MIGRATIONS, f"SELECT pg_advisory_xact_lock_shared({int(os.environ[HOLD_KEY_ENV])});")
    if FAIL_ENV in os.environ:
        _append(postgres_schema.MIGRATIONS, "SELECT 1 / 0;")


def _append(migrations: dict[int, Migration], statement: str) -> None:
    latest = migrations[max(migrations)]
    script = latest.read() + "\n" + statement + "\n"
    migrations[latest.version] = Migration(latest.version, latest.name, lambda: script)


if __name__ == "__main__":
    if sys.argv[1:3] != ["-m", "hub"]:
        raise SystemExit("usage: python held_migration.py -m hub serve …")
    held()
    from hub.entry import main

    raise SystemExit(main(sys.argv[3:]))
