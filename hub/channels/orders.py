"""Orders back: a channel's order webhooks as reserve → sale → release events at the fulfilling hub location.

Pure: a webhook's payload (and, for Square, the order it names, read from the
Orders API by the caller) in, stock movements out; no I/O. docs/channels.md
("Orders back") says what each case does.

Every movement is a deterministic function of facts the channel never changes
once they exist (a line's ordered quantity, a fulfilment's lines and time, a
refund's lines and time, the cancellation time), and its event id is derived
from the channel, the order, the stage and the channel's own ids. So each
webhook emits the whole chain its state implies — a cancellation seen before
the creation emits the reserve *and* its release — and the same movement sent
again by a late, repeated or reordered webhook is a duplicate the hub ignores.
Reservations are commutative sums per (location, sku, order ref), and a sale
carrying the order's ref consumes its reservation, so the order in which the
hub learns them does not matter. Units removed from a Shopify line (its
``current_quantity`` drops: a refund of unfulfilled units, an edit, the
cancellation) are released one event per unit, the k-th unit the same event
in every payload. A Square order is read as it stands; its quantities may
change while it is open, so once its movements are in, ``settle_movements``
takes the hub's reservation of it to what it still needs.

A webhook is translated whole or refused whole (``OrderRefused``, one
sentence saying what to do): no line is ever dropped silently or applied
half. Lines that are not stock (a Shopify custom line or gift card without a
mapped variant, a Square ad-hoc line without a catalog object) are left out
and named in ``Translation.left_out``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from hub.channels.mapping import SkuMapping
from protocol import Kind, StockEvent, derived_event_id, pack_hlc, values
from protocol.event import QTY_MAX, REF_MAX_LEN

SHOPIFY_WEBHOOK_VERSION = "2026-01"  # the REST webhook payloads followed (docs/channels.md)
SQUARE_WEBHOOK_VERSION = "2024-11-20"
SHOPIFY_ORDER_TOPICS = frozenset(
    {
        "orders/create",
        "orders/updated",
        "orders/cancelled",
        "orders/fulfilled",
        "orders/partially_fulfilled",
        "orders/paid",
    }
)
SHOPIFY_FULFILMENT_TOPICS = frozenset({"fulfillments/create", "fulfillments/update"})
SHOPIFY_REFUND_TOPICS = frozenset({"refunds/create"})
SHOPIFY_TOPICS = SHOPIFY_ORDER_TOPICS | SHOPIFY_FULFILMENT_TOPICS | SHOPIFY_REFUND_TOPICS
SQUARE_TYPES = frozenset({"order.created", "order.updated", "order.fulfillment.updated"})
LINES_MAX = 2_000  # lines, fulfilment lines or refund lines in one payload
RELEASED_UNITS_MAX = 100_000  # units a Shopify order payload may take out of reservations (one event each)
ID_MAX_LEN = 64
EARLIEST_MS = 946_684_800_000  # 2000-01-01
SHOPIFY_LOCATION_GID = "gid://shopify/Location/"
SHOPIFY_VARIANT_GID = "gid://shopify/ProductVariant/"


class OrderRefused(ValueError):
    """The webhook cannot be applied as it is; the message is one sentence saying what to do. ``order_id``: the
    channel's order it names, when known; ``channel_location``: the channel's location it names, when known."""

    def __init__(self, message: str, order_id: str | None = None, channel_location: str | None = None) -> None:
        super().__init__(message)
        self.order_id = order_id
        self.channel_location = channel_location


# --- signatures ----------------------------------------------------------------------


def shopify_signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """``X-Shopify-Hmac-Sha256``: base64 of HMAC-SHA256 of the raw body keyed with the app's secret (constant time)."""
    if not secret or not header:
        return False
    expected = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
    return hmac.compare_digest(expected, header.strip().encode("ascii", "replace"))


def square_signature_ok(signature_key: str, notification_url: str, body: bytes, header: str | None) -> bool:
    """``x-square-hmacsha256-signature``: base64 of HMAC-SHA256 of the notification URL then the raw body."""
    if not signature_key or not header:
        return False
    mac = hmac.new(signature_key.encode(), notification_url.encode() + body, hashlib.sha256)
    return hmac.compare_digest(base64.b64encode(mac.digest()), header.strip().encode("ascii", "replace"))


# --- values ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderContext:
    """What translating a channel's orders needs: its pool, who fulfils, and its item ids by hub SKU."""

    channel: str
    kind: str  # "shopify" | "square"
    pool: Mapping[str, str]  # hub location -> the channel's location id
    fulfil_from: Mapping[str, str] = field(default_factory=dict)  # channel location id -> the hub location fulfilling
    order_location: str = ""  # the hub location reserving an order that names no location ("": none)
    skus: Mapping[str, str] = field(default_factory=dict)  # channel variant / item id -> hub SKU

    @classmethod
    def of(
        cls,
        channel: str,
        kind: str,
        pool: Mapping[str, str],
        mapping: SkuMapping,
        fulfil_from: Mapping[str, str] | None = None,
        order_location: str = "",
    ) -> OrderContext:
        skus: dict[str, str] = {}
        for item in mapping.items:
            skus[item.item_id] = item.sku
            if item.variant_id:
                skus[item.variant_id] = item.sku
        return cls(channel, kind, dict(pool), dict(fulfil_from or {}), order_location, skus)

    @property
    def channel_locations(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.pool.values()))

    def hub_location(self, channel_location: str, what: str) -> str:
        """The hub location fulfilling at ``channel_location``, or ``OrderRefused`` saying how to configure it."""
        wanted = {channel_location}
        if self.kind == "shopify" and channel_location.isdigit():
            wanted.add(SHOPIFY_LOCATION_GID + channel_location)
        hubs = [hub for hub, where in self.pool.items() if where in wanted]
        if not hubs:
            raise OrderRefused(
                f"{what} is at {self.kind} location {channel_location}, which is not in channel {self.channel}'s pool; "
                f'add it to pool (hub location = "{channel_location}") and the channel\'s retry applies the order'
            )
        if len(hubs) == 1:
            return hubs[0]
        for where in wanted:
            chosen = self.fulfil_from.get(where)
            if chosen in hubs:
                return chosen
        raise OrderRefused(
            f"{what} is at {self.kind} location {channel_location}, which hub locations {', '.join(hubs)} all feed in "
            f'channel {self.channel}; say which fulfils with fulfil_from = {{ "{channel_location}" = "{hubs[0]}" }}'
        )

    def ref(self, order_id: str) -> str:
        return f"{self.channel}:order:{order_id}"[:REF_MAX_LEN]


@dataclass(frozen=True, slots=True)
class Movement:
    """One stock movement an order implies, before it becomes an event."""

    stage: str  # reserve, sale, moved, undone, refund, removed (Shopify); reserve, sale, cancel, settle (Square)
    key: str  # the channel's ids that make it unique within the order and stage
    kind: Kind
    location: str
    sku: str
    qty: int
    at_ms: int
    line_id: str


@dataclass(frozen=True, slots=True)
class Translation:
    order_id: str
    movements: tuple[Movement, ...]
    left_out: tuple[str, ...] = ()  # lines that are not stock, each as "line <id> (<why>)"
    what: str = ""  # "Shopify order 123 (orders/create)"
    # Square: what the order as it stands still needs reserved, (hub location, SKU, units), once its movements are
    # in (``settle_movements``); the order's version and the time of that version. None: not known (Shopify).
    still_reserved: tuple[tuple[str, str, int], ...] | None = None
    still_lines: tuple[tuple[str, int], ...] = ()  # the same per line (line uid, units): Square's SKUs can move
    version: int = 0
    version_at_ms: int = 0


def to_events(
    ctx: OrderContext,
    agent_id: str,
    t: Translation,
    now_ms: int,
    window_ms: int,
    skews: Mapping[str, int] | None = None,
) -> list[StockEvent]:
    """The events of a translation, ids derived from the channel's ids and times only.

    A stamp further ahead of the hub's clock than ``window_ms`` refuses the whole webhook. With ``skews`` (hub
    location -> that store PC's clock skew, hub minus PC: ``HubStore.store_clock_skews``), a movement at a location
    is stamped in its store's clock frame (the channel's time less the skew), so it is ordered against the store's own events
    (its stock counts) as the two happened; its id and ``wall_ms`` stay the channel's time, so a webhook sent again
    after the skew changed is still the same event (a duplicate).
    """
    events: list[StockEvent] = []
    source = f"api:channel:{ctx.channel}"
    # a PC more than the clock window off has its own events held for an operator: its skew is not carried into a
    # channel's sale, which would be held too (ahead of the hub's clock), where the channel's own time is right
    skews = {at: skew for at, skew in (skews or {}).items() if abs(skew) <= window_ms}
    for m in t.movements:
        if m.at_ms > now_ms + window_ms:
            raise OrderRefused(
                f"{t.what} is stamped {(m.at_ms - now_ms) // 1000} s ahead of the hub's clock, more than its clock "
                "window (clock_window_s); check the clocks of the hub and of the channel"
            )
        identity = f"channel:{ctx.channel}:order:{t.order_id}:{m.stage}:{m.key}"
        events.append(
            StockEvent(
                event_id=derived_event_id(m.at_ms, identity.encode()),
                agent_id=agent_id,
                epoch=0,
                seq=m.at_ms,
                location=m.location,
                sku=m.sku,
                kind=m.kind,
                qty=m.qty,
                occurred_at=pack_hlc(max(m.at_ms - skews.get(m.location, 0), 0), 0),
                wall_ms=m.at_ms,
                source=source,
                ref=ctx.ref(t.order_id),
                reason=None,
                attrs={"channel": ctx.channel, "order": t.order_id, "line": m.line_id, "stage": m.stage},
            )
        )
    return events


# --- checked reading of a payload ----------------------------------------------------------


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise OrderRefused(f"{where} must be a JSON object")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise OrderRefused(f"{where} must be a JSON array")
    if len(value) > LINES_MAX:
        raise OrderRefused(f"{where} has {len(value)} entries, more than the {LINES_MAX} the hub takes in one webhook")
    return value


def _id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise OrderRefused(f"{where} must be the channel's id (a number or text)")
    text = str(value).strip()
    if not text or len(text) > ID_MAX_LEN or not all(c.isalnum() or c in "-_:/." for c in text):
        raise OrderRefused(
            f"{where} {text[:40]!r} is not an id the hub can keep (letters, digits, at most {ID_MAX_LEN})"
        )
    if text in values.DOT_SEGMENTS:  # a refused order's id is in the URL that dismisses it
        raise OrderRefused(f"{where} {text!r} is not an id the hub can keep ({values.DOT_SEGMENT_RULE})")
    return text


def _opt_id(value: Any, where: str) -> str | None:
    return None if value is None or value == "" else _id(value, where)


def _ms(value: Any, where: str) -> int:
    if not isinstance(value, str):
        raise OrderRefused(f"{where} must be an ISO 8601 time with a UTC offset")
    try:
        when = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        raise OrderRefused(f"{where} {value[:40]!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise OrderRefused(f"{where} {value[:40]!r} has no UTC offset")
    ms = int(when.timestamp() * 1000)
    if ms < EARLIEST_MS:
        raise OrderRefused(f"{where} {value[:40]!r} is before the year 2000")
    return ms


def _opt_ms(value: Any, where: str) -> int | None:
    return None if value is None or value == "" else _ms(value, where)


def _qty(value: Any, where: str) -> int:
    """A whole, positive number of units (Square sends decimal strings)."""
    if isinstance(value, bool):
        raise OrderRefused(f"{where} must be a whole number of units")
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise OrderRefused(f"{where} {value[:20]!r} is not a number") from None
        if not number.is_finite() or number != number.to_integral_value():
            raise OrderRefused(f"{where} is {value[:20]}; the hub counts whole units, so sell this item by the unit")
        if not 1 <= number <= QTY_MAX:  # before int(): a number of thousands of digits cannot even be shown
            raise OrderRefused(f"{where} must be a whole number of units from 1 to {QTY_MAX}, got {value[:20]!r}")
        value = int(number)
    if not isinstance(value, int) or not 1 <= value <= QTY_MAX:
        raise OrderRefused(f"{where} must be a whole number of units from 1 to {QTY_MAX}, got {value!r}"[:200])
    return value


@dataclass(slots=True)
class _Lines:
    """An order's lines: hub SKU and ordered quantity by line id, and what was left out or not mapped."""

    sku: dict[str, str] = field(default_factory=dict)
    qty: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)  # units removed from the order (Shopify), by line id
    left_out: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)

    def refuse_unmapped(self, ctx: OrderContext, what: str) -> None:
        if not self.unmapped:
            return
        more = f" and {len(self.unmapped) - 1} more" if len(self.unmapped) > 1 else ""
        where = {"shopify": "Shopify", "square": "Square"}.get(ctx.kind, ctx.kind)
        raise OrderRefused(
            f"{what}: {self.unmapped[0]}{more} is not in channel {ctx.channel}'s SKU mapping, so nothing of it was "
            f"applied; give the item its hub SKU in {where} (or the mapping CSV) and reload the mapping, and the "
            "channel's retry applies the order"
        )


# --- Shopify -------------------------------------------------------------------------------


def shopify_pickup_lookup(ctx: OrderContext, topic: str, payload: Any) -> str | None:
    """The order id whose fulfilment orders must be read to find its pickup location, or None.

    Shopify's REST order payload names no pickup location: an order that names
    no location (``location_id`` is null outside POS) in a channel selling from
    several of its locations is looked up (``Order.fulfillmentOrders``:
    ``deliveryMethod.methodType`` PICK_UP and its ``assignedLocation``).
    """
    if topic not in SHOPIFY_ORDER_TOPICS or not isinstance(payload, Mapping) or len(ctx.channel_locations) < 2:
        return None
    if payload.get("location_id") not in (None, ""):
        return None
    return _id(payload.get("id"), "the order's id")


def shopify_movements(ctx: OrderContext, topic: str, payload: Any, pickup_location: str | None = None) -> Translation:
    """The movements a Shopify webhook (REST payload, version 2026-01) implies; ``OrderRefused`` if unusable.

    ``pickup_location``: the Shopify location id of the order's pickup, when
    ``shopify_pickup_lookup`` asked for it and the order is a pickup.
    """
    body = _obj(payload, f"the {topic} payload")
    if topic in SHOPIFY_ORDER_TOPICS:
        return _shopify_order(ctx, topic, body, pickup_location)
    if topic in SHOPIFY_FULFILMENT_TOPICS:
        order_id = _id(body.get("order_id"), "order_id")
        what = f"Shopify order {order_id} ({topic})"
        moves = _shopify_fulfilment(ctx, body, None, None, what, "fulfillment")
        return Translation(order_id, tuple(moves), (), what)
    if topic in SHOPIFY_REFUND_TOPICS:
        order_id = _id(body.get("order_id"), "order_id")
        what = f"Shopify order {order_id} ({topic})"
        lines = _Lines()
        moves = _shopify_refund(ctx, body, lines, what, "refund")
        lines.refuse_unmapped(ctx, what)
        return Translation(order_id, tuple(moves), tuple(lines.left_out), what)
    raise OrderRefused(
        f"topic {topic[:60]!r} is not one the hub takes; subscribe it to {', '.join(sorted(SHOPIFY_TOPICS))}"
    )


def _shopify_variant_sku(ctx: OrderContext, variant: Any) -> str | None:
    if variant in (None, ""):
        return None
    text = str(variant)
    return ctx.skus.get(SHOPIFY_VARIANT_GID + text) or ctx.skus.get(text)


def _shopify_line(ctx: OrderContext, li: Mapping[str, Any], lines: _Lines, where: str) -> str:
    line_id = _id(li.get("id"), f"{where}.id")
    sku = _shopify_variant_sku(ctx, li.get("variant_id"))
    if sku is not None:
        lines.sku[line_id] = sku
    elif li.get("variant_id") in (None, "") or li.get("gift_card") is True:
        lines.left_out.append(
            f"line {line_id} ({'a gift card' if li.get('gift_card') is True else 'no product variant'})"
        )
    else:
        named = f" SKU {str(li.get('sku'))[:64]!r}" if li.get("sku") else ""
        lines.unmapped.append(f"line {line_id} (variant {str(li.get('variant_id'))[:40]}{named})")
    return line_id


def _shopify_order(ctx: OrderContext, topic: str, order: Mapping[str, Any], pickup: str | None) -> Translation:
    order_id = _id(order.get("id"), "the order's id")
    what = f"Shopify order {order_id} ({topic})"
    created = _ms(order.get("created_at"), "created_at")
    lines = _Lines()
    cancelled = _opt_ms(order.get("cancelled_at"), "cancelled_at")
    for i, raw in enumerate(_list(order.get("line_items"), "line_items")):
        li = _obj(raw, f"line_items[{i}]")
        line_id = _shopify_line(ctx, li, lines, f"line_items[{i}]")
        ordered = lines.qty[line_id] = _qty(li.get("quantity"), f"line_items[{i}].quantity")
        current = _current_quantity(li.get("current_quantity", ordered), ordered, f"line_items[{i}].current_quantity")
        lines.removed[line_id] = ordered if cancelled is not None else ordered - current
    lines.refuse_unmapped(ctx, what)
    if not lines.sku:  # nothing of it is stock the hub counts
        return Translation(order_id, (), tuple(lines.left_out), what)
    released = sum(lines.removed[line_id] for line_id in lines.sku)
    if released > RELEASED_UNITS_MAX:
        raise OrderRefused(
            f"{what} takes {released} units out of its reservations, more than the {RELEASED_UNITS_MAX} the hub "
            "releases one by one from one webhook; release the rest at the store (a release event with the order's ref)"
        )
    at = _shopify_reserve_location(ctx, order, pickup, what)
    fulfilments = [
        _obj(f, f"fulfillments[{i}]") for i, f in enumerate(_list(order.get("fulfillments"), "fulfillments"))
    ]
    refunds = [_obj(r, f"refunds[{i}]") for i, r in enumerate(_list(order.get("refunds"), "refunds"))]
    moves: list[Movement] = []
    # every line's reserve, whatever the order's state: a late creation is then a duplicate
    for line_id, sku in lines.sku.items():
        moves.append(
            Movement("reserve", f"line:{line_id}", Kind.RESERVE, at, sku, lines.qty[line_id], created, line_id)
        )
    for i, f in enumerate(fulfilments):
        moves += _shopify_fulfilment(ctx, f, at, lines, what, f"fulfillments[{i}]")
    for i, r in enumerate(refunds):
        moves += _shopify_refund(ctx, r, lines, what, f"refunds[{i}]", in_order=True)
    # Units that will never be fulfilled leave the reservation, one release per unit: the k-th unit removed from
    # a line (a refund of unfulfilled units, restocked or not, an edit, the cancellation taking them all) is the
    # same event in every payload that shows it removed, so a payload showing more removed adds only the new
    # ones, whatever order payloads come in. Closing (archiving) an order moves nothing: Shopify still owes
    # its unfulfilled units and keeps them committed, and so does the hub.
    for line_id, sku in lines.sku.items():
        for k in range(1, lines.removed[line_id] + 1):
            moves.append(Movement("removed", f"line:{line_id}:unit:{k}", Kind.RELEASE, at, sku, -1, created, line_id))
    return Translation(order_id, tuple(moves), tuple(lines.left_out), what)


def _current_quantity(value: Any, ordered: int, where: str) -> int:
    """A line's ``current_quantity`` (REST 2024-01 on): its quantity minus the units removed from the order."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= ordered:
        raise OrderRefused(
            f"{where} must be a whole number from 0 to the line's quantity {ordered}, got {value!r}"[:200]
        )
    return value


def _shopify_reserve_location(ctx: OrderContext, order: Mapping[str, Any], pickup: str | None, what: str) -> str:
    located = _opt_id(order.get("location_id"), "location_id")
    if located is not None:
        return ctx.hub_location(located, what)
    if pickup is not None:
        return ctx.hub_location(pickup, f"{what}, a pickup,")
    if len(ctx.channel_locations) == 1:
        return ctx.hub_location(ctx.channel_locations[0], what)
    if ctx.order_location:
        return ctx.order_location
    raise OrderRefused(
        f"{what} names no location and channel {ctx.channel} sells from several; set order_location to the hub "
        "location that reserves such orders until they are fulfilled"
    )


def _shopify_fulfilment(
    ctx: OrderContext, f: Mapping[str, Any], reserve_at: str | None, lines: _Lines | None, what: str, where: str
) -> list[Movement]:
    """A fulfilment's sales at its location; with the order known (``reserve_at``), the releases it implies there.

    Status ``success`` is a sale; ``cancelled`` is a sale undone (the units come
    back on the shelf and into the reservation); others (pending, open, error,
    failure) move nothing yet.
    """
    status = f.get("status")
    if status not in ("success", "cancelled"):
        return []
    fid = _id(f.get("id"), f"{where}.id")
    created = _ms(f.get("created_at"), f"{where}.created_at")
    location = _id(f.get("location_id"), f"{where}.location_id")
    at = ctx.hub_location(location, f"{what}, fulfilment {fid},")
    undone = _ms(f.get("updated_at"), f"{where}.updated_at") if status == "cancelled" else None
    known = lines if lines is not None else _Lines()
    moves: list[Movement] = []
    for i, raw in enumerate(_list(f.get("line_items"), f"{where}.line_items")):
        li = _obj(raw, f"{where}.line_items[{i}]")
        line_id = _id(li.get("id"), f"{where}.line_items[{i}].id")
        if line_id not in known.sku:  # a fulfilment webhook carries its own lines; an order's are read already
            if lines is not None and line_id in lines.qty:
                continue  # left out (not stock) or unmapped (refused below)
            if lines is not None:  # an order's fulfilment fulfils the order's own lines, and nothing else
                raise OrderRefused(f"{what}: {where}.line_items[{i}].id {line_id} is not a line of the order")
            _shopify_line(ctx, li, known, f"{where}.line_items[{i}]")
            if line_id not in known.sku:
                continue
        sku = known.sku[line_id]
        n = _qty(li.get("quantity"), f"{where}.line_items[{i}].quantity")
        key = f"fulfillment:{fid}:line:{line_id}"
        moves.append(Movement("sale", key, Kind.SALE, at, sku, -n, created, line_id))
        if reserve_at is not None and reserve_at != at:  # fulfilled elsewhere: its reservation is not needed
            moves.append(Movement("moved", key, Kind.RELEASE, reserve_at, sku, -n, created, line_id))
        if undone is not None:
            moves.append(Movement("undone", key, Kind.RETURN, at, sku, n, undone, line_id))
            if reserve_at is not None:
                moves.append(Movement("undone", key + ":reserve", Kind.RESERVE, reserve_at, sku, n, undone, line_id))
    if lines is None:
        known.refuse_unmapped(ctx, what)
    return moves


def _shopify_refund(
    ctx: OrderContext, r: Mapping[str, Any], lines: _Lines, what: str, where: str, *, in_order: bool = False
) -> list[Movement]:
    """A refund's restocks: ``return`` lines (fulfilled units) come back on the shelf at their location.

    ``cancel`` and ``no_restock`` lines of unfulfilled units leave the order: the order's ``current_quantity``
    says so and ``_shopify_order`` releases them (a refund alone does not say which units a ``no_restock`` line
    refunds); ``no_restock`` of fulfilled units is money only. None of them moves a shelf."""
    rid = _id(r.get("id"), f"{where}.id")
    created = _ms(r.get("created_at"), f"{where}.created_at")
    moves: list[Movement] = []
    for i, raw in enumerate(_list(r.get("refund_line_items"), f"{where}.refund_line_items")):
        rl = _obj(raw, f"{where}.refund_line_items[{i}]")
        at_where = f"{where}.refund_line_items[{i}]"
        restock = rl.get("restock_type")
        if restock not in ("return", "legacy_restock"):
            continue
        line_id = _id(rl.get("line_item_id"), f"{at_where}.line_item_id")
        if line_id not in lines.sku:
            if line_id in lines.qty:
                continue  # an order line left out or unmapped, handled with the order
            if in_order:  # an order's refund refunds the order's own lines, and nothing else
                raise OrderRefused(f"{what}: {at_where}.line_item_id {line_id} is not a line of the order")
            item = rl.get("line_item")
            if not isinstance(item, Mapping):
                continue  # neither a line of this order nor described: nothing to move
            _shopify_line(ctx, {**item, "id": line_id}, lines, f"{at_where}.line_item")
            if line_id not in lines.sku:
                continue
        sku = lines.sku[line_id]
        n = _qty(rl.get("quantity"), f"{at_where}.quantity")
        key = f"refund:{rid}:line:{_id(rl.get('id'), f'{at_where}.id')}"
        located = _opt_id(rl.get("location_id"), f"{at_where}.location_id")
        if located is None:
            continue  # restocked nowhere: nothing came back on a shelf the hub counts
        at = ctx.hub_location(located, f"{what}, refund {rid},")
        moves.append(Movement("refund", key, Kind.RETURN, at, sku, n, created, line_id))
    return moves


# --- Square --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SquareNotice:
    """What a Square order webhook says: the event type, the order, its location and version."""

    event_type: str
    event_id: str
    order_id: str
    location_id: str
    version: int | None


def square_notice(payload: Any) -> SquareNotice:
    """The order a Square webhook (``Square-Version`` 2024-11-20) names, or ``OrderRefused``."""
    body = _obj(payload, "the notification")
    event_type = body.get("type")
    if event_type not in SQUARE_TYPES:
        raise OrderRefused(
            f"event type {str(event_type)[:60]!r} is not one the hub takes; subscribe it to {', '.join(sorted(SQUARE_TYPES))}"
        )
    data = _obj(body.get("data"), "data")
    obj = _obj(data.get("object"), "data.object")
    inner_name = {"order.created": "order_created", "order.updated": "order_updated"}.get(
        str(event_type), "order_fulfillment_updated"
    )
    inner = _obj(obj.get(inner_name), f"data.object.{inner_name}")
    order_id = _id(inner.get("order_id", data.get("id")), f"data.object.{inner_name}.order_id")
    location = _id(inner.get("location_id"), f"data.object.{inner_name}.location_id")
    version = inner.get("version")
    return SquareNotice(
        str(event_type),
        _id(body.get("event_id"), "event_id"),
        order_id,
        location,
        version if isinstance(version, int) and not isinstance(version, bool) else None,
    )


_SQUARE_DONE_AT = (
    ("pickup_details", "picked_up_at"),
    ("shipment_details", "shipped_at"),
    ("delivery_details", "completed_at"),
)
_SQUARE_CANCELED_AT = (
    ("pickup_details", "canceled_at"),
    ("shipment_details", "canceled_at"),
    ("delivery_details", "canceled_at"),
)


def square_movements(ctx: OrderContext, order: Any) -> Translation:
    """The movements a Square order (as the Orders API answers it, 2024-11-20) implies; ``OrderRefused`` if unusable.

    OPEN, COMPLETED and CANCELED orders reserve every line at the order's
    location (a DRAFT is not placed yet); a COMPLETED fulfilment sells its
    entries, a CANCELED or FAILED one releases them; a COMPLETED order sells
    what no fulfilment sold; a CANCELED order releases every line. A
    quantity changed while the order was open is reconciled afterwards by
    ``settle_movements`` (``Translation.still_reserved``). Returns (``returns``)
    move nothing and are named in ``left_out``.
    """
    o = _obj(order, "the order")
    order_id = _id(o.get("id"), "order.id")
    what = f"Square order {order_id}"
    state = o.get("state")
    if state not in ("OPEN", "COMPLETED", "CANCELED", "DRAFT"):
        raise OrderRefused(
            f"{what} has state {str(state)[:20]!r}; Square's states are OPEN, COMPLETED, CANCELED, DRAFT"
        )
    if state == "DRAFT":
        return Translation(order_id, (), (), what)
    at = ctx.hub_location(_id(o.get("location_id"), "order.location_id"), what)
    created = _ms(o.get("created_at"), "order.created_at")
    closed = _opt_ms(o.get("closed_at"), "order.closed_at")
    lines = _Lines()
    for i, raw in enumerate(_list(o.get("line_items"), "order.line_items")):
        li = _obj(raw, f"order.line_items[{i}]")
        uid = _id(li.get("uid"), f"order.line_items[{i}].uid")
        lines.qty[uid] = _qty(li.get("quantity"), f"order.line_items[{i}].quantity")
        item = li.get("catalog_object_id")
        sku = ctx.skus.get(str(item)) if item not in (None, "") else None
        if sku is not None:
            lines.sku[uid] = sku
        elif item in (None, ""):
            lines.left_out.append(f"line {uid} (no catalog item)")
        else:
            lines.unmapped.append(f"line {uid} (item variation {str(item)[:40]})")
    lines.refuse_unmapped(ctx, what)
    for i, raw in enumerate(_list(o.get("returns"), "order.returns")):
        ret = _obj(raw, f"order.returns[{i}]")
        for j, rl in enumerate(_list(ret.get("return_line_items"), f"order.returns[{i}].return_line_items")):
            ruid = _id(_obj(rl, f"order.returns[{i}].return_line_items[{j}]").get("uid"),
                       f"order.returns[{i}].return_line_items[{j}].uid")  # fmt: skip
            lines.left_out.append(
                f"return line {ruid} (Square does not say whether the unit went back on a shelf: the store scans "
                "it back in, or counts it)"
            )
    # A line's reserve is keyed by its quantity: a quantity changed while the order is open is a new reserve, not a
    # conflict, and ``settle_movements`` then takes the hub's reservation to what the order still needs.
    moves = [
        Movement("reserve", f"line:{uid}:qty:{lines.qty[uid]}", Kind.RESERVE, at, sku, lines.qty[uid], created, uid)
        for uid, sku in lines.sku.items()
    ]
    sold: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for i, raw in enumerate(_list(o.get("fulfillments"), "order.fulfillments")):
        f = _obj(raw, f"order.fulfillments[{i}]")
        fstate = f.get("state")
        if fstate not in ("COMPLETED", "CANCELED", "FAILED"):
            continue
        fuid = _id(f.get("uid"), f"order.fulfillments[{i}].uid")
        entries = _square_entries(f, lines, f"order.fulfillments[{i}]")
        when = _square_time(
            f, _SQUARE_DONE_AT if fstate == "COMPLETED" else _SQUARE_CANCELED_AT, f"order.fulfillments[{i}]"
        )
        when = when or closed or created
        for uid, n in entries.items():
            sku = lines.sku[uid]
            key = f"fulfillment:{fuid}:line:{uid}"
            if fstate == "COMPLETED":
                sold[uid] = sold.get(uid, 0) + n
                moves.append(Movement("sale", key, Kind.SALE, at, sku, -n, when, uid))
            elif state != "CANCELED":
                dropped[uid] = dropped.get(uid, 0) + n
                moves.append(Movement("cancel", key, Kind.RELEASE, at, sku, -n, when, uid))
    end_at = closed or created
    still: dict[str, int] = {}
    still_lines: list[tuple[str, int]] = []
    for uid, sku in lines.sku.items():
        rest = lines.qty[uid] - sold.get(uid, 0) - dropped.get(uid, 0)
        if state == "COMPLETED" and rest > 0:  # sold without a fulfilment (an in-person sale) or beyond them
            moves.append(Movement("sale", f"line:{uid}", Kind.SALE, at, sku, -rest, end_at, uid))
        elif state == "CANCELED":
            moves.append(Movement("cancel", f"line:{uid}", Kind.RELEASE, at, sku, -lines.qty[uid], end_at, uid))
        still[sku] = still.get(sku, 0) + (max(0, rest) if state == "OPEN" else 0)
        still_lines.append((uid, max(0, rest) if state == "OPEN" else 0))
    version = o.get("version")
    return Translation(
        order_id, tuple(moves), tuple(lines.left_out), what,
        still_reserved=tuple((at, sku, n) for sku, n in sorted(still.items())), still_lines=tuple(still_lines),
        version=version if isinstance(version, int) and not isinstance(version, bool) else 0,
        version_at_ms=_opt_ms(o.get("updated_at"), "order.updated_at") or end_at,
    )  # fmt: skip


def settle_movements(
    t: Translation,
    parts: Mapping[str, Mapping[str, int]],
    rows: Mapping[tuple[str, str], tuple[int, int]],
) -> tuple[Movement, ...]:
    """The reserves or releases that take the hub's reservation of a Square order to what it still needs.

    Run after the order's own movements are in: ``rows`` is the hub's reservation of the order's ref at each
    (location, SKU) of ``settle_keys`` as (Σ reserved, Σ consumed by sales), ``parts`` the bundles among its SKUs.
    Open is max(0, reserved − consumed); a reservation brought to what is wanted does not move again. A movement's
    identity is the order's version and the reservation it corrects, so the same correction computed twice is
    one event, and a later version correcting again is another."""
    moves: list[Movement] = []
    for (location, sku), want in settle_keys(t, parts).items():
        reserved, consumed = rows.get((location, sku), (0, 0))
        delta = consumed + want - reserved if want > 0 else min(0, consumed - reserved)
        if delta:
            kind = Kind.RESERVE if delta > 0 else Kind.RELEASE
            key = f"v{t.version}:{location}:{sku}:{reserved}:{consumed}:{want}"
            moves.append(Movement("settle", key, kind, location, sku, delta, t.version_at_ms, ""))
    return tuple(moves)


def settle_keys(t: Translation, parts: Mapping[str, Mapping[str, int]]) -> dict[tuple[str, str], int]:
    """(location, SKU) -> units the order still needs reserved there, a bundle's counted on its parts."""
    wanted: dict[tuple[str, str], int] = {}
    for location, sku, units in t.still_reserved or ():
        for part, per in (parts.get(sku) or {sku: 1}).items():
            wanted[(location, part)] = wanted.get((location, part), 0) + units * per
    return wanted


def _square_entries(f: Mapping[str, Any], lines: _Lines, where: str) -> dict[str, int]:
    if f.get("line_item_application", "ALL") == "ALL":
        return {uid: lines.qty[uid] for uid in lines.sku}
    entries: dict[str, int] = {}
    for i, raw in enumerate(_list(f.get("entries"), f"{where}.entries")):
        e = _obj(raw, f"{where}.entries[{i}]")
        uid = _id(e.get("line_item_uid"), f"{where}.entries[{i}].line_item_uid")
        if uid not in lines.qty:
            raise OrderRefused(f"{where}.entries[{i}] names line {uid}, which the order does not have")
        if uid in lines.sku:
            entries[uid] = entries.get(uid, 0) + _qty(e.get("quantity"), f"{where}.entries[{i}].quantity")
    return entries


def _square_time(f: Mapping[str, Any], fields: Iterable[tuple[str, str]], where: str) -> int | None:
    for details, name in fields:
        block = f.get(details)
        if isinstance(block, Mapping) and block.get(name):
            return _ms(block.get(name), f"{where}.{details}.{name}")
    return None
