"""The generic ``webhook`` channel against a retailer's receiver on 127.0.0.1 that checks every signature.

The receiver verifies ``X-Shelfsync-Signature`` with ``hub.webhook_spec.verify_signature`` (what the hub's
docs tell a receiver to do), applies each ``Idempotency-Key`` once, and misbehaves on demand.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub.channels import Backoff, ChannelConfigError, ChannelPusher, ChannelSpec, SqliteChannelState, channel_pushers
from hub.channels import pusher as pusher_module
from hub.channels.connector import ChannelRejected
from hub.channels.reconcile import Reconciler
from hub.channels.runner import make_connector
from hub.channels.webhook import IDEMPOTENCY_HEADER, WebhookConnector
from hub.webhook_spec import SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_HEADER, verify_signature
from protocol import Kind
from tests.channels.emulators.base import EmulatorServer, drop
from tests.channels.helpers import Hub, logged, pushed_to_head, spec_of, wait_until

SECRET = "receiver-shared-secret-0123456789"
FAST = Backoff(base_s=0.02, max_s=0.2)


class Receiver(EmulatorServer):
    """What a retailer runs: a signed POST of levels, applied once per idempotency key."""

    def __init__(self, secret: str = SECRET) -> None:
        super().__init__()
        self.secret = secret
        self.levels: dict[tuple[str, str], int] = {}
        self.requests: list[dict[str, Any]] = []  # every request whose signature held: headers and body
        self.applied: set[str] = set()
        self.replays = 0
        self.bad_signatures = 0
        self.refuse: set[str] = set()  # item ids answered 422
        self.script: deque[str] = deque()  # "503", "429", "drop_after", one per request
        self.retry_after = "0"
        self.app.router.add_post("/levels", self._levels)

    @property
    def url(self) -> str:
        return f"{self.base_url}/levels"

    async def _levels(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        h = request.headers
        if not verify_signature(self.secret, h.get(TIMESTAMP_HEADER), h.get(SIGNATURE_HEADER), body):
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        payload = json.loads(body)
        key = h[IDEMPOTENCY_HEADER]
        self.requests.append({"key": key, "webhook": h.get(WEBHOOK_HEADER), **payload})
        fault = self.script.popleft() if self.script else None
        if fault == "503":
            return web.json_response({"error": "down"}, status=503)
        if fault == "429":
            return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": self.retry_after})
        refused = [lv for lv in payload["levels"] if lv["item_id"] in self.refuse]
        if refused:
            return web.json_response(
                {"refused": [{"item_id": lv["item_id"], "location_id": lv["location_id"],
                              "reason": "this item is sold by the piece only"} for lv in refused]},
                status=422,
            )  # fmt: skip
        if key in self.applied:
            self.replays += 1
        else:
            self.applied.add(key)
            for lv in payload["levels"]:
                self.levels[(lv["item_id"], lv["location_id"])] = lv["quantity"]
        if fault == "drop_after":
            return await drop(request)
        return web.json_response({"ok": True})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


def hook_spec(r: Receiver, secret: str = SECRET, **extra: Any) -> ChannelSpec:
    table = {"name": "feed", "kind": "webhook", "url": r.url, "pool": {"S1": "web", "S2": "web", "WH": "wh"},
             "timeout_s": 2, **extra}  # fmt: skip
    return spec_of(table, secret)


@asynccontextmanager
async def pushing(spec: ChannelSpec, hub: Hub, state: SqliteChannelState) -> AsyncIterator[ChannelPusher]:
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        ChannelPusher(spec, hub.store, state, WebhookConnector(spec, session), hub.watch, backoff=FAST) as p,
    ):
        yield p


def holds(r: Receiver, expected: dict[tuple[str, str], int]) -> Any:
    async def check() -> bool:
        return all(r.levels.get(k) == q for k, q in expected.items())

    return check


async def _async(value: bool) -> bool:
    return value


async def test_levels_arrive_signed_with_every_sku_as_its_own_item(
    hub: Hub, state: SqliteChannelState, receiver: Receiver
) -> None:
    await hub.move((Kind.RECEIVE, 5, "S1", "A"), (Kind.RECEIVE, 2, "S2", "A"), (Kind.RECEIVE, 9, "WH", "B"))
    async with pushing(hook_spec(receiver, buffer=1), hub, state) as pusher:
        await wait_until(holds(receiver, {("A", "web"): 6, ("A", "wh"): 0, ("B", "wh"): 8}), "the first levels")
        await hub.move((Kind.SALE, -3, "S1", "A"), (Kind.RECEIVE, 1, "S1", "NEW"))  # a SKU never seen before
        await wait_until(holds(receiver, {("A", "web"): 3, ("NEW", "web"): 0}), "the next levels")
    assert receiver.bad_signatures == 0 and all(r["webhook"] == "feed" for r in receiver.requests)
    last = receiver.requests[-1]
    assert last["channel"] == "feed"
    by_key = {(lv["item_id"], lv["location_id"]): lv for lv in last["levels"]}
    assert by_key[("A", "web")]["previous"] == 6 and by_key[("A", "web")]["occurred_at"].endswith("Z")
    assert pusher.status.mapped >= 3 and pusher.mapping is not None and pusher.mapping.findings == ()


async def test_a_wrong_secret_is_refused_by_the_receiver_and_said_in_one_sentence(
    hub: Hub, state: SqliteChannelState, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    await hub.move((Kind.RECEIVE, 5, "S1", "A"))
    async with pushing(hook_spec(receiver, secret="another-secret-of-16+chars"), hub, state) as pusher:
        await wait_until(lambda: _async(pusher.status.failures >= 2), "two refused attempts")
    assert receiver.levels == {} and receiver.bad_signatures >= 2
    assert "refused the request's signature" in (pusher.status.last_error or "")
    assert "another-secret" not in caplog.text and await state.cursor("feed") == 0


async def test_a_lost_answer_and_a_503_are_retried_with_the_same_key_and_applied_once(
    hub: Hub, state: SqliteChannelState, receiver: Receiver
) -> None:
    await hub.move((Kind.RECEIVE, 5, "S1", "A"))
    async with pushing(hook_spec(receiver), hub, state) as pusher:
        await wait_until(holds(receiver, {("A", "web"): 5}), "the first level")
        before = len(receiver.requests)
        receiver.script.extend(["drop_after", "503"])
        await hub.move((Kind.SALE, -2, "S1", "A"))
        await wait_until(lambda: _async(receiver.replays >= 1), "the retry answered as already applied")
        await wait_until(lambda: _async(pusher.status.failures == 0), "the pusher recovered")
    keys = [r["key"] for r in receiver.requests[before:]]
    assert len(keys) >= 3 and len(set(keys)) == 1, keys
    assert receiver.levels[("A", "web")] == 3


async def test_a_429_is_honoured_and_its_retry_after_shown_in_the_status(
    hub: Hub, state: SqliteChannelState, receiver: Receiver
) -> None:
    receiver.retry_after = "120"
    receiver.script.append("429")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"))
    async with pushing(hook_spec(receiver), hub, state) as pusher:
        await wait_until(lambda: _async(pusher.status.failures == 1), "the 429")
        throttle = pusher.connector.status().throttle
        assert throttle is not None and throttle["retry_after_s"] == 120.0
        assert len(receiver.requests) == 1, "nothing is sent again while Retry-After holds"
        assert pusher.connector.status().connected is True  # the receiver answered: it is reachable


async def test_a_refused_item_is_left_out_and_recorded_and_the_others_go_out(
    hub: Hub, state: SqliteChannelState, receiver: Receiver
) -> None:
    receiver.refuse.add("GIFT")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"), (Kind.RECEIVE, 3, "S1", "GIFT"))
    async with pushing(hook_spec(receiver, pool={"S1": "web"}), hub, state) as pusher:
        await wait_until(holds(receiver, {("A", "web"): 5}), "A goes out without GIFT")
        await wait_until(lambda: _async(pusher.status.refused == 1), "GIFT is recorded as refused")
        assert ("GIFT", "web") not in receiver.levels and pusher.status.failures == 0
    (exc,) = [e for e in await hub.store.exceptions() if e.kind == "channel_refused"]
    assert exc.sku == "GIFT" and "sold by the piece only" in exc.detail and exc.location == "S1"


async def test_a_mapping_csv_names_the_receivers_own_ids(hub: Hub, state: SqliteChannelState, receiver: Receiver,
                                                        tmp_path: Path) -> None:  # fmt: skip
    csv = tmp_path / "map.csv"
    csv.write_text("sku,item_id\nA,item-0001\n", encoding="utf-8")
    await hub.move((Kind.RECEIVE, 5, "S1", "A"), (Kind.RECEIVE, 4, "S1", "B"))
    async with pushing(hook_spec(receiver, pool={"S1": "web"}, mapping_csv=str(csv)), hub, state) as pusher:
        await wait_until(holds(receiver, {("item-0001", "web"): 5}), "A under the receiver's id")
    assert set(receiver.levels) == {("item-0001", "web")}
    assert pusher.mapping is not None and [f.sku for f in pusher.mapping.findings] == ["B"]


async def test_the_runner_pushes_to_a_webhook_channel_and_never_reads_it_back(hub: Hub, receiver: Receiver) -> None:
    spec = hook_spec(receiver, pool={"S1": "web"})
    async with aiohttp.ClientSession() as session:
        assert isinstance(make_connector(spec, session), WebhookConnector)
    await hub.move((Kind.RECEIVE, 4, "S1", "A"))
    async with channel_pushers([spec], hub.store, str(hub.db_path), hub.watch) as pushers:
        await wait_until(holds(receiver, {("A", "web"): 4}), "the level is out")
        pusher = pushers["feed"]
        assert pusher.reconciler is None
        with pytest.raises(ChannelRejected, match="cannot be read back"):
            await Reconciler(pusher).reconcile()


def test_a_webhook_channel_needs_a_secret_long_enough_to_sign_with() -> None:
    with pytest.raises(ChannelConfigError, match="at least 16 characters"):
        spec_of({"name": "feed", "kind": "webhook", "url": "https://shop.example/levels", "pool": {"S1": "web"}},
                "short")  # fmt: skip


async def test_a_mapping_refresh_pushes_every_sku_of_a_store_larger_than_one_page_of_counts(
    hub: Hub, state: SqliteChannelState, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pusher_module, "COUNTS_LIMIT", 2)  # a page of the hub's counts: 100,000 in production
    skus = [f"P{i}" for i in range(5)]
    await hub.move(*[(Kind.RECEIVE, i + 1, "S1", sku) for i, sku in enumerate(skus)])
    expected = {(sku, "web"): i + 1 for i, sku in enumerate(skus)}
    async with pushing(hook_spec(receiver, pool={"S1": "web"}), hub, state) as pusher:
        await wait_until(holds(receiver, expected), "the first levels")
        receiver.levels.clear()  # the receiver lost its levels; the admin asks for a refresh
        mapping = await pusher.refresh_mapping()
        assert sorted(mapping.by_sku()) == skus
        await wait_until(holds(receiver, expected), "every level once more")


async def test_a_refresh_whose_push_failed_before_a_restart_tells_the_receiver_every_level_after_it(
    hub: Hub, state: SqliteChannelState, receiver: Receiver
) -> None:
    await hub.move((Kind.RECEIVE, 5, "S1", "A"), (Kind.RECEIVE, 3, "S1", "B"))
    spec = hook_spec(receiver, pool={"S1": "web"})
    async with pushing(spec, hub, state) as first:
        await wait_until(holds(receiver, {("A", "web"): 5, ("B", "web"): 3}), "the first levels")
        await pushed_to_head(first, hub)
        receiver.levels.clear()  # the receiver lost its levels; the admin asks for a refresh …
        receiver.script.extend(["503"] * 10_000)  # … while the receiver fails every push
        await first.refresh_mapping()
        await wait_until(lambda: _async(first.status.failures >= 2), "the refresh's push fails")
    receiver.script.clear()  # the receiver is back; the hub restarted meanwhile (a webhook is never read back)
    async with pushing(spec, hub, state):
        await wait_until(holds(receiver, {("A", "web"): 5, ("B", "web"): 3}), "every level after the restart", 10.0)
    last = receiver.requests[-1]["levels"]
    assert all(lv["previous"] is None for lv in last), "confirmations from before the refresh are forgotten"


async def test_a_buffer_or_pool_changed_while_the_hub_was_stopped_reaches_the_receiver_at_the_next_start(
    hub: Hub, state: SqliteChannelState, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A level is pushed when a change of the hub's counts moves it; another buffer or pool in the config moves every
    level with no change of a count. Before, the receiver went on showing what the old settings made of each SKU
    until it moved again: S2 taken out of the pool left A at 15 where the pool holds 10, an oversell of 5."""
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 5, "S2", "A"), (Kind.RECEIVE, 8, "S1", "B"))
    async with pushing(hook_spec(receiver, pool={"S1": "web", "S2": "web"}), hub, state) as first:
        await wait_until(holds(receiver, {("A", "web"): 15, ("B", "web"): 8}), "the first levels")
        await pushed_to_head(first, hub)
    async with pushing(hook_spec(receiver, pool={"S1": "web"}), hub, state) as second:
        await wait_until(holds(receiver, {("A", "web"): 10, ("B", "web"): 8}), "S2 left the pool", 10.0)
        await pushed_to_head(second, hub)
    assert logged(caplog, "channel feed: its pool changed since it last ran; loading the mapping again")
    async with pushing(hook_spec(receiver, pool={"S1": "web"}, buffer=3), hub, state) as third:
        await wait_until(holds(receiver, {("A", "web"): 7, ("B", "web"): 5}), "the buffer of 3", 10.0)
        await pushed_to_head(third, hub)
    assert logged(caplog, "channel feed: its buffer changed since it last ran")
    before = len(receiver.requests)
    async with pushing(hook_spec(receiver, pool={"S1": "web"}, buffer=3, timeout_s=5), hub, state) as fourth:
        await hub.move((Kind.SALE, -1, "S1", "A"))
        await wait_until(holds(receiver, {("A", "web"): 6}), "the sale")
        await pushed_to_head(fourth, hub)
    sent = [lv["item_id"] for r in receiver.requests[before:] for lv in r["levels"]]
    assert sent == ["A"], "a setting that changes no level (timeout_s) pushes nothing again"


async def test_a_receiver_moved_to_another_url_is_told_every_level_at_the_next_start(
    hub: Hub, state: SqliteChannelState, receiver: Receiver
) -> None:
    """The channel's url changed while the hub was stopped (a new receiver): it is told every level once, not only
    those of SKUs that move from then on."""
    await hub.move((Kind.RECEIVE, 10, "S1", "A"), (Kind.RECEIVE, 4, "S1", "B"))
    async with pushing(hook_spec(receiver, pool={"S1": "web"}), hub, state) as first:
        await wait_until(holds(receiver, {("A", "web"): 10, ("B", "web"): 4}), "the first levels")
        await pushed_to_head(first, hub)
    async with Receiver() as moved, pushing(hook_spec(moved, pool={"S1": "web"}), hub, state):
        await wait_until(holds(moved, {("A", "web"): 10, ("B", "web"): 4}), "the new receiver has every level", 10.0)
        assert all(lv["previous"] is None for r in moved.requests for lv in r["levels"])


async def test_a_mapping_csv_changed_to_one_that_cannot_be_read_keeps_the_mapping_and_pushes_the_new_buffer(
    hub: Hub, state: SqliteChannelState, receiver: Receiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Settings changed at a start (a buffer, and another mapping CSV saved in a charset it is not read in): the
    mapping loaded before stays in use, as at a refresh asked for, and its levels go out with the new buffer."""
    good, bad = tmp_path / "map.csv", tmp_path / "new-map.csv"
    good.write_text("sku,item_id\nA,item-A\n", encoding="utf-8")
    bad.write_bytes("sku,item_id\nA,pi\u00e8ce-A\n".encode("windows-1252"))  # not UTF-8
    await hub.move((Kind.RECEIVE, 10, "S1", "A"))
    async with pushing(hook_spec(receiver, pool={"S1": "web"}, mapping_csv=str(good)), hub, state) as first:
        await wait_until(holds(receiver, {("item-A", "web"): 10}), "the first level")
        await pushed_to_head(first, hub)
    async with pushing(hook_spec(receiver, pool={"S1": "web"}, mapping_csv=str(bad), buffer=2), hub, state) as p:
        await wait_until(holds(receiver, {("item-A", "web"): 8}), "the new buffer under the mapping loaded before")
        assert p.status.failures == 0
    assert logged(caplog, "the mapping loaded before stays in use, every level of it goes out once")
    assert await state.settings("feed") is not None and "new-map.csv" not in (await state.settings("feed") or "")
