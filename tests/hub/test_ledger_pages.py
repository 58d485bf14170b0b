"""A page of the ledger is bounded by bytes as well as rows, and is built a part at a time with the event loop
free between the parts, over real HTTP on 127.0.0.1.

Found by a black-box attack: with event attrs at their limits, ``GET /v1/ledger?location=WEB&limit=10000`` was a
37 MiB page built in one go on the event loop (reading the attrs and writing the JSON, ~1.5 s), and one reader
fetching such pages in a loop held every other answer of the hub ~2 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hub import HubSettings, HubStore, create_app, open_store
from hub.app import LEDGER_PAGE_BYTES
from protocol import Kind, StockEvent, event_id_hex, new_event_id, pack_hlc
from protocol.values import ATTR_KEY_MAX_LEN, ATTR_STR_MAX_LEN, ATTRS_MAX_KEYS
from tests.harness.inprocess import IN_PROCESS_DB, serve_app
from tests.harness.pg import fresh_schema
from tests.hub.test_paging import agent, order_key

NOW_MS = time.time_ns() // 1_000_000 - 60_000  # inside the hub's clock window
FAT_EVENTS = 600  # ~9 KiB of JSON each: ~5.4 MiB of them, more than one page's bytes
ATTRS = {f"{k:02d}".ljust(ATTR_KEY_MAX_LEN, "k"): f"{k}".ljust(ATTR_STR_MAX_LEN, "v") for k in range(ATTRS_MAX_KEYS)}


@pytest.fixture
async def any_store(backend: str, tmp_path: Path) -> AsyncIterator[HubStore]:
    if backend == "sqlite":
        async with open_store(tmp_path / "hub.db") as s:
            yield s
        return
    async with fresh_schema() as url, open_store(url) as s:
        yield s


async def fat_ledger(store: HubStore, kind: Kind = Kind.RECEIVE) -> tuple[str, list[StockEvent]]:
    """``FAT_EVENTS`` receipts (or counts) at WEB with attrs at their limits (on a few stamps, so pages end inside
    a run of one stamp), and a few at S001 that a WEB page never shows."""
    who, token = await agent(store, ["WEB", "S001"])
    events = [
        StockEvent(
            new_event_id(), who.agent_id, 1, seq, "WEB" if seq <= FAT_EVENTS else "S001", f"SKU-{seq % 13}",
            kind, 1, pack_hlc(NOW_MS + seq // 100, 0), NOW_MS, "api:test", attrs=ATTRS,
        )
        for seq in range(1, FAT_EVENTS + 21)
    ]  # fmt: skip
    for start in range(0, len(events), 200):
        assert not (await store.ingest(who, 1, events[start : start + 200])).rejected
    return token, [e for e in events if e.location == "WEB"]


class SecondReadWaits:
    """The store's ledger reads, the second of which waits (at most 10 s) for the small request's answer, so the
    order does not depend on how fast this machine is; ``seen``: each read, and the small answer, in order."""

    def __init__(self, store: HubStore) -> None:
        self.seen: list[str] = []
        self.answered: list[str] = []
        self.first_read = asyncio.Event()
        self._small_answered = asyncio.Event()
        self._real = store.ledger
        store.ledger = self._ledger  # type: ignore[method-assign]

    async def _ledger(self, **kw: Any) -> Any:
        if self.seen.count("read") == 1:
            await asyncio.gather(asyncio.wait_for(self._small_answered.wait(), 10), return_exceptions=True)
        rows = await self._real(**kw)
        self.seen.append("read")
        self.first_read.set()
        return rows

    async def note(self, request: web.Request, response: web.StreamResponse) -> None:
        self.answered.append(request.path)
        if request.path == "/v1/counts":
            self.seen.append("small answered")
            self._small_answered.set()

    def app(self, store: HubStore) -> web.Application:
        app = create_app(store, HubSettings(db=IN_PROCESS_DB))
        app.on_response_prepare.append(self.note)
        return app


@pytest.fixture
async def hub(any_store: HubStore) -> AsyncIterator[tuple[web.Application, Any]]:
    app = create_app(any_store, HubSettings(db=IN_PROCESS_DB))
    async with serve_app(app) as served:
        yield app, served.client


async def test_a_fat_page_ends_at_its_byte_bound_and_next_goes_on_with_no_event_lost_or_repeated(
    any_store: HubStore, hub: tuple[web.Application, Any]
) -> None:
    _, client = hub
    token, events = await fat_ledger(any_store)
    auth = {"Authorization": f"Bearer {token}"}
    params = {"location": "WEB", "limit": "10000"}
    rows: list[dict[str, Any]] = []
    sizes: list[int] = []
    for _ in range(20):
        resp = await client.get("/v1/ledger", params=params, headers=auth)
        assert resp.status == 200
        raw = await resp.read()
        body = await resp.json()
        sizes.append(len(raw))
        rows += body["events"]
        if body["next"] is None:
            break
        params = {"location": "WEB", "limit": "10000", "cursor": body["next"]}
    else:
        raise AssertionError("the walk did not end")
    one_row = max(len(raw) // max(1, len(body["events"])), 16 * 1024)
    assert len(sizes) >= 2, sizes  # 5 MiB of rows: the first page ended at its bytes, not at 10,000 rows
    assert all(size <= LEDGER_PAGE_BYTES + 2 * one_row for size in sizes), sizes
    assert sorted(r["event_id"] for r in rows) == sorted(event_id_hex(e.event_id) for e in events)  # once each
    assert len({r["event_id"] for r in rows}) == len(rows) == FAT_EVENTS
    keys = [order_key(r) for r in rows]
    assert keys == sorted(keys, reverse=True)  # newest first, across the pages too
    assert all(r["attrs"] == ATTRS for r in rows)


async def test_a_small_request_is_answered_while_a_fat_page_is_built(store: HubStore) -> None:
    """The small request is sent once the fat page's first part is read; a hub that builds the page in one go on
    the event loop answers it only after the whole page. The fat page's second read from the store waits (at most
    10 s) for the small answer, so the order does not depend on how fast this machine is."""
    token, _ = await fat_ledger(store)
    auth = {"Authorization": f"Bearer {token}"}
    rig = SecondReadWaits(store)
    async with serve_app(rig.app(store)) as served:
        fat = asyncio.create_task(
            served.client.get("/v1/ledger", params={"location": "WEB", "limit": "10000"}, headers=auth)
        )
        await asyncio.wait_for(rig.first_read.wait(), 30)
        small = await served.client.get("/v1/counts", params={"limit": "5"}, headers=auth)
        assert small.status == 200, await small.text()
        resp = await asyncio.wait_for(fat, 60)
        assert resp.status == 200
        assert (await resp.json())["events"]
    assert rig.answered == ["/v1/counts", "/v1/ledger"]  # the small answer did not wait for the fat page


async def test_a_small_request_is_answered_while_a_fat_csv_download_is_read(store: HubStore) -> None:
    """The same for the ledger's CSV download (streamed a page at a time): the small request, sent once its first
    page is read, is answered before the download's last read from the store. It read 1,000 rows a page: the
    whole of this location in one read, turned to CSV in one go (~9 MiB a page at 1,000 such events). Every
    event is in the download, once."""
    token, events = await fat_ledger(store)
    auth = {"Authorization": f"Bearer {token}"}
    rig = SecondReadWaits(store)
    async with serve_app(rig.app(store)) as served:
        csv = asyncio.create_task(
            served.client.get("/v1/ledger", params={"location": "WEB", "format": "csv"}, headers=auth)
        )
        await asyncio.wait_for(rig.first_read.wait(), 30)
        small = await served.client.get("/v1/counts", params={"limit": "5"}, headers=auth)
        assert small.status == 200, await small.text()
        resp = await asyncio.wait_for(csv, 60)
        assert resp.status == 200
        text = await asyncio.wait_for(resp.text(), 60)
    last_read = len(rig.seen) - 1 - rig.seen[::-1].index("read")
    assert rig.seen.index("small answered") < last_read, rig.seen
    ids = [event_id_hex(e.event_id) for e in events]
    assert sum(text.count(i) for i in ids) == len(ids) and all(i in text for i in ids)


async def test_a_small_request_is_answered_while_a_variance_report_reads_fat_counts(store: HubStore) -> None:
    """The same for the shrinkage report by count (``limit=10000``): it read the ledger 1,000 rows at a time (the
    whole of this location in one read, attrs and all) and built its page in one go. The small request, sent once
    the report's first read is done, is answered before the report; the report's second read waits (at most 10 s)
    for the small answer. Every count is in the report, once."""
    token, events = await fat_ledger(store, Kind.COUNT)
    auth = {"Authorization": f"Bearer {token}"}
    rig = SecondReadWaits(store)
    async with serve_app(rig.app(store)) as served:
        report = asyncio.create_task(
            served.client.get(
                "/v1/reports/variance", params={"location": "WEB", "by": "count", "limit": "10000"}, headers=auth
            )
        )
        await asyncio.wait_for(rig.first_read.wait(), 30)
        small = await served.client.get("/v1/counts", params={"limit": "5"}, headers=auth)
        assert small.status == 200, await small.text()
        resp = await asyncio.wait_for(report, 60)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert rig.answered == ["/v1/counts", "/v1/reports/variance"]  # the small answer did not wait for the report
    assert sorted(r["event_id"] for r in body["rows"]) == sorted(event_id_hex(e.event_id) for e in events)
    assert body["next"] is None
