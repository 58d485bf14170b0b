"""Square connector: the Square Inventory and Catalog APIs, ``Square-Version: 2024-11-20``.

Levels are set with ``POST /v2/inventory/changes/batch-create``: at most 100
``PHYSICAL_COUNT`` changes per request (``catalog_object_id``, ``location_id``,
``state: IN_STOCK``, ``quantity`` as a decimal string, and the client's
``occurred_at`` — the hub's time of the newest change behind the quantity, so
an older count can never override a newer one at Square), one
``idempotency_key`` per request derived from the turn and the request's
content (a retry carries the same key; Square answers a reused key with
different content ``IDEMPOTENCY_KEY_REUSED``). ``429`` is honoured: the
connector waits ``Retry-After`` seconds and sends the same request again.
Errors come as ``{"errors": [{"category", "code", "detail", "field"}]}``;
a ``200`` carrying ``errors``, or lacking the count of a level it was sent
(Square answers a success with the counts of every object the request
names), confirms nothing: the batch goes again, as after a ``5xx``, its
error in the channel's status. The answer's ``counts`` are read. A level whose count there is not the one
pushed is either a count Square kept over the push (one it holds stamped
later: a register edit) or the push taken and moved since by a change that
occurred after it (a sale rung up at a register, which Square applies on top
of the pushed count); the answer cannot tell which. Square's own record can:
each push carries a ``reference_id`` naming it, and for such levels the
connector reads ``POST /v2/inventory/changes/batch-retrieve``
(BatchRetrieveInventoryChanges: those items and locations, ``PHYSICAL_COUNT``
and ``ADJUSTMENT``, received from a little before the push's ``occurred_at``
to Square's ``calculated_at``; one request per answer, page by page with its
``cursor``, at most ``CHANGES_PAGES_MAX`` pages). A count not the push's
stamped at or after it: kept (``Confirmed.kept``; the pusher pushes the hub's
level again stamped after it). Only adjustments after the push, which bring
the pushed quantity exactly to Square's: the push was taken, and the level
is confirmed at Square's quantity (``Confirmed.moved``) — pushing the hub's
level over it would show the sold units again. Anything else, or a read that
fails (an error, 429s longer than ``CHANGES_RATE_WAIT_MAX_S`` in all, a timeout),
leaves the level kept, as before the read existed; a read that fails is
logged once until one succeeds.

A reconciliation reads the same record for the levels that diverge
(``sold_since``): from a little before the ``occurred_at`` of the hub's last
count there to the ``calculated_at`` the level was read back with. A level
whose standing count is the hub's (its ``reference_id``) less sales alone
(``IN_STOCK`` to ``SOLD``) after it, bringing it exactly to Square's
quantity, is a sale whose order has not reached the hub: the reconciler
leaves it (``hub.channels.reconcile.split_sold``). A read that fails leaves
every level to be pushed over, as before, logged once until one succeeds.

Before a push, a channel whose register sales come back to the hub as orders
(``ChannelPusher.order_channels``) reads the sales (``sales_since``:
``ADJUSTMENT`` changes with ``states`` ``SOLD``, each naming its order by its
``transaction_id``, or naming none: a sale without a payment, ``Sale.change_id`` naming the sale) at the levels counted before, from a little before the
hub's last count there (or before the oldest sale that count took off): the
pusher takes those whose orders the hub has not booked off the count, so the
count does not take over a sale the hub does not know of yet. Each sale says when Square received it on the hub's
clock too (``Sale.hub_ms``: its ``created_at`` and Square's clock behind the hub's), where the pusher tells it from the
hub's last stock count (``ChannelPusher._count_times``). A read that fails leaves the counts at the hub's level, logged
once until one succeeds.

A ``400`` whose every error names one change (``field``
``changes[<i>]…``: a deleted variation, an unknown location) refuses those
levels for good (``LevelsRefused``): Square applied nothing, and the pusher
sends the batch again without them.

The listing is ``POST /v2/catalog/search`` for ``ITEM_VARIATION`` objects
(their ``sku`` and ``upc``), page by page with Square's ``cursor``; levels are
read back with ``POST /v2/inventory/counts/batch-retrieve`` (``IN_STOCK``; an
item Square holds no count of shows 0), up to 100 items a request, each
answered a page of counts at a time (100 a page unless a ``limit`` is sent):
the same request is sent again with the answer's ``cursor`` until an answer
carries none. A request asks for at most items × locations ``IN_STOCK``
counts, so its walk stops a few pages past what those need
(``PageWalk.expect``): a Square inventing a count per page under fresh
cursors is not followed to ``READ_PAGES_MAX``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp

from hub.channels.config import ChannelSpec
from hub.channels.connector import (
    CallRecord,
    ChannelError,
    ChannelRejected,
    ChannelUnavailable,
    Confirmed,
    ConnectorStatus,
    Kept,
    LevelsRefused,
    Moved,
    PageWalk,
    Sale,
    Target,
    array,
    idempotency_key,
    page_ids,
    post,
    short,
)
from hub.channels.levels import LevelKey
from hub.channels.mapping import ListingEntry
from hub.heartbeat import beat
from protocol import values, wall_ms_now
from protocol.retry import peer_retry_after_s, peer_wait_s

log = logging.getLogger(__name__)

RATE_LIMITED_RETRIES_MAX = 5  # 429 answers in a row before a turn gives up (and backs off)
CATALOG_PAGE = 1_000
CATALOG_PAGES_MAX = 10_000
ANSWER_MAX_BYTES = 16 * 1024 * 1024
READ_IDS_MAX = 100  # catalog object ids per counts/batch-retrieve request
# Square answers 100 counts a batch-retrieve page by default but promises no size, only that a page with a cursor
# holds some: the read-back's bound counts a page as one count, so a Square answering small pages is never cut short.
READ_PAGE_LEAST = 1
READ_PAGES_MAX = 1_000
CHANGE_FIELD_RE = re.compile(r"changes\[(\d+)\]")
# Square takes a physical count's occurred_at no older than 24 hours and not in the future (InventoryPhysicalCount,
# 2024-11-20): a stamp outside is sent at the window's edge, with a margin for Square's clock against the hub's, and
# "now" is Square's when its answers' Date says its clock is behind the hub's (CallRecord.peer_behind_ms).
OCCURRED_PAST_MAX_MS = 24 * 3600 * 1000 - 10 * 60 * 1000
# Telling a sale at Square during a push from a count Square kept over it (BatchRetrieveInventoryChanges, 2024-11-20)
REFERENCE_PREFIX = "shelfsync:"  # a pushed count's reference_id: this and the request's idempotency key
CHANGES_LIMIT = 1_000  # changes asked for a page (Square's most; it may answer fewer)
CHANGES_PAGES_MAX = 20  # pages of changes read for one push's answer; past them the levels are left as kept
# Changes are asked for from this long before the push's occurred_at (Square filters on when it received them): a
# sale occurred after the push is received after it too, unless the register's clock runs ahead of Square's.
CHANGES_BEFORE_MS = 5 * 60 * 1000
CHANGES_RATE_WAIT_MAX_S = 2.0  # a 429 on that read is waited out this long at most; longer leaves the levels kept
CHANGE_TYPES = ("PHYSICAL_COUNT", "ADJUSTMENT")
# A register sale is known by its adjustment's id (InventoryAdjustment.id, at most 100 characters, 2024-11-20): one
# whose order never comes is listed among the exceptions, and dismissed by its URL, as ``sale:<id>``
ADJUSTMENT_ID_MAX_LEN = 100
SALE_ID = values.TextField("Square adjustment id", ADJUSTMENT_ID_MAX_LEN)


@dataclass(frozen=True, slots=True)
class _Shown:
    """What Square's answer holds at a level where it is not the pushed count: the quantity and ``calculated_at``."""

    quantity: Decimal
    at_ms: int


@dataclass(frozen=True, slots=True)
class _Change:
    """One physical count or adjustment of Square's record, as read from ``changes/batch-retrieve``."""

    type: str
    key: LevelKey
    in_stock: Decimal  # what it does to IN_STOCK: a count sets it (its quantity), an adjustment adds it
    occurred_ms: int
    created_ms: int
    reference_id: str
    sale: bool = False  # an adjustment from IN_STOCK to SOLD: a sale rung up at Square
    order_id: str = ""  # a sale's order at Square: its ``transaction_id`` (a register order is its own transaction)
    id: str = ""  # Square's id of the change


@dataclass(slots=True)
class _RecordReads:
    """Reads of Square's record of changes for one end: when they start failing, one warning says what the hub does
    until they work again (``meanwhile``); when they work again, one line says so (``again``)."""

    why: str  # what the record is read for
    meanwhile: str
    again: str
    failing: bool = False

    def failed(self, channel: str, err: ChannelError) -> None:
        if not self.failing:
            log.warning(
                "channel %s: Square's inventory changes could not be read %s (%s); until they can, %s",
                channel, self.why, err, self.meanwhile,
            )  # fmt: skip
        self.failing = True

    def read(self, channel: str) -> None:
        if self.failing:
            log.info("channel %s: Square's inventory changes can be read again, so %s", channel, self.again)
        self.failing = False


class _Refused(ChannelRejected):
    """A 4xx answer: the message is the sentence, ``errors`` Square's error objects."""

    def __init__(self, message: str, errors: list[Any]) -> None:
        super().__init__(message)
        self.errors = errors


def _ms_of(text: Any) -> int:
    """Wall ms of an RFC 3339 time of Square's (0 when it gives none); ValueError when it is not one."""
    if text in (None, ""):
        return 0
    return round(datetime.fromisoformat(str(text)).timestamp() * 1000)


def rfc3339_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class SquareConnector:
    kind = "square"
    readable = True

    def __init__(
        self,
        spec: ChannelSpec,
        session: aiohttp.ClientSession,
        *,
        sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], int] = wall_ms_now,
    ) -> None:
        self.spec = spec
        self._session = session
        self._sleep = sleep
        self._clock = clock
        self._wall = wall
        self._clamping = False  # the last push sent a stamp moved into Square's window (logged when that starts)
        # Square's record of changes, read for three ends: each says when its reads start failing and when they work
        self._after_push = _RecordReads(
            "to tell a sale at Square from a count it kept over the push",
            "a level Square answers differently is pushed again as a kept count",
            "a sale at Square during a push is told from a count it kept over the push",
        )
        self._reconciling = _RecordReads(
            "to tell a sale at Square from a drift when reconciling",
            "every level that diverges is pushed over, a sale whose order has not reached the hub included",
            "a reconciliation leaves a sale at Square standing until its order reaches the hub",
        )
        self._before_push = _RecordReads(
            "before pushing counts",
            "a count goes out at the hub's level, over a sale at Square whose order has not reached the hub",
            "a count pushed leaves a sale at Square standing until its order reaches the hub",
        )
        self._read_at: dict[LevelKey, int] = {}  # each level's calculated_at as last read back (wall ms, Square's)
        self.calls = 0
        self.rate_limited = 0
        self._last = CallRecord()
        self._retry_after: tuple[float, int] | None = None  # the last Retry-After (s) and until when (ms)

    async def close(self) -> None:
        return None

    def status(self) -> ConnectorStatus:
        held = self._retry_after
        throttle = None
        if held is not None and held[1] > wall_ms_now():
            throttle = {"retry_after_s": held[0], "until_ms": held[1]}
        return ConnectorStatus(self._last.ok, self._last.at_ms, throttle)

    async def call(
        self, path: str, body: Mapping[str, Any], what: str, *, wait_max_s: float | None = None
    ) -> dict[str, Any]:
        """One POST to the Square API, sent again after a 429 (hub.channels.order_routes reads orders with it);
        ``wait_max_s``: wait at most this long in all for 429s, then raise ChannelUnavailable (a webhook being
        answered cannot wait minutes)."""
        return await self._call(path, body, what, wait_max_s=wait_max_s)

    async def push(self, batch: Mapping[LevelKey, Target], turn_key: str) -> dict[LevelKey, int]:
        keys = sorted(batch)
        if len(keys) > self.spec.batch_max:
            raise ValueError(f"a Square batch holds at most {self.spec.batch_max} changes, got {len(keys)}")
        stamps = self._in_window({k: batch[k].occurred_at_ms for k in keys})
        changes: list[dict[str, Any]] = [
            {
                "type": "PHYSICAL_COUNT",
                "physical_count": {
                    "catalog_object_id": k.item_id,
                    "location_id": k.location_id,
                    "state": "IN_STOCK",
                    "quantity": str(batch[k].quantity),
                    "occurred_at": rfc3339_ms(stamps[k]),
                },
            }
            for k in keys
        ]
        key = idempotency_key(turn_key, changes)
        reference = REFERENCE_PREFIX + key  # names this push's counts in Square's record of changes
        for change in changes:
            change["physical_count"]["reference_id"] = reference
        body = {"idempotency_key": key, "changes": changes, "ignore_unchanged_counts": True}
        try:
            answer = await self._call("/v2/inventory/changes/batch-create", body, "setting levels")
        except _Refused as err:
            refused = _refused_levels(err.errors, keys)
            if refused:
                raise LevelsRefused(
                    f"Square refused {len(refused)} of {len(keys)} level(s) of channel {self.spec.name}", refused,
                    _gone_levels(err.errors, keys),
                ) from err
            raise
        self._check_counted(keys, answer)
        taken, shown = self._taken(batch, answer)
        if not shown:
            return Confirmed(taken)
        moved, kept = await self._told_apart(batch, stamps, reference, shown)
        return Confirmed({**taken, **{k: m.quantity for k, m in moved.items()}}, kept, moved=moved)

    def _in_window(self, stamps: dict[LevelKey, int]) -> dict[LevelKey, int]:
        """Each stamp moved into the window Square takes a physical count's ``occurred_at`` in (not in the future,
        not older than 24 hours): stamps never go back, so after a clock ran far ahead they lie in the future until
        it catches up, and a level whose newest change is days old (a catch-up after an outage) lies before it —
        Square would refuse either. Logged once when it starts."""
        now = self._wall() - self._last.peer_behind_ms  # Square's clock, when its answers say it is behind ours
        low = now - OCCURRED_PAST_MAX_MS
        moved = {k: min(max(at, low), now) for k, at in stamps.items()}
        changed = [k for k in stamps if moved[k] != stamps[k]]
        if changed and not self._clamping:
            k = changed[0]
            log.warning(
                "channel %s: %d count(s) are stamped outside the window Square takes (not in the future, at most 24 "
                "hours old; first %s at %s stamped %s), so they are sent stamped at its edge, %s",
                self.spec.name, len(changed), k.item_id, k.location_id, rfc3339_ms(stamps[k]), rfc3339_ms(moved[k]),
            )  # fmt: skip
        self._clamping = bool(changed)
        return moved

    def _check_counted(self, keys: list[LevelKey], answer: Mapping[str, Any]) -> None:
        """``ChannelUnavailable`` when the answer lacks the count of a level pushed: Square answers a change that
        succeeded with the current counts of every object it names (BatchChangeInventory), so a 200 without them
        confirms nothing, and the batch goes again with the same idempotency key (applied once if it was)."""
        counts = answer.get("counts")
        named = {
            (str(c.get("catalog_object_id")), str(c.get("location_id")))
            for c in (counts if isinstance(counts, list) else ())
            if isinstance(c, dict)
        }
        missing = [k for k in keys if (k.item_id, k.location_id) not in named]
        if missing:
            first = missing[0]
            raise ChannelUnavailable(
                f"Square answered setting levels for channel {self.spec.name} with HTTP 200 but no count of "
                f"{len(missing)} of the {len(keys)} level(s) it was sent (first {first.item_id} at "
                f"{first.location_id}), so they are not taken as set and go again"
            )

    def _taken(
        self, batch: Mapping[LevelKey, Target], answer: Mapping[str, Any]
    ) -> tuple[dict[LevelKey, int], dict[LevelKey, _Shown]]:
        """The levels Square's answer shows at the pushed count (taken), and those it shows at another quantity, with
        its ``calculated_at``: a count of its own kept over the push, or the push moved since by a sale
        (``_told_apart``). A level the answer counts in another state alone is taken as applied (one it gives no count of
        at all was refused before: ``_check_counted``)."""
        shown: dict[LevelKey, _Shown] = {}
        for c in answer.get("counts") or ():
            if not isinstance(c, dict) or c.get("state", "IN_STOCK") != "IN_STOCK":
                continue
            key = LevelKey(str(c.get("catalog_object_id")), str(c.get("location_id")))
            try:
                quantity = Decimal(str(c.get("quantity")))
                at_ms = _ms_of(c.get("calculated_at"))
            except (InvalidOperation, ValueError, TypeError):
                continue  # a count the hub cannot read says nothing against the push
            if key in batch and quantity.is_finite() and quantity != batch[key].quantity:
                shown[key] = _Shown(quantity, at_ms)
        return {k: t.quantity for k, t in batch.items() if k not in shown}, shown

    async def _told_apart(
        self, batch: Mapping[LevelKey, Target], stamps: Mapping[LevelKey, int], reference: str,
        shown: Mapping[LevelKey, _Shown],
    ) -> tuple[dict[LevelKey, Moved], dict[LevelKey, Kept]]:  # fmt: skip
        """Each level Square answered at another quantity than pushed, told apart by Square's record of changes:
        moved by adjustments after the push (confirmed at Square's quantity), or kept (a count of its own stands
        over the push, or the record cannot say). A read that fails leaves them all kept, said once."""
        kept = {k: Kept(int(s.quantity), s.at_ms) for k, s in shown.items()}
        try:
            record = await self._changes_since(stamps, shown)
        except ChannelError as err:
            self._after_push.failed(self.spec.name, err)
            return {}, kept
        self._after_push.read(self.spec.name)
        moved: dict[LevelKey, Moved] = {}
        for k, s in shown.items():
            found = _moved_after(record.get(k, []), batch[k].quantity, reference, s.quantity, s.at_ms)
            if found is not None:
                moved[k] = found
                del kept[k]
        return moved, kept

    async def _changes_since(
        self, stamps: Mapping[LevelKey, int], shown: Mapping[LevelKey, _Shown | None], *, sales_only: bool = False
    ) -> dict[LevelKey, list[_Change]]:
        """Square's physical counts and adjustments at these levels received from a little before the earliest
        push's ``occurred_at`` up to the newest ``calculated_at`` answered (``shown``; None: up to now): one
        request, read page by page with Square's cursor, at most ``CHANGES_PAGES_MAX`` pages (ChannelUnavailable
        past them). ``sales_only``: adjustments to or from ``SOLD`` alone."""
        items = sorted({k.item_id for k in shown})
        locations = sorted({k.location_id for k in shown})
        request: dict[str, Any] = {
            "catalog_object_ids": items,
            "location_ids": locations,
            "types": ["ADJUSTMENT"] if sales_only else list(CHANGE_TYPES),
            "updated_after": rfc3339_ms(min(stamps[k] for k in shown) - CHANGES_BEFORE_MS),
            "limit": CHANGES_LIMIT,
        }
        if sales_only:
            request["states"] = ["SOLD"]
        bounds = [s.at_ms for s in shown.values() if s is not None]
        if bounds and len(bounds) == len(shown) and all(at > 0 for at in bounds):
            request["updated_before"] = rfc3339_ms(max(bounds) + 1)  # received strictly before: the newest, included
        pages = f"Square's pages of inventory changes of channel {self.spec.name}"
        walk = PageWalk(pages)
        seen: set[str] = set()
        record: dict[LevelKey, list[_Change]] = {}
        for _ in range(CHANGES_PAGES_MAX):
            answer = await self._call(
                "/v2/inventory/changes/batch-retrieve", request, "reading its inventory changes",
                wait_max_s=CHANGES_RATE_WAIT_MAX_S,
            )  # fmt: skip
            listed = array(answer.get("changes"), f"the inventory changes Square answered channel {self.spec.name}")
            for change in [_change_of(c, self.spec.name) for c in listed]:
                if change is not None and change.key in shown:
                    record.setdefault(change.key, []).append(change)
            cursor = answer.get("cursor")
            if not cursor:
                return record
            walk.page(page_ids(listed, "type", "physical_count", "adjustment"))
            request["cursor"] = next_cursor(cursor, seen, pages)
        raise ChannelUnavailable(
            f"Square answered channel {self.spec.name} more than {CHANGES_PAGES_MAX} page(s) of changes for "
            f"{len(items)} item(s) at {len(locations)} location(s); reading them stopped there"
        )

    async def listing(self) -> list[ListingEntry]:
        entries: list[ListingEntry] = []
        cursor: str | None = None
        seen: set[str] = set()
        walk = PageWalk(f"Square's catalog pages of channel {self.spec.name}")
        for _ in range(CATALOG_PAGES_MAX):
            request: dict[str, Any] = {"object_types": ["ITEM_VARIATION"], "limit": CATALOG_PAGE}
            if cursor:
                request["cursor"] = cursor
            answer = await self._call("/v2/catalog/search", request, "reading the catalog")
            objects = array(answer.get("objects"), f"the catalog page Square answered channel {self.spec.name}")
            for obj in objects:
                if not isinstance(obj, dict) or obj.get("type") != "ITEM_VARIATION" or obj.get("is_deleted"):
                    continue
                data = obj.get("item_variation_data")
                data = data if isinstance(data, dict) else {}
                entries.append(
                    ListingEntry(
                        item_id=str(obj.get("id") or ""),
                        sku=str(data.get("sku") or ""),
                        barcode=str(data.get("upc") or ""),
                        title=str(data.get("name") or ""),
                    )
                )
            cursor = answer.get("cursor")
            if not cursor:
                return entries
            walk.page(page_ids(objects, "id"))
            cursor = next_cursor(cursor, seen, f"Square's catalog pages of channel {self.spec.name}")
        raise ChannelRejected(f"channel {self.spec.name} lists more than {CATALOG_PAGES_MAX * CATALOG_PAGE} variations")

    async def read_levels(self, keys: Sequence[LevelKey]) -> dict[LevelKey, int | None]:
        """Square's IN_STOCK count of each level; 0 where Square holds no count (nothing was ever counted)."""
        wanted = set(keys)
        found: dict[LevelKey, int | None] = {k: 0 for k in keys}
        for k in keys:
            self._read_at.pop(k, None)
        items = sorted({k.item_id for k in keys})
        locations = sorted({k.location_id for k in keys})
        for start in range(0, len(items), READ_IDS_MAX):
            batch = items[start : start + READ_IDS_MAX]
            request: dict[str, Any] = {"catalog_object_ids": batch, "location_ids": locations, "states": ["IN_STOCK"]}
            seen: set[str] = set()
            walk = PageWalk(f"Square's pages of counts of channel {self.spec.name}")
            # one IN_STOCK count at most per item and location asked for: pages far past those are not Square's
            walk.expect(
                len(batch) * len(locations),
                f"count(s) asked for: {len(batch)} item(s) × {len(locations)} location(s)",
            )
            for _ in range(READ_PAGES_MAX):
                answer = await self._call("/v2/inventory/counts/batch-retrieve", request, "reading levels")
                counts = array(answer.get("counts"), f"the counts Square answered channel {self.spec.name}")
                for c in counts:
                    if not isinstance(c, dict) or c.get("state") != "IN_STOCK":
                        continue
                    key = LevelKey(str(c.get("catalog_object_id")), str(c.get("location_id")))
                    if key in wanted:
                        try:
                            found[key] = int(float(c.get("quantity", "0")))
                        except (TypeError, ValueError, OverflowError):  # OverflowError: "1e999", "Infinity"
                            raise ChannelUnavailable(
                                f"Square answered channel {self.spec.name} a count that is not a number"
                            ) from None
                        try:
                            self._read_at[key] = _ms_of(c.get("calculated_at"))
                        except (TypeError, ValueError):
                            self._read_at[key] = 0  # no bound: sold_since reads every change received since
                cursor = answer.get("cursor")
                if not cursor:
                    break
                walk.page(page_ids(counts, "catalog_object_id", "location_id", "state"), size=READ_PAGE_LEAST)
                # the next page: the same query and Square's cursor
                request["cursor"] = next_cursor(cursor, seen, f"Square's pages of counts of channel {self.spec.name}")
            else:
                raise ChannelUnavailable(
                    f"Square answered channel {self.spec.name} more than {READ_PAGES_MAX} pages of counts for "
                    f"{len(batch)} item(s); reading levels back stopped there"
                )
        return found

    async def _changes_by_items(
        self, since_ms: Mapping[LevelKey, int], shown: Mapping[LevelKey, _Shown | None], *, sales_only: bool = False
    ) -> dict[LevelKey, list[_Change]]:
        """``_changes_since`` of the levels ``shown``, ``READ_IDS_MAX`` items a request."""
        items = sorted({k.item_id for k in shown})
        record: dict[LevelKey, list[_Change]] = {}
        for start in range(0, len(items), READ_IDS_MAX):
            batch = set(items[start : start + READ_IDS_MAX])
            part = {k: s for k, s in shown.items() if k.item_id in batch}
            record.update(await self._changes_since(since_ms, part, sales_only=sales_only))
        return record

    async def sold_since(
        self, shown: Mapping[LevelKey, int], counted_ms: Mapping[LevelKey, int]
    ) -> dict[LevelKey, Moved]:
        """Of the levels read back at ``shown``, those Square's record shows at the hub's last count there less sales
        rung up at a register after it (``_sold_after``): a reconciliation leaves them as they stand until the sales'
        orders reach the hub. Read with ``changes/batch-retrieve`` from a little before each level's last count
        (``counted_ms``: the ``occurred_at`` it went out with) to the ``calculated_at`` it was read back with,
        ``READ_IDS_MAX`` items a request. A read that fails leaves them all to be pushed over, as before the read
        existed, said once until one succeeds."""
        asked = {k: _Shown(Decimal(q), self._read_at.get(k, 0)) for k, q in shown.items() if k in counted_ms}
        if not asked:
            return {}
        try:
            record = await self._changes_by_items(counted_ms, asked)
        except ChannelError as err:
            self._reconciling.failed(self.spec.name, err)
            return {}
        self._reconciling.read(self.spec.name)
        sold: dict[LevelKey, Moved] = {}
        for k, s in asked.items():
            found = _sold_after(record.get(k, []), s.quantity, s.at_ms)
            if found is not None:
                sold[k] = found
        return sold

    async def sales_since(self, counted_ms: Mapping[LevelKey, int]) -> dict[LevelKey, list[Sale]] | None:
        """The sales (``IN_STOCK`` to ``SOLD``) Square recorded at these levels, received from a little before
        ``counted_ms`` (the ``occurred_at`` the hub's last count there went out with, or earlier: the oldest sale
        that count took off) up to now, each with its
        order (the adjustment's ``transaction_id``: the Transaction that sold it, 2024-11-20, which for an order
        paid at a register is the order's id — not its payment's; "only relevant for payment-related state
        transitions", so a sale without a payment has none: its ``order_id`` is empty, and the pusher matches it to
        an order the hub booked by item, location, units and time, ``Sale.change_id`` naming it). Read with ``changes/batch-retrieve``, ``ADJUSTMENT`` with ``states``
        ``SOLD``, ``READ_IDS_MAX`` items a request. None when it cannot be read: said once until it can again."""
        if not counted_ms:
            return {}
        try:
            record = await self._changes_by_items(counted_ms, dict.fromkeys(counted_ms), sales_only=True)
        except ChannelError as err:
            self._before_push.failed(self.spec.name, err)
            return None
        self._before_push.read(self.spec.name)
        sales: dict[LevelKey, list[Sale]] = {}
        behind = self._last.peer_behind_ms  # Square's receipt on the hub's clock: told from the hub's stock count
        for k, changes in record.items():
            for c in changes:
                if c.sale and c.in_stock == int(c.in_stock) and (c.order_id or c.id):
                    received = c.created_ms or c.occurred_ms
                    sales.setdefault(k, []).append(
                        Sale(c.order_id, int(-c.in_stock), c.occurred_ms, c.created_ms, received + behind, c.id)
                    )
        return sales

    async def _call(
        self, path: str, body: Mapping[str, Any], what: str, *, wait_max_s: float | None = None
    ) -> dict[str, Any]:
        """One request, sent again (the same body, the same key) after each 429 once Retry-After has passed."""
        spec = self.spec
        waited_s = 0.0
        for _ in range(RATE_LIMITED_RETRIES_MAX):
            status, retry_after, answer = await self._post(path, body, what)
            if status == 429:
                self.rate_limited += 1
                wait_s = peer_retry_after_s(retry_after)
                self._retry_after = (wait_s, wall_ms_now() + round(wait_s * 1000))
                if wait_max_s is not None and waited_s + wait_s > wait_max_s:
                    raise ChannelUnavailable(
                        f"Square is rate-limiting channel {spec.name} (HTTP 429, Retry-After {wait_s:g} s) while "
                        f"{what}",
                        wait_s,
                    )
                waited_s += wait_s
                beat(wait_s)  # the pusher waits as Square asked: alive, not stuck (hub.heartbeat.Heartbeat)
                await self._sleep(wait_s)
                continue
            if 200 <= status < 300 and not answer.get("errors"):
                return answer
            if 200 <= status < 300:  # Square answers errors only for what failed: nothing of it is taken as done
                raise ChannelUnavailable(
                    f"Square answered {what} for channel {spec.name} with HTTP {status} but with errors "
                    f"({_first_error(answer) or 'no detail'}), so nothing of it is taken as done and it goes again"
                )
            detail = _first_error(answer) or f"HTTP {status}"
            if status >= 500:  # a 503 may say Retry-After too (RFC 9110 10.2.3)
                raise ChannelUnavailable(
                    f"Square failed {what} for channel {spec.name} (HTTP {status}: {detail})",
                    peer_wait_s(status, retry_after),
                )
            if status in (401, 403):
                raise ChannelRejected(
                    f"Square refused the access token of channel {spec.name} ({detail}); check the token in "
                    f"{spec.secret_source or 'its secret'} and its INVENTORY_WRITE permission"
                )
            errors = answer.get("errors")
            raise _Refused(
                f"Square refused {what} for channel {spec.name} (HTTP {status}: {detail})",
                errors if isinstance(errors, list) else [],
            )
        raise ChannelUnavailable(
            f"Square kept answering 429 to channel {spec.name} ({RATE_LIMITED_RETRIES_MAX} times in a row)",
            peer_retry_after_s(None),
        )

    async def _post(self, path: str, body: Mapping[str, Any], what: str) -> tuple[int, str | None, dict[str, Any]]:
        spec = self.spec
        headers = {
            "Authorization": f"Bearer {spec.secret}",
            "Square-Version": spec.api_version,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "shelfsync-hub",
        }
        self.calls += 1
        status, raw, retry_after = await post(
            self._session,
            spec.url + path,
            json_body=body,
            headers=headers,
            timeout_s=spec.timeout_s,
            answer_max_bytes=ANSWER_MAX_BYTES,
            last=self._last,
            timed_out=f"Square did not answer {what} for channel {spec.name} within {spec.timeout_s:g} s",
            unreachable=f"cannot reach Square for channel {spec.name}",
        )
        self._last.answered(status < 500 and status not in (401, 403))
        if len(raw) > ANSWER_MAX_BYTES:
            raise ChannelUnavailable(f"Square's answer to channel {spec.name} is larger than {ANSWER_MAX_BYTES} bytes")
        try:
            answer = json.loads(raw.decode("utf-8", "replace")) if raw else None
        except ValueError:
            answer = None
        if 200 <= status < 300 and not isinstance(answer, dict):
            # Square answers every call with a JSON object: anything else (an empty body, a proxy's page) confirms
            # nothing, and is not Square refusing the request either
            raise ChannelUnavailable(
                f"Square answered {what} for channel {spec.name} with HTTP {status} but no JSON object "
                f"({short(raw.decode('utf-8', 'replace')) or 'an empty body'})"
            )
        if not isinstance(answer, dict):
            answer = {"errors": [{"detail": short(raw.decode("utf-8", "replace"))}]} if raw else {}
        return status, retry_after, answer


def next_cursor(cursor: Any, seen: set[str], pages: str) -> str:
    """The cursor of the next page; ChannelUnavailable when it is not text or came before (the pages loop)."""
    if not isinstance(cursor, str):
        raise ChannelUnavailable(f"{pages} give a cursor that is not text; reading stopped there")
    if cursor in seen:
        raise ChannelUnavailable(f"{pages} loop (a cursor came back); reading stopped there")
    seen.add(cursor)
    return cursor


def _first_error(answer: Mapping[str, Any]) -> str:
    errors = answer.get("errors")
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return ""
    e = errors[0]
    field = f" ({e['field']})" if e.get("field") else ""
    return short(f"{e.get('category', '')} {e.get('code', '')}: {e.get('detail', '')}{field}".strip())


def _refused_levels(errors: list[Any], keys: list[LevelKey]) -> dict[LevelKey, str]:
    """The levels a 400 refused, each with Square's reason, when every error names one change; else empty."""
    refused: dict[LevelKey, str] = {}
    for e in errors:
        match = CHANGE_FIELD_RE.match(str(e.get("field", ""))) if isinstance(e, dict) else None
        if match is None or not 0 <= int(match.group(1)) < len(keys):
            return {}
        refused[keys[int(match.group(1))]] = short(
            f"{e.get('category', '')} {e.get('code', '')}: {e.get('detail', '')} ({e.get('field')})".strip()
        )
    return refused


def _gone_levels(errors: list[Any], keys: list[LevelKey]) -> list[LevelKey]:
    """The levels a 400 refused for their ``…catalog_object_id`` (``NOT_FOUND``, an invalid object): Square no
    longer has the variation — deleted, perhaps created again under a new id."""
    gone: list[LevelKey] = []
    for e in errors:
        if not isinstance(e, dict):
            continue
        match = CHANGE_FIELD_RE.match(str(e.get("field", "")))
        if match is None or not 0 <= int(match.group(1)) < len(keys):
            continue
        if str(e.get("field", "")).endswith("catalog_object_id"):  # not an unknown location: that is configuration
            gone.append(keys[int(match.group(1))])
    return gone


def _change_of(change: Any, channel: str) -> _Change | None:
    """One change of Square's record (``InventoryChange``); None when it does not touch IN_STOCK (a count of another
    state, an adjustment between two others). ChannelUnavailable when it cannot be read: an odd record tells
    nothing, so the levels it was read for are left kept."""
    kind = change.get("type") if isinstance(change, dict) else None
    body = change.get("physical_count" if kind == "PHYSICAL_COUNT" else "adjustment") if kind in CHANGE_TYPES else None
    if not isinstance(body, dict):
        raise ChannelUnavailable(f"Square answered channel {channel} an inventory change that is not one it describes")
    try:
        quantity = Decimal(str(body.get("quantity")))
        occurred_ms, created_ms = _ms_of(body.get("occurred_at")), _ms_of(body.get("created_at"))
        if not quantity.is_finite():
            raise InvalidOperation
    except (InvalidOperation, ValueError, TypeError):
        raise ChannelUnavailable(
            f"Square answered channel {channel} an inventory change whose quantity or times cannot be read"
        ) from None
    if kind == "PHYSICAL_COUNT":
        if body.get("state", "IN_STOCK") != "IN_STOCK":
            return None
        in_stock = quantity
    else:
        before, after = body.get("from_state"), body.get("to_state")
        in_stock = quantity if after == "IN_STOCK" else -quantity if before == "IN_STOCK" else Decimal(0)
        if before == after or not in_stock:
            return None
    key = LevelKey(str(body.get("catalog_object_id")), str(body.get("location_id")))
    sale = kind == "ADJUSTMENT" and body.get("from_state") == "IN_STOCK" and body.get("to_state") == "SOLD"
    order = body.get("transaction_id") if sale else None
    change_id = body.get("id") or ""
    if sale and (problem := SALE_ID.problem(change_id, allow_empty=True)) is not None:
        raise ChannelUnavailable(
            f"Square answered channel {channel} a sale whose id {problem} (a {SALE_ID.what} is {SALE_ID.rule()}), "
            "which the hub could not list nor name in a URL"
        )
    return _Change(
        str(kind), key, in_stock, occurred_ms, created_ms, str(body.get("reference_id") or ""), sale,
        order if isinstance(order, str) else "", str(change_id),
    )  # fmt: skip


def _moved_after(
    record: Sequence[_Change], pushed: int, reference: str, quantity: Decimal, calculated_ms: int
) -> Moved | None:
    """Whether Square's count at a level (``quantity``, calculated at ``calculated_ms``) is the pushed count moved by
    adjustments that occurred after it, from Square's record of the level's changes: Square keeps the physical
    count with the latest ``occurred_at`` and applies the adjustments that occurred after it. None — kept, or
    the record cannot say — when the push's count is not in the record, another count occurred at or after it,
    an adjustment occurred at its very instant, or the adjustments after it do not bring the pushed quantity to
    Square's exactly (a transfer, a change not read). Changes received after ``calculated_ms`` are not behind
    that count and are left out."""
    behind = [c for c in record if calculated_ms <= 0 or c.created_ms <= calculated_ms]
    ours = [c for c in behind if c.type == "PHYSICAL_COUNT" and c.reference_id == reference]
    if len(ours) != 1:
        return None
    at = ours[0].occurred_ms
    if any(c.type == "PHYSICAL_COUNT" and c is not ours[0] and c.occurred_ms >= at for c in behind):
        return None  # a count of its own stands over the push: kept
    if any(c.type == "ADJUSTMENT" and c.occurred_ms == at for c in behind):
        return None  # at the count's instant: whether Square applied it on top is not said
    after = [c for c in behind if c.type == "ADJUSTMENT" and c.occurred_ms > at]
    total = pushed + sum((c.in_stock for c in after), Decimal(0))
    if not after or total != quantity or total != int(total):
        return None
    return Moved(pushed, int(total), len(after))


def _sold_after(record: Sequence[_Change], quantity: Decimal, calculated_ms: int) -> Moved | None:
    """Whether Square's count at a level (``quantity``, calculated at ``calculated_ms``) is the hub's last count there
    less sales rung up at Square after it, from Square's record of the level's changes: the physical count with the
    latest ``occurred_at`` is one the hub pushed (its ``reference_id``; several at that instant — two channels, or a
    push sent again — all the hub's, of one quantity), no adjustment occurred at its very instant, and the adjustments after it are sales alone (``IN_STOCK`` to
    ``SOLD``) bringing its quantity to Square's exactly. None — a drift, or the record cannot say — otherwise: a
    count kept at Square, a restock, waste or a transfer, a change not read. Changes received after
    ``calculated_ms`` are not behind that count and are left out."""
    behind = [c for c in record if calculated_ms <= 0 or c.created_ms <= calculated_ms]
    counts = [c for c in behind if c.type == "PHYSICAL_COUNT"]
    if not counts:
        return None
    at = max(c.occurred_ms for c in counts)
    standing = [c for c in counts if c.occurred_ms == at]
    if not all(c.reference_id.startswith(REFERENCE_PREFIX) for c in standing):
        return None  # the count standing is Square's own (a register, the dashboard, another app): a drift
    last = standing[0]
    if any(c.in_stock != last.in_stock for c in standing):
        return None  # the hub's counts at one instant, of two quantities: which one Square keeps is not said
    if any(c.type == "ADJUSTMENT" and c.occurred_ms == at for c in behind):
        return None  # at the count's instant: whether Square applied it on top is not said
    after = [c for c in behind if c.type == "ADJUSTMENT" and c.occurred_ms > at]
    if not after or not all(c.sale for c in after):
        return None
    total = last.in_stock + sum((c.in_stock for c in after), Decimal(0))
    if total != quantity or total != int(total) or last.in_stock != int(last.in_stock):
        return None
    return Moved(int(last.in_stock), int(total), len(after))
