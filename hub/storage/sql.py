"""SQL both backends share word for word: column lists, the order key, the ledger's read of events.

The hub's SQL is kept plain enough for SQLite and PostgreSQL alike (row-value
comparisons, ``ON CONFLICT`` upserts). Parameter markers are ``?``, numbered
for PostgreSQL by ``hub.storage.db``; what else differs between them — bulk
loading in ingest, locks — stays in each backend's modules.
"""

from __future__ import annotations

import json

from protocol import ON_HAND_KINDS, DiskReport, LostReport

DELTA_KINDS = "(" + ", ".join(f"'{k.value}'" for k in sorted(ON_HAND_KINDS)) + ")"
ORDER_KEY = "(occurred_at, agent_id, seq, event_id)"
NEWEST_FIRST = "occurred_at DESC, agent_id DESC, seq DESC, event_id DESC"
EVENT_FIELDS = (
    "event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs"
)
STOCK_FIELDS = (
    "location, sku, on_hand, reserved, in_transit, safety_stock, last_count_at, last_count_agent, last_count_seq, "
    "last_count_id, max_at, max_agent, max_seq, max_id, updated_at_ms"
)
TRANSFER_FIELDS = (  # schema 20: a transfer is keyed by (dest, ref, sku); shippers: its shipping locations
    "dest, ref, sku, shipped, received, out_from, out_to, in_to, in_from, shipped_at_ms, closed_at, shippers, "
    "final_at, returned, booked_out"  # schema 25: receipts back at the shipper, and the wrong store's book-outs
)

# A stored delta's effect is "superseded" once a count of its key is ordered after it, that is when it is
# ordered before the key's last count (``stock.last_count_*``). Stored rows keep the effect they had when
# inserted; the ledger derives the current one, so a new count never rewrites the deltas it passes.
EFFECT_NOW = (
    f"CASE WHEN e.effect = 'applied' AND e.kind IN {DELTA_KINDS} AND (e.occurred_at, e.agent_id, e.seq, e.event_id) "
    "< (s.last_count_at, s.last_count_agent, s.last_count_seq, s.last_count_id) THEN 'superseded' ELSE e.effect END"
)


def ledger_events_sql(events: str) -> str:
    """``events`` (a parenthesised query of event rows) in the ledger's row shape, with the effect as of now."""
    fields = ", ".join(f"e.{c}" for c in EVENT_FIELDS.split(", "))
    return (
        f"SELECT {fields}, {EFFECT_NOW}, e.variance, e.duplicates, e.received_at_ms, NULL, NULL "
        f"FROM {events} e LEFT JOIN stock s ON s.location = e.location AND s.sku = e.sku"
    )


# Bundles (schema version 6): recipe versions as set, the parts in force, each bundle movement's expansion.
RECIPE_FIELDS = "sku, version, valid_from_ms, components, set_by"
NEWEST_RECIPES = (
    f"SELECT {RECIPE_FIELDS} FROM bundle_recipes r "
    "WHERE version = (SELECT max(version) FROM bundle_recipes m WHERE m.sku = r.sku)"
)
BUNDLE_PART_FIELDS = "bundle, part, units, version"
EXPANSION_FIELDS = "agent_id, event_id, version, parts"


def note_sync(
    agent_id: str,
    now_ms: int,
    clock_skew_ms: int | None,
    backlog: int | None,
    oldest_pending_ms: int | None,
    sent_ms: int | None = None,
    disk: DiskReport | None = None,
) -> tuple[str, tuple[object, ...]]:
    """The UPDATE recording an agent's sync (``?`` markers) and its parameters; a backlog not reported (None)
    leaves the previous report as it was. A skew measured from ``sent_ms`` is taken only when ``sent_ms`` is
    newer than the newest one heard from the agent (``clock_sent_ms``): an older one is a request replayed late.
    A disk report (schema version 21) replaces the one before; its state's ``disk_since_ms`` stays while the
    state does, and is now when it changes (None: not reported, the one before stays)."""
    params: list[object]
    if sent_ms is None or clock_skew_ms is None:
        sets, params = "clock_skew_ms = COALESCE(?, clock_skew_ms)", [clock_skew_ms]
    else:
        newer = "clock_sent_ms IS NULL OR clock_sent_ms < ?"
        sets = (
            f"clock_skew_ms = CASE WHEN {newer} THEN ? ELSE clock_skew_ms END, "
            f"clock_sent_ms = CASE WHEN {newer} THEN ? ELSE clock_sent_ms END"
        )
        params = [sent_ms, clock_skew_ms, sent_ms, sent_ms]
    if backlog is not None:
        sets += ", backlog = ?, oldest_pending_ms = ?, backlog_at_ms = ?"
        params += [backlog, oldest_pending_ms, now_ms]
    if disk is not None:
        state = disk.state
        sets += (
            ", disk_since_ms = CASE WHEN disk_state = ? THEN disk_since_ms ELSE ? END, disk_state = ?,"
            " disk_at_ms = ?, disk = ?"
        )
        params += [state, now_ms, state, now_ms, disk_json(disk)]
    return f"UPDATE agents SET last_sync_ms = ?, {sets} WHERE agent_id = ?", (now_ms, *params, agent_id)


def note_lost(agent_id: str, lost: LostReport, now_ms: int) -> tuple[str, tuple[object, ...]]:
    """The INSERT keeping an agent's report of movements the hub lacks for good (schema version 34, ``agent_lost``)
    and its parameters: the same report again (the agent sends it until a hub answers one carrying it) changes
    nothing, its first arrival and a dismissal kept."""
    statement = (
        "INSERT INTO agent_lost (agent_id, epoch, first_seq, last_seq, lost, at_least, of_agent, found_ms, received_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, epoch, first_seq, last_seq) DO NOTHING"
    )
    return (
        statement,
        (agent_id, lost.epoch, lost.first_seq, lost.last_seq, lost.count, lost.at_least, lost.of_agent, lost.found_ms,
         now_ms),
    )  # fmt: skip


def disk_json(disk: DiskReport) -> str:
    """An agent's disk report as the hub keeps it (``agents.disk``)."""
    return json.dumps(
        {
            "reserve_bytes": disk.reserve_bytes,
            "reserve_held_bytes": disk.reserve_held_bytes,
            "free_bytes": disk.free_bytes,
            "refused_ms": disk.refused_ms,
        }
    )
