"""The hub's PostgreSQL backend: several hub processes on one database.

``store`` — ``PostgresHubStore``: the connection pool, retried transactions, the advisory-lock hooks the
shared store (``hub.storage.store``) runs its SQL through; ``ingest`` — the ingest algorithm's reads and
writes in PostgreSQL SQL (COPY, arrays, per-key advisory locks); ``feed`` — change ids numbered in commit
order across hubs; ``schema`` — ``migrations/NNN_….sql`` applied under an advisory lock. Loaded only for a
PostgreSQL hub (it imports asyncpg).
"""

from hub.storage.postgres.store import PostgresHubStore, redacted

__all__ = ["PostgresHubStore", "redacted"]
