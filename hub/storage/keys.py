"""Positions in the hub's paged reads: the full order key of a row, so a page starts right after the last
row of the page before it and a walk over every page sees every row exactly once (``hub.paging`` turns
them into opaque cursors).

* The ledger is newest first by ``(occurred_at, agent_id, seq, event_id, part, tiebreak)``: the
  resolution order, then which table the row comes from (``PART_EVENT``, ``PART_REJECTION``,
  ``PART_WRITEOFF``: a refused attempt can share its event's id and stamp) and, for rejections, the
  attempt's content hash (one id can be refused with several contents). No two rows share a key.
* Counts are ordered by ``(location, sku)``, their primary key; divergence by ``(location, sku, system)``.
* Exceptions come from several sources (``EXCEPTION_SOURCES``: a table, or one query over a table, each).
  They are newest first by ``at_ms``, then by source name, then by the source's own primary key
  (``ExceptionKey``), so a page can start inside a burst of exceptions sharing one ``at_ms``. Each source
  is read in that order from the cursor on, at most a page of it, and the sources are merged. A filtered
  list (``ExceptionFilter``: one location, one kind, since a time) filters each source in its SQL, so a
  page of one store's last hour reads that, not the chain's list; its cursor names the filter it walks.
* Webhook deliveries are newest first by ``delivery_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hub.resolver import Effect
from hub.storage.base import CountRow, DivergenceRow, ExceptionRow, LedgerRow

PART_EVENT = 0
PART_REJECTION = 1
PART_WRITEOFF = 2
TIES_MAX = 100_000  # rows read at one stamp when a page starts inside a group of rows sharing it
WRITEOFF_KIND = "transfer_writeoff"  # hub.storage.held.WRITEOFF_KIND (a ledger row of its own)


@dataclass(frozen=True, slots=True, order=True)
class LedgerKey:
    occurred_at: int
    agent_id: str
    seq: int
    event_id: bytes
    part: int = PART_EVENT
    tiebreak: bytes = b""  # rejections: the attempt's content hash

    @property
    def order4(self) -> tuple[int, str, int, bytes]:
        return (self.occurred_at, self.agent_id, self.seq, self.event_id)


@dataclass(frozen=True, slots=True, order=True)
class CountKey:
    location: str
    sku: str


@dataclass(frozen=True, slots=True, order=True)
class DivergenceKey:
    location: str
    sku: str
    system: str


Ident = tuple[str | int | bytes, ...]


@dataclass(frozen=True, slots=True)
class ExceptionKey:
    at_ms: int
    source: str  # a name of EXCEPTION_SOURCES
    ident: Ident  # the source's own key of the row, typed as ExceptionSource.types says

    def sort_key(self) -> tuple[int, str, Ident]:
        """Ascending in this is the list's order (newest first); idents are only compared within a source."""
        return (-self.at_ms, self.source, self.ident)


@dataclass(frozen=True, slots=True)
class ExceptionSource:
    """One source of exceptions: the column holding its ``at_ms`` and the columns of its own primary key,
    which SQL orders as Python does (integers, bytes, and text that PostgreSQL compares COLLATE "C")."""

    name: str
    at: str
    ident: tuple[str, ...]
    types: str  # one letter per ident column: "s" text, "i" integer, "b" bytes (what a cursor may hold)
    kinds: tuple[str, ...]  # the exception kinds its rows may have (hub.resolver's and hub.storage.findings' words)

    @property
    def order(self) -> str:
        """The ORDER BY of the source's rows in the list's order."""
        return ", ".join((f"{self.at} DESC", *self.ident))

    def after(self, key: ExceptionKey) -> tuple[str, tuple[Any, ...]]:
        """The term keeping this source's rows ordered after ``key``: older ones, and at ``key.at_ms`` those
        of a source named after ``key.source``, or of this one with a greater ident."""
        if self.name < key.source:
            return f"{self.at} < {{}}", (key.at_ms,)
        if self.name > key.source:
            return f"{self.at} <= {{}}", (key.at_ms,)
        marks = ", ".join("{}" for _ in self.ident)
        return (  # the first term, implied by the OR, is a range the planner seeks to, where the OR alone is not
            f"{self.at} <= {{}} AND ({self.at} < {{}} OR ({self.at} = {{}} AND ({', '.join(self.ident)}) > ({marks})))",
            (key.at_ms, key.at_ms, key.at_ms, *key.ident),
        )


NEGATIVE = ExceptionSource("negative_on_hand", "updated_at_ms", ("location", "sku"), "ss", ("negative_on_hand",))
UNKNOWN_BARCODE = ExceptionSource(
    "unknown_barcode", "s.updated_at_ms", ("s.location", "s.sku"), "ss", ("unknown_barcode",)
)
TRANSFER = ExceptionSource(
    "transfer", "updated_at_ms", ("dest", "ref", "sku"), "sss",
    ("transfer_short", "transfer_over", "transfer_unmatched", "transfer_shared_ref", "transfer_misdirected"),
)  # fmt: skip
TRANSFER_OVERDUE = ExceptionSource(
    "transfer_overdue", "updated_at_ms", ("dest", "ref", "sku"), "sss", ("transfer_overdue",)
)
TRANSFER_NOWHERE = ExceptionSource(
    "transfer_unknown_destination", "updated_at_ms", ("dest", "ref", "sku"), "sss", ("transfer_unknown_destination",)
)
CLOCK_QUARANTINE = ExceptionSource("clock_quarantine", "received_at_ms", ("quarantine_id",), "i", ("clock_quarantine",))
REJECTED = ExceptionSource(
    "rejected_event", "received_at_ms", ("agent_id", "event_id", "content_hash"), "sbb", ("rejected_event",)
)
IMPORT_QUARANTINE = ExceptionSource(
    "import_quarantine", "received_at_ms", ("agent_id", "issue_id"), "ss", ("import_quarantine",)
)
DIVERGENCE = ExceptionSource("divergence", "received_at_ms", ("location", "sku", "system"), "sss", ("divergence",))
# a sales channel's level found diverging, and a level a channel refused for good (hub.channels.reconcile, .pusher)
CHANNEL_DIVERGENCE = ExceptionSource(
    "channel_divergence", "found_at_ms", ("channel", "divergence_id"), "si", ("channel_divergence",)
)
CHANNEL_REFUSED = ExceptionSource("channel_refused", "at_ms", ("channel", "level_key"), "ss", ("channel_refused",))
# what the last load of a channel's SKU mapping found (unmapped SKUs, a SKU or barcode on two items …)
CHANNEL_MAPPING = ExceptionSource("channel_mapping", "l.loaded_ms", ("f.channel", "f.seq"), "si", ("channel_mapping",))
# a channel's order whose webhook the hub refused for good, not booked since (hub.channels.order_routes)
CHANNEL_ORDER_REFUSED = ExceptionSource(
    "channel_order_refused", "refused_at_ms", ("channel", "order_id"), "ss", ("channel_order_refused",)
)
# two copies of one agent syncing at once, one row per agent (hub.storage.exceptions.AGENT_COPIES: c is its query)
AGENT_COPIES = ExceptionSource("agent_copies", "c.at_ms", ("c.agent_id",), "s", ("agent_copies",))
# a store agent whose disk is full or whose disk reserve is in use, as its newest sync reported (schema 21)
AGENT_DISK = ExceptionSource("agent_disk", "g.disk_since_ms", ("g.agent_id",), "s", ("agent_disk_full",))
# movements a store agent reported the hub lacks for good, not dismissed (schema 34; hub.storage.exceptions.LOST)
AGENT_LOST = ExceptionSource(
    "agent_lost", "l.received_ms", ("l.agent_id", "l.epoch", "l.first_seq", "l.last_seq"), "siii",
    ("agent_movements_lost",),
)  # fmt: skip
# a store's book-out of goods received by mistake that names no transfer, while it lists an unmatched receipt of that
# SKU (schema 26; hub.storage.exceptions.BOOK_OUT_UNNAMED)
BOOK_OUT_UNNAMED = ExceptionSource(
    "book_out_without_ref", "e.received_at_ms", ("e.agent_id", "e.event_id"), "sb", ("book_out_without_ref",)
)
EXCEPTION_SOURCES = {
    s.name: s
    for s in (
        NEGATIVE, UNKNOWN_BARCODE, TRANSFER, TRANSFER_OVERDUE, TRANSFER_NOWHERE, CLOCK_QUARANTINE, REJECTED, IMPORT_QUARANTINE,
        DIVERGENCE, CHANNEL_DIVERGENCE, CHANNEL_REFUSED, CHANNEL_MAPPING, CHANNEL_ORDER_REFUSED, AGENT_COPIES,
        AGENT_DISK, AGENT_LOST, BOOK_OUT_UNNAMED,
    )
}  # fmt: skip
# Every kind of exception the list names, in its sources' order: what ``kind=`` may ask for.
EXCEPTION_KINDS = tuple(kind for source in EXCEPTION_SOURCES.values() for kind in source.kinds)


@dataclass(frozen=True, slots=True)
class ExceptionFilter:
    """Which exceptions a list shows: of one location (either end of a transfer, and where it was shipped),
    of one kind, arisen at or after ``since_ms``; None is no filter."""

    location: str | None = None
    kind: str | None = None
    since_ms: int | None = None


def ledger_key(row: LedgerRow) -> LedgerKey:
    if row.kind == WRITEOFF_KIND:
        part = PART_WRITEOFF
    elif row.effect is Effect.REJECTED:
        part = PART_REJECTION
    else:
        part = PART_EVENT
    return LedgerKey(row.occurred_at, row.agent_id, row.seq, row.event_id, part, row.content_hash or b"")


def count_key(row: CountRow) -> CountKey:
    return CountKey(row.location, row.sku)


def divergence_key(row: DivergenceRow) -> DivergenceKey:
    return DivergenceKey(row.location, row.sku, row.system)


def exception_key(row: ExceptionRow) -> ExceptionKey:
    return ExceptionKey(row.at_ms, row.source, row.ident)


def exceptions_page(rows: list[ExceptionRow], limit: int) -> list[ExceptionRow]:
    """The first ``limit`` of the sources' rows merged in the list's order."""
    return sorted(rows, key=lambda r: exception_key(r).sort_key())[:limit]


def newest_first_after(rows: list[Any], after: LedgerKey | None, limit: int) -> list[LedgerRow]:
    """``rows`` (ledger rows) newest first, only those after ``after`` in that order, at most ``limit``."""
    keyed = sorted(((ledger_key(r), r) for r in rows), key=lambda kr: kr[0], reverse=True)
    return [r for k, r in keyed if after is None or k < after][:limit]


# --- SQL terms (``{}`` where each parameter goes; each backend numbers or marks them) ------------------

_ORDER4 = "(occurred_at, agent_id, seq, event_id)"
_MARKS4 = "({}, {}, {}, {})"


def events_after(after: LedgerKey) -> tuple[str, tuple[Any, ...]]:
    """The term keeping events ordered after ``after`` (newest first: their keys are smaller)."""
    op = "<" if after.part == PART_EVENT else "<="
    return f"{_ORDER4} {op} {_MARKS4}", after.order4


def rejections_after(after: LedgerKey) -> tuple[str, tuple[Any, ...]]:
    """The term keeping rejections ordered after ``after``; ties on the event's key go by content hash."""
    if after.part == PART_REJECTION:
        return "(occurred_at, agent_id, seq, event_id, content_hash) < ({}, {}, {}, {}, {})", (
            *after.order4,
            after.tiebreak,
        )
    op = "<" if after.part == PART_EVENT else "<="
    return f"{_ORDER4} {op} {_MARKS4}", after.order4


REJECTIONS_NEWEST_FIRST = "occurred_at DESC, agent_id DESC, seq DESC, event_id DESC, content_hash DESC"


def counts_after(after: CountKey) -> tuple[str, tuple[Any, ...]]:
    return "(location, sku) > ({}, {})", (after.location, after.sku)


DIVERGENCE_ORDER = "location, sku, system"


def divergence_after(after: DivergenceKey) -> tuple[str, tuple[Any, ...]]:
    return "(location, sku, system) > ({}, {}, {})", (after.location, after.sku, after.system)
