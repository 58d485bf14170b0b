"""Start every configured channel's pusher beside the hub, and stop them with it.

``channel_pushers`` is what the hub's app runs (one call, when channels are
configured): one HTTP session for all connectors, the channel state in the
hub's SQLite file, one pusher per channel woken by the hub's change watch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import aiohttp

from hub.channels.config import ChannelSpec
from hub.channels.connector import ChannelError, Connector
from hub.channels.pusher import ChangeWaiter, ChannelPusher, FeedReader
from hub.channels.shopify import ShopifyConnector
from hub.channels.square import SquareConnector
from hub.channels.state import SqliteChannelState

log = logging.getLogger(__name__)


def make_connector(spec: ChannelSpec, session: aiohttp.ClientSession) -> Connector:
    if spec.kind == "shopify":
        return ShopifyConnector(spec, session)
    if spec.kind == "square":
        return SquareConnector(spec, session)
    raise ChannelError(f"channel {spec.name}: pushing to a {spec.kind} channel is not built yet; use shopify or square")


@contextlib.asynccontextmanager
async def channel_pushers(
    specs: Sequence[ChannelSpec], feed: FeedReader, db_path: str, waiter: ChangeWaiter
) -> AsyncIterator[dict[str, ChannelPusher]]:
    """Run one pusher per channel until the block ends. ``db_path``: the hub's SQLite file."""
    if "://" in db_path and not db_path.startswith("sqlite://"):
        raise ChannelError("channels keep their state in the hub's SQLite file; a PostgreSQL hub cannot run them yet")
    async with (
        await SqliteChannelState.open(db_path) as state,
        aiohttp.ClientSession(trust_env=False, connector=aiohttp.TCPConnector(limit=max(2, len(specs) * 2))) as session,
    ):
        pushers = {s.name: ChannelPusher(s, feed, state, make_connector(s, session), waiter) for s in specs}
        for p in pushers.values():
            p.start()
        log.info("pushing levels to %d channel(s): %s", len(pushers), ", ".join(pushers))
        try:
            yield pushers
        finally:
            for p in pushers.values():
                await p.stop()
