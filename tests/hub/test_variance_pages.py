"""The shrinkage report by SKU comes in pages of the most shrinkage first, with the totals of every row in each
page, over real HTTP on 127.0.0.1, on both backends.

Found: ``GET /v1/reports/variance`` (by=sku) answered every row in one JSON page with no limit. A stocktake of
10 stores x 5,000 SKUs was a 9.8 MB answer built in one go on the event loop (7-10 s of hub work), and the
dashboard fetched all of it to draw 500 rows.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub import HubSettings, HubStore, create_app, open_store
from hub.storage.base import AgentIdentity
from protocol import Kind, StockEvent, new_event_id, pack_hlc
from tests.harness.inprocess import IN_PROCESS_DB, serve_app
from tests.harness.pg import fresh_schema
from tests.hub.test_paging import agent

NOW_MS = time.time_ns() // 1_000_000 - 3_600_000  # an hour ago: inside the report's default 30 days
LOCATIONS = ("S001", "S002", "S003")


@pytest.fixture
async def any_store(backend: str, tmp_path: Path) -> AsyncIterator[HubStore]:
    if backend == "sqlite":
        async with open_store(tmp_path / "hub.db") as s:
            yield s
        return
    async with fresh_schema() as url, open_store(url) as s:
        yield s


async def stocktake(store: HubStore, skus: int) -> tuple[str, list[dict[str, Any]]]:
    """Each location receives 20 of each SKU, then counts it: SKU n is found short by n % 7 (ties on purpose), and
    every 5th is found 1 over. Returns a reader's token and the rows the report must hold, most shrinkage first."""
    who, _ = await agent(store, list(LOCATIONS))
    _, token = await store.add_agent([], role="reader")
    events: list[StockEvent] = []
    expected: list[dict[str, Any]] = []
    seq = 0

    def ev(who: AgentIdentity, location: str, sku: str, kind: Kind, qty: int, at_ms: int) -> StockEvent:
        nonlocal seq
        seq += 1
        return StockEvent(new_event_id(), who.agent_id, 1, seq, location, sku, kind, qty, pack_hlc(at_ms, 0),
                          at_ms, "api:test")  # fmt: skip

    for location in LOCATIONS:
        for n in range(skus):
            sku = f"SKU-{n:04d}"
            short = n % 7 if n % 5 else 0
            over = 1 if n % 5 == 0 else 0
            events.append(ev(who, location, sku, Kind.RECEIVE, 20, NOW_MS))
            events.append(ev(who, location, sku, Kind.COUNT, 20 - short + over, NOW_MS + 1000))
            expected.append({"location": location, "sku": sku, "shrinkage": short, "overage": over})
    for start in range(0, len(events), 500):
        assert not (await store.ingest(who, 1, events[start : start + 500])).rejected
    expected.sort(key=lambda r: (-r["shrinkage"], r["overage"] - r["shrinkage"], r["location"], r["sku"]))
    return token, expected


async def test_the_report_by_sku_is_paged_most_shrinkage_first_with_the_totals_of_every_row(
    any_store: HubStore,
) -> None:
    token, expected = await stocktake(any_store, 12)  # 36 rows
    auth = {"Authorization": f"Bearer {token}"}
    totals = {"counts": 36, "shrinkage": sum(r["shrinkage"] for r in expected),
              "overage": sum(r["overage"] for r in expected)}  # fmt: skip
    totals["net_variance"] = totals["overage"] - totals["shrinkage"]
    async with serve_app(create_app(any_store, HubSettings(db=IN_PROCESS_DB))) as served:
        walked: list[dict[str, Any]] = []
        pages = 0
        params: dict[str, str] = {"limit": "5"}
        while True:
            async with served.client.get("/v1/reports/variance", params=params, headers=auth) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            pages += 1
            assert len(body["rows"]) <= 5
            assert body["totals"] == totals  # every row's, in every page
            assert body["row_count"] == 36
            walked += body["rows"]
            if body["next"] is None:
                break
            params = {"limit": "5", "cursor": body["next"]}
            assert pages < 20, "the walk did not end"
        assert pages == 8
        assert [(r["location"], r["sku"], r["shrinkage"], r["overage"]) for r in walked] == [
            (r["location"], r["sku"], r["shrinkage"], r["overage"]) for r in expected
        ]  # each row once, most shrinkage first, ties by net variance, location and SKU

        async with served.client.get("/v1/reports/variance", params={"format": "csv"}, headers=auth) as resp:
            assert resp.status == 200
            rows = list(csv.DictReader(io.StringIO(await resp.text())))
        assert [(r["location"], r["sku"]) for r in rows] == [(r["location"], r["sku"]) for r in expected]

        async with served.client.get("/v1/reports/variance", params={"by": "location"}, headers=auth) as resp:
            body = await resp.json()
        assert [r["location"] for r in body["rows"]] == list(LOCATIONS)  # by location: one page, as it was
        assert body["next"] is None and body["row_count"] == 3


async def test_the_report_by_sku_answers_500_rows_unless_asked_and_says_there_are_more(
    any_store: HubStore,
) -> None:
    token, expected = await stocktake(any_store, 200)  # 600 rows
    auth = {"Authorization": f"Bearer {token}"}
    async with serve_app(create_app(any_store, HubSettings(db=IN_PROCESS_DB))) as served:
        async with served.client.get("/v1/reports/variance", headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        assert len(body["rows"]) == 500 and body["next"] is not None and body["row_count"] == 600
        assert [r["sku"] for r in body["rows"]] == [r["sku"] for r in expected[:500]]
        async with served.client.get("/v1/reports/variance", params={"cursor": body["next"]}, headers=auth) as resp:
            rest = await resp.json()
        assert [r["sku"] for r in rest["rows"]] == [r["sku"] for r in expected[500:]] and rest["next"] is None
        async with served.client.get("/v1/reports/variance", params={"limit": "10000"}, headers=auth) as resp:
            assert len((await resp.json())["rows"]) == 600
        async with served.client.get("/v1/reports/variance", params={"format": "csv"}, headers=auth) as resp:
            assert len(list(csv.DictReader(io.StringIO(await resp.text())))) == 600  # the CSV has every row

        for query, words in [
            ({"limit": "10001"}, "limit"),
            ({"by": "location", "cursor": body["next"]}, "cursor"),
            ({"by": "count", "cursor": body["next"]}, "cursor"),
        ]:
            async with served.client.get("/v1/reports/variance", params=query, headers=auth) as resp:
                assert resp.status == 400, query
                assert words in (await resp.json())["detail"], query
