"""The SQLite hub schema and its migrations (``PRAGMA user_version``)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from hub.storage.base import StoreError
from hub.storage.feed import FEED_HISTORY_KEY, FEED_HOME_KEY, new_feed_history
from hub.storage.migrations import Migration, migrations
from hub.storage.sqlite.writer import InlineConnection

log = logging.getLogger(__name__)

# Schema version -> the migration that brings version - 1 to it (hub/storage/sqlite/migrations/).
MIGRATIONS: dict[int, Migration] = migrations("hub.storage.sqlite")
SCHEMA_VERSION = max(MIGRATIONS)


async def migrate(db: InlineConnection, path: Path) -> str:
    """Bring the schema to SCHEMA_VERSION, one transaction per step; return the hub id."""
    rows = list(await db.execute_fetchall("PRAGMA user_version"))
    version = int(rows[0][0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the hub database {path} has schema version {version}, newer than this shelfsync "
            f"understands ({SCHEMA_VERSION}); upgrade shelfsync"
        )
    for step in range(version + 1, SCHEMA_VERSION + 1):
        script = MIGRATIONS[step].read()
        await db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {step};\nCOMMIT;")
        log.info("Migrated the hub database %s to schema version %d (%s).", path, step, MIGRATIONS[step].name)
    await db.execute(
        "INSERT INTO meta (key, value) VALUES ('hub_id', ?) ON CONFLICT (key) DO NOTHING", (uuid.uuid4().hex,)
    )
    rows = list(await db.execute_fetchall("SELECT value FROM meta WHERE key = 'hub_id'"))
    return str(rows[0][0])


async def feed_history(db: InlineConnection, path: Path) -> str:
    """The change feed's history (``hub.storage.feed``): a new one when this file is not the one it began in."""
    st = path.stat()
    home = f"sqlite:{st.st_dev}:{st.st_ino}"
    rows = dict(await db.execute_fetchall(
        "SELECT key, value FROM meta WHERE key IN (?, ?)", (FEED_HISTORY_KEY, FEED_HOME_KEY)
    ))  # fmt: skip
    history = new_feed_history(rows.get(FEED_HISTORY_KEY), rows.get(FEED_HOME_KEY), home)
    if history is None:
        return str(rows[FEED_HISTORY_KEY])
    await db.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?), (?, ?)",
        (FEED_HISTORY_KEY, history, FEED_HOME_KEY, home),
    )  # one statement: both or neither
    _log_new_history(path, history, rows.get(FEED_HISTORY_KEY))
    return history


def _log_new_history(where: object, history: str, before: str | None) -> None:
    if before is None:
        log.info("The change feed of %s begins its history %s (its cursors carry it).", where, history)
    else:
        log.warning(
            "The change feed of %s begins a new history %s after %s: the database was restored from a backup, "
            "copied or moved, so cursors of the old history are refused and their readers read the feed again.",
            where, history, before,
        )  # fmt: skip
