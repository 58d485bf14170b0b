"""SQLite reads and writes of the change feed and of webhook state.

Functions over a connection: ``SqliteHubStore`` runs the reads on its reader
and the writes inside its one writer transaction. The SQL is plain enough for
a PostgreSQL backend to mirror.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hub.storage.base import ChangeRow, WebhookDelivery, WebhookState
from hub.storage.sqlite_writer import Db

WEBHOOK_DELIVERIES_KEPT = 1_000  # per webhook; older attempts are pruned as new ones are logged
EVENT_ID_BYTES = 16


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


async def changes(db: Db, after: int, limit: int, location: str | None, sku: str | None) -> list[ChangeRow]:
    where = ["change_id > ?"]
    params: list[Any] = [after]
    if location is not None:
        where.append("location = ?")
        params.append(location)
    if sku is not None:
        where.append("sku = ?")
        params.append(sku)
    sql = (
        "SELECT change_id, location, sku, on_hand, reserved, available, in_transit, event_ids, at_ms "
        f"FROM changes WHERE {' AND '.join(where)} ORDER BY change_id LIMIT ?"
    )
    return [_change_row(r) for r in await db.execute_fetchall(sql, (*params, limit))]


async def latest_change_id(db: Db) -> int:
    rows = list(await db.execute_fetchall("SELECT COALESCE(MAX(change_id), 0) FROM changes"))
    return int(rows[0][0])


async def webhook_state(db: Db, name: str) -> WebhookState:
    rows = list(await db.execute_fetchall("SELECT cursor, last_error, attempts FROM webhooks WHERE name = ?", (name,)))
    return WebhookState(0, None, 0) if not rows else WebhookState(rows[0][0], rows[0][1], rows[0][2])


async def save_webhook_state(
    db: Db, name: str, cursor: int, last_error: str | None, attempts: int, now_ms: int
) -> None:
    await db.execute(
        "INSERT INTO webhooks (name, cursor, last_error, attempts, updated_ms) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor, last_error = excluded.last_error, "
        "attempts = excluded.attempts, updated_ms = excluded.updated_ms",
        (name, cursor, last_error, attempts, now_ms),
    )


async def log_webhook_delivery(
    db: Db,
    name: str,
    first_change: int,
    last_change: int,
    status: str,
    http_status: int | None,
    error: str | None,
    at_ms: int,
) -> None:
    await db.execute(
        "INSERT INTO webhook_deliveries (name, first_change, last_change, status, http_status, error, at_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (name, first_change, last_change, status, http_status, error, at_ms),
    )
    await db.execute(
        "DELETE FROM webhook_deliveries WHERE name = ? AND delivery_id < (SELECT MIN(delivery_id) FROM "
        "(SELECT delivery_id FROM webhook_deliveries WHERE name = ? ORDER BY delivery_id DESC LIMIT ?) AS kept)",
        (name, name, WEBHOOK_DELIVERIES_KEPT),
    )


async def webhook_deliveries(db: Db, name: str, limit: int, before_id: int | None = None) -> list[WebhookDelivery]:
    rows = await db.execute_fetchall(
        "SELECT delivery_id, name, first_change, last_change, status, http_status, error, at_ms "
        "FROM webhook_deliveries WHERE name = ? AND delivery_id < ? ORDER BY delivery_id DESC LIMIT ?",
        (name, (1 << 63) - 1 if before_id is None else before_id, limit),
    )
    return [WebhookDelivery(*r) for r in rows]
