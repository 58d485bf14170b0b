"""The hub's storage interface. SQLite (default) and PostgreSQL implement it.

Every backend passes one contract test suite (tests/hub/storage_contract.py).
All methods are coroutines; a store is an async context manager and
``close()`` is safe to call twice; any call after it raises ``StoreClosed``.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar

from hub.resolver import Effect as Effect  # noqa: PLC0414 (re-exported: the ledger speaks the resolver's words)
from protocol import CountSnapshot, Rejection, StockEvent


class HubError(Exception):
    """Base of every error the hub raises on purpose."""


class StoreClosed(HubError):
    def __init__(self) -> None:
        super().__init__("the hub store is closed")


class StoreError(HubError):
    """The database failed or cannot be used (the message says which, the cause is chained)."""


class Forbidden(HubError):
    """The credential may not do this (a reader sending stock events)."""


class InvalidInput(HubError, ValueError):
    """An argument outside the contract (a bad role, location code or quantity)."""


ROLES = ("agent", "reader", "admin")
INGEST_ROLES = frozenset({"agent", "admin"})


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """Who is calling: an agent bound to locations, a reader, or an admin."""

    agent_id: str
    locations: frozenset[str]
    role: str = "agent"  # "agent" | "reader" | "admin"


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The answer to one batch, computed inside its transaction.

    ``applied`` counts events stored for the first time (their effect may be
    superseded); ``duplicates`` counts resends ignored; ``counts`` holds a
    snapshot of every (location, sku) the batch's stored or resent events touch.
    """

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
    rejection_code: str | None = None  # for effect == rejected: "forbidden_location", "conflict", ...


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
    clock_skew_ms: int | None  # hub wall clock − the newest event wall clock of the last batch
    role: str = "agent"
    revoked: bool = False


S_co = TypeVar("S_co", bound="HubStore", covariant=True)


class StoreOpener(Generic[S_co]):
    """What ``SomeStore.open(...)`` returns: ``await`` it for a store you close
    yourself, or use it as ``async with SomeStore.open(...) as store:``."""

    __slots__ = ("_open", "_store")

    def __init__(self, open_: Callable[[], Awaitable[S_co]]) -> None:
        self._open = open_
        self._store: S_co | None = None

    def __await__(self) -> Generator[Any, None, S_co]:
        return self._open().__await__()

    async def __aenter__(self) -> S_co:
        self._store = await self._open()
        return self._store

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            await self._store.close()


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
    async def revoke_agent(self, agent_id: str) -> bool:
        """Revoke a credential; True if it was active until now."""

    # --- ingest ----------------------------------------------------------
    @abc.abstractmethod
    async def ingest(self, who: AgentIdentity, epoch: int, events: Sequence[StockEvent]) -> IngestResult:
        """Dedupe, check, order, resolve and commit ``events`` and the new
        high-water mark for (who.agent_id, epoch) in one transaction.

        Events for locations ``who`` is not bound to, and events whose id is
        already stored with different content, are rejected (kept in the
        rejections log, never counted). The answer carries the counts of every
        (location, sku) the batch touched, read inside the same transaction.
        Raises ``Forbidden`` unless ``who.role`` is "agent" or "admin".
        """

    # --- reads -----------------------------------------------------------
    @abc.abstractmethod
    async def counts(
        self, *, location: str | None = None, sku: str | None = None, limit: int = 1000
    ) -> list[CountRow]: ...

    @abc.abstractmethod
    async def ledger(
        self, *, location: str | None = None, sku: str | None = None, limit: int = 1000, before: int | None = None
    ) -> list[LedgerRow]:
        """Events (and rejected attempts) newest first in resolution order;
        ``before`` (a packed HLC) keeps only those with ``occurred_at < before``."""

    @abc.abstractmethod
    async def exceptions(self, *, location: str | None = None, limit: int = 1000) -> list[ExceptionRow]: ...

    @abc.abstractmethod
    async def agent_status(self, agent_id: str | None = None) -> list[AgentStatus]: ...

    @abc.abstractmethod
    async def set_safety_stock(self, location: str, sku: str, qty: int) -> CountRow:
        """Set the units held back from ``available`` at one (location, sku)."""

    @abc.abstractmethod
    async def health(self) -> dict[str, Any]: ...
