"""The connectors against a channel API that answers badly: wrong-shape JSON at 200, pages that never end.

A small server on 127.0.0.1 answers each request with the next canned answer
(the last one again once the queue is down to it), so a test says exactly what
the "channel" sends. What is checked is the product promise: an answer that
does not confirm the levels is never taken as a confirmation (the level would
never be sent again), an odd answer is a one-sentence channel error the pusher
backs off from, and listing or reading back ends after a bounded number of
calls however the pages are chained.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub.channels import LevelKey, ShopifyConnector, SquareConnector
from hub.channels.connector import ChannelError, ChannelUnavailable, Confirmed, Target
from hub.channels.shopify import exact_count
from hub.channels.webhook import WebhookConnector
from protocol.retry import PEER_RETRY_AFTER_DEFAULT_S, PEER_RETRY_AFTER_MAX_S, peer_retry_after_s
from tests.channels.helpers import spec_of

SHOP_ITEM = LevelKey("gid://shopify/InventoryItem/1", "gid://shopify/Location/1")
SQUARE_ITEM = LevelKey("V1", "L1")
FRESH = "@request-number@"  # in a canned answer: replaced by the request's number


@dataclass
class Hostile:
    """Answers queued ``(status, body, headers)``; the last one is answered again once it is the only one left."""

    url: str = ""
    answers: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)

    def answer(self, body: str, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.answers.append((status, body, headers or {}))

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(json.loads(await request.read()))
        status, body, headers = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        body = body.replace(FRESH, str(len(self.requests)))  # a cursor never given before
        return web.Response(status=status, text=body, content_type="application/json", headers=headers)


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    server = Hostile()
    app = web.Application()
    app.router.add_post("/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    server.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trust_env=False) as s:
        yield s


def shopify(hostile: Hostile, session: aiohttp.ClientSession) -> ShopifyConnector:
    spec = spec_of({"name": "web", "kind": "shopify", "url": hostile.url + "/admin/api/2026-01/graphql.json",
                    "pool": {"S1": SHOP_ITEM.location_id}, "timeout_s": 5}, "shpat-token")  # fmt: skip
    return ShopifyConnector(spec, session)


def square(hostile: Hostile, session: aiohttp.ClientSession) -> SquareConnector:
    spec = spec_of(
        {"name": "pos", "kind": "square", "url": hostile.url, "pool": {"S1": "L1"}, "timeout_s": 5}, "sq-token"
    )
    return SquareConnector(spec, session)


@pytest.mark.parametrize(
    "body",
    [
        '{"data": {"inventorySetQuantities": null}}',  # the field failed, and no errors came with it
        '{"data": {}}',
        '{"data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": null}}}',  # no userErrors at all
        '{"data": {"inventorySetQuantities": {"userErrors": "none"}}}',
        '{"data": {"inventorySetQuantities": {"userErrors": ["CHANGE_FROM_QUANTITY_STALE"]}}}',
    ],
)
async def test_a_shopify_mutation_answer_without_its_user_errors_is_not_a_confirmation(
    hostile: Hostile, session: aiohttp.ClientSession, body: str
) -> None:
    hostile.answer(body)
    with pytest.raises(ChannelUnavailable, match="without its userErrors list"):
        await shopify(hostile, session).push({SHOP_ITEM: Target(5, 0, 1)}, "web:0")


async def test_a_shopify_error_whose_extensions_are_not_an_object_is_a_channel_error(
    hostile: Hostile, session: aiohttp.ClientSession
) -> None:
    hostile.answer('{"errors": [{"message": "Internal error", "extensions": "INTERNAL"}, "oops"]}')
    with pytest.raises(ChannelError, match="Internal error"):
        await shopify(hostile, session).push({SHOP_ITEM: Target(5, 0, 1)}, "web:0")


@pytest.mark.parametrize("body", ["", "[]", "null", "<html><body>OK</body></html>"])
async def test_a_square_2xx_that_is_not_a_json_object_is_not_a_confirmation(
    hostile: Hostile, session: aiohttp.ClientSession, body: str
) -> None:
    hostile.answer(body)
    with pytest.raises(ChannelUnavailable, match="no JSON object"):
        await square(hostile, session).push({SQUARE_ITEM: Target(5, 0, 1)}, "pos:0")


@pytest.mark.parametrize("quantity", ["1e999", "Infinity", "-inf", "NaN", "many"])
async def test_a_square_count_that_is_not_a_finite_number_is_a_channel_error(
    hostile: Hostile, session: aiohttp.ClientSession, quantity: str
) -> None:
    count = {"catalog_object_id": "V1", "location_id": "L1", "state": "IN_STOCK", "quantity": quantity}
    hostile.answer(json.dumps({"counts": [count]}))
    with pytest.raises(ChannelUnavailable, match="not a number"):
        await square(hostile, session).read_levels([SQUARE_ITEM])


def variants_page(cursor: Any, *, more: bool = True, item: str = "gid://shopify/InventoryItem/1") -> str:
    node = {
        "id": "gid://shopify/ProductVariant/1",
        "sku": "A",
        "barcode": "",
        "title": "A",
        "inventoryItem": {"id": item},
    }
    page = {"nodes": [node], "pageInfo": {"hasNextPage": more, "endCursor": cursor}}
    return json.dumps({"data": {"productVariants": page}})


@pytest.mark.parametrize("cursors", [["same"], ["a", "b", "a"], [None]])
async def test_shopify_variant_pages_that_loop_end_the_listing_at_once(
    hostile: Hostile, session: aiohttp.ClientSession, cursors: list[str | None]
) -> None:
    for c in cursors:
        hostile.answer(variants_page(c))
    with pytest.raises(ChannelUnavailable, match="variant pages of channel web"):
        await shopify(hostile, session).listing()
    assert len(hostile.requests) <= len(cursors) + 1, f"{len(hostile.requests)} pages were asked for"


async def test_shopify_variant_pages_with_ever_fresh_cursors_end_the_listing_after_a_few_requests(
    hostile: Hostile, session: aiohttp.ClientSession
) -> None:
    hostile.answer(variants_page(f"cursor-{FRESH}"))  # the same variant again and again, under a new cursor
    with pytest.raises(ChannelUnavailable, match="variant pages of channel web keep giving new cursors") as err:
        await shopify(hostile, session).listing()
    assert len(hostile.requests) <= 5, f"{len(hostile.requests)} pages were asked for"
    assert "reading stopped there" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("value", "count"),
    [({"count": 5, "precision": "EXACT"}, 5), ({"count": 0, "precision": "EXACT"}, 0),
     ({"count": 10_000, "precision": "AT_LEAST"}, None), ({"count": 5}, None), (None, None), ("5", None),
     ({"count": "5", "precision": "EXACT"}, None), ({"count": True, "precision": "EXACT"}, None),
     ({"count": -1, "precision": "EXACT"}, None), ({"count": 5.5, "precision": "EXACT"}, None)],
)  # fmt: skip
def test_only_an_exact_variant_count_bounds_a_listing(value: Any, count: int | None) -> None:
    assert exact_count(value) == count


async def test_a_variant_count_that_is_only_a_floor_does_not_stop_a_listing(
    hostile: Hostile, session: aiohttp.ClientSession
) -> None:
    """AT_LEAST 1 says nothing of how many pages follow: 12 pages of new variants are read to their end."""
    pages = 12
    for i in range(pages):
        node = {"id": f"gid://shopify/ProductVariant/{i}", "sku": f"S{i}", "inventoryItem": {"id": f"I{i}"}}
        page: dict[str, Any] = {"productVariants": {"nodes": [node], "pageInfo": {"hasNextPage": i < pages - 1,
                                                                                  "endCursor": f"c{i}"}}}  # fmt: skip
        if i == 0:
            page["productVariantsCount"] = {"count": 1, "precision": "AT_LEAST"}
        hostile.answer(json.dumps({"data": page}))
    entries = await shopify(hostile, session).listing()
    assert [e.sku for e in entries] == [f"S{i}" for i in range(pages)]
    assert "productVariantsCount" in hostile.requests[0]["query"]  # asked with the first page only
    assert all("productVariantsCount" not in r["query"] for r in hostile.requests[1:])


async def test_shopify_variant_pages_of_odd_shapes_are_a_channel_error_or_skipped(
    hostile: Hostile, session: aiohttp.ClientSession
) -> None:
    odd = {"data": {"productVariants": {"nodes": ["x", {"inventoryItem": "y"}], "pageInfo": {"hasNextPage": True,
                                                                                            "endCursor": "c1"}}}}  # fmt: skip
    hostile.answer(json.dumps(odd))
    hostile.answer(variants_page(None, more=False, item="gid://shopify/InventoryItem/2"))
    entries = await shopify(hostile, session).listing()
    assert [e.item_id for e in entries] == ["gid://shopify/InventoryItem/2"]
    hostile.answers.clear()
    hostile.answer(json.dumps({"data": {"productVariants": ["not", "a", "page"]}}))
    with pytest.raises(ChannelUnavailable, match="without nodes"):
        await shopify(hostile, session).listing()


def catalog_page(cursor: Any) -> str:
    obj = {"type": "ITEM_VARIATION", "id": "V1", "item_variation_data": {"sku": "A", "upc": ""}}
    return json.dumps({"objects": [obj, {"type": "ITEM_VARIATION", "id": "V2", "item_variation_data": "?"}],
                       "cursor": cursor})  # fmt: skip


@pytest.mark.parametrize("cursors", [["same"], ["a", "b", "a"], [17]])
async def test_square_catalog_pages_that_loop_end_the_listing_at_once(
    hostile: Hostile, session: aiohttp.ClientSession, cursors: list[Any]
) -> None:
    for c in cursors:
        hostile.answer(catalog_page(c))
    with pytest.raises(ChannelUnavailable, match="catalog pages of channel pos"):
        await square(hostile, session).listing()
    assert len(hostile.requests) <= len(cursors) + 1, f"{len(hostile.requests)} pages were asked for"


async def test_square_catalog_pages_with_ever_fresh_cursors_end_the_listing_after_a_few_requests(
    hostile: Hostile, session: aiohttp.ClientSession
) -> None:
    hostile.answer(json.dumps({"objects": [], "cursor": f"c-{FRESH}"}))  # empty pages, each with a new cursor
    with pytest.raises(ChannelUnavailable, match="catalog pages of channel pos keep giving new cursors"):
        await square(hostile, session).listing()
    assert len(hostile.requests) <= 5, f"{len(hostile.requests)} pages were asked for"


async def test_square_count_pages_with_ever_fresh_cursors_end_the_read_after_a_few_requests(
    hostile: Hostile, session: aiohttp.ClientSession
) -> None:
    count = {"catalog_object_id": "V1", "location_id": "L1", "state": "IN_STOCK", "quantity": "3"}
    hostile.answer(json.dumps({"counts": [count], "cursor": f"c-{FRESH}"}))
    with pytest.raises(ChannelUnavailable, match="pages of counts of channel pos keep giving new cursors"):
        await square(hostile, session).read_levels([SQUARE_ITEM])
    assert len(hostile.requests) <= 5, f"{len(hostile.requests)} pages were asked for"


async def test_square_count_pages_that_loop_end_the_read_at_once(
    hostile: Hostile, session: aiohttp.ClientSession
) -> None:
    count = {"catalog_object_id": "V1", "location_id": "L1", "state": "IN_STOCK", "quantity": "3"}
    hostile.answer(json.dumps({"counts": [count], "cursor": "again"}))
    with pytest.raises(ChannelUnavailable, match="pages of counts of channel pos loop"):
        await square(hostile, session).read_levels([SQUARE_ITEM])
    assert len(hostile.requests) == 2


SQUARE_SHOWS_4 = json.dumps(
    {"counts": [{"catalog_object_id": "V1", "location_id": "L1", "state": "IN_STOCK", "quantity": "4",
                 "calculated_at": "2026-12-06T10:00:00.000Z"}]}
)  # fmt: skip


def square_change(kind: str, quantity: str, occurred: str, reference: str = "", **more: Any) -> dict[str, Any]:
    body = {"id": f"C{occurred}", "catalog_object_id": "V1", "location_id": "L1", "quantity": quantity,
            "occurred_at": occurred, "created_at": occurred, "reference_id": reference, **more}  # fmt: skip
    return {"type": kind, "physical_count" if kind == "PHYSICAL_COUNT" else "adjustment": body}


SALE = {"from_state": "IN_STOCK", "to_state": "SOLD"}


@pytest.mark.parametrize(
    ("changes", "requests"),
    [
        (['{"changes": "none"}'], 2),
        (['{"changes": [{"type": "ADJUSTMENT"}]}'], 2),
        ([json.dumps({"changes": [square_change("ADJUSTMENT", "NaN", "2026-12-06T09:59:59.000Z", **SALE)]})], 2),
        (['{"changes": [], "cursor": "again"}'], 3),  # pages that loop: the same cursor back
        (['{"changes": [], "cursor": "fresh-@request-number@"}'], 1 + 3),  # empty pages under ever fresh cursors
        (['{"changes": [], "cursor": 7}'], 2),
        # a record that adds up to Square's count but does not hold the push's own count
        ([json.dumps({"changes": [square_change("ADJUSTMENT", "1", "2026-12-06T09:59:59.000Z", **SALE)]})], 2),
    ],
    ids=["not-a-list", "no-body", "not-a-number", "loop", "fresh-cursors", "cursor-not-text", "not-the-push"],
)
async def test_a_square_record_of_changes_that_cannot_be_read_leaves_the_level_kept(
    hostile: Hostile, session: aiohttp.ClientSession, changes: list[str], requests: int
) -> None:
    """Square answered the push with another count than pushed: its record of changes decides whether a sale
    moved the push or a count of its own was kept. A record that cannot be read, or does not say, decides
    nothing: the level is kept (pushed again), never confirmed at Square's number, after a bounded read."""
    hostile.answer(SQUARE_SHOWS_4)
    for body in changes:
        hostile.answer(body)
    confirmed = await square(hostile, session).push({SQUARE_ITEM: Target(5, 4, 1_764_000_000_000)}, "pos:0")
    assert isinstance(confirmed, Confirmed) and dict(confirmed) == {} and set(confirmed.kept) == {SQUARE_ITEM}
    assert len(hostile.requests) == requests


def throttled(maximum: Any, available: Any, rate: Any) -> str:
    status = {"maximumAvailable": maximum, "currentlyAvailable": available, "restoreRate": rate}
    extensions = {"cost": {"requestedQueryCost": 10, "throttleStatus": status}}
    return json.dumps({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                       "extensions": extensions})  # fmt: skip


SET_OK = '{"data": {"inventorySetQuantities": {"inventoryAdjustmentGroup": null, "userErrors": []}}}'


@pytest.mark.parametrize(
    ("maximum", "available", "rate"),
    [(1000, -1e12, 100), (1000, 0, 1e-9), (1e308, 0, 1e-300), ("-Infinity", 0, 100), (1000, "NaN", 0)],
)
async def test_an_odd_shopify_throttle_status_never_waits_hours(
    hostile: Hostile, session: aiohttp.ClientSession, maximum: Any, available: Any, rate: Any
) -> None:
    hostile.answer(throttled(maximum, available, rate).replace('"-Infinity"', "-Infinity").replace('"NaN"', "NaN"))
    hostile.answer(SET_OK)
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    connector = ShopifyConnector(shopify(hostile, session).spec, session, sleep=sleep)
    confirmed = await connector.push({SHOP_ITEM: Target(5, 0, 1)}, "web:0")
    assert confirmed == {SHOP_ITEM: 5}
    assert all(0 <= s <= 60 for s in slept), f"asked to wait {slept} s"
    assert connector.throttle is None or 0 <= connector.throttle.available <= connector.throttle.maximum


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), ("2.5", 2.5), ("-5", None), ("NaN", None), ("inf", None), ("soon", None), ("Mon, 99 Foo", None)],
)
def test_retry_after_reads_delay_seconds(header: str, seconds: float | None) -> None:
    assert peer_retry_after_s(header) == (PEER_RETRY_AFTER_DEFAULT_S if seconds is None else seconds)


def test_retry_after_reads_an_http_date() -> None:
    ahead = email.utils.formatdate(time.time() + 120, usegmt=True)  # "Sun, 06 Dec 2026 03:00:00 GMT"
    assert 115 <= peer_retry_after_s(ahead) <= 121
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    assert peer_retry_after_s(past) == 0.0  # the date has passed: ask again (after the pusher's own backoff)
    assert peer_retry_after_s(email.utils.formatdate(time.time() + 86_400, usegmt=True)) == PEER_RETRY_AFTER_MAX_S


async def test_a_shopify_503_with_an_http_date_retry_after_carries_it(
    hostile: Hostile, session: aiohttp.ClientSession
) -> None:
    hostile.answer("{}", status=503, headers={"Retry-After": email.utils.formatdate(time.time() + 90, usegmt=True)})
    with pytest.raises(ChannelUnavailable) as info:
        await shopify(hostile, session).push({SHOP_ITEM: Target(5, 0, 1)}, "web:0")
    assert info.value.retry_after_s is not None and 85 <= info.value.retry_after_s <= 91


async def test_a_square_503_with_retry_after_carries_it(hostile: Hostile, session: aiohttp.ClientSession) -> None:
    hostile.answer(
        '{"errors": [{"category": "API_ERROR", "code": "SERVICE_UNAVAILABLE"}]}', 503, {"Retry-After": "120"}
    )
    with pytest.raises(ChannelUnavailable) as info:
        await square(hostile, session).push({SQUARE_ITEM: Target(5, 0, 1)}, "pos:0")
    assert info.value.retry_after_s == 120.0


@pytest.mark.parametrize(("header", "wait_s"), [("120", 120.0), ("86400", PEER_RETRY_AFTER_MAX_S), ("soon", None)])
async def test_a_receivers_503_with_retry_after_carries_it(
    hostile: Hostile, session: aiohttp.ClientSession, header: str, wait_s: float | None
) -> None:
    spec = spec_of({"name": "feed", "kind": "webhook", "url": hostile.url + "/levels", "pool": {"S1": "web"},
                    "timeout_s": 5}, "receiver-shared-secret-0123456789")  # fmt: skip
    hostile.answer("down for maintenance", 503, {"Retry-After": header})
    with pytest.raises(ChannelUnavailable) as info:
        await WebhookConnector(spec, session).push({LevelKey("A", "web"): Target(5, None, 1)}, "feed:0")
    assert info.value.retry_after_s == wait_s


@pytest.mark.parametrize("objects", ['"objects"', "5", "true", '{"type": "ITEM_VARIATION"}'])
async def test_a_square_catalog_page_whose_objects_are_not_a_list_is_not_an_empty_catalog(
    hostile: Hostile, session: aiohttp.ClientSession, objects: str
) -> None:
    hostile.answer('{"objects": %s}' % objects)  # noqa: UP031
    with pytest.raises(ChannelUnavailable, match="is not a JSON array"):
        await square(hostile, session).listing()


@pytest.mark.parametrize("counts", ["5", '"x"', '{"quantity": "3"}'])
async def test_square_counts_that_are_not_a_list_are_a_channel_error(
    hostile: Hostile, session: aiohttp.ClientSession, counts: str
) -> None:
    hostile.answer('{"counts": %s}' % counts)  # noqa: UP031
    with pytest.raises(ChannelUnavailable, match="is not a JSON array"):
        await square(hostile, session).read_levels([SQUARE_ITEM])


async def test_shopify_nodes_that_are_not_a_list_are_a_channel_error(
    hostile: Hostile, session: aiohttp.ClientSession
) -> None:
    hostile.answer('{"data": {"nodes": 5}}')
    with pytest.raises(ChannelUnavailable, match="is not a JSON array"):
        await shopify(hostile, session).read_levels([SHOP_ITEM])
    hostile.answers.clear()
    node = {"id": SHOP_ITEM.item_id, "inventoryLevel": {"quantities": 7}}
    hostile.answer(json.dumps({"data": {"nodes": [node]}}))
    assert await shopify(hostile, session).read_levels([SHOP_ITEM]) == {SHOP_ITEM: None}


async def test_a_shopify_user_error_whose_field_is_not_a_list_refuses_the_request_in_one_sentence(
    hostile: Hostile, session: aiohttp.ClientSession
) -> None:
    error = {
        "code": "INVALID_INVENTORY_ITEM",
        "field": 3,
        "message": "The specified inventory item could not be found.",
    }
    hostile.answer(json.dumps({"data": {"inventorySetQuantities": {"userErrors": [error]}}}))
    with pytest.raises(ChannelError, match="INVALID_INVENTORY_ITEM"):
        await shopify(hostile, session).push({SHOP_ITEM: Target(5, 0, 1)}, "web:0")


async def test_a_shopify_internal_server_error_answered_200_is_unavailable_not_refused(
    hostile: Hostile, session: aiohttp.ClientSession
) -> None:
    error = {"message": "Internal error. Looks like something went wrong on our end.",
             "extensions": {"code": "INTERNAL_SERVER_ERROR", "requestId": "abc"}}  # fmt: skip
    hostile.answer(json.dumps({"errors": [error]}))
    with pytest.raises(ChannelError) as info:
        await shopify(hostile, session).push({SHOP_ITEM: Target(5, 0, 1)}, "web:0")
    assert type(info.value) is ChannelUnavailable, "a refusal asks a person to act; this is Shopify's own failure"
    assert "INTERNAL_SERVER_ERROR" in str(info.value)
