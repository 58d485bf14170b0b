"""A live hub for the API contract tests: ``python -m hub serve`` on SQLite on 127.0.0.1, with a reader, an agent
and an admin credential, a webhook (to a closed local port, so its delivery log fills with failures), a Shopify
channel (the Shopify emulator of tests/channels, served from its own thread and event loop, so the hub's pushes,
mapping refreshes and reconciliations reach a shop while the test blocks) and some data: counts, a ledger, a held
event, a catalog item, an observation, a change feed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    LostReport,
    StockEvent,
    SyncRequest,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
    wall_ms_now,
)
from protocol.reports import ObservationReport, ObservationsRequest, encode_observations
from protocol.routes import OBSERVATIONS_PATH, SYNC_PATH
from tests.channels.emulators.shopify import ShopifyEmulator
from tests.harness.credentials import Credential, add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port

AGENT_LOCATIONS = ("S001", "WEB")
YEAR_MS = 365 * 24 * 3_600_000
REQUEST_TIMEOUT_S = 10.0
EMULATOR_TIMEOUT_S = 10.0
CHANNEL = "web"  # the Shopify channel's name in the hub's config, as in the document's examples
REFUSED_ORDER = "D1CAFA84CB614476A09D4DCD"  # a refused Square order on the channel, as in the document's example
LOST_AGENT = "agent-1a2b3c4d"  # an agent whose lost movements are listed, as in the document's example
CHANNEL_SKUS = ("SKU-1", "SKU-2")  # listed at the shop; SKU-3 is not (an unmapped SKU)
SHOPIFY_TOKEN_ENV = "SHELFSYNC_API_SHOPIFY_TOKEN"
SHOPIFY_WEBHOOK_SECRET_ENV = "SHELFSYNC_API_SHOPIFY_WEBHOOK_SECRET"
SHOPIFY_WEBHOOK_SECRET = "shpss-api-contract-webhook-secret"  # one line, no spaces


@dataclass(frozen=True, slots=True)
class LiveHub:
    url: str
    db: Path
    log: Path
    reader: Credential
    agent: Credential
    admin: Credential

    def tokens(self) -> dict[str, str]:
        return {"reader": self.reader.token, "agent": self.agent.token, "admin": self.admin.token}

    def call(
        self, method: str, path: str, token: str | None = None, body: bytes | None = None,
        content_type: str = "application/json", headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        """One request; (status, headers, body) whatever the status."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            all_headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as resp:
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers.items()), err.read()

    def json(self, method: str, path: str, token: str, payload: Any = None) -> Any:
        status, _, raw = self.call(method, path, token, None if payload is None else json.dumps(payload).encode())
        assert status == 200, (status, raw[:500])
        return json.loads(raw)


def _event(agent: Credential, seq: int, sku: str, kind: Kind, qty: int, at_ms: int, ref: str | None = None) -> StockEvent:
    return StockEvent(
        new_event_id(), agent.agent_id, 1, seq, "S001", sku, kind, qty, pack_hlc(at_ms, 0), at_ms, "scanner:door", ref
    )


def seed(hub: LiveHub) -> None:
    """Data for every read to page through, a bundle, and a held event for the quarantine."""
    now = wall_ms_now()
    events = [
        _event(hub.agent, 1, "SKU-1", Kind.COUNT, 12, now - 60_000),
        _event(hub.agent, 2, "SKU-1", Kind.SALE, -2, now - 50_000),
        _event(hub.agent, 3, "SKU-2", Kind.RECEIVE, 5, now - 40_000),
        _event(hub.agent, 4, "SKU-3", Kind.SALE, -1, now - 30_000),  # negative on hand: an exception
        _event(hub.agent, 5, "SKU-1", Kind.ADJUST, 1, now + YEAR_MS),  # a year ahead: held in quarantine
    ]
    lost = LostReport(6, 9, 4, found_ms=now - 70_000, epoch=1)  # acknowledged, then lost with a restore
    body = encode_sync_request(SyncRequest(hub.agent.agent_id, 1, tuple(events), sent_ms=now, lost=lost))
    status, _, raw = hub.call("POST", SYNC_PATH, hub.agent.token, body, MSGPACK_CONTENT_TYPE)
    assert status == 200, raw[:300]
    assert decode_sync_response(raw).hwm == 5
    hub.json("POST", "/v1/events", hub.agent.token, {"events": [
        {"id": "order-1:reserve", "location": "WEB", "sku": "SKU-1", "kind": "reserve", "qty": 2,
         "occurred_at": now - 20_000, "ref": "order-1"}]})  # fmt: skip
    hub.json("PUT", "/v1/catalog", hub.admin.token, {"items": [
        {"barcode": "04006381333931", "sku": "SKU-1", "pack_size": 1, "description": "Pen"}]})  # fmt: skip
    hub.json("PUT", "/v1/locations/S001/skus/SKU-2/safety-stock", hub.admin.token, {"qty": 1})
    hub.json("PUT", "/v1/bundles/KIT-1", hub.admin.token, {"components": {"SKU-1": 2, "SKU-2": 1}})
    observations = ObservationsRequest(
        hub.agent.agent_id, (ObservationReport("obs-1", "S001", "SKU-1", "shop", 40, now - 10_000, "inv.csv"),)
    )
    status, _, raw = hub.call("POST", OBSERVATIONS_PATH, hub.agent.token, encode_observations(observations),
                              MSGPACK_CONTENT_TYPE)  # fmt: skip
    assert status == 200, raw[:300]


@contextmanager
def shopify_in_thread() -> Iterator[ShopifyEmulator]:
    """The Shopify emulator served by an event loop of its own thread: it answers the hub while the test blocks
    (on Schemathesis, on urllib). Set its data up before the hub starts: the thread reads it afterwards."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="shopify-emulator", daemon=True)
    thread.start()
    try:
        emulator = asyncio.run_coroutine_threadsafe(_started(), loop).result(EMULATOR_TIMEOUT_S)
        try:
            yield emulator
        finally:
            asyncio.run_coroutine_threadsafe(emulator.close(), loop).result(EMULATOR_TIMEOUT_S)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(EMULATOR_TIMEOUT_S)
        loop.close()


async def _started() -> ShopifyEmulator:
    return await ShopifyEmulator().start()


def _channel_table(shop: ShopifyEmulator) -> str:
    location = shop.add_location()
    for sku in CHANNEL_SKUS:
        shop.add_variant(sku, stocked_at=[location], available=3)
    return f"""
[[channel]]
name = "{CHANNEL}"
kind = "shopify"
url = "{shop.url}"
secret_env = "{SHOPIFY_TOKEN_ENV}"
webhook_secret_env = "{SHOPIFY_WEBHOOK_SECRET_ENV}"
pool = {{ S001 = "{location}" }}
fulfil_from = {{ "{location}" = "S001" }}
buffer = 1
timeout_s = 2.0
retry_max_s = 1.0
"""


def refuse_order(db: Path) -> None:
    """A Square order whose webhook the hub refused for good, as the hub stores one (``channel_order_refused``):
    the live hub's channel is Shopify's, which never stores one, so it is written as a Square channel's would be."""
    conn = sqlite3.connect(db)
    try:
        conn.execute(
            "INSERT INTO channel_orders_refused (channel, order_id, refused_at_ms, reason, location, channel_location) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (CHANNEL, REFUSED_ORDER, wall_ms_now() - 60_000,
             f"Square order {REFUSED_ORDER}: line L1 (item variation V9) is not in channel {CHANNEL}'s SKU mapping",
             "S001", "L-S001"),
        )  # fmt: skip
        conn.commit()
    finally:
        conn.close()


def lose_movements(db: Path) -> None:
    """Movements the document's example agent reported the hub lacks for good, as the hub stores them (its
    credential is not this hub's: the row is the dismiss route's example's, not listed)."""
    conn = sqlite3.connect(db)
    try:
        conn.execute(
            "INSERT INTO agent_lost (agent_id, epoch, first_seq, last_seq, lost, at_least, found_ms, received_ms)"
            " VALUES (?, 1, 6, 9, 4, 0, ?, ?)",
            (LOST_AGENT, wall_ms_now() - 70_000, wall_ms_now() - 60_000),
        )
        conn.commit()
    finally:
        conn.close()


@contextmanager
def live_hub(tmp_path: Path, *, rate_limit_per_s: float = 1000.0, rate_limit_burst: int = 1000,
             seeded: bool = True, header_timeout_s: float = 10.0) -> Iterator[LiveHub]:  # fmt: skip
    """A served hub on a free port of 127.0.0.1, stopped (SIGTERM, else killed) on the way out, and the shop its
    channel pushes to."""
    with shopify_in_thread() as shop:
        yield from _served(tmp_path, shop, rate_limit_per_s, rate_limit_burst, seeded, header_timeout_s)


def _served(tmp_path: Path, shop: ShopifyEmulator, rate_limit_per_s: float, rate_limit_burst: int,
            seeded: bool, header_timeout_s: float) -> Iterator[LiveHub]:  # fmt: skip
    db = tmp_path / "hub.db"
    reader = add_credential(db, role="reader")
    admin = add_credential(db, role="admin")
    agent = add_credential(db, *AGENT_LOCATIONS)
    refuse_order(db)
    lose_movements(db)
    config = tmp_path / "hub.toml"
    config.write_text(
        f"""[hub]
rate_limit_per_s = {rate_limit_per_s}
rate_limit_burst = {rate_limit_burst}
header_timeout_s = {header_timeout_s}

[[webhooks]]
name = "web-shop"
url = "http://127.0.0.1:{free_port()}/hooks/stock"
secret = "a secret shared with nobody: the port is closed"
location = "WEB"
timeout_s = 1.0
retry_max_s = 1.0
{_channel_table(shop)}"""
    )
    log = tmp_path / "hub.log"
    env = {**os.environ, SHOPIFY_TOKEN_ENV: shop.token, SHOPIFY_WEBHOOK_SECRET_ENV: SHOPIFY_WEBHOOK_SECRET}
    with HubProcess(log, "--config", str(config), db=db, port=0, env=env) as proc:
        hub = LiveHub(proc.url, db, log, reader, agent, admin)
        if seeded:
            seed(hub)
        yield hub
        proc.stop()
