"""Shopify connector: the GraphQL Admin API, version 2026-01 (``ChannelSpec.api_version``).

Levels are set with ``inventorySetQuantities`` (name ``available``, a reason, a
``referenceDocumentUri`` naming the hub and channel, and one quantity per
inventory item and location) with:

* ``changeFromQuantity`` — compare-and-set: the quantity the connector last
  confirmed (read first if unknown). Shopify refuses the whole call with
  ``CHANGE_FROM_QUANTITY_STALE`` when the level moved (a sale at Shopify, an
  edit in the admin); the connector re-reads those levels and sets again, less
  the units of Shopify's orders there the hub has not booked yet (``orders``,
  as ``sold_since`` reads them; ``Target.sales_from_ms``), and goes on taking
  them off each push of such a level until the orders are booked;
* ``@idempotent(key:)`` — a UUID derived from the turn and the variables, so a
  retry after a timeout or a dropped connection carries the same key and
  Shopify applies it at most once (optional in 2026-01, required from
  2026-04);
* cost-based throttling: every answer carries ``extensions.cost`` with
  ``requestedQueryCost``, ``actualQueryCost`` and ``throttleStatus``
  (``maximumAvailable``, ``currentlyAvailable``, ``restoreRate`` — 100 points/s
  on standard plans, 1,000 on Plus). The connector keeps a model of that
  leaky bucket and waits before a call until the bucket holds its cost, so
  it is seldom answered ``THROTTLED``; when it is, it waits for exactly the
  missing points and sends the same request again (an answer without a usable
  ``throttleStatus``: the call's cost at the last restore rate known, at least
  ``THROTTLED_BLIND_WAIT_S``).

A user error naming one level (``field`` ``["input", "quantities", "<i>", …]``)
with a code that re-reading cannot cure — ``ITEM_NOT_STOCKED_AT_LOCATION``,
``NON_MUTABLE_INVENTORY_ITEM``, ``INVALID_INVENTORY_ITEM`` … — is that level
refused for good (``LevelsRefused``): Shopify applied nothing, and the pusher
sends the batch again without it; one refused for an inventory item Shopify no
longer has (``GONE_CODES``) is ``gone`` too, and the pusher reads the listing
at once. ``read_levels`` reads the ``available``
quantities back (``nodes`` of inventory items, ``inventoryLevel``). ``listing``
walks the ``productVariants`` pages, bounded by the shop's exact
``productVariantsCount`` asked with the first page (``PageWalk.expect``).
``sold_since`` lists Shopify's orders made since the hub's last push of the
levels a reconciliation found diverging (``orders``, ``ORDERS_SINCE``) and
counts the units of those the hub has not booked at the location Shopify took
them from: such a level is Shopify's right count until their webhooks arrive.
An order without fulfilment orders yet is counted by its line items, read by a
second query for such orders only (``ORDER_LINES``): asked with every order, they
would cost more than the 1,000 points Shopify allows one query.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
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
from protocol import wall_ms_now
from protocol.retry import peer_wait_s

log = logging.getLogger(__name__)

MUTATION_COST = 10  # what Shopify charges a mutation, before the first answer says so
THROTTLED_RETRIES_MAX = 8  # THROTTLED answers in a row before a turn gives up (and backs off)
# The least wait after a THROTTLED answer that does not say how the bucket stands (no usable throttleStatus):
# Shopify's THROTTLED means wait; without the bucket's figures the connector waits for the call's cost at the
# last restore rate it heard of (RESTORE_RATE_DEFAULT before any), and never less than this.
THROTTLED_BLIND_WAIT_S = 1.0
RESTORE_RATE_DEFAULT = 100.0  # points per second: Shopify's standard plans
CAS_RETRIES_MAX = 5  # compare-and-set misses in a row before a turn gives up
CONCURRENT_RETRY_S = 0.5
# The longest one wait for the bucket: a real one refills in seconds (2,000 points at 100/s is 20 s), so an
# answer asking for longer (a bucket reported near-empty with a tiny restore rate) is not waited out for hours.
THROTTLE_WAIT_MAX_S = 60.0
NODES_MAX = 250
LISTING_PAGE = 250
LISTING_PAGES_MAX = 10_000
ANSWER_MAX_BYTES = 16 * 1024 * 1024

SET_QUANTITIES = """
mutation setLevels($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup {
      createdAt reason referenceDocumentUri changes { name delta quantityAfterChange item { id sku } location { id } }
    }
    userErrors { code field message }
  }
}
""".strip()

READ_LEVELS = """
query readLevels($ids: [ID!]!, $locationId: ID!) {
  nodes(ids: $ids) {
    ... on InventoryItem { id inventoryLevel(locationId: $locationId) { quantities(names: ["available"]) { name quantity } } }
  }
}
""".strip()

LIST_VARIANTS = """
query listVariants($first: Int!, $after: String) {
  productVariants(first: $first, after: $after) {
    nodes { id sku barcode title inventoryItem { id } }
    pageInfo { hasNextPage endCursor }
  }
}
""".strip()
# The first page of a listing asks how many variants the shop has too, in the same request: productVariantsCount
# (2026-01: a Count object, ``count`` and ``precision`` EXACT | AT_LEAST; ``limit`` defaults to 10,000, null is
# none) bounds the walk (PageWalk.expect). An object costs 1 point beside the page's connection.
LIST_VARIANTS_COUNTED = """
query listVariantsCounted($first: Int!, $after: String) {
  productVariantsCount(limit: null) { count precision }
  productVariants(first: $first, after: $after) {
    nodes { id sku barcode title inventoryItem { id } }
    pageInfo { hasNextPage endCursor }
  }
}
""".strip()
LISTING_PAGE_BASE_COST = 2  # a connection: 2 points, and 2 per variant (the variant and its inventory item)
VARIANT_COUNT_COST = 1

# Shopify's orders made since the hub's last push of the levels a reconciliation found diverging (``sold_since``),
# oldest first (``sortKey: CREATED_AT``; ``created_at:>=`` is Shopify's search syntax, to the second). Each order's
# units are counted where Shopify took them from ``available``: its fulfilment orders' assigned location (a POS
# order's is its retail location; ``retailLocation`` answers for one that names none). ``orders`` lists every order,
# open, closed and cancelled (the GraphQL list has no default status filter), of the last 60 days (``read_orders``).
# A page of 8 orders, 3 fulfilment orders each of 25 lines, costs 2 + 8 × (4 + 3 × 30) = 754 points requested.
ORDERS_SINCE = """
query ordersSince($first: Int!, $after: String, $query: String!) {
  orders(first: $first, after: $after, query: $query, sortKey: CREATED_AT) {
    nodes {
      id createdAt cancelledAt retailLocation { id }
      fulfillmentOrders(first: 3) {
        nodes {
          assignedLocation { location { id } }
          lineItems(first: 25) { nodes { inventoryItemId totalQuantity } pageInfo { hasNextPage } }
        }
        pageInfo { hasNextPage }
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}
""".strip()
# An order Shopify has not routed yet (no fulfilment orders: Shopify makes them just after the order) took its units
# all the same; its line items are read by a second, narrower query, only for such orders: asked with each order of
# ORDERS_SINCE they would take a page to 754 + 8 × 78 = 1,378 points, past Shopify's 1,000 a query. ``currentQuantity``
# is the line's units still in the order (what the order webhook books); a custom item has no variant. At most 8
# orders of 25 lines a request: 1 + 8 × (1 + 2 + 25 × 3) = 625 points requested. Such an order's units are counted
# where the hub books it (``hub.channels.orders``): a POS order's retail location, else the channel's only location,
# else its ``order_location``'s; nowhere when it has none of them.
ORDER_LINES = """
query orderLines($ids: [ID!]!) {
  nodes(ids: $ids) {
    ... on Order {
      id
      lineItems(first: 25) { nodes { currentQuantity variant { inventoryItem { id } } } pageInfo { hasNextPage } }
    }
  }
}
""".strip()
ORDERS_PAGE = 8
SNAPSHOT_READS_MAX = 3  # reads of the orders the hub booked, until the hub's levels read around one match
ORDERS_PAGES_MAX = 3  # more orders than 3 pages since the oldest diverging level's push: read as failed
ORDERS_WAIT_MAX_S = 2.0  # the longest a reconciliation waits for Shopify's bucket to read them
# orders are read back at most this far: an order webhook later than that is not waited for
ORDERS_SINCE_MAX_MS = 24 * 3600 * 1000
SHOPIFY_ORDER_GID = "gid://shopify/Order/"


class _CostTooHigh(ChannelRejected):
    """A query asked for more points than the shop's bucket can ever hold (MAX_COST_EXCEEDED)."""

    def __init__(self, message: str, max_cost: float | None) -> None:
        super().__init__(message)
        self.max_cost = max_cost


STALE_CODES = frozenset({"CHANGE_FROM_QUANTITY_STALE", "COMPARE_QUANTITY_STALE"})
WHOLE_REQUEST_CODES = frozenset({"INVALID_NAME", "INVALID_REASON", "INVALID_REFERENCE_DOCUMENT"})
# a level's inventory item Shopify no longer has (its variant deleted, perhaps created again under a new id)
GONE_CODES = frozenset({"INVALID_INVENTORY_ITEM", "NOT_FOUND"})


@dataclass(frozen=True, slots=True)
class ThrottleStatus:
    """Shopify's leaky bucket as last reported, and when (monotonic seconds)."""

    maximum: float
    available: float
    restore_rate: float
    at_s: float

    def available_at(self, now_s: float) -> float:
        return min(self.maximum, self.available + max(0.0, now_s - self.at_s) * self.restore_rate)

    def wait_s(self, cost: float, now_s: float) -> float:
        """How long until the bucket holds ``cost`` points (at most ``THROTTLE_WAIT_MAX_S``)."""
        missing = min(cost, self.maximum) - self.available_at(now_s)
        wait_s = max(0.0, missing / self.restore_rate) if self.restore_rate > 0 else 0.0
        return min(wait_s, THROTTLE_WAIT_MAX_S)


class ShopifyConnector:
    kind = "shopify"
    readable = True

    def __init__(
        self,
        spec: ChannelSpec,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.spec = spec
        self._session = session
        self._clock = clock
        self._sleep = sleep
        self.throttle: ThrottleStatus | None = None
        self._throttle_at_ms: int | None = None
        self._last = CallRecord()
        self._costs: dict[str, float] = {"setLevels": MUTATION_COST}
        # The orders of this channel the hub has booked or refused, of those asked (set by the pusher of a channel
        # taking Shopify's order webhooks): ``sold_since`` counts only the others. None: orders are not read.
        self.settled: Callable[[Collection[str]], Awaitable[set[str]]] | None = None
        # The hub's level now at some levels, and what it was read from (equal: the hub did not move in between),
        # set with ``settled``: a push reads the orders the hub booked between two reads of the levels it sets, so
        # an order booked after the pusher read them is not left out of a level that does not hold it (``_settled``)
        self.hub_levels: Callable[[Collection[LevelKey]], Awaitable[tuple[dict[LevelKey, int], object]]] | None = None
        self._orders_failing = False  # the last read of Shopify's orders failed (said once)
        self.calls = 0  # requests sent (for the status and the benchmarks)
        self.throttled = 0  # THROTTLED answers received
        self.cas_misses = 0

    async def close(self) -> None:
        return None

    def status(self) -> ConnectorStatus:
        t = self.throttle
        throttle = None if t is None else {
            "currently_available": t.available, "maximum_available": t.maximum, "restore_rate": t.restore_rate,
            "at_ms": self._throttle_at_ms,
        }  # fmt: skip
        return ConnectorStatus(self._last.ok, self._last.at_ms, throttle)

    async def query(
        self, operation: str, document: str, variables: Mapping[str, Any], *, wait_max_s: float | None = None
    ) -> dict[str, Any]:
        """``data`` of one GraphQL query, paced by this connector's throttle model (hub.channels.order_routes);
        ``wait_max_s``: wait at most this long in all for the bucket, then raise ChannelUnavailable (a webhook
        being answered cannot wait for a near-empty bucket to refill)."""
        return await self._graphql(operation, document, variables, wait_max_s=wait_max_s)

    # --- pushing -----------------------------------------------------------------

    async def push(self, batch: Mapping[LevelKey, Target], turn_key: str) -> dict[LevelKey, int]:
        keys = sorted(batch)
        previous = {k: batch[k].previous for k in keys}
        unknown = [k for k in keys if previous[k] is None]
        if unknown:
            previous.update(await self.read_levels(unknown))
        # units of sales at Shopify whose orders the hub has not booked, per level read (None: the read failed)
        less: dict[LevelKey, int | None] = {}
        hub: dict[LevelKey, int] = {}  # the hub's levels read again with the orders it booked (``_settled``)
        owed = [k for k in keys if batch[k].owed]
        if owed:
            less.update(await self._less_unbooked(batch, owed, hub))
        for _ in range(CAS_RETRIES_MAX):
            quantity = {k: max(0, hub.get(k, batch[k].quantity) - (less.get(k) or 0)) for k in keys}
            quantities = [
                {
                    "inventoryItemId": k.item_id,
                    "locationId": k.location_id,
                    "quantity": quantity[k],
                    "changeFromQuantity": previous[k],
                }
                for k in keys
            ]
            variables: dict[str, Any] = {
                "input": {
                    "name": "available",
                    "reason": self.spec.reason,
                    "referenceDocumentUri": f"shelfsync://hub/channel/{self.spec.name}",
                    "quantities": quantities,
                }
            }
            variables["key"] = idempotency_key(turn_key, variables["input"])
            data = await self._graphql("setLevels", SET_QUANTITIES, variables)
            payload = data.get("inventorySetQuantities")
            errors = payload.get("userErrors") if isinstance(payload, dict) else None
            if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
                # userErrors is a non-null list in Shopify's schema: an answer without it confirms nothing
                raise ChannelUnavailable(
                    f"Shopify answered channel {self.spec.name}'s inventorySetQuantities without its userErrors list; "
                    "the levels are not taken as set"
                )
            if not errors:
                self._said_less(batch, quantity, less, hub)
                return Confirmed(quantity, skus=_answered_skus(payload, keys), less=less)
            codes = {str(e.get("code")) for e in errors}
            if codes <= STALE_CODES:
                stale = _stale_keys(errors, keys)
                self.cas_misses += 1
                log.info(
                    "channel %s: %d level(s) changed at Shopify since the last push; reading them again",
                    self.spec.name,
                    len(stale),
                )
                previous.update(await self.read_levels(stale))
                # a sale at Shopify moved them: one whose order the hub has not booked stays sold (set less it)
                less.update(await self._less_unbooked(batch, stale, hub))
                continue
            if codes == {"IDEMPOTENCY_CONCURRENT_REQUEST"}:
                beat(CONCURRENT_RETRY_S)
                await self._sleep(CONCURRENT_RETRY_S)
                continue
            refused = _refused_levels(errors, keys)
            if refused:
                raise LevelsRefused(
                    f"Shopify refused {len(refused)} of {len(keys)} level(s) of channel {self.spec.name}",
                    refused,
                    _gone_levels(errors, keys),
                )
            first = errors[0]
            raise ChannelRejected(
                f"Shopify refused to set {len(keys)} level(s) of channel {self.spec.name}: "
                f"{first.get('code')}: {short(str(first.get('message', '')))}"
            )
        raise ChannelUnavailable(
            f"the levels of channel {self.spec.name} kept changing at Shopify during {CAS_RETRIES_MAX} attempts"
        )

    async def read_levels(self, keys: Sequence[LevelKey]) -> dict[LevelKey, int | None]:
        """The ``available`` quantity at Shopify of each level (None: the item is not stocked there)."""
        found: dict[LevelKey, int | None] = {}
        by_location: dict[str, list[LevelKey]] = {}
        for k in keys:
            by_location.setdefault(k.location_id, []).append(k)
        size = NODES_MAX
        for location_id, group in by_location.items():
            start = 0
            while start < len(group):
                if self.throttle is not None:  # a read costs 1 + 2 points per item: never more than the bucket holds
                    size = max(1, min(size, int((self.throttle.maximum - 1) // 2)))
                chunk = group[start : start + size]
                try:
                    data = await self._graphql(
                        "readLevels", READ_LEVELS, {"ids": [k.item_id for k in chunk], "locationId": location_id}
                    )
                except _CostTooHigh as err:
                    if err.max_cost is None or size == 1:
                        raise
                    size = max(1, min(size - 1, int((err.max_cost - 1) // 2)))
                    continue
                read = array(data.get("nodes"), f"the inventory items Shopify answered channel {self.spec.name}")
                nodes = {n.get("id"): n for n in read if isinstance(n, dict)}
                for k in chunk:
                    found[k] = _available(nodes.get(k.item_id))
                start += len(chunk)
        return found

    async def _less_unbooked(
        self, batch: Mapping[LevelKey, Target], keys: Sequence[LevelKey], hub: dict[LevelKey, int]
    ) -> dict[LevelKey, int | None]:
        """Of ``keys``, those with a ``sales_from_ms``: the units of Shopify's orders made since then at each that the
        hub has neither booked nor refused (0: none; None for each when the orders cannot be read, said once); the
        hub's levels there read with them go into ``hub``."""
        since = {k: t for k in keys if (t := batch[k].sales_from_ms) is not None}
        if self.settled is None or not since:
            return {}
        units = await self._unbooked(
            since, "a push was answered stale", "a level set again goes out at the hub's level", hub
        )
        if units is None:
            return dict.fromkeys(since)
        return {k: units.get(k, (0, 0))[0] for k in since}

    def _said_less(
        self,
        batch: Mapping[LevelKey, Target],
        quantity: Mapping[LevelKey, int],
        less: Mapping[LevelKey, int | None],
        hub: Mapping[LevelKey, int],
    ) -> None:
        taken = {k: n for k, n in less.items() if n and k in quantity}
        if taken:
            k = min(taken)
            log.info(
                "channel %s: Shopify sold %d unit(s) at %d level(s) whose orders have not reached the hub (first "
                "inventory item %s at %s: the hub's level %d, %d sold, %d set); the levels are set less them, so "
                "those sales stay sold until their orders come",
                self.spec.name, sum(taken.values()), len(taken), k.item_id, k.location_id, hub.get(k, batch[k].quantity),
                taken[k], quantity[k],
            )  # fmt: skip

    async def _unbooked(
        self, since: Mapping[LevelKey, int], when: str, until: str, hub: dict[LevelKey, int] | None = None
    ) -> dict[LevelKey, tuple[int, int]] | None:
        """The units and sales of Shopify's orders made at each level since ``since`` (wall ms, taken to the second)
        that the hub has neither booked nor refused (``settled``); None when they cannot be read (said once, with
        ``when`` it was read and what is done ``until`` it can be). With ``hub`` (a push), the hub's levels read
        with the orders it booked go into it (``_settled``)."""
        settled = self.settled
        if settled is None or not since:
            return {}
        since_ms = {k: ms // 1000 * 1000 for k, ms in since.items()}  # Shopify's createdAt is to the second
        try:
            orders = await self._orders_since(max(min(since_ms.values()), wall_ms_now() - ORDERS_SINCE_MAX_MS))
        except ChannelError as err:
            if not self._orders_failing:
                log.warning(
                    "channel %s: Shopify's orders could not be read to tell a sale at Shopify from a drift when %s "
                    "(%s); until they can, %s, a sale whose order has not reached the hub included",
                    self.spec.name, when, err, until,
                )  # fmt: skip
            self._orders_failing = True
            return None
        if self._orders_failing:
            log.info(
                "channel %s: Shopify's orders can be read again, so a sale at Shopify stays sold until its order "
                "reaches the hub",
                self.spec.name,
            )
        self._orders_failing = False
        done = await self._settled(settled, {o.order_id for o in orders}, since, hub) if orders else set()
        found: dict[LevelKey, tuple[int, int]] = {}
        for o in orders:
            if o.order_id in done:
                continue
            for (item_id, location_id), n in o.units.items():
                k = LevelKey(item_id, location_id)
                if k in since_ms and o.created_ms >= since_ms[k]:
                    units, sales = found.get(k, (0, 0))
                    found[k] = (units + n, sales + 1)
        return found

    async def _settled(
        self,
        settled: Callable[[Collection[str]], Awaitable[set[str]]],
        order_ids: Collection[str],
        keys: Collection[LevelKey],
        hub: dict[LevelKey, int] | None,
    ) -> set[str]:
        """Of ``order_ids``, those the hub has booked or refused, and (with ``hub``) its levels at ``keys`` as they
        stand with exactly those booked: the orders read between two reads of the levels that saw the same count
        rows (at most ``SNAPSHOT_READS_MAX`` tries). A push takes the units of the orders not booked off the hub's
        level; a level read before an order was booked and the booked set read after it would leave the order's
        sale out of both (set one sale too high until the next turn)."""
        read = self.hub_levels
        if read is None or hub is None or not keys:
            return await settled(order_ids)
        _, seen = await read(keys)
        for _ in range(SNAPSHOT_READS_MAX):
            done = await settled(order_ids)
            again, seen_again = await read(keys)
            if seen_again == seen:
                break
            seen = seen_again
        else:
            log.info(
                "channel %s: the hub's counts behind %d level(s) moved each time the orders it booked were read "
                "(%d times); the levels read last go out, and the next push sets them again",
                self.spec.name, len(keys), SNAPSHOT_READS_MAX,
            )  # fmt: skip
        hub.update(again)
        return done

    async def sold_since(
        self, shown: Mapping[LevelKey, int], counted_ms: Mapping[LevelKey, int]
    ) -> dict[LevelKey, Moved]:
        """Of the levels read back at ``shown``, those Shopify took units off for orders made since the hub's last
        push there (``counted_ms``: the stamp it went out with) that the hub has not booked yet: a reconciliation
        leaves such a level standing when the hub's level less those units is Shopify's (``split_sold``).

        The GraphQL Admin API 2026-01 answers no record of an item's inventory changes (``inventoryHistory`` is in
        its ``unstable`` version alone), so Shopify's orders are listed instead (``ORDERS_SINCE``, at most
        ``ORDERS_PAGES_MAX`` pages), and of those the hub has neither booked nor refused (``settled``, set by the
        pusher of a channel taking order webhooks) each order's units are counted at the location Shopify took
        them from, for the levels pushed at or before the second it was created. Without order webhooks nothing
        is read: no order would ever come back. A read that fails leaves every level to be pushed over, as before
        the read existed, said once until one succeeds."""
        asked = {k: q for k, q in shown.items() if k in counted_ms}
        found = await self._unbooked(
            {k: counted_ms[k] for k in asked}, "reconciling", "every level that diverges is pushed over"
        )
        return {k: Moved(asked[k] + n, asked[k], sales) for k, (n, sales) in (found or {}).items() if n > 0}

    async def _orders_since(self, since_ms: int) -> list[_Order]:
        """Shopify's orders created at or after ``since_ms`` (not cancelled), each with its units per (inventory
        item, location); ChannelError when they cannot all be read in ``ORDERS_PAGES_MAX`` pages."""
        since = datetime.fromtimestamp(since_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        found: list[_Order] = []
        after: str | None = None
        seen: set[str] = set()
        pages = f"Shopify's order pages of channel {self.spec.name}"
        for _ in range(ORDERS_PAGES_MAX):
            data = await self._graphql(
                "ordersSince", ORDERS_SINCE,
                {"first": ORDERS_PAGE, "after": after, "query": f"created_at:>='{since}'"},
                wait_max_s=ORDERS_WAIT_MAX_S,
            )  # fmt: skip
            page = data.get("orders")
            nodes = page.get("nodes") if isinstance(page, dict) else None
            if not isinstance(page, dict) or not isinstance(nodes, list):
                raise ChannelUnavailable(f"Shopify answered channel {self.spec.name} a page of orders without nodes")
            for node in nodes:
                order = _order(node)
                if order is None:
                    raise ChannelUnavailable(
                        f"Shopify answered channel {self.spec.name} an order the hub cannot read, or with more "
                        f"fulfilment orders or lines than it asked for: {short(json.dumps(node, default=str), 120)}"
                    )
                if not order.cancelled:
                    found.append(order)
            info = page.get("pageInfo")
            if not isinstance(info, dict) or not info.get("hasNextPage"):
                return await self._lines_of_unrouted(found)
            after = _next_cursor(info.get("endCursor"), seen, pages)
        raise ChannelUnavailable(
            f"Shopify has more than {ORDERS_PAGES_MAX * ORDERS_PAGE} orders since {since} for channel {self.spec.name}"
        )

    async def _lines_of_unrouted(self, orders: list[_Order]) -> list[_Order]:
        """``orders`` with the units of those Shopify has not routed yet read from their line items (``ORDER_LINES``,
        at most ``ORDERS_PAGE`` orders a request), each counted where the hub books such an order; ChannelError
        when they cannot be read."""
        unrouted = {o.gid: o for o in orders if not o.routed}
        if not unrouted:
            return orders
        read: dict[str, _Order] = {}
        ids = list(unrouted)
        for start in range(0, len(ids), ORDERS_PAGE):
            chunk = ids[start : start + ORDERS_PAGE]
            data = await self._graphql("orderLines", ORDER_LINES, {"ids": chunk}, wait_max_s=ORDERS_WAIT_MAX_S)
            nodes = array(data.get("nodes"), f"the orders' lines Shopify answered channel {self.spec.name}")
            answered = {n.get("id"): n for n in nodes if isinstance(n, dict)}
            for gid in chunk:
                units = _line_units(answered.get(gid))
                if units is None:
                    raise ChannelUnavailable(
                        f"Shopify answered channel {self.spec.name} the lines of order {gid} in a shape the hub cannot "
                        f"read, or more than it asked for: {short(json.dumps(answered.get(gid), default=str), 120)}"
                    )
                order = unrouted[gid]
                location_id = order.retail_id or self._unrouted_location()
                at = {} if location_id is None else {(item_id, location_id): n for item_id, n in units.items()}
                read[gid] = replace(order, units=at)
        return [read.get(o.gid, o) for o in orders]

    def _unrouted_location(self) -> str | None:
        """The Shopify location an online order without fulfilment orders is counted at: where the hub books it
        (``hub.channels.orders``) — the channel's only location, else its ``order_location``'s; None without either."""
        locations = self.spec.channel_locations
        if len(locations) == 1:
            return locations[0]
        return self.spec.pool.get(self.spec.order_location) if self.spec.order_location else None

    async def sales_since(self, counted_ms: Mapping[LevelKey, int]) -> dict[LevelKey, list[Sale]] | None:
        """Nothing: Shopify keeps no record of an item's changes in 2026-01; its orders are read only when a push is
        answered stale or a level's last count was set less some (``push``), and by a reconciliation
        (``sold_since``)."""
        return {}

    # --- listing -------------------------------------------------------------------

    async def listing(self) -> list[ListingEntry]:
        entries: list[ListingEntry] = []
        after: str | None = None
        seen: set[str] = set()
        first = LISTING_PAGE
        walk = PageWalk(f"Shopify's variant pages of channel {self.spec.name}")
        counting = True  # the first page asks for the shop's count of variants too
        for _ in range(LISTING_PAGES_MAX):
            base = LISTING_PAGE_BASE_COST + (VARIANT_COUNT_COST if counting else 0)  # + 2 points per variant
            if self.throttle is not None:  # a page never costs more than the bucket holds
                first = max(1, min(first, int((self.throttle.maximum - base) // 2)))
            operation, query = (
                ("listVariantsCounted", LIST_VARIANTS_COUNTED) if counting else ("listVariants", LIST_VARIANTS)
            )
            try:
                data = await self._graphql(operation, query, {"first": first, "after": after})
            except _CostTooHigh as err:
                if err.max_cost is None or first == 1:
                    raise
                first = max(1, min(first - 1, int((err.max_cost - base) // 2)))
                continue
            page = data.get("productVariants")
            nodes = page.get("nodes") if isinstance(page, dict) else None
            if not isinstance(page, dict) or not isinstance(nodes, list):
                raise ChannelUnavailable(f"Shopify answered channel {self.spec.name} a page of variants without nodes")
            if counting:
                counting = False
                self._expect_variants(walk, data)
            for node in nodes:
                item = node.get("inventoryItem") if isinstance(node, dict) else None
                if not isinstance(item, dict) or not item.get("id"):
                    continue
                entries.append(
                    ListingEntry(
                        item_id=str(item["id"]),
                        sku=str(node.get("sku") or ""),
                        variant_id=str(node.get("id") or ""),
                        barcode=str(node.get("barcode") or ""),
                        title=str(node.get("title") or ""),
                    )
                )
            info = page.get("pageInfo")
            if not isinstance(info, dict) or not info.get("hasNextPage"):
                return entries
            walk.page(page_ids(nodes, "id"), size=first)
            after = _next_cursor(info.get("endCursor"), seen, f"Shopify's variant pages of channel {self.spec.name}")
        raise ChannelRejected(f"channel {self.spec.name} lists more than {LISTING_PAGES_MAX * LISTING_PAGE} variants")

    def _expect_variants(self, walk: PageWalk, data: Mapping[str, Any]) -> None:
        """Bound the listing by the shop's count of variants when Shopify gave an exact one; without one (an
        AT_LEAST count, no count, an odd shape) the walk is bounded by its stale rule and page cap alone."""
        count = exact_count(data.get("productVariantsCount"))
        if count is None:
            log.info(
                "Shopify answered channel %s no exact count of variants (%s); its variant pages are followed "
                "without that bound",
                self.spec.name,
                short(json.dumps(data.get("productVariantsCount"), default=str), 80),
            )
            return
        walk.expect(count, "variant(s) Shopify counts")

    # --- transport -----------------------------------------------------------------

    async def _graphql(
        self, operation: str, query: str, variables: Mapping[str, Any], *, wait_max_s: float | None = None
    ) -> dict[str, Any]:
        """``data`` of one GraphQL call, paced by the throttle model and repeated after THROTTLED."""
        waited_s = blind_s = 0.0
        for _ in range(THROTTLED_RETRIES_MAX):
            cost = self._costs.get(operation, 0.0)
            wait_s = max(blind_s, self.throttle.wait_s(cost, self._clock()) if self.throttle is not None else 0.0)
            if wait_max_s is not None and waited_s + wait_s > wait_max_s:
                raise ChannelUnavailable(
                    f"Shopify is throttling channel {self.spec.name}: its bucket holds the {operation} call's "
                    f"{cost:g} points in {wait_s:.1f} s",
                    wait_s,
                )
            if wait_s > 0:
                waited_s += wait_s
                beat(wait_s)  # the pusher waits for Shopify's bucket: alive, not stuck (hub.heartbeat.Heartbeat)
                await self._sleep(wait_s)
            body = await self._post({"query": query, "variables": dict(variables), "operationName": operation})
            learned = self._learn(operation, body)
            errors = body.get("errors")
            if isinstance(errors, list) and errors:
                codes = {str(_extensions(e).get("code")) for e in errors}
                if "THROTTLED" in codes:
                    self.throttled += 1
                    # the model now knows the bucket and the next turn of this loop waits for it; an answer that
                    # did not say how the bucket stands is waited out blind, never sent again at once
                    blind_s = 0.0 if learned else self._blind_wait_s(self._costs.get(operation, cost))
                    continue
                first = errors[0] if isinstance(errors[0], dict) else {}
                if "INTERNAL_SERVER_ERROR" in codes:  # Shopify's own failure, answered 200: try again later
                    raise ChannelUnavailable(
                        f"Shopify failed a request of channel {self.spec.name} (INTERNAL_SERVER_ERROR: "
                        f"{short(str(first.get('message', '')))})"
                    )
                if "MAX_COST_EXCEEDED" in codes:
                    max_cost = _extensions(first).get("maxCost")
                    raise _CostTooHigh(
                        f"a query of channel {self.spec.name} costs more than Shopify allows ({short(str(first.get('message', '')))})",
                        float(max_cost) if isinstance(max_cost, (int, float)) else None,
                    )
                raise ChannelRejected(
                    f"Shopify refused a request of channel {self.spec.name}: {short(str(first.get('message', errors[0])))}"
                )
            data = body.get("data")
            if not isinstance(data, dict):
                raise ChannelUnavailable(f"Shopify answered channel {self.spec.name} without data")
            return data
        raise ChannelUnavailable(
            f"Shopify kept throttling channel {self.spec.name} ({THROTTLED_RETRIES_MAX} THROTTLED answers in a row)"
        )

    def _blind_wait_s(self, cost: float) -> float:
        """How long to wait after a THROTTLED answer without a usable ``throttleStatus``: the call's cost at the
        last restore rate heard of, at least ``THROTTLED_BLIND_WAIT_S``, at most ``THROTTLE_WAIT_MAX_S``. A model
        of the bucket from earlier answers is stale now (it let the call go): it is taken as empty from now."""
        rate = RESTORE_RATE_DEFAULT
        if self.throttle is not None:
            rate = self.throttle.restore_rate
            self.throttle = replace(self.throttle, available=0.0, at_s=self._clock())
        return min(THROTTLE_WAIT_MAX_S, max(THROTTLED_BLIND_WAIT_S, cost / rate))

    def _learn(self, operation: str, body: Mapping[str, Any]) -> bool:
        """Learn the operation's cost and the bucket from an answer; True when it said how the bucket stands."""
        cost = (body.get("extensions") or {}).get("cost") if isinstance(body.get("extensions"), dict) else None
        if not isinstance(cost, dict):
            return False
        requested = cost.get("requestedQueryCost")
        if isinstance(requested, (int, float)) and not isinstance(requested, bool):
            self._costs[operation] = float(requested)
        status = cost.get("throttleStatus")
        if isinstance(status, dict):
            try:
                maximum, available, rate = (
                    float(status[k]) for k in ("maximumAvailable", "currentlyAvailable", "restoreRate")
                )
            except (KeyError, TypeError, ValueError):
                return False
            if not all(math.isfinite(v) for v in (maximum, available, rate)) or maximum <= 0 or rate <= 0:
                return False  # not a bucket (Infinity, NaN, empty, never refilling): keep the last model
            self.throttle = ThrottleStatus(maximum, min(max(available, 0.0), maximum), rate, self._clock())
            self._throttle_at_ms = wall_ms_now()
            return True
        return False

    async def _post(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        spec = self.spec
        headers = {
            "X-Shopify-Access-Token": spec.secret,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "shelfsync-hub",
        }
        self.calls += 1
        status, raw, retry_after = await post(
            self._session,
            spec.url,
            json_body=payload,
            headers=headers,
            timeout_s=spec.timeout_s,
            answer_max_bytes=ANSWER_MAX_BYTES,
            last=self._last,
            timed_out=f"Shopify did not answer channel {spec.name} within {spec.timeout_s:g} s",
            unreachable=f"cannot reach Shopify for channel {spec.name}",
        )
        self._last.answered(status < 500 and status not in (401, 403))
        text = raw[:ANSWER_MAX_BYTES].decode("utf-8", "replace")
        if status in (401, 403):
            raise ChannelRejected(
                f"Shopify refused the access token of channel {spec.name} (HTTP {status}); check the token in "
                f"{spec.secret_source or 'its secret'} and its write_inventory scope"
            )
        if status == 429 or status >= 500:
            raise ChannelUnavailable(
                f"Shopify answered channel {spec.name} with HTTP {status}", peer_wait_s(status, retry_after)
            )
        if status != 200:
            raise ChannelRejected(f"Shopify answered channel {spec.name} with HTTP {status}: {short(text)}")
        if len(raw) > ANSWER_MAX_BYTES:
            raise ChannelUnavailable(f"Shopify's answer to channel {spec.name} is larger than {ANSWER_MAX_BYTES} bytes")
        try:
            body = json.loads(text)
        except ValueError:
            raise ChannelUnavailable(f"Shopify answered channel {spec.name} with something that is not JSON") from None
        if not isinstance(body, dict):
            raise ChannelUnavailable(f"Shopify answered channel {spec.name} with JSON that is not an object")
        return body


@dataclass(frozen=True, slots=True)
class _Order:
    """One of Shopify's orders as ``sold_since`` reads it: its id as the order webhook books it (the REST number),
    when it was created (wall ms, to the second), whether it was cancelled, and its units per (inventory item,
    location)."""

    order_id: str
    created_ms: int
    cancelled: bool
    units: dict[tuple[str, str], int]
    gid: str = ""
    retail_id: str | None = None
    routed: bool = True  # False: no fulfilment orders yet, its units are its line items' (``ORDER_LINES``)


def _order(node: Any) -> _Order | None:
    """An order node of ``ORDERS_SINCE``; None when it is of another shape or its connections were cut short."""
    if not isinstance(node, dict) or not isinstance(node.get("id"), str) or not isinstance(node.get("createdAt"), str):
        return None
    try:
        created_ms = round(datetime.fromisoformat(node["createdAt"]).timestamp() * 1000)
    except ValueError:
        return None
    retail = node.get("retailLocation")
    retail_id = retail.get("id") if isinstance(retail, dict) else None
    fos = node.get("fulfillmentOrders")
    if not isinstance(fos, dict) or not isinstance(fos.get("nodes"), list) or _more(fos):
        return None
    units: dict[tuple[str, str], int] = {}
    for fo in fos["nodes"]:
        assigned = fo.get("assignedLocation") if isinstance(fo, dict) else None
        where = assigned.get("location") if isinstance(assigned, dict) else None
        location_id = where.get("id") if isinstance(where, dict) else None
        location_id = location_id if isinstance(location_id, str) and location_id else retail_id
        lines = fo.get("lineItems") if isinstance(fo, dict) else None
        if not isinstance(lines, dict) or not isinstance(lines.get("nodes"), list) or _more(lines):
            return None
        for line in lines["nodes"]:
            item_id = line.get("inventoryItemId") if isinstance(line, dict) else None
            n = line.get("totalQuantity") if isinstance(line, dict) else None
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                return None
            if not isinstance(item_id, str) or not isinstance(location_id, str) or not n:
                continue  # a line that is no inventory item (a custom item, a gift card): nothing of the hub's
            units[(item_id, location_id)] = units.get((item_id, location_id), 0) + n
    order_id = node["id"].removeprefix(SHOPIFY_ORDER_GID)
    routed = bool(fos["nodes"])
    retail = retail_id if isinstance(retail_id, str) and retail_id else None
    return _Order(order_id, created_ms, node.get("cancelledAt") is not None, units, node["id"], retail, routed)


def _line_units(node: Any) -> dict[str, int] | None:
    """An order node of ``ORDER_LINES``: its units per inventory item; None when it is of another shape or its lines
    were cut short."""
    lines = node.get("lineItems") if isinstance(node, dict) else None
    if not isinstance(lines, dict) or not isinstance(lines.get("nodes"), list) or _more(lines):
        return None
    units: dict[str, int] = {}
    for line in lines["nodes"]:
        n = line.get("currentQuantity") if isinstance(line, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            return None
        variant = line.get("variant")
        item = variant.get("inventoryItem") if isinstance(variant, dict) else None
        item_id = item.get("id") if isinstance(item, dict) else None
        if isinstance(item_id, str) and item_id and n:  # a custom item (no variant): nothing of the hub's
            units[item_id] = units.get(item_id, 0) + n
    return units


def _more(connection: Mapping[str, Any]) -> bool:
    """True when a nested connection says more nodes follow than were asked for (or says nothing)."""
    info = connection.get("pageInfo")
    return not isinstance(info, dict) or info.get("hasNextPage") is not False


def exact_count(value: Any) -> int | None:
    """The ``count`` of a GraphQL ``Count`` object (``{count: Int!, precision: CountPrecision!}``) when its
    ``precision`` is ``EXACT`` and it is a whole number of 0 or more; None otherwise (``AT_LEAST``: a limit was
    reached, the count is only a floor)."""
    if not isinstance(value, dict) or value.get("precision") != "EXACT":
        return None
    count = value.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return None
    return count


def _next_cursor(cursor: Any, seen: set[str], pages: str) -> str:
    """The cursor of the next page; ChannelUnavailable when it is missing or came before (the pages loop)."""
    if not isinstance(cursor, str) or not cursor:
        raise ChannelUnavailable(f"{pages} say more follow but give no cursor to it; reading stopped there")
    if cursor in seen:
        raise ChannelUnavailable(f"{pages} loop (a cursor came back); reading stopped there")
    seen.add(cursor)
    return cursor


def _extensions(error: Any) -> dict[str, Any]:
    """A GraphQL error's ``extensions`` object, empty when the error or its extensions are of another shape."""
    ext = error.get("extensions") if isinstance(error, dict) else None
    return ext if isinstance(ext, dict) else {}


def _available(node: Any) -> int | None:
    if not isinstance(node, dict):
        return None
    level = node.get("inventoryLevel")
    if not isinstance(level, dict):
        return None
    quantities = level.get("quantities")
    for q in quantities if isinstance(quantities, list) else []:
        if isinstance(q, dict) and q.get("name") == "available" and isinstance(q.get("quantity"), int):
            return int(q["quantity"])
    return None


_INDEX_RE = re.compile(r"\d+")


def _field(path: Any) -> list[Any]:
    """A user error's ``field`` path (a list of names and indexes); empty when it is of another shape."""
    return path if isinstance(path, list) else []


def _stale_keys(errors: list[Any], keys: list[LevelKey]) -> list[LevelKey]:
    """The levels named by stale-quantity errors (``field``: ["input", "quantities", "3", ...]); all if unclear."""
    stale: list[LevelKey] = []
    for e in errors:
        path = e.get("field") if isinstance(e, dict) else None
        index = next((int(p) for p in _field(path) if isinstance(p, str) and _INDEX_RE.fullmatch(p)), None)
        if index is None or not 0 <= index < len(keys):
            return list(keys)
        stale.append(keys[index])
    return stale


def _refused_levels(errors: list[Any], keys: list[LevelKey]) -> dict[LevelKey, str]:
    """The levels Shopify refused for good, each with its reason: every user error naming one level with a code
    neither re-reading nor waiting cures. Empty when any error is about the whole request (the request is then
    refused as a whole)."""
    refused: dict[LevelKey, str] = {}
    for e in errors:
        code = str(e.get("code")) if isinstance(e, dict) else ""
        if code in STALE_CODES:
            continue  # the retry without the refused levels re-reads these
        path = e.get("field") if isinstance(e, dict) else None
        index = next((int(p) for p in _field(path) if isinstance(p, str) and _INDEX_RE.fullmatch(p)), None)
        if code in WHOLE_REQUEST_CODES or code.startswith("IDEMPOTENCY") or index is None or not 0 <= index < len(keys):
            return {}
        refused[keys[index]] = f"{code}: {short(str(e.get('message', '')))}"
    return refused


def _gone_levels(errors: list[Any], keys: list[LevelKey]) -> list[LevelKey]:
    """The levels refused because Shopify does not know their inventory item (``GONE_CODES``)."""
    gone: list[LevelKey] = []
    for e in errors:
        if not isinstance(e, dict) or str(e.get("code")) not in GONE_CODES:
            continue
        index = next((int(p) for p in _field(e.get("field")) if isinstance(p, str) and _INDEX_RE.fullmatch(p)), None)
        if index is not None and 0 <= index < len(keys):
            gone.append(keys[index])
    return gone


def _answered_skus(payload: Any, keys: list[LevelKey]) -> dict[LevelKey, str]:
    """The SKU Shopify answered for the inventory item of each level it changed (``changes { item { id sku } }``):
    a variant renamed at the channel still takes the push, and only this tells the hub it is now another SKU's."""
    group = payload.get("inventoryAdjustmentGroup") if isinstance(payload, dict) else None
    changes = group.get("changes") if isinstance(group, dict) else None
    by_pair = {(k.item_id, k.location_id): k for k in keys}
    by_item: dict[str, list[LevelKey]] = {}
    for k in keys:
        by_item.setdefault(k.item_id, []).append(k)
    skus: dict[LevelKey, str] = {}
    for c in changes if isinstance(changes, list) else ():
        item = c.get("item") if isinstance(c, dict) else None
        if not isinstance(item, dict) or not isinstance(item.get("sku"), str):
            continue  # no SKU answered (or none set): nothing to compare
        location = c.get("location")
        key = by_pair.get((str(item.get("id")), str(location.get("id")))) if isinstance(location, dict) else None
        for k in [key] if key is not None else by_item.get(str(item.get("id")), []):
            skus[k] = item["sku"]
    return skus
