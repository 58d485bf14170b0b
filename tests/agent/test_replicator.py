"""The replicator against a real HTTP hub on 127.0.0.1 (tests/agent/agent_fakehub.py)."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from agent import Movement, Outbox, Replicator, ReplicatorState
from agent.errors import OutboxFull
from agent.feed import CountFeed
from agent.reserve import Reserve
from protocol import Kind, Rejection, StockEvent
from protocol.routes import SYNC_CATCHUP_BYTES
from tests.agent.agent_fakehub import FakeHub
from tests.agent.agent_fakehub import _error as fakehub_error
from tests.harness.small_disk import sqlite_full

AGENT = "store-1"
LOC = "S001"
WAIT_S = 15.0


def sale(sku: str = "SKU-1", qty: int = -1) -> Movement:
    return Movement(LOC, sku, Kind.SALE, qty, "pos:acme")


def fast(outbox: Outbox, hub: FakeHub, token: str = "token-1", **kw: object) -> Replicator:
    """A replicator with test-sized timings (backoff in milliseconds, a short tick)."""
    options: dict[str, object] = {
        "tick_s": 0.2,
        "retry_base_s": 0.01,
        "retry_max_s": 0.05,
        "timeout_s": 5.0,
        "rng": random.Random(7),
    }
    options.update(kw)
    return Replicator(outbox, hub.url, token, **options)  # type: ignore[arg-type]


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as running:
        yield running


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox.open(tmp_path / "outbox.sqlite3", agent_id=AGENT, location=LOC) as opened:
        yield opened


async def until(replicator: Replicator, predicate: Callable[[ReplicatorState], bool]) -> ReplicatorState:
    return await asyncio.wait_for(replicator.wait_for(predicate), WAIT_S)


def seqs_sent(hub: FakeHub) -> list[int]:
    return [seq for batch in hub.batches() for seq in batch]


async def test_batches_are_at_most_batch_size_and_in_seq_order(hub: FakeHub, outbox: Outbox) -> None:
    await outbox.record([sale(f"SKU-{n % 4}") for n in range(30)])
    async with fast(outbox, hub, batch_size=7) as replicator:
        await until(replicator, lambda s: s.sent_events == 30)
    assert hub.requests[0].seqs == ()  # the handshake
    assert all(len(batch) <= 7 for batch in hub.batches())
    assert seqs_sent(hub) == list(range(1, 31))
    assert {seen.form for seen in hub.requests if seen.seqs} == {"columns"}  # what agents send
    assert {seen.form for seen in hub.requests if not seen.seqs} == {"events"}  # no events: [], for any hub
    stats = await outbox.stats()
    assert (stats.backlog, stats.acked_seq, stats.sync_state, stats.hub_reachable) == (0, 30, "ok", True)


async def test_a_hub_older_than_columns_gets_maps_and_every_event_once(
    hub: FakeHub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    hub.refuse_columns = True
    await outbox.record([sale(f"SKU-{n % 4}") for n in range(30)])
    with caplog.at_level(logging.WARNING, logger="agent.replicator"):
        async with fast(outbox, hub, batch_size=7) as replicator:
            await until(replicator, lambda s: s.sent_events == 30)
    assert seqs_sent(hub) == list(range(1, 31))  # every event once, in order
    assert [seen.status for seen in hub.requests if seen.form == "columns"] == [400]  # refused once, then maps
    assert {seen.form for seen in hub.requests if seen.status == 200} == {"events"}
    warned = [r.getMessage() for r in caplog.records if "does not read events as columns" in r.getMessage()]
    assert len(warned) == 1 and "Upgrade the hub" in warned[0]
    stats = await outbox.stats()
    assert (stats.backlog, stats.acked_seq, stats.sync_state) == (0, 30, "ok")


async def test_requests_report_the_backlog_and_an_idle_agent_sends_heartbeats(hub: FakeHub, outbox: Outbox) -> None:
    await outbox.record([sale(f"SKU-{n % 4}") for n in range(30)])
    async with fast(outbox, hub, batch_size=10, tick_s=0.05, heartbeat_s=0.2) as replicator:
        await until(replicator, lambda s: s.sent_events == 30)
        await hub.wait_for(lambda: sum(1 for seen in hub.requests if not seen.seqs) >= 3)  # handshake + 2 heartbeats
    with_events = [seen.backlog for seen in hub.requests if seen.seqs]
    assert with_events == [30, 20, 10]
    heartbeats = [seen for seen in hub.requests[1:] if not seen.seqs]
    assert heartbeats and all(seen.backlog == 0 for seen in heartbeats)


async def test_requests_report_the_disk_its_reserve_and_a_write_the_full_disk_refused(
    hub: FakeHub, outbox: Outbox, tmp_path: Path
) -> None:
    """The hub learns the agent's disk with every sync (protocol.DiskReport): its reserve, the free bytes of the
    outbox's file system, and a write the disk refused for want of room, cleared by the next write it takes."""
    reserve = Reserve(tmp_path / "outbox.sqlite3", 256 << 10, step=64 << 10)
    await reserve.start()
    outbox.reserve = reserve
    await outbox.record([sale()])
    async with fast(outbox, hub, tick_s=0.05, heartbeat_s=0.1) as replicator:
        await until(replicator, lambda s: s.sent_events == 1)
        first = hub.requests[0].disk
        assert first is not None and (first.reserve_bytes, first.reserve_held_bytes) == (256 << 10, 256 << 10)
        assert first.free_bytes is not None and first.free_bytes > 0 and first.refused_ms is None
        assert first.state == "ok"

        assert await reserve.give(str(outbox.path))  # a step given back to a full disk
        seen = len(hub.requests)
        await hub.wait_for(lambda: len(hub.requests) > seen)
        assert hub.requests[-1].disk is not None and hub.requests[-1].disk.reserve_held_bytes == 192 << 10
        assert hub.requests[-1].disk.state == "reserve_in_use"

        await outbox._db.outside_transaction(sqlite_full)  # the outbox's file may grow no more: SQLITE_FULL
        with pytest.raises(OutboxFull):
            await outbox.record([sale()] * 2_000)
        seen = len(hub.requests)
        await hub.wait_for(lambda: len(hub.requests) > seen and hub.requests[-1].disk.refused_ms is not None)
        assert hub.requests[-1].disk.state == "full"

        await outbox._db.outside_transaction(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
        await outbox.record([sale()])  # the disk takes a write again
        await until(replicator, lambda s: s.sent_events == 2)
        seen = len(hub.requests)
        await hub.wait_for(lambda: len(hub.requests) > seen)
        assert hub.requests[-1].disk.refused_ms is None


async def test_a_sync_answer_stored_after_a_refused_write_does_not_say_the_disk_has_room(
    outbox: Outbox, tmp_path: Path
) -> None:
    """A full disk still takes writes that fit in pages the file has (a sync's answer, an acknowledgement): while
    the disk reserve is in use they do not clear the refusal, or the hub would be told "ok" between two heartbeats
    while scans are refused. A row stored clears it; so does the reserve made whole (room for it twice over)."""
    reserve = Reserve(tmp_path / "outbox.sqlite3", 256 << 10, step=64 << 10)
    await reserve.start()
    outbox.reserve = reserve
    await outbox.record([sale()])
    assert await reserve.give(str(outbox.path))  # a step given back to a full disk: the reserve is in use
    await outbox._db.outside_transaction(sqlite_full)
    with pytest.raises(OutboxFull):
        await outbox.record([sale()] * 2_000)
    refused = outbox.disk_report().refused_ms
    assert refused is not None
    await outbox.note_sync_failure("unreachable", "no route", hub_reachable=False)
    await outbox.mark_acked(1)
    assert outbox.disk_report().refused_ms == refused
    await outbox._db.outside_transaction(lambda conn: conn.execute("PRAGMA max_page_count = 1073741823"))
    await outbox.record([sale()])  # rows stored: the disk has room again
    assert outbox.disk_report().refused_ms is None

    await outbox._db.outside_transaction(sqlite_full)
    with pytest.raises(OutboxFull):
        await outbox.record([sale()] * 2_000)
    assert outbox.disk_report().refused_ms is not None
    assert await reserve.keep()  # the agent made its reserve whole: the disk has room
    await outbox.note_sync_failure("unreachable", "no route", hub_reachable=False)
    assert outbox.disk_report().refused_ms is None


async def test_a_hub_older_than_the_disk_report_gets_the_requests_without_it(
    hub: FakeHub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    hub.refuse_disk = True
    await outbox.record([sale(f"SKU-{n % 4}") for n in range(30)])
    with caplog.at_level(logging.INFO, logger="agent.replicator"):
        async with fast(outbox, hub, batch_size=7) as replicator:
            await until(replicator, lambda s: s.sent_events == 30)
    assert seqs_sent(hub) == list(range(1, 31))  # every event once, in order
    assert [seen.status for seen in hub.requests if seen.status != 200] == [400]  # refused once, then without it
    assert all(seen.disk is None for seen in hub.requests if seen.status == 200)
    said = [r.getMessage() for r in caplog.records if "disk report" in r.getMessage()]
    assert len(said) == 1 and "does not read" in said[0], said
    assert (await outbox.stats()).backlog == 0


async def test_a_busy_agent_sends_no_heartbeat_and_an_idle_one_waits_for_it(hub: FakeHub, outbox: Outbox) -> None:
    async with fast(outbox, hub, tick_s=0.05, heartbeat_s=600.0) as replicator:
        await until(replicator, lambda s: s.sync_state == "ok")
        await asyncio.sleep(0.3)  # several ticks pass with nothing to send
    assert [seen.seqs for seen in hub.requests] == [()]  # the handshake only


async def test_a_batch_failing_after_every_good_handshake_is_logged_once(
    hub: FakeHub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.replicator")
    hub.fail_batches = 500
    await outbox.record([sale("SKU-1")])
    async with fast(outbox, hub) as replicator:
        await hub.wait_for(lambda: sum(1 for seen in hub.requests if seen.seqs) >= 4)  # four failed batches
        assert replicator.state.sync_state == "hub_error"
        hub.fail_batches = None
        await until(replicator, lambda s: s.sync_state == "ok" and s.backlog == 0)
    failures = [r for r in caplog.records if r.getMessage().startswith("Sync failed:")]
    recoveries = [r for r in caplog.records if r.getMessage().startswith("hub reachable again")]
    assert len(failures) == 1 and len(recoveries) == 1


class TakesTurns(FakeHub):
    """A hub after a regional outage: every other batch is asked to come back (429, its catch-up slots taken)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches_seen = 0

    def _answer(self, token: str, agent_id: str, epoch: int, events: tuple[StockEvent, ...]) -> web.Response:
        if events:
            self.batches_seen += 1
            if self.batches_seen % 2:
                return fakehub_error(429, "rate_limited", "the hub is committing 4 catch-up batches already")
        return super()._answer(token, agent_id, epoch, events)


async def test_a_hub_asking_batch_after_batch_to_come_back_is_logged_once_not_per_batch(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.replicator")
    await outbox.record([sale(f"SKU-{n}") for n in range(6)])
    async with TakesTurns() as hub, fast(outbox, hub, batch_size=1) as replicator:
        await until(replicator, lambda s: s.sync_state == "ok" and s.backlog == 0 and s.sent_events == 6)
    assert [seen.status for seen in hub.requests if seen.seqs] == [429, 200] * 6
    assert hub.applied == list(range(1, 7))  # each once, in order
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(said) == 1 and "HTTP 429" in said[0], said  # flow control: said once, its ends are not news


class RefusesOnce(FakeHub):
    """A hub whose catch-up line is full: the first batch is asked to come back in ``RETRY_AFTER`` seconds."""

    RETRY_AFTER = 2

    def __init__(self) -> None:
        super().__init__()
        self.refused = False

    def _answer(self, token: str, agent_id: str, epoch: int, events: tuple[StockEvent, ...]) -> web.Response:
        if events and not self.refused:
            self.refused = True
            refusal = fakehub_error(429, "rate_limited", "the hub is committing 4 catch-up batches and 12 more wait")
            refusal.headers["Retry-After"] = str(self.RETRY_AFTER)
            return refusal
        return super()._answer(token, agent_id, epoch, events)


class Draws(random.Random):
    """A random source whose ``random()`` answers ``draw``: the wait it picks is known in advance."""

    def __init__(self, draw: float) -> None:
        super().__init__(0)
        self.draw = draw

    def random(self) -> float:
        return self.draw


class WaitsNoted(Replicator):
    """Notes how long each wait after a failure would be, and does not wait it: no clock in the test."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.backoffs: list[float] = []

    async def _wait(self, delay_s: float, after_failure: bool) -> None:
        if after_failure:
            self.backoffs.append(delay_s)
            delay_s = 0.0
        await super()._wait(delay_s, after_failure)


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.99])
async def test_agents_refused_together_come_back_spread_over_a_second_after_retry_after(
    outbox: Outbox, draw: float
) -> None:
    """A 429's Retry-After is waited plus a random part (at least up to a second), drawn from the replicator's
    random source: never sooner than asked, and two agents refused by one answer do not come back together."""
    await outbox.record([sale()])
    async with RefusesOnce() as hub:
        replicator = WaitsNoted(outbox, hub.url, "token-1", tick_s=0.2, timeout_s=5.0, rng=Draws(draw))
        async with replicator:
            await until(replicator, lambda s: s.sync_state == "ok" and s.backlog == 0 and s.sent_events == 1)
    assert [seen.status for seen in hub.requests if seen.seqs] == [429, 200]
    assert replicator.backoffs == [RefusesOnce.RETRY_AFTER + draw * 1.0]


async def test_a_catch_up_batch_asks_the_hub_to_continue_before_it_is_sent_and_a_small_one_does_not(
    hub: FakeHub, outbox: Outbox
) -> None:
    """A body over protocol.routes.SYNC_CATCHUP_BYTES is sent with Expect: 100-continue: a hub whose catch-up line
    is full refuses it before it is uploaded (hub/catchup.py); a live sale's batch does not wait for the hub's
    100 Continue."""
    await outbox.record([sale(f"SKU-{n % 50}") for n in range(5_000)])  # one batch of ~345 KiB
    async with fast(outbox, hub, batch_size=5_000) as replicator:
        await until(replicator, lambda s: s.sent_events == 5_000)
        await outbox.record([sale()])
        await until(replicator, lambda s: s.sent_events == 5_001)
    assert [(len(seen.seqs), seen.expect) for seen in hub.requests] == [(0, False), (5_000, True), (1, False)]


async def test_a_hub_that_never_answers_expect_gets_the_catch_up_batches_without_it(
    hub: FakeHub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Something between the agent and the hub swallows Expect: 100-continue and answers nothing: the batch times
    out once, and is sent again without it (so are the later ones), said in one warning."""
    hub.silent_expects = 1
    await outbox.record([sale(f"SKU-{n % 50}") for n in range(15_000)])  # catching up: 10,000, then 5,000
    with caplog.at_level(logging.WARNING, logger="agent.replicator"):
        # One silent wait of timeout_s; a busy machine must still post 10,000 events within it.
        async with fast(outbox, hub, batch_size=5_000, timeout_s=3.0) as replicator:
            await until(replicator, lambda s: s.sent_events == 15_000)
    assert len(hub.unanswered) == 1 and hub.unanswered[0] > SYNC_CATCHUP_BYTES
    assert [(len(seen.seqs), seen.expect) for seen in hub.requests if seen.seqs] == [(10_000, False), (5_000, False)]
    assert hub.applied == list(range(1, 15_001))
    warned = [r.getMessage() for r in caplog.records if "Expect: 100-continue" in r.getMessage()]
    assert len(warned) == 1 and "without it from now on" in warned[0], warned


async def test_new_records_wake_the_replicator(hub: FakeHub, outbox: Outbox) -> None:
    async with fast(outbox, hub, tick_s=600.0) as replicator:  # a tick that never comes in this test
        await until(replicator, lambda s: s.sync_state == "ok")
        for n in range(3):
            await outbox.record([sale(f"SKU-{n}")])
            await hub.wait_for(lambda n=n: len(hub.events) == n + 1)
    assert seqs_sent(hub) == [1, 2, 3]


async def test_wait_synced_waits_for_an_event_recorded_after_the_last_attempt(hub: FakeHub, outbox: Outbox) -> None:
    async with fast(outbox, hub, tick_s=600.0) as replicator:
        await outbox.record([sale("SKU-1")])
        await asyncio.wait_for(replicator.wait_synced(), WAIT_S)
        assert seqs_sent(hub) == [1]
        for n in range(2, 6):  # the state still says "ok, nothing waiting": it is the last attempt's
            await outbox.record([sale(f"SKU-{n}")])
            await asyncio.wait_for(replicator.wait_synced(), WAIT_S)
            assert seqs_sent(hub) == list(range(1, n + 1))
    assert (await outbox.stats()).backlog == 0


async def test_server_errors_back_off_then_everything_arrives_once_in_order(
    hub: FakeHub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    await outbox.record([sale() for _ in range(12)])
    hub.fail_next(500, times=4)
    with caplog.at_level(logging.DEBUG, logger="agent.replicator"):
        async with fast(outbox, hub, batch_size=5) as replicator:
            await hub.wait_for(lambda: len(hub.events) == 12)
            await until(replicator, lambda s: s.backlog == 0)
    assert sum(seen.status == 500 for seen in hub.requests) == 4
    assert hub.applied == list(range(1, 13))  # each stored once, in order
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1
        and "HTTP 500" in warnings[0].getMessage()
        and "12 events waiting" in warnings[0].getMessage()
    )
    recoveries = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert recoveries == ["hub reachable again; 12 events waiting, sending"]
    assert (await outbox.stats()).last_error is None


async def test_an_unreachable_hub_is_reported(outbox: Outbox) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    await outbox.record([sale()])
    replicator = Replicator(outbox, f"http://127.0.0.1:{port}", "t", retry_base_s=0.01, retry_max_s=0.05)
    async with replicator:
        state = await until(replicator, lambda s: s.failures >= 2)
    assert state.sync_state == "unreachable" and state.hub_reachable is False
    stats = await outbox.stats()
    assert (stats.sync_state, stats.hub_reachable, stats.backlog) == ("unreachable", False, 1)
    assert f"nothing listens at 127.0.0.1:{port} (connection refused)" in (stats.last_error or "")


async def test_refused_credentials_stop_sending_until_the_token_is_fixed(
    hub: FakeHub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    await outbox.record([sale(), sale()])
    with caplog.at_level(logging.INFO, logger="agent.replicator"):
        async with fast(outbox, hub, token="wrong", auth_retry_s=600.0) as replicator:
            state = await until(replicator, lambda s: s.credentials_refused)
            assert state.sync_state == "credentials_refused"
            stats = await outbox.stats()
            assert stats.sync_state == "credentials_refused"
            assert "refused this agent's credentials (HTTP 401" in (stats.last_error or "")

            await outbox.record([sale()])  # new data does not bring a refused agent back
            with pytest.raises(TimeoutError):
                await hub.wait_for(lambda: len(hub.requests) > 1, timeout_s=0.5)

            replicator.update_credentials("token-1")  # the config was fixed and reloaded
            await hub.wait_for(lambda: len(hub.events) == 3)
    assert [seen.status for seen in hub.requests][:1] == [401]
    assert all(seen.token == "token-1" for seen in hub.requests[1:])
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "credentials" in errors[0].getMessage()


async def test_a_422_sets_aside_exactly_the_named_events_and_sends_the_rest(hub: FakeHub, outbox: Outbox) -> None:
    hub.invalid_skus = {"BAD"}
    await outbox.record([sale("A"), sale("BAD"), sale("B"), sale("BAD"), sale("C")])
    async with fast(outbox, hub) as replicator:
        await hub.wait_for(lambda: len(hub.events) == 3)
        await until(replicator, lambda s: s.backlog == 0)
    assert sorted(ev.sku for ev in hub.events.values()) == ["A", "B", "C"]
    assert hub.batches(422) == [(1, 2, 3, 4, 5)]
    assert hub.batches(200) == [(1, 3, 5)]
    rejected = await outbox.list_rejected()
    assert sorted(r.event.seq for r in rejected) == [2, 4]
    assert all(r.code == "invalid" and r.reason == "sku BAD is not sold here" for r in rejected)
    stats = await outbox.stats()
    assert (stats.backlog, stats.set_aside, stats.acked_seq) == (0, 2, 5)


async def test_events_rejected_in_a_200_are_set_aside_with_the_hubs_code(hub: FakeHub, outbox: Outbox) -> None:
    hub.reject_skus = {"THEIRS"}
    await outbox.record([sale("A"), sale("THEIRS"), sale("B")])
    async with fast(outbox, hub) as replicator:
        await until(replicator, lambda s: s.sent_events == 3 and s.backlog == 0)
    [rejected] = await outbox.list_rejected()
    assert (rejected.event.sku, rejected.code, rejected.reason) == (
        "THEIRS",
        "forbidden_location",
        "sku THEIRS is not yours",
    )
    assert (await outbox.stats()).acked_seq == 3


async def test_a_200_that_rejects_an_event_it_was_not_sent_sets_nothing_aside(
    hub: FakeHub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the hub's verdict on the events of the request counts: a rejection of any other event of the outbox (a
    hub's bug, an answer meant for another request) would set that event aside unsent."""
    await outbox.record([sale("A")])
    result = await outbox.record([sale("B")])
    (stranger,) = result.events
    hub.reject_also = [Rejection(stranger.event_id, stranger.seq, "forbidden_location", "not in the batch")]
    async with fast(outbox, hub, batch_size=1) as replicator:
        await hub.wait_for(lambda: len(hub.events) == 2)
        await until(replicator, lambda s: s.backlog == 0)
    assert await outbox.list_rejected() == []
    assert sorted(ev.sku for ev in hub.events.values()) == ["A", "B"]
    assert "which is not in the batch sent; it is not set aside" in caplog.text


async def test_a_413_halves_the_batch(hub: FakeHub, outbox: Outbox) -> None:
    hub.max_batch = 3
    await outbox.record([sale() for _ in range(10)])
    async with fast(outbox, hub, batch_size=10) as replicator:
        await hub.wait_for(lambda: len(hub.events) == 10)
        assert replicator.batch_size == 2  # 10 -> 5 -> 2
    assert [len(batch) for batch in hub.batches(413)] == [10, 5]
    assert seqs_sent(hub) == list(range(1, 11))


async def test_a_hub_restored_from_a_backup_gets_the_lost_events_again(hub: FakeHub, outbox: Outbox) -> None:
    await outbox.record([sale() for _ in range(10)])
    async with fast(outbox, hub):
        await hub.wait_for(lambda: len(hub.events) == 10)
    hub.restore(AGENT, outbox.epoch, hwm=4)  # the hub lost seq 5..10
    hub.applied.clear()
    await outbox.record([sale()])
    async with fast(outbox, hub) as replicator:
        await hub.wait_for(lambda: len(hub.events) == 11)
        await until(replicator, lambda s: s.backlog == 0)
    assert hub.applied == list(range(5, 12))
    assert (await outbox.stats()).acked_seq == 11


async def test_stopping_mid_request_acknowledges_nothing_and_the_next_start_catches_up(
    hub: FakeHub, outbox: Outbox
) -> None:
    replicator = fast(outbox, hub)
    await replicator.start()
    await until(replicator, lambda s: s.sync_state == "ok")  # handshake done
    hub.gate = asyncio.Event()  # the hub commits, then holds its answer
    await outbox.record([sale() for _ in range(5)])
    await hub.wait_for(lambda: len(hub.events) == 5)
    await replicator.stop()
    await replicator.stop()
    assert (await outbox.stats()).acked_seq == 0  # never acknowledged without the answer

    hub.gate.set()
    hub.gate = None
    async with fast(outbox, hub) as again:
        # the handshake learns the hub's mark; a hub that had not committed would get them resent
        await until(again, lambda s: s.sync_state == "ok" and s.backlog == 0)
    assert (await outbox.stats()).acked_seq == 5
    assert hub.applied == [1, 2, 3, 4, 5]  # stored once


async def test_answers_fill_the_count_cache_and_the_clock_skew(hub: FakeHub, outbox: Outbox) -> None:
    hub.skew_ms = 90_000  # the hub's clock is 90 s ahead
    await outbox.record([Movement(LOC, "A", Kind.RECEIVE, 10, "scanner:1"), sale("A", -3), sale("B", -1)])
    async with fast(outbox, hub) as replicator:
        await until(replicator, lambda s: s.sent_events == 3)
    a = await outbox.counts.local_count(LOC, "A")
    b = await outbox.counts.hub_count(LOC, "B")
    assert (a.on_hand, a.pending_events) == (7, 0)
    assert b is not None and b.on_hand == -1
    skew_ms = (await outbox.stats()).clock_skew_ms
    assert skew_ms is not None and 80_000 < skew_ms < 100_000


async def test_a_400_is_logged_once_as_an_error_and_retried_with_backoff(
    hub: FakeHub, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    hub.fail_next(400, times=3)
    await outbox.record([sale(), sale()])
    with caplog.at_level(logging.INFO, logger="agent.replicator"):
        async with fast(outbox, hub) as replicator:
            await until(replicator, lambda s: s.sent_events == 2)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "rejected the request as malformed, which is a bug (HTTP 400" in errors[0]
    assert [seen.status for seen in hub.requests][:3] == [400, 400, 400]
    assert hub.applied == [1, 2]


async def test_a_loop_that_died_of_a_bug_still_stops_every_part_and_says_so(
    hub: FakeHub, outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: CountFeed) -> None:
        raise RuntimeError("a bug in the feed")

    monkeypatch.setattr(CountFeed, "_run", broken)
    replicator = fast(outbox, hub, feed=True)
    await replicator.start()
    assert replicator.feed is not None
    feed_session, own_session = replicator.feed._session, replicator._session
    await outbox.record([sale()])
    await until(replicator, lambda s: s.sent_events == 1)
    with pytest.raises(RuntimeError, match="a bug in the feed"):
        await replicator.stop()
    assert feed_session is not None and feed_session.closed  # the failing loop's own session
    assert own_session is not None and own_session.closed  # and the replicator after it, with its task
    assert replicator._task is None and replicator.feed._task is None
    await replicator.stop()  # safe twice
