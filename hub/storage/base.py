"""The hub's storage values and errors, and ``HubStore``: the union of the narrow interfaces of
``hub.storage.interfaces``. SQLite (default) and PostgreSQL implement it (``hub.storage.store``).

Every backend passes one contract test suite (tests/hub/storage_contract.py).
All methods are coroutines; a store is an async context manager and
``close()`` is safe to call twice; any call after it raises ``StoreClosed``.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, NamedTuple, Self, TypeVar

from hub.resolver import Effect as Effect  # noqa: PLC0414 (re-exported: the ledger speaks the resolver's words)
from hub.storage import interfaces as i
from protocol import CountSnapshot, Rejection


class HubError(Exception):
    """Base of every error the hub raises on purpose."""


class StoreClosed(HubError):
    def __init__(self) -> None:
        super().__init__("the hub store is closed")


class StoreError(HubError):
    """The database failed or cannot be used (the message says which, the cause is chained)."""


class DatabaseUnreachable(StoreError):
    """The database server could not be reached, or would not take a session yet (down, starting, shutting down,
    out of connection slots), when the store was opened: not a configuration error, so the hub's service starts
    the hub again (exit status 1) rather than leaving it down (2)."""


class CredentialChanged(HubError):
    """The credential a batch was let in with is no longer what it was when its transaction confirmed it (revoked,
    bound elsewhere, its token replaced): nothing of the batch was written. The caller asks for the credential
    again, and answers 401 if it is gone (``IngestStore.ingest``'s ``credential``)."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(f"the credential {agent_id} changed while its batch was being booked")
        self.agent_id = agent_id


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
    # When the credential was created (the clock window's lower bound); None: unknown. Not part of who it is.
    created_ms: int | None = field(default=None, compare=False)


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
    chain: bytes | None = None  # the sender's lineage digest at hwm as the hub stores it; None: unknown
    held: int = 0  # the sender's events waiting in the clock quarantine for an operator
    change_id: int | None = None  # the change feed's newest id as of this commit (its own changes included)
    # Events it held were marked by a finding of the hub's own clock already found right again (by another hub
    # process, ``hub.storage.held.finding_covers``): the caller releases them (``HubStore.release_hub_clock``).
    release_hub_clock: bool = False


@dataclass(frozen=True, slots=True)
class Lineage:
    """A sender's report of its outbox lineage (agent.outbox): ``chain`` is its digest at the last seq of
    the batch (at its acknowledged mark when the batch is empty); a new epoch continues from ``epoch_base``,
    whose digest is ``base_chain``: the hub starts the epoch's mark there instead of at 0."""

    chain: bytes | None = None
    epoch_base: int = 0
    base_chain: bytes | None = None


class AlreadyResolved(HubError):
    """A quarantined event an operator already applied or discarded."""


QUARANTINE_ACTIONS = ("apply_at_receipt", "discard")
QUARANTINE_STATUSES = ("pending", "applied", "discarded")


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    """An event held back because its stamp was outside the clock window (hub.clock_window)."""

    quarantine_id: int
    event_id: bytes
    agent_id: str
    epoch: int
    seq: int
    location: str
    sku: str
    kind: str
    qty: int
    occurred_at: int  # the original stamp (packed HLC), as the sender's clock gave it
    wall_ms: int
    source: str
    ref: str | None
    reason: str | None
    attrs: dict[str, Any]
    detail: str  # why it was held, as answered to the sender
    attempts: int  # deliveries of it the hub received
    received_at_ms: int  # the hub's clock at its first receipt: where apply_at_receipt places it
    status: str  # "pending" | "applied" | "discarded"
    resolved_by: str | None = None  # the operator's credential id
    resolved_at_ms: int | None = None
    sent_ms: int | None = None  # the sender's wall clock when it sent the batch (None: not reported)
    # The hub's own clock was this far off its stores' when it held the event (its stores agreed, and the sender
    # with them: hub.clock_window.HubClockSuspicion); None: the hub had no reason to doubt its clock.
    hub_clock_off_ms: int | None = None
    # How many of the other stores that synced lately put the hub's clock right when it held the event, when they
    # were more than half of them (the sender's clock was the odd one: schema 32); None: they did not, or none.
    hub_clock_vouched: int | None = None

    @property
    def skew_ms(self) -> int:
        """The stamp's wall part minus the hub's clock at receipt (positive: ahead)."""
        return (self.occurred_at >> 16) - self.received_at_ms


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
    content_hash: bytes | None = None  # for effect == rejected: which attempt (one id may be refused with several)
    expansion: BundleExpansion | None = None  # for effect == expanded (a bundle's movement): how it was booked


@dataclass(frozen=True, slots=True)
class BundleExpansion:
    """How a bundle's movement was booked on its parts, fixed when the hub first stored it."""

    version: int  # the bundle's recipe version that applied
    parts: tuple[tuple[str, int], ...]  # (part SKU, units per bundle), by SKU: each part moved qty × units

    def as_json(self) -> dict[str, Any]:
        return {"recipe_version": self.version, "parts": dict(self.parts)}


class BundleConflict(HubError):
    """A recipe the hub cannot take as things stand (a cycle, a SKU holding stock of its own); one sentence."""


@dataclass(frozen=True, slots=True)
class BundleRecipe:
    """One version of a bundle's recipe as an admin set it; it applies to movements stored from ``valid_from_ms``."""

    sku: str
    version: int  # 1, 2, … per bundle
    valid_from_ms: int
    components: tuple[tuple[str, int], ...]  # (component SKU, units per bundle) by SKU; a component may be a bundle
    set_by: str


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle as it stands: its recipe in force, and what one of it moves (bundles in it replaced by their parts)."""

    recipe: BundleRecipe
    parts: tuple[tuple[str, int], ...]  # (plain SKU, units per bundle), by SKU


@dataclass(frozen=True, slots=True)
class ExceptionRow:
    kind: str  # "negative_on_hand", "transfer_short", "transfer_over", "transfer_unmatched", "rejected_event", ...
    location: str | None
    sku: str | None
    detail: str  # one sentence for the operations team
    data: dict[str, Any] = field(default_factory=dict)
    at_ms: int = 0
    # Where it comes from (``hub.storage.keys.EXCEPTION_SOURCES``) and that source's own key of it: with
    # ``at_ms``, the exception's place in the list (``hub.storage.keys.exception_key``), shared with no other.
    source: str = ""
    ident: tuple[str | int | bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentDisk:
    """A store agent's newest report of the disk its outbox is on (``protocol.DiskReport``, schema version 21)."""

    state: str  # ok, reserve_in_use or full (``protocol.DiskReport.state``)
    since_ms: int  # hub wall ms of the first report of that state
    at_ms: int  # hub wall ms when the newest report arrived
    reserve_bytes: int
    reserve_held_bytes: int
    free_bytes: int | None
    refused_ms: int | None  # the agent's wall ms of a write the full disk refused (None: the disk took the last)

    @classmethod
    def from_row(
        cls, state: str | None, since_ms: int | None, at_ms: int | None, report: str | None
    ) -> AgentDisk | None:
        """From the columns ``disk_state, disk_since_ms, disk_at_ms, disk`` of ``agents``; None: never reported."""
        if state is None or report is None:
            return None
        got = json.loads(report)
        return cls(
            state, int(since_ms or 0), int(at_ms or 0), got["reserve_bytes"], got["reserve_held_bytes"],
            got.get("free_bytes"), got.get("refused_ms"),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class AgentStatus:
    agent_id: str
    locations: tuple[str, ...]
    last_sync_ms: int | None
    hwm: dict[int, int]  # epoch -> high-water mark, the epoch marked last comes last (a fork's new epoch)
    clock_skew_ms: int | None  # hub wall clock − the newest event wall clock of the last batch
    role: str = "agent"
    revoked: bool = False
    # The agent's own report of its outbox, from its newest sync request that carried one (None: never reported).
    backlog: int | None = None  # events waiting at the store, not yet acknowledged by a hub
    oldest_pending_ms: int | None = None  # wall ms of the oldest of them (None when the backlog is empty)
    backlog_at_ms: int | None = None  # hub wall ms when that report arrived
    disk: AgentDisk | None = None  # its newest report of its disk (None: never reported)


@dataclass(frozen=True, slots=True)
class ChangeRow:
    """One committed change of a (location, sku)'s counts, as the change feed serves it.

    ``change_id`` follows commit order: strictly increasing, never reused, and a
    reader never sees change N+1 before change N. ``event_ids`` are (some of) the
    events that caused it, at most ``CHANGE_EVENT_IDS_MAX``; empty when the change
    is not an event's (a safety stock set by an admin).
    """

    change_id: int
    location: str
    sku: str
    on_hand: int
    reserved: int
    available: int
    in_transit: int
    event_ids: tuple[bytes, ...]
    at_ms: int


CHANGE_EVENT_IDS_MAX = 16  # event ids kept per change row; the ledger has them all


class WebhookState(NamedTuple):
    """Where one webhook stands. A tuple, so ``cursor, last_error, attempts = …`` works too."""

    cursor: int  # the last change_id delivered (0: none yet)
    last_error: str | None  # the last delivery failure, None after a success
    attempts: int  # failed attempts since the last success


class WebhookClaim(NamedTuple):
    """What became of a hub's settings for a webhook at its start (``FeedStore.claim_webhook_settings``)."""

    outcome: str  # "same": stored already | "stored": none were, the cursor stays | "reset": others were, replaced,
    # and the cursor is back at 0 | "aside": another hub stored others after this one first read them
    stored: str | None  # "reset": the settings replaced; "aside": the ones standing; else what is stored now


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One delivery attempt of changes ``first_change``..``last_change`` to a webhook."""

    delivery_id: int
    name: str
    first_change: int
    last_change: int
    status: str  # "delivered" | "failed" (free text for the feed helper; stored as given)
    http_status: int | None
    error: str | None
    at_ms: int


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One barcode the hub knows: what SKU it is and how many base units one scan means."""

    barcode: str  # GTIN-8/12/13/14 digits or other scanned text, at most 64 characters
    sku: str
    pack_size: int = 1
    description: str = ""


@dataclass(frozen=True, slots=True)
class Catalog:
    version: int  # 0 for an empty catalog that was never written; +1 on every change
    items: tuple[CatalogItem, ...]


@dataclass(frozen=True, slots=True)
class CatalogUpdate:
    """The answer to ``put_catalog``: the new version and the barcodes whose mapping changed."""

    version: int
    updated: int  # items inserted or changed (unchanged ones do not count)
    changed: tuple[str, ...]  # barcodes inserted or changed


@dataclass(frozen=True, slots=True)
class Observation:
    """Another system's on-hand belief for one (location, sku) at one time (a snapshot, never a movement)."""

    obs_id: str  # the sender's id, unique per agent
    location: str
    sku: str
    system: str  # "shopify", "square" ...
    on_hand: int
    observed_at_ms: int
    source_file: str = ""


@dataclass(frozen=True, slots=True)
class ImportIssue:
    """A row of a POS export that the agent quarantined instead of importing."""

    issue_id: str  # the sender's id, unique per agent
    location: str
    file: str
    line: int
    reason: str
    raw: str = ""


@dataclass(frozen=True, slots=True)
class ReportResult:
    """The answer to a batch of observations or import issues: ids kept (new or resent) and refused."""

    accepted: tuple[str, ...]
    rejected: tuple[tuple[str, str], ...]  # (id, reason)


@dataclass(frozen=True, slots=True)
class DivergenceRow:
    """The latest observation of one (system, location, sku) against the hub's on_hand at its time."""

    system: str
    location: str
    sku: str
    observed: int
    hub_on_hand: int  # the hub's on_hand as of observed_at_ms
    difference: int  # observed − hub_on_hand
    observed_at_ms: int
    agent_id: str
    obs_id: str
    source_file: str
    received_at_ms: int


# A row of the shrinkage report by SKU: (location, sku, counts, shrinkage, overage, first_at, last_at), the times
# packed HLCs of its oldest and newest count.
VarianceSkuRow = tuple[str, str, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class VarianceReport:
    """The shrinkage report by SKU as its first page found it, kept for its later pages (schema 30): its period
    (Unix ms, ``to_ms`` excluded), filters, and the totals of every row; its rows are kept in parts beside it."""

    report_id: str
    made_ms: int
    from_ms: int
    to_ms: int
    location: str | None
    sku: str | None
    row_count: int
    counts: int
    shrinkage: int
    overage: int


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


class HubStore(
    i.CredentialStore, i.IngestStore, i.LedgerStore, i.FeedStore, i.CatalogStore, i.ReportStore, i.QuarantineStore,
    i.BundleStore, i.HealthStore, abc.ABC,
):  # fmt: skip
    """One hub database: every interface of ``hub.storage.interfaces``. Every write is one transaction; see
    docs/design.md."""

    # Its writes run on a thread of the hub's own process that needs the GIL (SQLite's writer): the hub then
    # decodes every big sync body in a worker process (hub.decoding). False: writes are awaits of the event loop.
    WRITES_ON_A_THREAD: ClassVar[bool] = True
    # The database's id, made when it was created and kept in its meta table (a restore of another hub's backup
    # brings that hub's id): GET /healthz's ``db.hub_id`` and every answer's ``Shelfsync-Hub-Id`` (protocol.routes).
    hub_id: str

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abc.abstractmethod
    async def close(self) -> None: ...
