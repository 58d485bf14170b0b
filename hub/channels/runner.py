"""Start every configured channel's pusher, and its reconciler, beside the hub, and stop them with it.

``channel_pushers`` is what the hub's app runs (one call, when channels are
configured): one HTTP session for all connectors, the channel state in the
hub's database (``open_channel_state``: its SQLite file, or its PostgreSQL
database), one pusher per channel woken by the hub's change watch and,
beside each pusher of a channel that can be read back and whose
``reconcile_s`` is not 0, its reconciler (``pusher.reconciler``).

On a PostgreSQL hub several hub processes share the database, and only one
pushes each channel: the one holding the channel's pusher lock
(``hub.channels.state_postgres.PusherLeases``; the loop is
``hub.leases.lead``, which webhooks use too). The others
stand by, try again every ``lease_retry_s`` (3 s) and take over, with a new pusher loading the
cursor the last one saved, when the holder goes away. A SQLite hub pushes
every channel, through the same loop over leases always granted
(``hub.leases.LocalLeases``): on either backend a channel whose pusher loop
ends by itself is stopped and started again, both loops, after a backoff; a
reconciler loop that ends by itself is started again alone, after the same
backoff, its pusher pushing on. ``pushes_here`` tells which channels this hub pushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiohttp

from hub.channels.config import ChannelSpec
from hub.channels.connector import ChannelError, Connector
from hub.channels.mapping import SkuMapping
from hub.channels.pusher import ChangeWaiter, ChannelPusher, FeedReader
from hub.channels.reconcile import Reconciler, Reconciliation
from hub.channels.shopify import ShopifyConnector
from hub.channels.square import SquareConnector
from hub.channels.state import SqlChannelState, SqliteChannelState
from hub.channels.webhook import WebhookConnector
from hub.heartbeat import BEATING, DEFAULT_LEASE_STALE_S, Heartbeat
from hub.leases import LeaseHolder, LocalLeases, LockConnections, Words, lead
from hub.storage import POSTGRES_SCHEMES

log = logging.getLogger(__name__)
T = TypeVar("T")

ASKED_RECONCILE = "reconciling as asked"  # work asked for over the API (``run_asked``), in ``lead``'s sentences
ASKED_REFRESH = "refreshing the mapping as asked"
_PUSHING: weakref.WeakSet[ChannelPusher] = weakref.WeakSet()  # the pushers this process started
# The work asked for over the API (``run_asked``) running in each pusher's job: its words and its heartbeat.
_ASKED: weakref.WeakKeyDictionary[ChannelPusher, dict[asyncio.Task[Any], tuple[str, Heartbeat]]] = (
    weakref.WeakKeyDictionary()
)


class NotDone(ChannelError):
    """Work asked for over the API was stopped with its channel's job on this hub before it finished."""


def make_connector(spec: ChannelSpec, session: aiohttp.ClientSession) -> Connector:
    if spec.kind == "shopify":
        return ShopifyConnector(spec, session)
    if spec.kind == "square":
        return SquareConnector(spec, session)
    if spec.kind == "webhook":
        return WebhookConnector(spec, session)
    raise ChannelError(f"channel {spec.name}: there is no connector for a {spec.kind} channel")


def order_channels(spec: ChannelSpec, specs: Sequence[ChannelSpec]) -> tuple[str, ...]:
    """The Square channels taking order webhooks that sell at one of ``spec``'s Square locations (itself among
    them when it takes them): their webhooks book the sales rung up there, which ``spec``'s pusher leaves standing
    until they are booked (``ChannelPusher.order_channels``). Square's location ids are its own, unique."""
    if spec.kind != "square":
        return ()
    mine = set(spec.pool.values())
    return tuple(
        sorted(s.name for s in specs if s.kind == "square" and s.webhook_secret and mine & set(s.pool.values()))
    )


def is_postgres(db: str) -> bool:
    return db.startswith(POSTGRES_SCHEMES)


@contextlib.asynccontextmanager
async def open_channel_state(db: str, db_timeout_s: float | None = None) -> AsyncIterator[SqlChannelState]:
    """The channel state in the hub's database: ``db`` is its SQLite file (or ``sqlite://`` URL) or PostgreSQL URL;
    on PostgreSQL, ``db_timeout_s`` (the hub's) bounds the work on each of its connections."""
    if is_postgres(db):
        from hub.channels.state_postgres import PostgresChannelState  # the driver loads only for a PostgreSQL hub

        state: SqlChannelState = await PostgresChannelState.open(db, db_timeout_s)
    else:
        state = await SqliteChannelState.open(db)
    async with state:
        yield state


def pushes_here(p: ChannelPusher) -> bool:
    """This hub process runs ``p``'s loop (on a PostgreSQL hub, another process may push the channel instead)."""
    return p in _PUSHING


def _start(p: ChannelPusher) -> None:
    p.start()
    _PUSHING.add(p)
    if p.connector.readable and p.spec.reconcile_s > 0:
        p.reconciler = Reconciler(p)
        p.reconciler.start()


async def _stop(p: ChannelPusher) -> None:
    if p.reconciler is not None:
        await p.reconciler.stop()
    asked = list(_ASKED.pop(p, {}))  # work of the job too: nothing of it goes on once another hub may run it
    for task in asked:
        task.cancel()
    if asked:
        await asyncio.wait(asked)  # their requests say what became of them; a cancellation of this one goes on
    await p.stop()
    _PUSHING.discard(p)


async def run_asked(p: ChannelPusher, doing: str, not_done: str, work: Callable[[], Awaitable[T]]) -> T:
    """``work`` on ``p``'s channel asked for over the API (a reconciliation, a mapping refresh), run as work of
    the channel's job on this hub, as its loops are: in a task of its own whose heartbeat ``hub.leases.lead``
    watches (``doing`` names it; the channel's requests beat it with their ``timeout_s``), so one stuck past its
    bound for ``lease_stale_s`` has its job stopped and the lock given back; and stopped with the job whatever
    stops it (the lock lost, the hub stopping), so it never goes on on a hub that no longer pushes the channel.
    It runs on, if the request's client leaves, until it is done. Raises what ``work`` raised, or ``NotDone``
    (``not_done``: "channel NAME was not reconciled") when the job stopped it."""
    if not pushes_here(p):
        raise NotDone(f"{not_done}: this hub does not push the channel")
    heartbeat = Heartbeat()

    async def run() -> T:
        BEATING.set(heartbeat)  # this task's: the channel requests made in it beat it
        heartbeat.beat()
        return await work()

    task = asyncio.create_task(run(), name=f"channel-{p.spec.name}-asked")
    asked = _ASKED.setdefault(p, {})
    asked[task] = (doing, heartbeat)
    task.add_done_callback(lambda t: asked.pop(t, None))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not task.cancelled() or (current is not None and current.cancelling()):
            raise  # this request's own task was cancelled (the app stopping): the job stops its work itself
        raise NotDone(
            f"{not_done}: this hub stopped running the channel while it worked (its pusher lock lost or given back, "
            "or the hub stopping)"
        ) from None


async def reconcile_asked(p: ChannelPusher) -> Reconciliation:
    """One reconciliation now (``POST /v1/channels/{name}/reconcile``), at once, not at the loop's next due time
    (``run_asked``)."""
    reconciler = p.reconciler or Reconciler(p)  # reconcile_s = 0: no loop, but it can be asked
    return await run_asked(p, ASKED_RECONCILE, f"channel {p.spec.name} was not reconciled", reconciler.reconcile)


async def refresh_asked(p: ChannelPusher) -> SkuMapping:
    """Load the mapping again now (``POST /v1/channels/{name}/mapping/refresh``; ``run_asked``)."""
    return await run_asked(p, ASKED_REFRESH, f"the mapping of channel {p.spec.name} was not refreshed",
                           p.refresh_mapping)  # fmt: skip


@contextlib.asynccontextmanager
async def channel_pushers(
    specs: Sequence[ChannelSpec], feed: FeedReader, db_path: str, waiter: ChangeWaiter,
    locks: LockConnections | None = None, db_timeout_s: float | None = None,
) -> AsyncIterator[dict[str, ChannelPusher]]:  # fmt: skip
    """Run one pusher (and reconciler) per channel until the block ends. ``db_path``: the hub's database;
    ``locks``: the hub's lock connections (``hub.leases.share_locks``; the channels take theirs) and its
    ``lease_stale_s`` and ``lease_retry_s``; else a lock connection of their own and the defaults.

    The dict yielded is kept up to date: on a PostgreSQL hub a channel's entry is replaced when this hub takes the
    channel over or gives it up."""
    async with (
        open_channel_state(db_path, db_timeout_s) as state,
        aiohttp.ClientSession(trust_env=False, connector=aiohttp.TCPConnector(limit=max(2, len(specs) * 2))) as session,
    ):
        locks = locks or LockConnections(db_path, DEFAULT_LEASE_STALE_S)
        local = None if is_postgres(db_path) else LocalLeases(locks.stale_s)  # one hub per SQLite file: it pushes all
        leases: LeaseHolder
        if local is None:
            from hub.channels.state_postgres import PusherLeases  # at run time only on a PostgreSQL hub

            leases = PusherLeases(locks.of("channels") or db_path)
        else:
            leases = local

        def make(spec: ChannelSpec) -> ChannelPusher:
            p = ChannelPusher(spec, feed, state, make_connector(spec, session), waiter)
            p.holding = functools.partial(leases.holds, spec.name)  # asked before each push: no two hubs push
            p.order_channels = order_channels(spec, specs)
            return p

        pushers = {s.name: make(s) for s in specs}
        words = Words("channel", "pusher lock", "the channels' pusher locks", "pushes", "pushing")
        jobs = {name: _ChannelJob(name, pushers, make, state) for name in pushers}
        if local is not None:  # a SQLite hub pushes every channel, and starts again one whose loop ended
            local.start_all(jobs)  # runs the pushers just made: no channel's connector is built twice
            log.info("pushing levels to %d channel(s): %s", len(pushers), ", ".join(pushers))
        for job in jobs.values():
            job.handed_out()
        leading = lead(leases, jobs, log, words, locks.retry_s, lambda: waiter.closed)  # closed: the hub stops
        task = asyncio.create_task(leading, name="channel-leases")
        try:
            yield pushers
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for p in list(pushers.values()):
                await _stop(p)
            await leases.close()  # only now: no pusher of ours runs when another hub takes the channels


class _ChannelJob:
    """A channel as ``hub.leases.lead`` sees it: its entry in ``pushers`` is replaced by a fresh
    pusher when it stops (a stopped loop cannot start again) and when it starts (loading the saved cursor).

    The one exception is the pusher made at setup, started before anything else saw it (a SQLite hub's
    ``LocalLeases.start_all``): it is run as it is, so a channel's connector is built once, not twice."""

    def __init__(
        self, name: str, pushers: dict[str, ChannelPusher], make: Callable[[ChannelSpec], ChannelPusher],
        state: SqlChannelState,
    ) -> None:  # fmt: skip
        self._name, self._pushers, self._make, self._state = name, pushers, make, state
        self._unseen = True  # the pusher in ``pushers`` was made just now: nothing read, loaded or started it yet

    def handed_out(self) -> None:
        """The pushers are about to be shown (``GET /v1/channels``, the admin routes): one started later may
        hold what it read before another hub pushed, so it is made afresh then."""
        self._unseen = False

    def here(self) -> bool:
        return pushes_here(self._pushers[self._name])

    def ended(self) -> tuple[str, asyncio.Task[None]] | None:
        """The pusher's loop or its reconciler's, whichever ended by itself (the pusher's first: it is restarted
        whole); a reconciler that ended alone is started again alone (``restart``)."""
        p = self._pushers[self._name]
        for doing, loop in (("pushing", p), ("reconciling", p.reconciler)):
            task = loop.task if loop is not None else None
            if task is not None and task.done():
                return doing, task
        return None

    def overdue(self) -> tuple[str, float] | None:
        """The pusher's loop, its reconciler's or work asked for over the API (``run_asked``),
        whichever has been silent longest past the bound it last gave, and how long: all run in this job, so a
        stuck one must not hide behind another, live."""
        p = self._pushers[self._name]
        late = [
            (doing, loop.heartbeat.overdue_s())
            for doing, loop in (("pushing", p), ("reconciling", p.reconciler))
            if loop is not None and loop.task is not None and not loop.task.done()
        ]
        late += [(doing, heartbeat.overdue_s()) for task, (doing, heartbeat) in _ASKED.get(p, {}).items()
                 if not task.done()]  # fmt: skip
        return max(late, key=lambda each: each[1], default=None)

    def aside(self) -> bool:
        return False  # a channel's settings are its own to store (``ChannelPusher._load``): any hub pushes it

    def restartable(self, doing: str) -> bool:
        """A reconciler is started again alone: it keeps nothing a new one does not load (the last reconciliation
        is stored), while restarting the pusher would drop its corrections waiting and hand the channel to
        another hub for nothing. A dead pusher is restarted whole: its reconciler works through it."""
        return doing == "reconciling"

    async def restart(self, doing: str) -> None:
        p = self._pushers[self._name]
        if doing != "reconciling" or p.reconciler is None:
            raise RuntimeError(f"channel {self._name}: only its reconciler is started again alone, not {doing}")
        await p.reconciler.stop()  # ended already: nothing is awaited again
        p.reconciler = Reconciler(p)
        p.reconciler.start()

    def start(self) -> None:
        p = self._pushers[self._name]
        if not self._unseen:
            p = self._pushers[self._name] = self._make(p.spec)  # loads the cursor and levels the last pusher saved
        self._unseen = False
        _start(p)

    async def stop(self) -> None:
        p = self._pushers[self._name]
        await _stop(p)
        self._pushers[self._name] = self._make(p.spec)

    async def stand_by(self) -> None:
        self._pushers[self._name].status.cursor = await self._state.cursor(self._name)  # GET /v1/channels shows it
