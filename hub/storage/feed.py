"""The change feed's reads and the webhooks' state, in SQL both backends run (``hub.storage.db``).

Change rows are written by each backend's ingest transaction, which numbers them in commit order
(``SqliteIngest.append_changes``; ``hub.storage.postgres.feed``); the newest id is read with the
backend's own query (``SqlHubStore.LATEST_CHANGE_SQL``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from hub.storage.base import ChangeRow, WebhookClaim, WebhookDelivery, WebhookState
from hub.storage.db import Db, Where
from hub.storage.ingest import NewChange

# The change feed's history: a random token the feed's cursors carry, new whenever the database may have been put
# back to an earlier state (a restored backup), so that a cursor of the old history is refused instead of reading
# on under the same change ids, which the restored hub hands out again to other changes. It is kept in meta with
# the home it was made in: the database file's device and inode and a token renewed at each open
# (SQLite, ``hub.storage.sqlite.schema``), the cluster, database and changes table (PostgreSQL). A restore makes a new home (a new file, a new table) and ``shelfsync-hub backup`` drops the
# home from its SQLite copies, so the first start on a restored database begins a new history.
FEED_HISTORY_KEY = "feed_history"
FEED_HOME_KEY = "feed_history_home"
FEED_HISTORY_BYTES = 6  # 12 hex digits


def new_feed_history(stored: str | None, stored_home: str | None, home: str) -> str | None:
    """A new history token when there is none yet or the database is not where its history began; else None."""
    if stored and stored_home == home:
        return None
    return secrets.token_hex(FEED_HISTORY_BYTES)


# Said with a new history (a restored copy, most likely): the hub cannot know what changed in its credentials since
# the copy was made, and the agents' resends put back only their movements. Found black-box: a token revoked after
# the nightly backup was taken again, silently, once that backup was restored.
RESTORED_CREDENTIALS = (
    "The credentials of %s are the ones its copy holds: if it was restored from a backup, a credential revoked "
    "since the copy was made works again and one added since is refused (401); revoke again those revoked since "
    "(shelfsync-hub agent revoke) and add again those added since (shelfsync-hub agent add; the old database's "
    "are listed by shelfsync-hub agent list --db OLD)."
)

NEWEST_SYNC_SQL = "SELECT max(updated_ms) FROM agent_hwm"


def restored_movements(where: object, newest_sync_ms: int | None, now_ms: int) -> str:
    """Said with a new history too: how far back the copy goes, and what comes back of what was recorded since.
    An agent keeps acknowledged movements ``retention_days``: a copy older than that lacks some for good (the
    agent says how many, ``agent.outbox``), and the operator reads here how old the copy is."""
    if newest_sync_ms is None:
        return f"The copy of {where} holds no store agent's sync."
    at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(newest_sync_ms / 1000))
    ago_h = max(0, now_ms - newest_sync_ms) / 3_600_000
    return (
        f"The newest store agent sync {where} holds is from {at}, {ago_h:,.1f} h before this start: each agent sends"
        " again what it recorded since, while it still holds it (retention_days after the hub acknowledged it, 30"
        " days unless configured), and one that no longer does says how many in its log and status (hub LACKS);"
        " a channel's movements pushed since (POST /v1/events) are not sent again: have it push them again."
    )


WEBHOOK_DELIVERIES_KEPT = 1_000  # per webhook; older attempts are pruned as new ones are logged
EVENT_ID_BYTES = 16
CHANGE_FIELDS = "change_id, location, sku, on_hand, reserved, available, in_transit, event_ids, at_ms"


def change_row(r: Sequence[Any]) -> ChangeRow:
    # CHANGE_FIELDS; event_ids holds the ids of the events that caused the change, one after the other
    ids = bytes(r[7])
    event_ids = tuple(ids[i : i + EVENT_ID_BYTES] for i in range(0, len(ids), EVENT_ID_BYTES))
    return ChangeRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], event_ids, r[8])


def change_values(c: NewChange, now_ms: int) -> tuple[Any, ...]:
    """A new change row's values in ``CHANGE_FIELDS`` order but its id (the backend's to give)."""
    s = c.snapshot
    return (s.location, s.sku, s.on_hand, s.reserved, s.available, s.in_transit, b"".join(c.event_ids), now_ms)


async def changes(db: Db, after: int, limit: int, location: str | None, sku: str | None) -> list[ChangeRow]:
    where = Where().add("change_id > ?", after).add("location = ?", location).add("sku = ?", sku)
    sql = f"SELECT {CHANGE_FIELDS} FROM changes{where.sql} ORDER BY change_id LIMIT ?"
    return [change_row(r) for r in await db.fetch(sql, (*where.params, limit))]


async def latest_change_id(db: Db, sql: str) -> int:
    """The newest change id by the backend's query ``sql`` (0 when there is none)."""
    row = await db.fetchone(sql)
    return 0 if row is None or row[0] is None else int(row[0])


async def webhook_state(db: Db, name: str) -> WebhookState:
    row = await db.fetchone("SELECT cursor, last_error, attempts FROM webhooks WHERE name = ?", (name,))
    return WebhookState(0, None, 0) if row is None else WebhookState(row[0], row[1], row[2])


async def save_webhook_state(
    db: Db, name: str, cursor: int, last_error: str | None, attempts: int, now_ms: int, settings: str | None = None
) -> None:
    """Upsert the webhook's state; its cursor never moves backwards (a hub that lags, or lost its deliverer
    lock while saving, cannot take back what another hub's delivery already moved past). ``settings``: what the
    cursor was earned against (``claim_webhook_settings``); the state is saved only while the stored settings are
    these (or none), so a hub that lost the webhook to one started with other settings cannot move the cursor
    that hub started again from 0."""
    await db.execute(
        "INSERT INTO webhooks (name, cursor, last_error, attempts, updated_ms, settings) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET "
        "cursor = CASE WHEN excluded.cursor > webhooks.cursor THEN excluded.cursor ELSE webhooks.cursor END, "
        "last_error = excluded.last_error, "
        "attempts = excluded.attempts, updated_ms = excluded.updated_ms "
        "WHERE CAST(? AS TEXT) IS NULL OR webhooks.settings IS NULL OR webhooks.settings = excluded.settings",
        (name, cursor, last_error, attempts, now_ms, settings, settings),
    )


async def webhook_settings(db: Db, name: str) -> str | None:
    row = await db.fetchone("SELECT settings FROM webhooks WHERE name = ?", (name,))
    return None if row is None else row[0]


async def claim_webhook_settings(db: Db, name: str, settings: str, seen: str | None, now_ms: int) -> WebhookClaim:
    """Make ``settings`` the ones the webhook's cursor is earned against, in one write transaction.

    None stored (a new webhook, or one that last ran before schema 31): stored, the cursor stays. Others stored,
    the ones this hub first read (``seen``): this hub's config is the newer, so they are replaced and the cursor
    goes back to 0 — by one hub only: the update is conditional on what it replaces, so of two hubs started with
    the same new settings the second finds them stored. Others stored that this hub did not first read: a hub
    started later stored them, and this hub, started with older settings, stands aside."""
    inserted = await db.execute(
        "INSERT INTO webhooks (name, cursor, last_error, attempts, updated_ms, settings) VALUES (?, 0, NULL, 0, ?, ?) "
        "ON CONFLICT (name) DO NOTHING",
        (name, now_ms, settings),
    )
    if inserted:
        return WebhookClaim("stored", settings)
    stored = await webhook_settings(db, name)
    if stored == settings:
        return WebhookClaim("same", stored)
    if stored is None:
        if await db.execute("UPDATE webhooks SET settings = ? WHERE name = ? AND settings IS NULL", (settings, name)):
            return WebhookClaim("stored", settings)
    elif stored == seen and await db.execute(
        "UPDATE webhooks SET settings = ?, cursor = 0, last_error = NULL, attempts = 0, updated_ms = ? "
        "WHERE name = ? AND settings = ?",
        (settings, now_ms, name, stored),
    ):
        return WebhookClaim("reset", stored)
    now = await webhook_settings(db, name)  # another hub's transaction changed them meanwhile
    return WebhookClaim("same", now) if now == settings else WebhookClaim("aside", now)


async def log_webhook_delivery(db: Db, d: WebhookDelivery) -> None:
    """Append delivery attempt ``d`` (the database gives its ``delivery_id``); prune the webhook's oldest."""
    await db.execute(
        "INSERT INTO webhook_deliveries (name, first_change, last_change, status, http_status, error, at_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (d.name, d.first_change, d.last_change, d.status, d.http_status, d.error, d.at_ms),
    )
    await db.execute(
        "DELETE FROM webhook_deliveries WHERE name = ? AND delivery_id < (SELECT MIN(delivery_id) FROM "
        "(SELECT delivery_id FROM webhook_deliveries WHERE name = ? ORDER BY delivery_id DESC LIMIT ?) AS kept)",
        (d.name, d.name, WEBHOOK_DELIVERIES_KEPT),
    )


async def webhook_deliveries(db: Db, name: str, limit: int, before_id: int | None = None) -> list[WebhookDelivery]:
    rows = await db.fetch(
        "SELECT delivery_id, name, first_change, last_change, status, http_status, error, at_ms "
        "FROM webhook_deliveries WHERE name = ? AND delivery_id < ? ORDER BY delivery_id DESC LIMIT ?",
        (name, (1 << 63) - 1 if before_id is None else before_id, limit),
    )
    return [WebhookDelivery(*r) for r in rows]
