"""Two real PostgreSQL hub processes with the same ``[[webhooks]]`` entry deliver each change once, between them.

Both hubs (``python -m hub serve --db postgresql://…``) take events; a receiver on 127.0.0.1 counts the deliveries
of each change id. Exactly one hub delivers the webhook (``GET /v1/webhooks`` says which); killed with SIGKILL,
the other takes it over from the saved cursor and delivers the rest. Every change arrives exactly once: the
deliverer is killed with nothing in flight (a batch in flight at the kill may be sent again — at least once —,
docs/hub-api.md#webhooks). The same holds when the deliverer's lock connection is cut (``pg_terminate_backend``)
while the hub runs on: it stops delivering, and one of the hubs takes the webhook again. And when the deliverer is
paused (SIGSTOP: its connections stay open, and its lock with them): silent past ``lease_stale_s``, its lock connection
is ended by the other hub, which takes the webhook over; resumed, the paused hub delivers nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from aiohttp import web

from hub.webhooks import verify_signature
from tests.harness.credentials import Credential, add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json
from tests.harness.pg import PG_URL, fresh_schema
from tests.ops.test_hub_alerts import RULES, labels, promtool

RATE_LIMITED_TRIES = 20  # a change answered 429 (rate_limit_per_s) is sent again after its Retry-After
SECRET = "s3cret-for-the-web-shop"
BOUND_S = 60.0  # on every wait: a standing-by hub takes a webhook over within seconds (it retries every RETRY_S)
POLL_S = 0.2
# lease_retry_s of every hub here (3 s by default): a standing-by hub tries to take the webhook, and the delivering
# hub checks its lock, this often, so each handover takes a fraction of a second rather than up to 3 s
RETRY_S = 0.5
TURNS_S = 4 * RETRY_S  # a few turns of a hub's lead loop: what it does, or does not, at its next checks


class CountingReceiver:
    """The web shop's endpoint: checks each signature and counts the deliveries of each change id."""

    def __init__(self) -> None:
        self.delivered: Counter[int] = Counter()
        self.bad_signatures = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_signature(
            SECRET, request.headers.get("X-Shelfsync-Timestamp"), request.headers.get("X-Shelfsync-Signature"), body
        ):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        self.delivered.update(int(c["change_id"]) for c in json.loads(body)["changes"])
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/stock", self.handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/hooks/stock"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def pg_db(pg_server: str) -> AsyncIterator[str]:
    async with fresh_schema("wh") as url:
        yield url


@pytest.fixture
async def receiver() -> AsyncIterator[CountingReceiver]:
    r = CountingReceiver()
    await r.start()
    yield r
    await r.stop()


def _receive(url: str, token: str, n: int) -> None:
    """One event of ``n`` units received at S1, of a SKU of its own: one change."""
    event = {"id": f"delivery-{n}", "location": "S1", "sku": f"SKU-{n}", "kind": "receive", "qty": 1,
             "occurred_at": f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}Z"}  # fmt: skip
    req = urllib.request.Request(
        f"{url}/v1/events", data=json.dumps({"events": [event]}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    for _ in range(RATE_LIMITED_TRIES):
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert json.loads(resp.read())["applied"] == 1
                return
        except urllib.error.HTTPError as err:  # a fast machine outruns the credential's rate limit: wait as asked
            if err.code != 429:
                raise
            time.sleep(float(err.headers.get("Retry-After", "1")))
    raise AssertionError(f"delivery-{n} was answered 429 {RATE_LIMITED_TRIES} times")


def _change_ids(url: str, token: str) -> set[int]:
    body = get_json(f"{url}/v1/changes?limit=5000", token)
    assert body["more"] is False
    return {int(c["change_id"]) for c in body["changes"]}


def _webhook(url: str, token: str) -> dict[str, Any]:
    (hook,) = get_json(f"{url}/v1/webhooks", token)["webhooks"]
    assert isinstance(hook, dict)
    return hook


async def _until(what: str, check: Any) -> None:
    """Poll ``check()`` until it is true; fail naming ``what`` after ``BOUND_S``."""
    try:
        async with asyncio.timeout(BOUND_S):
            while not await check():
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {BOUND_S:.0f} s") from None


async def _post(hubs: list[HubProcess], agent: Credential, numbers: range) -> None:
    for n in numbers:  # alternating between the hubs, as a load balancer would
        await asyncio.to_thread(_receive, hubs[n % len(hubs)].url, agent.token, n)


def _hubs(tmp_path: Path, receiver: CountingReceiver, pg_db: str) -> list[HubProcess]:
    config = tmp_path / "hub.toml"
    config.write_text(
        f"[hub]\nlease_retry_s = {RETRY_S}\n\n"
        f'[[webhooks]]\nname = "shop"\nurl = "{receiver.url}"\nsecret = "{SECRET}"\nbatch_max = 4\n',
        encoding="utf-8",
    )  # fmt: skip
    return [HubProcess(tmp_path / f"hub-{i}.log", "--config", str(config), db=pg_db, port=free_port()) for i in (1, 2)]


async def _start(hubs: list[HubProcess]) -> None:
    for hub in hubs:
        hub.spawn()
    for hub in hubs:
        await asyncio.to_thread(hub.wait_ready)


async def _start_adding_credentials(hubs: list[HubProcess], pg_db: str) -> tuple[Credential, Credential]:
    """``_start``, adding an agent's credential (of S1) and a reader's while the hubs start: whichever opens the fresh
    schema first migrates it, the others wait for it (as hubs started side by side on a new database do)."""
    for hub in hubs:
        hub.spawn()
    agent = await asyncio.to_thread(add_credential, pg_db, "S1")
    reader = await asyncio.to_thread(add_credential, pg_db, role="reader")
    for hub in hubs:
        await asyncio.to_thread(hub.wait_ready)
    return agent, reader


async def _delivered_once_by_one_hub(
    hubs: list[HubProcess], receiver: CountingReceiver, reader: Credential, expected: set[int]
) -> HubProcess:
    """Wait until every change in ``expected`` arrived and every hub shows it delivered; the delivering hub."""

    async def every_hub_shows_everything_delivered() -> bool:
        if not expected <= set(receiver.delivered):
            return False
        views = [await asyncio.to_thread(_webhook, h.url, reader.token) for h in hubs]
        return all(int(v["cursor"]) >= max(expected) for v in views)  # a standing-by hub: the saved cursor

    await _until("every change delivered, as every hub shows", every_hub_shows_everything_delivered)
    assert set(receiver.delivered) == expected
    twice = {cid: n for cid, n in receiver.delivered.items() if n > 1}
    assert not twice, f"changes delivered more than once (change id: deliveries): {twice}"
    views = [await asyncio.to_thread(_webhook, h.url, reader.token) for h in hubs]
    assert sorted(v["deliverer"] for v in views) == ["another hub"] * (len(hubs) - 1) + ["this hub"]
    (delivering,) = [h for h, v in zip(hubs, views, strict=True) if v["deliverer"] == "this hub"]
    return delivering


async def test_two_postgresql_hubs_deliver_each_change_once_and_hand_the_webhook_over_when_one_is_killed(
    tmp_path: Path, receiver: CountingReceiver, pg_db: str
) -> None:
    hubs = _hubs(tmp_path, receiver, pg_db)
    try:
        agent, reader = await _start_adding_credentials(hubs, pg_db)
        await _post(hubs, agent, range(30))
        expected = await asyncio.to_thread(_change_ids, hubs[0].url, reader.token)
        assert len(expected) == 30
        delivering = await _delivered_once_by_one_hub(hubs, receiver, reader, expected)
        (standing_by,) = [h for h in hubs if h is not delivering]

        await asyncio.to_thread(delivering.kill)  # SIGKILL: its lock goes when PostgreSQL sees its connection close
        await _post([standing_by], agent, range(30, 42))
        expected |= await asyncio.to_thread(_change_ids, standing_by.url, reader.token)
        assert len(expected) == 42

        async def the_other_hub_delivered_the_rest() -> bool:
            view = await asyncio.to_thread(_webhook, standing_by.url, reader.token)
            return expected <= set(receiver.delivered) and view["deliverer"] == "this hub"

        await _until(
            "the standing-by hub takes the webhook over and delivers the rest", the_other_hub_delivered_the_rest
        )
        assert await _delivered_once_by_one_hub([standing_by], receiver, reader, expected) is standing_by
        assert receiver.bad_signatures == 0
        assert "webhook shop: this hub delivers it now" in standing_by.run_log
    finally:
        for hub in hubs:
            hub.close()
    for hub in hubs:
        assert "Traceback" not in hub.log and SECRET not in hub.log
        assert "ended by itself" not in hub.log  # a hub that stops ends its loops: that is not news


async def _terminate_lock_connection(pg_db: str) -> None:
    """``pg_terminate_backend`` of the connection holding webhook shop's deliverer lock (``hub.webhooks``)."""
    (schema,) = parse_qs(urlsplit(pg_db).query)["search_path"]
    conn = await asyncpg.connect(PG_URL)
    try:
        key = await conn.fetchval("SELECT hashtextextended('shelfsync.webhook.deliverer.' || $1 || '.shop', 0)", schema)
        pids = await conn.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND classid::bigint = $1 AND objid::bigint = $2",
            (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF,
        )  # fmt: skip
        assert len(pids) == 1, pids
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pids[0]["pid"])
    finally:
        await conn.close()


async def test_a_hub_that_loses_its_lock_connection_stops_delivering_and_one_hub_delivers_the_rest(
    tmp_path: Path, receiver: CountingReceiver, pg_db: str
) -> None:
    hubs = _hubs(tmp_path, receiver, pg_db)
    try:
        agent, reader = await _start_adding_credentials(hubs, pg_db)
        await _post(hubs, agent, range(12))
        expected = await asyncio.to_thread(_change_ids, hubs[0].url, reader.token)
        delivering = await _delivered_once_by_one_hub(hubs, receiver, reader, expected)

        await _terminate_lock_connection(pg_db)  # the hub runs on; its lock is gone
        await _until(
            "the hub notices it lost its lock",
            lambda: asyncio.to_thread(lambda: "lost its deliverer lock and stopped delivering it" in delivering.log),
        )
        await _post(hubs, agent, range(12, 24))
        expected |= await asyncio.to_thread(_change_ids, hubs[0].url, reader.token)
        assert len(expected) == 24
        await _delivered_once_by_one_hub(hubs, receiver, reader, expected)  # whichever hub took the lock again
    finally:
        for hub in hubs:
            hub.close()
    for hub in hubs:
        assert "Traceback" not in hub.log and SECRET not in hub.log
        assert "ended by itself" not in hub.log  # a hub that stops ends its loops: that is not news


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)


async def _terminate_lock_connection_after_its_check(pg_db: str) -> None:
    """As ``_terminate_lock_connection``, the moment after the holding hub checked its lock (its ``SELECT 1`` on the
    lock connection, every ``lease_retry_s``): the longest it can go on without noticing the lock is gone."""
    (schema,) = parse_qs(urlsplit(pg_db).query)["search_path"]
    conn = await asyncpg.connect(PG_URL)
    try:
        key = await conn.fetchval("SELECT hashtextextended('shelfsync.webhook.deliverer.' || $1 || '.shop', 0)", schema)
        (pid,) = [
            r["pid"] for r in await conn.fetch(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                "AND classid::bigint = $1 AND objid::bigint = $2",
                (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF,
            )
        ]  # fmt: skip
        checked = "SELECT state_change FROM pg_stat_activity WHERE pid = $1"
        before = await conn.fetchval(checked, pid)
        async with asyncio.timeout(BOUND_S):
            while await conn.fetchval(checked, pid) == before:
                await asyncio.sleep(0.01)
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


async def test_a_hub_that_lost_its_deliverer_lock_delivers_nothing_more_while_another_takes_over(
    tmp_path: Path, receiver: CountingReceiver, pg_db: str
) -> None:
    """The deliverer's lock connection ends (a failover, an operator's pg_terminate_backend, the server's
    max_connections full of others, so it cannot come back) while changes keep coming. A hub takes the lock at its
    next try (the other, or the one that lost it, on a new connection); the hub that lost it used to go on
    delivering until its own next check of the lock, up to ``lease_retry_s`` later — two hubs delivering the same
    changes side by side, dozens of them twice. It checks the lock's connection before every delivery: only a
    batch on its way at that moment may arrive twice."""
    hubs = _hubs(tmp_path, receiver, pg_db)
    try:
        agent, reader = await _start_adding_credentials(hubs, pg_db)
        await _post(hubs, agent, range(8))
        expected = await asyncio.to_thread(_change_ids, hubs[0].url, reader.token)
        await _delivered_once_by_one_hub(hubs, receiver, reader, expected)

        posting = asyncio.ensure_future(_post(hubs, agent, range(8, 400)))  # changes keep coming meanwhile
        try:
            await _terminate_lock_connection_after_its_check(pg_db)
            await _until(  # either hub: the one that lost it may take it again first, from the saved cursor
                "a hub takes the webhook again",
                lambda: asyncio.to_thread(
                    lambda: sum(h.log.count("shop: this hub delivers it now") for h in hubs) >= 2
                ),
            )
            await asyncio.sleep(TURNS_S)  # both hubs' next checks of the lock
        finally:
            posting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await posting
        expected = await asyncio.to_thread(_change_ids, hubs[0].url, reader.token)

        async def every_change_arrived() -> bool:
            return expected <= set(receiver.delivered)

        await _until("every change delivered", every_change_arrived)
        twice = sorted(cid for cid, n in receiver.delivered.items() if n > 1)
        assert len(twice) <= 4, f"changes delivered twice (batch_max is 4): {twice}"
    finally:
        for hub in hubs:
            hub.close()
    for hub in hubs:
        assert "Traceback" not in hub.log and SECRET not in hub.log


STALE_S = 4  # lease_stale_s of the hubs below: near the least the hub allows with RETRY_S, so the test runs in seconds


def _stale_hubs(tmp_path: Path, receiver: CountingReceiver, pg_db: str) -> list[HubProcess]:
    """As ``_hubs``, with ``lease_stale_s`` at ``STALE_S`` (30 s by default)."""
    config = tmp_path / "hub.toml"
    config.write_text(
        f"[hub]\nlease_stale_s = {STALE_S}\nlease_retry_s = {RETRY_S}\n\n"
        f'[[webhooks]]\nname = "shop"\nurl = "{receiver.url}"\nsecret = "{SECRET}"\nbatch_max = 4\n',
        encoding="utf-8",
    )  # fmt: skip
    return [HubProcess(tmp_path / f"hub-{i}.log", "--config", str(config), db=pg_db, port=free_port()) for i in (1, 2)]


async def test_a_paused_hub_loses_its_webhook_to_another_hub_and_delivers_nothing_when_it_resumes(
    tmp_path: Path, receiver: CountingReceiver, pg_db: str
) -> None:
    """A paused hub (SIGSTOP; or an event loop stuck in a blocking call) keeps its lock connection: its host's kernel
    still answers the TCP keepalives, so PostgreSQL never ended that session nor freed its locks, and the webhook it
    delivered stalled for as long as it stayed paused, the other hub standing by without a word. The holder's
    lock checks (its lock connection's queries, every lease_retry_s) are what prove it alive: the other hub ends a lock
    connection silent for ``lease_stale_s``, says so once, and takes the webhook over. The paused hub, resumed,
    finds its lock gone before delivering anything and stands by."""
    hubs = _stale_hubs(tmp_path, receiver, pg_db)
    paused: HubProcess | None = None
    try:
        agent, reader = await _start_adding_credentials(hubs, pg_db)
        await _post(hubs, agent, range(12))
        expected = await asyncio.to_thread(_change_ids, hubs[0].url, reader.token)
        paused = await _delivered_once_by_one_hub(hubs, receiver, reader, expected)
        (standing_by,) = [h for h in hubs if h is not paused]

        os.kill(paused.pid, signal.SIGSTOP)  # its connections stay open: nothing tells PostgreSQL it went
        await _post([standing_by], agent, range(12, 24))
        expected |= await asyncio.to_thread(_change_ids, standing_by.url, reader.token)
        assert len(expected) == 24

        async def the_other_hub_delivered_the_rest() -> bool:
            view = await asyncio.to_thread(_webhook, standing_by.url, reader.token)
            return expected <= set(receiver.delivered) and view["deliverer"] == "this hub"

        await _until("the standing-by hub takes the paused hub's webhook over", the_other_hub_delivered_the_rest)
        said = [line for line in standing_by.log.splitlines() if "has been silent for" in line]
        assert len(said) == 1, said
        assert "WARNING" in said[0] and "webhook shop" in said[0] and "ended that connection" in said[0], said

        os.kill(paused.pid, signal.SIGCONT)
        resumed, paused = paused, None
        await _until(
            "the resumed hub notices it lost its lock",
            lambda: asyncio.to_thread(lambda: "lost its deliverer lock and stopped delivering it" in resumed.log),
        )
        await _post(hubs, agent, range(24, 36))  # to both hubs: the resumed one sends none of them
        expected |= await asyncio.to_thread(_change_ids, standing_by.url, reader.token)
        assert len(expected) == 36

        async def every_change_arrived() -> bool:
            return expected <= set(receiver.delivered)

        await _until("every change delivered", every_change_arrived)
        await asyncio.sleep(TURNS_S)  # the resumed hub's next checks of its lock: it takes nothing, sends nothing
        assert set(receiver.delivered) == expected
        twice = sorted(cid for cid, n in receiver.delivered.items() if n > 1)
        assert len(twice) <= 4, f"changes delivered twice (batch_max is 4, one batch in flight at the pause): {twice}"
        views = {h.url: (await asyncio.to_thread(_webhook, h.url, reader.token))["deliverer"] for h in hubs}
        assert views == {standing_by.url: "this hub", resumed.url: "another hub"}
        assert receiver.bad_signatures == 0
    finally:
        if paused is not None:
            os.kill(paused.pid, signal.SIGCONT)  # a stopped process would not act on the SIGTERM below
        for hub in hubs:
            hub.close()
    for hub in hubs:
        assert "Traceback" not in hub.log and SECRET not in hub.log
        assert "ended by itself" not in hub.log


def _hub_at(tmp_path: Path, name: str, url: str, pg_db: str) -> HubProcess:
    """A hub whose webhook shop posts to ``url``, its lease_stale_s the least (a paused hub's is taken in seconds)."""
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f"[hub]\nlease_stale_s = {STALE_S}\nlease_retry_s = {RETRY_S}\n\n"
        f'[[webhooks]]\nname = "shop"\nurl = "{url}"\nsecret = "{SECRET}"\nbatch_max = 4\n',
        encoding="utf-8",
    )  # fmt: skip
    return HubProcess(tmp_path / f"{name}.log", "--config", str(config), db=pg_db, port=free_port())


async def test_hubs_started_with_a_webhook_moved_start_its_feed_again_once_and_a_hub_on_the_old_config_stands_aside(
    tmp_path: Path, receiver: CountingReceiver, pg_db: str
) -> None:
    """The shop's endpoint moved: two hubs started with the new url beside the one still on the old (a rolling
    restart). Once a new one takes the webhook (the old one paused past lease_stale_s), one of them starts its feed
    from the first change again, with one warning, and the new receiver gets every change once — the other new hub,
    taking over later, does not start it again. The hub on the old config, resumed, never sends the old receiver
    anything more: left alone with the webhook, it stands aside and says why, rather than start the feed again to
    the old receiver."""
    moved = CountingReceiver()
    await moved.start()
    old = _hub_at(tmp_path, "old", receiver.url, pg_db)
    new = [_hub_at(tmp_path, f"new-{i}", moved.url, pg_db) for i in (1, 2)]
    paused: HubProcess | None = None
    try:
        agent, reader = await _start_adding_credentials([old], pg_db)
        await _post([old], agent, range(8))
        expected = await asyncio.to_thread(_change_ids, old.url, reader.token)
        await _delivered_once_by_one_hub([old], receiver, reader, expected)
        await _start(new)
        for hub in new:  # standing by: each says what it would change
            await _until("the new hubs say their url differs", lambda h=hub: asyncio.to_thread(
                lambda: "this hub's config changes its url" in h.log))  # fmt: skip

        os.kill(old.pid, signal.SIGSTOP)
        paused = old
        await _until("the moved receiver gets every change", lambda: _async(expected <= set(moved.delivered)))
        os.kill(old.pid, signal.SIGCONT)
        paused = None
        assert not [cid for cid, n in moved.delivered.items() if n > 1]
        said = [line for hub in new for line in hub.log.splitlines() if "changed since it last ran" in line]
        assert len(said) == 1 and "WARNING" in said[0], said
        assert f"webhook shop: its url ({receiver.url} to {moved.url})" in said[0]

        (first,) = [h for h in new if (await asyncio.to_thread(_webhook, h.url, reader.token))["deliverer"] == "this hub"]
        (second,) = [h for h in new if h is not first]
        await asyncio.to_thread(first.kill)  # the other new hub (or the old one, which stands aside) takes it over
        await _post([second], agent, range(8, 16))
        expected |= await asyncio.to_thread(_change_ids, second.url, reader.token)
        await _until("the other new hub delivers the rest", lambda: _async(expected <= set(moved.delivered)))
        twice = sorted(cid for cid, n in moved.delivered.items() if n > 1)
        assert max(twice, default=8) <= 8 and len(twice) <= 4, f"not started again, one batch in flight: {twice}"

        await asyncio.to_thread(second.kill)  # the old hub alone: it takes the webhook and leaves it
        await _post([old], agent, range(16, 20))
        aside = "another hub sharing the database, started after this one, delivers it with another url"
        await _until("the old hub says it stands aside", lambda: asyncio.to_thread(lambda: aside in old.log))
        await asyncio.sleep(TURNS_S)  # turns of its lead loop more: it takes nothing again
        assert set(receiver.delivered) == set(range(1, 9)), "the old receiver is sent nothing after the move"
        view = await asyncio.to_thread(_webhook, old.url, reader.token)
        assert view["deliverer"] == "another hub" and aside in view["last_error"], view
        assert old.log.count(aside) == 1

        again = _hub_at(tmp_path, "new-3", moved.url, pg_db)  # a new hub on the new config delivers the rest
        new.append(again)
        await _start([again])
        await _until("a new hub delivers what the old one left", lambda: _async(
            set(range(1, 21)) <= set(moved.delivered)))  # fmt: skip
        assert "changed since it last ran" not in again.log
    finally:
        if paused is not None:
            os.kill(paused.pid, signal.SIGCONT)
        for hub in [old, *new]:
            hub.close()
        await moved.stop()
    for hub in [old, *new]:
        assert "Traceback" not in hub.log and SECRET not in hub.log
        assert "ended by itself" not in hub.log


async def _async(value: bool) -> bool:
    return value


def _metrics(url: str, token: str) -> dict[str, float]:
    """GET /metrics as Prometheus scrapes it: the webhook's samples by name."""
    req = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    return {
        line.split("{", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("shelfsync_webhook_") and '{name="shop"}' in line
    }


async def test_hubs_started_in_turn_on_alternating_configs_start_the_feed_again_once_each_and_nobody_delivering_shows(
    tmp_path: Path, receiver: CountingReceiver, pg_db: str
) -> None:
    """Hub Y (url B) started beside hub X (url A) takes the webhook over and starts its feed again; a hub X2 started
    after it on url A takes it over from Y (paused past lease_stale_s) and starts it again: each start, once, and
    the hub that does says its config is the newest. Found: Y, resumed and handed the webhook back when X2 stopped,
    started the feed again too (it still took A for the settings it was newer than), so two hubs on alternating
    configs sent the whole feed again at every handover. Y stands aside instead: nobody delivers, and /metrics says
    so (shelfsync_webhook_aside 1, shelfsync_webhook_delivering 0), where failures alone said nothing wrong."""
    moved = CountingReceiver()
    await moved.start()
    x = _hub_at(tmp_path, "x", receiver.url, pg_db)
    y = _hub_at(tmp_path, "y", moved.url, pg_db)
    x2 = _hub_at(tmp_path, "x2", receiver.url, pg_db)
    paused: HubProcess | None = None
    reset = "changed since it last ran"
    try:
        agent, reader = await _start_adding_credentials([x], pg_db)
        await _post([x], agent, range(4))
        expected = await asyncio.to_thread(_change_ids, x.url, reader.token)
        await _until("hub X delivers to A", lambda: _async(expected <= set(receiver.delivered)))
        await _start([y])
        await _until("hub Y says its url differs", lambda: asyncio.to_thread(
            lambda: "this hub's config changes its url" in y.log))  # fmt: skip
        await asyncio.to_thread(x.kill)
        await _until("hub Y delivers everything to B", lambda: _async(expected <= set(moved.delivered)))
        seen = await asyncio.to_thread(_metrics, y.url, reader.token)
        assert (seen["shelfsync_webhook_delivering"], seen["shelfsync_webhook_aside"]) == (1, 0), seen
        assert (await asyncio.to_thread(_webhook, y.url, reader.token))["aside"] is False

        await _start([x2])
        await _until("hub X2 says its url differs", lambda: asyncio.to_thread(
            lambda: "this hub's config changes its url" in x2.log))  # fmt: skip
        os.kill(y.pid, signal.SIGSTOP)
        paused = y
        before = Counter(receiver.delivered)
        await _until("hub X2 starts the feed again to A", lambda: _async(
            all(receiver.delivered[c] > before[c] for c in expected)))  # fmt: skip
        os.kill(y.pid, signal.SIGCONT)
        paused = None
        newest = "this hub's config is the newest"
        for hub in (y, x2):
            (said,) = [line for line in hub.log.splitlines() if reset in line]
            assert "WARNING" in said and newest in said, said

        await asyncio.to_thread(x2.kill)  # Y alone, started before X2: it leaves the webhook to X2's config
        aside = "another hub sharing the database, started after this one, delivers it with another url"
        await _until("hub Y stands aside", lambda: asyncio.to_thread(lambda: aside in y.log))
        await _post([y], agent, range(4, 6))
        await asyncio.sleep(TURNS_S)  # turns of its lead loop (lease_retry_s): it takes nothing again
        assert y.log.count(reset) == 1, "hub Y started the feed again when it took the webhook back"
        assert max(moved.delivered.values()) == 1 and set(moved.delivered) == expected
        assert set(receiver.delivered) == expected, "nobody delivers under the old config"
        seen = await asyncio.to_thread(_metrics, y.url, reader.token)
        assert seen["shelfsync_webhook_aside"] == 1 and seen["shelfsync_webhook_delivering"] == 0, seen
        assert seen["shelfsync_webhook_failures"] == 0, seen  # ShelfsyncWebhookFailing stays quiet
        assert seen["shelfsync_webhook_lag_changes"] == 2, seen  # what nobody delivered
        view = await asyncio.to_thread(_webhook, y.url, reader.token)
        assert view["deliverer"] == "another hub" and view["aside"] is True and aside in view["last_error"], view
    finally:
        if paused is not None:
            os.kill(paused.pid, signal.SIGCONT)
        for hub in (x, y, x2):
            hub.close()
        await moved.stop()
    for hub in (x, y, x2):
        assert "Traceback" not in hub.log and SECRET not in hub.log
        assert "ended by itself" not in hub.log
    _alerts_fired_on(seen, tmp_path)


def _alerts_fired_on(scraped: dict[str, float], tmp_path: Path) -> None:
    """What the hub left alone with the webhook serves, fed to promtool as its scrapes for 20 minutes: the
    undelivered webhook's alert fires after its 5, the failing one's stays quiet."""
    tool = promtool()
    target = {"job": "shelfsync-hub", "instance": "hub-1:8470", "name": "shop"}
    series = [{"series": f"{name}{labels(target)}", "values": f"{value:g}x20"} for name, value in scraped.items()]
    said = re.search(r"- alert: ShelfsyncWebhookUndelivered\n(?:.*\n)*?\s+summary: (\".*\")\n\s+description: (\".*\")\n",
                     RULES.read_text())  # fmt: skip
    assert said is not None
    summary, description = (json.loads(text).replace("{{ $labels.name }}", "shop") for text in said.groups())
    fired = {"exp_labels": {"severity": "critical", "name": "shop"},
             "exp_annotations": {"summary": summary, "description": description}}  # fmt: skip
    checks = [{"eval_time": "3m", "alertname": "ShelfsyncWebhookUndelivered", "exp_alerts": []},
              {"eval_time": "10m", "alertname": "ShelfsyncWebhookUndelivered", "exp_alerts": [fired]},
              {"eval_time": "20m", "alertname": "ShelfsyncWebhookFailing", "exp_alerts": []}]  # fmt: skip
    shutil.copyfile(RULES, tmp_path / RULES.name)
    tests = tmp_path / "scraped.test.yml"  # JSON is YAML
    tests.write_text(json.dumps({"rule_files": [RULES.name], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": series, "alert_rule_test": checks}]}))  # fmt: skip
    done = subprocess.run([tool, "test", "rules", tests.name], cwd=tmp_path, capture_output=True, check=False,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
