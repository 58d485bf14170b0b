"""SQLite reads and writes of the catalog, observations, import issues and divergence.

Functions over a connection: ``SqliteHubStore`` runs the reads on its reader
and the writes inside its one writer transaction. Checks and wording are
shared with every backend (``hub.storage.checks``, ``hub.storage.findings``);
the SQL is plain enough for PostgreSQL to mirror (a window function, row
values, ``ON CONFLICT`` upserts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hub.resolver import diverges
from hub.storage import checks, findings, keys
from hub.storage.base import (
    AgentIdentity,
    Catalog,
    CatalogItem,
    CatalogUpdate,
    DivergenceRow,
    ExceptionRow,
    ImportIssue,
    Observation,
    ReportResult,
)
from hub.storage.sql import DELTA_KINDS, NEWEST_FIRST, ledger_events_sql
from hub.storage.sqlite_ingest import chunks, marks
from hub.storage.sqlite_writer import Db
from protocol import pack_hlc
from protocol.catalog import unknown_sku

CATALOG_VERSION_KEY = "catalog_version"


async def _fetch(db: Db, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return list(await db.execute_fetchall(sql, params))


def _where(terms: list[str]) -> str:
    return " WHERE " + " AND ".join(terms) if terms else ""


def _page(page: tuple[str, tuple[Any, ...]] | None) -> tuple[list[str], tuple[Any, ...]]:
    """A paging term of hub.storage.keys (``{}`` per parameter) with SQLite's ``?`` marks, and its parameters."""
    return ([page[0].format(*("?" * len(page[1])))], page[1]) if page is not None else ([], ())


# --- catalog ----------------------------------------------------------------------


async def catalog_version(db: Db) -> int:
    rows = await _fetch(db, "SELECT value FROM meta WHERE key = ?", (CATALOG_VERSION_KEY,))
    return int(rows[0][0]) if rows else 0


async def catalog(db: Db) -> Catalog:
    rows = await _fetch(db, "SELECT barcode, sku, pack_size, description FROM catalog ORDER BY barcode")
    return Catalog(await catalog_version(db), tuple(CatalogItem(*r) for r in rows))


async def put_catalog(db: Db, items: Sequence[CatalogItem], now_ms: int) -> CatalogUpdate:
    stored: dict[str, CatalogItem] = {}
    for part in chunks(items, 1):
        sql = f"SELECT barcode, sku, pack_size, description FROM catalog WHERE barcode IN ({marks(len(part))})"
        stored.update((r[0], CatalogItem(*r)) for r in await _fetch(db, sql, [i.barcode for i in part]))
    changed = [item for item in items if stored.get(item.barcode) != item]
    version = await catalog_version(db)
    if changed:
        await db.executemany(
            "INSERT INTO catalog (barcode, sku, pack_size, description, unknown_sku, updated_ms) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (barcode) DO UPDATE SET sku = excluded.sku, "
            "pack_size = excluded.pack_size, description = excluded.description, updated_ms = excluded.updated_ms",
            [(i.barcode, i.sku, i.pack_size, i.description, unknown_sku(i.barcode), now_ms) for i in changed],
        )
        version += 1
        await db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (CATALOG_VERSION_KEY, str(version)),
        )
    return CatalogUpdate(version, len(changed), tuple(i.barcode for i in changed))


async def unknown_event_rows(db: Db, skus: Sequence[str]) -> list[Any]:
    """Rows in ``hub.storage.sqlite`` ledger shape of every event booked under one of ``skus``."""
    out: list[Any] = []
    for part in chunks(list(dict.fromkeys(skus)), 1):
        keys = await _fetch(db, f"SELECT location, sku FROM stock WHERE sku IN ({marks(len(part))})", part)
        for location, sku in keys:
            out += await _fetch(
                db,
                ledger_events_sql("(SELECT * FROM events WHERE location = ? AND sku = ?)"),
                (location, sku),
            )
    out.sort(key=lambda r: (r[8], r[1], r[3], r[0]))
    return out


async def unknown_barcode_exceptions(
    db: Db, location: str | None, limit: int, after: keys.ExceptionKey | None = None
) -> list[ExceptionRow]:
    """Unknown-barcode keys still holding stock, or whose barcode the catalog does not know yet (in the
    exceptions' order, after ``after``)."""
    source = keys.UNKNOWN_BARCODE
    terms, page = _page(source.after(after) if after is not None else None)
    terms += [
        "substr(s.sku, 1, 8) = 'unknown:'",
        "(s.on_hand <> 0 OR NOT EXISTS (SELECT 1 FROM catalog c WHERE c.unknown_sku = s.sku))",
    ]
    params: list[Any] = [*page]
    if location is not None:
        terms.append("s.location = ?")
        params.append(location)
    rows = await _fetch(
        db,
        f"SELECT s.location, s.sku, s.on_hand, s.updated_at_ms FROM stock s{_where(terms)} "
        f"ORDER BY {source.order} LIMIT ?",
        (*params, limit),
    )
    return [findings.unknown_barcode(*r) for r in rows]


# --- observations and import issues -------------------------------------------------


async def add_observations(db: Db, who: AgentIdentity, items: Sequence[Observation], now_ms: int) -> ReportResult:
    stored: dict[str, tuple[Any, ...]] = {}
    for part in chunks(list({o.obs_id for o in items}), 1):
        rows = await _fetch(
            db,
            "SELECT obs_id, location, sku, system, on_hand, observed_at_ms, source_file FROM observations "
            f"WHERE agent_id = ? AND obs_id IN ({marks(len(part))})",
            (who.agent_id, *part),
        )
        stored.update((r[0], tuple(r[1:])) for r in rows)
    fresh, result = checks.triage(who, items, lambda o: o.obs_id, checks.observation_content, stored, "observation")
    await db.executemany(
        "INSERT INTO observations (agent_id, obs_id, location, sku, system, on_hand, observed_at_ms, source_file, "
        "received_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(who.agent_id, o.obs_id, *checks.observation_content(o), now_ms) for o in fresh],
    )
    return result


async def add_import_issues(db: Db, who: AgentIdentity, items: Sequence[ImportIssue], now_ms: int) -> ReportResult:
    stored: dict[str, tuple[Any, ...]] = {}
    for part in chunks(list({x.issue_id for x in items}), 1):
        rows = await _fetch(
            db,
            "SELECT issue_id, location, file, line, reason, raw FROM import_issues "
            f"WHERE agent_id = ? AND issue_id IN ({marks(len(part))})",
            (who.agent_id, *part),
        )
        stored.update((r[0], tuple(r[1:])) for r in rows)
    fresh, result = checks.triage(who, items, lambda x: x.issue_id, checks.issue_content, stored, "import issue")
    await db.executemany(
        "INSERT INTO import_issues (agent_id, issue_id, location, file, line, reason, raw, received_at_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(who.agent_id, x.issue_id, *checks.issue_content(x), now_ms) for x in fresh],
    )
    return result


async def import_issue_exceptions(
    db: Db, location: str | None, limit: int, after: keys.ExceptionKey | None = None
) -> list[ExceptionRow]:
    source = keys.IMPORT_QUARANTINE
    terms, page = _page(source.after(after) if after is not None else None)
    params: tuple[Any, ...] = page
    if location is not None:
        terms.append("location = ?")
        params += (location,)
    rows = await _fetch(
        db,
        "SELECT agent_id, issue_id, location, file, line, reason, raw, received_at_ms "
        f"FROM import_issues{_where(terms)} ORDER BY {source.order} LIMIT ?",
        (*params, limit),
    )
    return [findings.import_quarantine(*r) for r in rows]


async def channel_exceptions(
    db: Db, location: str | None, limit: int, after: keys.ExceptionKey | None = None
) -> list[ExceptionRow]:
    """What the sales channels need a person for: diverging and refused levels, mapping findings (schema 6)."""
    out: list[ExceptionRow] = []
    for source, fields, table, make, located in findings.CHANNEL_SOURCES:
        if location is not None and not located:
            continue
        terms, params = _page(source.after(after) if after is not None else None)
        if location is not None:
            terms.append("location = ?")
            params += (location,)
        sql = f"SELECT {fields} FROM {table}{_where(terms)} ORDER BY {source.order} LIMIT ?"
        out += [make(*r) for r in await _fetch(db, sql, (*params, limit))]
    return out


# --- divergence ------------------------------------------------------------------------


async def on_hand_as_of(db: Db, location: str, sku: str, at_ms: int) -> int:
    """The hub's on_hand of (location, sku) counting the events of wall time <= ``at_ms``:
    the last such count plus the deltas after it (``hub.resolver.on_hand_as_of``)."""
    before = pack_hlc(at_ms + 1, 0)
    stock = await _fetch(db, "SELECT on_hand, max_at FROM stock WHERE location = ? AND sku = ?", (location, sku))
    if not stock:
        return 0
    if stock[0][1] is None or stock[0][1] < before:  # nothing ordered after it: today's on_hand is that day's
        return int(stock[0][0])
    key = "location = ? AND sku = ? AND occurred_at < ?"
    count = await _fetch(
        db,
        f"SELECT occurred_at, agent_id, seq, event_id, qty FROM events WHERE {key} AND kind = 'count' "
        f"ORDER BY {NEWEST_FIRST} LIMIT 1",
        (location, sku, before),
    )
    sql = f"SELECT COALESCE(SUM(qty), 0) FROM events WHERE {key} AND kind IN {DELTA_KINDS}"
    params: list[Any] = [location, sku, before]
    if count:
        sql += " AND (occurred_at, agent_id, seq, event_id) > (?, ?, ?, ?)"
        params += count[0][:4]
    deltas = await _fetch(db, sql, params)
    return (count[0][4] if count else 0) + int(deltas[0][0])


async def divergence(
    db: Db, location: str | None, system: str | None, limit: int,
    page: tuple[str, tuple[Any, ...]] | None = None, order: str = keys.DIVERGENCE_ORDER,
) -> list[DivergenceRow]:  # fmt: skip
    """Up to ``limit`` diverging latest observations in ``order``, those after the paging term ``page``."""
    terms, params = [], []
    for column, value in (("location", location), ("system", system)):
        if value is not None:
            terms.append(f"{column} = ?")
            params.append(value)
    outer, outer_params = _page(page)
    latest = await _fetch(
        db,
        "SELECT system, location, sku, on_hand, observed_at_ms, agent_id, obs_id, source_file, received_at_ms "
        "FROM (SELECT o.*, ROW_NUMBER() OVER (PARTITION BY system, location, sku "
        "ORDER BY observed_at_ms DESC, received_at_ms DESC, agent_id DESC, obs_id DESC) AS newest "
        f"FROM observations o{_where(terms)}) AS latest WHERE {' AND '.join(['newest = 1', *outer])} ORDER BY {order}",
        (*params, *outer_params),
    )
    out: list[DivergenceRow] = []
    for system_, loc, sku, observed, at_ms, agent_id, obs_id, source_file, received_ms in latest:
        hub = await on_hand_as_of(db, loc, sku, at_ms)
        if diverges(observed, hub):
            out.append(
                DivergenceRow(
                    system_, loc, sku, observed, hub, observed - hub, at_ms, agent_id, obs_id, source_file, received_ms
                )
            )
            if len(out) >= limit:
                break
    return out
