"""PostgreSQL reads and writes of the catalog, observations, import issues and divergence.

The SQL of ``hub.storage.sqlite_reports`` with sets as arrays. Checks and
wording are shared with every backend (``hub.storage.checks``,
``hub.storage.findings``). Across hub processes: a catalog write holds an
advisory lock for the version counter; two hubs storing the same new report
at once collide on its primary key, and the retried transaction finds it
stored (a resend).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

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
from hub.storage.postgres_ingest import columns, lock_keys
from hub.storage.sql import DELTA_KINDS, NEWEST_FIRST, ledger_events_sql
from protocol import pack_hlc
from protocol.catalog import UNKNOWN_SKU_PREFIX, unknown_sku

CATALOG_VERSION_KEY = "catalog_version"
CATALOG_LOCK = ("catalog",)


def _where(terms: list[str]) -> str:
    return " WHERE " + " AND ".join(terms) if terms else ""


def _page(page: tuple[str, tuple[Any, ...]] | None, params: list[Any]) -> list[str]:
    """A paging term of hub.storage.keys (``{}`` per parameter) numbered after ``params``, which get its
    parameters; [] without one."""
    if page is None:
        return []
    sql, values = page
    marks = [f"${len(params) + i + 1}" for i in range(len(values))]
    params.extend(values)
    return [sql.format(*marks)]


# --- catalog ----------------------------------------------------------------------


async def catalog_version(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval("SELECT value FROM meta WHERE key = $1", CATALOG_VERSION_KEY)
    return 0 if value is None else int(value)


async def catalog(conn: asyncpg.Connection) -> Catalog:
    rows = await conn.fetch("SELECT barcode, sku, pack_size, description FROM catalog ORDER BY barcode")
    return Catalog(await catalog_version(conn), tuple(CatalogItem(*r) for r in rows))


async def put_catalog(conn: asyncpg.Connection, items: Sequence[CatalogItem], now_ms: int) -> CatalogUpdate:
    await lock_keys(conn, [CATALOG_LOCK])  # one catalog writer at a time across hubs: the version is read-modify-write
    rows = await conn.fetch(
        "SELECT barcode, sku, pack_size, description FROM catalog WHERE barcode = ANY($1::text[])",
        [i.barcode for i in items],
    )
    stored = {r[0]: CatalogItem(*r) for r in rows}
    changed = [item for item in items if stored.get(item.barcode) != item]
    version = await catalog_version(conn)
    if changed:
        values = [(i.barcode, i.sku, i.pack_size, i.description, unknown_sku(i.barcode)) for i in changed]
        await conn.execute(
            "INSERT INTO catalog (barcode, sku, pack_size, description, unknown_sku, updated_ms) "
            "SELECT *, $6::int8 FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[]) "
            "ON CONFLICT (barcode) DO UPDATE SET sku = excluded.sku, pack_size = excluded.pack_size, "
            "description = excluded.description, updated_ms = excluded.updated_ms",
            *columns(values, 5),
            now_ms,
        )
        version += 1
        await conn.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            CATALOG_VERSION_KEY,
            str(version),
        )
    return CatalogUpdate(version, len(changed), tuple(i.barcode for i in changed))


async def unknown_event_rows(conn: asyncpg.Connection, skus: Sequence[str]) -> list[Any]:
    """Rows in ``hub.storage.postgres`` ledger shape of every event booked under one of ``skus``."""
    rows = list(
        await conn.fetch(
            ledger_events_sql(
                "(SELECT e.* FROM stock k JOIN events e ON e.location = k.location AND e.sku = k.sku "
                "WHERE k.sku = ANY($1::text[]))"
            ),
            list(dict.fromkeys(skus)),
        )
    )
    rows.sort(key=lambda r: (r[8], r[1], r[3], r[0]))
    return rows


async def unknown_barcode_exceptions(
    conn: asyncpg.Connection, location: str | None, limit: int, after: keys.ExceptionKey | None = None
) -> list[ExceptionRow]:
    """Unknown-barcode keys still holding stock, or whose barcode the catalog does not know yet (in the
    exceptions' order, after ``after``)."""
    source = keys.UNKNOWN_BARCODE
    terms = [
        "s.sku LIKE $1",
        "(s.on_hand <> 0 OR NOT EXISTS (SELECT 1 FROM catalog c WHERE c.unknown_sku = s.sku))",
    ]
    params: list[Any] = [UNKNOWN_SKU_PREFIX.replace("_", r"\_").replace("%", r"\%") + "%"]
    terms += _page(source.after(after) if after is not None else None, params)
    if location is not None:
        params.append(location)
        terms.append(f"s.location = ${len(params)}")
    rows = await conn.fetch(
        f"SELECT s.location, s.sku, s.on_hand, s.updated_at_ms FROM stock s{_where(terms)} "
        f"ORDER BY {source.order} LIMIT ${len(params) + 1}",
        *params,
        limit,
    )
    return [findings.unknown_barcode(*r) for r in rows]


# --- observations and import issues -------------------------------------------------


async def add_observations(
    conn: asyncpg.Connection, who: AgentIdentity, items: Sequence[Observation], now_ms: int
) -> ReportResult:
    rows = await conn.fetch(
        "SELECT obs_id, location, sku, system, on_hand, observed_at_ms, source_file FROM observations "
        "WHERE agent_id = $1 AND obs_id = ANY($2::text[])",
        who.agent_id,
        list({o.obs_id for o in items}),
    )
    stored = {r[0]: tuple(r)[1:] for r in rows}
    fresh, result = checks.triage(who, items, lambda o: o.obs_id, checks.observation_content, stored, "observation")
    if fresh:
        values = [(o.obs_id, *checks.observation_content(o)) for o in fresh]
        await conn.execute(
            "INSERT INTO observations (agent_id, obs_id, location, sku, system, on_hand, observed_at_ms, "
            "source_file, received_at_ms) SELECT $1::text, u.*, $9::int8 FROM unnest($2::text[], $3::text[], "
            "$4::text[], $5::text[], $6::int8[], $7::int8[], $8::text[]) AS u",
            who.agent_id,
            *columns(values, 7),
            now_ms,
        )
    return result


async def add_import_issues(
    conn: asyncpg.Connection, who: AgentIdentity, items: Sequence[ImportIssue], now_ms: int
) -> ReportResult:
    rows = await conn.fetch(
        "SELECT issue_id, location, file, line, reason, raw FROM import_issues "
        "WHERE agent_id = $1 AND issue_id = ANY($2::text[])",
        who.agent_id,
        list({x.issue_id for x in items}),
    )
    stored = {r[0]: tuple(r)[1:] for r in rows}
    fresh, result = checks.triage(who, items, lambda x: x.issue_id, checks.issue_content, stored, "import issue")
    if fresh:
        values = [(x.issue_id, *checks.issue_content(x)) for x in fresh]
        await conn.execute(
            "INSERT INTO import_issues (agent_id, issue_id, location, file, line, reason, raw, received_at_ms) "
            "SELECT $1::text, u.*, $8::int8 FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[], "
            "$6::text[], $7::text[]) AS u",
            who.agent_id,
            *columns(values, 6),
            now_ms,
        )
    return result


async def import_issue_exceptions(
    conn: asyncpg.Connection, location: str | None, limit: int, after: keys.ExceptionKey | None = None
) -> list[ExceptionRow]:
    source = keys.IMPORT_QUARANTINE
    params: list[Any] = []
    terms = _page(source.after(after) if after is not None else None, params)
    if location is not None:
        params.append(location)
        terms.append(f"location = ${len(params)}")
    rows = await conn.fetch(
        "SELECT agent_id, issue_id, location, file, line, reason, raw, received_at_ms "
        f"FROM import_issues{_where(terms)} ORDER BY {source.order} LIMIT ${len(params) + 1}",
        *params,
        limit,
    )
    return [findings.import_quarantine(*r) for r in rows]


async def channel_exceptions(
    conn: asyncpg.Connection, location: str | None, limit: int, after: keys.ExceptionKey | None = None
) -> list[ExceptionRow]:
    """What the sales channels need a person for: diverging and refused levels, mapping findings (schema 6)."""
    out: list[ExceptionRow] = []
    for source, fields, table, make, located in findings.CHANNEL_SOURCES:
        if location is not None and not located:
            continue
        params: list[Any] = []
        terms = _page(source.after(after) if after is not None else None, params)
        if location is not None:
            params.append(location)
            terms.append(f"location = ${len(params)}")
        sql = f"SELECT {fields} FROM {table}{_where(terms)} ORDER BY {source.order} LIMIT ${len(params) + 1}"
        out += [make(*r) for r in await conn.fetch(sql, *params, limit)]
    return out


# --- divergence ------------------------------------------------------------------------


async def on_hand_as_of(conn: asyncpg.Connection, location: str, sku: str, at_ms: int) -> int:
    """The hub's on_hand of (location, sku) counting the events of wall time <= ``at_ms``:
    the last such count plus the deltas after it (``hub.resolver.on_hand_as_of``)."""
    before = pack_hlc(at_ms + 1, 0)
    stock = await conn.fetchrow("SELECT on_hand, max_at FROM stock WHERE location = $1 AND sku = $2", location, sku)
    if stock is None:
        return 0
    if stock[1] is None or stock[1] < before:  # nothing ordered after it: today's on_hand is that day's
        return int(stock[0])
    key = "location = $1 AND sku = $2 AND occurred_at < $3"
    count = await conn.fetchrow(
        f"SELECT occurred_at, agent_id, seq, event_id, qty FROM events WHERE {key} AND kind = 'count' "
        f"ORDER BY {NEWEST_FIRST} LIMIT 1",
        location,
        sku,
        before,
    )
    sql = f"SELECT COALESCE(SUM(qty), 0) FROM events WHERE {key} AND kind IN {DELTA_KINDS}"
    params: list[Any] = [location, sku, before]
    if count is not None:
        sql += " AND (occurred_at, agent_id, seq, event_id) > ($4, $5, $6, $7)"
        params += tuple(count)[:4]
    deltas = await conn.fetchval(sql, *params)
    return (count[4] if count is not None else 0) + int(deltas)


async def divergence(
    conn: asyncpg.Connection, location: str | None, system: str | None, limit: int,
    page: tuple[str, tuple[Any, ...]] | None = None, order: str = keys.DIVERGENCE_ORDER,
) -> list[DivergenceRow]:  # fmt: skip
    """Up to ``limit`` diverging latest observations in ``order``, those after the paging term ``page``."""
    terms: list[str] = []
    params: list[Any] = []
    for column, value in (("location", location), ("system", system)):
        if value is not None:
            params.append(value)
            terms.append(f"{column} = ${len(params)}")
    outer = ["newest = 1", *_page(page, params)]
    latest = await conn.fetch(
        "SELECT system, location, sku, on_hand, observed_at_ms, agent_id, obs_id, source_file, received_at_ms "
        "FROM (SELECT o.*, ROW_NUMBER() OVER (PARTITION BY system, location, sku "
        "ORDER BY observed_at_ms DESC, received_at_ms DESC, agent_id DESC, obs_id DESC) AS newest "
        f"FROM observations o{_where(terms)}) AS latest WHERE {' AND '.join(outer)} ORDER BY {order}",
        *params,
    )
    out: list[DivergenceRow] = []
    for system_, loc, sku, observed, at_ms, agent_id, obs_id, source_file, received_ms in latest:
        hub = await on_hand_as_of(conn, loc, sku, at_ms)
        if diverges(observed, hub):
            out.append(
                DivergenceRow(
                    system_, loc, sku, observed, hub, observed - hub, at_ms, agent_id, obs_id, source_file, received_ms
                )
            )
            if len(out) >= limit:
                break
    return out
