"""A channel pusher: the change feed carried to one channel, as a loop over a cursor (docs/design.md: connectors are loops over a cursor).

One turn is one unit of work:

1. read the page of changes after the saved cursor (up to ``page_limit``);
2. for every mapped SKU the page touches at a pool location, compute the level
   the channel should show from the hub's *current* counts (so a burst of
   1,000 sales of one SKU is one level, and the last value always wins);
3. drop the levels equal to what the channel last confirmed, and those the
   channel refused for good at that same quantity;
4. push the rest in batches of ``batch_max``; after each batch the channel
   confirmed, store the confirmed quantities, and with the last batch move the
   cursor to the end of the page — in one transaction.

Some levels are *forced*: they go out in the next turn even if they equal what
the channel last confirmed — every level of every mapped SKU after the mapping
is (re)loaded (items mapped just now were never told), and the levels the
reconciler (``hub.channels.reconcile``) found diverging, with the channel's
actual quantity as the compare-and-set base. A forced level carries the time
of the push as its ``occurred_at`` (Square keeps the newest count).

A level the channel refuses for good (``LevelsRefused``: an item it cannot
stock or set) does not block the channel: it is stored as a refusal (listed in
the hub's exceptions with the channel's reason), the batch goes out again
without it, and it is sent again only when its level changes or the mapping
is refreshed. A level refused because its item is gone from the channel (``LevelsRefused.gone``) makes the
pusher read the channel's listing right after the turn and map it again when it changed (``_remap_gone``, at
most once per ``REMAP_GAP_S``), so an item created again under a new id gets its level in seconds.

After a turn that pushed, the loop waits ``coalesce_s`` before the next one,
so the changes of a burst gather into one page: 1,000 sales of one SKU in a
second cost a handful of calls, and the last value always goes out.

A failed push moves nothing: the loop backs off (exponentially, with jitter,
up to ``retry_max_s``, or longer when the channel said ``Retry-After``) and
does the same turn again from the same cursor, so the request carries the same
idempotency key when its content is the same. A restart resumes from the saved
cursor; nothing after it is skipped, and nothing already confirmed is sent
again unless its value changed. A (re)loaded mapping forgets every
confirmation (``ChannelState.save_mapping``): the hub no longer knows what the
channel holds, so a restart before the mapping's forced push got through
pushes every level not confirmed since (``_force_unconfirmed``). A webhook
channel is never read back, and nothing but this would ever repair it.

Lag (``LagStats``): per turn that confirmed levels, the time from the newest
pushed change's movement at the store (its event's wall clock) to the
channel's confirmation; the last one and a rolling p50/p99, in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from hub.bundles import bundle_parts_of
from hub.channels.config import DEFAULT_ORDER_MATCH_WINDOW_S, DEFAULT_UNBOOKED_SALE_WAIT_S, ChannelSpec
from hub.channels.connector import (
    ChannelError,
    ChannelRejected,
    Confirmed,
    Connector,
    Kept,
    LevelsRefused,
    Moved,
    Sale,
    Target,
)
from hub.channels.levels import LevelKey, sku_levels
from hub.channels.loop import LoopTask
from hub.channels.mapping import ItemIds, ListingEntry, MappingError, SkuMapping, build_mapping, parse_mapping_csv
from hub.channels.shopify import ShopifyConnector
from hub.channels.state import ChannelState, Refusal, Unbooked
from hub.heartbeat import BEATING, Heartbeat, beat
from hub.storage.base import AgentStatus, ChangeRow, CountRow, Effect, LedgerRow, StoreClosed, StoreError
from hub.storage.findings import UNBOOKED_SALE_PREFIX
from hub.storage.keys import CountKey
from protocol import csvtext, pack_hlc, unpack_hlc, wall_ms_now
from protocol.retry import Backoff, Health, TurnFailed, run_turns

if TYPE_CHECKING:
    from hub.channels.reconcile import Reconciler

log = logging.getLogger(__name__)

PAGE_LIMIT_DEFAULT = 1_000
WAIT_S_DEFAULT = 60.0
COUNTS_LIMIT = 100_000
LAG_SAMPLES = 1_000  # the rolling window of lag samples (one per confirmed turn)
LEDGER_LOOKBACK = 32  # newest ledger rows of a (location, sku) searched for a change's event
UNMAPPED_MAX = 1_000  # SKUs remembered as moving in the pool unmapped since the mapping was loaded
KIND_NAMES = {"shopify": "Shopify", "square": "Square", "webhook": "the receiver"}
REMAP_GAP_S = 30.0  # a channel's listing is read for items gone at most this often (after refused pushes)
LEASE_LOST_WAIT_S = 3.0  # a pusher whose lock went waits this long a turn (the default lease_retry_s)
KEPT_AGAIN_MAX = 2  # pushes in a row, stamped after a count the channel kept, before it is left to reconciliation
# A register sale whose order has not reached the hub is taken off the counts pushed for at most this long after the
# channel received it: Square retries an order's webhook for a day, so its order will not come later than that
SALES_WAIT_MAX_MS = 24 * 3600 * 1000
# A register sale is told from the hub's last stock count behind a level on the hub's clock (``_count_times``): it is
# left out as seen by the count only when Square received it this long before the count was made; one nearer is taken
# off (the side that never shows more than the shelf holds) until its order reaches the hub
COUNT_MARGIN_MS = 60 * 1000
COUNT_LOOKUP = 8  # ledger rows read back from a count's stamp to find its event (its agent and receipt)
# A register sale that names no order the hub booked (Square: no transaction_id, a sale without a payment; or one no
# order of the hub carries) is matched to a sale the hub booked from one of the channel's orders: the same item,
# location and units, the order's time within this long of the sale's occurred_at (both Square's clock; the channel's
# ``order_match_window_s``) …
ORDER_MATCH_WINDOW_MS = round(DEFAULT_ORDER_MATCH_WINDOW_S * 1000)
ORDER_MATCH_LOOKUP = 200  # … among at most this many of the SKU's newest ledger rows at each hub location feeding it
ORDER_MATCH_SKEW_MS = 3600 * 1000  # those rows are stamped in a store PC's frame (its skew): read this far past it
# A sale taken off the counts whose order has not come this long after Square received it is an exception for a
# person (``channel_order_refused`` of id ``sale:<adjustment id>``): a register order's webhook comes in seconds (the
# channel's ``unbooked_sale_wait_s``). The pusher's loop checks the levels with such sales when their oldest comes due
# (``report_overdue``), whether or not they are pushed again
UNBOOKED_SALE_WAIT_MS = round(DEFAULT_UNBOOKED_SALE_WAIT_S * 1000)
SALE_PREFIX = UNBOOKED_SALE_PREFIX  # a sale reported so is stored with the channel's refused orders under this id
REPORT_RETRY_MS = 60 * 1000  # a level due to be checked whose sales could not be read is checked again this much later


def _span(ms: int) -> str:
    """A setting's time in words: "10 minutes", "90 seconds"."""
    return f"{ms // 60_000} minutes" if ms % 60_000 == 0 else f"{ms / 1000:g} seconds"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _utc(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.") + f"{ms % 1000:03d}" if ms > 0 else "unknown time"
    )


class FeedReader(Protocol):
    """The part of the hub store a pusher reads: the change feed, the counts, the ledger (for lag)."""

    async def changes(
        self, after: int, limit: int, location: str | None = None, sku: str | None = None
    ) -> list[ChangeRow]: ...

    async def counts(
        self, *, location: str | None = None, sku: str | None = None, limit: int = 1000, after: CountKey | None = None
    ) -> list[CountRow]: ...

    async def ledger(
        self, *, location: str | None = None, sku: str | None = None, limit: int = 1000, before: int | None = None
    ) -> list[LedgerRow]: ...

    async def agent_status(self, agent_id: str | None = None) -> list[AgentStatus]: ...


class ChangeWaiter(Protocol):
    """Wakes a pusher when a change after its cursor is committed (``hub.feed.ChangeWatch`` fits)."""

    @property
    def closed(self) -> bool: ...

    async def wait_past(self, after: int, timeout_s: float) -> int: ...


@dataclass(slots=True)
class PusherStatus:
    """Where one pusher stands, in memory (the stored position is the channel state's)."""

    cursor: int = 0
    turns: int = 0  # turns that found changes (or forced levels)
    pushes: int = 0  # batches the channel confirmed
    levels_pushed: int = 0
    failures: int = 0
    last_error: str | None = None
    last_push_ms: int | None = None
    mapped: int = 0
    findings: int = 0
    refused: int = 0  # levels the channel refused for good and has not taken since


class LagStats:
    """Store movement → channel confirmation, in ms: the last sample and percentiles of the last ``size``."""

    def __init__(self, size: int = LAG_SAMPLES) -> None:
        self._samples: deque[int] = deque(maxlen=size)
        self.last_ms: int | None = None

    def add(self, lag_ms: int) -> None:
        self.last_ms = max(0, lag_ms)
        self._samples.append(self.last_ms)

    def percentile_ms(self, p: float) -> int | None:
        """The ``p``-th percentile (nearest rank) of the window, None when empty."""
        if not self._samples:
            return None
        ordered = sorted(self._samples)
        rank = max(1, math.ceil(len(ordered) * p / 100))
        return ordered[min(rank, len(ordered)) - 1]

    @property
    def samples(self) -> int:
        return len(self._samples)


def _moved(before: Collection[ItemIds], after: Collection[ItemIds]) -> str:
    """What changed between two mappings, in a few words: "SKU A now on item X (was Y), SKU B no longer listed"."""
    old, new = {i.sku: i.item_id for i in before}, {i.sku: i.item_id for i in after}
    said = [
        f"SKU {sku} " + ("no longer listed" if sku not in new else
                         f"now on item {new[sku]}" + (f" (was {old[sku]})" if sku in old else ""))
        for sku in sorted(old.keys() | new.keys()) if old.get(sku) != new.get(sku)
    ]  # fmt: skip
    more = f" and {len(said) - 5} more" if len(said) > 5 else ""
    return ", ".join(said[:5]) + more if said else "an item's variant id"


@dataclass(frozen=True, slots=True)
class Level:
    """What the channel should show at one level now: for which SKU, how many, and the newest count's time."""

    sku: str
    quantity: int
    at_ms: int


class ChannelPusher(LoopTask):
    """Pushes one channel's levels forever; ``async with`` starts and stops its loop."""

    def __init__(
        self,
        spec: ChannelSpec,
        feed: FeedReader,
        state: ChannelState,
        connector: Connector,
        waiter: ChangeWaiter,
        *,
        page_limit: int = PAGE_LIMIT_DEFAULT,
        wait_s: float = WAIT_S_DEFAULT,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self.loop_name = f"channel-{spec.name}"
        self.spec = spec
        self.status = PusherStatus()
        self.lag = LagStats()
        self.connector = connector
        self.state = state
        self.mapping: SkuMapping | None = None
        self.reconciler: Reconciler | None = None  # set by hub.channels.runner
        self._feed = feed
        self._waiter = waiter
        self._page_limit = page_limit
        self._wait_s = wait_s
        self._health = Health(
            log, f"channel {spec.name}: pushing levels to {spec.kind}", backoff or Backoff(max_s=spec.retry_max_s),
            rng or random.Random(),
        )  # fmt: skip
        self._identity = spec.kind == "webhook" and spec.mapping_csv is None  # every SKU is its own item
        self._items: dict[str, str] = {}
        self._pushed: dict[LevelKey, int] = {}
        self._refused: dict[LevelKey, Refusal] = {}
        self._forced: dict[str, None] = {}  # SKUs whose every level goes out next turn (after a mapping load)
        self._bases: dict[LevelKey, int] = {}  # levels to correct next turn, from the channel's actual quantity
        # The stamp each level last went out with: a level's next stamp is always later, so a channel that
        # orders changes by their time (Square's occurred_at) never keeps an older level over a newer one
        # (a full push is stamped with the push time, which can be later than the next change's commit).
        self._stamps: dict[LevelKey, int] = {}
        self._force_gen = 0
        self._nonce = uuid.uuid4().hex[:12]  # forced turns of this process never share an idempotency key
        self._unsure: set[LevelKey] = set()  # pushed, never answered: the channel may hold either level
        self._gone: set[LevelKey] = set()  # refused as gone from the channel: its listing is read after the turn
        self._remapped_at: float | None = None  # when (loop time) that was done last
        self._kept: dict[LevelKey, int] = {}  # pushes in a row the channel answered keeping a count of its own
        # The channels whose order webhooks book this channel's sales at the hub (its own when it takes them; set by
        # hub.channels.runner): a sale at the channel whose order none of them booked yet is taken off each count
        # pushed (``_less_unbooked``). Empty: counts go out at the hub's level.
        self.order_channels: tuple[str, ...] = (spec.name,) if spec.kind == "square" and spec.webhook_secret else ()
        if isinstance(connector, ShopifyConnector) and spec.webhook_secret:
            # its order webhooks book its orders: a reconciliation reads Shopify's orders the hub has not booked
            connector.settled = self.orders_settled
            connector.hub_levels = self.hub_levels
        # Shopify reads its orders when a push is answered stale (and while a level's last count is owed sales):
        # each target says from when (``Target.sales_from_ms``)
        self._reads_orders = isinstance(connector, ShopifyConnector) and bool(spec.webhook_secret)
        self._less: dict[LevelKey, int] = {}  # units of such sales taken off each level's last count confirmed
        self._less_from: dict[LevelKey, int] = {}  # when the channel received the oldest of them (its record's time)
        # levels whose last confirmation says nothing of what it took off (stored before schema 14): read once
        self._less_unknown: set[LevelKey] = set()
        # a sale taken off this long is reported; one naming no order booked is matched to an order this close
        self.unbooked_sale_wait_ms = round(spec.unbooked_sale_wait_s * 1000)  # (tests set it)
        self.order_match_window_ms = round(spec.order_match_window_s * 1000)
        # when (the hub's wall ms) each level with sales taken off has one come due to be reported (``report_overdue``)
        self._report_due: dict[LevelKey, int] = {}
        self._counted_at: dict[LevelKey, int] = {}  # wall ms of the hub's last stock count behind each level (0: none)
        # the hub's rows behind each level, with their last count's stamp (None: none), and each count's time on the
        # hub's clock as found (``_count_times``), by (location, SKU): (the count's stamp, hub ms)
        self._counts_behind: dict[LevelKey, tuple[tuple[str, str, int | None], ...]] = {}
        self._count_hub_ms: dict[tuple[str, str], tuple[int, int]] = {}
        self._touched: dict[LevelKey, int] = {}  # push_seq of each level's last confirmation
        self.push_seq = 0  # confirmed batches so far (the reconciler skips levels confirmed while it read)
        self._key_sku: dict[LevelKey, str] = {}
        self._unmapped_since: set[str] = set()  # SKUs that moved in the pool, unmapped, since the mapping load
        self._parts: dict[str, dict[str, int]] = {}  # bundles of the last turn and their parts
        self._loaded = False
        self._pushed_last_turn = False
        self.busy = False  # a turn is running
        self._lock = asyncio.Lock()  # one turn or mapping refresh at a time
        self._wake = asyncio.Event()
        # Whether this hub still holds the channel's pusher lock (``LeaseHolder.holds``, no round trip), asked
        # before each turn and each batch: set by hub.channels.runner.
        self.holding: Callable[[], bool] = lambda: True
        self._lost_said = False
        # How this loop proves to ``hub.leases.lead`` that it is not stuck: every await it makes is bounded
        # (a channel request by its timeout_s, ``hub.channels.connector.post``; a wait by its length).
        self.heartbeat = Heartbeat()

    # --- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Turn after turn (``protocol.retry.run_turns``): work while there are changes, wait for the feed (or
        forced levels) when there are none; back off from a failed turn and do it again."""
        BEATING.set(self.heartbeat)  # this task's: the channel requests made in it beat it too
        self.heartbeat.beat()
        with contextlib.suppress(StoreClosed):
            await run_turns(
                self._turn_or_fail, wait=self._wait, failed=self._failed, ends=(StoreClosed,),
                running=lambda: not self._stopped and not self._waiter.closed,
            )  # fmt: skip

    async def _turn_or_fail(self) -> float:
        """One turn; how long to wait for changes afterwards (0: go on at once)."""
        self.heartbeat.beat()
        if not self._holds():
            # ``lead`` stops this loop at its next turn; until then nothing goes out, not even a failed turn again
            self.heartbeat.beat(LEASE_LOST_WAIT_S)
            await asyncio.sleep(LEASE_LOST_WAIT_S)
            return 0.0
        try:
            worked = await self.turn()
            remap_in_s = await self._remap_gone()
            await self.report_overdue()
        except (ChannelError, StoreError, MappingError) as err:
            raise TurnFailed(str(err), retry_after_s=getattr(err, "retry_after_s", None)) from err
        self._health.succeeded()
        self.status.failures, self.status.last_error = 0, None
        if not worked:
            return min(w for w in (self._wait_s, remap_in_s, self.report_due_in_s()) if w is not None)
        if self._pushed_last_turn and self.spec.coalesce_s > 0:
            self.heartbeat.beat(self.spec.coalesce_s)
            await asyncio.sleep(self.spec.coalesce_s)  # let a burst gather: its last value goes out next
        return 0.0

    def _holds(self) -> bool:
        """This hub still holds the channel's pusher lock; said once when not: its connection ended (a restart, a
        failover, pg_terminate_backend), and another hub may be pushing from the saved cursor already."""
        if self.holding():
            return True
        if not self._lost_said:
            self._lost_said = True
            log.warning(
                "channel %s: this hub's pusher lock went with its database connection; it pushes nothing more "
                "until it takes the lock again", self.spec.name,
            )  # fmt: skip
        return False

    async def _remap_gone(self) -> float | None:
        """After a turn in which the channel refused levels because their items are gone (``LevelsRefused.gone``:
        deleted, or created again under a new id): read the listing and map it again now — the next
        reconciliation may be 15 minutes away, and a re-created item would show nothing until then — at most once
        per ``REMAP_GAP_S``. None when done (or nothing to do), else the seconds until it may be done."""
        if not self._gone or self.spec.mapping_csv is not None:  # a mapping CSV changes with a refresh asked for
            self._gone = set()
            return None
        now = asyncio.get_running_loop().time()
        if self._remapped_at is not None and now < self._remapped_at + REMAP_GAP_S:
            return self._remapped_at + REMAP_GAP_S - now
        gone, self._gone = self._gone, set()
        self._remapped_at = now
        who = KIND_NAMES.get(self.spec.kind, self.spec.kind)
        log.warning(
            "channel %s: %s no longer has, or renamed, the item(s) of %d level(s) (first %s, item %s); reading its "
            "listing now to map them again",
            self.spec.name, who, len(gone), self._key_sku.get(min(gone), "?"), min(gone).item_id,
        )  # fmt: skip
        try:
            moved = await self.remap_if_moved()
        except BaseException:
            self._gone |= gone  # tried again after the backoff
            raise
        if not moved:
            log.warning(
                "channel %s: %s's listing has not changed since the mapping was loaded; the refused level(s) stay "
                "refused until their level changes or the mapping is refreshed", self.spec.name, who,
            )  # fmt: skip
        return None

    async def _wait(self, delay_s: float, after_failure: bool) -> None:
        self.heartbeat.beat(delay_s)  # a backoff, a Retry-After or the wait for changes: all end within delay_s
        if after_failure:
            await asyncio.sleep(delay_s)  # the channel's Retry-After or the backoff: nothing cuts it short
        elif delay_s > 0:
            await self._idle(delay_s)

    async def _failed(self, failure: TurnFailed) -> float:
        self._health.failed(failure)
        self.status.failures, self.status.last_error = self._health.failures, failure.reason
        return self._health.delay_s(failure.retry_after_s)

    async def _idle(self, wait_s: float) -> None:
        """Wait for a change after the cursor, a wake-up (forced levels) or ``wait_s``."""
        if self._wake.is_set():
            self._wake.clear()
            return
        feed = asyncio.ensure_future(self._waiter.wait_past(self.status.cursor, wait_s))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({feed, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (feed, woken):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(feed, woken, return_exceptions=True)
            self._wake.clear()

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """The pusher's lock (one turn, mapping load or correction at a time). Whoever holds it is work of this
        channel's job with a heartbeat of its own, which ``hub.leases.lead`` watches: this loop's turn, the
        reconciler's loop, a reconciliation or mapping refresh asked for over the API
        (``hub.channels.runner.run_asked``). So the wait for it is bounded by the holder's, not by the waiter's:
        a pusher waiting while a slow channel answers a reconciliation's reads is not stuck; once it holds the
        lock, what it awaits is bounded again (``hub.heartbeat.beat`` of the task this runs in)."""
        beat(math.inf)
        async with self._lock:
            beat()
            yield

    async def turn(self) -> bool:
        """One unit of work; False when there was no change after the cursor and nothing forced."""
        async with self._locked():
            await self._load()
            self.busy = True
            try:
                return await self._turn()
            finally:
                self.busy = False

    async def _turn(self) -> bool:
        start = self.status.cursor
        rows = await self._feed.changes(start, self._page_limit)
        forced, based = dict(self._forced), set(self._bases)
        if not rows and not forced and not based:
            return False
        end = rows[-1].change_id if rows else start
        targets = await self._targets(rows, forced)
        targets, less = await self._less_unbooked(targets, forced, based)
        turn_key = f"{self.spec.name}:{start}" + (f":{self._nonce}:{self._force_gen}" if forced or based else "")
        keys = sorted(targets)
        batches = [keys[i : i + self.spec.batch_max] for i in range(0, len(keys), self.spec.batch_max)] or [[]]
        confirmed_all: dict[LevelKey, int] = {}
        kept_all: dict[LevelKey, Kept] = {}
        moved_all: dict[LevelKey, Moved] = {}
        for n, batch in enumerate(batches):
            if not self._holds():  # the rest of the turn is the next holder's, from the saved cursor
                return True
            confirmed = await self._push_unsure({k: targets[k] for k in batch}, turn_key) if batch else {}
            if isinstance(confirmed, Confirmed):
                less = {**less, **self._less_read(confirmed, targets)}
                kept_all.update(confirmed.kept)
                moved_all.update(confirmed.moved)
                self._renamed_at_channel(confirmed.skus)
            self._stamps.update((k, targets[k].occurred_at_ms) for k in confirmed)
            self._less_confirmed(less, confirmed)
            now_ms = wall_ms_now()
            last = n == len(batches) - 1
            await self._state_record(confirmed, now_ms, end if last and rows else None, less)
            if last:
                self.status.cursor = end
            confirmed_all.update(confirmed)
            if confirmed:
                self.status.pushes += 1
                self.status.levels_pushed += len(confirmed)
                self.status.last_push_ms = now_ms
        await self._settle(confirmed_all, forced, based)
        if kept_all:
            self._not_taken(kept_all, targets)
        if moved_all:
            self._moved_since(moved_all)
        if rows and confirmed_all:
            await self._sample_lag(rows, confirmed_all)
        self.status.turns += 1
        self._pushed_last_turn = bool(keys)
        return True

    async def _state_record(
        self, confirmed: dict[LevelKey, int], now_ms: int, cursor: int | None, less: Mapping[LevelKey, Unbooked]
    ) -> None:
        stamps = {k: self._stamps[k] for k in confirmed if k in self._stamps}  # stored: a restart stamps after them
        unbooked = {k: less[k] for k in confirmed if k in less}  # stored: a restart compares and reads as this hub
        await self.state.record(self.spec.name, confirmed, now_ms, cursor=cursor, stamps=stamps, unbooked=unbooked)
        self._pushed.update(confirmed)
        if confirmed:
            self.push_seq += 1
            self._unsure.difference_update(confirmed)
            for k in confirmed:
                self._touched[k] = self.push_seq
                self._bases.pop(k, None)
                self._kept.pop(k, None)

    async def _settle(
        self, confirmed: dict[LevelKey, int], forced: Mapping[str, None], based: Collection[LevelKey]
    ) -> None:
        """After a turn: forced levels are done, refusals the channel now took are forgotten, divergences whose
        level the channel confirmed are corrected."""
        for sku in forced:
            self._forced.pop(sku, None)
        for key in based:
            self._bases.pop(key, None)  # confirmed or refused: either way, no longer to be corrected
        taken = [k for k in confirmed if k in self._refused]
        if taken:
            await self.state.clear_refusals(self.spec.name, taken)
            for k in taken:
                del self._refused[k]
            self.status.refused = len(self._refused)
        corrected = [k for k in confirmed if k in based or self._key_sku.get(k) in forced]
        if corrected:
            closed = await self.state.close_divergences(self.spec.name, corrected, wall_ms_now())
            if closed:
                log.info("channel %s: %d diverging level(s) corrected", self.spec.name, closed)

    def _not_taken(self, kept: Mapping[LevelKey, Kept], sent: Mapping[LevelKey, Target]) -> None:
        """Levels the channel answered holding a count of its own, newer than the push (Square keeps the latest
        ``occurred_at``: a register edit while this hub's clock is behind): not confirmed, and pushed again next
        turn stamped after the channel's count, from its quantity, as a divergence is corrected. A level kept
        again after ``KEPT_AGAIN_MAX`` such pushes is left to the next reconciliation, not pushed in a loop."""
        again: list[tuple[LevelKey, Kept]] = []
        for k, held in sorted(kept.items()):
            self._stamps[k] = max(self._stamps.get(k, 0), held.at_ms, sent[k].occurred_at_ms)
            self._pushed.pop(k, None)  # what the channel holds is not what the hub last confirmed there
            self._unsure.discard(k)
            self._kept[k] = self._kept.get(k, 0) + 1
            if self._kept[k] <= KEPT_AGAIN_MAX:
                self._bases[k] = held.quantity
                again.append((k, held))
        who = KIND_NAMES.get(self.spec.kind, self.spec.kind)
        k, held = min(kept.items())
        log.warning(
            "channel %s: %s kept its own count at %d level(s) it holds stamped later than the push (first %s at %s: "
            "%d, not %d, its count of %s UTC), so the push is not confirmed there; %s",
            self.spec.name, who, len(kept), self._key_sku.get(k, k.item_id), k.location_id, held.quantity,
            sent[k].quantity, _utc(held.at_ms),
            f"pushing the hub's level again at {len(again)} of them, stamped after the channel's count"
            + ("" if len(again) == len(kept) else ", the others left to the next reconciliation")
            if again else "they are left to the next reconciliation (kept again after pushes stamped after it)",
        )  # fmt: skip
        if again:
            self._force_gen += 1
            self._wake.set()

    def _moved_since(self, moved: Mapping[LevelKey, Moved]) -> None:
        """Levels the channel took and moved since by changes of its own made after the push's time (a sale rung up
        at a Square register between the hub's change and the push reaching Square): confirmed at what the channel
        holds — the hub's level pushed over it would show the sold units again until the sale's order came back.
        The order books the sale at the hub ("Orders back"), whose level then equals what was confirmed: nothing
        more goes out, and nothing is counted twice."""
        k = min(moved)
        m = moved[k]
        log.info(
            "channel %s: %s applied %d change(s) made there after the push's time on top of %d pushed level(s) "
            "(first %s at %s: %d pushed, %+d since, %d now), so its count stands and is confirmed rather than pushed "
            "over; a sale among them reaches the hub with its order",
            self.spec.name, KIND_NAMES.get(self.spec.kind, self.spec.kind), sum(x.changes for x in moved.values()),
            len(moved), self._key_sku.get(k, k.item_id), k.location_id, m.pushed, m.quantity - m.pushed, m.quantity,
        )  # fmt: skip

    def _renamed_at_channel(self, answered: Mapping[LevelKey, str]) -> None:
        """Levels the channel took whose item it answered under another SKU than the mapped one (a variant renamed
        at Shopify from A to C: the push still succeeds, setting A's level on the item now sold as C): handled as
        an item gone — the listing is read after the turn (``_remap_gone``, within ``REMAP_GAP_S``) and the
        mapping loaded again, which pushes every level once, C's to that item."""
        if self.spec.mapping_csv is not None:  # mapped by the CSV's item ids, whatever SKU the channel gives them
            return
        renamed = {k: sku for k, sku in answered.items() if k in self._key_sku and sku.strip() != self._key_sku[k]}
        if not renamed:
            return
        k = min(renamed)
        log.warning(
            "channel %s: %s answered %d pushed level(s) under another SKU than the mapped one (first %s now %s, "
            "item %s); the item was renamed there, so its listing is read to map it again",
            self.spec.name, KIND_NAMES.get(self.spec.kind, self.spec.kind), len(renamed), self._key_sku[k],
            renamed[k], k.item_id,
        )  # fmt: skip
        self._gone.update(renamed)

    async def _push_unsure(self, batch: dict[LevelKey, Target], turn_key: str) -> dict[LevelKey, int]:
        """Push one batch whose outcome may be lost: a channel can apply a request whose answer never comes (a
        timeout, a dropped connection, this hub killed). Until the channel confirms, what it holds at those levels
        is unknown — in memory and in the state, so a restart does not take the last confirmed level for what the
        channel shows and skip it when the hub's level returns to it (an oversell that nothing but a
        reconciliation would find)."""
        known = [k for k in batch if k in self._pushed]
        await self.state.unsure(self.spec.name, known)
        try:
            return await self._push_batch(batch, turn_key)
        except BaseException:
            self._unsure.update(known)  # sent again even at the level last confirmed (still the CAS base)
            raise

    async def _push_batch(self, batch: dict[LevelKey, Target], turn_key: str) -> dict[LevelKey, int]:
        """Push one batch; levels the channel refuses for good are stored as refusals and the rest sent again."""
        pending = dict(batch)
        while pending:
            try:
                return await self.connector.push(pending, turn_key)
            except LevelsRefused as err:
                refused = {k: why for k, why in err.refused.items() if k in pending}
                if not refused:
                    raise ChannelRejected(str(err)) from err
                await self._refuse(refused, pending)
                self._gone.update(k for k in err.gone if k in refused)  # the listing is read again after the turn
                pending = {k: t for k, t in pending.items() if k not in refused}
        return {}

    async def _refuse(self, refused: Mapping[LevelKey, str], batch: Mapping[LevelKey, Target]) -> None:
        now_ms = wall_ms_now()
        stored = {
            k: Refusal(
                self._key_sku.get(k, k.item_id), self.single_feeder(k.location_id), batch[k].quantity, why, now_ms
            )
            for k, why in refused.items()
        }
        await self.state.refuse(self.spec.name, stored)
        self._refused.update(stored)
        self.status.refused = len(self._refused)
        who = KIND_NAMES.get(self.spec.kind, self.spec.kind)
        for k, r in list(stored.items())[:20]:
            log.warning(
                "channel %s: %s refused to set %s (%s) at %s to %d (%s); the channel's other levels go out, and this "
                "one again when its level changes or the mapping is refreshed",
                self.spec.name, who, r.sku, k.item_id, k.location_id, r.quantity, r.detail,
            )  # fmt: skip
        if len(stored) > 20:
            log.warning("channel %s: %s refused %d more level(s)", self.spec.name, who, len(stored) - 20)

    async def _targets(self, rows: Sequence[ChangeRow], forced: Collection[str] = ()) -> dict[LevelKey, Target]:
        now_ms = wall_ms_now()
        targets: dict[LevelKey, Target] = {}
        also = {*forced, *(self._key_sku[k] for k in self._bases if k in self._key_sku)}
        for key, level in (await self.levels_now({r.sku for r in rows if r.location in self.spec.pool}, also)).items():
            previous = self._pushed.get(key)
            if level.sku in forced or key in self._bases:
                targets[key] = await self._orders_read(
                    key, Target(level.quantity, self._bases.get(key, previous), self._stamp(key, now_ms)), now_ms
                )
                continue
            refusal = self._refused.get(key)
            # a level pushed less sales whose orders had not reached the hub: told again whatever its level now, as
            # those orders may have been booked since and the hub's level be the count pushed (``_less_unbooked``
            # drops it when the count comes out the same)
            again = key in self._less or key in self._less_unknown
            changed = previous != level.quantity or key in self._unsure or again
            if changed and (refusal is None or refusal.quantity != level.quantity):
                targets[key] = await self._orders_read(
                    key, Target(level.quantity, previous, self._stamp(key, level.at_ms)), now_ms
                )
        return targets

    async def _orders_read(self, key: LevelKey, target: Target, now_ms: int) -> Target:
        """The target with where Shopify's orders are read from (``Target.sales_from_ms``) for a level the hub counted
        there before, on a channel taking Shopify's order webhooks: as far back as ``_read_from`` goes, so a sale taken
        off once is read again until its order comes; ``owed`` when the last count took some off (or could not
        read them)."""
        if not self._reads_orders or key not in self._stamps:
            return target
        owed = key in self._less or key in self._less_from
        count_ms = (await self._count_times([key]))[key]
        since = self._read_from(key, self._stamps[key], now_ms, count_ms=count_ms)
        return replace(target, sales_from_ms=since, owed=owed)

    async def _less_unbooked(
        self, targets: dict[LevelKey, Target], forced: Collection[str], based: Collection[LevelKey],
        *, checking: bool = False, reporting: bool = False,
    ) -> tuple[dict[LevelKey, Target], dict[LevelKey, Unbooked]]:  # fmt: skip
        """The counts to push, each less the units of sales the channel recorded there whose orders the hub has not
        booked yet, and what was taken off per level. A count supersedes, at the channel (Square), every sale that
        occurred before its ``occurred_at``: a register sale whose order is still on its way to the hub is not in
        the hub's level, so a count of the hub's level stamped after it (a web order, another till's sale in
        between) would put the sold units up for sale again until the order came back. A sale that occurred after
        the count's time is left alone: the channel applies it on top; so is one that occurred before the hub's
        last stock count behind the level (the count saw the shelf without the unit), and one whose order's
        webhook the hub refused for good (``ChannelState.orders_refused``: it will not reach the hub until its
        cause is fixed, and until then the channel shows the hub's level, as every channel does). When the order
        is booked the hub's level comes down to the count pushed and nothing more goes out, so no sale is taken
        off twice.

        Read only for levels the hub counted there before, from a little before the earlier of their last stamp and
        the receipt of the oldest sale their last count took off (``_read_from``: so a sale taken off once is read
        again until its order comes, however many counts later), and only with ``order_channels``: without order
        webhooks the hub would never book those orders. A record that cannot be read leaves the counts at the
        hub's level (said by the connector), and the next read goes back as far as this one would have. What was
        taken off is stored with each confirmation (``ChannelState.unbooked``), so a restart changes nothing; a
        level told again only because of sales taken off before (``_less``) and whose count comes out as last
        confirmed is not sent; neither is one whose last confirmation said nothing of what it took off
        (``_less_unknown``: stored before schema 14).

        ``checking`` (``check_unknown``): what each count confirmed takes off now, nothing sent nor said; none when
        the record cannot be read. With ``reporting`` too (``report_overdue``): the sales taken off whose orders have
        waited too long are reported, as a push reports them.

        A push and a report keep when each level next has a sale taken off come due to be reported
        (``_report_due``: the earliest such sale not reported yet, or none)."""
        counted = {k: self._stamps[k] for k in targets if k in self._stamps}
        if not self.order_channels or not counted:
            return targets, {}
        now_ms = wall_ms_now()
        since = {k: self._read_from(k, at, now_ms, counted=False) for k, at in counted.items()}
        sales = await self.connector.sales_since(since)
        if sales is None:
            if reporting:  # read again a while later, not at every turn of the loop while Square cannot be read
                self._report_due.update((k, now_ms + REPORT_RETRY_MS) for k in targets)
            if checking:
                return targets, {}
            return targets, {k: Unbooked(0, since[k]) for k in counted}  # the next read goes back as far
        orders = {s.order_id for found in sales.values() for s in found if s.order_id}
        booked = await self.state.orders_booked(self.order_channels, orders) if orders else set()
        refused = await self.state.orders_refused(self.order_channels, orders - booked) if orders - booked else set()
        matched, reported, dismissed = await self._sales_settled(sales, booked, refused, orders, checking)
        settled = matched | dismissed  # change ids of sales the hub holds: matched to a booked order, booked by hand

        def waits(s: Sale) -> bool:
            return s.order_id not in booked and s.change_id not in settled

        unbooked = [k for k in targets if any(waits(s) for s in sales.get(k, ()))]
        count_ms = await self._count_times(unbooked) if unbooked else {}
        less: dict[LevelKey, Unbooked] = {}
        out: dict[LevelKey, Target] = {}
        left: dict[LevelKey, int] = {}  # units of sales in refused orders, per level
        done: list[LevelKey] = []
        overdue: list[tuple[LevelKey, Sale]] = []  # sales taken off whose orders have waited too long: reported
        for k, t in targets.items():
            at_ms = min(t.occurred_at_ms, now_ms)  # a stamp in the future goes out as now (the connector's window)
            # after the count's time by Square's rule (its occurred_at against the count's, both as sent to it), and
            # not surely before the hub's last stock count by the hub's clock
            seen = count_ms.get(k, 0) - COUNT_MARGIN_MS
            after = [
                s for s in sales.get(k, ())
                if waits(s) and s.occurred_ms <= at_ms
                and not (count_ms.get(k, 0) and (s.hub_ms or s.received_ms or s.occurred_ms) < seen)
            ]  # fmt: skip
            taken = [s for s in after if s.order_id not in refused]
            if not checking or reporting:
                due = {
                    s.change_id: (s.hub_ms or s.received_ms or s.occurred_ms) + self.unbooked_sale_wait_ms
                    for s in taken if s.change_id and SALE_PREFIX + s.change_id not in reported
                }  # fmt: skip
                overdue.extend((k, s) for s in taken if due.get(s.change_id, now_ms + 1) <= now_ms)
                later = [at for at in due.values() if at > now_ms]
                if later:
                    self._report_due[k] = min(later)
                else:
                    self._report_due.pop(k, None)
            if len(taken) < len(after):
                left[k] = sum(s.units for s in after if s.order_id in refused)
            quantity = max(0, t.quantity - sum(s.units for s in taken))
            if k in counted:
                less[k] = Unbooked(t.quantity - quantity, min((s.received_ms for s in taken), default=None))
            again = (k in self._less or k in self._less_unknown) and k not in self._unsure and k not in based
            if checking:
                pass
            elif again and self._key_sku.get(k) not in forced and t.quantity == t.previous == quantity:
                done.append(k)  # the orders were booked (or refused): the count stands as last confirmed
                continue
            out[k] = t if quantity == t.quantity else Target(quantity, t.previous, t.occurred_at_ms)
        if done:
            await self.state.clear_unbooked(self.spec.name, done)
            for k in done:
                self._less.pop(k, None)
                self._less_from.pop(k, None)
                self._less_unknown.discard(k)
        if overdue:
            await self._report_unbooked(overdue)
        if checking:
            return out, less
        who = KIND_NAMES.get(self.spec.kind, self.spec.kind)
        taken_off = {k: u.units for k, u in less.items() if u.units and k in out}
        if taken_off:
            k = min(taken_off)
            waiting = [s for s in sales.get(k, ()) if waits(s) and s.order_id not in refused]
            orders_of = [f"order {o}" for o in sorted({s.order_id for s in waiting if s.order_id})][:3]
            if any(not s.order_id for s in waiting):
                orders_of.append("a sale naming no order")
            log.info(
                "channel %s: %s sold %d unit(s) at %d level(s) whose orders have not reached the hub (first %s at %s: "
                "the hub's level %d, %d sold in %s, %d pushed); the counts go out less them, so those sales stay "
                "sold until their orders come back",
                self.spec.name, who, sum(taken_off.values()), len(taken_off), self._key_sku.get(k, k.item_id),
                k.location_id, targets[k].quantity, taken_off[k], ", ".join(orders_of) or "order ?", out[k].quantity,
            )  # fmt: skip
        if left:
            k = min(left)
            orders_of = sorted({s.order_id for s in sales.get(k, ()) if s.order_id in refused})
            log.info(
                "channel %s: %s sold %d unit(s) at %d level(s) in orders whose webhooks the hub refused (first %s at "
                "%s: %d in order %s); they are not taken off the counts, which show the hub's level until the orders "
                "are booked",
                self.spec.name, who, sum(left.values()), len(left), self._key_sku.get(k, k.item_id), k.location_id,
                left[k], ", ".join(orders_of[:3]),
            )  # fmt: skip
        return out, less

    async def _sales_settled(
        self, sales: Mapping[LevelKey, Sequence[Sale]], booked: Collection[str], refused: Collection[str],
        named: Collection[str], checking: bool,
    ) -> tuple[set[str], set[str], set[str]]:  # fmt: skip
        """Of the channel's sales whose order the hub has neither booked nor refused by the id the sale names (none,
        for a sale without a payment; or an id no order of the hub carries), by their ``change_id``: those matched to
        a sale the hub booked from one of ``order_channels``' orders (``_matched_sales``), and the ids under which
        sales were reported as waiting too long (``SALE_PREFIX``), with those an admin dismissed (booked by hand:
        the hub's level holds them). A reported sale matched since leaves the exceptions (one line in the log)."""
        waiting = {
            k: [s for s in found if s.order_id not in booked and s.order_id not in refused and s.change_id]
            for k, found in sales.items()
        }
        waiting = {k: found for k, found in waiting.items() if found}
        matched: set[str] = set()
        for k, found in waiting.items():
            matched |= await self._matched_sales(k, found, set(named))
        # a sale reported while its order was on its way and booked since by the id it names is settled too
        matched |= {s.change_id for found in sales.values() for s in found if s.order_id in booked and s.change_id}
        ids = {SALE_PREFIX + s.change_id for found in sales.values() for s in found if s.change_id}
        reported = await self.state.orders_refused((self.spec.name,), ids) if ids else set()
        dismissed: set[str] = set()
        for sale_id in sorted(reported):
            change_id = sale_id.removeprefix(SALE_PREFIX)
            stored = await self.state.refused_order(self.spec.name, sale_id)
            by_hand = stored is not None and stored.dismissed_at_ms is not None
            if change_id not in matched:
                if by_hand:
                    dismissed.add(change_id)
                continue
            if checking or not await self.state.order_accepted(self.spec.name, sale_id):
                continue
            if by_hand:
                log.warning(
                    "channel %s: Square's sale %s was dismissed by %s as booked by hand, and an order the hub booked "
                    "since matches it: the hub now holds the sale twice; take the booking by hand back (a return) or "
                    "count the shelf",
                    self.spec.name, change_id, stored.dismissed_by if stored else "?",
                )  # fmt: skip
            else:
                log.info(
                    "channel %s: Square's sale %s, reported as waiting for its order, matches an order the hub booked "
                    "since; it leaves the exceptions list and is no longer taken off the counts",
                    self.spec.name, change_id,
                )  # fmt: skip
        return matched, reported, dismissed

    async def _matched_sales(self, key: LevelKey, sales: Sequence[Sale], named: Collection[str]) -> set[str]:
        """The ``change_id`` of each of these sales at ``key`` that one sale the hub booked from an order of
        ``order_channels`` accounts for: the same SKU (the item's) at a hub location feeding the channel location,
        the same units, its order's time (the event's ``wall_ms``) within ``order_match_window_ms`` of the sale's
        ``occurred_at``, the nearest first, each booked sale matching one sale at most. Orders a sale of the record
        names by its id (``named``) are that sale's, never another's."""
        sku = self._key_sku.get(key)
        if sku is None:
            return set()
        agents = {f"channel:{c}": f"{c}:order:" for c in self.order_channels}
        before = pack_hlc(max(s.occurred_ms for s in sales) + self.order_match_window_ms + ORDER_MATCH_SKEW_MS, 0)
        booked: list[tuple[int, int, bytes]] = []  # (the order's time, units sold, the event's id)
        for location in (h for h, c in self.spec.pool.items() if c == key.location_id):
            for r in await self._feed.ledger(location=location, sku=sku, before=before, limit=ORDER_MATCH_LOOKUP):
                prefix = agents.get(r.agent_id)
                if prefix is None or r.kind != "sale" or r.effect == Effect.REJECTED or not r.ref:
                    continue
                if r.ref.startswith(prefix) and r.ref[len(prefix) :] not in named:
                    booked.append((r.wall_ms, -r.qty, r.event_id))
        matched: set[str] = set()
        used: set[bytes] = set()
        for s in sorted(sales, key=lambda s: s.occurred_ms):
            near = [
                b for b in booked
                if b[2] not in used and b[1] == s.units and abs(b[0] - s.occurred_ms) <= self.order_match_window_ms
            ]  # fmt: skip
            if near:
                used.add(min(near, key=lambda b: abs(b[0] - s.occurred_ms))[2])
                matched.add(s.change_id)
        return matched

    async def _report_unbooked(self, overdue: Sequence[tuple[LevelKey, Sale]]) -> None:
        """Store each sale taken off the counts whose order has waited longer than ``unbooked_sale_wait_ms`` as an
        exception for a person (with the channel's refused orders, id ``SALE_PREFIX`` and Square's adjustment id,
        listed as ``channel_order_refused``): one warning in the log each."""
        now_ms = wall_ms_now()
        for k, s in overdue:
            sku = self._key_sku.get(k, k.item_id)
            location = self.single_feeder(k.location_id)
            where = f"{k.location_id} ({location})" if location else k.location_id
            why = (
                "it carries no transaction id (a sale without a payment), so no order names it"
                if not s.order_id
                else f"it names order {s.order_id} (its transaction id), which has not reached the hub"
            )
            reason = (
                f"Square sold {s.units} of {sku} (item variation {k.item_id}) at {where} on channel {self.spec.name} "
                f"in sale {s.change_id} at {_when(s.occurred_ms)}; {why}, and no order the hub booked matches it (the "
                f"same item, location and units within {_span(self.order_match_window_ms)}) after "
                f"{_span(self.unbooked_sale_wait_ms)}"
            )
            await self.state.refuse_order(
                self.spec.name, SALE_PREFIX + s.change_id, reason, now_ms, location=location,
                channel_location=k.location_id,
            )  # fmt: skip
            log.warning(
                "channel %s: %s; it is listed among the exceptions, and the counts still go out less it until it is "
                "booked by hand and dismissed or its order comes",
                self.spec.name, reason,
            )  # fmt: skip

    @staticmethod
    def _less_read(confirmed: Confirmed, targets: Mapping[LevelKey, Target]) -> dict[LevelKey, Unbooked]:
        """What the connector took off each confirmed level it read sales for (Shopify, ``Confirmed.less``): the
        units, and where the read started while some were taken off or the read failed (the next read goes back as
        far)."""
        less: dict[LevelKey, Unbooked] = {}
        for k, n in confirmed.less.items():
            if k in confirmed and k in targets:
                less[k] = Unbooked(n or 0, None if n == 0 else targets[k].sales_from_ms)
        return less

    async def orders_settled(self, order_ids: Collection[str]) -> set[str]:
        """Of this channel's ``order_ids``, those its order webhooks booked at the hub, or whose webhook the hub
        refused for good (not waited for: the channel shows the hub's level until they are booked)."""
        channels = (self.spec.name,)
        booked = await self.state.orders_booked(channels, order_ids)
        rest = set(order_ids) - booked
        return booked | (await self.state.orders_refused(channels, rest) if rest else set())

    def _read_from(self, key: LevelKey, stamp_ms: int, now_ms: int, *, counted: bool = True, count_ms: int = 0) -> int:
        """Where the channel's record of sales at ``key`` is read from (less the connector's margin): the level's
        last stamp, or the receipt of the oldest sale its last count took off when earlier; never
        ``SALES_WAIT_MAX_MS`` ago, and with ``counted`` (Shopify) never before the hub's last stock count behind it
        (a sale before that is in the count): on the hub's clock, ``count_ms`` (``_count_times``), as the level's
        stamps are (the hub's commit times) and Shopify's orders near enough; its stamp (the store PC's clock,
        minutes off in a shop) only when not placed. Square's sales are read without that bound: a sale is told
        from the count on the hub's clock after the read."""
        start = min(stamp_ms, self._less_from.get(key, stamp_ms))
        bound = (count_ms or self._counted_at.get(key, 0)) if counted else 0
        return max(start, bound, now_ms - SALES_WAIT_MAX_MS)

    async def _count_times(self, keys: Collection[LevelKey]) -> dict[LevelKey, int]:
        """When the hub's last stock count behind each level was made, on the hub's clock (0: a row behind it was
        never counted). A count is stamped by the store PC's clock, which may be minutes off Square's; placed on the
        hub's clock it can be told from a register sale Square received (``Sale.hub_ms``): its stamp corrected by
        the PC's skew the hub measures at each sync (hub minus PC, ``AgentStatus.clock_skew_ms``), never later than
        the hub received it (a count cannot be made after that; it bounds a skew measured since the PC's clock was
        put right, and one of a sender that does not say its clock). Found once per count in the ledger (its
        event, by its stamp) and kept while it is the row's last count; a count whose event is not found is
        placed at its stamp."""
        times: dict[LevelKey, int] = {}
        skews: dict[str, int] = {}
        for key in keys:
            at_ms = []
            for location, sku, stamp in self._counts_behind.get(key, ()):
                at_ms.append(0 if stamp is None else await self._count_time(location, sku, stamp, skews))
            times[key] = min(at_ms, default=0)
        return times

    async def _count_time(self, location: str, sku: str, stamp: int, skews: dict[str, int]) -> int:
        known = self._count_hub_ms.get((location, sku))
        if known is not None and known[0] == stamp:
            return known[1]
        wall = unpack_hlc(stamp)[0]
        rows = await self._feed.ledger(location=location, sku=sku, before=stamp + 1, limit=COUNT_LOOKUP)
        row = next(
            (r for r in rows if r.occurred_at == stamp and r.kind == "count" and r.effect != Effect.REJECTED), None
        )
        at_ms = wall
        if row is not None:
            if row.agent_id not in skews:
                status = await self._feed.agent_status(row.agent_id)
                skews[row.agent_id] = next((s.clock_skew_ms or 0 for s in status if s.agent_id == row.agent_id), 0)
            at_ms = min(wall + skews[row.agent_id], row.received_at_ms)
        self._count_hub_ms[(location, sku)] = (stamp, at_ms)
        return at_ms

    def _less_confirmed(self, less: Mapping[LevelKey, Unbooked], confirmed: Collection[LevelKey]) -> None:
        """What was taken off each confirmed level's count (``_less_unbooked``), kept until a count without it."""
        for k in confirmed:
            self._less_unknown.discard(k)  # stored with the confirmation: known
            u = less.get(k, Unbooked(0))
            if u.units:
                self._less[k] = u.units
            else:
                self._less.pop(k, None)
            if u.from_ms is not None:
                self._less_from[k] = u.from_ms
            else:
                self._less_from.pop(k, None)

    async def check_unknown(self, levels: Mapping[LevelKey, Level]) -> None:
        """Of these levels (what the channel should show, from the hub's counts), those whose last confirmation says
        nothing of what its count took off (``_less_unknown``: a hub before schema 14 kept it in memory, and its row
        reads 0): the channel's sales are read once, as a push reads them, and what that count takes off now is
        stored (known from then on), so the reconciler compares the channel with the hub's level less it rather
        than take a count pushed less a sale for a drift. A read that fails leaves them unknown (compared as 0, as
        before, and read again next time). Under the pusher's lock: a turn confirming one of them meanwhile stores
        what its own count took off, and it is not read again."""
        if not any(k in self._less_unknown for k in levels):
            return
        async with self._locked():
            keys = sorted(k for k in levels if k in self._less_unknown and k in self._stamps)
            targets = {k: Target(levels[k].quantity, self._pushed.get(k), self._stamps[k]) for k in keys}
            _, less = await self._less_unbooked(targets, (), (), checking=True) if targets else ({}, {})
            if not less:
                return
            await self.state.save_unbooked(self.spec.name, less)
            self._less_confirmed(less, less)
        taken = {k: u.units for k, u in less.items() if u.units}
        k = min(taken or less)
        log.info(
            "channel %s: %d level(s) were last confirmed by a hub that kept in memory what their counts took off for "
            "sales at %s whose orders had not reached the hub (before schema 14); its sales were read once: %d of "
            "them take %d unit(s) off (first %s at %s: %d)",
            self.spec.name, len(less), KIND_NAMES.get(self.spec.kind, self.spec.kind), len(taken),
            sum(taken.values()), self._key_sku.get(k, k.item_id), k.location_id, less[k].units,
        )  # fmt: skip

    def report_due_in_s(self) -> float | None:
        """Seconds until a sale taken off the counts comes due to be reported (``report_overdue``); None: none is
        waiting for its order."""
        if not self._report_due:
            return None
        return max(0.0, (min(self._report_due.values()) - wall_ms_now()) / 1000)

    async def report_overdue(self) -> int:
        """Report the sales taken off the counts whose orders have waited ``unbooked_sale_wait_ms`` (``_report_due``)
        whether or not their levels are pushed again: a SKU that does not move at the hub after such a sale is never
        pushed, and its sale would never be reported. Square's record is read for the levels due alone, as a push
        reads it, from the hub's counts now; nothing is pushed. Run by the loop after each turn, so a sale is
        listed about that long after Square received it; a level is read again only when another of its sales comes
        due (or a minute later when the record cannot be read). The levels read."""
        now_ms = wall_ms_now()
        if not any(at <= now_ms for at in self._report_due.values()):
            return 0
        async with self._locked():
            now_ms = wall_ms_now()
            due = {k for k, at in self._report_due.items() if at <= now_ms}
            items = {k.item_id for k in due}
            skus = [sku for sku, item in self._items.items() if item in items]
            levels = await self.levels_now((), skus) if skus else {}
            targets = {
                k: Target(levels[k].quantity, self._pushed.get(k), self._stamps[k])
                for k in sorted(due) if k in levels and k in self._stamps and self._less.get(k)
            }  # fmt: skip
            for k in due - targets.keys():  # nothing taken off there any more (its orders came, or it is unmapped)
                self._report_due.pop(k, None)
            if targets:
                await self._less_unbooked(targets, (), (), checking=True, reporting=True)
            return len(targets)

    @property
    def less_unbooked(self) -> dict[LevelKey, int]:
        """The units taken off each level's last count confirmed for sales at the channel whose orders had not
        reached the hub (a copy): the reconciler compares the channel with the hub's level less them."""
        return dict(self._less)

    def _stamp(self, key: LevelKey, at_ms: int) -> int:
        return max(at_ms, self._stamps.get(key, 0) + 1)

    async def levels_now(self, moved: Collection[str], also: Collection[str] = ()) -> dict[LevelKey, Level]:
        """What the channel should show now at every level of the mapped SKUs among ``moved`` and ``also``, and
        of every bundle made of one of them, from the hub's current counts."""
        return (await self._levels_read(moved, also))[0]

    async def hub_levels(self, keys: Collection[LevelKey]) -> tuple[dict[LevelKey, int], tuple[CountRow, ...]]:
        """The hub's level now at each of ``keys`` (what a push would set there, before sales taken off), and the
        count rows it was made of: two reads with the same rows saw the same hub (ShopifyConnector, which reads the
        orders the hub has booked between two of them)."""
        skus = {self._key_sku[k] for k in keys if k in self._key_sku}
        levels, rows = await self._levels_read(skus)
        return {k: levels[k].quantity for k in keys if k in levels}, rows

    async def _levels_read(
        self, moved: Collection[str], also: Collection[str] = ()
    ) -> tuple[dict[LevelKey, Level], tuple[CountRow, ...]]:
        pool = self.spec.pool
        moved = set(moved) | set(also)
        if self._identity:  # a webhook without a mapping CSV: every SKU is its own item
            for sku in moved:
                self._items.setdefault(sku, sku)
            self.status.mapped = len(self._items)
        bundles = await bundle_parts_of(self._feed, moved)  # made of what moved
        skus = sorted((moved | bundles.keys()) & self._items.keys())
        for sku in sorted(moved - self._items.keys())[: max(0, UNMAPPED_MAX - len(self._unmapped_since))]:
            self._unmapped_since.add(sku)
        levels: dict[LevelKey, Level] = {}
        rows: list[CountRow] = []
        for sku in skus:
            counts = [c for s in (sku, *bundles.get(sku, ())) for c in await self._feed.counts(sku=s, limit=COUNTS_LIMIT) if c.location in pool]  # fmt: skip
            rows.extend(counts)
            at_ms = max((c.updated_at_ms for c in counts), default=0)
            for key, quantity in sku_levels(counts, pool, self.spec.buffer, self._items, sku, bundles.get(sku)).items():
                levels[key] = Level(sku, quantity, at_ms)
                self._key_sku[key] = sku
                # the hub's last stock count behind the level: the earliest of its rows' (0 when one has none)
                behind = [c for c in counts if pool[c.location] == key.location_id]
                self._counted_at[key] = min(
                    (0 if c.last_count_at is None else unpack_hlc(c.last_count_at)[0] for c in behind), default=0
                )
                self._counts_behind[key] = tuple((c.location, c.sku, c.last_count_at) for c in behind)
        self._parts.update(bundles)
        return levels, tuple(rows)

    async def _sample_lag(self, rows: Sequence[ChangeRow], confirmed: Mapping[LevelKey, int]) -> None:
        """One lag sample: the newest change behind what was confirmed, from its movement at the store."""
        skus = {self._key_sku[k] for k in confirmed if k in self._key_sku}
        skus |= {p for s in list(skus) for p in self._parts.get(s, {})}
        newest = max((r for r in rows if r.sku in skus and r.location in self.spec.pool), key=lambda r: r.change_id,
                     default=None)  # fmt: skip
        if newest is None:
            return
        at_store_ms = newest.at_ms  # the hub's commit time, when the event cannot be found
        if newest.event_ids:
            try:
                recent = await self._feed.ledger(location=newest.location, sku=newest.sku, limit=LEDGER_LOOKBACK)
            except StoreError:
                recent = []
            walls = [r.wall_ms for r in recent if r.event_id in newest.event_ids]
            if walls:
                at_store_ms = max(walls)
        self.lag.add(wall_ms_now() - at_store_ms)

    # --- what the reconciler and the status API use -------------------------------------

    @property
    def items(self) -> dict[str, str]:
        """The mapped SKUs and their channel item ids (a copy)."""
        return dict(self._items)

    @property
    def pushed(self) -> dict[LevelKey, int]:
        """The last quantity the channel confirmed at each level (a copy)."""
        return dict(self._pushed)

    @property
    def stamps(self) -> dict[LevelKey, int]:
        """The ``occurred_at`` each level last went out with (a copy): where a channel's record of the hub's last
        count there is found (``Connector.sold_since``)."""
        return dict(self._stamps)

    @property
    def refused(self) -> dict[LevelKey, Refusal]:
        return dict(self._refused)

    def unmapped(self) -> list[str]:
        """SKUs with stock in the pool no channel item carries: found when the mapping was loaded, and those that
        moved in the pool since (sorted)."""
        found = {f.sku for f in self.mapping.findings if f.kind == "unmapped_sku" and f.sku} if self.mapping else set()
        return sorted((found | self._unmapped_since) - self._items.keys())

    def confirmed_since(self, seq: int) -> set[LevelKey]:
        """The levels the channel confirmed after ``push_seq`` was ``seq``."""
        return {k for k, n in self._touched.items() if n > seq}

    def single_feeder(self, channel_location: str) -> str | None:
        """The hub location feeding ``channel_location``, when only one does."""
        feeding = [h for h, c in self.spec.pool.items() if c == channel_location]
        return feeding[0] if len(feeding) == 1 else None

    async def ready(self) -> None:
        """The mapping, cursor and confirmed levels are loaded (loading them if the loop has not yet)."""
        if not self._loaded:
            async with self._locked():
                await self._load()

    async def behind(self) -> bool:
        """A turn is running or a change after the cursor waits: levels may be on their way to the channel."""
        if self.busy or self._forced or self._bases:
            return True
        return bool(await self._feed.changes(self.status.cursor, 1))

    async def correct(self, bases: Mapping[LevelKey, int]) -> None:
        """Push these levels in the next turn whatever was last confirmed, from the channel's actual quantity."""
        async with self._locked():
            self._bases.update((k, base) for k, base in bases.items() if k in self._key_sku)
            self._force_gen += 1
        self._wake.set()

    # --- mapping and state ---------------------------------------------------------

    async def _load(self) -> bool:
        """Load what the state holds; True when the mapping had to be built (first start)."""
        if self._loaded:
            return False
        mapping = await self.state.mapping(self.spec.name)
        self.status.cursor = await self.state.cursor(self.spec.name)
        self._pushed = await self.state.pushed(self.spec.name)
        # A level's next stamp comes after its last confirmation, whatever this hub's clock says now: a channel
        # that keeps the latest count (Square) would otherwise keep a level stamped by a clock that ran ahead
        # before a restart (or by the hub this one took the channel over from) over every newer one.
        self._stamps = await self.state.pushed_at(self.spec.name)
        self._refused = await self.state.refusals(self.spec.name)
        self.status.refused = len(self._refused)
        unbooked = await self.state.unbooked(self.spec.name)
        self._less = {k: u.units for k, u in unbooked.items() if u.units}
        self._less_from = {k: u.from_ms for k, u in unbooked.items() if u.from_ms is not None}
        # only a channel whose register sales come back as orders ever took any off (``_less_unbooked``)
        self._less_unknown = await self.state.unbooked_unknown(self.spec.name) if self.order_channels else set()
        # a sale taken off is reported once it has waited for its order (at the latest its oldest is due then)
        self._report_due = {k: at + self.unbooked_sale_wait_ms for k, at in self._less_from.items() if k in self._less}
        settings = settings_text(self.spec)
        stored = await self.state.settings(self.spec.name)
        if mapping is None:
            await self._refresh()
        elif stored is not None and stored != settings:
            # its levels are the hub's changes pushed, and another pool, buffer or endpoint is no change of a count:
            # without this the channel would show what the old settings made of each SKU until it moved again
            log.warning(
                "channel %s: its %s changed since it last ran; loading the mapping again and pushing every level once",
                self.spec.name, _settings_changed(stored, settings),
            )  # fmt: skip
            self._use(mapping)
            try:
                await self._refresh()
            except MappingError as err:
                # a mapping CSV that cannot be read: the mapping loaded before stays, as at a refresh asked for
                log.warning(
                    "channel %s: %s; the mapping loaded before stays in use, every level of it goes out once, and the "
                    "mapping is loaded again at the next start", self.spec.name, err,
                )  # fmt: skip
                self._forced.update(dict.fromkeys(sorted(self._items)))
                self._force_gen += 1
                stored = settings  # not stored: the next start tries again
        else:
            self._use(mapping)
            self._force_unconfirmed()
            await self._correct_uncorrected()
        if stored != settings:  # after the mapping load: a restart before it loads it again
            await self.state.save_settings(self.spec.name, settings)
        self._loaded = True
        return mapping is None

    def _force_unconfirmed(self) -> None:
        """At a start with a stored mapping: push once every mapped SKU with a level the channel has not confirmed
        nor refused since the mapping was loaded. A mapping loaded just before a restart whose forced push did not
        get through (the channel down) would otherwise never tell the channel those levels: the cursor is past
        their changes, and a level confirmed under the last mapping may be what the refresh was asked to resend."""
        locations = dict.fromkeys(self.spec.pool.values())
        unconfirmed = [
            sku
            for sku, item in self._items.items()
            if any(k not in self._pushed and k not in self._refused for k in (LevelKey(item, loc) for loc in locations))
        ]
        if unconfirmed:
            log.info(
                "channel %s: %d mapped SKU(s) have levels the channel has not confirmed since the mapping was loaded; "
                "pushing them once",
                self.spec.name,
                len(unconfirmed),
            )
            self._forced.update(dict.fromkeys(sorted(unconfirmed)))
            self._force_gen += 1

    async def _correct_uncorrected(self) -> None:
        """At a start with a stored mapping: the divergences a reconciliation found and stored whose correction the
        channel has not confirmed (``correct`` keeps them in memory: a hub stopped before the channel took them lost
        them) are corrected in the first turn, from what the channel showed. Without this the channel went on
        showing its drifted level until the next reconciliation found it again, ``reconcile_s`` later. A level no
        longer mapped is left: its divergence stays listed."""
        skus = {item: sku for sku, item in self._items.items()}
        locations = set(self.spec.pool.values())
        owed = {
            k: base
            for k, base in (await self.state.uncorrected(self.spec.name)).items()
            if k.item_id in skus and k.location_id in locations
        }
        if not owed:
            return
        log.info(
            "channel %s: %d diverging level(s) found before this start were not corrected yet; pushing the hub's level "
            "there now", self.spec.name, len(owed),
        )  # fmt: skip
        self._key_sku.update((k, skus[k.item_id]) for k in owed)
        self._bases.update(owed)
        self._force_gen += 1

    async def refresh_mapping(self) -> SkuMapping:
        """Load the mapping again (from ``mapping_csv`` if configured, else the channel's listing), store it, forget
        the refused levels, and push every mapped level once in the next turn."""
        async with self._locked():
            if await self._load() and self.mapping is not None:  # built just now, for the first time
                return self.mapping
            return await self._refresh()

    async def remap_if_moved(self) -> bool:
        """Read the channel's listing and load the mapping again when its items moved since it was loaded (a SKU
        renamed, an item deleted and created again under a new id): levels set on the old ids would sell one SKU
        at another's count, or never reach the item that sells it. True when it was loaded again. A mapping CSV
        or a webhook channel's own SKUs are not the channel's listing: left to a refresh asked for."""
        if self.spec.mapping_csv is not None or self._identity:
            return False
        async with self._locked():
            if await self._load():
                return False  # built just now, from the listing
            entries = await self.connector.listing()
            before = set(self.mapping.items) if self.mapping is not None else set()
            after = set(build_mapping(self.spec.name, entries, ()).items)
            if after == before:
                return False
            log.warning(
                "channel %s: the channel's items changed since the mapping was loaded (%s); loading the mapping "
                "again and pushing every level once",
                self.spec.name, _moved(before, after),
            )  # fmt: skip
            await self._refresh(entries)
            return True

    async def _refresh(self, listed: list[ListingEntry] | None = None) -> SkuMapping:
        spec = self.spec
        if spec.mapping_csv is not None:
            text = await asyncio.to_thread(_mapping_text, spec)
            entries = parse_mapping_csv(text, source=f"the mapping CSV {spec.mapping_csv}")
            where = "the mapping CSV"
        elif self._identity:
            entries = []
            where = "the hub"
        else:
            entries = listed if listed is not None else await self.connector.listing()
            where = {"shopify": "Shopify", "square": "Square"}.get(spec.kind, spec.kind)
        in_pool = await self._skus_in_pool()
        if self._identity:
            entries = [ListingEntry(sku, sku) for sku in sorted(in_pool)]
        mapping = build_mapping(spec.name, entries, in_pool, where=where)
        await self.state.save_mapping(spec.name, mapping)  # forgets what was confirmed and refused, with it
        for finding in mapping.findings[:20]:
            log.warning("channel %s: %s", spec.name, finding.detail)
        if len(mapping.findings) > 20:
            log.warning("channel %s: %d more mapping findings are stored", spec.name, len(mapping.findings) - 20)
        log.info("channel %s: %d SKU(s) mapped, %d finding(s)", spec.name, len(mapping.items), len(mapping.findings))
        self._use(mapping)
        self._pushed = {}
        self._unsure = set()
        self._refused = {}
        self.status.refused = 0
        self._forced = dict.fromkeys(sorted(self._items))  # every mapped level goes out once
        self._bases = {}
        self._force_gen += 1
        self._wake.set()
        return mapping

    def _use(self, mapping: SkuMapping) -> None:
        self.mapping = mapping
        self._unmapped_since = set()
        self._items = mapping.by_sku()
        self.status.mapped = len(self._items)
        self.status.findings = len(mapping.findings)

    async def _skus_in_pool(self) -> set[str]:
        """Every SKU with stock at a pool location, read a page of ``COUNTS_LIMIT`` at a time to the end (a store
        may hold more SKUs than one page)."""
        skus: set[str] = set()
        for location in self.spec.pool:
            after: CountKey | None = None
            while True:
                page = await self._feed.counts(location=location, limit=COUNTS_LIMIT, after=after)
                skus.update(c.sku for c in page if c.on_hand > 0 or c.available > 0)
                if len(page) < COUNTS_LIMIT:
                    break
                after = CountKey(page[-1].location, page[-1].sku)
        return skus


def settings_text(spec: ChannelSpec) -> str:
    """The channel's settings that decide what it shows and where, as JSON (stored: ``ChannelState.save_settings``):
    its kind, endpoint (without credentials or query), pool, buffer and mapping CSV. Timeouts, batch sizes and the
    like change how levels go out, not which: they are left out."""
    buffer = spec.buffer
    return json.dumps(
        {
            "kind": spec.kind,
            "url": spec.display_url,
            "pool": dict(sorted(spec.pool.items())),
            "buffer": {"units": buffer.units, "percent": buffer.percent, "skus": dict(sorted(buffer.skus.items()))},
            "mapping_csv": spec.mapping_csv,
            "mapping_encoding": spec.mapping_encoding,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


SETTING_WORDS = {"kind": "kind", "url": "endpoint", "pool": "pool", "buffer": "buffer", "mapping_csv": "mapping CSV",
                 "mapping_encoding": "mapping encoding"}  # fmt: skip


def _settings_changed(before: str, after: str) -> str:
    """Which settings differ between two ``settings_text``s, in words: "pool and buffer"."""
    try:
        old, new = json.loads(before), json.loads(after)
    except ValueError:
        return "settings"
    if not isinstance(old, dict):
        return "settings"
    words = [w for k, w in SETTING_WORDS.items() if old.get(k) != new.get(k)] or ["settings"]
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def _mapping_text(spec: ChannelSpec) -> str:
    """The text of ``spec.mapping_csv``, in ``mapping_encoding``, else by its byte-order mark (UTF-8, UTF-16 or
    UTF-32), else UTF-8 (``protocol.csvtext.file_text``); ``MappingError`` for a file that cannot be read or is not
    text in it, naming the offset and line of its first bad byte: nothing of it is read, the mapping stays."""
    assert spec.mapping_csv is not None
    where = f"the mapping CSV {spec.mapping_csv} of channel {spec.name}"
    try:  # checked when the configuration was read
        charset = None if spec.mapping_encoding is None else csvtext.lookup(spec.mapping_encoding, "", who="the hub")
    except csvtext.CharsetRefused as err:
        raise MappingError(f"{where} cannot be read: mapping_encoding {str(err).strip()}") from None
    try:
        return csvtext.file_text(Path(spec.mapping_csv).read_bytes(), charset, setting="mapping_encoding")
    except OSError as err:
        raise MappingError(f"{where} cannot be read ({err})") from err
    except csvtext.TextUnreadable as err:
        if "mapping_encoding" in err.reason:  # a byte-order mark that contradicts it: the reason says what to do
            then = ""
        elif charset is None:
            then = (
                '; save it as "CSV UTF-8" (Excel) or UTF-8, or set the channel\'s mapping_encoding (e.g. windows-1252)'
            )
        else:
            then = "; check that the channel's mapping_encoding names the charset it is saved in"
        raise MappingError(f"{where} cannot be read: {err.reason}{then}") from None
