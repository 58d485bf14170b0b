"""The count cache follows the hub's change feed (agent.feed), against a real hub on 127.0.0.1 and a real outbox file.

Movements made at the store's location by other credentials (a channel connector's reservation, an admin's
safety stock) reach the agent's local count — what ``GET /api/v1/skus/{sku}/count`` serves — without any
movement of the store's own; a hub restored from a backup (the agent's cursor is ahead of its feed) makes the
cache follow it again from 0 with one WARNING; and whatever order a sync answer and a feed page are stored in,
no cached row ever goes back to older values, nor counts the agent's own events twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent import Movement, Outbox, Replicator
from agent.feed import CountFeed
from agent.localapi import LocalApiContext, LocalApiServer, StaffDirectory, hash_pin
from agent.sessions import SessionManager, SessionStore
from hub import open_store
from protocol import MSGPACK_CONTENT_TYPE, Kind, SyncRequest, decode_sync_response, encode_sync_request
from tests.harness.inprocess import hub_in_process

LOC = "S001"
SKU = "SKU-1"
BOUND_S = 20.0


@dataclass
class Hub:
    url: str
    db: Path
    agent_id: str  # the store's agent
    token: str
    other: str  # another credential bound to the store's location (a channel connector)
    admin: str
    server: Served


class Served:
    """The hub in this process over ``db`` (``tests.harness.inprocess``); ``close()`` stops it (safe twice)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.url = ""
        self._serving = AsyncExitStack()

    async def start(self) -> Served:
        self.url = (await self._serving.enter_async_context(hub_in_process(self.db))).url
        return self

    async def close(self) -> None:
        await self._serving.aclose()


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    db = tmp_path / "hub.db"
    async with open_store(db) as store:
        agent_id, token = await store.add_agent([LOC])
        _, other = await store.add_agent([LOC])
        _, admin = await store.add_agent([LOC], role="admin")
    server = await Served(db).start()
    running = Hub(server.url, db, agent_id, token, other, admin, server)
    try:
        yield running
    finally:
        await running.server.close()


@pytest.fixture
async def outbox(tmp_path: Path, hub: Hub) -> AsyncIterator[Outbox]:
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=hub.agent_id, location=LOC) as opened:
        yield opened


def fast(outbox: Outbox, hub: Hub, **kw: Any) -> Replicator:
    options: dict[str, Any] = {"tick_s": 0.2, "retry_base_s": 0.01, "retry_max_s": 0.05, "timeout_s": 5.0}
    options.update(kw)
    return Replicator(outbox, hub.url, hub.token, rng=random.Random(3), **options)


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


_EVENT_MS = [int(time.time() * 1000) - 60_000]


async def channel_event(hub: Hub, kind: str, qty: int, sku: str = SKU, ref: str = "order-1") -> None:
    """A movement at the store's location sent by another credential (POST /v1/events)."""
    _EVENT_MS[0] += 1  # distinct times: a connector's seq is its event's time
    body = {"events": [{"id": f"{ref}:{kind}:{_EVENT_MS[0]}", "location": LOC, "sku": sku, "kind": kind, "qty": qty,
                        "occurred_at": _EVENT_MS[0], "ref": ref}]}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {hub.other}"}
        async with http.post(f"{hub.url}/v1/events", json=body, headers=headers) as resp:
            assert resp.status == 200, await resp.text()


async def hub_count(hub: Hub, sku: str = SKU) -> tuple[int, int, int]:
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {hub.admin}"}
        async with http.get(f"{hub.url}/v1/locations/{LOC}/counts", headers=headers) as resp:
            rows = (await resp.json())["counts"]
    row = next(r for r in rows if r["sku"] == sku)
    return row["on_hand"], row["reserved"], row["available"]


async def local(outbox: Outbox, sku: str = SKU) -> tuple[int, int, int]:
    count = await outbox.counts.local_count(LOC, sku)
    return count.on_hand, count.reserved, count.available


def watch_rows(path: Path) -> None:
    """Log every change of a cached row (a trigger in the real outbox file), to check none goes back."""
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE IF NOT EXISTS row_log (old_id INTEGER, new_id INTEGER, on_hand INTEGER, reserved INTEGER);"
            "CREATE TRIGGER IF NOT EXISTS row_moved AFTER UPDATE ON counts BEGIN"
            " INSERT INTO row_log VALUES (old.change_id, new.change_id, new.on_hand, new.reserved); END;"
        )


def row_log(path: Path) -> list[tuple[int | None, int | None, int, int]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT old_id, new_id, on_hand, reserved FROM row_log ORDER BY rowid").fetchall()


# --- a change by another credential reaches the store ------------------------------------------------------


async def test_a_reservation_by_another_credential_reaches_the_local_api_count_without_a_store_movement(
    tmp_path: Path, hub: Hub, outbox: Outbox
) -> None:
    await outbox.record([Movement(LOC, SKU, Kind.RECEIVE, 5, "pos:acme")])
    async with (
        fast(outbox, hub, feed=True) as replicator,
        SessionStore.open(tmp_path / "sessions.sqlite3") as sessions_store,
    ):
        await asyncio.wait_for(replicator.wait_synced(), BOUND_S)
        context = LocalApiContext(
            sessions=SessionManager(sessions_store, outbox), outbox=outbox,
            staff=StaffDirectory({"ana": hash_pin("4711")}), hub_url=lambda: hub.url,
        )  # fmt: skip
        async with (
            LocalApiServer(context, "127.0.0.1", 0) as api,
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
        ):
            async with http.post(f"{api.url}/api/v1/login", json={"staff": "ana", "pin": "4711"}) as resp:
                assert resp.status == 200

            async def api_count() -> tuple[int, int, int]:
                async with http.get(f"{api.url}/api/v1/skus/{SKU}/count") as resp:
                    got = await resp.json()
                return got["on_hand"], got["reserved"], got["available"]

            await wait_until(lambda: _is(api_count(), (5, 0, 5)), "the store's receipt is in its count")
            sent = replicator.state.attempts

            await channel_event(hub, "reserve", 1)  # a pickup order, through the channel connector's credential
            await wait_until(lambda: _is(api_count(), (5, 1, 4)), "the reservation reaches the store's count")

            async with (  # an admin's safety stock: a change no event caused
                aiohttp.ClientSession() as admin,
                admin.put(
                    f"{hub.url}/v1/locations/{LOC}/skus/{SKU}/safety-stock",
                    json={"qty": 2},
                    headers={"Authorization": f"Bearer {hub.admin}"},
                ) as resp,
            ):
                assert resp.status == 200, await resp.text()
            await wait_until(lambda: _is(api_count(), (5, 1, 2)), "the safety stock reaches the store's count")

        assert replicator.state.sent_events == 1  # the store sent nothing after its receipt …
        assert replicator.state.attempts <= sent + 1  # … (at most one heartbeat): the feed carried both
        assert replicator.feed is not None and replicator.feed.state.changes_stored >= 2
    stats = await outbox.stats()
    assert stats.feed_cursor is not None and stats.feed_cursor >= 3


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


# --- a restored hub --------------------------------------------------------------------------------------


async def test_a_hub_restored_from_a_backup_makes_the_cache_follow_its_feed_again_from_0_with_one_warning(
    tmp_path: Path, hub: Hub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await channel_event(hub, "receive", 10)
    backup = tmp_path / "hub-backup.db"
    with sqlite3.connect(hub.db) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)  # the hub's nightly backup: 10 received
    for n in range(3):
        await channel_event(hub, "reserve", 1, ref=f"order-{n}")
    async with CountFeed(outbox, hub.url, hub.token, wait_s=5.0, retry_base_s=0.01, retry_max_s=0.05) as feed:
        await wait_until(lambda: _is(local(outbox), (10, 3, 7)), "the cache follows the live hub")
        ahead = (await outbox.stats()).feed_cursor
        assert ahead is not None and ahead >= 4

        await hub.server.close()  # the hub's disk dies; it is restored from last night's backup
        restored = await Served(backup).start()
        try:
            feed.update_credentials(hub.token, restored.url)
            await wait_until(lambda: _is(local(outbox), (10, 0, 10)), "the cache holds the restored hub's counts")
            assert feed.state.restarts == 1
            # A change the restored hub numbers below the old cursor still arrives.
            hub.url = restored.url
            await channel_event(hub, "reserve", 2, ref="order-after")
            await wait_until(lambda: _is(local(outbox), (10, 2, 8)), "a new change on the restored hub arrives")
            stats = await outbox.stats()
            assert stats.feed_cursor is not None and stats.feed_cursor < ahead
            await feed.stop()
        finally:
            await restored.close()
    restarts = [
        r.getMessage() for r in caplog.records if r.name == "agent.feed" and "again from the start" in r.getMessage()
    ]
    assert len(restarts) == 1, restarts
    assert [r.levelno for r in caplog.records if r.getMessage() == restarts[0]] == [logging.WARNING]
    assert "\n" not in restarts[0] and restarts[0].count(". ") == 0  # one sentence


async def test_a_hub_restored_that_numbered_past_the_cursor_again_is_followed_from_0_with_one_warning(
    tmp_path: Path, hub: Hub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """The cursor is not ahead of the restored hub's feed (it wrote past it before the agent came back, or it is
    another hub: a staging copy), so only its history tells that the changes below it are not the ones read."""
    caplog.set_level(logging.INFO)
    await channel_event(hub, "receive", 10)
    backup = tmp_path / "hub-backup.db"
    with sqlite3.connect(hub.db) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)
    async with CountFeed(outbox, hub.url, hub.token, wait_s=5.0, retry_base_s=0.01, retry_max_s=0.05) as feed:
        for n in range(3):
            await channel_event(hub, "reserve", 1, ref=f"order-{n}")
        await wait_until(lambda: _is(local(outbox), (10, 3, 7)), "the cache follows the live hub")
        await _restored_past_the_cursor(hub, feed, outbox, backup)
    restarts = [r.getMessage() for r in caplog.records if "again from the start" in r.getMessage()]
    assert len(restarts) == 1 and "is not the one this agent's position 4 was read in" in restarts[0], restarts


async def test_a_cursor_stored_in_the_older_form_takes_the_hubs_history_at_its_next_read(
    tmp_path: Path, hub: Hub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent from before feed histories stored its cursor as a plain number, and the hub answers a cursor in
    the form it was given: the cursor stayed without a history until the feed was next read from 0, so a hub
    restored past it (or another hub) was read on without a word. Now the first read learns the hub's history."""
    caplog.set_level(logging.INFO)
    await channel_event(hub, "receive", 10)
    backup = tmp_path / "hub-backup.db"
    with sqlite3.connect(hub.db) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)
    for n in range(3):
        await channel_event(hub, "reserve", 1, ref=f"order-{n}")
    async with CountFeed(outbox, hub.url, hub.token, wait_s=5.0, retry_base_s=0.01, retry_max_s=0.05) as feed:
        await wait_until(lambda: _is(local(outbox), (10, 3, 7)), "the cache follows the live hub")
        await feed.stop()
    with sqlite3.connect(outbox.path) as db:  # as an agent from before histories left it: a plain number
        history = db.execute("SELECT value FROM meta WHERE key = 'feed_history'").fetchone()[0]
        assert history is not None
        db.execute("UPDATE meta SET value = NULL WHERE key = 'feed_history'")
    assert (await outbox.feed_position()).history is None

    async with CountFeed(outbox, hub.url, hub.token, wait_s=0.5, retry_base_s=0.01, retry_max_s=0.05) as feed:
        await wait_until(lambda: _is(feed_history(outbox), history), "the cursor takes the hub's history")
        assert (await outbox.feed_position()).cursor == 4  # where it was: nothing read again
        await _restored_past_the_cursor(hub, feed, outbox, backup)
    learned = [r.getMessage() for r in caplog.records if "older form" in r.getMessage()]
    assert len(learned) == 1 and learned[0].count(". ") == 0, learned


async def test_a_hub_put_back_with_its_feed_home_is_followed_from_0_not_read_on_past_its_new_changes(
    tmp_path: Path, hub: Hub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """hub.db and hub.db.feed-home copied aside with the hub stopped, and back in place later (a directory
    snapshot): the feed keeps its history, so only the change the cursor names tells the restored hub's changes
    2 to 6 from the ones the agent read; it used to read on from its cursor 4, and missed changes 2 to 4."""
    caplog.set_level(logging.INFO)
    await channel_event(hub, "receive", 10)
    await hub.server.close()
    aside = tmp_path / "snapshot"
    aside.mkdir()
    names = [p.name for p in tmp_path.iterdir() if p.name.startswith("hub.db") and p.name != "hub.db.serving.lock"]
    assert "hub.db.feed-home" in names
    for name in names:
        shutil.copyfile(tmp_path / name, aside / name)
    hub.server = await Served(hub.db).start()
    hub.url = hub.server.url
    async with CountFeed(outbox, hub.url, hub.token, wait_s=5.0, retry_base_s=0.01, retry_max_s=0.05) as feed:
        for n in range(3):
            await channel_event(hub, "reserve", 1, ref=f"order-{n}")
        await wait_until(lambda: _is(local(outbox), (10, 3, 7)), "the cache follows the live hub")
        assert (await outbox.feed_position()).cursor == 4

        async def put_back() -> Path:
            for p in tmp_path.iterdir():
                if p.name.startswith("hub.db-"):
                    p.unlink()
            for name in names:
                shutil.copyfile(aside / name, tmp_path / name)  # over the same files, as cp does: same inode
            return hub.db

        await _restored_past_the_cursor(hub, feed, outbox, put_back)
    restarts = [r.getMessage() for r in caplog.records if "again from the start" in r.getMessage()]
    assert len(restarts) == 1 and "is not the one this agent's position 4 was read in" in restarts[0], restarts


async def _restored_past_the_cursor(
    hub: Hub, feed: CountFeed, outbox: Outbox, backup: Path | Callable[[], Awaitable[Path]]
) -> None:
    """The hub restored from ``backup`` (or the file a restore with the hub stopped gives), which numbers five new
    changes past the agent's cursor before the agent reads it again: the agent's cache ends with the restored
    hub's counts, its feed read again from 0 once."""
    await hub.server.close()
    restored = await Served(backup if isinstance(backup, Path) else await backup()).start()
    try:
        hub.url = restored.url
        for n in range(5):  # numbered 2 to 6 by the restored hub: past the agent's cursor
            await channel_event(hub, "receive", 1, sku=f"SKU-R{n}", ref=f"again-{n}")
        feed.update_credentials(hub.token, restored.url)
        await wait_until(lambda: _is(local(outbox), (10, 0, 10)), "the cache holds the restored hub's counts")
        await wait_until(lambda: _is(local(outbox, "SKU-R4"), (1, 0, 1)), "the restored hub's last change")
        assert [(await local(outbox, f"SKU-R{n}"))[0] for n in range(5)] == [1, 1, 1, 1, 1]
        assert feed.state.restarts == 1
        await feed.stop()
    finally:
        await restored.close()


async def feed_history(outbox: Outbox) -> str | None:
    return (await outbox.feed_position()).history


async def test_a_sync_answer_whose_feed_position_went_back_restarts_the_feed_and_forgets_positions(
    tmp_path: Path, hub: Hub, outbox: Outbox
) -> None:
    backup = tmp_path / "hub-backup.db"
    with sqlite3.connect(hub.db) as live, sqlite3.connect(backup) as copy:
        live.backup(copy)  # before anything happened
    for n in range(3):
        await channel_event(hub, "receive", 1, ref=f"delivery-{n}")
    await outbox.record([Movement(LOC, SKU, Kind.SALE, -1, "pos:acme")])
    live = await _sync(hub.url, hub, outbox, list(await outbox.pending(10)))  # answered with its feed position
    assert live.change_id is not None and live.change_id >= 4
    await outbox.apply_answer(live, clock_skew_ms=0)
    assert (await outbox.counts.hub_count(LOC, SKU)) is not None
    await hub.server.close()
    restored = await Served(backup).start()  # the hub restored from a backup taken before all that
    try:
        answer = await _sync(restored.url, hub, outbox, [])
    finally:
        await restored.close()
    assert answer.change_id is not None and answer.change_id < live.change_id
    result = await outbox.apply_answer(answer, clock_skew_ms=0)
    assert result.feed_restarted and result.change_id == answer.change_id
    with sqlite3.connect(outbox.path) as db:
        assert db.execute("SELECT count(*) FROM counts WHERE change_id IS NOT NULL").fetchone() == (0,)
    assert (await outbox.feed_position()).cursor == 0


async def _sync(url: str, hub: Hub, outbox: Outbox, events: list[Any], acked_seq: int | None = None) -> Any:
    """One sync request as the replicator sends it (following the feed); the hub's decoded answer."""
    stats = await outbox.stats()
    request = SyncRequest(
        outbox.agent_id, outbox.epoch, tuple(events), acked_seq=stats.acked_seq if acked_seq is None else acked_seq,
        follows_feed=True,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {hub.token}", "Content-Type": MSGPACK_CONTENT_TYPE}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/sync", data=encode_sync_request(request), headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return decode_sync_response(await resp.read())


# --- a sync answer and a feed page race ---------------------------------------------------------------


class HeldGate:
    """A gate the test opens: the feed holds a page it has read until then."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.open = asyncio.Event()

    async def feed_clear(self, change_id: int) -> None:
        self.waiting.set()
        await self.open.wait()

    def forget_feed_position(self) -> None:
        return None


async def test_a_feed_page_read_before_a_sync_answer_and_stored_after_it_changes_nothing(
    hub: Hub, outbox: Outbox
) -> None:
    watch_rows(Path(outbox.path))
    await channel_event(hub, "receive", 5)
    gate = HeldGate()
    async with CountFeed(outbox, hub.url, hub.token, gate=gate, wait_s=5.0):
        await asyncio.wait_for(gate.waiting.wait(), BOUND_S)  # the feed read the receipt (5 on hand) and holds it
        await outbox.record([Movement(LOC, SKU, Kind.SALE, -1, "pos:acme")])
        # The store's sale is answered and stored first: 4 on hand, as of a later change.
        answer = await _sync(hub.url, hub, outbox, list(await outbox.pending(10)))
        await outbox.apply_answer(answer, clock_skew_ms=0)
        assert await local(outbox) == (4, 0, 4)
        gate.open.set()  # now the older page is stored
        await wait_until(lambda: _cursor_at_least(outbox, 1), "the feed stored its page")
        assert await local(outbox) == (4, 0, 4)  # not 5: the page was older than the answer
    hub_row = await outbox.counts.hub_count(LOC, SKU)
    assert hub_row is not None and hub_row.on_hand == 4
    assert all(old is None or new >= old for old, new, _, _ in row_log(Path(outbox.path)))


async def test_a_sync_answer_stored_after_a_newer_feed_page_changes_nothing(hub: Hub, outbox: Outbox) -> None:
    watch_rows(Path(outbox.path))
    await outbox.record([Movement(LOC, SKU, Kind.RECEIVE, 5, "pos:acme")])
    answer = await _sync(hub.url, hub, outbox, list(await outbox.pending(10)))  # committed: 5 on hand
    await channel_event(hub, "reserve", 2)  # a later change: 5 on hand, 2 reserved
    async with CountFeed(outbox, hub.url, hub.token, wait_s=5.0):  # no replicator: nothing is pending-but-sent
        await wait_until(lambda: _hub_reserved(outbox, 2), "the feed stored the reservation")
    await outbox.apply_answer(answer, clock_skew_ms=0)  # the answer arrives late
    assert await local(outbox) == (5, 2, 3)  # not (5, 0, 5): the answer was older than the page
    assert all(old is None or new >= old for old, new, _, _ in row_log(Path(outbox.path)))


async def test_the_feed_never_counts_the_stores_own_events_twice_while_their_answer_is_on_its_way(
    hub: Hub, outbox: Outbox
) -> None:
    await outbox.record([Movement(LOC, SKU, Kind.RECEIVE, 5, "pos:acme")])
    seen: list[tuple[int, int, int]] = []
    async with fast(outbox, hub, feed=True) as replicator:
        await asyncio.wait_for(replicator.wait_synced(), BOUND_S)
        await wait_until(lambda: _cursor_at_least(outbox, 1), "the feed caught up")
        stored = outbox.apply_answer

        async def slow_answer(*args: Any, **kw: Any) -> Any:  # the answer takes long to reach the store
            await asyncio.sleep(0.5)
            return await stored(*args, **kw)

        outbox.apply_answer = slow_answer  # type: ignore[method-assign]
        await outbox.record([Movement(LOC, SKU, Kind.SALE, -1, "pos:acme")])
        while replicator.state.sent_events < 2:  # meanwhile the hub's change (4 on hand) is on the feed at once
            seen.append(await local(outbox))
            await asyncio.sleep(0.01)
        await wait_until(lambda: _is(local(outbox), (4, 0, 4)), "the sale is acknowledged")
        await channel_event(hub, "reserve", 1)
        await wait_until(lambda: _is(local(outbox), (4, 1, 3)), "a later change still arrives")
    assert seen and set(seen) == {(4, 0, 4)}  # never (3, 0, 3): the sale counted as the hub's and as pending


async def test_under_concurrent_store_sales_and_channel_orders_no_row_goes_back_and_the_end_is_the_hubs(
    hub: Hub, outbox: Outbox
) -> None:
    watch_rows(Path(outbox.path))
    await outbox.record([Movement(LOC, SKU, Kind.RECEIVE, 100, "pos:acme")])
    rng = random.Random(11)
    async with fast(outbox, hub, feed=True, tick_s=0.05, batch_size=2) as replicator:
        for n in range(40):
            if rng.random() < 0.5:
                await outbox.record([Movement(LOC, SKU, Kind.SALE, -1, "pos:acme")])
            else:
                await channel_event(hub, "reserve", 1, ref=f"order-{n}")
            await asyncio.sleep(rng.uniform(0, 0.03))
        await asyncio.wait_for(replicator.wait_synced(), BOUND_S)
        expected = await hub_count(hub)
        await wait_until(lambda: _is(local(outbox), expected), "the cache holds the hub's count")
    log = row_log(Path(outbox.path))
    assert len(log) >= 10
    assert all(old is None or new >= old for old, new, _, _ in log), log


async def _cursor_at_least(outbox: Outbox, cursor: int) -> bool:
    return (await outbox.feed_position()).cursor >= cursor


async def _hub_reserved(outbox: Outbox, reserved: int) -> bool:
    row = await outbox.counts.hub_count(LOC, SKU)
    return row is not None and row.reserved == reserved


# --- a hostile or broken answer ------------------------------------------------------------------------------


async def test_an_oversized_or_malformed_feed_page_is_a_failed_attempt_and_a_good_one_is_stored_after(
    hub: Hub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    good = {
        "changes": [{"change_id": 7, "location": LOC, "sku": SKU, "on_hand": 3, "reserved": 1, "available": 2,
                     "in_transit": 0, "event_ids": [], "at_ms": 1_700_000_000_000, "at": "2023-11-14T22:13:20.000Z"}],
        "cursor": "7", "more": False,
    }  # fmt: skip
    answers: list[bytes] = [
        b'{"changes": [' + b" " * (3 << 20) + b"]}",  # more than the page can hold
        b"[" * 100_000,  # nested beyond any page
        json.dumps({**good, "changes": [{**good["changes"][0], "change_id": 0}]}).encode(),  # not after the cursor
    ]
    served: list[str] = []

    async def changes(request: web.Request) -> web.Response:
        served.append(request.query_string)
        after_good = {**good, "changes": []}  # nothing after change 7
        first = request.query.get("cursor", "0") == "0"  # none at the start
        body = answers.pop(0) if answers else json.dumps(good if first else after_good).encode()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/changes", changes)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        url = str(server.make_url("")).rstrip("/")
        async with CountFeed(outbox, url, "token", wait_s=0.0, retry_base_s=0.01, retry_max_s=0.02) as feed:
            await wait_until(lambda: _is(local(outbox), (3, 1, 2)), "the good page is stored")
            assert feed.state.failures == 0 and feed.state.cursor == 7
    assert len(served) >= 4 and all(f"location={LOC}" in q and "limit=1000" in q for q in served)
    lines = [r for r in caplog.records if r.name == "agent.feed"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO], [r.getMessage() for r in lines]
    assert "more than the 2,052,096 bytes" in lines[0].getMessage() and "\n" not in lines[0].getMessage()
