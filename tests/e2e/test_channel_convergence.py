"""The channel promise end to end, seeded and randomized: one true "available" on every channel, no order lost.

A real hub process (SQLite, and PostgreSQL where the test server answers) pushes two channels on 127.0.0.1: the
Shopify stand-in (GraphQL Admin API 2026-01, order webhooks) selling from the warehouse and the store, and the
Square stand-in (2024-11-20, order webhooks read back through the Orders API) selling the store for pickup. A
seeded run mixes, step by step: the store's and the warehouse's receipts, sales and the store's cycle counts
(``POST /v1/events``, as an agent's sync); Shopify orders placed, fulfilled, edited, refunded and cancelled, with
their webhooks delivered late, twice (the same delivery, and the same state under a new webhook id) and out of
order; Square pickup orders placed, changed, picked up and cancelled; the stand-ins failing requests (429 storms,
500/503, slow answers, connections dropped before and after the change was applied, Shopify levels moved behind
the hub's back); Shopify's clock 20 s ahead; and the hub killed with SIGKILL once, mid-run, and started again.

When everything is delivered and each channel reconciled once (``POST /v1/channels/{name}/reconcile``: a level
moved at Shopify while the hub's stays put is found only by reading it back), each channel shows exactly the hub's available for every
mapped SKU and location, the hub holds exactly the reservations the channels' final orders imply (none twice,
none lost), and the warehouse's on hand is exactly its receipts, sales and fulfilled units.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.channels.emulators.shopify import Variant
from tests.channels.emulators.shopify_orders import Delivery, ShopifyOrdersEmulator
from tests.channels.emulators.square_orders import SquareOrdersEmulator
from tests.channels.helpers import wait_until
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json
from tests.harness.pg import fresh_schema, in_ci, unreachable_reason

SEED = int(os.environ.get("SHELFSYNC_CHANNEL_SEED", "20261206"))  # another seed: set it
STEPS = 60
SKUS = ("SKU-A", "SKU-B", "SKU-C")
FAULTS = ("429", "http_500", "http_503", "slow", "drop", "drop_after")
SETTLE_S = 60.0  # bound on the channels converging once the run is over (backoffs are capped at 2 s)


@pytest.fixture(params=["sqlite", "postgresql"])
async def hub_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "hub.db")
        return
    reason = await asyncio.to_thread(unreachable_reason)
    if reason is not None:
        pytest.fail(reason, pytrace=False) if in_ci() else pytest.skip(reason)
    async with fresh_schema("conv") as url:
        yield url


def _post_events(url: str, token: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}/v1/events", data=json.dumps({"events": events}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def _post(url: str, token: str) -> None:
    req = urllib.request.Request(url, data=b"", headers={"Authorization": f"Bearer {token}"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def _counts(url: str, token: str) -> dict[tuple[str, str], dict[str, int]]:
    out = {}
    for sku in SKUS:
        for row in get_json(f"{url}/v1/skus/{sku}/counts", token)["counts"]:
            out[(row["location"], sku)] = {k: int(row[k]) for k in ("on_hand", "reserved", "available")}
    return out


class Run:
    """The seeded run's world: the hub process, both stand-ins, and what the test expects of them."""

    def __init__(self, rng: random.Random, hub: HubProcess, shopify: ShopifyOrdersEmulator,
                 square: SquareOrdersEmulator, token: str) -> None:  # fmt: skip
        self.rng, self.hub, self.shopify, self.square, self.token = rng, hub, shopify, square, token
        self.wh, self.store = shopify.locations
        self.sq_store = next(iter(square.locations))
        self.variants: dict[str, Variant] = {v.sku: v for v in shopify.variants}
        self.variations = {info["sku"]: vid for vid, info in square.variations.items()}
        self.shopify_pending: list[Delivery] = []
        self.square_pending: list[bytes] = []
        self.n = 0
        self.wh_on_hand: Counter[str] = Counter()

    def _event(self, location: str, sku: str, kind: str, qty: int) -> dict[str, Any]:
        self.n += 1
        when = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return {"id": f"mv-{self.n}", "location": location, "sku": sku, "kind": kind, "qty": qty, "occurred_at": when}

    async def store_moves(self) -> None:
        """A handful of movements at the store and the warehouse, sent as one sync (resent until taken)."""
        events = []
        for _ in range(self.rng.randint(1, 4)):
            sku, roll = self.rng.choice(SKUS), self.rng.random()
            location = self.rng.choice(("WH1", "S1"))
            if roll < 0.4:
                events.append(self._event(location, sku, "receive", self.rng.randint(1, 6)))
            elif roll < 0.8:
                events.append(self._event(location, sku, "sale", -self.rng.randint(1, 2)))
            elif location == "S1":
                events.append(self._event(location, sku, "count", self.rng.randint(0, 8)))
        for e in events:
            if e["location"] == "WH1":
                self.wh_on_hand[e["sku"]] += e["qty"]
        if events:
            await self._send(events)

    async def _send(self, events: list[dict[str, Any]]) -> None:
        async def taken() -> bool:
            try:
                answer = await asyncio.to_thread(_post_events, self.hub.url, self.token, events)
            except urllib.error.HTTPError as e:
                if e.code == 503 and e.headers.get("Retry-After"):
                    return False  # the hub restarting is listening but still opening its database
                raise AssertionError(f"the hub refused a sync: {e.code} {e.read()[:300]!r}") from None
            except (urllib.error.URLError, OSError):
                return False  # the hub is down or restarting: the agent would resend
            assert not answer.get("rejected"), answer
            return True

        await wait_until(taken, "the hub takes a store's sync")

    def shopify_order_step(self) -> None:
        """A Shopify order is placed, or one moves on (fulfilled, edited, refunded, cancelled)."""
        s, rng = self.shopify, self.rng
        open_orders = [o for o in s.orders.values() if o["cancelled_at"] is None
                       and any(li["fulfillable_quantity"] for li in o["line_items"])]  # fmt: skip
        roll = rng.random()
        if not open_orders or roll < 0.4:
            lines = [(self.variants[sku], rng.randint(1, 3)) for sku in rng.sample(SKUS, rng.randint(1, 2))]
            order = s.create_order(lines, ship_from=self.wh)
            self.shopify_pending.append(s.order_delivery("orders/create", order["id"]))
            return
        order = rng.choice(open_orders)
        oid = order["id"]
        line = rng.choice([li for li in order["line_items"] if li["fulfillable_quantity"]])
        if roll < 0.6:
            fulfilment = s.fulfil(oid, self.wh, {line["id"]: rng.randint(1, line["fulfillable_quantity"])})
            self.shopify_pending.append(s.delivery("fulfillments/create", fulfilment))
            self.shopify_pending.append(s.order_delivery("orders/updated", oid))
        elif roll < 0.72:
            s.remove_units(oid, line["id"], 1)
            self.shopify_pending.append(s.order_delivery("orders/updated", oid))
        elif roll < 0.84:
            refund = s.refund(oid, [(line["id"], 1, "cancel", self.wh)])
            self.shopify_pending.append(s.delivery("refunds/create", refund))
            self.shopify_pending.append(s.order_delivery("orders/updated", oid))
        elif not any(f["status"] == "success" for f in order["fulfillments"]):
            s.cancel(oid)
            self.shopify_pending.append(s.order_delivery("orders/cancelled", oid))

    def square_order_step(self) -> None:
        q, rng = self.square, self.rng
        open_orders = [o for o in q.orders.values() if o["state"] == "OPEN"]
        roll = rng.random()
        if not open_orders or roll < 0.45:
            lines = [(self.variations[sku], rng.randint(1, 2)) for sku in rng.sample(SKUS, rng.randint(1, 2))]
            order = q.create_order(self.sq_store, lines)
            self.square_pending.append(q.notification("order.created", order["id"]))
            return
        order = rng.choice(open_orders)
        if roll < 0.65:
            q.pick_up(order["id"])
            self.square_pending.append(q.notification("order.fulfillment.updated", order["id"]))
        elif roll < 0.85:
            line = rng.choice(order["line_items"])
            q.set_quantity(order["id"], line["uid"], rng.randint(1, 3))
            self.square_pending.append(q.notification("order.updated", order["id"]))
        else:
            q.cancel(order["id"])
            self.square_pending.append(q.notification("order.updated", order["id"]))

    async def deliver_some(self, everything: bool = False) -> None:
        """Deliver pending webhooks in a random order, some twice; what is not taken (503, hub down) stays."""
        rng = self.rng
        rng.shuffle(self.shopify_pending)
        rng.shuffle(self.square_pending)
        keep_shopify: list[Delivery] = []
        for d in self.shopify_pending:
            if not everything and rng.random() < 0.4:
                keep_shopify.append(d)  # late
                continue
            if not await self._deliver_shopify(d):
                keep_shopify.append(d)
                continue
            if rng.random() < 0.2:
                await self._deliver_shopify(d)  # the same delivery again
            if rng.random() < 0.2:  # the same payload under a new webhook id (another topic of one change)
                await self._deliver_shopify(self.shopify.delivery(d.topic, json.loads(d.body)))
        self.shopify_pending = keep_shopify
        keep_square: list[bytes] = []
        for body in self.square_pending:
            if not everything and rng.random() < 0.4:
                keep_square.append(body)
                continue
            if not await self._deliver_square(body):
                keep_square.append(body)
            elif rng.random() < 0.2:
                await self._deliver_square(body)
        self.square_pending = keep_square

    async def _deliver_shopify(self, d: Delivery) -> bool:
        try:
            status, answer = await self.shopify.deliver(f"{self.hub.url}/v1/channels/web/webhooks", d, timeout_s=15)
        except (TimeoutError, OSError):
            return False
        assert status in (200, 503), (status, answer)
        return status == 200

    async def _deliver_square(self, body: bytes) -> bool:
        url = f"{self.hub.url}/v1/channels/pickup/webhooks"
        try:
            status, answer = await self.square.deliver(url, body, timeout_s=15)
        except (TimeoutError, OSError):
            return False
        assert status in (200, 503), (status, answer)
        return status == 200

    def faults(self) -> None:
        emulator = self.rng.choice((self.shopify, self.square))
        roll = self.rng.random()
        if roll < 0.15:
            emulator.faults.queue(*["429"] * self.rng.randint(3, 8))  # a storm
        elif roll < 0.2 and emulator is self.shopify:
            sku = self.rng.choice(SKUS)
            self.shopify.drift(self.variants[sku].item_id, self.rng.choice((self.wh, self.store)), 99)
        else:
            emulator.faults.queue(self.rng.choice(FAULTS))

    # --- what the run must end with -------------------------------------------------------------

    def expected_reserved(self) -> Counter[tuple[str, str]]:
        reserved: Counter[tuple[str, str]] = Counter()
        for order in self.shopify.orders.values():
            if order["cancelled_at"] is not None:
                continue
            for li in order["line_items"]:
                reserved[("WH1", li["sku"])] += li["fulfillable_quantity"]
        for order in self.square.orders.values():
            if order["state"] == "OPEN":
                for li in order["line_items"]:
                    reserved[("S1", self.square.variations[li["catalog_object_id"]]["sku"])] += int(li["quantity"])
        return reserved

    def expected_wh_on_hand(self) -> Counter[str]:
        on_hand = Counter(self.wh_on_hand)
        for order in self.shopify.orders.values():
            for f in order["fulfillments"]:
                if f["status"] == "success":
                    for fl in f["line_items"]:
                        on_hand[fl["sku"]] -= fl["quantity"]
        return on_hand

    def channel_gaps(self, counts: dict[tuple[str, str], dict[str, int]]) -> list[str]:
        gaps = []
        for sku in SKUS:

            def avail(loc: str, sku: str = sku) -> int:
                return counts.get((loc, sku), {}).get("available", 0)

            for hub_loc, loc in (("WH1", self.wh), ("S1", self.store)):
                shown = self.shopify.available(self.variants[sku].item_id, loc)
                if shown != avail(hub_loc):
                    gaps.append(f"Shopify {sku} at {hub_loc}: {shown}, hub {avail(hub_loc)}")
            shown = self.square.quantity(self.variations[sku], self.sq_store)
            if shown != avail("S1"):
                gaps.append(f"Square {sku} at S1: {shown}, hub {avail('S1')}")
        return gaps


async def test_both_channels_converge_on_the_hubs_available_through_faults_orders_and_a_kill(
    tmp_path: Path, hub_db: str
) -> None:
    rng = random.Random(SEED)
    skew = timedelta(seconds=20)
    async with ShopifyOrdersEmulator(now=lambda: datetime.now(UTC) + skew) as shopify, SquareOrdersEmulator() as square:
        shopify.faults.slow_s = square.faults.slow_s = 2.0  # past the channels' 1 s timeout
        wh, store = shopify.add_location(), shopify.add_location()
        sq_store = square.add_location()
        for sku in SKUS:
            shopify.add_variant(sku, stocked_at=[wh, store])
            square.add_variation(sku)
        agent = await asyncio.to_thread(add_credential, hub_db, "WH1", "S1")
        reader = await asyncio.to_thread(add_credential, hub_db, role="reader")
        admin = await asyncio.to_thread(add_credential, hub_db, role="admin")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        common = "timeout_s = 1\nretry_max_s = 2\ncoalesce_s = 0.05\nreconcile_s = 0\n"
        (tmp_path / "hub.toml").write_text(
            f'[[channel]]\nname = "web"\nkind = "shopify"\nurl = "{shopify.url}"\nsecret_env = "SHOP_TOKEN"\n'
            f'webhook_secret_env = "SHOP_WEBHOOK_SECRET"\norder_location = "WH1"\n{common}'
            f'pool = {{ WH1 = "{wh}", S1 = "{store}" }}\n\n'
            f'[[channel]]\nname = "pickup"\nkind = "square"\nurl = "{square.url}"\nsecret_env = "SQUARE_TOKEN"\n'
            f'webhook_secret_env = "SQUARE_SIGNATURE_KEY"\n'
            f'notification_url = "{url}/v1/channels/pickup/webhooks"\n{common}pool = {{ S1 = "{sq_store}" }}\n',
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
        env |= {"SHOP_TOKEN": shopify.token, "SHOP_WEBHOOK_SECRET": shopify.webhook_secret,
                "SQUARE_TOKEN": square.token, "SQUARE_SIGNATURE_KEY": square.signature_key}  # fmt: skip
        hub = HubProcess(tmp_path / "hub.log", "--config", str(tmp_path / "hub.toml"), db=hub_db, port=port, env=env)
        run = Run(rng, hub, shopify, square, agent.token)
        kill_at = rng.randint(STEPS // 3, 2 * STEPS // 3)
        try:
            await asyncio.to_thread(hub.start)  # in a thread: the stand-ins answer the hub from this loop
            for step in range(STEPS):
                roll = rng.random()
                if roll < 0.35:
                    await run.store_moves()
                elif roll < 0.6:
                    run.shopify_order_step()
                elif roll < 0.8:
                    run.square_order_step()
                else:
                    run.faults()
                if rng.random() < 0.4:
                    await run.deliver_some()
                if step == kill_at:
                    await asyncio.to_thread(hub.kill)  # SIGKILL, whatever it was pushing
                    restart = asyncio.ensure_future(asyncio.to_thread(hub.start))
                    await run.store_moves()  # the sync is resent until the hub is back
                    await restart
                if not hub.running:
                    await asyncio.to_thread(hub.start)
                await asyncio.sleep(rng.uniform(0, 0.05))

            async def all_delivered() -> bool:
                await run.deliver_some(everything=True)
                return not run.shopify_pending and not run.square_pending

            await wait_until(all_delivered, "every webhook is taken", SETTLE_S)
            for name in ("web", "pickup"):  # what moved behind the hub's back is found by a reconciliation

                async def reconciled(name: str = name) -> bool:
                    try:
                        await asyncio.to_thread(_post, f"{url}/v1/channels/{name}/reconcile", admin.token)
                    except urllib.error.HTTPError as e:
                        assert e.code in (502, 503), (e.code, e.read()[:300])  # a fault the stand-in still holds
                        return False
                    return True

                await wait_until(reconciled, f"channel {name} is reconciled", SETTLE_S)
            last: list[str] = []

            async def converged() -> bool:
                counts = await asyncio.to_thread(_counts, url, reader.token)
                last[:] = run.channel_gaps(counts)
                return not last

            try:
                await wait_until(converged, "every channel shows the hub's available", SETTLE_S)
            except AssertionError:
                raise AssertionError(f"channels differ from the hub: {last}") from None
            counts = await asyncio.to_thread(_counts, url, reader.token)
        finally:
            hub.close()
    reserved = {key: c["reserved"] for key, c in counts.items() if c["reserved"]}
    assert reserved == {k: v for k, v in run.expected_reserved().items() if v}
    assert {sku: counts.get(("WH1", sku), {}).get("on_hand", 0) for sku in SKUS} == {
        sku: run.expected_wh_on_hand()[sku] for sku in SKUS
    }
    text = hub.log
    assert "Traceback" not in text
    for secret in (shopify.token, square.token, shopify.webhook_secret, square.signature_key):
        assert secret not in text
