"""The SQLite hub schema and its migrations (``PRAGMA user_version``)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from hub.storage.base import StoreError
from hub.storage.sqlite_writer import InlineConnection

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6


def _script(name: str) -> Callable[[], str]:
    return lambda: resources.files("hub.storage").joinpath(name).read_text(encoding="utf-8")


# Schema version -> the script that brings version - 1 to it.
MIGRATIONS: dict[int, Callable[[], str]] = {
    1: _script("schema_sqlite.sql"),
    2: _script("schema_sqlite_v2.sql"),
    3: _script("schema_sqlite_v3.sql"),
    4: _script("schema_sqlite_v4.sql"),
    5: _script("schema_sqlite_v5.sql"),
    6: _script("schema_sqlite_v6.sql"),
}


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
        script = MIGRATIONS[step]()
        await db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {step};\nCOMMIT;")
        log.info("Migrated the hub database %s to schema version %d.", path, step)
    await db.execute(
        "INSERT INTO meta (key, value) VALUES ('hub_id', ?) ON CONFLICT (key) DO NOTHING", (uuid.uuid4().hex,)
    )
    rows = list(await db.execute_fetchall("SELECT value FROM meta WHERE key = 'hub_id'"))
    return str(rows[0][0])
