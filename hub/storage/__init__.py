"""The hub's storage: ``HubStore`` and its narrow interfaces (``hub.storage.interfaces``), the SQLite
backend, and ``open_store``.

Use: ``async with open_store("sqlite:///var/lib/shelfsync/hub.db") as store:``
then ``await store.ingest(who, epoch, events)``. A caller that needs one concern of the store names its
interface (``IngestStore``, ``LedgerStore``, ``FeedStore``, ``CatalogStore``, ``ReportStore``,
``CredentialStore``, ``QuarantineStore``, ``BundleStore``).
"""

from __future__ import annotations

import os

from hub.storage.base import (
    INGEST_ROLES,
    ROLES,
    AgentIdentity,
    AgentStatus,
    Catalog,
    CatalogItem,
    CatalogUpdate,
    ChangeRow,
    CountRow,
    DivergenceRow,
    Effect,
    ExceptionRow,
    Forbidden,
    HubError,
    HubStore,
    ImportIssue,
    IngestResult,
    InvalidInput,
    LedgerRow,
    Lineage,
    Observation,
    ReportResult,
    StoreClosed,
    StoreError,
    StoreOpener,
    WebhookClaim,
    WebhookDelivery,
    WebhookState,
)
from hub.storage.interfaces import (
    BundleStore,
    CatalogStore,
    CredentialStore,
    FeedStore,
    HealthStore,
    IngestStore,
    LedgerStore,
    QuarantineStore,
    RebookingStore,
    ReportStore,
)
from hub.storage.migrations import MigrationProgress
from hub.storage.sqlite import SqliteHubStore

SQLITE_SCHEME = "sqlite://"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def sqlite_file(url_or_path: str | os.PathLike[str]) -> str | None:
    """The file a SQLite hub database URL or path names (``sqlite:///abs/path.db``: what follows ``sqlite://``; or
    a plain file path); None for a PostgreSQL URL; ``StoreError`` for anything else."""
    target = os.fspath(url_or_path)
    if target.startswith(POSTGRES_SCHEMES):
        return None
    if target.startswith(SQLITE_SCHEME):
        target = target[len(SQLITE_SCHEME) :]
    elif "://" in target:
        scheme = target.split("://", 1)[0][:20]  # not the URL: it may hold a password
        raise StoreError(f"unknown database URL scheme {scheme!r}; use sqlite:///path/to/hub.db or a file path")
    if not target.strip("/") or target.lstrip("/") == ":memory:" or target.startswith("file:"):
        raise StoreError("the hub database must be a file path (the hub opens it twice: one writer, one reader)")
    return target


def open_store(
    url_or_path: str | os.PathLike[str], progress: MigrationProgress | None = None, *, db_timeout_s: float | None = None
) -> StoreOpener[HubStore]:
    """Open the store a URL or path names: ``sqlite:///abs/path.db`` (what follows
    ``sqlite://`` is the path), a plain file path, or ``postgresql://user:pw@host/db``
    (``postgres://`` too). ``await`` it, or use it as ``async with``. ``progress`` is kept up to date while it
    opens (its migration, a wait for another hub's), for what the hub answers meanwhile (hub.starting). On
    PostgreSQL, ``db_timeout_s`` bounds each request's database work (the hub's ``db_timeout_s``; None: the
    store's default)."""
    target = os.fspath(url_or_path)
    path = sqlite_file(target)
    if path is None:
        try:
            from hub.storage.postgres import PostgresHubStore  # the driver loads only for a PostgreSQL hub
        except ModuleNotFoundError as err:  # a hub installed without the postgres extra (asyncpg)
            if (err.name or "hub").partition(".")[0] == "hub":
                raise  # a module of ours missing is a broken install, not a missing extra
            raise StoreError(
                f"a postgresql:// database needs the {err.name} package, which cannot be loaded ({err}); "
                "install shelfsync[postgres] or give a SQLite file path"
            ) from err
        return PostgresHubStore.open(target, progress, db_timeout_s)
    return SqliteHubStore.open(path, progress)


__all__ = [
    "INGEST_ROLES",
    "ROLES",
    "AgentIdentity",
    "AgentStatus",
    "BundleStore",
    "Catalog",
    "CatalogItem",
    "CatalogStore",
    "CatalogUpdate",
    "ChangeRow",
    "CountRow",
    "CredentialStore",
    "DivergenceRow",
    "Effect",
    "ExceptionRow",
    "FeedStore",
    "Forbidden",
    "HealthStore",
    "HubError",
    "HubStore",
    "ImportIssue",
    "IngestResult",
    "IngestStore",
    "InvalidInput",
    "LedgerRow",
    "LedgerStore",
    "Lineage",
    "Observation",
    "QuarantineStore",
    "RebookingStore",
    "ReportResult",
    "ReportStore",
    "SqliteHubStore",
    "StoreClosed",
    "StoreError",
    "StoreOpener",
    "WebhookClaim",
    "WebhookDelivery",
    "WebhookState",
    "open_store",
    "sqlite_file",
]
