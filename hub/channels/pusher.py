"""A channel pusher: the change feed carried to one channel, as a loop over a cursor (docs/design.md: connectors are loops over a cursor).

One turn is one unit of work:

1. read the page of changes after the saved cursor (up to ``page_limit``);
2. for every mapped SKU the page touches at a pool location, compute the level
   the channel should show from the hub's *current* counts (so a burst of
   1,000 sales of one SKU is one level, and the last value always wins);
3. drop the levels equal to what the channel last confirmed;
4. push the rest in batches of ``batch_max``; after each batch the channel
   confirmed, store the confirmed quantities, and with the last batch move the
   cursor to the end of the page — in one transaction.

After a turn that pushed, the loop waits ``coalesce_s`` before the next one,
so the changes of a burst gather into one page: 1,000 sales of one SKU in a
second cost a handful of calls, and the last value always goes out.

A failed push moves nothing: the loop backs off (exponentially, with jitter,
up to ``retry_max_s``, or longer when the channel said ``Retry-After``) and
does the same turn again from the same cursor, so the request carries the same
idempotency key when its content is the same. A restart resumes from the saved
cursor; nothing after it is skipped, and nothing already confirmed is sent
again unless its value changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self

from hub.channels.config import ChannelSpec
from hub.channels.connector import ChannelError, Connector, Target
from hub.channels.levels import LevelKey, channel_levels
from hub.channels.loop import Backoff, Health
from hub.channels.mapping import MappingError, SkuMapping, build_mapping, parse_mapping_csv
from hub.channels.state import ChannelState
from hub.storage.base import ChangeRow, CountRow, StoreClosed, StoreError
from protocol import wall_ms_now

log = logging.getLogger(__name__)

PAGE_LIMIT_DEFAULT = 1_000
WAIT_S_DEFAULT = 60.0
COUNTS_LIMIT = 100_000


class FeedReader(Protocol):
    """The part of the hub store a pusher reads: the change feed and the counts."""

    async def changes(
        self, after: int, limit: int, location: str | None = None, sku: str | None = None
    ) -> list[ChangeRow]: ...

    async def counts(
        self, *, location: str | None = None, sku: str | None = None, limit: int = 1000
    ) -> list[CountRow]: ...


class ChangeWaiter(Protocol):
    """Wakes a pusher when a change after its cursor is committed (``hub.feed.ChangeWatch`` fits)."""

    @property
    def closed(self) -> bool: ...

    async def wait_past(self, after: int, timeout_s: float) -> int: ...


@dataclass(slots=True)
class PusherStatus:
    """Where one pusher stands, in memory (the stored position is the channel state's)."""

    cursor: int = 0
    turns: int = 0  # turns that found changes
    pushes: int = 0  # batches the channel confirmed
    levels_pushed: int = 0
    failures: int = 0
    last_error: str | None = None
    last_push_ms: int | None = None
    mapped: int = 0
    findings: int = 0


class ChannelPusher:
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
        self.spec = spec
        self.status = PusherStatus()
        self.connector = connector
        self._feed = feed
        self._state = state
        self._waiter = waiter
        self._page_limit = page_limit
        self._wait_s = wait_s
        self._backoff = backoff or Backoff(max_s=spec.retry_max_s)
        self._rng = rng or random.Random()
        self._health = Health(log, f"channel {spec.name}: pushing levels to {spec.kind}")
        self._items: dict[str, str] = {}
        self._pushed: dict[LevelKey, int] = {}
        self._loaded = False
        self._pushed_last_turn = False
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    # --- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        if self._stopped:
            raise RuntimeError(f"channel {self.spec.name}: a stopped pusher cannot start again")
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"channel-{self.spec.name}")

    async def stop(self) -> None:
        """Stop the loop (a push in flight is abandoned unconfirmed); safe twice."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Turn after turn: work while there are changes, wait for the feed when there are none."""
        try:
            while not self._stopped and not self._waiter.closed:
                try:
                    worked = await self.turn()
                except (ChannelError, StoreError, MappingError) as err:
                    self._health.failed(str(err))
                    self.status.failures, self.status.last_error = self._health.failures, str(err)
                    retry_after = getattr(err, "retry_after_s", None) or 0.0
                    await asyncio.sleep(max(retry_after, self._backoff.delay_s(self._health.failures, self._rng)))
                    continue
                self._health.succeeded()
                self.status.failures, self.status.last_error = 0, None
                if not worked:
                    await self._waiter.wait_past(self.status.cursor, self._wait_s)
                elif self._pushed_last_turn and self.spec.coalesce_s > 0:
                    await asyncio.sleep(self.spec.coalesce_s)  # let a burst gather: its last value goes out next
        except StoreClosed:
            return

    async def turn(self) -> bool:
        """One unit of work; False when there was no change after the cursor."""
        await self._load()
        start = self.status.cursor
        rows = await self._feed.changes(start, self._page_limit)
        if not rows:
            return False
        end = rows[-1].change_id
        targets = await self._targets(rows)
        turn_key = f"{self.spec.name}:{start}"
        keys = sorted(targets)
        batches = [keys[i : i + self.spec.batch_max] for i in range(0, len(keys), self.spec.batch_max)] or [[]]
        for n, batch in enumerate(batches):
            confirmed = await self.connector.push({k: targets[k] for k in batch}, turn_key) if batch else {}
            now_ms = wall_ms_now()
            last = n == len(batches) - 1
            await self._state.record(self.spec.name, confirmed, now_ms, cursor=end if last else None)
            self._pushed.update(confirmed)
            if batch:
                self.status.pushes += 1
                self.status.levels_pushed += len(confirmed)
                self.status.last_push_ms = now_ms
        self.status.cursor = end
        self.status.turns += 1
        self._pushed_last_turn = bool(keys)
        return True

    async def _targets(self, rows: Sequence[ChangeRow]) -> dict[LevelKey, Target]:
        pool = self.spec.pool
        skus = sorted({r.sku for r in rows if r.location in pool and r.sku in self._items})
        targets: dict[LevelKey, Target] = {}
        for sku in skus:
            counts = [c for c in await self._feed.counts(sku=sku, limit=COUNTS_LIMIT) if c.location in pool]
            at_ms = max((c.updated_at_ms for c in counts), default=0)
            for key, quantity in channel_levels(counts, pool, self.spec.buffer, self._items, [sku]).items():
                previous = self._pushed.get(key)
                if previous != quantity:
                    targets[key] = Target(quantity, previous, at_ms)
        return targets

    # --- mapping and state ---------------------------------------------------------

    async def _load(self) -> None:
        if self._loaded:
            return
        mapping = await self._state.mapping(self.spec.name)
        if mapping is None:
            mapping = await self.refresh_mapping()
        self._use(mapping)
        self.status.cursor = await self._state.cursor(self.spec.name)
        self._pushed = await self._state.pushed(self.spec.name)
        self._loaded = True

    async def refresh_mapping(self) -> SkuMapping:
        """Load the mapping again (from ``mapping_csv`` if configured, else the channel's listing) and store it."""
        spec = self.spec
        if spec.mapping_csv is not None:
            try:
                text = await asyncio.to_thread(Path(spec.mapping_csv).read_text, encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise MappingError(f"the mapping CSV {spec.mapping_csv} of channel {spec.name} cannot be read ({err})") from err
            entries = parse_mapping_csv(text, source=f"the mapping CSV {spec.mapping_csv}")
            where = "the mapping CSV"
        else:
            entries = await self.connector.listing()
            where = {"shopify": "Shopify", "square": "Square"}.get(spec.kind, spec.kind)
        mapping = build_mapping(spec.name, entries, await self._skus_in_pool(), where=where)
        await self._state.save_mapping(spec.name, mapping)
        for finding in mapping.findings[:20]:
            log.warning("channel %s: %s", spec.name, finding.detail)
        if len(mapping.findings) > 20:
            log.warning("channel %s: %d more mapping findings are stored", spec.name, len(mapping.findings) - 20)
        log.info("channel %s: %d SKU(s) mapped, %d finding(s)", spec.name, len(mapping.items), len(mapping.findings))
        self._use(mapping)
        return mapping

    def _use(self, mapping: SkuMapping) -> None:
        self._items = mapping.by_sku()
        self.status.mapped = len(self._items)
        self.status.findings = len(mapping.findings)

    async def _skus_in_pool(self) -> set[str]:
        skus: set[str] = set()
        for location in self.spec.pool:
            for c in await self._feed.counts(location=location, limit=COUNTS_LIMIT):
                if c.on_hand > 0 or c.available > 0:
                    skus.add(c.sku)
        return skus
