"""Helpers of the channel tests: the hub they run against, a channel spec, a bounded wait."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from hub.channels import ChannelPusher, ChannelSpec, parse_channels
from hub.channels.orders import OrderContext, Translation, to_events
from hub.channels.runner import open_channel_state
from hub.channels.state import SqlChannelState
from hub.feed import ChangeWatch
from hub.storage import HubStore
from hub.storage.base import AgentIdentity
from protocol import Kind, wall_ms_now
from tests.channels.emulators.square_orders import SquareOrdersEmulator
from tests.harness.inprocess import ServedHub, hub_in_process
from tests.harness.net import free_port
from tests.hub.event_factory import EventFactory

BOUND_S = 30.0  # every wait in these tests is bounded by this


@dataclass
class Hub:
    """A real hub store with one agent credential for the pool's locations, and its change feed watch."""

    store: HubStore
    who: AgentIdentity
    watch: ChangeWatch
    db_path: Path
    factory: EventFactory
    clock_ms: float = 0.0

    async def move(self, *moves: tuple[Kind, int, str, str]) -> None:
        """Ingest one batch of movements (kind, qty, location, sku) as one agent sync."""
        events = []
        for kind, qty, location, sku in moves:
            self.clock_ms += 1
            events.append(self.factory(kind, qty, at_ms=self.clock_ms, location=location, sku=sku))
        result = await self.store.ingest(self.who, self.factory.epoch, events)
        assert not result.rejected, result.rejected

    async def available(self, location: str, sku: str) -> int:
        rows = await self.store.counts(location=location, sku=sku)
        return rows[0].available if rows else 0


def spec_of(table: dict[str, Any], token: str) -> ChannelSpec:
    """One channel's spec, its secret from an environment variable (as a hub would read it)."""
    (spec,) = parse_channels([{"secret_env": "CHANNEL_TOKEN", **table}], environ={"CHANNEL_TOKEN": token})
    return spec


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, bound_s: float = BOUND_S) -> None:
    """Poll ``check`` until true; fail with ``what`` after ``bound_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


async def pushed_to_head(pusher: ChannelPusher, hub: Hub) -> None:
    """Wait until ``pusher`` has saved its cursor at the hub's newest change. The channel answers before the
    cursor is saved, and a pusher stopped between the two pushes that turn again on its next start (allowed: the
    push is idempotent), so a test that counts pushes across a restart waits for this before it stops one."""
    latest = await hub.store.latest_change_id()

    async def saved() -> bool:
        return pusher.status.cursor == latest

    await wait_until(saved, f"the pusher's cursor reaches the hub's newest change ({latest})")


async def settle(pusher: ChannelPusher) -> None:
    """Turn the pusher until it has nothing left to do."""
    for _ in range(20):
        if not await pusher.turn():
            return
    raise AssertionError("the pusher kept finding work")


async def book_order(
    hub: Hub, pusher: ChannelPusher, platform: str, translate: Callable[[OrderContext], Translation]
) -> None:
    """Book an order at the hub under the channel's identity, translated by ``translate``, as its webhook books it."""
    assert pusher.mapping is not None
    ctx = OrderContext.of(pusher.spec.name, platform, pusher.spec.pool, pusher.mapping)
    events = to_events(ctx, f"channel:{pusher.spec.name}", translate(ctx), wall_ms_now(), 600_000)
    who = AgentIdentity(f"channel:{pusher.spec.name}", frozenset(pusher.spec.pool), "agent")
    result = await hub.store.ingest(who, 0, events)
    assert not result.rejected, result.rejected


def logged(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    """The messages logged so far that contain ``words``."""
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


def one_sale_stands(channel: str, platform: str, location: str) -> str:
    """What a reconciliation says of A at ``location``, counted 10 and one sale since whose order is on its way."""
    return (
        f"channel {channel}: {platform} sold units after the hub's last count at 1 diverging level(s) (first A at "
        f"{location}: counted 10, -1 by 1 sale(s) since, 9 now, the hub's level 10); its count stands rather than "
        "being pushed over until the sales' orders reach the hub"
    )


def expected_level(avail: Sequence[int], held_back: int = 0) -> int:
    return max(0, sum(avail) - held_back)


class SquarePos(NamedTuple):
    """A hub on 127.0.0.1 with one Square channel, ``pos``: hub store S1 fed by Square's ``location``, whose
    variation ``item`` is SKU-A; its webhook URL ``hook``, and the channel state in the hub's database."""

    square: SquareOrdersEmulator
    location: str
    item: str
    url: str
    hook: str
    served: ServedHub
    state: SqlChannelState


@contextlib.asynccontextmanager
async def square_pos_hub(db: str) -> AsyncIterator[SquarePos]:
    """``SquarePos`` serving ``db`` (a SQLite path or a PostgreSQL URL), once the channel's SKU mapping is loaded."""
    async with SquareOrdersEmulator() as square:
        location = square.add_location()
        item = square.add_variation("SKU-A")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        hook = f"{url}/v1/channels/pos/webhooks"
        specs = parse_channels(
            [{"name": "pos", "kind": "square", "url": square.url, "secret_env": "SQ_TOKEN",
              "webhook_secret_env": "SQ_HOOK", "notification_url": hook, "pool": {"S1": location}}],
            environ={"SQ_TOKEN": square.token, "SQ_HOOK": square.signature_key},
        )  # fmt: skip
        async with hub_in_process(db, port=port, channels=specs) as served, open_channel_state(db) as state:

            async def mapped() -> bool:
                return await state.mapping("pos") is not None

            await wait_until(mapped, "the pos channel's SKU mapping is loaded")
            yield SquarePos(square, location, item, url, hook, served, state)


async def store_moves(hub: Hub, skew_min: float, *moves: tuple[Kind, int, str, str, float]) -> None:
    """Movements (kind, qty, location, sku, minutes ago) booked by a store PC whose clock is ``skew_min`` minutes off
    (positive: ahead), as its agent sends them: stamped by that clock, with that clock's time of sending
    (``sent_ms``), from which the hub measures the PC's skew."""
    now = wall_ms_now()
    skew = round(skew_min * 60_000)
    events = [
        hub.factory(kind, qty, at_ms=now - round(ago * 60_000) + skew + i - hub.factory.base_ms, location=loc, sku=sku)
        for i, (kind, qty, loc, sku, ago) in enumerate(moves)
    ]
    result = await hub.store.ingest(hub.who, hub.factory.epoch, events, sent_ms=now + skew + len(moves))
    assert not result.rejected, result.rejected
