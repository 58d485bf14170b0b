"""The incremental ingest algorithm every storage backend shares.

A batch is first checked against its sender (``prepare_batch``: pure, outside
any transaction), then applied through an ``IngestTx`` — a dozen set-based
reads and writes a backend runs inside its one write transaction
(``apply_batch``). This module decides what to read and write so that, after
any delivery (any order, any duplicates, any batching), the stored state equals
``hub.resolver.resolve`` of every stored event — at O(batch) cost when events
arrive roughly in order, and with indexed range queries for the late cases:

* in order (every new delta/count of a key is ordered after the newest one
  stored): on_hand and the variance of each new count follow by adding up the
  batch in memory.
* late: new deltas ordered before the last count are stored as superseded; if
  the last count moved, on_hand is that count plus one indexed SUM after it;
  only the counts whose window received an event get their variance
  recomputed.

A new count never rewrites the stored deltas it passes: a delta is superseded
exactly when it is ordered before its key's last count, which the stock row
holds, so the ledger derives that effect when it reads (each backend's
``EFFECT_NOW``). Rewriting them cost a tenth of the ingest time, and a
scattered page write each.

Every key whose on_hand, reserved, available or in_transit changed gets one
``NewChange`` row appended to the change feed (``IngestTx.append_changes``) in
the same transaction. The answer's ``hwm`` is the mark from before the batch
when the sender's acknowledged mark is above it (the hub was restored from an
older copy: the sender must rewind and resend).

An event is identified by (agent_id, event_id): ids are namespaced by the
sending credential (``prepare_batch`` accepts only events naming the sender),
so no credential can pre-empt or shadow another's. Two deliveries of one id are
the same event iff their movement content — ``EventRow`` from ``location`` on
(``CONTENT_FROM``) — is equal: epoch and seq are delivery data (an outbox that
forked to a new epoch resends its rows under their old seqs) and the stored
event keeps its first. The comparison reads the stored row only for ids already
stored, so new events cost no hashing.

Each (agent_id, epoch) mark is stored with the sender's lineage digest at that
mark (``protocol.SyncRequest.chain``), answered back so the agent can tell
whether the hub's mark is its own lineage (see agent.outbox); an epoch seen for
the first time starts at the sender's ``epoch_base`` instead of 0.

Bundles (schema version 6): a new movement of a bundle SKU is booked, in the
same transaction, as movements of its parts under the recipe in force
(``hub.resolver.expand``: ids derived from the bundle movement's namespaced id,
so a resend books nothing twice); the bundle movement is stored as *expanded*
with its expansion (``IngestTx.insert_expansions``), fixed from then on. After
the parts' rows moved, the rows of every bundle made of them follow
(``hub.resolver.bundle_counts``) and get their change-feed rows like any key.
``apply_recipe`` sets a recipe (a new version; the bundles' rows follow) and
``refresh_bundles`` follows a change made outside ingest (a safety stock).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple, Protocol, TypeAlias

from hub.clock_window import ClockWindow
from hub.resolver import (
    ORDERED_KINDS,
    RESERVATION_KINDS,
    Effect,
    OrderKey,
    RecipeError,
    Reservation,
    ReservationKey,
    StockKey,
    Transfer,
    TransferKey,
    available,
    books_out,
    bundle_counts,
    bundle_problem,
    describe_parts,
    expand,
    flatten,
    order_key,
    reservation_key,
    settle_returns,
    tally_reservation,
    tally_transfer,
    transfer_destination,
    transfer_key,
    transfer_problem,
)
from hub.storage.base import (
    CHANGE_EVENT_IDS_MAX,
    INGEST_ROLES,
    AgentIdentity,
    Bundle,
    BundleConflict,
    BundleRecipe,
    Forbidden,
    IngestResult,
    InvalidInput,
    Lineage,
)
from hub.storage.held import HubClockFinding, finding_covers
from protocol import (
    ON_HAND_KINDS,
    CountSnapshot,
    DiskReport,
    Kind,
    LostReport,
    ProtocolError,
    Rejection,
    StockEvent,
    event_id_hex,
    stored_reason,
)
from protocol.codec import chain_over

# (agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs JSON or None)
EventRow: TypeAlias = tuple[Any, ...]
CONTENT_FROM = 3  # EventRow[CONTENT_FROM:] is an event's movement content; agent_id is the key, epoch and seq delivery


def attrs_json(attrs: Mapping[str, Any]) -> str:
    return json.dumps(dict(attrs), separators=(",", ":"))


def event_row(ev: StockEvent) -> EventRow:
    """What a backend stores of an event besides its id, in column order; ``kind`` as its
    plain string (a driver binds an exact ``str`` without looking for an adapter). The event is
    unpacked in one step: thirteen field lookups by name took a third more (one call per event). The book-out
    reason is stored in the hub's words whatever its capitals and spaces (``protocol.stored_reason``): the ledger's
    partial indexes of book-outs (schema 26) and the lists match that text."""
    _, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, ref, reason, attrs = ev
    return (
        agent_id, epoch, seq, location, sku, KIND_TEXT[kind], qty, occurred_at, wall_ms, source, ref,
        stored_reason(reason), attrs_json(attrs) if attrs else None,
    )  # fmt: skip


KIND_TEXT: dict[Kind, str] = {k: k.value for k in Kind}
_COUNT, _APPLIED, _SUPERSEDED = Kind.COUNT, Effect.APPLIED, Effect.SUPERSEDED  # a member lookup per use is slow
_EVENT_ID = attrgetter("event_id")
_SEQ, _WALL_MS = attrgetter("seq"), attrgetter("wall_ms")
_SENDER = attrgetter("agent_id", "epoch", "location")  # what _all_clean checks of each event
_ORDER_KEY = attrgetter("occurred_at", "agent_id", "seq", "event_id")  # hub.resolver.order_key, without a call
EFFECT_TEXT: dict[Effect, str] = {e: e.value for e in Effect}


class StockRow(NamedTuple):
    """The resolved state of one (location, sku) as a backend stores it (a tuple: hundreds are built per batch)."""

    location: str
    sku: str
    on_hand: int = 0
    reserved: int = 0
    in_transit: int = 0
    safety_stock: int = 0
    last_count: OrderKey | None = None
    max_key: OrderKey | None = None  # the newest delta or count stored: later arrivals are in order
    updated_at_ms: int = 0

    def snapshot(self) -> CountSnapshot:
        on_hand, reserved = self[2], self[3]  # (tuple.__new__: without the named tuple's argument handling)
        return _TUPLE_NEW(CountSnapshot, (self[0], self[1], on_hand, reserved, available(on_hand, reserved, self[5]), self[4]))


def _new_row(row: StockRow, on_hand: int, max_key: OrderKey) -> StockRow:
    """``row`` with this on_hand and newest key (``_replace`` without its keyword handling: hundreds per batch)."""
    return _TUPLE_NEW(StockRow, (row[0], row[1], on_hand, row[3], row[4], row[5], row[6], max_key, row[8]))


_TUPLE_NEW = tuple.__new__


def stock_row(r: Sequence[Any]) -> StockRow:
    """The stock row of a row read from the table (its columns in ``STOCK_FIELDS`` order), built in one step:
    a batch reads hundreds, and the named tuple's own constructor took a third of the time."""
    last_count = None if r[6] is None else (r[6], r[7], r[8], r[9])
    max_key = None if r[10] is None else (r[10], r[11], r[12], r[13])
    return _TUPLE_NEW(StockRow, (r[0], r[1], r[2], r[3], r[4], r[5], last_count, max_key, r[14]))


@dataclass(frozen=True, slots=True)
class CountPoint:
    key: OrderKey
    qty: int


class NewChange(NamedTuple):
    """One change-feed row to append: the key's new counts and (some of) the events that caused it
    (a tuple: hundreds are built per batch)."""

    snapshot: CountSnapshot
    event_ids: tuple[bytes, ...]  # at most CHANGE_EVENT_IDS_MAX, in resolution order


# (event_id, row, effect, variance); variance is None for a count whose variance follows the insert
NewEvent: TypeAlias = tuple[bytes, EventRow, Effect, int | None]


class BundleParts(NamedTuple):
    """A bundle's recipe in force: its version and its parts (plain SKU -> units per bundle, by SKU)."""

    version: int
    parts: dict[str, int]


# (agent_id, event_id, recipe version, parts as JSON) of a bundle movement: how it was booked
NewExpansion: TypeAlias = tuple[str, bytes, int, str]


@dataclass(frozen=True, slots=True)
class RejectedAttempt:
    event: StockEvent
    row: EventRow
    code: str  # "invalid", "forbidden_location", "conflict", "invalid_transfer"; "quarantined" (see Batch)
    reason: str

    @property
    def content_hash(self) -> bytes:
        return self.event.content_hash


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch checked against its sender, before any database work."""

    who: AgentIdentity
    epoch: int
    accepted: tuple[tuple[StockEvent, EventRow], ...]  # for the sender's locations, in batch order
    refused: tuple[RejectedAttempt, ...]
    max_seq: int  # every event counts as processed, refused ones too
    max_wall_ms: int | None
    acked_seq: int = 0  # the sender's acknowledged mark (see the module doc)
    backlog: int | None = None  # the sender's report of events not yet acknowledged; None: not reported
    oldest_pending_ms: int | None = None  # wall ms of the oldest of them, as reported
    lineage: Lineage | None = None  # the sender's lineage report; None: a sender from before lineages
    # Clock window (schema version 5): events stamped outside it, held for an operator (answered "quarantined",
    # processed for the mark, never applied); the sender's wall clock when it sent (its skew is measured from
    # it); an operator applying a quarantined event (no sender: no mark or sync is recorded).
    quarantined: tuple[RejectedAttempt, ...] = ()
    sent_ms: int | None = None
    operator: str | None = None
    after_seq: int | None = None  # the seq the batch follows on from, as the sender said (see _next_mark)
    peer: str | None = None  # the address the request came from, as the hub saw it (None: not known)
    credential: str | None = None  # the hash of the token ``who`` was found by, confirmed in the transaction
    disk: DiskReport | None = None  # the sender's report of its disk (schema version 21); None: not reported
    lost: LostReport | None = None  # the sender's report of movements the hub lacks for good (schema version 34)
    # The hub's own clock was this far off its stores' at receipt, the sender's with them (schema version 23):
    # kept with the events held, which are released at their own time once the hub's clock is right.
    hub_clock_off_ms: int | None = None
    # When something was held: the hub's time when it judged the batch (not knowing its clock off, another hub's
    # finding may cover it, ``hub.storage.held.finding_covers``; knowing it, when it read that, ``hub_clock_at_ms``
    # of ``HubStore.ingest``: the finding may have been found right since, ``IngestTx.note_hub_clock_off``); when the hub did not know its clock off, how many other stores put its
    # clock right then (``ClockWindow.vouched``; schema version 32).
    judged_ms: int | None = None
    hub_clock_vouched: int | None = None


class SyncNote(NamedTuple):
    """What a batch writes last for its sender: its mark raised to ``seq`` with ``chain`` (as ``advance_mark``)
    and the sync itself — time, clock skew and backlog report (as ``note_sync``)."""

    agent_id: str
    epoch: int
    seq: int
    chain: bytes | None
    now_ms: int
    clock_skew_ms: int | None
    backlog: int | None
    oldest_pending_ms: int | None
    sent_ms: int | None = None  # the sender's clock when it sent: the skew counts only if newer than any heard
    peer: str | None = None  # the address the request came from (None: not known), kept with the epoch's mark
    disk: DiskReport | None = None  # the sender's disk report (None: not reported: the one before stays)


class IngestTx(Protocol):
    """Reads and writes inside one open write transaction of a backend."""

    async def stored_rows(self, agent_id: str, event_ids: Sequence[bytes]) -> dict[bytes, EventRow]:
        """The stored ``EventRow`` of those of ``agent_id``'s ``event_ids`` already stored."""

    async def stock_rows(self, keys: Collection[StockKey]) -> dict[StockKey, StockRow]: ...

    async def transfer_rows(self, keys: Collection[TransferKey]) -> dict[TransferKey, Transfer]: ...

    async def transfers_of(self, pairs: Collection[tuple[str, str]]) -> dict[TransferKey, Transfer]:
        """Every stored transfer of these (ref, sku), whatever its destination (schema 25: a receipt back at the
        shipper counts against its shipment elsewhere, ``hub.resolver.settle_returns``)."""
        ...

    async def reservation_rows(self, keys: Collection[ReservationKey]) -> dict[ReservationKey, Reservation]: ...

    async def stored_sales(self, keys: Collection[ReservationKey]) -> dict[ReservationKey, int]:
        """Σ |qty| of the stored sales carrying each (location, sku, ref)."""

    async def stored_book_outs(self, keys: Collection[TransferKey]) -> dict[TransferKey, int]:
        """−Σ qty of the stored adjusts booking out each (destination, ref, sku) at its destination (``books_out``:
        the ref not their source; a bundle's own movement aside, its parts' count): those of no transfer yet."""

    async def insert_events(self, rows: Sequence[NewEvent], received_at_ms: int) -> None: ...

    async def add_duplicates(self, agent_id: str, counts: Mapping[tuple[str, bytes], int]) -> None:
        """Count resends: (location, event_id) of ``agent_id``'s stored events -> how many more times it came."""

    async def insert_rejections(self, rows: Sequence[RejectedAttempt], received_at_ms: int) -> None:
        """Keep refused attempts; the same attempt again only counts one more try."""

    async def sum_deltas(self, key: StockKey, after: OrderKey | None, before: OrderKey | None) -> int:
        """Σ qty of the on-hand deltas of ``key`` strictly between ``after`` and ``before`` (None: open)."""

    async def counts_from(self, key: StockKey, start: OrderKey) -> list[CountPoint]:
        """The last count of ``key`` before ``start`` (if any), then every count at or after it, in order."""

    async def set_variances(self, rows: Sequence[tuple[str, str, bytes, int]]) -> None:
        """(location, agent_id, event_id, variance) for counts."""

    async def save_transfers(self, rows: Sequence[Transfer], now_ms: int) -> None: ...

    async def save_reservations(self, rows: Mapping[ReservationKey, Reservation], now_ms: int) -> None: ...

    async def save_stock(self, rows: Sequence[StockRow], now_ms: int) -> None:
        """Upsert whole rows; ``updated_at_ms`` becomes ``now_ms``."""

    async def stock_stamped(self, key: StockKey, on_hand: int, now_ms: int) -> None:
        """A write other than ``save_stock`` (a safety stock set) set ``key``'s ``updated_at_ms`` to ``now_ms``; its
        ``on_hand`` is as it was."""

    async def advance_hwm(self, agent_id: str, epoch: int, seq: int, now_ms: int) -> int:
        """Raise the mark of (agent_id, epoch) to ``seq`` if higher; return the mark."""

    async def note_sync(
        self,
        agent_id: str,
        now_ms: int,
        clock_skew_ms: int | None,
        *,
        backlog: int | None = None,
        oldest_pending_ms: int | None = None,
        sent_ms: int | None = None,
        disk: DiskReport | None = None,
    ) -> None:
        """Record the sync's time and skew; when ``backlog`` is not None, also the sender's
        backlog report (``backlog``, ``oldest_pending_ms``, ``backlog_at_ms`` = ``now_ms``). A skew measured from
        ``sent_ms`` is kept only when ``sent_ms`` is newer than the newest heard from the agent. ``disk``: the
        sender's disk report (``hub.storage.sql.note_sync``); None leaves the one before."""

    async def note_lost(self, agent_id: str, lost: LostReport, now_ms: int) -> None:
        """Keep the sender's report of movements the hub lacks for good (``hub.storage.sql.note_lost``): the same
        report again changes nothing."""

    # The sender's acknowledged mark and the change feed:

    async def stored_hwm(self, agent_id: str, epoch: int) -> int:
        """The mark of (agent_id, epoch) as stored before this batch; 0 if none.
        Called before ``advance_hwm``, only when the sender states an acknowledged mark."""

    async def append_changes(self, rows: Sequence[NewChange], now_ms: int) -> None:
        """Append change-feed rows in the given order with increasing change ids
        (``at_ms`` = ``now_ms``); the backend guarantees a reader never sees a
        change id before every smaller one is visible."""

    # Lineage (schema version 4):

    async def stored_mark(self, agent_id: str, epoch: int) -> tuple[int, bytes | None] | None:
        """(mark, chain at the mark) of (agent_id, epoch) as stored before this batch; None: never seen."""

    async def top_mark(self, agent_id: str) -> tuple[int, bytes | None] | None:
        """(mark, chain at the mark) of the epoch of ``agent_id`` whose stored mark is highest; None: no epoch."""

    async def advance_mark(
        self, agent_id: str, epoch: int, seq: int, chain: bytes | None, now_ms: int, peer: str | None = None
    ) -> tuple[int, bytes | None]:
        """Raise the mark of (agent_id, epoch) to ``seq`` with ``chain`` if higher (create it at ``seq``
        when missing, first heard at ``now_ms``); note a sync at ``now_ms`` from ``peer`` (the one before it is
        kept: two copies of one agent, ``hub.storage.exceptions``); return the mark and its chain as stored now."""

    async def finish_sync(self, note: SyncNote) -> tuple[int, bytes | None, int]:
        """The batch's last step for its sender: ``advance_mark`` and ``note_sync`` as ``note`` says, then
        (mark, chain, ``held_pending``). A backend may send it as one statement with its other pending writes
        (``finish_in_steps`` is the plain way)."""

    # Clock window (schema version 5):

    async def held_pending(self, agent_id: str) -> int:
        """How many of ``agent_id``'s events wait in the clock quarantine for an operator."""

    async def held_status(self, agent_id: str, event_ids: Sequence[bytes]) -> dict[bytes, str]:
        """The quarantine status (pending, applied, discarded) of those of ``agent_id``'s ``event_ids`` ever held."""

    async def insert_quarantined(
        self, rows: Sequence[RejectedAttempt], received_at_ms: int, sent_ms: int | None = None,
        hub_clock_off_ms: int | None = None, hub_clock_vouched: int | None = None,
    ) -> None:  # fmt: skip
        """Hold events stamped outside the clock window, keyed by (agent_id, event_id), with the sender's clock
        when it sent them, how far the hub's own clock was then known off (None: not known) and how many other
        stores put it right (None: not more than half of them); the same event again only counts one more attempt
        (its first receipt time stays)."""

    async def hub_clock_finding(self) -> HubClockFinding | None:
        """What a hub process last found of the hub's own clock (schema version 32), read after waiting for a
        marking of what was held under way in another (``SqlHubStore.hub_clock_found``), whose lock it holds until
        the commit: a held event is either marked by that marking or reads its finding."""

    async def note_hub_clock_off(self, offset_ms: int, now_ms: int, judged_ms: int) -> HubClockFinding | None:
        """Before holding events because of the hub's clock, which this hub process found ``offset_ms`` off when it
        judged them at its time ``judged_ms``: have the finding kept for every hub process say so with this write
        (``hub.storage.held.NOTE_OFF_SQL``; its own marking, ``SqlHubStore.hub_clock_found``, may come after), so
        that no release reads the held events without it. Returns the finding as it is now (None only if it could
        not be read back): found right again after ``judged_ms`` (by another hub process), it stays so."""

    # Bundles (schema version 6):

    async def bundle_book(self, skus: Collection[str] | None) -> dict[str, BundleParts]:
        """The recipes in force of the bundles that are, or are made of, one of ``skus`` (None: all)."""

    async def insert_expansions(self, rows: Sequence[NewExpansion]) -> None: ...

    async def lock_recipes(self) -> None:
        """Before a recipe is set: keep every other stock write out until the commit."""

    async def recipes(self) -> dict[str, BundleRecipe]:
        """Every bundle's newest recipe version, as set."""

    async def insert_recipe(self, recipe: BundleRecipe) -> None: ...

    async def save_parts(self, rows: Mapping[str, BundleParts]) -> None:
        """Replace the parts in force of these bundles."""

    async def stock_keys_of(self, skus: Collection[str]) -> list[StockKey]:
        """The keys of the stock rows of these SKUs (every location that has one)."""

    async def has_events(self, key: StockKey) -> bool:
        """Whether any event of ``key`` is stored."""

    async def delete_stock(self, keys: Collection[StockKey]) -> None: ...

    async def settle_observed(
        self, stock: Mapping[StockKey, tuple[int, int | None]], earliest: Mapping[StockKey, int], bundles: bool = True
    ) -> None:
        """After stock rows moved (-> (on_hand, max_at) as written now) and events were stored (their keys -> the
        first of them in the order; ``bundles``: a bundle may be among the keys): the newest observations of
        those keys follow (``hub.storage.reports.settle_observed``)."""


def prepare_batch(
    who: AgentIdentity,
    epoch: int,
    events: Sequence[StockEvent],
    acked_seq: int = 0,
    *,
    backlog: int | None = None,
    oldest_pending_ms: int | None = None,
    lineage: Lineage | None = None,
    clock: ClockWindow | None = None,
    sent_ms: int | None = None,
    after_seq: int | None = None,
    peer: str | None = None,
    credential: str | None = None,
    disk: DiskReport | None = None,
    lost: LostReport | None = None,
) -> Batch:
    """Check a batch against its sender: pure, so it runs before the write transaction.

    Transfer events that break ``hub.resolver.transfer_problem`` are refused; with ``clock``, events
    stamped outside its window are held back (``Batch.quarantined``), ``sent_ms`` (the sender's clock when
    it sent) included in that window (``hub.clock_window.BEHIND``)."""
    if who.role not in INGEST_ROLES:
        raise Forbidden(f"{who.agent_id} holds a {who.role} credential, which may not send stock events")
    _check_report("backlog", backlog)
    _check_report("oldest_pending_ms", oldest_pending_ms)
    accepted: list[tuple[StockEvent, EventRow]] = []
    refused: list[RejectedAttempt] = []
    held: list[RejectedAttempt] = []
    clock = clock.with_sender(sent_ms) if clock is not None else None  # a sender's clock far behind: BEHIND
    if events and _all_clean(who, epoch, events, clock):  # the common case: one check per batch, not per event
        accepted = [(ev, event_row(ev)) for ev in events]
        events_left: Sequence[StockEvent] = ()
    else:
        events_left = events
    for ev in events_left:
        if ev.agent_id != who.agent_id or ev.epoch != epoch:
            reason = (
                f"event {event_id_hex(ev.event_id)} names agent {ev.agent_id} epoch {ev.epoch}, "
                f"but it was sent by {who.agent_id} in epoch {epoch}"
            )
            refused.append(RejectedAttempt(ev, event_row(ev), "invalid", reason))
        elif ev.location not in who.locations:
            bound = ", ".join(sorted(who.locations)) or "no location"
            reason = f"{who.agent_id} may not write stock at {ev.location}; it is bound to {bound}"
            refused.append(RejectedAttempt(ev, event_row(ev), "forbidden_location", reason))
        elif ev.ref is not None and (problem := transfer_problem(ev)) is not None:
            refused.append(RejectedAttempt(ev, event_row(ev), "invalid_transfer", problem))
        elif clock is not None and clock.outside(ev.occurred_at) is not None:
            reason = clock.reason(ev.occurred_at, "GET /v1/quarantine")
            held.append(RejectedAttempt(ev, event_row(ev), "quarantined", f"event {event_id_hex(ev.event_id)}: {reason}"))
        else:
            accepted.append((ev, event_row(ev)))
    return Batch(
        who,
        epoch,
        tuple(accepted),
        tuple(refused),
        max(map(_SEQ, events), default=0),
        max(map(_WALL_MS, events), default=None),
        acked_seq,
        backlog,
        oldest_pending_ms,
        lineage,
        tuple(held),
        sent_ms,
        after_seq=after_seq,
        peer=peer,
        credential=credential,
        disk=disk,
        lost=lost,
        hub_clock_off_ms=None if clock is None or not held else clock.hub_off_ms,
        judged_ms=None if clock is None or not held else clock.now_ms,
        hub_clock_vouched=None if clock is None or not held or clock.hub_off_ms is not None else clock.vouched,
    )


def _all_clean(who: AgentIdentity, epoch: int, events: Sequence[StockEvent], clock: ClockWindow | None) -> bool:
    """Whether ``prepare_batch`` accepts every event as it is: all of the sender and epoch, at its locations,
    no transfer refused, and (the window's rules being thresholds on the stamp) the earliest and the latest
    stamp inside the clock window."""
    senders = set(map(_SENDER, events))
    if any(a != who.agent_id or e != epoch or loc not in who.locations for a, e, loc in senders):
        return False
    if any(ev.ref is not None and transfer_problem(ev) is not None for ev in events):
        return False
    if clock is not None:
        stamps = [ev.occurred_at for ev in events]
        if clock.outside(min(stamps)) is not None or clock.outside(max(stamps)) is not None:
            return False
    return True


INT64_MAX = 2**63 - 1  # the largest figure of a backlog report the databases' integer columns hold


def _check_report(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX):
        raise InvalidInput(f"{name} must be a whole number from 0 to {INT64_MAX} or absent, got {value!r}")


@dataclass(slots=True)
class _Late:
    """What is left to do for one key after the insert when events arrived late."""

    events: list[StockEvent]  # the new deltas and counts of the key, in order
    recount: CountPoint | None  # the new last count, when it moved: on_hand restarts from it


def _plan_key(
    row: StockRow,
    fresh: list[StockEvent],
    effects: dict[bytes, Effect],
    variances: dict[bytes, int | None],
    reserved: int,
    in_transit: int,
) -> tuple[StockRow, _Late | None]:
    """Fold one key's new events (sorted) into its row, in memory.

    Returns the new row and the work left for after the insert if any event is
    late. ``effects`` gets the effect of every event that is not simply applied
    (an event missing from it is applied).
    """
    ordered = [ev for ev in fresh if ev.kind in ORDERED_KINDS]
    old_last, max_key, on_hand = row.last_count, row.max_key, row.on_hand
    new_last, late = old_last, None
    if ordered:
        count, applied = _COUNT, _APPLIED
        counts = [ev for ev in ordered if ev.kind is count]
        in_order = max_key is None or order_key(ordered[0]) > max_key
        newest = order_key(ordered[-1])
        max_key = newest if max_key is None or newest > max_key else max_key
        if in_order and not counts:  # the common case: deltas after everything stored, all applied
            on_hand += sum([ev.qty for ev in ordered])
        else:
            passed = None
            if counts and (old_last is None or order_key(counts[-1]) > old_last):
                new_last = order_key(counts[-1])
                passed = (old_last, new_last)
            for ev in ordered:
                if ev.kind is count or new_last is None or order_key(ev) > new_last:
                    effects[ev.event_id] = applied
                else:
                    effects[ev.event_id] = _SUPERSEDED
            if in_order:
                for ev in ordered:
                    if ev.kind is count:
                        variances[ev.event_id] = ev.qty - on_hand
                        on_hand = ev.qty
                    else:
                        on_hand += ev.qty
            else:
                for ev in counts:
                    variances[ev.event_id] = None
                if passed is not None:  # on_hand restarts from the new last count, after the insert
                    late = _Late(ordered, CountPoint(passed[1], counts[-1].qty))
                else:
                    late = _Late(ordered, None)
                    on_hand += sum(ev.qty for ev in ordered if ev.kind is not count and effects[ev.event_id] is applied)
    new_row = StockRow(
        row.location,
        row.sku,
        on_hand,
        row.reserved + reserved,
        row.in_transit + in_transit,
        row.safety_stock,
        new_last,
        max_key,
        row.updated_at_ms,
    )
    return new_row, late


async def _settle_late(
    tx: IngestTx, key: StockKey, row: StockRow, late: _Late
) -> tuple[StockRow, list[tuple[str, str, bytes, int]]]:
    """Finish a key with late events: on_hand from its new last count, and the
    variance of every count whose window (previous count, count) got an event."""
    if late.recount is not None:
        on_hand = late.recount.qty + await tx.sum_deltas(key, late.recount.key, None)
        row = row._replace(on_hand=on_hand)
    if row.last_count is None or order_key(late.events[0]) > row.last_count:
        return row, []  # no count after any of these events: no variance moves
    points = await tx.counts_from(key, order_key(late.events[0]))
    keys = [p.key for p in points]
    affected: set[int] = set()
    for ev in late.events:
        k = order_key(ev)
        if ev.kind is Kind.COUNT:
            affected.add(keys.index(k))
        nxt = bisect_right(keys, k)  # the first count after ev: its window holds ev
        if nxt < len(keys):
            affected.add(nxt)
    out: list[tuple[str, str, bytes, int]] = []
    for i in sorted(affected):
        prev = points[i - 1] if i > 0 else None
        between = await tx.sum_deltas(key, prev.key if prev else None, points[i].key)
        variance = points[i].qty - ((prev.qty if prev else 0) + between)
        out.append((key[0], points[i].key[1], points[i].key[3], variance))
    return row, out


def _held_again(event_id: bytes, status: str) -> str:
    fate = {"pending": "waits there for an operator", "discarded": "an operator discarded it",
            "applied": "it was applied (at its receipt time, or at its own when the hub's own clock held it)",
            }.get(status, status)  # fmt: skip
    return f"event {event_id_hex(event_id)} was held in the hub's clock quarantine before and {fate}; it is not applied again"


async def apply_batch(tx: IngestTx, batch: Batch, now_ms: int) -> IngestResult:
    """Dedupe, resolve and write one prepared batch through ``tx`` (see the module doc)."""
    who, epoch = batch.who, batch.epoch

    # 1. What is new, a resend, or a conflict.
    accepted = batch.accepted
    rejected = list(batch.refused)
    quarantined = list(batch.quarantined)
    if accepted and batch.operator is None:
        # An event once held stays the operator's: a resend (an outbox restored or forked) whose stamp now
        # falls inside the window is held again, never applied at the time an operator discarded or corrected.
        held = await tx.held_status(who.agent_id, [ev.event_id for ev, _ in accepted])
        if held:
            quarantined += [
                RejectedAttempt(ev, row, "quarantined", _held_again(ev.event_id, held[ev.event_id]))
                for ev, row in accepted
                if ev.event_id in held
            ]
            accepted = tuple((ev, row) for ev, row in accepted if ev.event_id not in held)
    ids = [ev.event_id for ev, _ in accepted]
    stored = await tx.stored_rows(who.agent_id, ids) if accepted else {}
    duplicates: Counter[tuple[str, bytes]] = Counter()  # (location, event_id) of a stored event -> resends
    by_key: dict[StockKey, list[StockEvent]] = defaultdict(list)
    if not stored and len(set(ids)) == len(ids):  # the common case: every event new, none twice
        fresh = list(accepted)
        for ev, _ in accepted:
            by_key[(ev.location, ev.sku)].append(ev)
        touched = set(by_key)
    else:
        fresh = []
        seen: dict[bytes, EventRow] = {}
        touched = set()
        for ev, row in accepted:
            known = stored.get(ev.event_id) or seen.get(ev.event_id)
            if known is None:
                seen[ev.event_id] = row
                fresh.append((ev, row))
                by_key[(ev.location, ev.sku)].append(ev)
                touched.add((ev.location, ev.sku))
            elif known[CONTENT_FROM:] == row[CONTENT_FROM:]:  # the same movement, maybe under another epoch/seq
                duplicates[ev.location, ev.event_id] += 1
                touched.add((ev.location, ev.sku))
            else:
                reason = (
                    f"event {event_id_hex(ev.event_id)} was already recorded with different content; "
                    f"the original stands and this version is not counted"
                )
                rejected.append(RejectedAttempt(ev, row, "conflict", reason))
    applied = len(fresh)  # the sender's events stored now (a bundle's movement counts once)
    first_new = min((ev.seq for ev, _ in fresh), default=None)  # the lowest seq the hub did not hold (_next_mark)

    # 1b. Bundles: a new movement of a bundle SKU is booked on its parts, under the recipe in force.
    book = await tx.bundle_book({sku for _, sku in by_key}) if fresh else {}  # by_key: the keys of fresh
    expanded: list[tuple[StockEvent, EventRow, BundleParts]] = []
    if book and any(ev.sku in book for ev, _ in fresh):
        fresh, expanded, refused = await _expand(tx, who.agent_id, fresh, book)
        rejected += refused
        applied -= len(refused)
        by_key = defaultdict(list)
        for ev, _ in fresh:
            by_key[(ev.location, ev.sku)].append(ev)
        touched.difference_update((r.event.location, r.event.sku) for r in refused)  # a refused one adds no key
        touched.update(by_key)
        touched.update((ev.location, ev.sku) for ev, _, _ in expanded)
        if part_skus := {ev.sku for ev, _ in fresh}.difference(book):  # bundles made of the parts just booked
            book.update(await tx.bundle_book(part_skus))

    # 2. Transfers and reservations: commutative sums, folded in memory.
    in_transit_delta: Counter[StockKey] = Counter()
    reserved_delta: Counter[StockKey] = Counter()
    stock_keys = set(touched)
    by_transfer: dict[TransferKey, list[StockEvent]] = defaultdict(list)
    by_reservation: dict[ReservationKey, list[StockEvent]] = defaultdict(list)
    for ev, _ in fresh:
        if ev.ref is None and ev.kind not in RESERVATION_KINDS:
            continue  # neither a transfer nor a reservation
        if (tkey := transfer_key(ev)) is not None:
            by_transfer[tkey].append(ev)
            if (dest := transfer_destination(ev)) is not None:
                stock_keys.add((dest, ev.sku))
        if (rkey := reservation_key(ev)) is not None:
            by_reservation[rkey].append(ev)
    new_transfers: list[Transfer] = []
    if by_transfer:
        old_transfers = await tx.transfer_rows(list(by_transfer))
        # An adjust carrying a ref only books out a receipt of it (``books_out``): alone it makes no transfer (a
        # POS's stock-take note is a ref too). A transfer a shipment or receipt of the batch makes starts from the
        # book-outs stored before it, whatever order they came in.
        moving = {k for k, evs in by_transfer.items() if k not in old_transfers and not all(map(books_out, evs))}
        stored_out = await tx.stored_book_outs(moving) if moving else {}
        tallied: dict[TransferKey, Transfer] = {}
        for tkey, evs in by_transfer.items():
            new = old_transfers.get(tkey)
            if new is None:
                if tkey not in moving:
                    continue  # book-outs of no stored receipt: the ledger keeps them for its receipt
                new = Transfer(*tkey, booked_out=stored_out.get(tkey, 0))
            for ev in evs:
                new = tally_transfer(new, ev)
            tallied[tkey] = new
        # A receipt back at the shipper counts against its shipment elsewhere: every transfer of a ref and SKU a
        # shipment or receipt of the batch moved is settled again with the others (an adjust moves none of that).
        pairs = {(k[1], k[2]) for k, evs in by_transfer.items() if any(ev.kind is not Kind.ADJUST for ev in evs)}
        others = await tx.transfers_of(pairs) if pairs else {}
        grouped: dict[tuple[str, str], list[Transfer]] = defaultdict(list)
        for t in (others | tallied).values():
            grouped[t.ref, t.sku].append(t)
        for (ref, sku), group in grouped.items():
            for new in settle_returns(group) if (ref, sku) in pairs else group:
                tkey = (new.dest, new.ref, new.sku)
                old = old_transfers.get(tkey) or others.get(tkey)
                if tkey not in tallied and new == old:
                    continue  # not moved
                new_transfers.append(new)
                if old is not None and old.to_location is not None:
                    in_transit_delta[(old.to_location, old.sku)] -= old.in_transit
                if new.to_location is not None:
                    in_transit_delta[(new.to_location, new.sku)] += new.in_transit
        stock_keys.update(k for k, v in in_transit_delta.items() if v)
    new_reservations: dict[ReservationKey, Reservation] = {}
    if by_reservation:
        old_reservations = await tx.reservation_rows(list(by_reservation))
        opening = [  # reservations seen for the first time: sales may have consumed them already
            k
            for k, evs in by_reservation.items()
            if k not in old_reservations and k[2] and any(ev.kind is not Kind.SALE for ev in evs)
        ]
        consumed = await tx.stored_sales(opening) if opening else {}
        for rkey, evs in by_reservation.items():
            old_res = old_reservations.get(rkey)
            if old_res is None and all(ev.kind is Kind.SALE for ev in evs):
                continue  # a sale nobody reserved for (yet): a later reserve finds it in the ledger
            res = old_res or Reservation(0, consumed.get(rkey, 0))
            for ev in evs:
                res = tally_reservation(res, ev)
            new_reservations[rkey] = res
            reserved_delta[(rkey[0], rkey[1])] += res.open - (old_res.open if old_res else 0)

    # 3. Per (location, sku): effects, on_hand and variances, in memory when in order.
    rows = await tx.stock_rows(list(stock_keys))
    effects: dict[bytes, Effect] = {}
    variances: dict[bytes, int | None] = {}
    late: dict[StockKey, _Late] = {}
    changed: list[StockKey] = []
    before: dict[StockKey, tuple[int, int, int]] = {}
    # Keys with a count or a reservation among their new events, or whose reserved or in_transit moves, take
    # _plan_key's whole way; the others (most keys: deltas only) are folded here when they are in order.
    special = {(ev.location, ev.sku) for ev, _ in fresh if ev.kind not in ON_HAND_KINDS}
    special.update(reserved_delta, in_transit_delta)
    for key in stock_keys:
        key_events = by_key.get(key)
        if key_events and key not in special:
            if len(key_events) > 1:
                key_events.sort(key=_ORDER_KEY)
            state = rows.get(key) or StockRow(*key)
            newest = state[7]  # max_key
            if newest is None or _ORDER_KEY(key_events[0]) > newest:  # deltas after everything stored: applied
                on_hand = state[2]
                for ev in key_events:
                    on_hand += ev.qty
                rows[key] = _new_row(state, on_hand, _ORDER_KEY(key_events[-1]))
                before[key] = state[2:5]  # (on_hand, reserved, in_transit); ingest leaves safety_stock as it is
                changed.append(key)
                continue
        reserved_by, in_transit_by = reserved_delta.get(key, 0), in_transit_delta.get(key, 0)
        if not key_events:
            if key in touched and not (reserved_by or in_transit_by):
                continue  # only resends: nothing changes
            key_events = []
        elif len(key_events) > 1:
            key_events.sort(key=_ORDER_KEY)
        state = rows.get(key) or StockRow(*key)
        before[key] = state[2:5]
        rows[key], rest = _plan_key(state, key_events, effects, variances, reserved_by, in_transit_by)
        if rest is not None:
            late[key] = rest
        changed.append(key)

    # 4. Write.
    if fresh or expanded:
        effect_of, variance_of = effects.get, variances.get  # a thousand calls: bound once, each id read once
        await tx.insert_events(
            [(i, row, effect_of(i, _APPLIED), variance_of(i)) for ev, row in fresh for i in (ev.event_id,)]
            + [(ev.event_id, row, Effect.EXPANDED, None) for ev, row, _ in expanded],
            now_ms,
        )
    if expanded:
        await tx.insert_expansions(
            [(who.agent_id, ev.event_id, bp.version, attrs_json(bp.parts)) for ev, _, bp in expanded]
        )
    if duplicates:
        await tx.add_duplicates(who.agent_id, duplicates)
    if rejected:
        await tx.insert_rejections(rejected, now_ms)
    release_hub_clock = False
    if quarantined:
        off_ms = batch.hub_clock_off_ms
        if off_ms is not None and batch.judged_ms is not None:
            # held knowing the hub's clock off: marked, with the finding, in this commit; released by the caller
            # when the hub's clock was found right meanwhile
            found = await tx.note_hub_clock_off(off_ms, now_ms, batch.judged_ms)
            release_hub_clock = found is not None and found.right_at_ms is not None
        elif off_ms is None and batch.judged_ms is not None and batch.sent_ms is not None:
            # judged by a hub that did not know its clock off: another may have found it, and marked what it held
            found = await tx.hub_clock_finding()
            if found is not None and finding_covers(found, batch.judged_ms, now_ms - batch.sent_ms):
                off_ms, release_hub_clock = found.offset_ms, found.right_at_ms is not None
        await tx.insert_quarantined(quarantined, now_ms, batch.sent_ms, off_ms, batch.hub_clock_vouched)
        rejected += quarantined  # answered as such: processed for the mark, held for an operator
    if late:
        recomputed: list[tuple[str, str, bytes, int]] = []
        for key, rest in late.items():
            rows[key], more = await _settle_late(tx, key, rows[key], rest)
            recomputed += more
        if recomputed:
            await tx.set_variances(recomputed)
    if new_transfers:
        await tx.save_transfers(new_transfers, now_ms)
    if new_reservations:
        await tx.save_reservations(new_reservations, now_ms)
    if book:  # the bundles made of what moved (and those sold) follow their parts
        for key, was in (await _settle_bundles(tx, rows, changed, book, [k for k in touched if k[1] in book])).items():
            if key not in before:
                before[key] = was
                changed.append(key)
                by_key[key] = _bundle_causes(key, book, expanded, by_key)
    keys = sorted(touched.union(changed))
    snapshots = {k: (rows.get(k) or StockRow(*k)).snapshot() for k in keys}
    if changed:
        await tx.save_stock([rows[k] for k in changed], now_ms)
        feed = _changes(keys, before, rows, snapshots, by_key, by_transfer, new_transfers)
        if feed:
            await tx.append_changes(feed, now_ms)
    if changed or fresh or expanded:
        earliest: dict[StockKey, int] = {}
        for ev in [ev for ev, _ in fresh] + [ev for ev, _, _ in expanded]:
            key = (ev.location, ev.sku)
            if key not in earliest or ev.occurred_at < earliest[key]:
                earliest[key] = ev.occurred_at
        await tx.settle_observed(_stock_now(rows, changed), earliest, bundles=bool(book))
    if batch.operator is None:
        seq, chain, stale = await _next_mark(tx, batch, first_new)
        backlog, oldest_ms = (None, None) if stale else (batch.backlog, batch.oldest_pending_ms)
        skew_ms = None if stale else _skew_ms(batch, now_ms)  # None: the stored skew stays
        disk = None if stale else batch.disk
        if batch.lost is not None:  # a request replayed late too: the same report again changes nothing
            await tx.note_lost(who.agent_id, batch.lost, now_ms)
        note = SyncNote(
            who.agent_id, epoch, seq, chain, now_ms, skew_ms, backlog, oldest_ms, batch.sent_ms, batch.peer, disk
        )
        hwm, chain, held_now = await tx.finish_sync(note)  # held: the sender shows this, not its own "quarantined"
    else:  # an operator applying a held event: the sender's mark and sync are not this request's
        hwm, chain, held_now = 0, None, 0
    return IngestResult(
        agent_id=who.agent_id,
        epoch=epoch,
        hwm=hwm,
        rejected=tuple(Rejection(r.event.event_id, r.event.seq, r.code, r.reason) for r in rejected),
        duplicates=sum(duplicates.values()),
        applied=applied,
        counts=tuple([snapshots[k] for k in keys if k in touched]),
        chain=chain,
        held=held_now,
        release_hub_clock=release_hub_clock,
    )


def _stock_now(rows: Mapping[StockKey, StockRow], keys: Iterable[StockKey]) -> dict[StockKey, tuple[int, int | None]]:
    """(on_hand, max_at) of the stock rows of ``keys`` as written now, for ``IngestTx.settle_observed``."""
    return {k: (r[2], None if r[7] is None else r[7][0]) for k in keys for r in (rows[k],)}


def _skew_ms(batch: Batch, now_ms: int) -> int | None:
    """The hub's clock minus the sender's: from the wall clock it stated when sending (request time
    included, a few ms), else — a sender from before ``sent_ms`` — from the newest event of the batch."""
    if batch.sent_ms is not None:
        return now_ms - batch.sent_ms
    return None if batch.max_wall_ms is None else now_ms - batch.max_wall_ms


async def finish_in_steps(tx: IngestTx, note: SyncNote) -> tuple[int, bytes | None, int]:
    """``IngestTx.finish_sync`` as three calls."""
    hwm, chain = await tx.advance_mark(note.agent_id, note.epoch, note.seq, note.chain, note.now_ms, note.peer)
    await tx.note_sync(
        note.agent_id, note.now_ms, note.clock_skew_ms, backlog=note.backlog, oldest_pending_ms=note.oldest_pending_ms,
        sent_ms=note.sent_ms, disk=note.disk,
    )
    return hwm, chain, await tx.held_pending(note.agent_id)


async def _next_mark(tx: IngestTx, batch: Batch, first_new: int | None = None) -> tuple[int, bytes | None, bool]:
    """The sender's mark after this batch, the lineage digest to store with it, and whether the request is
    older than the mark (the sender's acknowledged mark is below the stored one, and it brings nothing past it).

    Such a request's backlog report and clock skew are not the sender's news: a request a middlebox replays
    after the sender moved on, or the handshake after an answer that was lost (the sender reports again as
    soon as it learns the mark). Taken, it put a drained store's backlog back on the hub's agent list until
    the next heartbeat, and its ``sent_ms`` showed the sender's clock behind by as long as it was held. It is
    still a sync the hub heard (the handshake's sender is alive): ``last_sync_ms`` moves.

    An epoch seen for the first time starts at the sender's ``epoch_base`` (with its chain): the rows up
    to it were acknowledged in an earlier epoch — unless every mark the hub holds of that sender is below the base
    (the sender forked after the backup the hub was restored from was made, or a failover lost commits): then
    this hub never acknowledged the rows between, and the epoch starts at its highest mark (with that mark's
    chain), so the sender rewinds and sends them again (counted once). A sender with no mark at all here (an
    outbox rebound to a new agent id) is taken at its base as before. The sender holding more than this hub (its acknowledged
    mark is above the stored one: the hub was restored from an older copy) is told to rewind and resend;
    the stored mark stays too: the seqs between it and this batch are missing here, and raising it would
    hide them from the resend.

    A batch sent before the one it follows on from was answered (``after_seq``: that batch's end) moves the
    mark only when the mark has reached ``after_seq``: met first (the batch before it is still on its way,
    or failed), its events are stored but the mark stays, so the answer acknowledges no seq this hub has not
    committed, and the sender sends it again (its events are then duplicates).

    A batch reaching past the mark from below it (its acknowledged mark is below the stored one) moves the mark
    only if the hub already held its events up to the mark (``first_new``: the lowest seq of the batch's events
    stored now, None: none). A resend after a lost answer holds nothing new there; a second copy of the outbox
    (a cloned PC: same agent, same epoch) does: those seqs are the other copy's. Its chain taken as the mark's,
    both copies found their own lineage in the answers (the other at its own batch's end), and both drained in
    one epoch until the other's next request; kept, this sender finds the other's chain at the mark and forks.

    Such a batch moves it only along the mark's lineage, too (``_runs_through``): a second copy's batch sent
    ahead (``after_seq``) meets the mark at its start, and holds nothing up to it to tell by; nor does its resend
    of events the hub stored ahead of the mark. A sender whose acknowledged mark is the stored one checked the
    mark's chain itself, and costs nothing here.
    """
    who, lineage = batch.who, batch.lineage or Lineage()
    stored = await tx.stored_mark(who.agent_id, batch.epoch)
    if stored is None:
        base = lineage.epoch_base
        stored_hwm, stored_chain = base, (lineage.base_chain if base else None)
        if base and (top := await tx.top_mark(who.agent_id)) is not None and top[0] < base:
            stored_hwm, stored_chain = top
    else:
        stored_hwm, stored_chain = stored
    stale = batch.acked_seq < stored_hwm and batch.max_seq <= stored_hwm  # and it brings nothing past the mark
    ahead = batch.after_seq is not None and batch.after_seq > stored_hwm  # seqs before the batch not here yet
    # … or seqs up to the mark that the hub did not hold from this sender: the mark is another copy's
    other = batch.acked_seq < stored_hwm and first_new is not None and first_new <= stored_hwm
    if batch.acked_seq > stored_hwm or batch.max_seq <= stored_hwm or ahead or other:
        return stored_hwm, stored_chain, stale
    if batch.acked_seq < stored_hwm and not _runs_through(batch, stored_hwm, stored_chain, lineage.chain):
        return stored_hwm, stored_chain, stale
    return batch.max_seq, lineage.chain, stale


def _runs_through(batch: Batch, mark: int, at_mark: bytes | None, chain: bytes | None) -> bool:
    """Whether the batch's lineage runs through the mark: its events above ``mark``, one a seq up to its last,
    link the digest at the mark (``at_mark``) to the sender's at its last seq (``chain``).
    One digest an event above the mark, and only for a sender that is behind the mark (a batch sent ahead, a
    resend). A seq missing above the mark (an event its sender set aside) cannot be told: the mark stays, and the
    sender of that lineage takes it and sends the rest from there. Without a digest (a sender or a mark from
    before lineages) there is nothing to tell by, and the mark moves as before."""
    if at_mark is None or chain is None:
        return True
    if batch.refused or batch.quarantined:
        others = [r.event for r in (*batch.refused, *batch.quarantined)]
        events = sorted([ev for ev, _ in batch.accepted] + others, key=_SEQ)
        ids = [ev.event_id for ev in events[bisect_right(events, mark, key=_SEQ) :]]
    else:  # in the batch's order: seq order, as agents send
        ids = [ev.event_id for ev, _ in batch.accepted[bisect_right(batch.accepted, mark, key=_pair_seq) :]]
    return len(ids) == batch.max_seq - mark and chain_over(at_mark, ids) == chain


def _pair_seq(pair: tuple[StockEvent, EventRow]) -> int:
    return pair[0].seq


def _changes(
    keys: Sequence[StockKey],
    before: Mapping[StockKey, tuple[int, int, int]],
    rows: Mapping[StockKey, StockRow],
    snapshots: Mapping[StockKey, CountSnapshot],
    by_key: Mapping[StockKey, list[StockEvent]],
    by_transfer: Mapping[TransferKey, list[StockEvent]],
    transfers: Sequence[Transfer],
) -> list[NewChange]:
    """One change row per key of ``before`` (the keys written) whose counts moved, in the order of ``keys``
    (sorted, holding every key of ``before``: deterministic).

    With safety stock unchanged, available moves only with on_hand or reserved."""
    destinations: dict[StockKey, Transfer] = {}
    for t in transfers:  # a destination moved by the other side's event: name that event
        if t.to_location is not None:
            destinations.setdefault((t.to_location, t.sku), t)
    out: list[NewChange] = []
    was_of, events_of = before.get, by_key.get  # hundreds of keys: the loop below is kept to plain steps
    for key in keys:
        was = was_of(key)
        if was is None:
            continue  # not written
        row = rows[key]
        if row[2] == was[0] and row[3] == was[1] and row[4] == was[2]:  # (on_hand, reserved, in_transit) as they were
            continue
        evs = events_of(key)
        if not evs and (via := destinations.get(key)) is not None:
            evs = by_transfer.get((via.dest, via.ref, via.sku)) or [  # or moved by a receipt back elsewhere
                ev for k, moved in by_transfer.items() if k[1] == via.ref and k[2] == via.sku for ev in moved
            ]
        if not evs:
            ids: tuple[bytes, ...] = ()
        else:
            ids = tuple([ev.event_id for ev in (evs if len(evs) <= CHANGE_EVENT_IDS_MAX else evs[:CHANGE_EVENT_IDS_MAX])])
        out.append(_TUPLE_NEW(NewChange, (snapshots[key], ids)))  # NewChange(...) in one step: hundreds a batch
    return out



# --- bundles ---------------------------------------------------------------------------------------------


async def _expand(
    tx: IngestTx, agent_id: str, fresh: list[tuple[StockEvent, EventRow]], book: Mapping[str, BundleParts]
) -> tuple[list[tuple[StockEvent, EventRow]], list[tuple[StockEvent, EventRow, BundleParts]], list[RejectedAttempt]]:
    """The new events with each bundle movement replaced by its parts' movements; the bundle movements
    booked so; and those refused (``hub.resolver.bundle_problem``, or a part's derived id already taken)."""
    out: list[tuple[StockEvent, EventRow]] = []
    planned: list[tuple[StockEvent, EventRow, BundleParts, tuple[StockEvent, ...]]] = []
    refused: list[RejectedAttempt] = []
    for ev, row in fresh:
        bp = book.get(ev.sku)
        if bp is None:
            out.append((ev, row))
            continue
        problem = bundle_problem(ev, bp.parts)
        if problem is None:
            try:
                planned.append((ev, row, bp, expand(ev, bp.parts)))
                continue
            except ProtocolError as err:  # bundle_problem foresees these; kept as a refusal, never a failed batch
                problem = f"a part's movement would break the event contract ({err})"
        refused.append(RejectedAttempt(ev, row, "invalid_bundle", f"event {event_id_hex(ev.event_id)}: {problem}"))
    expanded: list[tuple[StockEvent, EventRow, BundleParts]] = []
    if planned:
        derived = [part.event_id for *_, parts in planned for part in parts]
        taken = set(await tx.stored_rows(agent_id, derived)) | {ev.event_id for ev, _ in fresh}.intersection(derived)
        for ev, row, bp, parts in planned:
            if taken.intersection(part.event_id for part in parts):
                reason = (
                    f"event {event_id_hex(ev.event_id)}: the ids of its parts' movements are already taken by "
                    f"other events of {agent_id}, so it is not booked"
                )
                refused.append(RejectedAttempt(ev, row, "conflict", reason))
                continue
            out += [(part, event_row(part)) for part in parts]
            expanded.append((ev, row, bp))
    return out, expanded, refused


def _bundle_causes(
    key: StockKey,
    book: Mapping[str, BundleParts],
    expanded: Sequence[tuple[StockEvent, EventRow, BundleParts]],
    by_key: Mapping[StockKey, list[StockEvent]],
) -> list[StockEvent]:
    """The events a bundle row's change names: its own movements in the batch, else its parts' there."""
    own = [ev for ev, _, _ in expanded if (ev.location, ev.sku) == key]
    if own:
        return own
    return [ev for part in book[key[1]].parts for ev in by_key.get((key[0], part), ())]


async def _settle_bundles(
    tx: IngestTx,
    rows: dict[StockKey, StockRow],
    keys: Iterable[StockKey],
    book: Mapping[str, BundleParts],
    bundle_keys: Iterable[StockKey] = (),
) -> dict[StockKey, tuple[int, int, int]]:
    """Recompute the rows (in ``rows``, reading what is missing) of the bundles of ``book`` made of one of
    ``keys``' SKUs at its location, and of ``bundle_keys``; return those new or moved, with their
    (on_hand, reserved, in_transit) from before ((0, 0, 0) for a new row)."""
    containing: dict[str, list[str]] = defaultdict(list)
    for bundle, bp in book.items():
        for part in bp.parts:
            containing[part].append(bundle)
    targets = {k for k in bundle_keys if k[1] in book}
    targets.update((location, bundle) for location, sku in keys for bundle in containing.get(sku, ()))
    if not targets:
        return {}
    wanted = targets.union((location, part) for location, bundle in targets for part in book[bundle].parts)
    missing = [k for k in wanted if k not in rows]
    if missing:
        rows.update(await tx.stock_rows(missing))
    moved: dict[StockKey, tuple[int, int, int]] = {}
    for key in sorted(targets):
        location, bundle = key
        parts = book[bundle].parts
        here = {
            part: (r.on_hand, r.reserved, r.in_transit, r.safety_stock)
            for part in parts
            if (r := rows.get((location, part))) is not None
        }
        made = bundle_counts(parts, here)
        old = rows.get(key)
        was = None if old is None else (old.on_hand, old.reserved, old.in_transit)
        if was != made:
            rows[key] = (old or StockRow(*key))._replace(on_hand=made[0], reserved=made[1], in_transit=made[2])
            moved[key] = was or (0, 0, 0)
    return moved


def _moved_changes(
    rows: Mapping[StockKey, StockRow], moved: Mapping[StockKey, tuple[int, int, int]]
) -> list[NewChange]:
    out = []
    for key in sorted(moved):
        row = rows[key]
        if (row.on_hand, row.reserved, row.in_transit) != moved[key]:
            out.append(NewChange(row.snapshot(), ()))
    return out


async def refresh_bundles(tx: IngestTx, keys: Collection[StockKey], now_ms: int) -> None:
    """After ``keys`` changed outside ingest (a safety stock set): the rows of the bundles made of their SKUs
    there follow, with their change-feed rows."""
    book = await tx.bundle_book({sku for _, sku in keys})
    if not book:
        return
    rows: dict[StockKey, StockRow] = {}
    moved = await _settle_bundles(tx, rows, keys, book)
    if moved:
        await tx.save_stock([rows[k] for k in sorted(moved)], now_ms)
        if changes := _moved_changes(rows, moved):
            await tx.append_changes(changes, now_ms)
        await tx.settle_observed(_stock_now(rows, moved), {})


async def apply_recipe(
    tx: IngestTx, sku: str, components: Mapping[str, int], set_by: str, now_ms: int
) -> tuple[Bundle, bool]:
    """Set the recipe of bundle ``sku`` (checked by ``hub.storage.checks.bundle_recipe``) in the open
    transaction: a new version from ``now_ms`` on (none when it is the recipe in force already), the parts in
    force of it and of every bundle holding it, and their rows at every location, with change-feed rows.

    ``BundleConflict`` when the recipes would not flatten (a bundle inside itself …) or when ``sku``, not
    yet a bundle, holds stock of its own: a bundle's count is its parts', so that stock would be lost."""
    await tx.lock_recipes()
    recipes = await tx.recipes()
    current = await tx.bundle_book(None)
    old = recipes.get(sku)
    if old is not None and dict(old.components) == dict(components):
        return Bundle(old, tuple(current[sku].parts.items()) if sku in current else ()), False
    direct = {s: dict(r.components) for s, r in recipes.items()} | {sku: dict(components)}
    try:
        flat = flatten(direct, first=sku)
    except RecipeError as err:
        raise BundleConflict(f"{err}; change this recipe or the other one first") from err
    if old is None:
        rows = await tx.stock_rows(await tx.stock_keys_of([sku]))
        own = sorted((r.location, r.on_hand, r.reserved, r.in_transit) for r in rows.values() if r[2:5] != (0, 0, 0))
        if own:
            loc, on_hand, reserved, in_transit = own[0]
            where = f"{on_hand} on hand, {reserved} reserved, {in_transit} in transit at {loc}" + (
                f" and stock at {len(own) - 1} more location(s)" if len(own) > 1 else ""
            )
            raise BundleConflict(
                f"{sku} holds stock of its own ({where}), and a bundle's count is made of its parts ("
                f"{describe_parts(components)}); bring {sku} to zero first (book its units as their parts), "
                "then set the recipe"
            )
    recipe = BundleRecipe(sku, (old.version + 1) if old else 1, now_ms, tuple(sorted(components.items())), set_by)
    await tx.insert_recipe(recipe)
    versions = {s: r.version for s, r in recipes.items()} | {sku: recipe.version}
    new_parts = {b: BundleParts(versions[b], parts) for b, parts in flat.items()}
    changed = {b: bp for b, bp in new_parts.items() if current.get(b) != bp}
    await tx.save_parts(changed)
    moved_parts = {b: bp for b, bp in changed.items() if current.get(b) is None or current[b].parts != bp.parts}
    if moved_parts:
        await _rebuild_bundles(tx, moved_parts, now_ms)
    return Bundle(recipe, tuple(flat[sku].items())), True


async def _rebuild_bundles(tx: IngestTx, book: Mapping[str, BundleParts], now_ms: int) -> None:
    """Recompute these bundles' rows at every location where one of their parts, or they, have a row. A
    bundle row left where none of its parts is, with no movement and no safety stock of its own, goes
    (a bundle has a row wherever one of its parts has one: hub.resolver)."""
    parts = {part for bp in book.values() for part in bp.parts}
    part_keys = await tx.stock_keys_of(parts)
    own_keys = await tx.stock_keys_of(list(book))
    rows = await tx.stock_rows([*part_keys, *own_keys])
    where: dict[str, set[str]] = defaultdict(set)
    for location, part in part_keys:
        where[part].add(location)
    targets = set(own_keys) | {(loc, b) for b, bp in book.items() for part in bp.parts for loc in where[part]}
    gone = [
        key
        for key in sorted(targets)
        if not any(key[0] in where[part] for part in book[key[1]].parts)
        and (row := rows.get(key)) is not None
        and not row.safety_stock
        and not await tx.has_events(key)
    ]
    moved = await _settle_bundles(tx, rows, (), book, [k for k in targets if k not in gone])
    if gone:
        await tx.delete_stock(gone)
        for key in gone:  # a channel showing it learns 0
            row = rows[key]
            if (row.on_hand, row.reserved, row.in_transit) != (0, 0, 0):
                moved[key] = (row.on_hand, row.reserved, row.in_transit)
                rows[key] = StockRow(*key)
    if moved:
        await tx.save_stock([rows[k] for k in sorted(moved) if k not in gone], now_ms)
    changes = _moved_changes(rows, moved)
    # A channel shows of a bundle what its parts summed over the channel's pool make (⌊Σ part ÷ units⌋,
    # docs/channels.md), so new parts move that level even where each location's row stays as it was (2 × P at two
    # stores of 3: a kit at each, 3 kits online; 3 × P: still a kit at each, 2 online). Every row of the bundle goes on
    # the feed, so a channel pusher reading it pushes the bundle's level again.
    told = {(c.snapshot.location, c.snapshot.sku) for c in changes}
    changes += [
        NewChange(rows[k].snapshot(), ()) for k in sorted(targets) if k not in gone and k not in told and k in rows
    ]
    if changes:
        await tx.append_changes(changes, now_ms)
    if moved or gone:
        await tx.settle_observed(_stock_now(rows, [*moved, *gone]) | {k: (0, None) for k in gone}, {})
