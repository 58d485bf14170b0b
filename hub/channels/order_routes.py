"""``POST /v1/channels/{name}/webhooks``: a channel's signed order webhooks, applied as stock events.

No bearer token: the signature is the authentication (Shopify: HMAC-SHA256 of
the raw body; Square: of the notification URL and the body), checked in
constant time before the body is parsed. Then, in this order, nothing applied
until the last step:

1. the payload is read (Square: the order it names is read from the Orders
   API; Shopify: an order naming no location in a channel selling from
   several is looked up for a pickup location);
2. it is translated whole by ``hub.channels.orders`` with the channel's stored
   SKU mapping — any line that cannot be mapped refuses the whole webhook;
3. its events are ingested in one store call under the channel's identity
   (``channel:<name>``, bound to the pool's hub locations), as ``/v1/events``
   does, each stamped in the clock frame of the store PC booking at its
   location (``HubStore.store_clock_skews``: the channel's time less the skew
   the hub measured of that PC, read for the order's locations alone), so it
   is ordered right against the store's counts;
4. Square: the order's reservation at the hub is read back and settled to
   what the order as it stands still needs (``orders.settle_movements``: a
   quantity changed while it was open, nothing once it is finished), and the
   change feed is woken. A channel's webhooks are applied one at a time.

Answers: 200 applied (or nothing to do), 401 bad or missing signature, 404 no such
channel, 413 too large, 422 unusable payload, 429 its address sent too many
webhooks with a bad or missing signature (``refused_attempts_per_s``, from the
head, hub.ratelimit.RefusedAttempts), 503 the channel's mapping or API is not
available yet (the channel retries). One log sentence per webhook; refused ones
are counted in a line a minute. A webhook asking ``Expect: 100-continue`` gets
its 404, 413, 429 or 401 (no signature header) from its head, before its body
is sent (hub/heads.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from hub import feed, heads, problems, ratelimit, views
from hub.auth import PUBLIC_ROUTES_KEY, STORE_KEY
from hub.channels.config import ChannelSpec
from hub.channels.connector import ChannelError
from hub.channels.orders import (
    SHOPIFY_TOPICS,
    SQUARE_TYPES,
    Movement,
    OrderContext,
    OrderRefused,
    Translation,
    settle_keys,
    settle_movements,
    shopify_movements,
    shopify_pickup_lookup,
    shopify_signature_ok,
    square_movements,
    square_notice,
    square_signature_ok,
    to_events,
)
from hub.channels.runner import make_connector, open_channel_state
from hub.channels.shopify import ShopifyConnector
from hub.channels.square import SquareConnector
from hub.channels.state import ChannelState
from hub.proxies import client_of
from hub.storage import HubStore
from hub.storage.base import AgentIdentity, IngestResult, StoreError
from protocol import wall_ms_now
from protocol.logsafety import RepeatLog, one_line

log = logging.getLogger(__name__)

ROUTE = "/v1/channels/{name}/webhooks"
ROUTE_NAME = "channel_webhooks"
WEBHOOK_MAX_BYTES = 4 * 1024 * 1024  # a Shopify order of hundreds of lines is well under this
SEEN_MAX = 10_000  # deliveries remembered per hub process, to answer a resend at once
# The longest a webhook waits for the channel's rate limit (Square's 429 Retry-After, Shopify's bucket) while it
# reads the order: the channel's own delivery gives up after seconds, and the channel's webhooks are applied one
# at a time, so a longer wait is a 503 the channel retries, not minutes of every webhook of the channel queued
# behind it.
RATE_LIMIT_WAIT_MAX_S = 2.0
SHOPIFY_SIGNATURE = "X-Shopify-Hmac-Sha256"
SQUARE_SIGNATURE = "x-square-hmacsha256-signature"

PICKUP_QUERY = """
query orderPickup($id: ID!) {
  order(id: $id) {
    fulfillmentOrders(first: 20) { nodes { assignedLocation { location { id } } deliveryMethod { methodType } } }
  }
}
""".strip()


class Unavailable(Exception):
    """The webhook cannot be applied now (503); the channel's retry will."""


class OrderWebhooks:
    """The order webhooks of every configured channel that has a webhook secret."""

    def __init__(
        self, specs: Sequence[ChannelSpec], db_path: str, clock_window_ms: int, db_timeout_s: float | None = None
    ) -> None:
        self.specs = {s.name: s for s in specs if s.webhook_secret}
        self._db_path = db_path
        self._db_timeout_s = db_timeout_s
        self._window_ms = clock_window_ms
        self._state: ChannelState | None = None
        self._connectors: dict[str, Any] = {}
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self.bad_signatures = RepeatLog(
            log,
            "refused",
            "order webhook with a bad signature|order webhooks with a bad signature",
            level=logging.WARNING,
        )
        self.unknown = RepeatLog(log, "refused", "webhook for an unknown channel|webhooks for unknown channels")

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """The channel state and one HTTP session for the channels' APIs, while the app runs."""
        async with (
            open_channel_state(self._db_path, self._db_timeout_s) as state,
            aiohttp.ClientSession(trust_env=False) as session,
        ):
            self._state = state
            self._connectors = {name: make_connector(spec, session) for name, spec in self.specs.items()}
            log.info("taking order webhooks of %d channel(s): %s", len(self.specs), ", ".join(self.specs))
            try:
                yield
            finally:
                self._state = None
                self.bad_signatures.flush()
                self.unknown.flush()

    # --- the route ------------------------------------------------------------------

    async def head(self, request: web.Request) -> None:
        """``handle``'s refusals before it reads the body, asked of a head too (hub.heads: ``guard``)."""
        self._head(request)

    def _head(self, request: web.Request) -> ChannelSpec:
        """The channel a webhook is for; or what its head alone condemns: no channel of that name takes webhooks
        (404), its Content-Length is over ``WEBHOOK_MAX_BYTES`` (413), it has no signature header (401). The
        signature itself is checked over the body (``_signed``)."""
        name = request.match_info["name"]
        spec = self.specs.get(name)
        if spec is None or self._state is None:
            self.unknown.record(client_of(request), one_line(name, 64))
            raise web.HTTPNotFound(
                text=f"no channel named {one_line(name, 64)!r} takes order webhooks here; a [[channel]] table of the "
                "hub's config needs webhook_secret_file or webhook_secret_env"
            )
        length = request.content_length
        if length is not None and length > WEBHOOK_MAX_BYTES:
            raise web.HTTPRequestEntityTooLarge(
                max_size=WEBHOOK_MAX_BYTES, actual_size=length,
                text=f"an order webhook may be at most {WEBHOOK_MAX_BYTES} bytes; this one is {length}",
            )  # fmt: skip
        header = SHOPIFY_SIGNATURE if spec.kind == "shopify" else SQUARE_SIGNATURE
        if not request.headers.get(header):
            self.bad_signatures.record(client_of(request), f"channel {name}")
            ratelimit.refused(request)  # counted against its address (hub.ratelimit.RefusedAttempts)
            raise web.HTTPUnauthorized(
                text=f"the webhook has no {header} header, the signature channel {name} sends with each webhook; "
                "nothing was applied"
            )
        return spec

    async def handle(self, request: web.Request) -> web.Response:
        spec = self._head(request)
        name = spec.name
        body = await request.read()
        if len(body) > WEBHOOK_MAX_BYTES:
            raise web.HTTPRequestEntityTooLarge(
                max_size=WEBHOOK_MAX_BYTES, actual_size=len(body),
                text=f"an order webhook may be at most {WEBHOOK_MAX_BYTES} bytes; this one is {len(body)}",
            )  # fmt: skip
        if not self._signed(spec, request, body):
            self.bad_signatures.record(client_of(request), f"channel {name}")
            ratelimit.refused(request)
            raise web.HTTPUnauthorized(
                text=f"the webhook's signature does not match channel {name}'s webhook secret; nothing was applied"
            )
        started = time.perf_counter()
        try:
            payload = views.loads(body)
        except ValueError as err:
            return self._refused(spec, f"the body is not valid JSON ({err})", "a webhook")
        delivery, what = self._delivery(spec, request, payload)
        if delivery is not None and (name, delivery) in self._seen:
            log.info("channel %s: %s came again (delivery %s); it was applied already", name, what, delivery)
            return web.json_response({"status": "duplicate"})
        async with self._locks.setdefault(name, asyncio.Lock()):  # one order webhook of a channel at a time
            order_id: str | None = None
            try:
                translated = await self._translate(spec, request, payload)
                if translated is None:
                    log.info("channel %s: %s moves no stock; nothing to do", name, what)
                    return web.json_response({"status": "ignored"})
                ctx, translation = translated
                order_id = translation.order_id
                if await self._dismissed(spec, order_id, what):
                    return web.json_response({"status": "dismissed"})
                translation = await self._on_reserved_skus(spec, ctx, translation)
                store = request.app[STORE_KEY]
                skews = await self._skews(store, translation)
                events = to_events(ctx, _who(spec).agent_id, translation, wall_ms_now(), self._window_ms, skews)
            except OrderRefused as err:
                await self._order_refused(spec, order_id or err.order_id, str(err), err.channel_location)
                return self._refused(spec, str(err), what)
            except Unavailable as err:
                log.warning("channel %s: %s cannot be applied now: %s", name, what, err)
                raise web.HTTPServiceUnavailable(text=f"{err}; the channel's retry will apply it") from None
            result = None
            if events:
                result = await store.ingest(_who(spec), 0, events, clock_window_ms=self._window_ms)
            settled = await self._settle(spec, store, ctx, translation, skews)
            if settled is not None:
                result = settled if result is None else replace(
                    result, applied=result.applied + settled.applied, duplicates=result.duplicates + settled.duplicates,
                    rejected=(*result.rejected, *settled.rejected),
                )  # fmt: skip
            if result is not None:
                feed.poke(request.app)
            await self._order_accepted(spec, order_id)
        if delivery is not None:
            self._seen[(name, delivery)] = None
            while len(self._seen) > SEEN_MAX:
                self._seen.popitem(last=False)
        left_out = f"; left out {', '.join(translation.left_out[:3])}" if translation.left_out else ""
        if result is None:
            log.info("channel %s: %s moves nothing the hub counts%s", name, translation.what, left_out)
            return web.json_response({"status": "applied", "applied": 0, "duplicates": 0, "rejected": 0})
        log.info(
            "channel %s: applied %s as %d event(s) (%d new, %d duplicates, %d refused) in %d ms%s",
            name, translation.what, len(events), result.applied, result.duplicates, len(result.rejected),
            round((time.perf_counter() - started) * 1000), left_out,
        )  # fmt: skip
        if result.rejected:
            log.warning("channel %s: the hub refused %d event(s) of %s; first: %s", name, len(result.rejected),
                        translation.what, result.rejected[0].reason)  # fmt: skip
        return web.json_response(
            {
                "status": "applied",
                "applied": result.applied,
                "duplicates": result.duplicates,
                "rejected": len(result.rejected),
            }
        )

    # --- steps ------------------------------------------------------------------------

    async def _skews(self, store: HubStore, t: Translation) -> dict[str, int]:
        """The measured clock skew of the store PC booking at each hub location the order moves stock at
        (``HubStore.store_clock_skews``: the credentials bound to those locations alone, by their index, not every
        store's): its movements are stamped in that store's clock frame, so a sale is ordered against the store's
        own stock count as the two happened, not as two clocks minutes apart say."""
        locations = {m.location for m in t.movements} | {at for at, _, _ in t.still_reserved or ()}
        return await store.store_clock_skews(locations) if locations else {}

    async def _settle(
        self, spec: ChannelSpec, store: HubStore, ctx: OrderContext, t: Translation, skews: Mapping[str, int]
    ) -> IngestResult | None:
        """A Square order's reservation taken to what the order as it stands still needs (its quantities may
        have changed while it was open; a finished order needs none), once its own movements are in."""
        if t.still_reserved is None or self._state is None:
            return None
        skus = {sku for _, sku, _ in t.still_reserved}
        recipes = await store.bundle_parts(skus)
        parts = {sku: recipes[sku] for sku in skus if sku in recipes}
        rows = await self._state.order_reservations(ctx.ref(t.order_id), settle_keys(t, parts))
        moves = settle_movements(t, parts, rows)
        if not moves:
            return None
        events = to_events(ctx, _who(spec).agent_id, Translation(t.order_id, moves, (), t.what), wall_ms_now(),
                           self._window_ms, skews)  # fmt: skip
        log.info(
            "channel %s: settled the reservation of %s to what it still needs: %s", spec.name, t.what,
            ", ".join(f"{m.kind.value} {m.qty:+d} {m.sku} at {m.location}" for m in moves[:5]),
        )  # fmt: skip
        return await store.ingest(_who(spec), 0, events, clock_window_ms=self._window_ms)

    async def _on_reserved_skus(self, spec: ChannelSpec, ctx: OrderContext, t: Translation) -> Translation:
        """An order's movements booked on the SKU each line was reserved on.

        A line's SKU is its variant's in the mapping as it stands: a variant renamed (or created again with
        another SKU) at the channel and mapped again between the order and its fulfilment would sell the new
        SKU while the reservation sits on the old one for ever (and the order's reserve, sent again, would
        conflict with the one booked). So when a line's fulfilment, refund or release finds no reservation of the
        order on its SKU at any pool location, the SKU its reserve was booked on (the channel's own reserve
        event) is used for every movement of that line. Looked up only then: a rename is rare. A Square order
        sends every line's reserve again with each version, and its settle step reads the reservation by SKU
        (``_settle``): its reserves follow too, and what it still needs is counted on the lines' SKUs so found."""
        if spec.kind not in ("shopify", "square") or self._state is None:
            return t
        every = spec.kind == "square"
        lines = {m.line_id: m.sku for m in t.movements if (every or m.stage != "reserve") and m.line_id}
        if not lines:
            return t
        ref = ctx.ref(t.order_id)
        held = await self._state.order_reservations(ref, {(loc, sku) for loc in spec.pool for sku in lines.values()})
        on = {sku for (_, sku) in held}
        if all(sku in on for sku in lines.values()):
            return t
        reserved = await self._state.order_line_skus(spec.name, ref)
        moved = {line: reserved[line] for line, sku in lines.items() if reserved.get(line, sku) != sku}
        if not moved:
            return t
        line, sku = next(iter(sorted(moved.items())))
        log.info(
            "channel %s: %s: line %s was reserved as SKU %s, now mapped to %s%s; its movements are booked on %s, "
            "where its reservation is",
            spec.name, t.what, line, sku, lines[line], f" (and {len(moved) - 1} more line(s))" if len(moved) > 1 else "",
            sku,
        )  # fmt: skip
        movements = tuple(replace(m, sku=moved[m.line_id]) if m.line_id in moved else m for m in t.movements)
        return replace(t, movements=movements, still_reserved=_still_on(t, movements))

    def _signed(self, spec: ChannelSpec, request: web.Request, body: bytes) -> bool:
        if spec.kind == "shopify":
            return shopify_signature_ok(spec.webhook_secret, body, request.headers.get(SHOPIFY_SIGNATURE))
        return square_signature_ok(
            spec.webhook_secret, spec.notification_url, body, request.headers.get(SQUARE_SIGNATURE)
        )

    def _delivery(self, spec: ChannelSpec, request: web.Request, payload: Any) -> tuple[str | None, str]:
        """The channel's id of this delivery (for dedupe and logs) and what it is, in words."""
        if spec.kind == "shopify":
            topic = one_line(request.headers.get("X-Shopify-Topic", ""), 60)
            webhook_id = one_line(request.headers.get("X-Shopify-Webhook-Id", ""), 80) or None
            return webhook_id, f"Shopify webhook {topic or '(no topic)'}"
        event_type = payload.get("type") if isinstance(payload, dict) else None
        event_id = payload.get("event_id") if isinstance(payload, dict) else None
        shown = one_line(str(event_type), 60) if event_type else "(no type)"
        return (
            one_line(str(event_id), 80) if isinstance(event_id, str) and event_id else None
        ), f"Square event {shown}"

    async def _order_refused(
        self, spec: ChannelSpec, order_id: str | None, reason: str, channel_location: str | None
    ) -> None:
        """A Square order refused for good is stored: the pusher no longer takes its register sales off the counts
        it pushes (``ChannelPusher``), as its order will not reach the hub until the cause is fixed and Square's
        retry brings it (booked then, as any). With the hub location its Square location feeds, when the pool (and
        ``fulfil_from``) say which: its exception is that store's."""
        if spec.kind != "square" or order_id is None or self._state is None:
            return
        location = _feeding(spec, channel_location)
        try:
            await self._state.refuse_order(
                spec.name, order_id, reason, wall_ms_now(), location=location, channel_location=channel_location
            )
        except StoreError as err:
            log.warning(
                "channel %s: the refusal of Square order %s could not be stored (%s); its register sales are taken "
                "off the counts pushed while they are read", spec.name, order_id, err,
            )  # fmt: skip

    async def _dismissed(self, spec: ChannelSpec, order_id: str | None, what: str) -> bool:
        """A Square order refused before, whose sale staff booked by hand and an admin dismissed, is not booked by
        a later delivery that could apply it (the item mapped meanwhile): the sale would be booked twice. True then
        (Square is answered, so it stops retrying). A store that cannot say is a 503: Square retries later."""
        if spec.kind != "square" or order_id is None or self._state is None:
            return False
        try:
            refused = await self._state.refused_order(spec.name, order_id)
        except StoreError as err:
            raise Unavailable(f"whether Square order {order_id} was dismissed cannot be read now ({err})") from err
        if refused is None or refused.dismissed_at_ms is None:
            return False
        log.info(
            "channel %s: %s of order %s came after the order was dismissed by %s at %s (its sale booked by hand); it "
            "is not booked, and Square is answered so it stops retrying",
            spec.name, what, order_id, refused.dismissed_by, views.iso_ms(refused.dismissed_at_ms),
        )  # fmt: skip
        return True

    async def _order_accepted(self, spec: ChannelSpec, order_id: str | None) -> None:
        """A Square order refused before and applied now (Square's retry once the cause was fixed) is no longer
        refused: its stored refusal goes, and with it its exception (``channel_order_refused``)."""
        if spec.kind != "square" or order_id is None or self._state is None:
            return
        try:
            if await self._state.order_accepted(spec.name, order_id):
                log.info("channel %s: Square order %s, refused before, is applied now; it leaves the exceptions list",
                         spec.name, order_id)  # fmt: skip
        except StoreError as err:
            log.warning(
                "channel %s: Square order %s is applied, but its refusal before could not be deleted (%s); the "
                "exceptions list shows it as refused until the next delivery of the order, or two days after the "
                "refusal", spec.name, order_id, err,
            )  # fmt: skip

    def _refused(self, spec: ChannelSpec, reason: str, what: str) -> web.Response:
        log.warning("channel %s: refused %s: %s", spec.name, what, reason)
        return problems.response(422, f"{reason}; nothing of it was applied", code="unusable_webhook")

    async def _mapping_context(self, spec: ChannelSpec) -> OrderContext:
        assert self._state is not None
        mapping = await self._state.mapping(spec.name)
        if mapping is None:
            raise Unavailable(f"channel {spec.name}'s SKU mapping is not loaded yet (its pusher loads it at start)")
        return OrderContext.of(spec.name, spec.kind, spec.pool, mapping, spec.fulfil_from, spec.order_location)

    async def _translate(
        self, spec: ChannelSpec, request: web.Request, payload: Any
    ) -> tuple[OrderContext, Translation] | None:
        if spec.kind == "shopify":
            topic = request.headers.get("X-Shopify-Topic", "")
            if topic not in SHOPIFY_TOPICS:
                return None
            ctx = await self._mapping_context(spec)
            pickup = None
            order_id = shopify_pickup_lookup(ctx, topic, payload)
            if order_id is not None:
                pickup = await self._shopify_pickup(spec, order_id)
            return ctx, shopify_movements(ctx, topic, payload, pickup)
        if not isinstance(payload, dict) or payload.get("type") not in SQUARE_TYPES:
            return None
        notice = square_notice(payload)
        ctx = await self._mapping_context(spec)
        try:
            return ctx, square_movements(ctx, await self._square_order(spec, notice.order_id, notice.location_id))
        except OrderRefused as err:
            raise OrderRefused(str(err), notice.order_id, notice.location_id) from err

    async def _shopify_pickup(self, spec: ChannelSpec, order_id: str) -> str | None:
        connector = self._connectors[spec.name]
        assert isinstance(connector, ShopifyConnector)
        try:
            data = await connector.query(
                "orderPickup", PICKUP_QUERY, {"id": f"gid://shopify/Order/{order_id}"}, wait_max_s=RATE_LIMIT_WAIT_MAX_S
            )
        except ChannelError as err:
            raise Unavailable(f"reading the fulfilment orders of Shopify order {order_id} failed ({err})") from err
        order = data.get("order")
        if not isinstance(order, Mapping):
            raise OrderRefused(f"Shopify does not know order {order_id} of channel {spec.name}")
        odd = Unavailable(
            f"Shopify answered the fulfilment orders of order {order_id} in a shape the hub cannot read, so its "
            "pickup location is unknown"
        )  # a guess (the channel's order_location) would reserve the units at the wrong store
        orders = order.get("fulfillmentOrders")
        nodes = orders.get("nodes") if isinstance(orders, Mapping) else None
        if not isinstance(nodes, list):
            raise odd
        for node in nodes:
            method = _path(node, "deliveryMethod", "methodType")
            location = _path(node, "assignedLocation", "location", "id")
            if method is odd_shape or location is odd_shape:
                raise odd
            if method == "PICK_UP" and isinstance(location, str) and location:
                return location
        return None

    async def _square_order(self, spec: ChannelSpec, order_id: str, location_id: str) -> Mapping[str, Any]:
        connector = self._connectors[spec.name]
        assert isinstance(connector, SquareConnector)
        try:
            answer = await connector.call(
                "/v2/orders/batch-retrieve",
                {"location_id": location_id, "order_ids": [order_id]},
                "reading an order",
                wait_max_s=RATE_LIMIT_WAIT_MAX_S,
            )
        except ChannelError as err:
            raise Unavailable(f"reading Square order {order_id} failed ({err})") from err
        orders = answer.get("orders")
        if orders is not None and not isinstance(orders, list):
            raise Unavailable(f"Square answered the read of order {order_id} with orders that are not a JSON array")
        for order in orders or []:
            if isinstance(order, Mapping) and order.get("id") == order_id:
                return order
        raise OrderRefused(f"Square does not know order {order_id} at location {location_id}")


odd_shape = object()  # what ``_path`` answers when an object on the way is something else


def _path(value: Any, *keys: str) -> Any:
    """``value[k1][k2]…`` of a GraphQL answer: None where a key is missing or null, ``odd_shape`` where a value on
    the way is not an object."""
    for key in keys:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            return odd_shape
        value = value.get(key)
    return value


def _who(spec: ChannelSpec) -> AgentIdentity:
    """The channel's identity: its events are namespaced under ``channel:<name>`` and bound to its pool."""
    return AgentIdentity(f"channel:{spec.name}", frozenset(spec.pool), "agent")


HOOKS_KEY = web.AppKey("order_webhooks", OrderWebhooks)


def setup(
    app: web.Application, specs: Sequence[ChannelSpec], db_path: str, clock_window_s: int,
    db_timeout_s: float | None = None,
) -> None:  # fmt: skip
    """Add ``POST /v1/channels/{name}/webhooks`` (public: the signature authenticates) and its resources
    (``db_timeout_s``: the hub's, for the channel state's connections)."""
    hooks = OrderWebhooks(specs, db_path, clock_window_s * 1000, db_timeout_s)
    app[HOOKS_KEY] = hooks
    app[PUBLIC_ROUTES_KEY] = app[PUBLIC_ROUTES_KEY] | {ROUTE_NAME}
    heads.add(app, "POST", ROUTE, hooks.handle, name=ROUTE_NAME, guard=hooks.head)  # public: signed
    if hooks.specs:
        app.cleanup_ctx.append(hooks.run)


def _still_on(t: Translation, movements: tuple[Movement, ...]) -> tuple[tuple[str, str, int], ...] | None:
    """What a Square order still needs reserved, counted per line on the (location, SKU) of the line's reserve in
    ``movements`` (after a rename: the SKU it was reserved on); as it was when the lines are not known."""
    if t.still_reserved is None or not t.still_lines:
        return t.still_reserved
    at = {m.line_id: (m.location, m.sku) for m in movements if m.stage == "reserve" and m.line_id}
    still: dict[tuple[str, str], int] = {}
    for line, units in t.still_lines:
        if line not in at:
            return t.still_reserved
        still[at[line]] = still.get(at[line], 0) + units
    return tuple((location, sku, n) for (location, sku), n in sorted(still.items(), key=lambda kv: kv[0][1]))


def _feeding(spec: ChannelSpec, channel_location: str | None) -> str | None:
    """The hub location fulfilling at the channel's ``channel_location`` (its pool, and ``fulfil_from`` where several
    feed it), None when they do not say (not in the pool, or not known)."""
    hubs = [hub for hub, where in spec.pool.items() if channel_location is not None and where == channel_location]
    if len(hubs) == 1:
        return hubs[0]
    chosen = spec.fulfil_from.get(channel_location or "")
    return chosen if chosen in hubs else None
