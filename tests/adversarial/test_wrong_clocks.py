"""Wrong clocks against a real hub process: a store PC a century ahead, one reset to the past, and one on
the hub's own machine after a bulk import. The agent side runs here with its wall clock injected (as in
tests/faults/test_faults_clock.py); the hub is a real process reached over HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from agent import Movement, Outbox, Replicator
from protocol import Kind, pack_hlc, unpack_hlc, wall_ms_now
from tests.faults.helpers import Store
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import get_json

DAY_MS = 86_400_000
CENTURY_MS = 36_525 * DAY_MS
SYNC_WAIT_S = 60.0
SKEW_SLACK_MS = 60_000


class SkewedClock:
    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms

    def __call__(self) -> int:
        return wall_ms_now() + self.offset_ms


async def record_and_sync(store: Store, clock: SkewedClock, movements: list[Movement]) -> dict[str, Any]:
    """Record ``movements`` with this clock, sync them all, and return the outbox's status figures."""
    outbox = await Outbox.open(store.outbox, agent_id=store.cred.agent_id, location=store.location, wall_clock_ms=clock)
    replicator = Replicator(outbox, store.hub_url, store.cred.token, tick_s=0.2, retry_base_s=0.05, retry_max_s=0.5)
    async with outbox, replicator:
        # The agent's first request (a handshake) shows it the hub's clock before anything is recorded.
        await asyncio.wait_for(replicator.wait_for(lambda s: s.sync_state == "ok"), SYNC_WAIT_S)
        await outbox.record(movements)
        synced = replicator.wait_for(lambda s: s.sync_state == "ok" and s.backlog == 0 and s.sent_events > 0)
        await asyncio.wait_for(synced, SYNC_WAIT_S)
        stats = await outbox.stats()
        return {"held": stats.held_by_hub, "set_aside": stats.set_aside, "skew": stats.clock_skew_ms}


def resolve(hub: HubProcess, token: str, quarantine_id: int, action: str) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{hub.url}/v1/quarantine/{quarantine_id}",
        data=json.dumps({"action": action}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{err.code}: {err.read()[:300]!r}") from None


def on_hand(hub: HubProcess, token: str, location: str, sku: str) -> int:
    rows = get_json(f"{hub.url}/v1/locations/{location}/counts", token)["counts"]
    return next((r["on_hand"] for r in rows if r["sku"] == sku), 0)


def test_a_count_a_century_ahead_is_held_sales_count_and_the_operator_applies_it(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    store = make_store(hub, hub.url)
    admin = add_credential(hub.db, role="admin")
    hub.start()
    loc = store.location
    asyncio.run(record_and_sync(store, SkewedClock(0), [Movement(loc, "SKU-A", Kind.RECEIVE, 20, "api:test")]))

    wrong = SkewedClock(CENTURY_MS)  # a dead CMOS battery: a hundred years ahead
    first = asyncio.run(record_and_sync(store, wrong, [Movement(loc, "SKU-A", Kind.COUNT, 50, "api:test")]))
    assert (first["held"], first["set_aside"]) == (1, 0), "held by the hub, not refused"
    assert on_hand(hub, store.cred.token, loc, "SKU-A") == 20

    wrong.offset_ms = 0  # the clock is fixed; real sales follow
    sales = [Movement(loc, "SKU-A", Kind.SALE, -1, "api:test") for _ in range(5)]
    after = asyncio.run(record_and_sync(store, wrong, sales))
    assert abs(after["skew"]) < SKEW_SLACK_MS
    assert on_hand(hub, store.cred.token, loc, "SKU-A") == 15, "the century-ahead count froze nothing"
    ledger = get_json(f"{hub.url}/v1/ledger?location={loc}&sku=SKU-A", store.cred.token)["events"]
    sale_stamps = [e["occurred_at"] for e in ledger if e["kind"] == "sale"]
    assert all(unpack_hlc(t)[0] < wall_ms_now() + DAY_MS for t in sale_stamps), "new sales are stamped sanely"

    [held] = get_json(f"{hub.url}/v1/quarantine", admin.token)["quarantine"]
    assert (held["kind"], held["qty"], held["status"]) == ("count", 50, "pending")
    assert held["skew_ms"] > CENTURY_MS - DAY_MS
    kinds = [e["kind"] for e in get_json(f"{hub.url}/v1/exceptions", admin.token)["exceptions"]]
    assert "clock_quarantine" in kinds

    applied = resolve(hub, admin.token, held["id"], "apply_at_receipt")["quarantine"]
    assert (applied["status"], applied["resolved_by"]) == ("applied", admin.agent_id)
    # Re-stamped at its receipt, the count comes after the receipt and before the five sales.
    assert on_hand(hub, store.cred.token, loc, "SKU-A") == 45
    [count] = [e for e in get_json(f"{hub.url}/v1/ledger?location={loc}", admin.token)["events"] if e["kind"] == "count"]
    assert count["occurred_at"] == pack_hlc(held["received_at_ms"], 0)
    assert count["attrs"]["original_occurred_at"] == held["occurred_at"]


def test_a_clock_reset_to_the_past_is_held_and_can_be_discarded(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    store = make_store(hub, hub.url)
    admin = add_credential(hub.db, role="admin")
    hub.start()
    loc = store.location
    past = SkewedClock(-20 * 365 * DAY_MS)  # a CMOS reset: twenty years back
    status = asyncio.run(record_and_sync(store, past, [Movement(loc, "SKU-B", Kind.SALE, -3, "api:test")]))
    assert status["held"] == 1 and on_hand(hub, store.cred.token, loc, "SKU-B") == 0
    [held] = get_json(f"{hub.url}/v1/quarantine", admin.token)["quarantine"]
    assert held["skew_ms"] < -19 * 365 * DAY_MS
    assert resolve(hub, admin.token, held["id"], "discard")["quarantine"]["status"] == "discarded"
    assert get_json(f"{hub.url}/v1/quarantine", admin.token)["quarantine"] == []
    assert on_hand(hub, store.cred.token, loc, "SKU-B") == 0
    rejected = [e for e in get_json(f"{hub.url}/v1/ledger?location={loc}", admin.token)["events"]
                if e["effect"] == "rejected"]  # fmt: skip
    assert [e["rejection_code"] for e in rejected] == ["discarded"] and admin.agent_id in rejected[0]["rejection"]


def test_an_agent_on_the_hubs_machine_shows_no_skew_after_a_bulk_import(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    store = make_store(hub, hub.url)
    hub.start()
    hour_ago = pack_hlc(wall_ms_now() - 3_600_000, 0)
    rows = [Movement(store.location, f"SKU-{i % 7}", Kind.RECEIVE, 1, "pos:import", occurred_at=hour_ago + i)
            for i in range(300)]  # fmt: skip
    status = asyncio.run(record_and_sync(store, SkewedClock(0), rows))
    assert status["skew"] is not None and abs(status["skew"]) < 2_000, "measured from the request, not the events"
    [me] = [a for a in get_json(f"{hub.url}/v1/agents", store.cred.token)["agents"] if a["agent_id"] == store.cred.agent_id]
    assert abs(me["clock_skew_ms"]) < 2_000, "the hub measures from sent_ms too"
