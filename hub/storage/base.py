"""The hub's storage interface. SQLite (default) and PostgreSQL implement it.

Every backend passes one contract test suite (tests/hub/storage_contract.py).
All methods are coroutines; a store is an async context manager and
``close()`` is safe to call twice; any call after it raises ``StoreClosed``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self

from protocol import CountSnapshot, Rejection, StockEvent


class HubError(Exception):
    """Base of every error the hub raises on purpose."""


class StoreClosed(HubError):
    def __init__(self) -> None:
        super().__init__("the hub store is closed")


class Effect(StrEnum):
    """What an event did, as the ledger shows it."""

    APPLIED = "applied"  # counted in on_hand (or in reserved, for reserve/release)
    SUPERSEDED = "superseded"  # a delta ordered before the last count: the count already saw it
    DUPLICATE = "duplicate"  # a resend of an event already in the ledger
    REJECTED = "rejected"  # refused; never counted (reason kept)


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """Who is calling: an agent bound to locations, a reader, or an admin."""

    agent_id: str
    locations: frozenset[str]
    role: str = "agent"  # "agent" | "reader" | "admin"


@dataclass(frozen=True, slots=True)
class IngestResult:
    agent_id: str
    epoch: int
    hwm: int
    rejected: tuple[Rejection, ...]
    duplicates: int
    applied: int
    counts: tuple[CountSnapshot, ...]


@dataclass(frozen=True, slots=True)
class CountRow:
    location: str
    sku: str
    on_hand: int
    reserved: int
    available: int
    in_transit: int
    safety_stock: int
    last_count_at: int | None  # packed HLC of the last count, if any
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class LedgerRow:
    event_id: bytes
    agent_id: str
    epoch: int
    seq: int
    location: str
    sku: str
    kind: str
    qty: int
    occurred_at: int
    wall_ms: int
    source: str
    ref: str | None
    reason: str | None
    attrs: dict[str, Any]
    effect: Effect
    variance: int | None  # counts only: counted − expected at the count's place in the order
    duplicates: int  # how many resends of this event the hub has seen and ignored
    received_at_ms: int
    rejection: str | None = None  # for effect == rejected: why


@dataclass(frozen=True, slots=True)
class ExceptionRow:
    kind: str  # "negative_on_hand", "transfer_short", "transfer_over", "transfer_unmatched", "rejected_event", ...
    location: str | None
    sku: str | None
    detail: str  # one sentence for the operations team
    data: dict[str, Any] = field(default_factory=dict)
    at_ms: int = 0


@dataclass(frozen=True, slots=True)
class AgentStatus:
    agent_id: str
    locations: tuple[str, ...]
    last_sync_ms: int | None
    hwm: dict[int, int]  # epoch -> high-water mark
    clock_skew_ms: int | None


class HubStore(abc.ABC):
    """One hub database. Every write is one transaction; see DESIGN.md."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def close(self) -> None: ...

    # --- credentials ---------------------------------------------------
    @abc.abstractmethod
    async def add_agent(self, locations: Sequence[str], role: str = "agent") -> tuple[str, str]:
        """Create a credential; return (agent_id, token). Only the token's hash is stored."""

    @abc.abstractmethod
    async def authenticate(self, token: str) -> AgentIdentity | None:
        """The identity for a bearer token, or None if unknown or revoked."""

    @abc.abstractmethod
    async def revoke_agent(self, agent_id: str) -> bool: ...

    # --- ingest ----------------------------------------------------------
    @abc.abstractmethod
    async def ingest(self, who: AgentIdentity, epoch: int, events: Sequence[StockEvent]) -> IngestResult:
        """Dedupe, check, order, resolve and commit ``events`` and the new
        high-water mark for (who.agent_id, epoch) in one transaction.

        Events for locations ``who`` is not bound to, and events whose id is
        already stored with different content, are rejected (kept in the
        rejections log, never counted). The answer carries the counts of every
        (location, sku) the batch touched, read inside the same transaction.
        """

    # --- reads -----------------------------------------------------------
    @abc.abstractmethod
    async def counts(self, *, location: str | None = None, sku: str | None = None, limit: int = 1000) -> list[CountRow]: ...

    @abc.abstractmethod
    async def ledger(
        self, *, location: str | None = None, sku: str | None = None, limit: int = 1000, before: int | None = None
    ) -> list[LedgerRow]:
        """Events (and rejected attempts) newest first in resolution order."""

    @abc.abstractmethod
    async def exceptions(self, *, location: str | None = None, limit: int = 1000) -> list[ExceptionRow]: ...

    @abc.abstractmethod
    async def agent_status(self, agent_id: str | None = None) -> list[AgentStatus]: ...

    @abc.abstractmethod
    async def set_safety_stock(self, location: str, sku: str, qty: int) -> CountRow: ...

    @abc.abstractmethod
    async def health(self) -> dict[str, Any]: ...
