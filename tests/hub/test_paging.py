"""Paging never skips or repeats: cursors on the ledger, the counts, the exceptions, divergence and webhook
deliveries, over real HTTP, on both backends.

Bursts of hundreds of events on ONE timestamp (and on a few) are walked page by page with small limits;
every row must come exactly once, in the order of the full key. Tampered cursors are a 400 with a sentence.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hub import HubStore, open_store, paging
from hub.storage.base import AgentIdentity, ImportIssue, Observation
from hub.webhooks import WebhookSpec
from protocol import Kind, StockEvent, event_id_hex, new_event_id, pack_hlc
from tests.harness.inprocess import serve_hub
from tests.harness.pg import fresh_schema

NOW_MS = time.time_ns() // 1_000_000 - 60_000  # inside the hub's clock window


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[HubStore]:
    if backend == "sqlite":
        async with open_store(tmp_path / "hub.db") as s:
            yield s
        return
    async with fresh_schema() as url, open_store(url) as s:
        yield s


async def agent(store: HubStore, locations: list[str]) -> tuple[AgentIdentity, str]:
    _, token = await store.add_agent(locations)
    who = await store.authenticate(token)
    assert who is not None
    return who, token


def ev(who: AgentIdentity, seq: int, at_ms: int, *, sku: str = "SKU-1", location: str = "S001",
       qty: int = 1, event_id: bytes | None = None, counter: int = 0) -> StockEvent:  # fmt: skip
    return StockEvent(
        event_id or new_event_id(), who.agent_id, 1, seq, location, sku, Kind.RECEIVE, qty,
        pack_hlc(at_ms, counter), at_ms, "api:test",
    )  # fmt: skip


async def walk(client: TestClient[Any, Any], token: str, path: str, items: str, **query: Any) -> list[dict[str, Any]]:
    """Every row of a paged route, following ``next`` until it is null (bounded)."""
    rows: list[dict[str, Any]] = []
    params = {k: str(v) for k, v in query.items()}
    for _ in range(5_000):
        resp = await client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
        body = await resp.json()
        assert resp.status == 200, body
        rows += body[items]
        if body["next"] is None:
            return rows
        assert len(body[items]) == int(params.get("limit", 1000))
        params = {k: v for k, v in params.items() if k != "before"} | {"cursor": body["next"]}
    raise AssertionError("the walk did not end")


def order_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["occurred_at"], row["agent_id"], row["seq"], row["event_id"])


async def burst(store: HubStore) -> tuple[str, list[StockEvent]]:
    """520 events of two agents on ONE stamp, 90 on three more, a conflicting resend (a rejection sharing
    its event's full order key) and a refused location: one ledger to walk."""
    a, token = await agent(store, ["S001", "S002"])
    b, _ = await agent(store, ["S001"])
    events = [ev(a, seq, NOW_MS, sku=f"SKU-{seq % 7}") for seq in range(1, 301)]
    events_b = [ev(b, seq, NOW_MS, sku=f"SKU-{seq % 5}", location="S001") for seq in range(1, 221)]
    later = [ev(a, 300 + i, NOW_MS + 1 + i % 3, location="S002") for i in range(1, 91)]
    for batch in (events[:150], events[150:], later):
        assert not (await store.ingest(a, 1, batch)).rejected
    assert not (await store.ingest(b, 1, events_b)).rejected
    first = events[0]
    conflict = ev(a, first.seq, NOW_MS, sku=first.sku, qty=99, event_id=first.event_id)
    forbidden = ev(b, 221, NOW_MS, location="S002")
    assert (await store.ingest(a, 1, [conflict])).rejected
    assert (await store.ingest(b, 1, [forbidden])).rejected
    return token, events + events_b + later


@pytest.mark.parametrize("limit", [7, 64])
async def test_walking_the_ledger_sees_every_event_once_in_order(
    store: HubStore, client: TestClient[Any, Any], limit: int
) -> None:
    token, events = await burst(store)
    rows = await walk(client, token, "/v1/ledger", "events", limit=limit)
    applied = [r for r in rows if r["effect"] != "rejected"]
    assert sorted(r["event_id"] for r in applied) == sorted(event_id_hex(e.event_id) for e in events)
    assert len({r["event_id"] for r in applied}) == len(applied)  # none twice
    assert sum(r["effect"] == "rejected" for r in rows) == 2  # the conflict and the refused location
    keys = [order_key(r) for r in rows]
    assert keys == sorted(keys, reverse=True)  # newest first in resolution order
    whole = await client.get("/v1/ledger", params={"limit": "10000"}, headers={"Authorization": f"Bearer {token}"})
    assert [r["event_id"] for r in (await whole.json())["events"]] == [r["event_id"] for r in rows]


async def test_filtered_walks_are_whole_too(store: HubStore, client: TestClient[Any, Any]) -> None:
    token, events = await burst(store)
    for query, expect in (
        ({"location": "S002"}, [e for e in events if e.location == "S002"]),
        ({"sku": "SKU-3"}, [e for e in events if e.sku == "SKU-3"]),
    ):
        rows = await walk(client, token, "/v1/ledger", "events", limit=9, **query)
        applied = [r["event_id"] for r in rows if r["effect"] != "rejected"]
        assert sorted(applied) == sorted(event_id_hex(e.event_id) for e in expect), query


async def test_before_starts_a_walk_that_skips_nothing(store: HubStore, client: TestClient[Any, Any]) -> None:
    token, events = await burst(store)
    before = pack_hlc(NOW_MS + 1, 0)  # the ONE-stamp burst and nothing after it
    rows = await walk(client, token, "/v1/ledger", "events", limit=11, before=before)
    applied = [r["event_id"] for r in rows if r["effect"] != "rejected"]
    assert sorted(applied) == sorted(event_id_hex(e.event_id) for e in events if e.occurred_at < before)


async def test_a_cursor_and_before_together_are_refused(store: HubStore, client: TestClient[Any, Any]) -> None:
    token, _ = await burst(store)
    auth = {"Authorization": f"Bearer {token}"}
    first = await (await client.get("/v1/ledger", params={"limit": "3"}, headers=auth)).json()
    resp = await client.get("/v1/ledger", params={"cursor": first["next"], "before": "5"}, headers=auth)
    assert resp.status == 400 and "cursor or before" in (await resp.json())["detail"]


async def test_walking_counts_sees_every_count_once(store: HubStore, client: TestClient[Any, Any]) -> None:
    a, token = await agent(store, ["S001", "S002", "S003"])
    events = [
        ev(a, i + 1, NOW_MS, location=f"S00{1 + i % 3}", sku=f"SKU-{i // 3:03d}") for i in range(3 * 40)
    ]
    assert not (await store.ingest(a, 1, events)).rejected
    at_one = await walk(client, token, "/v1/locations/S002/counts", "counts", limit=6)
    assert [r["sku"] for r in at_one] == [f"SKU-{i:03d}" for i in range(40)]
    of_one = await walk(client, token, "/v1/skus/SKU-007/counts", "counts", limit=2)
    assert [r["location"] for r in of_one] == ["S001", "S002", "S003"]
    everything = await walk(client, token, "/v1/counts", "counts", limit=7)
    assert [(r["location"], r["sku"]) for r in everything] == sorted((e.location, e.sku) for e in events)


async def test_tampered_cursors_are_400_with_one_sentence(store: HubStore, client: TestClient[Any, Any]) -> None:
    token, _ = await burst(store)
    auth = {"Authorization": f"Bearer {token}"}
    ledger_next = (await (await client.get("/v1/ledger", params={"limit": "3"}, headers=auth)).json())["next"]
    counts_next = (await (await client.get("/v1/counts", params={"limit": "1"}, headers=auth)).json())["next"]
    flipped = ledger_next[:10] + ("A" if ledger_next[10] != "A" else "B") + ledger_next[11:]
    for path, cursor in (
        ("/v1/ledger", flipped),
        ("/v1/ledger", ledger_next[:-3]),
        ("/v1/ledger", ledger_next + "AA"),
        ("/v1/ledger", counts_next),  # another route's
        ("/v1/counts", ledger_next),
        ("/v1/locations/S001/counts", "not a cursor"),
        ("/v1/skus/SKU-1/counts", "%%%"),
        ("/v1/ledger", ""),
        ("/v1/ledger", "x" * 5_000),
        ("/v1/ledger", "\u00e9\u2028"),
    ):
        resp = await client.get(path, params={"cursor": cursor}, headers=auth)
        body = await resp.json()
        assert resp.status == 400, (path, cursor, body)
        message = body["detail"]
        assert "cursor" in message and message.count(". ") == 0 and "\n" not in message
    good = await client.get("/v1/ledger", params={"cursor": ledger_next}, headers=auth)
    assert good.status == 200


# --- exceptions: one list merged from many sources -----------------------------------------------------

HOUR_MS = 3_600_000


def move(who: AgentIdentity, seq: int, at_ms: int, kind: Kind, qty: int, *, sku: str, location: str = "S001",
         ref: str | None = None, attrs: dict[str, Any] | None = None, reason: str | None = None) -> StockEvent:  # fmt: skip
    return StockEvent(
        new_event_id(), who.agent_id, 1, seq, location, sku, kind, qty, pack_hlc(at_ms, 0), at_ms, "api:test",
        ref, reason, attrs,
    )  # fmt: skip


async def exception_burst(store: HubStore) -> str:
    """Hundreds of exceptions of every source, most of them committed by ONE batch and so sharing one
    ``at_ms``: negative stock, unknown barcodes, transfers closed short, overdue transfers, refused
    events, events held for their clock; then import issues and divergence, a batch each."""
    a, token = await agent(store, ["S001", "S002", "S003"])
    batch: list[StockEvent] = []

    def add(at_ms: int, kind: Kind, qty: int, **kw: Any) -> None:
        batch.append(move(a, len(batch) + 1, at_ms, kind, qty, **kw))

    for i in range(120):
        add(NOW_MS, Kind.SALE, -1, sku=f"SKU-N{i:03d}")
    for i in range(30):
        add(NOW_MS, Kind.SALE, -1, sku=f"unknown:40000000{i:05d}", location="S002")
    for i in range(25):  # shipped 3, received 1 on a final receipt: closed short
        add(NOW_MS, Kind.TRANSFER_OUT, -3, sku=f"SKU-T{i:03d}", ref=f"T{i}", attrs={"to": "S002"})
        add(NOW_MS + 1, Kind.TRANSFER_IN, 1, sku=f"SKU-T{i:03d}", location="S002", ref=f"T{i}")
    for i in range(20):  # shipped two hours ago, never received: overdue after an hour
        add(NOW_MS - 2 * HOUR_MS, Kind.TRANSFER_OUT, -2, sku=f"SKU-O{i:03d}", ref=f"O{i}", attrs={"to": "S003"})
    for i in range(40):  # a location this credential is not bound to
        add(NOW_MS, Kind.RECEIVE, 1, sku=f"SKU-R{i:03d}", location="S009")
    for i in range(30):  # three days ahead of the hub's clock
        add(NOW_MS + 72 * HOUR_MS, Kind.RECEIVE, 1, sku=f"SKU-Q{i:03d}")
    result = await store.ingest(a, 1, batch, clock_window_ms=24 * HOUR_MS)
    assert sorted({r.code for r in result.rejected}) == ["forbidden_location", "quarantined"]
    issues = [ImportIssue(f"i{i}", "S001", "pos.csv", i + 1, "the quantity is not a number") for i in range(40)]
    assert len((await store.add_import_issues(a, issues)).accepted) == 40
    seen = [Observation(f"o{i}", "S001", f"SKU-N{i:03d}", "shopify", 50, NOW_MS + 10) for i in range(40)]
    assert len((await store.add_observations(a, seen)).accepted) == 40
    return token


@pytest.fixture
async def ops_client(store: HubStore) -> AsyncIterator[TestClient[Any, Any]]:
    """A hub whose transfers are overdue after an hour."""
    async with serve_hub(store, transfer_open_max_s=3_600) as served:
        yield served.client


def identity(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


EXCEPTION_KINDS = {
    "negative_on_hand": 120 + 30 + 25 + 20,
    "unknown_barcode": 30,
    "transfer_short": 25,
    "transfer_overdue": 20,
    "rejected_event": 40,
    "clock_quarantine": 30,
    "import_quarantine": 40,
    "divergence": 40,
}


@pytest.mark.parametrize("limit", [7, 50])
async def test_walking_the_exceptions_sees_each_once(
    store: HubStore, ops_client: TestClient[Any, Any], limit: int
) -> None:
    token = await exception_burst(store)
    rows = await walk(ops_client, token, "/v1/exceptions", "exceptions", limit=limit)
    assert Counter(r["kind"] for r in rows) == EXCEPTION_KINDS
    assert len({identity(r) for r in rows}) == len(rows), "an exception came twice"
    burst = Counter(r["at_ms"] for r in rows).most_common(1)[0][1]
    assert burst >= 200, f"only {burst} exceptions share one at_ms: the burst is not a burst"
    assert [r["at_ms"] for r in rows] == sorted((r["at_ms"] for r in rows), reverse=True)
    auth = {"Authorization": f"Bearer {token}"}
    whole = await (await ops_client.get("/v1/exceptions", params={"limit": "10000"}, headers=auth)).json()
    assert [identity(r) for r in whole["exceptions"]] == [identity(r) for r in rows] and whole["next"] is None


async def test_a_filtered_exception_walk_is_whole_too(store: HubStore, ops_client: TestClient[Any, Any]) -> None:
    token = await exception_burst(store)
    rows = await walk(ops_client, token, "/v1/exceptions", "exceptions", limit=4, location="S002")
    assert Counter(r["kind"] for r in rows) == {"negative_on_hand": 30, "unknown_barcode": 30, "transfer_short": 25}
    assert len({identity(r) for r in rows}) == len(rows)


async def test_exceptions_raised_during_a_walk_do_not_disturb_it(
    store: HubStore, ops_client: TestClient[Any, Any]
) -> None:
    token = await exception_burst(store)
    auth = {"Authorization": f"Bearer {token}"}
    first = await (await ops_client.get("/v1/exceptions", params={"limit": "30"}, headers=auth)).json()
    b, _ = await agent(store, ["S004"])
    later = [move(b, i + 1, NOW_MS, Kind.SALE, -1, sku=f"SKU-L{i:03d}", location="S004") for i in range(10)]
    assert not (await store.ingest(b, 1, later)).rejected  # newer: they sort before the cursor
    rest = await walk(ops_client, token, "/v1/exceptions", "exceptions", limit=30, cursor=first["next"])
    rows = first["exceptions"] + rest
    assert Counter(r["kind"] for r in rows) == EXCEPTION_KINDS
    assert len({identity(r) for r in rows}) == len(rows)


# --- divergence and webhook deliveries ---------------------------------------------------------------


async def test_walking_divergence_sees_each_once(store: HubStore, client: TestClient[Any, Any]) -> None:
    a, token = await agent(store, ["S001", "S002"])
    sales = [ev(a, i + 1, NOW_MS, sku=f"SKU-{i:03d}", location=f"S00{1 + i % 2}") for i in range(30)]
    assert not (await store.ingest(a, 1, sales)).rejected
    seen = [
        Observation(f"o{system}{i}", e.location, e.sku, system, 40 + i, NOW_MS + 10)
        for i, e in enumerate(sales)
        for system in ("shopify", "square")
    ]
    assert len((await store.add_observations(a, seen)).accepted) == 60
    rows = await walk(client, token, "/v1/divergence", "divergence", limit=7)
    keys = [(r["location"], r["sku"], r["system"]) for r in rows]
    assert keys == sorted((o.location, o.sku, o.system) for o in seen)
    of_one = await walk(client, token, "/v1/divergence", "divergence", limit=4, system="square", location="S002")
    assert [r["sku"] for r in of_one] == [e.sku for e in sales if e.location == "S002"]


@pytest.fixture
async def hook_client(store: HubStore) -> AsyncIterator[TestClient[Any, Any]]:
    """A hub with two webhooks (the feed stays empty, so they never call their URL)."""
    hooks = tuple(WebhookSpec(name, "http://127.0.0.1:9/hook", "s" * 32) for name in ("shop", "other"))
    async with serve_hub(store, webhooks=hooks) as served:
        yield served.client


async def test_walking_webhook_deliveries_sees_each_once(
    store: HubStore, hook_client: TestClient[Any, Any]
) -> None:
    _, token = await agent(store, ["S001"])
    for i in range(45):  # every attempt at one ms
        await store.log_webhook_delivery("shop", i + 1, i + 1, "failed", 500, f"attempt {i}", NOW_MS)
    await store.log_webhook_delivery("other", 1, 1, "delivered", 200, None, NOW_MS)
    rows = await walk(hook_client, token, "/v1/webhooks/shop/deliveries", "deliveries", limit=4)
    assert [r["first_change"] for r in rows] == list(range(45, 0, -1))
    auth = {"Authorization": f"Bearer {token}"}
    page = await (await hook_client.get("/v1/webhooks/shop/deliveries", params={"limit": "2"}, headers=auth)).json()
    resp = await hook_client.get("/v1/webhooks/other/deliveries", params={"cursor": page["next"]}, headers=auth)
    body = await resp.json()
    assert resp.status == 400 and "cursor" in body["detail"], "another webhook's cursor"


async def test_tampered_cursors_of_the_other_routes_are_400(
    store: HubStore, ops_client: TestClient[Any, Any]
) -> None:
    token = await exception_burst(store)
    auth = {"Authorization": f"Bearer {token}"}
    exc_next = (await (await ops_client.get("/v1/exceptions", params={"limit": "3"}, headers=auth)).json())["next"]
    div_next = (await (await ops_client.get("/v1/divergence", params={"limit": "3"}, headers=auth)).json())["next"]
    assert exc_next and div_next
    flipped = exc_next[:12] + ("A" if exc_next[12] != "A" else "B") + exc_next[13:]
    forged = [  # a valid check (it is no secret) around fields this hub never gives out
        paging.encode("exceptions", [NOW_MS, "no_such_source", ["x"]]),
        paging.encode("exceptions", [NOW_MS, "rejected_event", ["agent", "not hex", ""]]),
        paging.encode("exceptions", [NOW_MS, "negative_on_hand", ["S001"]]),
        paging.encode("exceptions", [-1, "negative_on_hand", ["S001", "SKU-1"]]),
        paging.encode("exceptions", [NOW_MS, "clock_quarantine", ["1"]]),
        paging.encode("exceptions", [NOW_MS, "import_quarantine", ["\ud800", "i1"]]),
        paging.encode("divergence", ["S001", "SKU-1", 5]),
    ]
    for path, cursor in (
        ("/v1/exceptions", flipped),
        ("/v1/exceptions", exc_next[:-2]),
        ("/v1/exceptions", div_next),
        ("/v1/divergence", exc_next),
        ("/v1/divergence", "%%%"),
        *(("/v1/divergence" if '"divergence"' in _payload(c) else "/v1/exceptions", c) for c in forged),
    ):
        resp = await ops_client.get(path, params={"cursor": cursor}, headers=auth)
        body = await resp.json()
        assert resp.status == 400, (path, cursor, body)
        message = body["detail"]
        assert "cursor" in message and message.count(". ") == 0 and "\n" not in message
    assert (await ops_client.get("/v1/exceptions", params={"cursor": exc_next}, headers=auth)).status == 200


def _payload(cursor: str) -> str:
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    return raw[: -paging.CHECK_BYTES].decode()
