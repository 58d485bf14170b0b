"""All configured pushers beside the hub: one call starts them, leaving the block stops them."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from hub.channels import ChannelPusher, ChannelSpec, channel_pushers, runner
from hub.channels.connector import Connector
from hub.channels.reconcile import Reconciler
from hub.channels.runner import pushes_here
from hub.heartbeat import DEFAULT_LEASE_STALE_S
from hub.leases import LocalLeases, LockConnections
from hub.storage.base import StoreError
from protocol import Kind
from protocol.retry import Backoff
from tests.channels.emulators.shopify import ShopifyEmulator
from tests.channels.emulators.square import SquareEmulator
from tests.channels.helpers import Hub, pushed_to_head, spec_of, wait_until


async def test_every_configured_channel_gets_its_levels(hub: Hub, shopify: ShopifyEmulator, square: SquareEmulator) -> None:
    shop_loc, sq_loc = shopify.add_location(), square.add_location()
    variant = shopify.add_variant("A", stocked_at=[shop_loc])
    variation = square.add_variation("A")
    specs = [
        spec_of({"name": "web", "kind": "shopify", "url": shopify.url, "pool": {"S1": shop_loc, "WH": shop_loc}}, shopify.token),
        spec_of({"name": "pickup", "kind": "square", "url": square.url, "pool": {"S1": sq_loc}, "buffer": 1}, square.token),
    ]
    await hub.move((Kind.RECEIVE, 6, "S1", "A"), (Kind.RECEIVE, 4, "WH", "A"))
    async with channel_pushers(specs, hub.store, str(hub.db_path), hub.watch) as pushers:
        assert set(pushers) == {"web", "pickup"}

        latest = await hub.store.latest_change_id()

        async def right() -> bool:
            shown = shopify.available(variant.item_id, shop_loc) == 10 and square.quantity(variation, sq_loc) == 5
            return shown and [p.status.cursor for p in pushers.values()] == [latest, latest]

        # the channel answers before the pusher saves its cursor: stopping between the two is allowed (the
        # next start pushes the same turn again), so the cursors are waited for inside the block
        await wait_until(right, "both channels show the pool minus their buffer and both cursors reach the head")


async def test_a_pusher_whose_loop_dies_is_started_again_on_a_sqlite_hub(
    hub: Hub, square: SquareEmulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite hub started its pushers once: one whose loop died stayed stopped until the hub restarted."""
    caplog.set_level(logging.INFO, logger="hub.channels.runner")
    monkeypatch.setattr("hub.leases.ENDED_BACKOFF", Backoff(0.05, 0.05))
    runs, run = [], ChannelPusher.run

    async def dies_the_first_time(self: ChannelPusher) -> None:
        runs.append(self.spec.name)
        if len(runs) == 1:
            raise RuntimeError("the feed answered nonsense")
        await run(self)

    monkeypatch.setattr(ChannelPusher, "run", dies_the_first_time)
    sq_loc = square.add_location()
    variation = square.add_variation("A")
    spec = spec_of({"name": "pickup", "kind": "square", "url": square.url, "pool": {"S1": sq_loc}}, square.token)
    await hub.move((Kind.RECEIVE, 6, "S1", "A"))
    locks = LockConnections(str(hub.db_path), DEFAULT_LEASE_STALE_S, retry_s=0.05)  # lease_retry_s
    async with channel_pushers([spec], hub.store, str(hub.db_path), hub.watch, locks) as pushers:

        async def shown() -> bool:
            return square.quantity(variation, sq_loc) == 6

        await wait_until(shown, "the pusher started again shows the level at Square")
        assert pushes_here(pushers["pickup"])
    assert runs == ["pickup", "pickup"]
    assert (
        "channel pickup: pushing ended by itself (RuntimeError: the feed answered nonsense) while this hub runs; "
        "this hub starts pushing it again in 0 s" in caplog.text
    )


async def test_a_reconciler_whose_loop_dies_is_started_again_alone_its_pusher_pushing_on(
    hub: Hub, square: SquareEmulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the pusher's loop was watched: a channel whose reconciler died went on being pushed but was never
    read back again. Then the dead reconciler restarted the whole channel, its healthy pusher too (its
    corrections waiting dropped; on PostgreSQL, the channel handed to another hub). Now the reconciler alone is
    started again, after the backoff, and the pusher it works through runs on untouched."""
    caplog.set_level(logging.INFO, logger="hub.channels.runner")
    monkeypatch.setattr("hub.leases.ENDED_BACKOFF", Backoff(0.05, 0.05))
    runs, run = [], Reconciler.run

    async def dies_the_first_time(self: Reconciler) -> None:
        runs.append(self.spec.name)
        if len(runs) == 1:
            raise RuntimeError("the channel state answered nonsense")
        await run(self)

    monkeypatch.setattr(Reconciler, "run", dies_the_first_time)
    sq_loc = square.add_location()
    vid = square.add_variation("A")
    spec = spec_of({"name": "pickup", "kind": "square", "url": square.url, "pool": {"S1": sq_loc}}, square.token)
    await hub.move((Kind.RECEIVE, 6, "S1", "A"))
    locks = LockConnections(str(hub.db_path), DEFAULT_LEASE_STALE_S, retry_s=0.05)  # lease_retry_s
    async with channel_pushers([spec], hub.store, str(hub.db_path), hub.watch, locks) as pushers:
        pusher = pushers["pickup"]

        async def reconciling() -> bool:
            r = pushers["pickup"].reconciler
            return len(runs) == 2 and r is not None and r.task is not None and not r.task.done()

        await wait_until(reconciling, "the reconciler is started again")
        assert pushers["pickup"] is pusher, "the pusher was not restarted"
        assert pusher.task is not None and not pusher.task.done() and pushes_here(pusher)
        reconciler = pusher.reconciler
        assert reconciler is not None
        reconciler.request()

        async def reconciled() -> bool:
            return reconciler.last is not None

        await wait_until(reconciled, "the reconciler started again reads the levels back")
        await hub.move((Kind.SALE, -2, "S1", "A"))

        async def pushed() -> bool:
            return square.quantity(vid, sq_loc) == 4

        await wait_until(pushed, "the pusher that ran on pushes the next level")
        assert pushers["pickup"] is pusher
    assert (
        "channel pickup: reconciling ended by itself (RuntimeError: the channel state answered nonsense) while "
        "this hub runs; this hub starts reconciling it again in 0 s, its other work running on" in caplog.text
    )
    assert "channel pickup: this hub is reconciling it again" in caplog.text


async def test_a_sqlite_hub_builds_each_channel_s_pusher_and_connector_once_at_startup(
    hub: Hub, shopify: ShopifyEmulator, square: SquareEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SQLite hub made every channel's pusher and connector, then replaced each with a second one as it started
    them: two connectors built per channel, the first left behind with whatever it had taken."""
    made: list[str] = []
    make = runner.make_connector

    def counted(spec: ChannelSpec, session: aiohttp.ClientSession) -> Connector:
        made.append(spec.name)
        return make(spec, session)

    monkeypatch.setattr(runner, "make_connector", counted)
    shop_loc, sq_loc = shopify.add_location(), square.add_location()
    specs = [
        spec_of({"name": "web", "kind": "shopify", "url": shopify.url, "pool": {"S1": shop_loc}}, shopify.token),
        spec_of({"name": "pickup", "kind": "square", "url": square.url, "pool": {"S1": sq_loc}}, square.token),
    ]
    async with channel_pushers(specs, hub.store, str(hub.db_path), hub.watch) as pushers:
        assert sorted(made) == ["pickup", "web"]
        assert all(pushes_here(p) and p.task is not None for p in pushers.values())  # the ones shown are the ones run


async def test_an_unreachable_postgresql_database_is_one_sentence_without_its_password(
    hub: Hub, square: SquareEmulator
) -> None:
    spec = spec_of({"name": "pickup", "kind": "square", "url": square.url, "pool": {"S1": "L1"}}, square.token)
    with pytest.raises(StoreError, match=r"cannot open the channel state in postgresql://u:\*\*\*@") as err:
        async with channel_pushers([spec], hub.store, "postgresql://u:pw-secret@127.0.0.1:1/db", hub.watch):
            pass
    assert "pw-secret" not in str(err.value)


async def test_a_pusher_whose_lock_is_gone_pushes_nothing_more_before_lead_notices(
    hub: Hub, square: SquareEmulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a pusher whose lock connection the server ended (a failover, pg_terminate_backend) went on
    pushing until ``lead``'s next check of the lock, up to ``LEASE_RETRY_S`` later, while another hub had taken
    the channel and pushed from the saved cursor. The pusher asks ``LeaseHolder.holds`` (no round trip) before
    each turn and batch: here the lease says it is gone, while ``lead`` (``alive``) has not noticed."""
    caplog.set_level(logging.WARNING, logger="hub.channels.pusher")
    monkeypatch.setattr("hub.channels.pusher.LEASE_LOST_WAIT_S", 0.05)
    lost: list[str] = []
    holds = LocalLeases.holds
    monkeypatch.setattr(LocalLeases, "holds", lambda self, name: name not in lost and holds(self, name))
    sq_loc = square.add_location()
    vid = square.add_variation("A")
    spec = spec_of({"name": "pickup", "kind": "square", "url": square.url, "pool": {"S1": sq_loc}}, square.token)
    await hub.move((Kind.RECEIVE, 6, "S1", "A"))
    async with channel_pushers([spec], hub.store, str(hub.db_path), hub.watch) as pushers:
        await pushed_to_head(pushers["pickup"], hub)
        assert square.quantity(vid, sq_loc) == 6
        lost.append("pickup")  # the lock's connection ended: another hub pushes from the saved cursor now
        await hub.move((Kind.SALE, -2, "S1", "A"))
        said = "channel pickup: this hub's pusher lock went with its database connection; it pushes nothing more"

        async def stood_back_or_pushed() -> bool:
            return said in caplog.text or square.quantity(vid, sq_loc) != 6

        await wait_until(stood_back_or_pushed, "the pusher sees the lock gone (or pushes the sale)")
        assert square.quantity(vid, sq_loc) == 6, "a hub that lost the channel's lock pushed it"
        assert pushers["pickup"].status.cursor < await hub.store.latest_change_id()


async def test_a_pusher_whose_lock_goes_mid_turn_pushes_no_further_batch(
    hub: Hub, square: SquareEmulator, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock goes while a turn is pushing its batches: the batches after that moment are the next holder's
    (from the saved cursor), not sent from here too."""
    caplog.set_level(logging.WARNING, logger="hub.channels.pusher")
    sq_loc = square.add_location()
    apple, pear = square.add_variation("APPLE"), square.add_variation("PEAR")
    spec = spec_of(
        {"name": "pickup", "kind": "square", "url": square.url, "pool": {"S1": sq_loc}, "batch_max": 1},
        square.token,
    )
    await hub.move((Kind.RECEIVE, 6, "S1", "APPLE"), (Kind.RECEIVE, 6, "S1", "PEAR"))
    watching: list[bool] = []

    def pushed_one() -> bool:
        return bool(watching) and 8 in (square.quantity(apple, sq_loc), square.quantity(pear, sq_loc))

    holds = LocalLeases.holds
    monkeypatch.setattr(LocalLeases, "holds", lambda self, name: not pushed_one() and holds(self, name))
    async with channel_pushers([spec], hub.store, str(hub.db_path), hub.watch) as pushers:
        await pushed_to_head(pushers["pickup"], hub)
        watching.append(True)  # the lock goes the moment the channel took the first batch of the next turn
        await hub.move((Kind.RECEIVE, 2, "S1", "APPLE"), (Kind.RECEIVE, 2, "S1", "PEAR"))

        async def stood_back_or_pushed_both() -> bool:
            both = (square.quantity(apple, sq_loc), square.quantity(pear, sq_loc)) == (8, 8)
            return both or "it pushes nothing more until it takes the lock again" in caplog.text

        await wait_until(stood_back_or_pushed_both, "the pusher sees the lock gone before its next batch")
        assert sorted((square.quantity(apple, sq_loc), square.quantity(pear, sq_loc))) == [6, 8]


def test_a_square_channel_leaves_standing_the_register_sales_of_the_channels_booking_its_locations_orders() -> None:
    """Which channels' order webhooks book the sales rung up at a Square channel's locations: those of the Square
    channels taking webhooks that sell one of them (itself among them); none for a channel no such one sells."""
    from dataclasses import replace

    def square(name: str, pool: dict[str, str], hooked: bool) -> ChannelSpec:
        spec = spec_of({"name": name, "kind": "square", "url": "http://127.0.0.1:9", "pool": pool}, "token")
        if hooked:
            spec = replace(spec, webhook_secret="sq-signature-key-0123", notification_url=f"https://hub.test/{name}")
        return spec

    pos, quiet = square("pos", {"S1": "L1"}, True), square("quiet", {"S1": "L1", "S2": "L2"}, False)
    other = square("other", {"S3": "L3"}, True)
    web = spec_of(
        {"name": "web", "kind": "shopify", "url": "http://127.0.0.1:9/graphql.json", "pool": {"S1": "L1"}}, "token"
    )
    specs = [pos, quiet, other, web]
    assert [runner.order_channels(s, specs) for s in specs] == [("pos",), ("pos",), ("other",), ()]
    assert runner.order_channels(quiet, [quiet]) == ()
