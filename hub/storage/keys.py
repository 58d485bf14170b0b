"""Positions in the hub's paged reads: the full order key of a row, so a page starts right after the last
row of the page before it and a walk over every page sees every row exactly once (``hub.paging`` turns
them into opaque cursors).

* The ledger is newest first by ``(occurred_at, agent_id, seq, event_id, part, tiebreak)``: the
  resolution order, then which table the row comes from (``PART_EVENT``, ``PART_REJECTION``,
  ``PART_WRITEOFF``: a refused attempt can share its event's id and stamp) and, for rejections, the
  attempt's content hash (one id can be refused with several contents). No two rows share a key.
* Counts are ordered by ``(location, sku)``, their primary key.
* Exceptions are newest first by ``(at_ms, kind, location, sku, ident)``, ``ident`` a digest of what
  the exception is about (``exception_ident``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from hub.resolver import Effect
from hub.storage.base import CountRow, ExceptionRow, LedgerRow

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


@dataclass(frozen=True, slots=True)
class ExceptionKey:
    at_ms: int
    kind: str
    location: str
    sku: str
    ident: str

    def sort_key(self) -> tuple[int, str, str, str, str]:
        """Ascending in this is the list's order (newest first)."""
        return (-self.at_ms, self.kind, self.location, self.sku, self.ident)


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


def exception_ident(row: ExceptionRow) -> str:
    """What tells two exceptions of one kind, time, location and SKU apart: a digest of their data."""
    data = json.dumps(row.data, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=True)
    return hashlib.blake2b(data.encode("ascii"), digest_size=8).hexdigest()


def exception_key(row: ExceptionRow) -> ExceptionKey:
    return ExceptionKey(row.at_ms, row.kind, row.location or "", row.sku or "", exception_ident(row))


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
