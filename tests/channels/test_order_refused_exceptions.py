"""A Square order whose webhook the hub refused for good is on the exceptions list until it is booked (both backends).

An order refused for good (422: a line of an item the hub has not mapped, a location not in the pool) is a sale
the hub never booked: Square shows what the shelf holds, the hub one unit more, and every other channel sells that
unit. The refusal was stored (``channel_orders_refused``, for the pusher) and logged, and nobody at head office saw
it. Now each is a ``channel_order_refused`` exception saying which channel, which order, when and why, and what to
do; Square's retry booking the order takes it off the list.

Real parts: a hub app serving over 127.0.0.1 on a SQLite file or a PostgreSQL schema, its Square channel's pusher
loading the mapping from the Square emulator, which signs and posts the webhook as Square does.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.channels.helpers import square_pos_hub
from tests.harness.pg import fresh_schema

KIND = "channel_order_refused"


@pytest.fixture
async def hub_db(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    async with (
        fresh_schema("ordref") if backend == "postgres" else contextlib.nullcontext(str(tmp_path / "hub.db")) as db
    ):
        yield db


async def test_a_refused_square_order_is_listed_until_squares_retry_books_it(hub_db: str) -> None:
    async with square_pos_hub(hub_db) as pos_hub, aiohttp.ClientSession(trust_env=False) as session:
        square, s1, a, url, hook, served, state = pos_hub
        _, reader = await served.store.add_agent([], role="reader")
        _, admin = await served.store.add_agent([], role="admin")

        async def get(path: str, token: str = reader) -> tuple[int, str]:
            async with session.get(url + path, headers={"Authorization": f"Bearer {token}"},
                                   timeout=aiohttp.ClientTimeout(total=20)) as resp:  # fmt: skip
                return resp.status, await resp.text()

        async def listed(query: str = "") -> list[dict[str, Any]]:
            status, text = await get(f"/v1/exceptions{query}")
            assert status == 200, text
            return [r for r in json.loads(text)["exceptions"] if r["kind"] == KIND]

        async def gauge() -> float | None:
            status, text = await get("/metrics")
            assert status == 200, text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "shelfsync_exceptions_listed" and sample.labels.get("kind") == KIND:
                        return sample.value
            return None

        unmapped = square.add_variation("SKU-NEW")  # added at Square after the hub loaded its mapping
        order = square.sell_at_register(s1, [(a, 1), (unmapped, 1)])
        notice = square.notification("order.updated", order["id"])
        before_ms = int(datetime.now(UTC).timestamp() * 1000)
        status, answer = await square.deliver(hook, notice)
        assert status == 422, answer  # refused whole: SKU-NEW is not mapped

        (row,) = await listed()
        at = datetime.fromtimestamp(row["at_ms"] / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        assert row["at_ms"] >= before_ms and row["location"] == "S1" and row["sku"] is None, row
        said = f"Square order {order['id']} at S1 on channel pos was refused at {at}: "
        assert row["detail"].startswith(said), row
        assert f"(item variation {unmapped}) is not in channel pos's SKU mapping" in row["detail"], row
        assert row["detail"].endswith(
            "; the hub never booked its sale, so the hub's level, and what the channels show, is a unit high for "
            "each unit sold: fix that and Square's next retry books the order, or book the sale by hand and "
            f"dismiss this entry (POST /v1/channels/pos/orders/{order['id']}/dismiss; it leaves the list by itself "
            "when the order is booked, or two days after its refusal)."
        ), row
        assert row["data"] == {
            "channel": "pos", "order_id": order["id"], "channel_location": s1, "reason": row["data"]["reason"]
        }, row  # fmt: skip
        assert "SKU-NEW" not in row["data"]["reason"] and unmapped in row["data"]["reason"], row
        # its kind, a page of one and the page after it, the CSV, /metrics
        assert await listed(f"?kind={KIND}") == [row]
        status, text = await get(f"/v1/exceptions?kind={KIND}&limit=1")
        page = json.loads(text)
        assert status == 200 and [r["detail"] for r in page["exceptions"]] == [row["detail"]], text
        assert (
            page.get("next") is None
            or json.loads((await get(f"/v1/exceptions?kind={KIND}&limit=1&cursor={page['next']}"))[1])["exceptions"]
            == []
        ), page
        assert await listed("?location=S1") == [row]  # the hub location the channel's pool maps its location to
        assert await listed("?location=S2") == []
        status, text = await get(f"/v1/exceptions?kind={KIND}&format=csv")
        assert status == 200, text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["kind"], r["detail"]) for r in rows] == [(KIND, row["detail"])], rows
        assert await gauge() == 1

        # the item mapped at the hub, Square's retry of the same notification books the order
        async with session.post(url + "/v1/channels/pos/mapping/refresh",
                                headers={"Authorization": f"Bearer {admin}"},
                                timeout=aiohttp.ClientTimeout(total=20)) as resp:  # fmt: skip
            assert resp.status == 200, await resp.text()
        status, answer = await square.deliver(hook, notice)
        assert status == 200 and answer["status"] == "applied", answer
        assert await listed() == []
        assert await gauge() is None
        assert await state.orders_refused(["pos"], [order["id"]]) == set()


async def test_a_refused_square_order_booked_by_hand_is_dismissed_by_an_admin_and_stays_left_out(
    hub_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Staff who booked a refused order's sale by hand could not take its entry off the list: it stayed two days,
    and named no hub location, so a store's list never showed it. It names the hub location its Square location
    feeds now, and an admin dismisses it (``POST /v1/channels/{name}/orders/{order_id}/dismiss``): off the list,
    the CSV and the gauge, for every hub, and kept refused, so its register sale is still not taken off the counts
    pushed (the hub's level holds the sale booked by hand); a retry refused again does not list it again."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    async with square_pos_hub(hub_db) as pos_hub, aiohttp.ClientSession(trust_env=False) as session:
        square, s1, a, url, hook, served, state = pos_hub
        _, reader = await served.store.add_agent([], role="reader")
        _, admin = await served.store.add_agent([], role="admin")

        async def call(method: str, path: str, token: str) -> tuple[int, str]:
            async with session.request(method, url + path, headers={"Authorization": f"Bearer {token}"},
                                       timeout=aiohttp.ClientTimeout(total=20)) as resp:  # fmt: skip
                return resp.status, await resp.text()

        async def listed(query: str = "") -> list[dict[str, Any]]:
            status, text = await call("GET", f"/v1/exceptions{query}", reader)
            assert status == 200, text
            return [r for r in json.loads(text)["exceptions"] if r["kind"] == KIND]

        unmapped = square.add_variation("SKU-NEW")  # added at Square after the hub loaded its mapping
        order = square.sell_at_register(s1, [(a, 1), (unmapped, 1)])
        notice = square.notification("order.updated", order["id"])
        status, answer = await square.deliver(hook, notice)
        assert status == 422, answer
        (row,) = await listed("?location=S1")
        assert row["location"] == "S1" and row["data"]["channel_location"] == s1, row
        assert row["detail"].endswith(
            "book the sale by hand and dismiss this entry (POST /v1/channels/pos/orders/"
            f"{order['id']}/dismiss; it leaves the list by itself when the order is booked, or two days after its "
            "refusal)."
        ), row

        dismiss = f"/v1/channels/pos/orders/{order['id']}/dismiss"
        status, text = await call("POST", dismiss, reader)
        assert status == 403, text
        assert (await call("POST", "/v1/channels/pos/orders/NO-SUCH-ORDER/dismiss", admin))[0] == 404
        assert (await call("POST", f"/v1/channels/nope/orders/{order['id']}/dismiss", admin))[0] == 404
        assert await listed() == [row], "a refused call changes nothing"

        status, text = await call("POST", dismiss, admin)
        assert status == 200, text
        answer = json.loads(text)["order"]
        assert (answer["channel"], answer["order_id"], answer["location"]) == ("pos", order["id"], "S1"), answer
        assert answer["dismissed_by"] and answer["dismissed_at_ms"] >= row["at_ms"], answer
        assert await listed() == [] and await listed("?location=S1") == []
        status, text = await call("GET", f"/v1/exceptions?kind={KIND}&format=csv", reader)
        assert status == 200 and list(csv.DictReader(io.StringIO(text))) == [], text
        # still refused for the pusher: the sale booked by hand is in the hub's level, not taken off again
        assert await state.orders_refused(["pos"], [order["id"]]) == {order["id"]}
        status, text = await call("POST", dismiss, admin)
        assert status == 409 and "already dismissed" in text, text

        status, answer = await square.deliver(hook, notice)  # Square's retry, refused again
        assert status == 422, answer
        assert await listed() == [], "dismissed stays dismissed"
    said = [r.getMessage() for r in caplog.records if "dismissed" in r.getMessage()]
    assert said and said[0].startswith(f"channel pos: Square order {order['id']}, refused at "), said


async def test_a_dismissed_square_order_is_not_booked_again_when_squares_retry_could_apply_it(
    hub_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Staff booked a refused order's sale by hand and an admin dismissed it; then the item was mapped and Square's
    retry of the same notification applied the order: its sale was booked a second time (the hub's level two units
    down for one sold). A dismissed order is answered now (200, so Square stops retrying) and not booked, with one
    log line saying who dismissed it and when."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    async with square_pos_hub(hub_db) as pos_hub, aiohttp.ClientSession(trust_env=False) as session:
        square, s1, a, url, hook, served, state = pos_hub
        _, admin = await served.store.add_agent([], role="admin")

        async def call(method: str, path: str) -> tuple[int, str]:
            async with session.request(method, url + path, headers={"Authorization": f"Bearer {admin}"},
                                       timeout=aiohttp.ClientTimeout(total=20)) as resp:  # fmt: skip
                return resp.status, await resp.text()

        unmapped = square.add_variation("SKU-NEW")
        order = square.sell_at_register(s1, [(a, 1), (unmapped, 1)])
        notice = square.notification("order.updated", order["id"])
        status, answer = await square.deliver(hook, notice)
        assert status == 422, answer
        status, text = await call("POST", f"/v1/channels/pos/orders/{order['id']}/dismiss")  # booked by hand
        assert status == 200, text
        dismissed = json.loads(text)["order"]

        status, text = await call("POST", "/v1/channels/pos/mapping/refresh")  # SKU-NEW mapped meanwhile
        assert status == 200, text
        status, answer = await square.deliver(hook, notice)  # Square's retry, which could apply now
        assert status == 200 and answer["status"] == "dismissed", answer
        assert await state.orders_booked(["pos"], [order["id"]]) == set(), "booked a second time"
        status, text = await call("GET", "/v1/ledger?sku=SKU-A")
        assert status == 200 and json.loads(text)["events"] == [], text
        # still dismissed, still refused for the pusher, still off the list
        after = await state.refused_order("pos", order["id"])
        assert after is not None and after.dismissed_by == dismissed["dismissed_by"], after
        status, text = await call("GET", f"/v1/exceptions?kind={KIND}")
        assert status == 200 and json.loads(text)["exceptions"] == [], text
    said = [r.getMessage() for r in caplog.records if "is not booked" in r.getMessage()]
    expected = (
        f"channel pos: Square event order.updated of order {order['id']} came after the order was dismissed by "
        f"{dismissed['dismissed_by']} at {dismissed['dismissed_at']} (its sale booked by hand); it is not booked, "
        "and Square is answered so it stops retrying"
    )
    assert said == [expected], said


async def test_a_dismissal_made_by_mistake_is_undone_and_squares_retry_then_books_the_order(
    hub_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An admin dismissed a refused order whose sale nobody had booked by hand: nothing could undo it, so the fix of
    its cause booked nothing (Square's retry answered "dismissed") and the sale had to be booked by hand after all.
    Now ``POST /v1/channels/{name}/orders/{order_id}/undismiss`` undoes the dismissal (admin only; 409 when it is
    not dismissed): the entry is listed again, and Square's retry, the cause fixed, books the order once."""
    caplog.set_level(logging.INFO, logger="hub.channels")
    async with square_pos_hub(hub_db) as pos_hub, aiohttp.ClientSession(trust_env=False) as session:
        square, s1, a, url, hook, served, state = pos_hub
        _, reader = await served.store.add_agent([], role="reader")
        _, admin = await served.store.add_agent([], role="admin")

        async def call(method: str, path: str, token: str = admin) -> tuple[int, str]:
            async with session.request(method, url + path, headers={"Authorization": f"Bearer {token}"},
                                       timeout=aiohttp.ClientTimeout(total=20)) as resp:  # fmt: skip
                return resp.status, await resp.text()

        async def listed() -> list[dict[str, Any]]:
            status, text = await call("GET", f"/v1/exceptions?kind={KIND}", reader)
            assert status == 200, text
            return json.loads(text)["exceptions"]

        unmapped = square.add_variation("SKU-NEW")
        order = square.sell_at_register(s1, [(a, 1), (unmapped, 1)])
        notice = square.notification("order.updated", order["id"])
        status, answer = await square.deliver(hook, notice)
        assert status == 422, answer
        assert [r["data"]["order_id"] for r in await listed()] == [order["id"]]
        undo = f"/v1/channels/pos/orders/{order['id']}/undismiss"
        status, text = await call("POST", undo)
        assert status == 409 and "is not dismissed" in text, text
        status, text = await call("POST", f"/v1/channels/pos/orders/{order['id']}/dismiss")  # by mistake
        assert status == 200 and await listed() == [], text

        assert (await call("POST", undo, reader))[0] == 403
        assert (await call("POST", "/v1/channels/pos/orders/NO-SUCH-ORDER/undismiss"))[0] == 404
        status, text = await call("POST", undo)
        assert status == 200, text
        answer = json.loads(text)["order"]
        assert (answer["order_id"], answer["dismissed_at_ms"], answer["dismissed_by"]) == (order["id"], None, None)
        assert [r["data"]["order_id"] for r in await listed()] == [order["id"]], "listed again"

        status, text = await call("POST", "/v1/channels/pos/mapping/refresh")  # the cause fixed: SKU-NEW mapped
        assert status == 200, text
        status, answer = await square.deliver(hook, notice)  # Square's retry books it now
        assert status == 200 and answer["status"] == "applied", answer
        assert await state.orders_booked(["pos"], [order["id"]]) == {order["id"]}
        assert await listed() == []
    said = [r.getMessage() for r in caplog.records if "was undone by" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"channel pos: the dismissal of Square order {order['id']} by "), said
