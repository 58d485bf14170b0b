"""Resolution: from a set of stock events to counts, effects and variances.

This is the reference specification of docs/design.md "Resolution". It is pure — no
I/O, no database, no clock — and it works on the *final set* of events only,
so its answer cannot depend on the order, batching or duplication of their
delivery. The storage backends compute the same thing incrementally and the
tests check ``store == resolve(all events)`` after arbitrary deliveries.

The rules, per (location, sku):

* Events are totally ordered by ``order_key`` = (occurred_at, agent_id, seq,
  event_id). The event id only breaks ties the first three leave (the same
  agent in two epochs at the same instant), so the order stays total.
* ``on_hand`` = qty of the last ``count`` (0 if none) + every on-hand delta
  (``protocol.ON_HAND_KINDS``) ordered after it.
* A delta is *superseded* iff some count of its (location, sku) is ordered
  after it, else *applied*; counts, reserves and releases are *applied*.
* The variance of a count = its qty − (qty of the count before it, or 0, + the
  deltas strictly between the two). A late delta ordered before a count moves
  that count's variance (the shrinkage report), not ``on_hand``.
* Reservations are kept per (location, sku, ref); a sale carrying the same
  ref consumes its reservation. ``reserved`` is the sum of what stays open.
* ``available`` = max(0, on_hand − reserved − safety stock).
* Transfers are kept per (destination, ref, sku) (``transfer_key``), a key each
  event gives alone: a ``transfer_out`` ships to the location its attrs.to names,
  a ``transfer_in`` receives at its own location. Two stores numbering their
  transfers alike (both ship "T-1") never meet unless they ship to the same
  destination; then the transfer is one at the receiver, its shippers kept
  (``Transfer.shippers``) and named by a ``transfer_shared_ref`` finding. What is
  shipped and not yet received is in transit to the destination. A
  ``transfer_in`` with attrs {"final": true} closes the receiver's transfer:
  nothing stays in transit, and what was shipped to it but never received is
  written off (``Transfer.written_off``, a ledger row of its own: the units
  already left the source's on_hand when shipped, so no on-hand count moves).
  A receipt at a location nothing of its ref was shipped to is its own
  transfer (``transfer_unmatched``): no receipt ever takes units out of transit
  to, or writes off units shipped to, another location — except its shipper's
  receipt back (``settle_returns``: the location alone shipped the ref and SKU
  elsewhere), which counts against that shipment and, final, closes it. An
  adjust carrying the ref where it was received books it out (``books_out``):
  what is booked out is not unmatched.
  Partial receipts keep it open; an open transfer is overdue once its first
  shipment is older than the hub's ``transfer_open_max_s`` (``overdue_finding``).
* Bundles (``BundleBook``): a movement of a bundle SKU is booked on its parts —
  one movement per plain SKU of its recipe, ``expand``, the same kind, ref and
  time, qty × units per bundle, a deterministic id of its own — and is itself
  *expanded*, counted nowhere. Which recipe expands a movement is fixed when the
  hub first stores it (``BundleBook.fixed``); a count of a bundle is refused
  (``bundle_problem``). A bundle's row at a location is derived from its parts'
  rows there (``bundle_counts``): on_hand and in_transit the whole bundles they
  make, available min over parts of ⌊available ÷ units⌋ (less the bundle's own
  safety stock), ``reserved`` what the parts' reservations and safety stocks
  hold back of on_hand. A bundle has a row wherever one of its parts has one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, TypeAlias

from protocol import ON_HAND_KINDS, Kind, StockEvent, derived_event_id, event_id_hex, values
from protocol.event import ATTRS_MAX_KEYS, QTY_MAX
from protocol.event import TRANSFER_QTY_MAX as _TRANSFER_QTY_MAX

OrderKey: TypeAlias = tuple[int, str, int, bytes]  # (occurred_at, agent_id, seq, event_id)
StockKey: TypeAlias = tuple[str, str]  # (location, sku)
TransferKey: TypeAlias = tuple[str, str, str]  # (destination, ref, sku)
ReservationKey: TypeAlias = tuple[str, str, str]  # (location, sku, ref); "" for reservations without a ref

# Kinds whose position in the order matters for on_hand and variances.
ORDERED_KINDS = ON_HAND_KINDS | {Kind.COUNT}
RESERVATION_KINDS = frozenset({Kind.RESERVE, Kind.RELEASE})
is_location = values.is_location  # the protocol's location rule, named here for the hub's callers


class Effect(StrEnum):
    """What an event did, as the ledger shows it."""

    APPLIED = "applied"  # counted in on_hand (or in reserved, for reserve/release)
    SUPERSEDED = "superseded"  # a delta ordered before the last count: the count already saw it
    DUPLICATE = "duplicate"  # a resend of an event already in the ledger
    REJECTED = "rejected"  # refused; never counted (reason kept)
    EXPANDED = "expanded"  # a bundle's movement: booked on its parts (movements of their own), counted nowhere itself


def order_key(ev: StockEvent) -> OrderKey:
    return (ev.occurred_at, ev.agent_id, ev.seq, ev.event_id)


def available(on_hand: int, reserved: int, safety_stock: int) -> int:
    return max(0, on_hand - reserved - safety_stock)


# --- findings: what the operations team should look at ---------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that needs a person: the store turns these into ExceptionRows."""

    kind: str  # "negative_on_hand", "transfer_short", "transfer_over", "transfer_unmatched", "transfer_shared_ref" …
    location: str | None
    sku: str | None
    detail: str  # one sentence for the operations team
    data: dict[str, Any] = field(default_factory=dict)


def negative_on_hand_finding(location: str, sku: str, on_hand: int) -> Finding | None:
    if on_hand >= 0:
        return None
    return Finding(
        "negative_on_hand",
        location,
        sku,
        f"{sku} at {location} stands at {on_hand} on hand, below zero: a receipt is probably missing "
        f"or a count was wrong, and nothing is shown as available until it is fixed.",
        {"on_hand": on_hand},
    )


# --- other systems' counts: divergence --------------------------------------

DIVERGENCE_MIN_UNITS = 2  # a difference of this many units always counts …
DIVERGENCE_FRACTION_DIVISOR = 20  # … and a smaller one when it is >= 1/20 (5 %) of the hub's on_hand


def diverges(observed: int, hub_on_hand: int) -> bool:
    """True when another system's on_hand differs from the hub's enough to report:
    |difference| >= min(2, 5 % of the hub's on_hand), and never when they agree."""
    diff = abs(observed - hub_on_hand)
    return diff > 0 and (diff >= DIVERGENCE_MIN_UNITS or diff * DIVERGENCE_FRACTION_DIVISOR >= abs(hub_on_hand))


def on_hand_as_of(events: Iterable[StockEvent], location: str, sku: str, before: int) -> int:
    """The reference for "on_hand as of a time": the last count of (location, sku)
    ordered before the packed HLC ``before`` plus the deltas between it and ``before``."""
    evs = sorted(
        (ev for ev in events if ev.location == location and ev.sku == sku and ev.occurred_at < before),
        key=order_key,
    )
    on_hand = 0
    for ev in evs:
        if ev.kind is Kind.COUNT:
            on_hand = ev.qty
        elif ev.kind in ON_HAND_KINDS:
            on_hand += ev.qty
    return on_hand


# --- reservations ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    """One reservation ref at one (location, sku); commutative sums only."""

    reserved: int = 0  # Σ reserve qty + Σ release qty (a release is negative)
    consumed: int = 0  # Σ |qty| of sales carrying this ref

    @property
    def open(self) -> int:
        return max(0, self.reserved - self.consumed)


def reservation_key(ev: StockEvent) -> ReservationKey | None:
    """The reservation an event adds to or consumes, if any."""
    if ev.kind in RESERVATION_KINDS:
        return (ev.location, ev.sku, ev.ref or "")
    if ev.kind is Kind.SALE and ev.ref is not None:
        return (ev.location, ev.sku, ev.ref)
    return None


def tally_reservation(res: Reservation, ev: StockEvent) -> Reservation:
    if ev.kind in RESERVATION_KINDS:
        return Reservation(res.reserved + ev.qty, res.consumed)
    if ev.kind is Kind.SALE and ev.ref is not None:
        return Reservation(res.reserved, res.consumed - ev.qty)
    return res


# --- transfers -------------------------------------------------------------


def _min_opt(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    return a if b is None or a <= b else b


@dataclass(frozen=True, slots=True)
class Transfer:
    """One transfer document for one SKU to one destination, folded from both sides' events.

    Every event of it names ``dest`` (a shipment's attrs.to, a receipt's own location), so ``out_to`` and
    ``in_to`` are ``dest`` once shipped, received. Its shippers are a set (``shippers``: their codes, sorted,
    comma-separated; location codes hold no comma); ``out_from`` is the first of them. Where receipts name
    different sources (attrs.from), the smallest code wins, so the answer does not depend on arrival order.
    """

    dest: str
    ref: str
    sku: str
    shipped: int = 0  # units sent by transfer_out events (positive)
    received: int = 0  # units taken in by transfer_in events
    out_from: str | None = None  # where the transfer_out events happened
    out_to: str | None = None  # their attrs["to"]
    in_to: str | None = None  # where the transfer_in events happened
    in_from: str | None = None  # their attrs["from"]
    shipped_at_ms: int | None = None  # the earliest wall ms of its transfer_out events: it is open since then
    closed_at: int | None = None  # the earliest of final_at and its receipt back's final receipt; None: open
    shippers: str = ""  # every location its transfer_out events happened at, sorted, comma-separated
    final_at: int | None = None  # the earliest occurred_at of its own final receipt (attrs {"final": true})
    # A shipment's: the units its shipper received back (``settle_returns``); a receipt at a shipper's: the units of
    # it that are receipts back of the shipper's shipment elsewhere (all it received, or none).
    returned: int = 0
    # Adjusts carrying its ref where it was received (−Σ qty): an adjust down books units out again, one up corrects
    # a book-out (−5, then +2 as only 3 were sent on). Net, it may be below 0 (an adjust up alone); what counts as
    # booked out is ``booked_out_net``, never below 0: an adjust up is no receipt.
    booked_out: int = 0

    @property
    def moved(self) -> bool:
        """A shipment or a receipt of it is stored, not only adjusts carrying its ref: an adjust alone makes no
        transfer (a POS's stock-take or damage note number is a ref too), and books out only a receipt of it."""
        return bool(self.shippers) or self.in_to is not None

    @property
    def shipper_list(self) -> list[str]:
        return self.shippers.split(",") if self.shippers else []

    @property
    def from_location(self) -> str | None:
        return self.out_from if self.out_from is not None else self.in_from

    @property
    def to_location(self) -> str | None:
        return self.in_to if self.in_to is not None else self.out_to

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    @property
    def in_transit(self) -> int:
        return 0 if self.closed else max(0, self.shipped - self.received - self.returned)

    @property
    def written_off(self) -> int:
        """Units shipped and neither received nor received back, written off when a final receipt (at the
        destination, or back at the shipper) closed the transfer."""
        return max(0, self.shipped - self.received - self.returned) if self.closed else 0

    @property
    def booked_out_net(self) -> int:
        """The units booked out again where it was received, net of adjusts up carrying the ref; 0 if those are more."""
        return max(0, self.booked_out)

    @property
    def unmatched(self) -> int:
        """Units received where nothing of the ref was shipped that are neither a receipt back at their shipper nor
        booked out again (the wrong store's adjust carrying the ref): 0 for a shipment's transfer. An adjust up
        carrying the ref is no receipt: it lists nothing more (hub.storage.exceptions' rule says the same)."""
        return max(0, self.received - self.returned - self.booked_out_net) if self.shipped == 0 else 0

    def _data(self) -> dict[str, Any]:
        return (
            {
                "ref": self.ref,
                "from": self.from_location,
                "to": self.to_location,
                "shipped": self.shipped,
                "received": self.received,
            }
            | ({"shippers": self.shipper_list} if len(self.shipper_list) > 1 else {})
            | ({"returned": self.returned} if self.returned and self.shipped else {})
            | ({"booked_out": self.booked_out_net} if self.booked_out_net else {})
        )

    def finding(self) -> Finding | None:
        shipped, received = self.shipped, self.received
        src = self.from_location or "an unknown location"
        dst = self.to_location or "an unknown location"
        data = self._data()
        shippers = self.shipper_list
        if len(shippers) > 1:  # said first: the quantities of a ref two locations used say little of either
            both = "both" if len(shippers) == 2 else "all"
            named = f"{', '.join(shippers[:-1])} and {shippers[-1]}"
            lost = f"; {self.written_off} are missing and were written off" if self.written_off else ""
            return Finding(
                "transfer_shared_ref",
                self.dest,
                self.sku,
                f"{named} {both} shipped {self.sku} to {self.dest} as transfer {self.ref} ({shipped} in all,"
                f" {received} received{lost}); one of them may have meant another transfer, or its credential"
                f" was misused: check with {'both' if len(shippers) == 2 else 'each'}.",
                data | ({"written_off": self.written_off, "closed": True} if self.written_off else {}),
            )
        back = f" and {src} received {self.returned} back" if self.returned and shipped else ""
        if self.written_off:
            closed_by = f"{src}'s receipt back" if self.final_at is None else dst
            return Finding(
                "transfer_short",
                self.to_location,
                self.sku,
                f"Transfer {self.ref} was closed by {closed_by} with {received} of the {shipped} {self.sku} "
                f"shipped by {src} received at {dst}{back}; {self.written_off} are missing and were written off.",
                data | {"written_off": self.written_off, "closed": True},
            )
        if self.unmatched:
            out = f" ({self.booked_out_net} of them booked out again there)" if self.booked_out_net else ""
            return Finding(
                "transfer_unmatched",
                self.to_location,
                self.sku,
                f"Transfer {self.ref}: {received} of {self.sku} were received at {dst}{out} "
                f"but no shipment of it from {src} to {dst} has been recorded.",
                data,
            )
        settled = received + (self.returned if shipped else 0)
        if shipped and settled > shipped:
            return Finding(
                "transfer_over",
                self.to_location,
                self.sku,
                f"Transfer {self.ref}: {dst} received {received} of {self.sku}{back} but {src} shipped only {shipped}.",
                data,
            )
        if 0 < settled < shipped:
            return Finding(
                "transfer_short",
                self.to_location,
                self.sku,
                f"Transfer {self.ref}: {src} shipped {shipped} of {self.sku} "
                f"but {dst} received only {received}{back}; {shipped - settled} are missing.",
                data,
            )
        return None

    def unknown_destination_finding(self) -> Finding:
        """``transfer_unknown_destination``: shipped to a location no credential of the hub is bound to and where
        nothing was ever booked (``S999``, ``s002`` for ``S002``), still open: no store will receive it, so its units
        would sit in transit to nowhere until overdue. Listed for the sender (whether the hub knows a location is
        the storage's to say, hub.storage.exceptions)."""
        src = self.from_location or "an unknown location"
        return Finding(
            "transfer_unknown_destination",
            self.from_location,
            self.sku,
            f"Transfer {self.ref}: {src} shipped {self.shipped} of {self.sku} to {self.out_to}, a location the hub"
            " does not know; no store will receive it: ship it again to the right location (or, if that is a new"
            " store, bind a credential to it).",
            self._data() | {"in_transit": self.in_transit},
        )

    def overdue_finding(self, now_ms: int, open_max_ms: int) -> Finding | None:
        """``transfer_overdue`` when the transfer is still open with units in transit more than
        ``open_max_ms`` after its first shipment (a clock the pure resolution does not have)."""
        if self.closed or self.in_transit <= 0 or self.shipped_at_ms is None:
            return None
        open_ms = now_ms - self.shipped_at_ms
        if open_ms <= open_max_ms:
            return None
        days = open_ms / 86_400_000
        return Finding(
            "transfer_overdue",
            self.to_location,
            self.sku,
            f"Transfer {self.ref}: {self.in_transit} of {self.sku} shipped from "
            f"{self.from_location or 'an unknown location'} to {self.to_location or 'an unknown location'} "
            f"{days:.1f} days ago are still in transit; receive them, or close the transfer with a final receipt.",
            self._data() | {"in_transit": self.in_transit, "shipped_at_ms": self.shipped_at_ms},
        )


LINKED_MAX = 10  # transfers of one ref and SKU to other destinations one finding names (the rest are left out)


def linked_finding(f: Finding, t: Transfer, others: Iterable[Transfer]) -> Finding:
    """``f``, the ``transfer_unmatched`` or ``transfer_overdue`` finding of ``t``, naming the transfers of its ref
    and SKU to other destinations that may be its other half: a receipt at a location nothing of the ref was
    shipped to names the shipments to elsewhere not received there in full (``shipped_elsewhere``: the truck may
    have dropped them at the wrong store), and an open shipment names the unmatched receipts of the ref elsewhere
    (``received_elsewhere``). Read from the transfers as they are, so it stays a function of the set of events;
    ``f`` as it is when none matches (or it is of another kind)."""
    mates = sorted((o for o in others if o.ref == t.ref and o.sku == t.sku and o.dest != t.dest), key=lambda o: o.dest)
    if f.kind == "transfer_unmatched":
        shipped = [o for o in mates if o.shipped > o.received + o.returned][:LINKED_MAX]
        if not shipped:
            return f
        told = "; ".join(
            f"{t.ref} was shipped to {o.dest} by {' and '.join(o.shipper_list) or 'an unknown location'} ({o.shipped}"
            f" units, {f'{o.received} received there' if o.received else 'not received there'}"
            f"{', closed short' if o.closed else ''})"
            for o in shipped
        )
        first = shipped[0]
        advice = (
            f" If it arrived here by mistake, book it out here with an adjust of -{t.unmatched or t.received} carrying"
            f" the ref {t.ref} (received by mistake; it then leaves this list) and send it on to {first.dest} with"
            f" {t.ref}'s papers, for {first.dest} to receive as {t.ref} (not as a transfer {t.ref} of this store's:"
            f" {first.dest} would then expect it twice)."
        )
        data = [
            {"to": o.dest, "from": o.from_location, "shipped": o.shipped, "received": o.received, "closed": o.closed}
            for o in shipped
        ]
        return replace(f, detail=f"{f.detail} Transfer {told}.{advice}", data=f.data | {"shipped_elsewhere": data})
    if f.kind == "transfer_overdue":
        received = [o for o in mates if o.unmatched > 0][:LINKED_MAX]
        if not received:
            return f
        told = "; ".join(f"{o.dest} received {o.received} of {t.sku} as {t.ref}" for o in received)
        advice = (
            f" with no shipment to it: if that is this one, {received[0].dest} sends it on here (see its"
            " transfer_unmatched)."
        )
        data = [{"at": o.dest, "received": o.received} for o in received]
        return replace(f, detail=f"{f.detail} {told}{advice}", data=f.data | {"received_elsewhere": data})
    return f


TRANSFER_QTY_MAX = _TRANSFER_QTY_MAX  # units of one SKU one transfer event may move (protocol.event)


def transfer_problem(ev: StockEvent) -> str | None:
    """Why the hub refuses a transfer event, or None: a transfer_out names a destination (attrs "to")
    that is a location code other than its own location; a transfer_in's attrs "from", when given, is
    such a code too, and "final" is true or absent; one event moves at most TRANSFER_QTY_MAX units."""
    if ev.kind not in (Kind.TRANSFER_OUT, Kind.TRANSFER_IN):
        return None
    what = f"{ev.kind.value} {ev.ref} of {ev.sku} at {ev.location}"
    if abs(ev.qty) > TRANSFER_QTY_MAX:
        return f"{what} moves {abs(ev.qty)} units; one transfer event moves at most {TRANSFER_QTY_MAX}"
    side, other = ("to", ev.attrs.get("to")) if ev.kind is Kind.TRANSFER_OUT else ("from", ev.attrs.get("from"))
    if other is None and ev.kind is Kind.TRANSFER_OUT:
        return f"{what} names no destination; set attrs.to to the receiving location's code"
    if other is not None and not is_location(other):
        return f"{what} has attrs.{side} {str(other)[:40]!r}, which is not a location code"
    if other == ev.location:
        return f"{what} names its own location as attrs.{side}; a transfer moves stock between two locations"
    if ev.kind is Kind.TRANSFER_IN and ev.attrs.get("final", True) is not True:
        return f"{what} has attrs.final {ev.attrs.get('final')!r}; set it to true on the last receipt, or leave it out"
    return None


def is_final_receipt(ev: StockEvent) -> bool:
    """A transfer_in that closes its transfer: attrs {"final": true}."""
    return ev.kind is Kind.TRANSFER_IN and ev.attrs.get("final") is True


def transfer_key(ev: StockEvent) -> TransferKey | None:
    """The transfer an event is part of, from the event alone: (destination, ref, sku), the destination being a
    transfer_out's attrs.to and a transfer_in's own location; an adjust carrying a ref of its own (not its source,
    as a session's events without one do) books out what was received there under that ref (``books_out``).
    None for other events, and for a transfer_out without a valid destination (``transfer_problem`` refuses it)."""
    if ev.ref is None:
        return None
    if ev.kind is Kind.TRANSFER_IN or books_out(ev):
        return (ev.location, ev.ref, ev.sku)
    if ev.kind is Kind.TRANSFER_OUT and (dest := transfer_destination(ev)) is not None:
        return (dest, ev.ref, ev.sku)
    return None


def books_out(ev: StockEvent) -> bool:
    """An adjust that books units received under a transfer ref out again at its location (a receipt at the wrong
    store, sent on to the store its shipment named): it carries a ref other than its source."""
    return ev.kind is Kind.ADJUST and ev.ref is not None and ev.ref != ev.source


def transfer_destination(ev: StockEvent) -> str | None:
    """The destination a transfer_out names in attrs["to"], if it is a location code."""
    to = ev.attrs.get("to") if ev.kind is Kind.TRANSFER_OUT else None
    return to if is_location(to) else None


def tally_transfer(t: Transfer, ev: StockEvent) -> Transfer:
    if ev.kind is Kind.TRANSFER_OUT:
        return replace(
            t,
            shipped=t.shipped - ev.qty,
            out_from=_min_opt(t.out_from, ev.location),
            out_to=_min_opt(t.out_to, transfer_destination(ev)),
            shippers=_with_shipper(t.shippers, ev.location),
            shipped_at_ms=_min_int(t.shipped_at_ms, ev.wall_ms),
        )
    if ev.kind is Kind.TRANSFER_IN:
        frm = ev.attrs.get("from")
        return replace(
            t,
            received=t.received + ev.qty,
            in_to=_min_opt(t.in_to, ev.location),
            in_from=_min_opt(t.in_from, frm if is_location(frm) else None),
            closed_at=_min_int(t.closed_at, ev.occurred_at) if is_final_receipt(ev) else t.closed_at,
            final_at=_min_int(t.final_at, ev.occurred_at) if is_final_receipt(ev) else t.final_at,
        )
    if books_out(ev):
        return replace(t, booked_out=t.booked_out - ev.qty)
    return t


def settle_returns(rows: Iterable[Transfer]) -> list[Transfer]:
    """The transfers of one ref and SKU (every destination's) with their receipts back counted: a receipt at a
    location nothing of the ref was shipped to, which alone shipped the ref elsewhere, is its receipt back (a
    shipment cancelled before it left, or sent back), unless it names another source (attrs.from) than that
    destination: its units count against that shipment (``returned``; the first destination in code order when it
    shipped to several), and a final one closes it (``closed_at``, the earlier of that and its own final receipt's
    ``final_at``); what is neither received nor back is then written off. A shipment several locations shipped (a
    shared ref) is no one shipper's to take back. A function of the rows, whatever order their events came in;
    rows nothing changed are returned as given."""
    rows = list(rows)
    counted: set[str] = set()
    returned: dict[str, int] = defaultdict(int)
    back_at: dict[str, int] = {}
    for b in sorted((t for t in rows if t.shipped == 0 and t.received > 0), key=lambda t: t.dest):
        target = min(
            (t.dest for t in rows if t.shipped > 0 and t.shippers == b.dest and b.in_from in (None, t.dest)),
            default=None,
        )
        if target is None:
            continue
        counted.add(b.dest)
        returned[target] += b.received
        if b.final_at is not None:
            back_at[target] = _min_int(back_at.get(target), b.final_at)
    out = []
    for t in rows:
        back = t.received if t.dest in counted else returned.get(t.dest, 0)
        at = back_at.get(t.dest)
        closed_at = t.final_at if at is None else _min_int(t.final_at, at)
        out.append(
            t if (back, closed_at) == (t.returned, t.closed_at) else replace(t, returned=back, closed_at=closed_at)
        )
    return out


def _with_shipper(shippers: str, location: str) -> str:
    """``shippers`` (sorted codes, comma-separated) with ``location`` among them."""
    codes = set(shippers.split(",")) if shippers else set()
    if location in codes:
        return shippers
    return ",".join(sorted(codes | {location}))


def _min_int(a: int | None, b: int) -> int:
    return b if a is None or b < a else a


# --- bundles -------------------------------------------------------------------

Parts: TypeAlias = Mapping[str, int]  # SKU -> units of it in one bundle

BUNDLE_ATTR = "bundle"  # on a part's movement: the bundle SKU it was booked for
BUNDLE_EVENT_ATTR = "bundle_event"  # … the bundle movement's event id, as text
PER_BUNDLE_ATTR = "per_bundle"  # … units of the part in one bundle
BUNDLE_ATTRS = frozenset({BUNDLE_ATTR, BUNDLE_EVENT_ATTR, PER_BUNDLE_ATTR})
BUNDLE_PARTS_MAX = 100  # plain SKUs one bundle is made of, nested bundles included
BUNDLE_DEPTH_MAX = 8  # bundles inside bundles inside …
COMPONENT_UNITS_MAX = 10_000  # units of one component a recipe may name


class RecipeError(ValueError):
    """Recipes that cannot be flattened (a cycle, too deep, too many parts); the message says which."""


def flatten(recipes: Mapping[str, Parts], first: str | None = None) -> dict[str, dict[str, int]]:
    """Every bundle's parts in plain SKUs: a component that is itself a bundle is replaced by its own
    parts times its units, recursively (so one bundle inside another moves its own parts).

    ``recipes``: bundle SKU -> components as set. ``RecipeError`` names a cycle (a bundle inside
    itself), a nesting deeper than ``BUNDLE_DEPTH_MAX``, more than ``BUNDLE_PARTS_MAX`` parts, or a
    part whose units exceed ``protocol.QTY_MAX``; with ``first``, from that bundle's point of view."""
    out: dict[str, dict[str, int]] = {}

    def visit(sku: str, path: tuple[str, ...]) -> dict[str, int]:
        done = out.get(sku)
        if done is not None:
            return done
        if sku in path:
            cycle = " → ".join((*path[path.index(sku) :], sku))
            raise RecipeError(f"the recipes would put a bundle inside itself: {cycle}")
        if len(path) >= BUNDLE_DEPTH_MAX:
            raise RecipeError(
                f"the recipes nest bundles more than {BUNDLE_DEPTH_MAX} deep ({' → '.join((*path, sku))})"
            )
        parts: dict[str, int] = {}
        for component, units in recipes[sku].items():
            inner = visit(component, (*path, sku)) if component in recipes else {component: 1}
            for part, each in inner.items():
                parts[part] = parts.get(part, 0) + units * each
        if len(parts) > BUNDLE_PARTS_MAX:
            raise RecipeError(f"bundle {sku} would be made of {len(parts)} SKUs; the limit is {BUNDLE_PARTS_MAX}")
        for part, units in parts.items():
            if units > QTY_MAX:
                raise RecipeError(f"bundle {sku} would hold {units} of {part}; the limit is {QTY_MAX}")
        out[sku] = dict(sorted(parts.items()))
        return out[sku]

    for sku in ([first] if first is not None and first in recipes else []) + sorted(recipes):
        visit(sku, ())
    return out


def describe_parts(parts: Parts) -> str:
    """``2 × A, 1 × C`` (at most 5 named)."""
    named = [f"{units} × {sku}" for sku, units in sorted(parts.items())[:5]]
    return ", ".join(named) + (f" and {len(parts) - 5} more" if len(parts) > 5 else "")


def bundle_problem(ev: StockEvent, parts: Parts) -> str | None:
    """Why a movement of a bundle made of ``parts`` cannot be booked on them, or None.

    A count is refused: the number of bundles counted cannot say how many of each part stand on the
    shelf, loose or packed. Every other kind is booked on the parts, unless a part's quantity would
    break the event contract (``QTY_MAX``, a transfer's ``TRANSFER_QTY_MAX``) or the hub's three attrs
    would not fit beside the movement's own."""
    what = f"{ev.kind.value} of {abs(ev.qty)} {ev.sku} at {ev.location}"
    if ev.kind is Kind.COUNT:
        return (
            f"{ev.sku} is a bundle ({describe_parts(parts)}), so a count of it cannot say how many of each "
            "part are on the shelf; count its parts instead"
        )
    own = sum(1 for key in ev.attrs if key not in BUNDLE_ATTRS)
    if own + len(BUNDLE_ATTRS) > ATTRS_MAX_KEYS:
        return (
            f"the {what} carries {own} attrs; a bundle's movement may carry at most "
            f"{ATTRS_MAX_KEYS - len(BUNDLE_ATTRS)}, as the hub adds {', '.join(sorted(BUNDLE_ATTRS))} to each part's"
        )
    limit = TRANSFER_QTY_MAX if ev.kind in (Kind.TRANSFER_OUT, Kind.TRANSFER_IN) else QTY_MAX
    for sku, units in sorted(parts.items()):
        if abs(ev.qty) * units > limit:
            return f"the {what} would move {abs(ev.qty) * units} of its part {sku}; one movement moves at most {limit}"
    return None


def component_event_id(ev: StockEvent, sku: str) -> bytes:
    """The id of the movement of part ``sku`` a bundle movement is booked as: derived from the bundle
    movement's namespaced id (agent_id, event_id) and the part, so a resend books nothing twice."""
    key = b"\x1f".join((b"bundle", ev.agent_id.encode(), ev.event_id, sku.encode()))
    return derived_event_id(int.from_bytes(ev.event_id[:6], "big"), key)


def expand(ev: StockEvent, parts: Parts) -> tuple[StockEvent, ...]:
    """The movements of its parts a bundle movement is booked as (check ``bundle_problem`` first): the same
    agent, seq, location, kind, time, source, ref and reason; qty × units; attrs with the bundle's SKU, its
    movement's id and the units per bundle added (``BUNDLE_ATTRS``). In part SKU order."""
    attrs = {k: v for k, v in ev.attrs.items() if k not in BUNDLE_ATTRS}
    attrs[BUNDLE_ATTR] = ev.sku
    attrs[BUNDLE_EVENT_ATTR] = event_id_hex(ev.event_id)
    out = []
    for sku, units in sorted(parts.items()):
        part = StockEvent(
            component_event_id(ev, sku), ev.agent_id, ev.epoch, ev.seq, ev.location, sku, ev.kind, ev.qty * units,
            ev.occurred_at, ev.wall_ms, ev.source, ev.ref, ev.reason, attrs | {PER_BUNDLE_ATTR: units},
        )  # fmt: skip
        out.append(part)
    return tuple(out)


def bundle_counts(parts: Parts, rows: Mapping[str, tuple[int, int, int, int]]) -> tuple[int, int, int]:
    """A bundle's (on_hand, reserved, in_transit) at one location from its parts' (on_hand, reserved,
    in_transit, safety_stock) there (a part without a row: all 0).

    on_hand and in_transit are the whole bundles the parts make (min of ⌊units ÷ units per bundle⌋, never
    below 0); ``reserved`` is what the parts' reservations and safety stocks hold back of that on_hand, so
    that available = on_hand − reserved − the bundle's own safety stock = min over parts of
    ⌊part available ÷ units per bundle⌋ − that safety stock."""
    zero = (0, 0, 0, 0)
    on_hand = min((max(0, rows.get(sku, zero)[0]) // units for sku, units in parts.items()), default=0)
    usable = min((available(*_oh_res_ss(rows.get(sku, zero))) // units for sku, units in parts.items()), default=0)
    in_transit = min((max(0, rows.get(sku, zero)[2]) // units for sku, units in parts.items()), default=0)
    return on_hand, on_hand - usable, in_transit


def _oh_res_ss(row: tuple[int, int, int, int]) -> tuple[int, int, int]:
    return row[0], row[1], row[3]


@dataclass(frozen=True, slots=True)
class BundleBook:
    """What resolution knows of bundles: each bundle's parts now (``flatten``), and the parts that applied to
    the movements the hub expanded under an earlier recipe (event id -> parts; None: booked as a plain SKU,
    before it was a bundle). A movement not in ``fixed`` is expanded by the parts of now, if any."""

    recipes: Mapping[str, Parts] = field(default_factory=dict)
    fixed: Mapping[bytes, Parts | None] = field(default_factory=dict)

    def parts_for(self, ev: StockEvent) -> Parts | None:
        if ev.event_id in self.fixed:
            return self.fixed[ev.event_id]
        return self.recipes.get(ev.sku)


# --- the resolution ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StockState:
    location: str
    sku: str
    on_hand: int
    reserved: int
    in_transit: int
    safety_stock: int
    last_count: OrderKey | None

    @property
    def available(self) -> int:
        return available(self.on_hand, self.reserved, self.safety_stock)


@dataclass(frozen=True, slots=True)
class Resolution:
    stock: Mapping[StockKey, StockState]
    effects: Mapping[bytes, Effect]  # event_id -> effect
    variances: Mapping[bytes, int]  # event_id of each count -> counted − expected
    transfers: Mapping[TransferKey, Transfer]
    reservations: Mapping[ReservationKey, Reservation]
    findings: tuple[Finding, ...]


def resolve(
    events: Iterable[StockEvent],
    safety_stock: Mapping[StockKey, int] | None = None,
    bundles: BundleBook | None = None,
) -> Resolution:
    """Resolve a set of events (duplicates allowed; one content per event id).

    The stock keys are every (location, sku) with an event, every destination a
    transfer_out names, every key given a safety stock, and each bundle of
    ``bundles`` wherever one of its parts has a key. A movement of a bundle is
    expanded into its parts' movements (effect "expanded"); a count of one is
    rejected (effect "rejected"), as the hub refuses it.
    """
    unique: dict[bytes, StockEvent] = {}
    for ev in events:
        seen = unique.setdefault(ev.event_id, ev)
        if seen is not ev and seen.content_hash != ev.content_hash:
            raise ValueError(f"two different events share the id {ev.event_id.hex()}; resolve needs one per id")

    effects: dict[bytes, Effect] = {}
    keys: set[StockKey] = set(safety_stock or ())
    book = bundles or BundleBook()
    if book.recipes or book.fixed:
        for ev in list(unique.values()):
            parts = book.parts_for(ev)
            if parts is None:
                continue
            del unique[ev.event_id]
            if bundle_problem(ev, parts) is not None:
                effects[ev.event_id] = Effect.REJECTED
                continue
            effects[ev.event_id] = Effect.EXPANDED
            keys.add((ev.location, ev.sku))
            unique.update((part.event_id, part) for part in expand(ev, parts))

    by_key: dict[StockKey, list[StockEvent]] = defaultdict(list)
    reservations: dict[ReservationKey, Reservation] = {}
    transfers: dict[TransferKey, Transfer] = {}
    for ev in unique.values():
        by_key[(ev.location, ev.sku)].append(ev)
        if (rkey := reservation_key(ev)) is not None:
            reservations[rkey] = tally_reservation(reservations.get(rkey, Reservation()), ev)
        if (tkey := transfer_key(ev)) is not None:
            transfers[tkey] = tally_transfer(transfers.get(tkey) or Transfer(*tkey), ev)
            if (dest := transfer_destination(ev)) is not None:
                keys.add((dest, ev.sku))
    keys.update(by_key)
    transfers = {k: t for k, t in transfers.items() if t.moved}  # adjusts alone carrying a ref: no transfer
    by_pair: dict[tuple[str, str], list[Transfer]] = defaultdict(list)
    for t in transfers.values():
        by_pair[t.ref, t.sku].append(t)
    for pair in by_pair.values():
        transfers.update(((t.dest, t.ref, t.sku), t) for t in settle_returns(pair))

    reserved: dict[StockKey, int] = defaultdict(int)
    for (location, sku, _ref), res in reservations.items():
        reserved[(location, sku)] += res.open
    in_transit: dict[StockKey, int] = defaultdict(int)
    for t in transfers.values():
        if t.to_location is not None:
            in_transit[(t.to_location, t.sku)] += t.in_transit

    variances: dict[bytes, int] = {}
    stock: dict[StockKey, StockState] = {}
    for bundle, parts in book.recipes.items():
        keys.update((location, bundle) for location, sku in list(keys) if sku in parts)
    for key in sorted(keys):
        evs = sorted(by_key.get(key, ()), key=order_key)
        last_count = max((i for i, ev in enumerate(evs) if ev.kind is Kind.COUNT), default=-1)
        running = 0  # on_hand just after each event: the expected quantity at the next count
        for i, ev in enumerate(evs):
            if ev.kind is Kind.COUNT:
                variances[ev.event_id] = ev.qty - running
                running = ev.qty
                effects[ev.event_id] = Effect.APPLIED
            elif ev.kind in ON_HAND_KINDS:
                running += ev.qty
                effects[ev.event_id] = Effect.SUPERSEDED if i < last_count else Effect.APPLIED
            else:
                effects[ev.event_id] = Effect.APPLIED
        stock[key] = StockState(
            key[0],
            key[1],
            on_hand=running,
            reserved=reserved[key],
            in_transit=in_transit[key],
            safety_stock=(safety_stock or {}).get(key, 0),
            last_count=order_key(evs[last_count]) if last_count >= 0 else None,
        )

    for (location, sku), state in list(stock.items()):
        parts = book.recipes.get(sku)
        if parts is not None:  # a bundle: its counts are its parts'
            here = {
                part: (row.on_hand, row.reserved, row.in_transit, row.safety_stock)
                for part in parts
                if (row := stock.get((location, part))) is not None
            }
            made, held_back, moving = bundle_counts(parts, here)
            stock[(location, sku)] = replace(state, on_hand=made, reserved=held_back, in_transit=moving)

    findings = [f for s in stock.values() if (f := negative_on_hand_finding(s.location, s.sku, s.on_hand))]
    by_ref: dict[tuple[str, str], list[Transfer]] = defaultdict(list)
    for t in transfers.values():
        by_ref[t.ref, t.sku].append(t)
    findings += [linked_finding(f, t, by_ref[t.ref, t.sku]) for _, t in sorted(transfers.items()) if (f := t.finding())]
    return Resolution(stock, effects, variances, transfers, reservations, tuple(findings))
