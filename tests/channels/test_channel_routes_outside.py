"""The channel routes attacked from outside, as a connector or an operator reaches them: a real hub process (or a
hub app served on 127.0.0.1 where its pusher's clock must be moved), raw HTTP, the Square stand-in.

Every id the hub lists among the ``channel_order_refused`` exceptions is dismissed and undismissed by its URL,
whatever it holds (Square's longest adjustment id, a slash, letters beyond ASCII); an id no order of the hub can
have is a 400 saying why, the same on both routes; ``GET /v1/channels`` shows each setting the channel runs with.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from hub.channels.config import KEYS
from hub.channels.http import CHANNELS_KEY, ORDER_ID_MAX_LEN
from hub.channels.runner import open_channel_state
from tests.channels.emulators.square import SquareEmulator
from tests.channels.helpers import square_pos_hub, wait_until
from tests.harness.commands import hub_env
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port

KIND = "channel_order_refused"
SQUARE_ADJUSTMENT_ID_MAX = 100  # Square's InventoryAdjustment.id is at most 100 characters
DISMISS_SAID = re.compile(r"POST (/v1/channels/\S+/dismiss)")


def _call(port: int, method: str, path: str, token: str) -> tuple[int, str]:
    """One request with the path exactly as given (no client normalises it), no body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {token}")
        if method == "POST":
            conn.putheader("Content-Length", "0")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


async def call(port: int, method: str, path: str, token: str) -> tuple[int, str]:
    return await asyncio.to_thread(_call, port, method, path, token)


def order_path(order_id: str, action: str, *, channel: str = "pos") -> str:
    return f"/v1/channels/{channel}/orders/{quote(order_id, safe='')}/{action}"


async def listed(port: int, token: str) -> dict[str, str]:
    """The order ids listed among the exceptions, each with the dismiss path its sentence gives."""
    status, text = await call(port, "GET", f"/v1/exceptions?kind={KIND}", token)
    assert status == 200, text
    out: dict[str, str] = {}
    for row in json.loads(text)["exceptions"]:
        said = DISMISS_SAID.search(row["detail"])
        assert said is not None, row["detail"]
        out[row["data"]["order_id"]] = said.group(1)
    return out


@dataclass(frozen=True)
class PosHub:
    hub: HubProcess
    port: int
    db: Path
    admin: str
    location: str
    square_token: str


@pytest.fixture
async def pos_hub(tmp_path: Path) -> AsyncIterator[PosHub]:
    """A hub process whose config has one Square channel ``pos`` (store S1), and an admin credential."""
    async with SquareEmulator() as square:
        location = square.add_location()
        square.add_variation("SKU-1")
        admin = add_credential(tmp_path / "hub.db", role="admin")
        port = free_port()
        config = tmp_path / "hub.toml"
        config.write_text(
            f'[hub]\ndb = "hub.db"\nport = {port}\n'
            f'[[channel]]\nname = "pos"\nkind = "square"\nurl = "{square.url}"\nsecret_env = "SQUARE_TOKEN"\n'
            f'pool = {{ S1 = "{location}" }}\nunbooked_sale_wait_s = 120\norder_match_window_s = 30\n',
            encoding="utf-8",
        )
        hub = HubProcess(tmp_path / "hub.log", "--config", str(config), env=hub_env(SQUARE_TOKEN=square.token))
        await asyncio.to_thread(hub.start)  # in a thread: the stand-in answers the hub from this loop
        try:
            yield PosHub(hub, port, tmp_path / "hub.db", admin.token, location, square.token)
        finally:
            await asyncio.to_thread(hub.stop)


async def test_every_order_id_the_hub_lists_is_dismissed_and_undismissed_by_its_url(pos_hub: PosHub) -> None:
    """The refused orders the hub stores and lists — a register sale under ``sale:`` and Square's longest
    adjustment id (105 characters), an order id with a slash or letters beyond ASCII (the webhook takes them) —
    are each dismissed and undismissed by their percent-encoded URL, once (again: 409, nothing changed). The routes
    took ids of at most 64 characters: a listed sale of a longer id could never be dismissed (404 "holds no refused
    order"), and stayed two days on the list."""
    port, admin = pos_hub.port, pos_hub.admin
    ids = ["sale:" + "Z" * SQUARE_ADJUSTMENT_ID_MAX, "ORD/2026/7", "Ωrder²", "D1CAFA84CB614476A09D4DCD"]
    at_ms = int(datetime.now(UTC).timestamp() * 1000)
    async with open_channel_state(str(pos_hub.db)) as state:  # stored as the webhook route and the pusher store them
        for order_id in ids:
            await state.refuse_order("pos", order_id, f"Square order {order_id}: why", at_ms,
                                     channel_location=pos_hub.location)  # fmt: skip
    said = await listed(port, admin)
    assert set(said) == set(ids)
    for order_id in ids:
        assert said[order_id] == order_path(order_id, "dismiss").replace("%3A", ":"), "the sentence's URL works"
        status, text = await call(port, "POST", said[order_id], admin)
        assert status == 200, (order_id, text)
        assert json.loads(text)["order"]["order_id"] == order_id
        status, text = await call(port, "POST", order_path(order_id, "dismiss"), admin)
        assert status == 409 and "already dismissed" in text, (order_id, text)
        assert order_id not in await listed(port, admin)

        status, text = await call(port, "POST", order_path(order_id, "undismiss"), admin)
        assert status == 200, (order_id, text)
        assert json.loads(text)["order"]["dismissed_at_ms"] is None
        status, text = await call(port, "POST", order_path(order_id, "undismiss"), admin)
        assert status == 409 and "is not dismissed" in text, (order_id, text)
        assert order_id in await listed(port, admin)
    assert ORDER_ID_MAX_LEN == len("sale:") + SQUARE_ADJUSTMENT_ID_MAX


async def test_an_order_id_no_order_can_have_is_a_400_saying_why_on_both_routes(pos_hub: PosHub) -> None:
    """An id longer than any the hub stores, one holding a control character, or a dot segment (``%2E%2E``, which
    clients remove from a path) names no order the hub can hold: each is a 400 saying what an order id is, the
    same on dismiss and undismiss. They were a 404 "holds no refused order" (and a control character went into
    the sentence as the hub looked it up). A well-formed id the channel does not hold is a 404."""
    port, admin = pos_hub.port, pos_hub.admin
    for action in ("dismiss", "undismiss"):
        for raw, said in (
            (quote("sale:" + "Z" * (SQUARE_ADJUSTMENT_ID_MAX + 1)), f"the limit is {ORDER_ID_MAX_LEN}"),
            ("A" * 2_000, f"the limit is {ORDER_ID_MAX_LEN}"),
            ("ORD%0AX", "is not a channel order id"),
            ("%00", "is not a channel order id"),
            ("%2E%2E", "remove it from a URL path"),
        ):
            status, text = await call(port, "POST", f"/v1/channels/pos/orders/{raw}/{action}", admin)
            assert status == 400, (action, raw[:20], text)
            detail = json.loads(text)["detail"]
            assert detail.startswith("order_id ") and said in detail, (action, raw[:20], detail)
        status, text = await call(port, "POST", order_path("NO-SUCH-ORDER", action), admin)
        assert status == 404 and "holds no refused order" in text, text
        status, text = await call(port, "POST", order_path("A" * 2_000, action, channel="nope"), admin)
        assert status == 404 and "there is no channel named 'nope'" in text, text
    assert "ORD\nX" not in pos_hub.hub.log


async def test_a_register_sale_with_squares_longest_adjustment_id_is_listed_dismissed_and_undismissed(
    tmp_path: Path,
) -> None:
    """A sale at a Square register whose order never reaches the hub is listed as ``sale:<adjustment id>``;
    Square's adjustment ids are up to 100 characters, and one that long was listed but refused by both routes.
    End to end: the pusher reads the sale from the Square stand-in, lists it, and an admin dismisses and
    undismisses it over HTTP."""
    async with square_pos_hub(str(tmp_path / "hub.db")) as pos:
        square, location, item, _url, _hook, served, _state = pos
        port = served.port
        _, admin = await served.store.add_agent([], role="admin")
        _, store_token = await served.store.add_agent(["S1"])
        pusher = served.app[CHANNELS_KEY].pushers["pos"]
        pusher.unbooked_sale_wait_ms = 0  # the order is given up on at once (an hour in service)

        async def post_event(event_id: str, kind: str, qty: int) -> None:
            body = {"events": [{"id": event_id, "location": "S1", "sku": "SKU-A", "kind": kind, "qty": qty,
                                "occurred_at": datetime.now(UTC).isoformat()}]}  # fmt: skip
            status, text = await asyncio.to_thread(_post_json, port, "/v1/events", store_token, body)
            assert status == 200 and not json.loads(text)["rejected"], text

        async def shows(quantity: int) -> bool:
            return square.quantity(item, location) == quantity

        await post_event("receive-1", "receive", 9)
        await wait_until(lambda: shows(9), "Square shows 9")
        sale = square.register_sale(item, location, 1, unpaid=True)  # no payment: no order will name it
        sale.id = "Q" * SQUARE_ADJUSTMENT_ID_MAX
        await post_event("sale-1", "sale", -1)  # the level goes out again, less the register's sale
        await wait_until(lambda: shows(7), "Square shows 7: the register's sale taken off")
        sale_id = f"sale:{sale.id}"

        async def is_listed() -> bool:
            return sale_id in await listed(port, admin)

        await wait_until(is_listed, "the register's sale is listed")
        status, text = await call(port, "POST", order_path(sale_id, "dismiss"), admin)
        assert status == 200, text
        assert not await is_listed()
        status, text = await call(port, "POST", order_path(sale_id, "undismiss"), admin)
        assert status == 200, text
        assert await is_listed()


def _post_json(port: int, path: str, token: str, body: Any) -> tuple[int, str]:
    data = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", path, body=data,
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})  # fmt: skip
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


# Where GET /v1/channels shows each key of a [[channel]] table (the name and kind are the status's own fields)
SHOWN_AS = {
    "name": None, "kind": None, "secret_file": "secret", "secret_env": "secret", "shop": "url",
    "webhook_secret_file": "webhook_secret", "webhook_secret_env": "webhook_secret",
}  # fmt: skip


async def test_the_channels_status_shows_every_setting_with_the_value_the_hub_runs_with(pos_hub: PosHub) -> None:
    """``GET /v1/channels`` showed ``reconcile_s`` alone of a channel's settings: an operator could not see which
    ``unbooked_sale_wait_s`` and ``order_match_window_s`` (Square's register sales) a running hub used, nor its
    pool, buffer or time limits. Every key of the table is shown now, set or defaulted, a secret by where it is
    read from."""
    reader = add_credential(pos_hub.db, role="reader").token
    status, text = await call(pos_hub.port, "GET", "/v1/channels", reader)
    assert status == 200, text
    (channel,) = json.loads(text)["channels"]
    settings = channel["settings"]
    shown = {SHOWN_AS.get(k, k) for k in KEYS} - {None}
    assert set(settings) == shown, set(settings) ^ shown
    assert (settings["unbooked_sale_wait_s"], settings["order_match_window_s"]) == (120.0, 30.0)
    assert settings["pool"] == {"S1": pos_hub.location} and settings["secret"] == "environment variable SQUARE_TOKEN"
    assert settings["buffer"] == {"units": 0, "percent": 0.0, "skus": {}}
    assert (settings["timeout_s"], settings["retry_max_s"], settings["coalesce_s"]) == (10.0, 300.0, 0.25)
    assert (settings["batch_max"], settings["reconcile_s"], settings["api_version"]) == (100, 900.0, "2024-11-20")
    assert settings["reason"] is None and settings["webhook_secret"] is None and settings["mapping_csv"] is None
    assert pos_hub.square_token not in text, "never the secret itself"


async def test_one_request_of_many_at_once_on_two_hubs_dismisses_or_undismisses_an_order(
    tmp_path: Path, pg_url: str
) -> None:
    """Two hub processes on one PostgreSQL database, sixteen admins' requests at once shared between them: each
    route read the order, then wrote, so several requests that all found it not dismissed each answered 200 "was
    dismissed by" (and logged it) though one dismissed it (measured: 1 to 6 answers 200 of 16 a round, 14 lines logged for
    4 dismissals). Now exactly one answers 200 and logs, each other 409 saying the order was already dismissed (or
    is not dismissed), rounds of dismissals and undoings alike."""
    async with SquareEmulator() as square:
        location = square.add_location()
        square.add_variation("SKU-1")
        admin = add_credential(pg_url, role="admin").token
        config = tmp_path / "hub.toml"
        config.write_text(
            f'[[channel]]\nname = "pos"\nkind = "square"\nurl = "{square.url}"\nsecret_env = "SQUARE_TOKEN"\n'
            f'pool = {{ S1 = "{location}" }}\n',
            encoding="utf-8",
        )
        hubs = [
            HubProcess(tmp_path / f"hub{i}.log", "--config", str(config), db=pg_url, port=0,
                       env=hub_env(SQUARE_TOKEN=square.token))
            for i in range(2)
        ]  # fmt: skip
        try:
            for hub in hubs:
                await asyncio.to_thread(hub.start)
            async with open_channel_state(pg_url) as state:
                await state.refuse_order("pos", "ORD-1", "Square order ORD-1: why", int(time.time() * 1000),
                                         channel_location=location)  # fmt: skip
            for _ in range(3):
                for action, refused in (("dismiss", "already dismissed"), ("undismiss", "is not dismissed")):
                    answers = await asyncio.gather(*(
                        call(hubs[i % 2].port, "POST", order_path("ORD-1", action), admin) for i in range(16)
                    ))  # fmt: skip
                    assert sorted(s for s, _ in answers) == [200] + [409] * 15, (action, answers)
                    assert all(refused in text for s, text in answers if s == 409), answers
        finally:
            for hub in hubs:
                await asyncio.to_thread(hub.close)
    logs = "".join(hub.log for hub in hubs)
    assert (logs.count("was dismissed by"), logs.count("was undone by")) == (3, 3)
