"""The hub's SQLite backend: one file, one writer thread, WAL.

``store`` — ``SqliteHubStore``: the writer's group commit, the query-only reader, the hooks the shared store
(``hub.storage.store``) runs its SQL through; ``ingest`` — the ingest algorithm's reads and writes in SQLite
SQL, with the writer's stock cache; ``writer`` — the connection threads and the WAL checkpointer;
``schema`` — ``migrations/NNN_….sql`` applied under ``PRAGMA user_version``.
"""

from hub.storage.sqlite.store import SqliteHubStore

__all__ = ["SqliteHubStore"]
