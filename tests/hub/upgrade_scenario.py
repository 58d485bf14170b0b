"""The upgrade scenario both backends run (test_upgrade_sqlite.py, test_upgrade_postgres.py): what a version-1 hub
held — three credentials (an agent, a reader, a revoked agent), an agent's mark, two events and the counts they
made, a refused event — as rows of its tables, and the check that an upgraded hub still holds and serves it all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hub.storage import HubStore
from hub.storage.credentials import new_token, token_hash
from hub.storage.ingest import event_row
from hub.storage.sql import EVENT_FIELDS
from protocol import Kind, StockEvent, wall_ms_now
from tests.hub.event_factory import EventFactory

AGENT, READER, REVOKED = "store-1", "dashboard", "old-till"
LOCATION, SKU = "S1", "SKU-1"


@dataclass(frozen=True, slots=True)
class V1Hub:
    """What a version-1 hub held: tokens to sign in with, and the events behind its counts."""

    agent_token: str
    reader_token: str
    revoked_token: str
    events: tuple[StockEvent, ...]  # receive 5, sale -1 at S1: on hand 4
    refused: StockEvent  # the agent's event for S2, which it may not write
    epoch: int


def v1_hub() -> V1Hub:
    make = EventFactory(AGENT, epoch=7, location=LOCATION, sku=SKU, base_ms=wall_ms_now() - 3_600_000)
    events = (make(Kind.RECEIVE, 5, at_ms=0), make(Kind.SALE, -1, at_ms=1_000))
    refused = make(Kind.RECEIVE, 2, at_ms=2_000, location="S2")
    return V1Hub(new_token(AGENT), new_token(READER), new_token(REVOKED), events, refused, 7)


def v1_rows(h: V1Hub) -> dict[str, tuple[str, list[tuple[Any, ...]]]]:
    """table -> (column list, rows): the same on both backends' version-1 schemas (PostgreSQL adds event_ids)."""
    last = h.events[-1]
    return {
        "agents": (
            "agent_id, token_sha256, role, locations, created_ms, revoked_ms, last_sync_ms, clock_skew_ms",
            [
                (AGENT, token_hash(h.agent_token), "agent", json.dumps([LOCATION]), 1, None, 1_000, 12),
                (READER, token_hash(h.reader_token), "reader", "[]", 1, None, None, None),
                (REVOKED, token_hash(h.revoked_token), "agent", json.dumps([LOCATION]), 1, 500, None, None),
            ],
        ),
        "agent_hwm": ("agent_id, epoch, hwm, updated_ms", [(AGENT, h.epoch, h.refused.seq, 1_000)]),
        "events": (
            f"{EVENT_FIELDS}, effect, variance, duplicates, received_at_ms",
            [(ev.event_id, *event_row(ev), "applied", None, 0, 1_000) for ev in h.events],
        ),
        "stock": (
            ("location, sku, on_hand, reserved, in_transit, safety_stock, max_at, max_agent, max_seq, max_id, "
            "updated_at_ms"),
            [(LOCATION, SKU, 4, 0, 0, 0, last.occurred_at, AGENT, last.seq, last.event_id, 1_000)],
        ),
        "rejections": (
            f"{EVENT_FIELDS}, content_hash, code, detail, attempts, received_at_ms",
            [
                (
                    h.refused.event_id, *event_row(h.refused), h.refused.content_hash, "forbidden_location",
                    f"agent {AGENT} may not write location S2", 1, 1_000,
                )
            ],
        ),
    }


async def check_upgraded(store: HubStore, h: V1Hub, schema_version: int) -> None:
    """Everything the version-1 hub held is there and works, and the hub takes new events on top."""
    assert (await store.health())["schema_version"] == schema_version
    who = await store.authenticate(h.agent_token)
    assert who is not None and (who.agent_id, who.locations) == (AGENT, frozenset({LOCATION}))
    reader = await store.authenticate(h.reader_token)
    assert reader is not None and reader.role == "reader"
    assert await store.authenticate(h.revoked_token) is None  # revoked stays revoked

    status = {s.agent_id: s for s in await store.agent_status()}
    assert set(status) == {AGENT, READER, REVOKED} and status[REVOKED].revoked
    assert status[AGENT].hwm == {h.epoch: h.refused.seq} and status[AGENT].last_sync_ms == 1_000

    ledger = await store.ledger(location=LOCATION)
    assert sorted(r.event_id for r in ledger) == sorted(ev.event_id for ev in h.events)
    (row,) = await store.counts(location=LOCATION)
    assert (row.sku, row.on_hand, row.available) == (SKU, 4, 4)
    exceptions = await store.exceptions()
    assert [e.kind for e in exceptions if e.kind == "rejected_event"] == ["rejected_event"], exceptions

    again = await store.ingest(who, h.epoch, list(h.events))  # the agent resends what the old hub had
    assert (again.applied, again.duplicates, again.rejected) == (0, 2, ())
    make = EventFactory(AGENT, epoch=h.epoch, location=LOCATION, sku=SKU, base_ms=wall_ms_now() - 60_000)
    make.seq = h.refused.seq
    sale = make(Kind.SALE, -3, at_ms=0)
    result = await store.ingest(who, h.epoch, [sale], backlog=0)
    assert result.applied == 1 and result.hwm == sale.seq
    (row,) = await store.counts(location=LOCATION)
    assert row.on_hand == 1
    changes = await store.changes(0, 100)
    assert changes and changes[-1].on_hand == 1  # the change feed (schema 2) starts with the first new change

    version = await store.bundles_version()  # schema 8: a bundle change raises it, on an upgraded database too
    await store.put_bundle("KIT-AFTER-UPGRADE", {"PART-AFTER-UPGRADE": 2}, AGENT)  # no stock: no row moves
    assert await store.bundles_version() > version
