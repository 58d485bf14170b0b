"""PostgreSQL reads and writes of the change feed and of webhook state.

Change ids come from the one row of ``change_counter``: ``append_changes``
raises it by the number of rows as the last statement of an ingest
transaction, and the row lock that UPDATE takes is held until COMMIT. The next
transaction to append waits for that commit, so ids follow commit order across
every hub process, and a reader that sees change N+1 also sees change N. The
lock is held for the insert of the change rows and the commit only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from hub.storage.base import ChangeRow, WebhookDelivery, WebhookState
from hub.storage.ingest import NewChange

WEBHOOK_DELIVERIES_KEPT = 1_000  # per webhook; older attempts are pruned as new ones are logged
EVENT_ID_BYTES = 16
CHANGE_FIELDS = "change_id, location, sku, on_hand, reserved, available, in_transit, event_ids, at_ms"


def _change_row(r: Sequence[Any]) -> ChangeRow:
    ids = bytes(r[7])
    return ChangeRow(
        change_id=r[0],
        location=r[1],
        sku=r[2],
        on_hand=r[3],
        reserved=r[4],
        available=r[5],
        in_transit=r[6],
        event_ids=tuple(ids[i : i + EVENT_ID_BYTES] for i in range(0, len(ids), EVENT_ID_BYTES)),
        at_ms=r[8],
    )


async def append_changes(conn: asyncpg.Connection, rows: Sequence[NewChange], now_ms: int) -> None:
    """Append ``rows`` with the next change ids, in order (see the module doc)."""
    if not rows:
        return
    last = int(await conn.fetchval("UPDATE change_counter SET last_id = last_id + $1 RETURNING last_id", len(rows)))
    first = last - len(rows) + 1
    records = [
        (
            first + i,
            c.snapshot.location,
            c.snapshot.sku,
            c.snapshot.on_hand,
            c.snapshot.reserved,
            c.snapshot.available,
            c.snapshot.in_transit,
            b"".join(c.event_ids),
            now_ms,
        )
        for i, c in enumerate(rows)
    ]
    await conn.copy_records_to_table("changes", records=records, columns=CHANGE_FIELDS.split(", "))


async def changes(
    conn: asyncpg.Connection, after: int, limit: int, location: str | None, sku: str | None
) -> list[ChangeRow]:
    where = ["change_id > $1"]
    params: list[Any] = [after]
    if location is not None:
        params.append(location)
        where.append(f"location = ${len(params)}")
    if sku is not None:
        params.append(sku)
        where.append(f"sku = ${len(params)}")
    sql = f"SELECT {CHANGE_FIELDS} FROM changes WHERE {' AND '.join(where)} ORDER BY change_id LIMIT ${len(params) + 1}"
    return [_change_row(r) for r in await conn.fetch(sql, *params, limit)]


async def latest_change_id(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT last_id FROM change_counter"))


async def webhook_state(conn: asyncpg.Connection, name: str) -> WebhookState:
    row = await conn.fetchrow("SELECT cursor, last_error, attempts FROM webhooks WHERE name = $1", name)
    return WebhookState(0, None, 0) if row is None else WebhookState(row[0], row[1], row[2])


async def save_webhook_state(
    conn: asyncpg.Connection, name: str, cursor: int, last_error: str | None, attempts: int, now_ms: int
) -> None:
    await conn.execute(
        "INSERT INTO webhooks (name, cursor, last_error, attempts, updated_ms) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor, last_error = excluded.last_error, "
        "attempts = excluded.attempts, updated_ms = excluded.updated_ms",
        name,
        cursor,
        last_error,
        attempts,
        now_ms,
    )


async def log_webhook_delivery(
    conn: asyncpg.Connection,
    name: str,
    first_change: int,
    last_change: int,
    status: str,
    http_status: int | None,
    error: str | None,
    at_ms: int,
) -> None:
    await conn.execute(
        "INSERT INTO webhook_deliveries (name, first_change, last_change, status, http_status, error, at_ms) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        name,
        first_change,
        last_change,
        status,
        http_status,
        error,
        at_ms,
    )
    await conn.execute(
        "DELETE FROM webhook_deliveries WHERE name = $1 AND delivery_id < (SELECT MIN(delivery_id) FROM "
        "(SELECT delivery_id FROM webhook_deliveries WHERE name = $1 ORDER BY delivery_id DESC LIMIT $2) AS kept)",
        name,
        WEBHOOK_DELIVERIES_KEPT,
    )


async def webhook_deliveries(
    conn: asyncpg.Connection, name: str, limit: int, before_id: int | None = None
) -> list[WebhookDelivery]:
    rows = await conn.fetch(
        "SELECT delivery_id, name, first_change, last_change, status, http_status, error, at_ms "
        "FROM webhook_deliveries WHERE name = $1 AND delivery_id < $2 ORDER BY delivery_id DESC LIMIT $3",
        name,
        (1 << 63) - 1 if before_id is None else before_id,
        limit,
    )
    return [WebhookDelivery(*r) for r in rows]
