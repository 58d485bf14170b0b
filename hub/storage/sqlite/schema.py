"""The SQLite hub schema and its migrations (``PRAGMA user_version``)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from hub.storage.base import StoreError
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
