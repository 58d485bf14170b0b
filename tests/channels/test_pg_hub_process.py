"""Real PostgreSQL hub processes with a ``[[channel]]`` table push what the Square emulator shows.

One hub (``python -m hub serve --db postgresql://…``) pushes a movement; two hubs on one database: exactly
one pushes the channel (``GET /v1/channels`` says which), and when it stops the other takes over from the
cursor it saved — nothing pushed again, nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from tests.channels.emulators.square import SquareEmulator
from tests.channels.helpers import wait_until
from tests.harness.credentials import Credential, add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json
from tests.harness.pg import fresh_schema

TAKEOVER_S = 30.0  # bound on a standing-by hub taking the channel over (it retries every RETRY_S)
# lease_retry_s of every hub here (3 s by default): a standing-by hub tries to take the channel, and the pushing hub
# checks its lock, this often, so each handover takes a fraction of a second rather than up to 3 s
RETRY_S = 0.5
TURNS_S = 4 * RETRY_S  # a few turns of a hub's lead loop: what it does, or does not, at its next checks
STALE_S = 4  # lease_stale_s where a test sets it: near the least the hub allows with RETRY_S (30 s by default)
RECONCILE_S = 10  # reconcile_s where a test sets it: the least the hub allows


@pytest.fixture
async def pg_db(pg_server: str) -> AsyncIterator[str]:
    async with fresh_schema("ch") as url:
        yield url


def _post_events(url: str, token: str, events: list[dict[str, object]]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}/v1/events", data=json.dumps({"events": events}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def _move(url: str, token: str, event_id: str, kind: str, qty: int, minute: int) -> None:
    answer = _post_events(url, token, [{"id": event_id, "location": "S1", "sku": "SKU-1", "kind": kind, "qty": qty,
                                        "occurred_at": f"2026-01-01T00:{minute:02d}:00Z"}])  # fmt: skip
    assert answer["applied"] == 1, answer


def _channel(url: str, token: str) -> dict[str, Any]:
    (channel,) = get_json(f"{url}/v1/channels", token)["channels"]
    assert isinstance(channel, dict)
    return channel


def _config(tmp_path: Path, square: SquareEmulator, location_id: str, hub: str = "") -> Path:
    """The hubs' config: ``lease_retry_s`` at ``RETRY_S`` and ``hub`` in its ``[hub]`` table, channel pickup."""
    config = tmp_path / "hub.toml"
    config.write_text(
        f"[hub]\nlease_retry_s = {RETRY_S}\n{hub}\n"
        f'[[channel]]\nname = "pickup"\nkind = "square"\nurl = "{square.url}"\nsecret_env = "SQUARE_TOKEN"\n'
        f'pool = {{ S1 = "{location_id}" }}\nbuffer = 1\n',
        encoding="utf-8",
    )
    return config


async def _leased_channel(
    tmp_path: Path, square: SquareEmulator, pg_db: str, monkeypatch: pytest.MonkeyPatch, more: str = ""
) -> tuple[str, str, Credential, Credential, Path]:
    """A Square location and variation, a store's and a reader's credentials, and a config with ``lease_stale_s =
    STALE_S`` (``more`` appended to its channel table): the location, variation, credentials and config's path."""
    monkeypatch.setenv("SQUARE_TOKEN", square.token)
    location_id = square.add_location()
    variation = square.add_variation("SKU-1")
    agent = await asyncio.to_thread(add_credential, pg_db, "S1")
    reader = await asyncio.to_thread(add_credential, pg_db, role="reader")
    config = _config(tmp_path, square, location_id, hub=f"lease_stale_s = {STALE_S}\n")
    config.write_text(config.read_text(encoding="utf-8") + more, encoding="utf-8")
    return location_id, variation, agent, reader, config


def _two_hubs(tmp_path: Path, config: Path, pg_db: str) -> tuple[HubProcess, HubProcess]:
    """Two hub processes of one config and database, not started, logging to hub-1.log and hub-2.log."""
    return (
        HubProcess(tmp_path / "hub-1.log", "--config", str(config), db=pg_db, port=free_port()),
        HubProcess(tmp_path / "hub-2.log", "--config", str(config), db=pg_db, port=free_port()),
    )


async def _first_pushing(
    first: HubProcess, second: HubProcess, agent: Credential, reader: Credential,
    shown: Callable[[int], Awaitable[bool]],
) -> None:  # fmt: skip
    """The first hub started and pushing the channel (6 received: Square shows 5, less the buffer of 1), then the
    second started, which sees another hub push it."""
    await asyncio.to_thread(first.start)
    await asyncio.to_thread(_move, first.url, agent.token, "delivery-1", "receive", 6, 0)
    await wait_until(lambda: shown(5), "Square shows the 6 received less the buffer of 1")
    await asyncio.to_thread(second.start)
    assert (await asyncio.to_thread(_channel, second.url, reader.token))["pusher"] == "another hub"


def assert_logs_clean(tmp_path: Path) -> None:
    """Neither hub's log holds a traceback or a job that ended by itself."""
    for name in ("hub-1.log", "hub-2.log"):
        text = (tmp_path / name).read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in text and "ended by itself" not in text, name


async def test_two_postgresql_hubs_push_a_channel_one_at_a_time_and_hand_it_over(
    tmp_path: Path, square: SquareEmulator, pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQUARE_TOKEN", square.token)
    location_id = square.add_location()
    variation = square.add_variation("SKU-1")
    agent = await asyncio.to_thread(add_credential, pg_db, "S1")
    reader = await asyncio.to_thread(add_credential, pg_db, role="reader")
    config = _config(tmp_path, square, location_id)

    async def shown(expected: int) -> bool:
        return square.quantity(variation, location_id) == expected

    first, second = _two_hubs(tmp_path, config, pg_db)
    try:
        await asyncio.to_thread(first.start)

        async def first_push_done() -> bool:  # every mapped level goes out once after the mapping is loaded
            return (await asyncio.to_thread(_channel, first.url, reader.token))["last_push_ms"] is not None

        await wait_until(first_push_done, "the hub pushed the levels of the mapping it loaded")
        await asyncio.to_thread(_move, first.url, agent.token, "delivery-1", "receive", 6, 0)
        await wait_until(lambda: shown(5), "Square shows the 6 received less the buffer of 1")
        assert (await asyncio.to_thread(_channel, first.url, reader.token))["pusher"] == "this hub"

        await asyncio.to_thread(second.start)
        await asyncio.to_thread(_move, second.url, agent.token, "sale-1", "sale", -2, 1)  # taken by the other hub
        await wait_until(lambda: shown(3), "the pushing hub pushes a sale another hub took")
        views = [await asyncio.to_thread(_channel, h.url, reader.token) for h in (first, second)]
        assert [v["pusher"] for v in views] == ["this hub", "another hub"]

        async def second_caught_up() -> bool:
            view = await asyncio.to_thread(_channel, second.url, reader.token)
            return bool(view["cursor"] == views[0]["cursor"])

        await wait_until(second_caught_up, "the standing-by hub shows the saved cursor")
        applied = square.stats.batches_applied

        await asyncio.to_thread(first.stop)  # its pusher lock goes with its connection

        async def second_pushes() -> bool:
            # the pusher it starts shows itself a moment before it has read the saved cursor: wait for both
            view = await asyncio.to_thread(_channel, second.url, reader.token)
            return view["pusher"] == "this hub" and int(view["cursor"]) >= int(views[0]["cursor"])

        await wait_until(second_pushes, "the other hub takes the channel over from the saved cursor", TAKEOVER_S)
        assert square.stats.batches_applied == applied  # nothing confirmed before is pushed again
        await asyncio.to_thread(_move, second.url, agent.token, "sale-2", "sale", -1, 2)
        await wait_until(lambda: shown(2), "the hub that took over pushes the next sale")
        assert square.stats.batches_applied == applied + 1
    finally:
        for hub in (first, second):
            hub.close()
    for name in ("hub-1.log", "hub-2.log"):
        text = (tmp_path / name).read_text(encoding="utf-8", errors="replace")
        assert square.token not in text and "Traceback" not in text
        assert "ended by itself" not in text  # a hub that stops ends its pusher: that is not news
        assert "shelfsync@" not in text or ":***@" in text  # the database password is never logged
    assert "channel pickup: this hub pushes it now" in (tmp_path / "hub-2.log").read_text(encoding="utf-8")


async def test_a_paused_pushing_hub_loses_its_channel_to_the_other_hub_and_pushes_nothing_when_it_resumes(
    tmp_path: Path, square: SquareEmulator, pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pushing hub paused (SIGSTOP) kept its lock connection, and with it the channel's pusher lock, for as long
    as it stayed paused: nobody pushed the channel. Silent past ``lease_stale_s``, its lock connection is ended by
    the other hub, which pushes from the saved cursor; resumed, the paused hub pushes nothing more."""
    location_id, variation, agent, reader, config = await _leased_channel(tmp_path, square, pg_db, monkeypatch)

    async def shown(expected: int) -> bool:
        return square.quantity(variation, location_id) == expected

    first, second = _two_hubs(tmp_path, config, pg_db)
    paused = False
    try:
        await _first_pushing(first, second, agent, reader, shown)

        os.kill(first.pid, signal.SIGSTOP)
        paused = True
        await asyncio.to_thread(_move, second.url, agent.token, "sale-1", "sale", -2, 1)
        await wait_until(lambda: shown(3), "the other hub takes the paused hub's channel over", TAKEOVER_S + 30.0)
        assert "has been silent for" in second.log and "The pusher lock of channel pickup" in second.log

        os.kill(first.pid, signal.SIGCONT)
        paused = False
        await wait_until(
            lambda: asyncio.to_thread(lambda: "lost its pusher lock and stopped pushing it" in first.log),
            "the resumed hub notices it lost its lock",
        )
        applied = square.stats.batches_applied
        await asyncio.to_thread(_move, first.url, agent.token, "sale-2", "sale", -1, 2)  # to the resumed hub
        await wait_until(lambda: shown(2), "the hub that took over pushes a sale the resumed hub took")
        views = [await asyncio.to_thread(_channel, h.url, reader.token) for h in (first, second)]
        assert [v["pusher"] for v in views] == ["another hub", "this hub"]
        assert square.stats.batches_applied == applied + 1  # one push of it: the resumed hub's pusher is gone
        assert "has been stuck" not in first.log  # it lost the lock: its loops are not blamed for the pause
    finally:
        if paused:
            os.kill(first.pid, signal.SIGCONT)  # a stopped process would not act on the SIGTERM below
        for hub in (first, second):
            hub.close()
    assert_logs_clean(tmp_path)


async def test_a_hub_paused_past_lease_stale_s_with_no_other_hub_keeps_its_channel_when_it_resumes(
    tmp_path: Path, square: SquareEmulator, pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only hub, paused (SIGSTOP) past ``lease_stale_s``: no other hub took its channel, yet when it resumed
    it took its pusher's silence over the pause for a stuck pusher, gave the lock back and left the channel
    unpushed for a backoff. A whole hub that did not run is not a stuck job: it keeps the channel and pushes the
    next movement with the pusher it had (its reconciler, due every 10 s, has the shortest bound of its loops)."""
    location_id, variation, agent, reader, config = await _leased_channel(
        tmp_path, square, pg_db, monkeypatch, more=f"reconcile_s = {RECONCILE_S}\n"
    )

    async def shown(expected: int) -> bool:
        return square.quantity(variation, location_id) == expected

    first = HubProcess(tmp_path / "hub-1.log", "--config", str(config), db=pg_db, port=free_port())
    paused = False
    try:
        await asyncio.to_thread(first.start)
        await asyncio.to_thread(_move, first.url, agent.token, "delivery-1", "receive", 6, 0)
        await wait_until(lambda: shown(5), "Square shows the 6 received less the buffer of 1")

        os.kill(first.pid, signal.SIGSTOP)
        paused = True
        # past lease_stale_s beyond the bound its reconciler gave (RECONCILE_S at most), with 5 s to spare
        await asyncio.sleep(RECONCILE_S + STALE_S + 5.0)
        os.kill(first.pid, signal.SIGCONT)
        paused = False
        await asyncio.to_thread(_move, first.url, agent.token, "sale-1", "sale", -2, 1)
        await wait_until(lambda: shown(3), "the resumed hub pushes the next sale")
        await asyncio.sleep(TURNS_S)  # more turns of its lead loop (lease_retry_s): what it does after resuming
        assert (await asyncio.to_thread(_channel, first.url, reader.token))["pusher"] == "this hub"
    finally:
        if paused:
            os.kill(first.pid, signal.SIGCONT)
        first.close()
    text = (tmp_path / "hub-1.log").read_text(encoding="utf-8", errors="replace")
    assert "has been stuck" not in text and "lost its pusher lock" not in text, text
    assert text.count("channel pickup: this hub pushes it now") == 1, text
    assert "Traceback" not in text


async def test_a_hub_whose_pusher_is_stuck_gives_the_channel_up_and_the_other_hub_pushes_it(
    tmp_path: Path, square: SquareEmulator, pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub whose pusher's loop hangs on an await with no time limit, while the hub itself runs on (its lead loop
    checks its locks every few seconds, so its lock connection is never silent), kept the channel's pusher lock for
    ever: nobody pushed the channel. The pusher's own heartbeat, silent past ``lease_stale_s``, makes that hub stop
    it and give the lock back, and the other hub pushes from the saved cursor."""
    stuck = tmp_path / "stuck"
    monkeypatch.setenv("SHELFSYNC_TEST_STUCK", str(stuck))
    location_id, variation, agent, reader, config = await _leased_channel(tmp_path, square, pg_db, monkeypatch)

    async def shown(expected: int) -> bool:
        return square.quantity(variation, location_id) == expected

    hanging = (sys.executable, "-m", "tests.channels.stuck_pusher_hub")
    first = HubProcess(tmp_path / "hub-1.log", "--config", str(config), db=pg_db, port=free_port(), python=hanging)
    second = HubProcess(tmp_path / "hub-2.log", "--config", str(config), db=pg_db, port=free_port())
    try:
        await _first_pushing(first, second, agent, reader, shown)

        stuck.touch()  # the first hub's next push hangs
        await asyncio.to_thread(_move, second.url, agent.token, "sale-1", "sale", -2, 1)
        await wait_until(lambda: shown(3), "the other hub takes the stuck pusher's channel over", TAKEOVER_S + 30.0)
        assert "channel pickup: pushing has been stuck for" in first.log
        assert "gave its pusher lock back for another hub" in first.log
        assert "channel pickup: this hub pushes it now" in second.log
        assert (await asyncio.to_thread(_channel, first.url, reader.token))["pusher"] == "another hub"
    finally:
        for hub in (first, second):
            hub.close()
    assert_logs_clean(tmp_path)


async def test_a_hub_whose_channels_lead_loop_is_stuck_loses_the_channel_while_it_keeps_delivering_webhooks(
    tmp_path: Path, square: SquareEmulator, pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The channels' and the webhooks' locks were held on one lock connection: with the channels' lead loop stuck
    (here: stopping a pusher whose hang swallows its cancellation), the webhooks' lead loop, checking its locks,
    kept that connection fresh, so no other hub ever took the channel. Each kind has its own connection now: the
    channels' falls silent, the other hub ends it and pushes, and the stuck hub keeps delivering its webhook."""
    monkeypatch.setenv("SQUARE_TOKEN", square.token)
    stuck = tmp_path / "stuck"
    monkeypatch.setenv("SHELFSYNC_TEST_STUCK", str(stuck))
    monkeypatch.setenv("SHELFSYNC_TEST_STUCK_UNCANCELLABLE", "1")
    location_id = square.add_location()
    variation = square.add_variation("SKU-1")
    agent = await asyncio.to_thread(add_credential, pg_db, "S1")
    reader = await asyncio.to_thread(add_credential, pg_db, role="reader")
    delivered: list[int] = []

    async def receive(request: web.Request) -> web.Response:
        delivered.append(len((await request.json())["changes"]))  # changes per batch
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    runner = web.AppRunner(receiver)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    config = _config(tmp_path, square, location_id, hub=f"lease_stale_s = {STALE_S}\n")
    config.write_text(
        config.read_text(encoding="utf-8")
        + f'\n[[webhooks]]\nname = "shop"\nurl = "http://127.0.0.1:{port}/hook"\nsecret = "s3cret-for-the-web-shop"\n',
        encoding="utf-8",
    )  # fmt: skip

    async def shown(expected: int) -> bool:
        return square.quantity(variation, location_id) == expected

    def webhook(url: str) -> dict[str, Any]:
        (hook,) = get_json(f"{url}/v1/webhooks", reader.token)["webhooks"]
        assert isinstance(hook, dict)
        return hook

    hanging = (sys.executable, "-m", "tests.channels.stuck_pusher_hub")
    first = HubProcess(tmp_path / "hub-1.log", "--config", str(config), db=pg_db, port=free_port(), python=hanging)
    second = HubProcess(tmp_path / "hub-2.log", "--config", str(config), db=pg_db, port=free_port())
    try:
        await _first_pushing(first, second, agent, reader, shown)
        assert (await asyncio.to_thread(webhook, first.url))["deliverer"] == "this hub"

        stuck.touch()  # the first hub's next push hangs, and so does stopping it
        await asyncio.to_thread(_move, second.url, agent.token, "sale-1", "sale", -2, 1)
        await wait_until(lambda: shown(3), "the other hub takes the stuck hub's channel over", TAKEOVER_S + 60.0)
        assert "The pusher lock of channel pickup is held by a hub whose lock connection" in second.log
        seen = len(delivered)
        await asyncio.to_thread(_move, second.url, agent.token, "sale-2", "sale", -1, 2)
        await wait_until(lambda: shown(2), "the hub that took over pushes the next sale")

        async def delivered_more() -> bool:
            return len(delivered) > seen

        await wait_until(delivered_more, "the stuck hub's webhook goes on being delivered")
        assert (await asyncio.to_thread(webhook, first.url))["deliverer"] == "this hub"
        assert "deliverer lock" not in second.log  # the webhook's lock connection was never ended
    finally:
        first.kill()  # its stuck pusher would not stop on SIGTERM
        second.close()
        await runner.cleanup()


# The backend holding the pusher lock of channel $1 in the connection's schema (hub.storage.postgres.leases's key).
PUSHER_LOCK_HOLDER_SQL = """
WITH k AS (SELECT hashtextextended('shelfsync.channel.pusher.' || current_schema() || '.' || $1, 0) AS key)
SELECT l.pid FROM pg_locks l, k
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid::bigint = (k.key >> 32) & 4294967295 AND l.objid::bigint = k.key & 4294967295
"""


def _reconcile(url: str, token: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"{url}/v1/channels/pickup/reconcile", headers={"Authorization": f"Bearer {token}"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_a_reconciliation_asked_of_a_hub_that_loses_the_channel_meanwhile_stops_with_it(
    tmp_path: Path, square: SquareEmulator, pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``POST /v1/channels/{name}/reconcile`` reconciled in the request's own task, which nothing watched or
    stopped: while Square took its time answering the read (within ``timeout_s``), the hub lost the channel's
    pusher lock (here: its lock connection ended, as a failover or an operator does), stopped its pusher and its
    reconciler, and another hub could push the channel; yet the request's reconciliation went on, stored what it
    found and answered 200 for a channel this hub no longer ran. It is work of the channel's job now: stopped
    with it, and answered 503, nothing stored."""
    location_id, variation, agent, reader, config = await _leased_channel(
        tmp_path, square, pg_db, monkeypatch, more="timeout_s = 60\nreconcile_s = 0\n"
    )
    admin = await asyncio.to_thread(add_credential, pg_db, role="admin")

    async def shown(expected: int) -> bool:
        return square.quantity(variation, location_id) == expected

    first, second = _two_hubs(tmp_path, config, pg_db)
    try:
        await _first_pushing(first, second, agent, reader, shown)

        square.drift(variation, location_id, 9)  # a divergence for the reconciliation to find
        reads = square.fault_at("/v2/inventory/counts/batch-retrieve", "slow")
        reads.slow_s = 30.0  # within timeout_s (60 s): slow, not failed
        asked = asyncio.ensure_future(asyncio.to_thread(_reconcile, first.url, admin.token))
        await wait_until(lambda: _now(reads.seen == ["slow"]), "the reconciliation reads the levels back")
        conn = await asyncpg.connect(pg_db)
        try:
            holder = await conn.fetchval(PUSHER_LOCK_HOLDER_SQL, "pickup")
            assert holder is not None and await conn.fetchval("SELECT pg_terminate_backend($1)", holder)
        finally:
            await conn.close()
        status, answer = await asked
        assert status == 503, answer
        assert answer["detail"].startswith("channel pickup was not reconciled: this hub stopped running the channel")
        await wait_until(  # said once the job has stopped, which may come after the answer
            lambda: asyncio.to_thread(lambda: "lost its pusher lock and stopped pushing it" in first.log),
            "the hub says it lost the channel's pusher lock",
        )
        page = get_json(f"{first.url}/v1/channels/pickup/divergences", reader.token)
        assert page["divergences"] == []  # nothing stored by a hub that no longer ran the channel
    finally:
        for hub in (first, second):
            hub.close()
    assert_logs_clean(tmp_path)


async def test_a_pusher_waiting_while_a_slow_reconciliation_asked_reads_the_listing_is_not_taken_for_stuck(
    tmp_path: Path, square: SquareEmulator, pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconciliation asked for over the API reads the channel's listing holding the pusher's lock (to map moved
    items again first); Square answering it slowly, within ``timeout_s``, made the pusher, waiting for that lock to
    push a sale, look silent past ``lease_stale_s``: its hub gave the channel up as "pushing has been stuck" and
    the reconciliation was lost with it. The pusher waits on work of its own job that is watched itself: the
    reconciliation is answered, the sale pushed after it, and the channel stays where it was."""
    location_id, variation, agent, reader, config = await _leased_channel(
        tmp_path, square, pg_db, monkeypatch, more="timeout_s = 60\nreconcile_s = 0\n"
    )
    admin = await asyncio.to_thread(add_credential, pg_db, role="admin")

    async def shown(expected: int) -> bool:
        return square.quantity(variation, location_id) == expected

    first, second = _two_hubs(tmp_path, config, pg_db)
    try:
        await _first_pushing(first, second, agent, reader, shown)

        listing = square.fault_at("/v2/catalog/search", "slow")
        listing.slow_s = 3.0 * STALE_S  # well past lease_stale_s, within timeout_s (60 s)
        asked = asyncio.ensure_future(asyncio.to_thread(_reconcile, first.url, admin.token))
        await wait_until(lambda: _now(listing.seen == ["slow"]), "the reconciliation reads the listing")
        await asyncio.to_thread(_move, first.url, agent.token, "sale-1", "sale", -2, 1)
        status, answer = await asked
        assert status == 200, answer
        await wait_until(lambda: shown(3), "the pusher pushes the sale once the listing is read")
        views = [await asyncio.to_thread(_channel, h.url, reader.token) for h in (first, second)]
        assert [v["pusher"] for v in views] == ["this hub", "another hub"]
    finally:
        for hub in (first, second):
            hub.close()
    assert_logs_clean(tmp_path)
    for name in ("hub-1.log", "hub-2.log"):
        assert "has been stuck" not in (tmp_path / name).read_text(encoding="utf-8")


async def _now(value: bool) -> bool:
    return value


async def test_a_slow_push_within_its_timeout_is_not_taken_for_a_stuck_pusher(
    tmp_path: Path, square: SquareEmulator, pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Square answering a push after longer than ``lease_stale_s``, but within the channel's ``timeout_s``: the
    pusher is alive (its request says how long it may take), so the hub keeps pushing and no other hub takes it."""
    location_id, variation, agent, reader, config = await _leased_channel(
        tmp_path, square, pg_db, monkeypatch, more="timeout_s = 40\nreconcile_s = 0\n"
    )
    square.faults.slow_s = 3.0 * STALE_S  # well past lease_stale_s, within timeout_s

    async def shown(expected: int) -> bool:
        return square.quantity(variation, location_id) == expected

    first, second = _two_hubs(tmp_path, config, pg_db)
    try:
        await _first_pushing(first, second, agent, reader, shown)

        applied = square.stats.batches_applied
        square.faults.queue("slow")
        await asyncio.to_thread(_move, first.url, agent.token, "sale-1", "sale", -2, 1)
        await wait_until(lambda: shown(3), "the slow push is answered", TAKEOVER_S + 30.0)
        assert square.faults.seen == ["slow"] and square.stats.batches_applied == applied + 1
        views = [await asyncio.to_thread(_channel, h.url, reader.token) for h in (first, second)]
        assert [v["pusher"] for v in views] == ["this hub", "another hub"]
    finally:
        for hub in (second, first):  # the standing-by hub first: it would take the channel once the other stopped
            hub.close()
    for name in ("hub-1.log", "hub-2.log"):
        text = (tmp_path / name).read_text(encoding="utf-8", errors="replace")
        assert "Traceback" not in text and "has been stuck" not in text and "silent for" not in text
    assert "this hub pushes it now" not in (tmp_path / "hub-2.log").read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)


async def test_each_hubs_sessions_name_the_hub_and_the_pool_in_pg_stat_activity(
    tmp_path: Path, square: SquareEmulator, pg_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every hub process connected as ``shelfsync-hub``, so an operator looking at ``pg_stat_activity`` on a database
    several hubs share could not tell which hub held a session or a lock, nor what for. Each session names its hub
    (host and process id) and its pool: the requests', the channel state's, and each kind's lock connection."""
    _, _, _, _, config = await _leased_channel(tmp_path, square, pg_db, monkeypatch)
    config.write_text(
        config.read_text(encoding="utf-8")
        + f'\n[[webhooks]]\nname = "shop"\nurl = "http://127.0.0.1:{free_port()}/hook"\nsecret = "s3cret-for-the-shop"\n',
        encoding="utf-8",
    )
    pools = {"requests", "channel-state", "locks-channels", "locks-webhooks"}
    first, second = _two_hubs(tmp_path, config, pg_db)
    conn = await asyncpg.connect(pg_db)
    try:
        for hub in (first, second):
            await asyncio.to_thread(hub.start)

        async def named() -> dict[int, set[str]]:
            """The pools of each of the two hubs' sessions (other hubs may share the server: left out)."""
            rows = await conn.fetch(
                "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'shelfsync-hub %'"
            )
            seen: dict[int, set[str]] = {}
            for row in rows:
                prefix, host_pid, pool = row["application_name"].split(" ", 2)
                host, _, pid = host_pid.rpartition(":")
                if pid in (str(first.pid), str(second.pid)):
                    assert prefix == "shelfsync-hub" and host == socket.gethostname(), row["application_name"]
                    seen.setdefault(int(pid), set()).add(pool)
            return seen

        async def every_pool_named() -> bool:
            seen = await named()
            return all(seen.get(hub.pid, set()) >= pools for hub in (first, second))

        await wait_until(every_pool_named, "each hub's sessions show its host, process id and pool", TAKEOVER_S)
        seen = await named()
        assert seen[first.pid] == seen[second.pid] == pools
    finally:
        await conn.close()
        for hub in (first, second):
            hub.close()
    assert_logs_clean(tmp_path)
