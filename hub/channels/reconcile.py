"""Reconciliation: every ``reconcile_s`` read a channel's levels back and set right what drifted there.

A channel's levels can move behind the hub's back: an edit in the Shopify
admin, a sale rung up at a Square register, an app of the merchant's, a push
the channel accepted but did not apply. Each reconciliation:

0. reads the channel's listing and loads the mapping again when an item's SKU
   or id moved there (``ChannelPusher.remap_if_moved``: a SKU renamed, an item
   created again under a new id), so the levels below are the items' own;
1. computes what the channel should show at every mapped level now (the
   pusher's own computation over the hub's current counts);
2. reads what the channel shows (``Connector.read_levels``);
3. finds the divergences (``find_divergences``, pure): a level more than
   min(2 units, 5 % of the hub's level) away from the hub's — except a level
   the pusher confirmed while it was being read, a level still equal to what
   the hub last pushed while newer changes are on their way (the pusher is
   behind, not the channel), and a level the channel refused for good at that
   same quantity (already an exception of its own);
   and, of those, a level the channel's own record shows at the hub's last count there less sales made at the
   channel after it (``Connector.sold_since``: Square's inventory changes, Shopify's orders) whose orders have not
   reached the hub: the channel is right, and the hub's level pushed over it would sell those units again until
   the orders come back (``split_sold``; said in one line, not stored). A count kept at the channel, or a difference no sale
   explains, is still a divergence;
4. stores them (``ChannelState.add_divergences``: listed per channel at
   ``GET /v1/channels/{name}/divergences`` and in the hub's exceptions as
   ``channel_divergence``) and logs each;
5. has the pusher push those levels again in its next turn, with the
   channel's actual quantity as the compare-and-set base; the divergence is
   marked corrected when the channel confirms.

The loop has the one shape of every channel loop (``hub.channels.loop``): wait
until the next reconciliation is due (``reconcile_s`` after the last one, kept
in the channel state across restarts) or asked for (``request``), do one, back
off on failure and log the first failure and the recovery once. A webhook
channel cannot be read back: no reconciler runs for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from hub.channels.connector import ChannelError, ChannelRejected, ChannelUnavailable, Moved
from hub.channels.levels import LevelKey
from hub.channels.loop import LoopTask
from hub.channels.mapping import MappingError
from hub.channels.pusher import KIND_NAMES, ChannelPusher, Level
from hub.channels.state import Divergence, Reconciled, Refusal
from hub.heartbeat import BEATING, Heartbeat, beat
from hub.storage.base import StoreClosed, StoreError
from protocol import wall_ms_now
from protocol.retry import Backoff, Health, TurnFailed, run_turns

log = logging.getLogger(__name__)

TOLERANCE_UNITS = 2  # a level may be off by at most this many units …
TOLERANCE_PERCENT = 5  # … and at most this percentage of the hub's level: the smaller of the two
SKUS_PER_READ = 250  # mapped SKUs whose levels are computed and read back at once
LOGGED_MAX = 20  # divergences logged one by one per reconciliation; the rest in one line


def diverges(hub_level: int, channel_level: int) -> bool:
    """True when the channel's level is more than min(2 units, 5 % of the hub's level) away from the hub's."""
    diff = abs(channel_level - hub_level)
    return diff > TOLERANCE_UNITS or diff * 100 > TOLERANCE_PERCENT * max(0, hub_level)


def find_divergences(
    expected: Mapping[LevelKey, Level],
    read: Mapping[LevelKey, int | None],
    pushed: Mapping[LevelKey, int],
    refused: Mapping[LevelKey, Refusal],
    *,
    behind: bool,
    skip: Collection[LevelKey],
    feeder: Callable[[str], str | None],
    at_ms: int,
) -> list[Divergence]:
    """The levels of ``expected`` the channel shows (``read``) diverging from the hub's; see the module's step 3.

    ``behind``: newer changes wait to be pushed; ``skip``: levels confirmed while they were read; ``feeder``: the
    hub location feeding a channel location (None when several do)."""
    found: list[Divergence] = []
    for key in sorted(expected):
        level, shown = expected[key], read.get(key)
        if shown is None or key in skip or not diverges(level.quantity, shown):
            continue
        last = pushed.get(key)
        if behind and shown == last:
            continue  # the channel holds what it was told; the hub's newer level is on its way
        refusal = refused.get(key)
        if refusal is not None and refusal.quantity == level.quantity:
            continue  # refused for good at this level: an exception of its own
        found.append(
            Divergence(key, level.sku, feeder(key.location_id), level.quantity, last, shown, at_ms)
        )
    return found


def split_sold(
    found: Sequence[Divergence], sold: Mapping[LevelKey, Moved], *, behind: bool
) -> tuple[list[Divergence], list[Divergence]]:
    """The divergences to push over, and those the channel's own sales explain (``sold``: the channel shows the
    hub's last count there less sales made at the channel after it). Such a level is left as it stands when the
    hub's level less those sales is within the tolerance of the channel's (their orders have not reached the hub
    yet), or when newer changes wait to be pushed (``behind``: the pusher is behind, not the channel, as a level
    still at what was last pushed); else the hub moved beyond them, and it is pushed over."""
    drift: list[Divergence] = []
    left: list[Divergence] = []
    for d in found:
        by = sold.get(d.key)
        if by is not None and (behind or not diverges(d.hub_level + by.quantity - by.pushed, d.channel_level)):
            left.append(d)
        else:
            drift.append(d)
    return drift, left


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What one reconciliation did: when, how many levels it compared, and the divergences it stored."""

    done: Reconciled
    divergences: tuple[Divergence, ...]


class Reconciler(LoopTask):
    """Reads one channel's levels back every ``spec.reconcile_s``; ``async with`` starts and stops its loop."""

    def __init__(
        self, pusher: ChannelPusher, *, backoff: Backoff | None = None, rng: random.Random | None = None
    ) -> None:
        super().__init__()
        self.pusher = pusher
        self.spec = pusher.spec
        self.loop_name = f"channel-{pusher.spec.name}-reconcile"
        self.last: Reconciled | None = None
        self.last_error: str | None = None
        self._health = Health(
            log, f"channel {pusher.spec.name}: reading levels back from {pusher.spec.kind}",
            backoff or Backoff(max_s=pusher.spec.retry_max_s), rng or random.Random(),
        )  # fmt: skip
        self._lock = asyncio.Lock()  # one reconciliation at a time (the loop's or one asked for)
        self._asked = asyncio.Event()
        # How this loop proves to ``hub.leases.lead`` that it is not stuck, as its pusher does (it runs in the
        # pusher's job: a stuck reconciler would hide behind a live pusher): every await it makes is bounded (a
        # channel request by its timeout_s, a wait by its length); waiting for the pusher's lock is its holder's
        # time, watched by the holder's own heartbeat (``ChannelPusher._locked``).
        self.heartbeat = Heartbeat()


    def request(self) -> None:
        """Reconcile now instead of waiting for the next one due."""
        self._asked.set()

    async def run(self) -> None:
        """Reconciliation after reconciliation (``protocol.retry.run_turns``), each when it is due."""
        BEATING.set(self.heartbeat)  # this task's: the channel requests made in it beat it too
        self.heartbeat.beat()
        try:
            self.last = await self.pusher.state.reconciled(self.spec.name)
            await run_turns(
                self._turn, wait=self._wait, failed=self._failed, ends=(StoreClosed,), running=lambda: not self._stopped
            )
        except StoreClosed:
            return

    async def _turn(self) -> float:
        self.heartbeat.beat()
        try:
            await self.reconcile()
        except (ChannelError, StoreError, MappingError) as err:
            raise TurnFailed(str(err), retry_after_s=getattr(err, "retry_after_s", None)) from err
        self._health.succeeded()
        self.last_error = None
        return 0.0  # the next one when it is due

    async def _wait(self, delay_s: float, after_failure: bool) -> None:
        if after_failure:
            self.heartbeat.beat(delay_s)
            await asyncio.sleep(delay_s)
        await self._until_due()

    async def _failed(self, failure: TurnFailed) -> float:
        self._health.failed(failure)
        self.last_error = failure.reason
        return self._health.delay_s(failure.retry_after_s)

    async def _until_due(self) -> None:
        every_ms = round(self.spec.reconcile_s * 1000)
        due_ms = (self.last.at_ms if self.last is not None else wall_ms_now()) + every_ms
        wait_s = max(0.0, (due_ms - wall_ms_now()) / 1000)
        if wait_s > 0:
            self.heartbeat.beat(wait_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._asked.wait(), wait_s)
        self._asked.clear()

    async def reconcile(self) -> Reconciliation:
        """One reconciliation now (steps 1–5 of the module); raises what the channel or the store raised."""
        pusher, name = self.pusher, self.spec.name
        if not pusher.connector.readable:
            raise ChannelRejected(f"channel {name} is a {self.spec.kind} channel: its levels cannot be read back")
        self._beat(math.inf)  # another may be running (the loop's, or one asked for): watched by its own heartbeat
        async with self._lock:
            self._beat(math.inf)  # the pusher's lock: its holder's time, watched by the holder's heartbeat
            await pusher.ready()
            await pusher.remap_if_moved()  # a SKU renamed or an item created anew at the channel: read it first
            self._beat()
            seq = pusher.push_seq
            skus = sorted(pusher.items)
            expected: dict[LevelKey, Level] = {}
            read: dict[LevelKey, int | None] = {}
            for start in range(0, len(skus), SKUS_PER_READ):
                levels = await pusher.levels_now((), skus[start : start + SKUS_PER_READ])
                expected.update(levels)
                read.update(await pusher.connector.read_levels(sorted(levels)))
            self._beat()
            # a count pushed less sales at the channel whose orders had not reached the hub (``_less_unbooked``):
            # what the channel should show there is the hub's level less them, until the orders are booked; a count
            # whose row says nothing of it (pushed before schema 14) is read once first
            await pusher.check_unknown(expected)
            self._beat()
            less = pusher.less_unbooked
            expected = {
                k: replace(level, quantity=max(0, level.quantity - less[k])) if less.get(k) else level
                for k, level in expected.items()
            }
            now_ms = wall_ms_now()
            behind = await pusher.behind()
            found = find_divergences(
                expected, read, pusher.pushed, pusher.refused, behind=behind,
                skip=pusher.confirmed_since(seq), feeder=pusher.single_feeder, at_ms=now_ms,
            )  # fmt: skip
            found = await self._not_sold(found, behind)
            self._beat()
            if not pusher.holding():  # lost with its connection: another hub may push and reconcile it by now
                raise ChannelUnavailable(
                    f"channel {name}: this hub lost its pusher lock while reconciling it; nothing it found was stored"
                )
            stored = await pusher.state.add_divergences(name, found)
            self._log(len(expected), stored)
            if stored:
                self._beat(math.inf)  # the pusher's lock again
                await pusher.correct({d.key: d.channel_level for d in stored})
                self._beat()
            done = Reconciled(now_ms, len(expected), len(stored))
            await pusher.state.save_reconciled(name, done)
            self.last = done
            return Reconciliation(done, tuple(stored))

    async def _not_sold(self, found: list[Divergence], behind: bool) -> list[Divergence]:
        """The divergences less those the channel's own sales explain (``split_sold``), read from its record only
        for the levels that diverge; those are said in one line."""
        if not found:
            return found
        stamps = self.pusher.stamps
        sold = await self.pusher.connector.sold_since(
            {d.key: d.channel_level for d in found}, {d.key: stamps[d.key] for d in found if d.key in stamps}
        )
        if not sold:
            return found
        drift, left = split_sold(found, sold, behind=behind)
        if left:
            d = left[0]
            by = sold[d.key]
            # without order webhooks no order comes back: the sales reach the hub only when the store books them
            until = (
                "until the sales' orders reach the hub" if self.spec.webhook_secret else
                "until the sales reach the hub; this channel takes no order webhooks, so only the store's own booking "
                "of them brings them there"
            )  # fmt: skip
            log.log(
                logging.INFO if self.spec.webhook_secret else logging.WARNING,
                "channel %s: %s sold units after the hub's last count at %d diverging level(s) (first %s at %s: "
                "counted %d, %+d by %d sale(s) since, %d now, the hub's level %d); its count stands rather than being "
                "pushed over %s",
                self.spec.name, KIND_NAMES.get(self.spec.kind, self.spec.kind), len(left), d.sku, d.key.location_id,
                by.pushed, by.quantity - by.pushed, by.changes, by.quantity, d.hub_level, until,
            )  # fmt: skip
        return drift

    def _beat(self, for_s: float = 0.0) -> None:
        """The heartbeat of the task this runs in: the reconciler's loop's, or a reconciliation asked for over the
        API's (``hub.channels.runner.reconcile_asked``)."""
        beat(for_s)

    def _log(self, checked: int, found: list[Divergence]) -> None:
        name, who = self.spec.name, KIND_NAMES.get(self.spec.kind, self.spec.kind)
        if not found:
            log.info("channel %s: read %d level(s) back from %s; none diverged", name, checked, who)
            return
        for d in found[:LOGGED_MAX]:
            pushed = "never pushed" if d.last_pushed is None else f"last pushed {d.last_pushed}"
            log.warning(
                "channel %s: %s showed %d of %s at %s where the hub's level is %d (%s); pushing the hub's level again",
                name, who, d.channel_level, d.sku, d.key.location_id, d.hub_level, pushed,
            )  # fmt: skip
        more = f" ({len(found) - LOGGED_MAX} more not logged one by one)" if len(found) > LOGGED_MAX else ""
        log.warning("channel %s: %d of %d level(s) read back diverged%s", name, len(found), checked, more)
