"""Webhooks: signed batches POSTed to a real receiver on 127.0.0.1, retried until it accepts them."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hub import HubStore
from hub.config import ConfigError, load_settings
from hub.feed import ChangeWatch, read_page
from hub.webhook_spec import KEYS
from hub.webhooks import (
    WebhookConfigError,
    WebhookDispatcher,
    WebhookSpec,
    parse_webhooks,
    sign,
    verify_signature,
)
from protocol import Kind
from protocol.retry import PEER_RETRY_AFTER_DEFAULT_S, PEER_RETRY_AFTER_MAX_S, Backoff, read_retry_after
from tests.harness.commands import run_hub
from tests.harness.sqlite_copy import backup
from tests.hub.feed_helpers import Agent, running_hub

SECRET = "s3cret-for-the-web-shop"
BOUND_S = 10.0


@dataclass
class Receiver:
    """A channel's webhook endpoint: verifies each request, fails the first ``fail_first`` with 500."""

    fail_first: int = 0
    location: str | None = None
    requests: int = 0
    bad_signatures: int = 0
    accepted: list[dict[str, Any]] = field(default_factory=list)  # changes of accepted requests, in order
    batches: list[dict[str, Any]] = field(default_factory=list)  # the accepted requests' bodies, in order
    headers: list[dict[str, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        self.headers.append(dict(request.headers))
        if not verify_signature(
            SECRET, request.headers.get("X-Shelfsync-Timestamp"), request.headers.get("X-Shelfsync-Signature"), body
        ):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        if self.requests <= self.fail_first:
            return web.Response(status=500, text="the shop database is down")
        self.batches.append(json.loads(body))
        self.accepted += self.batches[-1]["changes"]
        self.changed.set()
        return web.json_response({"ok": True})

    async def until(self, done: Any) -> None:
        async with asyncio.timeout(BOUND_S):
            while not done():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(fail_first=2)
    app = web.Application()
    app.router.add_post("/hooks/stock", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/hooks/stock"
    try:
        yield rec
    finally:
        await runner.cleanup()


async def delivered_up_to(store: HubStore, name: str, change_id: int) -> None:
    async with asyncio.timeout(BOUND_S):
        while (await store.webhook_state(name)).cursor < change_id:
            await asyncio.sleep(0.01)


def spec(url: str, **kw: Any) -> WebhookSpec:
    return WebhookSpec(name=kw.pop("name", "shop"), url=url, secret=SECRET, retry_max_s=0.05, **kw)


async def test_a_failing_receiver_gets_every_change_after_retries_signed(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hub.webhooks")
    async with running_hub(tmp_path, webhooks=(spec(receiver.url),)) as hub:
        agent = await hub.agent()
        await agent.sync((Kind.RECEIVE, 5), (Kind.RECEIVE, 2, "B"))
        await agent.sync((Kind.SALE, -1))
        latest = await hub.store.latest_change_id()
        await receiver.until(lambda: receiver.accepted and receiver.accepted[-1]["change_id"] == latest)
        await delivered_up_to(hub.store, "shop", latest)  # the hub logs a delivery once it has the answer

        assert receiver.bad_signatures == 0
        assert receiver.requests >= 3  # two refused, then accepted
        ids = [c["change_id"] for c in receiver.accepted]
        assert ids == [r.change_id for r in await hub.store.changes(0, 100)]  # all, in order, none lost
        final = {(c["location"], c["sku"]): c["on_hand"] for c in receiver.accepted}
        assert final == {("S1", "A"): 4, ("S1", "B"): 2}
        first = receiver.headers[0]
        assert first["X-Shelfsync-Webhook"] == "shop"
        assert first["X-Shelfsync-Signature"].startswith("sha256=")

        log = await hub.get_json("/v1/webhooks/shop/deliveries")
        statuses = [(d["status"], d["http_status"]) for d in reversed(log["deliveries"])]
        assert statuses[:3] == [("failed", 500), ("failed", 500), ("delivered", 200)]
        assert "HTTP 500: the shop database is down" in log["deliveries"][-1]["error"]
        state = await hub.store.webhook_state("shop")
        assert (state.cursor, state.last_error, state.attempts) == (latest, None, 0)
        (status,) = (await hub.get_json("/v1/webhooks"))["webhooks"]
        assert (status["name"], status["cursor"], status["failures"]) == ("shop", str(latest), 0)
        assert status["url"] == receiver.url

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "hub.webhooks"]
    recoveries = [r for r in caplog.records if "delivers again" in r.getMessage()]
    assert len(warnings) == 1 and "failed" in warnings[0].getMessage()
    assert len(recoveries) == 1


async def test_the_cursor_survives_a_restart_and_nothing_delivered_is_sent_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.fail_first = 0
    async with running_hub(tmp_path, webhooks=(spec(receiver.url),)) as hub:
        agent = await hub.agent()
        await agent.sync((Kind.RECEIVE, 3))
        first = await hub.store.latest_change_id()
        await delivered_up_to(hub.store, "shop", first)
    async with running_hub(tmp_path, webhooks=(spec(receiver.url),)) as hub:
        agent = Agent(agent.agent_id, agent.token, agent.events, hub.client, agent.at_ms)
        await agent.sync((Kind.SALE, -1))
        await receiver.until(lambda: len(receiver.accepted) >= 2)
        assert [c["change_id"] for c in receiver.accepted] == [first, first + 1]
        assert receiver.accepted[-1]["on_hand"] == 2


async def test_a_deliverer_whose_loop_dies_is_started_again_on_a_sqlite_hub(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite hub started its deliverers once: one whose loop died stayed stopped until the hub restarted."""
    caplog.set_level(logging.INFO, logger="hub.webhooks")
    monkeypatch.setattr("hub.leases.ENDED_BACKOFF", Backoff(0.05, 0.05))
    receiver.fail_first = 0
    runs, run = [], WebhookDispatcher.run

    async def dies_the_first_time(self: WebhookDispatcher) -> None:
        runs.append(self.spec.name)
        if len(runs) == 1:
            raise RuntimeError("the feed answered nonsense")
        await run(self)

    monkeypatch.setattr(WebhookDispatcher, "run", dies_the_first_time)
    async with running_hub(tmp_path, webhooks=(spec(receiver.url),), lease_retry_s=0.05) as hub:
        agent = await hub.agent()
        await agent.sync((Kind.RECEIVE, 3))
        latest = await hub.store.latest_change_id()
        await receiver.until(lambda: [c["change_id"] for c in receiver.accepted] == [latest])
        statuses = await hub.get_json("/v1/webhooks")
    assert runs == ["shop", "shop"]
    assert statuses["webhooks"][0]["deliverer"] == "this hub"
    assert (
        "webhook shop: delivering ended by itself (RuntimeError: the feed answered nonsense) while this hub runs; "
        "this hub starts delivering it again in 0 s" in caplog.text
    )
    assert "webhook shop: this hub delivers it now" in caplog.text


async def test_a_location_filter_sends_only_that_location(tmp_path: Path, receiver: Receiver) -> None:
    receiver.fail_first = 0
    async with running_hub(tmp_path, webhooks=(spec(receiver.url, location="S2"),)) as hub:
        s1, s2 = await hub.agent("S1"), await hub.agent("S2")
        await s1.sync((Kind.RECEIVE, 1))
        await s2.sync((Kind.RECEIVE, 2))
        await s1.sync((Kind.RECEIVE, 1))
        await s2.sync((Kind.SALE, -1))
        await receiver.until(lambda: [c["on_hand"] for c in receiver.accepted] == [2, 1])
        assert {c["location"] for c in receiver.accepted} == {"S2"}


async def test_a_location_filtered_webhook_is_not_lagging_behind_changes_of_other_locations(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Its lag used to count every change of every other location since its last delivery, for ever.

    A webhook for the web shop's location saw store S1 sell all day and reported a lag (in /v1/webhooks, the
    dashboard and shelfsync_webhook_lag_changes) that only grew, though it had nothing left to deliver: its
    cursor moved only when it delivered. It now stands where its reading of the feed stands.
    """
    receiver.fail_first = 0
    async with running_hub(tmp_path, webhooks=(spec(receiver.url, location="S2"),)) as hub:
        s1, s2 = await hub.agent("S1"), await hub.agent("S2")
        await s2.sync((Kind.RECEIVE, 2))
        await receiver.until(lambda: len(receiver.accepted) == 1)
        for _ in range(5):
            await s1.sync((Kind.RECEIVE, 1))
        latest = await hub.store.latest_change_id()

        async def status() -> dict[str, Any]:
            (found,) = (await hub.get_json("/v1/webhooks"))["webhooks"]
            return found  # type: ignore[no-any-return]

        async with asyncio.timeout(BOUND_S):
            while (found := await status())["lag"] != 0:
                await asyncio.sleep(0.05)
        assert found["cursor"] == str(latest)
        assert len(receiver.accepted) == 1  # nothing of S1 went out
        metrics = await hub.client.get("/metrics", headers=hub.auth())
        assert 'shelfsync_webhook_lag_changes{name="shop"} 0.0' in await metrics.text()


async def test_a_receiver_that_accepts_but_never_finishes_its_answer_body_is_not_sent_the_batch_for_ever(
    tmp_path: Path,
) -> None:
    """A 2xx whose body never arrives (a receiver that answers at once, then holds the connection) is delivered.

    The hub used to wait for the first bytes of the body, time out after timeout_s, count the delivery failed and
    send the same batch again, for ever: the receiver accepted each copy and the webhook never moved on.
    """
    requests = 0

    async def answer_and_hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")).split(b":")[1])
        await reader.readexactly(length)
        requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n")  # and the 64 bytes never come
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the hub closes it
        writer.close()

    server = await asyncio.start_server(answer_and_hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        hook = spec(f"http://127.0.0.1:{port}/hooks/stock", timeout_s=0.5)
        async with running_hub(tmp_path, webhooks=(hook,)) as hub:
            agent = await hub.agent()
            await agent.sync((Kind.RECEIVE, 5))
            latest = await hub.store.latest_change_id()
            await delivered_up_to(hub.store, "shop", latest)
            await asyncio.sleep(1.0)  # two timeouts' worth: nothing is sent again
            assert requests == 1
    finally:
        server.close()


BROKEN_ANSWERS = {
    "a head of too many headers": b"HTTP/1.1 500 Oops\r\n" + b"X-Filler: a\r\n" * 200 + b"\r\n",
    "a status line cut by a close": b"HTTP/1.1 200 O",
    "a body of control characters": b"HTTP/1.1 500 Oops\r\nContent-Length: 22\r\n\r\ndown\r\x1b[2K\x00forged line\n",
}


@pytest.mark.parametrize("answer", list(BROKEN_ANSWERS))
async def test_a_broken_answer_is_one_sentence_without_the_urls_token(
    tmp_path: Path, answer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The URL's query and password (a token a shop may require) appear nowhere any credential may read.

    aiohttp's error for an answer it cannot parse names the request URL with its query; the hub used to put it
    as it was in the warning, in last_error of GET /v1/webhooks and in the delivery log (readable by every store
    agent's credential). A receiver closing mid-answer was described as aiohttp's repr of the message it
    parsed (``<RawResponseMessage(version=...)>``); a body's carriage returns and escape sequences went to the
    log and last_error as they came."""
    caplog.set_level(logging.INFO, logger="hub.webhooks")
    requests = 0

    async def answer_once_broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))[15:])
                await reader.readexactly(length)
                requests += 1
                if requests == 1:
                    writer.write(BROKEN_ANSWERS[answer])
                    await writer.drain()
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_once_broken, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        hook = spec(f"http://shop:pass-WORD-9@127.0.0.1:{port}/hooks/stock?token=TOKEN-123")
        async with running_hub(tmp_path, webhooks=(hook,)) as hub:
            agent = await hub.agent()
            await agent.sync((Kind.RECEIVE, 5))
            await delivered_up_to(hub.store, "shop", await hub.store.latest_change_id())
            log = await hub.get_json("/v1/webhooks/shop/deliveries", token=agent.token)
    finally:
        server.close()
    failed = [d["error"] for d in log["deliveries"] if d["status"] == "failed"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "hub.webhooks" and r.levelno >= logging.WARNING]
    assert len(failed) == 1 and len(warnings) == 1, (failed, warnings)
    for text in failed + warnings:
        assert "TOKEN-123" not in text and "pass-WORD-9" not in text, text
        assert "RawResponseMessage" not in text and text.isprintable(), text
        assert "the receiver" in text, text


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_a_receiver_answering_429_with_retry_after_is_not_asked_again_sooner(tmp_path: Path, form: str) -> None:
    """retry_max_s = 0.05 s: the dispatcher used to send the batch again within a tenth of a second of a 429 that
    asked for 2 s (Retry-After was not read; as an HTTP-date, it was not read until it shared the channels'
    reader), and so on, keeping a throttling receiver throttled."""
    times: list[float] = []

    async def throttle_once(request: web.Request) -> web.Response:
        await request.read()
        times.append(time.monotonic())
        if len(times) == 1:
            # an HTTP-date has whole seconds: 3 s ahead asks for more than 2 s
            after = "2" if form == "seconds" else email.utils.formatdate(time.time() + 3, usegmt=True)
            return web.Response(status=429, text="slow down", headers={"Retry-After": after})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hooks/stock", throttle_once)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with running_hub(tmp_path, webhooks=(spec(f"http://127.0.0.1:{port}/hooks/stock"),)) as hub:
            agent = await hub.agent()
            await agent.sync((Kind.RECEIVE, 5))
            await delivered_up_to(hub.store, "shop", await hub.store.latest_change_id())
            assert len(times) == 2
            assert times[1] - times[0] >= 1.9
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(429, None, PEER_RETRY_AFTER_DEFAULT_S), (429, "soon", PEER_RETRY_AFTER_DEFAULT_S), (429, "0", 0.0), (429, "7", 7.0),
     (503, None, None), (503, "7", 7.0), (500, "7", 7.0), (502, "86400", PEER_RETRY_AFTER_MAX_S), (404, "7", None)],
)  # fmt: skip
async def test_a_throttling_receiver_is_waited_for_as_a_channel_is(
    tmp_path: Path, status: int, retry_after: str | None, expected: float | None
) -> None:
    """The channels' rule (``protocol.retry.peer_wait_s``): a 429 means wait, so without a readable Retry-After it waits
    1 s, not only the backoff (retry_max_s may be 0.05 s: the receiver was asked again at once); a 5xx waits
    what its Retry-After says, or the backoff alone; another refusal is not a throttle."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        headers = {} if retry_after is None else {"Retry-After": retry_after}
        return web.Response(status=status, text="not now", headers=headers)

    app = web.Application()
    app.router.add_post("/hooks/stock", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with running_hub(tmp_path) as hub, aiohttp.ClientSession(trust_env=False) as session:
            agent = await hub.agent()
            await agent.sync((Kind.RECEIVE, 5))
            rows = (await read_page(hub.store, 0, 10)).rows
            d = WebhookDispatcher(
                spec(f"http://127.0.0.1:{port}/hooks/stock"), hub.store, ChangeWatch(hub.store), session
            )
            outcome = await d._deliver(rows)
    finally:
        await runner.cleanup()
    assert not outcome.ok and outcome.http_status == status
    assert outcome.retry_after_s == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("2", 2.0), ("0.5", 0.5), ("0", 0.0), ("86400", 300.0), ("inf", None), (None, None), ("-3", None),
     ("nan", None), ("soon", None), ("Mon, 99 Foo 2026 07:28:00 GMT", None), ("9" * 400, None)],
)  # fmt: skip
def test_an_odd_retry_after_falls_back_to_the_backoff(raw: str | None, expected: float | None) -> None:
    assert read_retry_after(raw, max_s=PEER_RETRY_AFTER_MAX_S) == expected


def test_a_retry_after_http_date_is_honoured() -> None:
    """RFC 9110 10.2.3: Retry-After is delay-seconds or an HTTP-date; the date counts from the hub's clock."""
    ahead = email.utils.formatdate(time.time() + 120, usegmt=True)  # "Sun, 06 Dec 2026 05:00:00 GMT"
    wait_s = read_retry_after(ahead, max_s=PEER_RETRY_AFTER_MAX_S)
    assert wait_s is not None and 115 <= wait_s <= 121
    assert read_retry_after(email.utils.formatdate(time.time() - 3600, usegmt=True), max_s=PEER_RETRY_AFTER_MAX_S) == 0.0
    assert read_retry_after(email.utils.formatdate(time.time() + 86_400, usegmt=True), max_s=PEER_RETRY_AFTER_MAX_S) == 300


async def test_an_unknown_webhook_has_no_delivery_log(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        body = await hub.get_json("/v1/webhooks/nope/deliveries", status=404)
        assert "no webhook named 'nope'" in body["detail"]
        assert (await hub.get_json("/v1/webhooks")) == {"webhooks": []}


# --- signatures -------------------------------------------------------------------


def test_a_signature_binds_the_body_and_the_timestamp() -> None:
    body = b'{"changes":[]}'
    now = int(time.time())
    good = sign(SECRET, str(now), body)
    assert verify_signature(SECRET, str(now), good, body)
    assert not verify_signature(SECRET, str(now), good, body + b" ")  # tampered body
    assert not verify_signature(SECRET, str(now + 1), good, body)  # another timestamp
    assert not verify_signature("another-secret-of-16", str(now), good, body)
    old = str(now - 3_600)
    assert not verify_signature(SECRET, old, sign(SECRET, old, body), body)  # a replay an hour later
    assert not verify_signature(SECRET, None, good, body)
    assert not verify_signature(SECRET, "soon", good, body)


# --- configuration -----------------------------------------------------------------


def test_webhooks_are_read_from_the_hub_config_file(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        '[hub]\ndb = "hub.db"\n\n'
        '[[webhooks]]\nname = "shop"\nurl = "https://shop.example/hooks?token=x"\n'
        f'secret = "{SECRET}"\nlocation = "WEB"\nbatch_max = 50\n\n'
        f'[[webhooks]]\nname = "market"\nurl = "http://127.0.0.1:9000/in"\nsecret = "{SECRET}"\n'
    )
    settings = load_settings(path)
    shop, market = settings.webhooks
    assert (shop.name, shop.location, shop.batch_max, shop.timeout_s) == ("shop", "WEB", 50, 10.0)
    assert shop.display_url == "https://shop.example/hooks"  # no query: it may hold a token
    assert SECRET not in repr(shop)
    assert (market.location, market.batch_max) == (None, 100)


@pytest.mark.parametrize(
    ("tables", "needle"),
    [
        ([{"name": "shop", "url": "ftp://x/y", "secret": SECRET}], "url must be an http"),
        ([{"name": "shop", "url": "http://127.0.0.1/", "secret": "short"}], "at least 16"),
        ([{"name": "shop", "url": "http://127.0.0.1/"}], "missing secret"),
        ([{"name": "shop", "url": "http://127.0.0.1/", "secret": SECRET, "colour": 1}], "unknown key(s) 'colour'"),
        ([{"name": "a b", "url": "http://127.0.0.1/", "secret": SECRET}], "name must be"),
        ([{"name": "s", "url": "http://127.0.0.1/", "secret": SECRET, "location": "W EB"}], "not a location code"),
        ([{"name": "s", "url": "http://127.0.0.1/", "secret": SECRET, "batch_max": 0}], "batch_max must be"),
        ([{"name": "s", "url": "http://127.0.0.1/", "secret": SECRET, "retry_max_s": "1"}], "retry_max_s must be"),
        ([{"name": "s", "url": "http://127.0.0.1/", "secret": SECRET}] * 2, "used twice"),
        ({"name": "s"}, "array of tables"),
        # these were a ValueError traceback, or a webhook that failed every delivery
        ([{"name": "s", "url": "http://[::1/in", "secret": SECRET}], "url must be an http"),
        ([{"name": "s", "url": "http://127.0.0.1:99999/in", "secret": SECRET}], "a port from 1 to 65535"),
        ([{"name": "s", "url": "http://127.0.0.1:0/in", "secret": SECRET}], "a port from 1 to 65535"),
    ],
)
def test_a_wrong_webhook_entry_is_one_clear_sentence(tables: Any, needle: str) -> None:
    with pytest.raises(WebhookConfigError, match=None) as err:
        parse_webhooks(tables)
    assert needle in str(err.value)


def test_a_wrong_webhook_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('[hub]\ndb = "hub.db"\n[[webhooks]]\nname = "shop"\nurl = "http://127.0.0.1/"\n')
    with pytest.raises(ConfigError, match=r"webhooks\[0\] is missing secret \(in .*hub.toml\)"):
        load_settings(path)


def test_a_broken_webhook_url_stops_the_command_with_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(f'[hub]\ndb = "hub.db"\n[[webhooks]]\nname = "shop"\nurl = "http://[::1"\nsecret = "{SECRET}"\n')
    run = run_hub("agent", "list", "--config", str(path))
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert "webhook 'shop': url must be an http:// or https:// URL" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "hub.db").exists()


def test_every_webhook_key_is_documented() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    section = text[text.index("### Webhooks") :]
    assert [key for key in KEYS if f"| `{key}` |" not in section] == []


async def test_a_receiver_can_tell_the_changes_of_a_restored_hub_from_the_ones_it_applied(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A restored hub numbers its changes again from the copy's newest: a receiver keeping the highest change_id per
    (location, SKU), as the guide advised, dropped the restored hub's new changes under ids it had seen (the web shop
    kept showing 4 while the hub said 2). Each batch names the feed's history, and a receiver that starts a key over
    when the history changes applies them."""
    receiver.fail_first = 0
    live, copy = tmp_path / "hub.db", tmp_path / "copy.db"
    applied: dict[tuple[str, str], tuple[str, int, int]] = {}  # key -> (history, change_id, on_hand)

    def apply(batch: dict[str, Any]) -> None:
        for c in batch["changes"]:
            key, kept = (c["location"], c["sku"]), applied.get((c["location"], c["sku"]))
            if kept is None or kept[0] != batch["history"] or kept[1] < c["change_id"]:
                applied[key] = (batch["history"], c["change_id"], c["on_hand"])

    async with running_hub(tmp_path, webhooks=(spec(receiver.url),)) as hub:
        agent = await hub.agent()
        await agent.sync((Kind.RECEIVE, 5))
        await delivered_up_to(hub.store, "shop", 1)
        backup(live, copy)  # the copy knows change 1, delivered
        await agent.sync((Kind.SALE, -1))
        await delivered_up_to(hub.store, "shop", 2)
        first_history = hub.store.feed_history
    copy.replace(live)  # restored: a new file in its place
    async with running_hub(tmp_path, webhooks=(spec(receiver.url),)) as hub:
        assert hub.store.feed_history != first_history
        agent = Agent(agent.agent_id, agent.token, agent.events, hub.client, agent.at_ms)
        await agent.sync((Kind.SALE, -3))  # change 2 again, of the restored feed: 5 - 3
        await delivered_up_to(hub.store, "shop", 2)
        await receiver.until(lambda: len(receiver.batches) >= 3)
    for batch in receiver.batches:
        apply(batch)
    assert [b["history"] for b in receiver.batches] == [first_history, first_history, hub.store.feed_history]
    assert applied[("S1", "A")][1:] == (2, 2)


@contextlib.asynccontextmanager
async def another_receiver() -> AsyncIterator[Receiver]:
    """A second receiver on 127.0.0.1 (the ``receiver`` fixture's kind), accepting every request."""
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/stock", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/hooks/stock"
    try:
        yield rec
    finally:
        await runner.cleanup()


def told(rec: Receiver) -> dict[tuple[str, str], int]:
    """What a receiver keeping the highest change_id per (location, SKU) shows: each key's on_hand."""
    kept: dict[tuple[str, str], tuple[int, int]] = {}
    for c in rec.accepted:
        key = (c["location"], c["sku"])
        if key not in kept or kept[key][0] < c["change_id"]:
            kept[key] = (c["change_id"], c["on_hand"])
    return {k: on_hand for k, (_, on_hand) in kept.items()}


async def test_a_webhook_moved_to_another_receiver_or_location_tells_it_every_count_at_the_next_start(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Its cursor was earned against the receiver and location it ran with: a start with another url (or location)
    starts the feed from the first change, with one warning, so the receiver learns the counts that do not move
    again; a secret, timeout or batch size changed starts nothing again."""
    caplog.set_level(logging.INFO, logger="hub.webhooks")
    receiver.fail_first = 0
    async with running_hub(tmp_path, webhooks=(spec(receiver.url),)) as hub:
        s1, s2 = await hub.agent(), await hub.agent("S2")
        await s1.sync((Kind.RECEIVE, 5), (Kind.RECEIVE, 2, "B"))
        await s2.sync((Kind.RECEIVE, 7, "C"))
        await delivered_up_to(hub.store, "shop", await hub.store.latest_change_id())
    assert told(receiver) == {("S1", "A"): 5, ("S1", "B"): 2, ("S2", "C"): 7}
    caplog.clear()

    async with another_receiver() as moved:
        async with running_hub(tmp_path, webhooks=(spec(moved.url),)) as hub:  # the shop's new endpoint
            s1 = Agent(s1.agent_id, s1.token, s1.events, hub.client, s1.at_ms)
            await s1.sync((Kind.SALE, -1))
            latest = await hub.store.latest_change_id()
            await moved.until(lambda: told(moved).get(("S1", "A")) == 4 and len(told(moved)) == 3)
            await delivered_up_to(hub.store, "shop", latest)
            assert told(moved) == {("S1", "A"): 4, ("S1", "B"): 2, ("S2", "C"): 7}  # not only A, which moved
            assert [c["change_id"] for c in moved.accepted] == list(range(1, latest + 1))  # once each, in order
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "hub.webhooks"]
        assert warnings == [
            (
                f"webhook shop: its url ({receiver.url} to {moved.url}) changed since it last ran, so its feed starts "
                "again from the first change and the receiver is told every current count (this hub's config is "
                "the newest: hubs started before it with the old one leave the webhook to it)"
            )
        ]
        caplog.clear()

        # the same receiver with another secret, timeout and batch size: nothing is sent again
        calm = WebhookSpec(name="shop", url=moved.url, secret=SECRET + "-rotated", timeout_s=3, batch_max=7)
        async with running_hub(tmp_path, webhooks=(calm,)) as hub:
            await asyncio.sleep(0.3)  # its dispatcher's first turn found nothing after the cursor
            assert (await hub.get_json("/v1/webhooks"))["webhooks"][0]["cursor"] == str(latest)
        assert len(moved.accepted) == latest and not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "hub.webhooks"]

        # told about one location now: its counts go out again, though the receiver had them
        async with running_hub(tmp_path, webhooks=(spec(moved.url, location="S2"),)) as hub:
            await moved.until(lambda: len(moved.accepted) > latest)
            await delivered_up_to(hub.store, "shop", latest)
        assert [(c["location"], c["sku"], c["on_hand"]) for c in moved.accepted[latest:]] == [("S2", "C", 7)]
        (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "hub.webhooks"]
        assert "webhook shop: its location (every location to S2) changed since it last ran" in warning
