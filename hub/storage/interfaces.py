"""The hub store's narrow interfaces, one per concern; ``hub.storage.base.HubStore`` is their union.

A route or helper that needs a store names only the interface it uses
(``store: FeedStore``), so what it depends on is in its signature. Every
method is a coroutine. The values they take and answer are those of
``hub.storage.base`` (imported here for type checking only: base imports this
module to build ``HubStore``).
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from hub.storage.base import (
        AgentIdentity,
        AgentStatus,
        Bundle,
        BundleRecipe,
        Catalog,
        CatalogItem,
        CatalogUpdate,
        ChangeRow,
        CountRow,
        DivergenceRow,
        ExceptionRow,
        ImportIssue,
        IngestResult,
        LedgerRow,
        Lineage,
        Observation,
        QuarantineRow,
        ReportResult,
        VarianceReport,
        WebhookClaim,
        WebhookDelivery,
        WebhookState,
    )
    from hub.storage.keys import CountKey, DivergenceKey, ExceptionKey, LedgerKey
    from protocol import DiskReport, LostReport, StockEvent


class CredentialStore(Protocol):
    """Who may call: bearer credentials, and where each agent stands."""

    @abc.abstractmethod
    async def add_agent(
        self, locations: Sequence[str], role: str = "agent", agent_id: str | None = None
    ) -> tuple[str, str]:
        """Create a credential; return (agent_id, token). Only the token's hash is stored. ``agent_id``: the
        id to give it (``InvalidInput`` when it is not a valid agent id or any credential, revoked too, has
        it); None: a new random one."""

    @abc.abstractmethod
    async def authenticate(self, token: str) -> AgentIdentity | None:
        """The identity for a bearer token, or None if unknown or revoked."""

    @abc.abstractmethod
    async def revoke_agent(self, agent_id: str) -> bool:
        """Revoke a credential; True if it was active until now."""

    @abc.abstractmethod
    async def bind_agent(self, agent_id: str, locations: Sequence[str]) -> tuple[str, ...]:
        """Bind an active agent or admin credential to ``locations`` instead of the ones it had; return those.
        ``InvalidInput`` for an unknown, revoked or reader credential or a bad location. Effective at the next
        request: credentials are read at every request, never cached."""

    @abc.abstractmethod
    async def agent_status(self, agent_id: str | None = None) -> list[AgentStatus]:
        """Every credential (or ``agent_id``'s) with its marks, last sync and the backlog it reported."""

    @abc.abstractmethod
    async def store_clock_skews(self, locations: Collection[str]) -> dict[str, int]:
        """The clock skew (hub minus PC, ms) of the store PC booking at each of ``locations``: of the active agent
        credentials bound there whose skew the hub measured, the one synced last; a location without one is left
        out. One indexed read of those locations' credentials (schema 18), not every store's."""


class IngestStore(Protocol):
    """Stock events in: the one write path of movements."""

    @abc.abstractmethod
    async def ingest(
        self,
        who: AgentIdentity,
        epoch: int,
        events: Sequence[StockEvent],
        acked_seq: int = 0,
        *,
        backlog: int | None = None,
        oldest_pending_ms: int | None = None,
        lineage: Lineage | None = None,
        clock_window_ms: int | None = None,
        sent_ms: int | None = None,
        after_seq: int | None = None,
        peer: str | None = None,
        credential: str | None = None,
        disk: DiskReport | None = None,
        hub_clock_off_ms: int | None = None,
        hub_clock_vouched: int | None = None,
        hub_clock_at_ms: int | None = None,
        lost: LostReport | None = None,
    ) -> IngestResult:
        """Dedupe, check, order, resolve and commit ``events`` and the new
        high-water mark for (who.agent_id, epoch) in one transaction.

        ``clock_window_ms`` (None: no window): an event whose stamp is further
        than this ahead of the hub's clock, or before ``who.created_ms`` minus
        it, is held in quarantine (``quarantine``), answered as rejected with
        code "quarantined" and counted as processed for the mark. ``sent_ms``:
        the sender's wall clock when it sent; its clock skew is measured from it.
        ``hub_clock_off_ms``: the hub's own clock is this far off its stores',
        the sender's with them; kept with what is held (``release_hub_clock``).
        ``hub_clock_vouched``: how many other stores put the hub's clock right,
        the sender's being the odd one; kept with what is held (``release_held``).
        ``hub_clock_at_ms``: the hub's time when it read those two (None: as it
        judges the batch); a batch that waited for its turn since may be written
        after the hub found its clock right again.
        ``lost``: the sender's report of movements the hub lacks for good (schema
        version 34), kept in the same transaction; the same report again changes nothing.
        Transfer events breaking ``hub.resolver.transfer_problem`` are rejected
        ("invalid_transfer").

        An event is identified by (who.agent_id, event_id): ids are namespaced
        by the credential, and two deliveries are the same event iff their
        movement content is equal (epoch and seq are delivery data; the stored
        event keeps its first). ``lineage`` (optional): the mark is stored with
        the sender's chain digest, answered as ``IngestResult.chain``; an epoch
        seen for the first time starts at ``lineage.epoch_base``.

        ``credential`` (optional): the SHA-256 hash of the bearer token ``who`` was found by. The transaction
        reads the credential again and writes nothing unless it still has that hash, ``who``'s locations and no
        revocation (``CredentialChanged``), so the caller may have found ``who`` in a cache, and a credential
        revoked while its batch waited is never booked.

        ``backlog`` and ``oldest_pending_ms`` are the sender's report of its
        outbox (events not yet acknowledged, and the wall ms of the oldest);
        when ``backlog`` is given, both are stored with the hub's time in the
        same transaction (``AgentStatus``). None means "not reported": the
        previous report stays. Negative values raise ``InvalidInput``.

        ``acked_seq`` is the sender's acknowledged mark. When it is above the
        mark the hub holds (the hub database was restored from an older copy),
        the batch is still committed but the answer's ``hwm`` is the hub's mark
        from before the batch, so the agent rewinds and resends what was lost.
        ``after_seq`` (None: the batch follows on from ``acked_seq``): the seq
        the batch follows on from, a batch before it not yet answered; while
        the mark is below it, the batch is committed and the mark stays.
        ``peer``: the address the request came from (None: not known), kept
        with the epoch's mark and its last two syncs (two copies of one agent
        syncing at once are an exception, ``agent_copies``).

        Every (location, sku) whose on_hand, reserved, available or in_transit
        changed gets one row in the change feed, in the same transaction.

        Events for locations ``who`` is not bound to, and events whose id is
        already stored with different content, are rejected (kept in the
        rejections log, never counted). The answer carries the counts of every
        (location, sku) the batch touched, read inside the same transaction.
        Raises ``Forbidden`` unless ``who.role`` is "agent" or "admin".
        """


class LedgerStore(Protocol):
    """Counts and the ledger behind them, and the safety stock held back from ``available``."""

    @abc.abstractmethod
    async def counts(
        self, *, location: str | None = None, sku: str | None = None, limit: int = 1000, after: CountKey | None = None,
        skus: Sequence[str] | None = None,
    ) -> list[CountRow]:  # fmt: skip
        """Counts ordered by (location, sku); ``after`` keeps those ordered after that key (the next page); ``skus``
        keeps those of any of these SKUs."""

    @abc.abstractmethod
    async def skus_counted(self, skus: Collection[str]) -> set[str]:
        """Those of ``skus`` the hub counts at some location (that have a stock row): one read of the stock's SKU
        index for all of them."""

    @abc.abstractmethod
    async def ledger(
        self,
        *,
        location: str | None = None,
        sku: str | None = None,
        limit: int = 1000,
        before: int | None = None,
        after: LedgerKey | None = None,
    ) -> list[LedgerRow]:
        """Events, rejected attempts and transfer write-offs newest first in the full order of
        ``hub.storage.keys.ledger_key``; ``before`` (a packed HLC) keeps only those with
        ``occurred_at < before``; ``after`` only those ordered after that key (the next page)."""

    @abc.abstractmethod
    async def set_safety_stock(self, location: str, sku: str, qty: int) -> CountRow:
        """Set the units held back from ``available`` at one (location, sku)."""


class FeedStore(Protocol):
    """The change feed, and where each webhook stands (the feed helper drives them; the store keeps it)."""

    feed_history: str  # the feed's history, which its cursors carry (hub.storage.feed; "" for a store without one)

    @abc.abstractmethod
    async def changes(
        self, after: int, limit: int, location: str | None = None, sku: str | None = None
    ) -> list[ChangeRow]:
        """Change rows with ``change_id > after``, oldest first, at most ``limit``;
        optionally of one location and/or one SKU. Resuming with the last id read
        yields exactly the rest, each change once, in commit order."""

    @abc.abstractmethod
    async def latest_change_id(self) -> int:
        """The newest change_id committed (0 when there is none)."""

    @abc.abstractmethod
    async def webhook_state(self, name: str) -> WebhookState:
        """Where webhook ``name`` stands; ``WebhookState(0, None, 0)`` if never saved."""

    @abc.abstractmethod
    async def save_webhook_state(
        self, name: str, cursor: int, last_error: str | None = None, attempts: int = 0, settings: str | None = None
    ) -> None:
        """Upsert the state of webhook ``name``; its cursor never moves backwards (a lower one is not saved).
        ``settings``: saved only while the webhook's stored settings are these, or none (``claim_webhook_settings``)."""

    @abc.abstractmethod
    async def webhook_settings(self, name: str) -> str | None:
        """The settings webhook ``name``'s cursor was earned against (``claim_webhook_settings``); None if none."""

    @abc.abstractmethod
    async def claim_webhook_settings(self, name: str, settings: str, seen: str | None) -> WebhookClaim:
        """At a deliverer's start: make ``settings`` the webhook's, starting its cursor again from 0 when others
        were stored, unless another hub stored them after this one first read ``seen`` (``hub.storage.feed``)."""

    @abc.abstractmethod
    async def log_webhook_delivery(
        self,
        name: str,
        first_change: int,
        last_change: int,
        status: str,
        http_status: int | None,
        error: str | None,
        at_ms: int,
    ) -> None:
        """Append one delivery attempt to the webhook's log."""

    @abc.abstractmethod
    async def webhook_deliveries(
        self, name: str, limit: int = 100, before_id: int | None = None
    ) -> list[WebhookDelivery]:
        """The webhook's delivery attempts, newest first (by ``delivery_id``); ``before_id``: only those with
        a smaller id (the page after a row)."""


class CatalogStore(Protocol):
    """Barcodes to SKUs, and the events booked under barcodes the catalog did not know."""

    feed_history: str  # the database's history (hub.storage.feed): the catalog's ETag carries it, as a restore resets versions

    @abc.abstractmethod
    async def catalog(self) -> Catalog:
        """Every catalog item (ordered by barcode) and the catalog version."""

    @abc.abstractmethod
    async def catalog_version(self) -> int:
        """The catalog version alone (cheap: for ETag / If-None-Match)."""

    @abc.abstractmethod
    async def put_catalog(self, items: Sequence[CatalogItem]) -> CatalogUpdate:
        """Upsert ``items`` by barcode in one transaction. The version goes up by
        one iff some item was inserted or changed."""

    @abc.abstractmethod
    async def unknown_events(self, skus: Sequence[str]) -> list[LedgerRow]:
        """Every stored event (not rejected attempts) whose sku is one of ``skus``
        (the "unknown:<barcode>" keys), in resolution order."""


class ReportStore(Protocol):
    """What needs a person, and what the stores report besides movements: observations, import issues."""

    @abc.abstractmethod
    async def exceptions(
        self, *, location: str | None = None, limit: int = 1000, transfer_open_max_ms: int | None = None,
        after: ExceptionKey | None = None, kind: str | None = None, since_ms: int | None = None,
        copies_window_ms: int | None = None,
    ) -> list[ExceptionRow]:
        """What needs a person, newest first in the full order of ``hub.storage.keys.exception_key``
        (``at_ms``, then source and the source's own key); ``after`` keeps those ordered after that key (the
        next page). With ``transfer_open_max_ms``, transfers still open with units in transit that long
        after their first shipment are listed too ("transfer_overdue"); with ``copies_window_ms``, agents two
        epochs of which each synced within it, each twice since the other began ("agent_copies"). ``location`` (either end of a
        transfer), ``kind`` (one of ``keys.EXCEPTION_KINDS``) and ``since_ms`` (``at_ms`` at or after it)
        filter the list in each source's SQL; an unknown kind is ``InvalidInput``."""

    @abc.abstractmethod
    async def dismiss_lost(self, agent_id: str, by: str, now_ms: int) -> list[tuple[int, int, int, bool]]:
        """An admin's word that the stock of ``agent_id``'s store was counted again: its reports of movements the
        hub lacks for good (``agent_movements_lost``) still listed leave the list, dismissed by ``by`` at
        ``now_ms``. Their (first_seq, last_seq, lost, at_least), oldest first; none listed: []."""

    @abc.abstractmethod
    async def add_observations(self, who: AgentIdentity, observations: Sequence[Observation]) -> ReportResult:
        """Store observations sent by ``who``, deduplicated by (agent_id, obs_id).
        An observation of a location ``who`` is not bound to is rejected; a resend
        (same id, same content) is accepted again, a different content under a
        known id is rejected."""

    @abc.abstractmethod
    async def add_import_issues(self, who: AgentIdentity, issues: Sequence[ImportIssue]) -> ReportResult:
        """Store quarantined import rows sent by ``who``; the same rules as ``add_observations``."""

    @abc.abstractmethod
    async def divergence(
        self, *, location: str | None = None, system: str | None = None, limit: int = 1000,
        after: DivergenceKey | None = None,
    ) -> list[DivergenceRow]:
        """For the latest observation per (system, location, sku): the hub's
        on_hand as of its ``observed_at_ms`` (the last count ordered before it
        plus the deltas between) next to the observed value, for those whose
        difference reaches the threshold (``hub.resolver.diverges``), ordered
        by (location, sku, system); ``after`` keeps those ordered after that key
        (the next page)."""

    @abc.abstractmethod
    async def keep_variance_report(self, report: VarianceReport, parts: Sequence[str]) -> None:
        """Keep the shrinkage report by SKU its first page found, for its later pages on any hub: ``parts`` are its
        rows in its order, ``hub.storage.reports.VARIANCE_PART_ROWS`` to a part, each as JSON text. Reports kept
        longer than ``hub.storage.reports.VARIANCE_KEEP_MS``, and the oldest beyond the newest
        ``VARIANCE_KEEP_MAX``, are removed meanwhile."""

    @abc.abstractmethod
    async def kept_variance_report(
        self, report_id: str, first_part: int, last_part: int, *, now_ms: int
    ) -> tuple[VarianceReport, list[str]] | None:
        """A kept report and its parts ``first_part`` to ``last_part`` (those past its end are left out); None
        when no report of that id is kept (removed, or kept longer than ``VARIANCE_KEEP_MS`` before ``now_ms``)."""


class QuarantineStore(Protocol):
    """Events held for a stamp outside the clock window (schema version 5), and their resolution."""

    @abc.abstractmethod
    async def quarantine(
        self, *, status: str | None = "pending", location: str | None = None, limit: int = 1000,
        before_id: int | None = None,
    ) -> list[QuarantineRow]:
        """Events held for a stamp outside the clock window, newest first (by ``quarantine_id``); ``status``
        None: all; ``before_id``: only those with a smaller id (the page after a row)."""

    @abc.abstractmethod
    async def quarantine_totals(self) -> tuple[int, dict[str, int]]:
        """How many events are held pending, counted in one query: those held because of the hub's own clock
        (``release_hub_clock`` takes them), and per agent those it did not attribute to it (``release_held``)."""

    @abc.abstractmethod
    async def quarantine_vouched(self) -> dict[str, int]:
        """Per agent with any pending held event it did not attribute that has a ``hub_clock_vouched``, the most
        other stores that vouched (``release_held`` with the hub's clock wrong refuses them unless overridden)."""

    @abc.abstractmethod
    async def resolve_quarantine(self, quarantine_id: int, action: str, operator: str) -> QuarantineRow | None:
        """Resolve one held event in one transaction: "apply_at_receipt" ingests it re-stamped at its
        receipt time (attrs keep the original stamp; counts, feed and variances follow as for any event),
        "discard" keeps it as a rejection naming the operator. None: no such id; ``AlreadyResolved``
        when it was resolved before; ``InvalidInput`` for another action."""

    @abc.abstractmethod
    async def hub_clock_found(self, offset_ms: int) -> tuple[int, int]:
        """The hub found its own clock ``offset_ms`` off its stores' (hub.clock_window.HubClockSuspicion): mark the
        pending events held lately whose sender's clock was off the hub's by as much (held before it noticed) as
        held because of it, and date the credentials created since a clock ahead went wrong by the stores' time
        (``hub.storage.credentials.correct_created``). Returns (events marked, credentials corrected)."""

    @abc.abstractmethod
    async def mark_held_by_hub_clock(self, offset_ms: int, at_ms: int) -> int:
        """``hub_clock_found``'s marking of the held events alone, as if the hub had found its clock ``offset_ms`` off
        at its time ``at_ms``: for a sync decided before the hub found it and written after that marking (the
        credentials are not dated again). Returns how many were marked."""

    @abc.abstractmethod
    async def hub_clock_right(self) -> None:
        """Note for every hub process sharing the database that the hub's clock looks right again (before
        ``release_hub_clock``): an event held meanwhile by one that did not know, marked as it is written by the
        finding of ``hub_clock_found``, is then released by its writer (``IngestResult.release_hub_clock``)."""

    @abc.abstractmethod
    async def release_hub_clock(self, window_ms: int, operator: str, *, if_right: bool = False) -> tuple[int, int]:
        """Release the pending events held because of the hub's own clock (``QuarantineRow.hub_clock_off_ms``)
        whose time is inside the clock window ``window_ms`` by the corrected clock: each applied at its own time,
        one transaction each, resolved "applied" by ``operator`` (``hub``: the hub itself). Those still outside
        stay pending for an operator. ``if_right``: none while the finding kept for every hub process says the
        hub's clock is off (found off again since the caller found it right: ``hub.storage.held.
        releasable_hub_clock_ids``), as the hub's own release does; an operator's releases them all the same.
        Returns (released, left)."""

    @abc.abstractmethod
    async def release_held(
        self, window_ms: int, operator: str, wrong_clock: str, agent_id: str | None = None,
        *, override_vouched: bool = False,
    ) -> tuple[int, int]:
        """Release at once the pending events held when the hub could not tell whose clock was wrong (no
        ``hub_clock_off_ms``), of ``agent_id``'s store or of every store (None), as ``operator`` found:
        ``wrong_clock`` "hub", each applied at its own time when inside the clock window by the hub's clock
        corrected by its sender's skew then (as ``release_hub_clock``); "store", each at its receipt time (as
        "apply_at_receipt"). One transaction each; ``InvalidInput`` for another ``wrong_clock`` or an agent this
        hub does not know. "hub" is refused (``StoresSidedWithHub``) for events held while the other stores put
        the hub's clock right (``hub_clock_vouched``) unless ``override_vouched`` (only with "hub" and one
        ``agent_id``), which the log names. Returns (released, left pending)."""


class BundleStore(Protocol):
    """Bundles and their recipes with history (schema version 6)."""

    @abc.abstractmethod
    async def put_bundle(self, sku: str, components: Mapping[str, int], set_by: str) -> tuple[Bundle, bool]:
        """Set the recipe of bundle ``sku`` (component SKU -> units per bundle) in one transaction; return the
        bundle and whether anything changed (the same recipe again adds no version). The new version applies to
        the movements stored after it; those stored before keep how they were booked. The bundle's rows (and
        those of every bundle holding it) follow at once, with their change-feed rows. ``InvalidInput`` for a bad
        recipe; ``BundleConflict`` when the recipes would put a bundle inside itself, or ``sku`` still holds stock
        of its own (on hand, reserved or in transit)."""

    @abc.abstractmethod
    async def bundles(self, *, sku: str | None = None, after: str | None = None, limit: int = 1000) -> list[Bundle]:
        """The bundles as they stand, by SKU; ``sku``: that one only; ``after``: those after that SKU (next page)."""

    @abc.abstractmethod
    async def bundles_version(self) -> int:
        """A number raised in the transaction of every change to any bundle (schema version 8; cheap: for
        ``GET /v1/bundles``'s ETag)."""

    @abc.abstractmethod
    async def bundle_versions(self, sku: str) -> list[BundleRecipe]:
        """Every recipe version of ``sku``, oldest first ([] when it is not a bundle)."""

    @abc.abstractmethod
    async def bundle_parts(self, skus: Collection[str] | None = None) -> dict[str, dict[str, int]]:
        """Bundle SKU -> its parts now (plain SKU -> units per bundle), for the bundles that are or contain one
        of ``skus`` (None: every bundle)."""


class HealthStore(Protocol):
    """Whether the database answers, and what it is; and the other hub processes sharing it (schema version 33)."""

    @abc.abstractmethod
    async def health(self) -> dict[str, Any]: ...

    async def share_settings(self, settings: Mapping[str, str]) -> dict[str, dict[str, str]]:
        """Keep this hub process's ``settings`` (``hub.peer_settings``) for the other hub processes sharing the
        database, forget those of hub processes no longer running, and return the others' that still run (their
        ``HOST:PID`` -> their settings). A SQLite file has one hub process: none."""
        return {}

    async def other_hubs_settings(self) -> dict[str, dict[str, str]]:
        """The settings of the other hub processes running on the database, as ``share_settings`` returns them."""
        return {}


class RebookingStore(CatalogStore, IngestStore, Protocol):
    """The catalog, and the ingest that books the events of barcodes it learns again under their SKUs."""
