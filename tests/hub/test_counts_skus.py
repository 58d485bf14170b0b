"""``GET /v1/counts`` of several SKUs (``sku`` repeated, API 1.10), over real HTTP, on both backends.

The answer is the one the unfiltered route gives, keeping the asked SKUs' rows: same shape, same order, paged the
same way, with the ETag of its bytes. More than ``COUNTS_SKUS_MAX`` parameters, or a SKU no SKU can be, is a 400.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from multidict import MultiDict

from hub import HubStore, open_store
from hub.dashboard.api import COUNTS_SKUS_MAX
from tests.harness.pg import fresh_schema
from tests.hub.test_paging import NOW_MS, agent, ev, walk


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[HubStore]:
    if backend == "sqlite":
        async with open_store(tmp_path / "hub.db") as s:
            yield s
        return
    async with fresh_schema() as url, open_store(url) as s:
        yield s


async def seeded(store: HubStore) -> tuple[str, list[tuple[str, str]]]:
    """40 SKUs at each of three locations: the token of an agent of theirs, and every (location, sku)."""
    a, token = await agent(store, ["S001", "S002", "S003"])
    events = [ev(a, i + 1, NOW_MS, location=f"S00{1 + i % 3}", sku=f"SKU-{i // 3:03d}") for i in range(3 * 40)]
    assert not (await store.ingest(a, 1, events)).rejected
    return token, sorted((e.location, e.sku) for e in events)


def query(skus: list[str], **more: str) -> MultiDict[str]:
    return MultiDict([*(("sku", s) for s in skus), *more.items()])


async def test_several_skus_answer_their_counts_in_the_routes_order(
    store: HubStore, client: TestClient[Any, Any]
) -> None:
    token, keys = await seeded(store)
    auth = {"Authorization": f"Bearer {token}"}
    asked = ["SKU-031", "SKU-002", "SKU-017", "SKU-NONE", "SKU-002"]  # one unknown, one twice
    resp = await client.get("/v1/counts", params=query(asked, location="S002"), headers=auth)
    body = await resp.json()
    assert resp.status == 200, body
    assert [(r["location"], r["sku"]) for r in body["counts"]] == [
        ("S002", "SKU-002"), ("S002", "SKU-017"), ("S002", "SKU-031")
    ]  # fmt: skip
    assert body["next"] is None
    whole = await (await client.get("/v1/counts", params={"location": "S002"}, headers=auth)).json()
    assert body["counts"] == [r for r in whole["counts"] if r["sku"] in asked]  # the same rows, every field
    # no location: every location's, paged with the route's cursors
    rows = await walk(client, token, "/v1/counts", "counts", limit=2, sku="SKU-005")
    assert [(r["location"], r["sku"]) for r in rows] == [k for k in keys if k[1] == "SKU-005"]
    paged: list[dict[str, Any]] = []
    params = query(["SKU-005", "SKU-039", "SKU-000"], limit="4")
    for _ in range(10):
        page = await (await client.get("/v1/counts", params=params, headers=auth)).json()
        paged += page["counts"]
        if page["next"] is None:
            break
        params = query(["SKU-005", "SKU-039", "SKU-000"], limit="4", cursor=page["next"])
    assert [(r["location"], r["sku"]) for r in paged] == [k for k in keys if k[1] in ("SKU-000", "SKU-005", "SKU-039")]


async def test_several_skus_have_an_etag_of_their_own(store: HubStore, client: TestClient[Any, Any]) -> None:
    token, _ = await seeded(store)
    auth = {"Authorization": f"Bearer {token}"}
    two = await client.get("/v1/counts", params=query(["SKU-001", "SKU-002"]), headers=auth)
    one = await client.get("/v1/counts", params=query(["SKU-001"]), headers=auth)
    assert two.status == one.status == 200
    assert two.headers["ETag"] != one.headers["ETag"]
    assert two.headers["Cache-Control"] == "private, no-cache"
    again = await client.get(
        "/v1/counts", params=query(["SKU-001", "SKU-002"]), headers=auth | {"If-None-Match": two.headers["ETag"]}
    )
    assert again.status == 304
    csv = await client.get("/v1/counts", params=query(["SKU-001", "SKU-002"]), headers=auth | {"Accept": "text/csv"})
    assert csv.status == 200
    lines = (await csv.text()).splitlines()
    assert len(lines) == 1 + 6 and all(",SKU-001," in line or ",SKU-002," in line for line in lines[1:])


async def test_more_skus_than_the_bound_or_a_bad_one_is_a_400(store: HubStore, client: TestClient[Any, Any]) -> None:
    token, _ = await seeded(store)
    auth = {"Authorization": f"Bearer {token}"}
    most = [f"SKU-{i:03d}" for i in range(COUNTS_SKUS_MAX)]
    resp = await client.get("/v1/counts", params=query(most, location="S001"), headers=auth)
    assert resp.status == 200 and len((await resp.json())["counts"]) == 40
    resp = await client.get("/v1/counts", params=query([*most, "SKU-X"]), headers=auth)
    detail = (await resp.json())["detail"]
    assert resp.status == 400
    assert detail == f"at most {COUNTS_SKUS_MAX} sku parameters are taken in one request, got {COUNTS_SKUS_MAX + 1}"
    resp = await client.get("/v1/counts", params=query(["SKU-001", ""]), headers=auth)
    assert resp.status == 400 and "sku" in (await resp.json())["detail"]
    twice = [("sku", "SKU-001"), ("location", "S001"), ("location", "S002")]
    resp = await client.get("/v1/counts", params=twice, headers=auth)
    assert resp.status == 400 and "location is given more than once" in (await resp.json())["detail"]
