"""The shrinkage report by SKU comes in pages of the most shrinkage first, with the totals of every row in each
page, over real HTTP on 127.0.0.1, on both backends.

Found: ``GET /v1/reports/variance`` (by=sku) answered every row in one JSON page with no limit. A stocktake of
10 stores x 5,000 SKUs was a 9.8 MB answer built in one go on the event loop (7-10 s of hub work), and the
dashboard fetched all of it to draw 500 rows.
"""

from __future__ import annotations

import contextlib
import csv
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub import HubSettings, HubStore, create_app, open_store, paging
from hub.storage.base import AgentIdentity, VarianceReport
from hub.storage.reports import VARIANCE_KEEP_MAX, VARIANCE_KEEP_MS
from protocol import Kind, StockEvent, new_event_id, pack_hlc, wall_ms_now
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


async def test_a_walk_of_the_report_by_sku_is_of_its_first_page_while_counts_arrive_on_any_hub(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: every page read the period's counts again and placed its cursor by shrinkage, so a row whose
    shrinkage changed between two pages was shown twice (it fell behind the cursor) or never (it rose before it),
    and the totals moved from page to page. A walk is now of the report its first page kept, page after page on
    either of two hubs of one PostgreSQL; the next first page has what was counted meanwhile."""
    async with contextlib.AsyncExitStack() as stack:
        if backend == "sqlite":
            stores = [await stack.enter_async_context(open_store(tmp_path / "hub.db"))]
        else:
            url = await stack.enter_async_context(fresh_schema())
            stores = [await stack.enter_async_context(open_store(url)) for _ in range(2)]
        store = stores[0]
        token, expected = await stocktake(store, 12)  # 36 rows
        who, _ = await agent(store, list(LOCATIONS))
        apps = [create_app(s, HubSettings(db=IN_PROCESS_DB)) for s in stores]
        hubs = [await stack.enter_async_context(serve_app(app)) for app in apps]
        auth = {"Authorization": f"Bearer {token}"}

        async def page(n: int, **query: str) -> Any:
            async with hubs[n % len(hubs)].client.get("/v1/reports/variance", params=query, headers=auth) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json()

        first = await page(0, limit="5")
        assert first["row_count"] == 36 and first["next"] is not None

        def count(seq: int, location: str, sku: str, kind: Kind, qty: int, at_ms: int) -> StockEvent:
            return StockEvent(new_event_id(), who.agent_id, 1, seq, location, sku, kind, qty, pack_hlc(at_ms, 0),
                              at_ms, "api:test")  # fmt: skip

        top, bottom = expected[0], expected[-1]
        assert (top["shrinkage"], bottom["shrinkage"]) == (6, 0)
        moved = [
            # a sale before the top row's count: the count found what was expected, the row falls to the end
            count(1, top["location"], top["sku"], Kind.SALE, -6, NOW_MS + 500),
            # the last row counted again, none left: it rises to the top
            count(2, bottom["location"], bottom["sku"], Kind.COUNT, 0, NOW_MS + 2000),
            # a SKU counted for the first time: a new row
            count(3, "S001", "SKU-NEW", Kind.RECEIVE, 5, NOW_MS),
            count(4, "S001", "SKU-NEW", Kind.COUNT, 1, NOW_MS + 1000),
        ]  # fmt: skip
        assert not (await store.ingest(who, 1, moved)).rejected

        walked, body, n = list(first["rows"]), first, 1
        while body["next"] is not None:
            body = await page(n, limit="5", cursor=body["next"])  # the other hub's turn on PostgreSQL
            assert (body["totals"], body["row_count"], body["from"], body["to"]) == (
                first["totals"], 36, first["from"], first["to"]
            )  # fmt: skip
            walked += body["rows"]
            n += 1
            assert n < 20, "the walk did not end"
        assert [(r["location"], r["sku"], r["shrinkage"], r["overage"]) for r in walked] == [
            (r["location"], r["sku"], r["shrinkage"], r["overage"]) for r in expected
        ]  # every row once, as the first page found them

        again = await page(1, limit="5")
        assert again["row_count"] == 37
        assert (again["rows"][0]["location"], again["rows"][0]["sku"], again["rows"][0]["shrinkage"]) == (
            bottom["location"], bottom["sku"], 20 + bottom["overage"]
        )  # fmt: skip

        async def refused(query: dict[str, str]) -> str:
            async with hubs[-1].client.get("/v1/reports/variance", params=query, headers=auth) as resp:
                assert resp.status == 400, query
                return str((await resp.json())["detail"])

        old = paging.encode("variance-sku", [-6, -6, "S001", "SKU-0006"])  # a row's place, as pages were before
        assert "read the first page again" in await refused({"cursor": old})
        assert "location" in await refused({"cursor": again["next"], "location": "S002"})
        assert "from" in await refused({"cursor": again["next"], "from": "2001-01-01"})
        monkeypatch.setattr("hub.reports.wall_ms_now", lambda: wall_ms_now() + 11 * 60_000)
        assert "no longer keeps" in await refused({"cursor": again["next"]})


async def test_a_report_is_kept_ten_minutes_and_twenty_at_most(any_store: HubStore) -> None:
    """The reports kept for their later pages are bounded in time and in number: each new one removes the older."""
    now = wall_ms_now()

    def report(n: int, made_ms: int) -> VarianceReport:
        return VarianceReport(f"{n:032x}", made_ms, 0, 1, "S001", None, 1001, 1001, 1001, 0)

    part = '[["S001","SKU-1",1,1,0,1,2]]'
    await any_store.keep_variance_report(report(99, now - VARIANCE_KEEP_MS - 1), [part])  # older than 10 minutes
    for n in range(VARIANCE_KEEP_MAX + 1):
        await any_store.keep_variance_report(report(n, now - 1000 + n), [part, part])
    assert await any_store.kept_variance_report(f"{99:032x}", 0, 0, now_ms=now - VARIANCE_KEEP_MS) is None
    assert await any_store.kept_variance_report(f"{0:032x}", 0, 1, now_ms=now) is None  # the oldest of 21
    found = await any_store.kept_variance_report(f"{1:032x}", 0, 5, now_ms=now)
    assert found is not None and found[0] == report(1, now - 999) and found[1] == [part, part]
    newest = f"{VARIANCE_KEEP_MAX:032x}"
    assert await any_store.kept_variance_report(newest, 1, 1, now_ms=now) is not None
    assert await any_store.kept_variance_report(newest, 1, 1, now_ms=now + VARIANCE_KEEP_MS) is None
