"""``SqlHubStore``: every method of ``HubStore`` written once, over a backend's ``hub.storage.db.Db``.

Each method checks its arguments, then runs the shared queries (``hub.storage.stock``, ``exceptions``,
``feed``, ``catalog``, ``reports``, ``bundles``, ``held``, ``credentials``) as one read or one write
transaction of the backend. A backend gives only what really differs between SQLite and PostgreSQL:

* ``_read_db`` / ``_write_db``: how a read and a write transaction run (connections, isolation, retries,
  the translation of driver errors to ``StoreError``);
* ``_booking``: the ingest adapter (``hub.storage.ingest.IngestTx``) inside a write, holding the locks
  the write needs first and appending its change-feed rows last; ``_bundle_reads``: that adapter's reads
  on any connection; ``_lock``: a named lock held until the commit;
* ``LATEST_CHANGE_SQL`` and ``LOCK_ROW``: the two statements the dialects write differently, and
  ``NEGATIVE_STOCK``: where each finds the stock below zero;
* opening, closing, migrating and ``health``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar, Generic, TypeVar

from hub.clock_window import HUB_CLOCK_AGREE_MS, HUB_CLOCK_RECENT_MS, ClockWindow
from hub.resolver import StockKey, describe_parts
from hub.storage import bundles, catalog, checks, credentials, exceptions, feed, held, keys, reports, stock
from hub.storage.base import (
    AgentIdentity,
    AgentStatus,
    AlreadyResolved,
    Bundle,
    BundleRecipe,
    Catalog,
    CatalogItem,
    CatalogUpdate,
    ChangeRow,
    CountRow,
    DivergenceRow,
    ExceptionRow,
    HubStore,
    ImportIssue,
    IngestResult,
    InvalidInput,
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
from hub.storage.bundles import BundleReads
from hub.storage.db import Db
from hub.storage.ingest import Batch, IngestTx, apply_batch, apply_recipe, prepare_batch
from hub.storage.keys import CountKey, DivergenceKey, ExceptionKey, LedgerKey
from hub.storage.rows import ledger_row
from protocol import DiskReport, LostReport, StockEvent, wall_ms_now
from protocol.values import AGENT_ID, shown

log = logging.getLogger(__name__)

T = TypeVar("T")

# A write of more events than this is a catch-up batch (an agent's batch is 1,000; a catching-up agent's 10,000):
# a backend lets the small writes (a live store's sale, a credential, a webhook's cursor) past them.
SMALL_WRITE_EVENTS = 1_000

D = TypeVar("D", bound=Db)


class _NotReleased(InvalidInput):
    """A held event ``release_hub_clock`` leaves for an operator (its transaction rolled back)."""


R = TypeVar("R", Observation, ImportIssue)


class SqlHubStore(HubStore, Generic[D]):
    """``HubStore`` in SQL both backends run; ``D`` is the backend's ``Db`` adapter."""

    LATEST_CHANGE_SQL: ClassVar[str]  # the newest change id committed (a single value; NULL or none: 0)
    LOCK_ROW: ClassVar[str]  # appended to a SELECT of one row to lock it until the commit ("" where one writer)
    NEGATIVE_STOCK: ClassVar[str]  # a FROM of the stock rows below zero, and maybe others (exceptions.exceptions)
    # True: ``_booking`` confirms a batch's credential (``Batch.credential``) with its first read; else ``ingest``
    # reads it first (credentials.confirm).
    CONFIRMS_IN_BOOKING: ClassVar[bool] = False
    feed_history: str = ""  # set by the backend's open (hub.storage.feed)

    # --- what a backend gives ------------------------------------------------------------------------

    @abc.abstractmethod
    def _check_open(self) -> None:
        """Raise ``StoreClosed`` once closed."""

    @abc.abstractmethod
    async def _read_db(self, what: str, work: Callable[[D], Awaitable[T]], *, snapshot: bool = False) -> T:
        """Run a read; ``snapshot``: one consistent state for all its statements. ``what`` names it in errors."""

    @abc.abstractmethod
    async def _write_db(
        self, what: str, work: Callable[[D], Coroutine[Any, Any, T]], *, unique_races: bool = False,
        events: int = 0, sender: str | None = None,
    ) -> T:  # fmt: skip
        """Run ``work`` in one write transaction and return its result once committed; a cancelled caller
        does not cut it short. ``unique_races``: a unique violation (another hub stored the same row at the
        same moment) is worth running it again whole, where hubs share the database. ``events`` and
        ``sender``: an agent's batch, for a backend that queues its writes (SQLite's writer lets small ones
        go first, never past their sender's earlier batches)."""

    @abc.abstractmethod
    async def _booking(
        self, db: D, work: Callable[[IngestTx], Awaitable[T]], *, batch: Batch | None = None,
        stock_keys: Collection[StockKey] = (),
    ) -> T:  # fmt: skip
        """Inside a write: run ``work`` over the backend's ingest adapter on ``db``, first taking the locks
        ``batch`` needs and those of ``stock_keys`` (whose stock rows ``work`` writes with SQL of its own),
        and appending the change-feed rows ``work`` made last."""

    @abc.abstractmethod
    def _bundle_reads(self, db: D) -> BundleReads:
        """The ingest adapter's reads of the bundle tables, on a read connection."""

    @abc.abstractmethod
    async def _lock(self, db: D, name: str) -> None:
        """Inside a write: hold the lock ``name`` until the commit (one writer of a shared row at a time)."""

    @abc.abstractmethod
    async def _lock_hub_clock(self, db: D) -> None:
        """Inside a write, first: hold the hub-clock lock alone until the commit, which the write of a held event
        takes shared to read the finding (``IngestTx.hub_clock_finding``)."""

    async def _newest_change_id(self, db: D) -> int:
        """Inside an ingest write, after its booking: the newest change id as of its commit."""
        return await feed.latest_change_id(db, self.LATEST_CHANGE_SQL)

    # --- credentials -----------------------------------------------------------------------------------

    async def add_agent(
        self, locations: Sequence[str], role: str = "agent", agent_id: str | None = None
    ) -> tuple[str, str]:
        granted = credentials.check_grant(locations, role)
        chosen = None if agent_id is None else credentials.check_agent_id(agent_id)
        added_id, token = await self._write_db(
            "adding a credential", lambda db: credentials.insert_agent(db, granted, role, chosen)
        )
        log.info("Added the %s credential %s for %s.", role, added_id, ", ".join(granted) or "no location")
        return added_id, token

    async def authenticate(self, token: str) -> AgentIdentity | None:
        self._check_open()
        if credentials.token_agent_id(token) is None:
            return None
        return await self._read_db("checking a credential", lambda db: credentials.identity(db, token))

    async def revoke_agent(self, agent_id: str) -> bool:
        revoked = await self._write_db("revoking a credential", lambda db: credentials.revoke(db, agent_id))
        if revoked:
            log.info("Revoked the credential %s.", agent_id)
        return revoked

    async def bind_agent(self, agent_id: str, locations: Sequence[str]) -> tuple[str, ...]:
        granted = credentials.check_grant(locations, "admin")  # the location codes; the role is checked inside
        former = await self._write_db("binding a credential", lambda db: credentials.bind(db, agent_id, granted))
        log.info("Bound the credential %s to %s (was %s).", agent_id, ", ".join(granted), ", ".join(former) or "none")
        return former

    async def agent_status(self, agent_id: str | None = None) -> list[AgentStatus]:
        return await self._read_db(
            "reading agent status", lambda db: credentials.agent_status(db, agent_id), snapshot=True
        )

    async def store_clock_skews(self, locations: Collection[str]) -> dict[str, int]:
        return await self._read_db("reading the stores' clock skews", lambda db: credentials.clock_skews(db, locations))

    # --- ingest ------------------------------------------------------------------------------------------

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
        self._check_open()

        def judge(sender: AgentIdentity) -> Batch:  # checked before the write transaction: overlaps another batch
            clock = (
                None if clock_window_ms is None
                else ClockWindow(wall_ms_now(), clock_window_ms, sender.created_ms, hub_off_ms=hub_clock_off_ms,
                                 vouched=hub_clock_vouched)
            )  # fmt: skip
            judged = prepare_batch(
                sender, epoch, events, acked_seq, backlog=backlog, oldest_pending_ms=oldest_pending_ms, lineage=lineage,
                clock=clock, sent_ms=sent_ms, after_seq=after_seq, peer=peer, credential=credential, disk=disk,
                lost=lost,
            )  # fmt: skip
            if judged.hub_clock_off_ms is not None and hub_clock_at_ms is not None:  # when the hub knew it off
                judged = replace(judged, judged_ms=hub_clock_at_ms)
            return judged

        batch = judge(who)

        async def work(db: D) -> IngestResult:
            if credential is not None and not self.CONFIRMS_IN_BOOKING:
                await credentials.confirm(db, who, credential)  # before anything is written
            judged = await self._judged_again(db, batch, judge)
            result = await self._booking(db, lambda tx: apply_batch(tx, judged, wall_ms_now()), batch=judged)
            # This batch's keys stay locked until COMMIT (one writer, or its locks): the newest change id now is
            # this commit's own position.
            return replace(result, change_id=await self._newest_change_id(db))

        return await self._write_db(
            f"committing {len(events)} event(s) from {who.agent_id}", work, unique_races=True, events=len(events),
            sender=who.agent_id,
        )

    async def _judged_again(self, db: D, batch: Batch, judge: Callable[[AgentIdentity], Batch]) -> Batch:
        """``batch`` judged again (``judge``) with its credential's creation time as stored now when it holds
        anything (maybe as before that time): its ``who`` may come from a hub process's identity cache, and a hub
        that finds its clock ahead dates the credentials made meanwhile earlier (``hub_clock_found``), maybe in
        another process. Only earlier, so a batch that holds nothing was judged right already, and a later stored
        time than the one judged by is never taken to hold more."""
        who = batch.who
        if who.created_ms is None or not batch.quarantined:  # held: rare, so one more read of one row
            return batch
        created = await held.created_ms(db, who.agent_id)
        if created is None or created >= who.created_ms:  # re-dated only earlier: judged again only to hold less
            return batch
        log.debug("%s's credential was dated %d ms when its batch was judged and is %d ms now: judged again.",
                  who.agent_id, who.created_ms, created)  # fmt: skip
        return judge(replace(who, created_ms=created))

    # --- counts and the ledger ---------------------------------------------------------------------------

    async def counts(
        self, *, location: str | None = None, sku: str | None = None, limit: int = 1000, after: CountKey | None = None,
        skus: Sequence[str] | None = None,
    ) -> list[CountRow]:  # fmt: skip
        checks.limit(limit)
        return await self._read_db("reading counts", lambda db: stock.counts(db, location, sku, limit, after, skus))

    async def skus_counted(self, skus: Collection[str]) -> set[str]:
        return await self._read_db("finding the SKUs the hub counts", lambda db: stock.skus_counted(db, skus))

    async def ledger(
        self,
        *,
        location: str | None = None,
        sku: str | None = None,
        limit: int = 1000,
        before: int | None = None,
        after: LedgerKey | None = None,
    ) -> list[LedgerRow]:
        checks.limit(limit)
        return await self._read_db(
            "reading the ledger",
            lambda db: stock.ledger(db, self._bundle_reads(db), location, sku, limit, before, after),
            snapshot=True,
        )

    async def set_safety_stock(self, location: str, sku: str, qty: int) -> CountRow:
        checks.safety_stock(location, sku, qty)

        async def work(db: D) -> CountRow:
            def booked(tx: IngestTx) -> Awaitable[CountRow]:
                return stock.set_safety_stock(db, tx, location, sku, qty, wall_ms_now())

            return await self._booking(db, booked, stock_keys=[(location, sku)])

        return await self._write_db(f"setting the safety stock of {sku} at {location}", work)

    # --- exceptions and the clock quarantine --------------------------------------------------------------

    async def dismiss_lost(self, agent_id: str, by: str, now_ms: int) -> list[tuple[int, int, int, bool]]:
        listed = "FROM agent_lost WHERE agent_id = ? AND dismissed_ms IS NULL"

        async def dismiss(db: D) -> list[tuple[int, int, int, bool]]:
            rows = await db.fetch(f"SELECT first_seq, last_seq, lost, at_least {listed} ORDER BY received_ms", (agent_id,))
            await db.execute(
                "UPDATE agent_lost SET dismissed_ms = ?, dismissed_by = ? WHERE agent_id = ? AND dismissed_ms IS NULL",
                (now_ms, by, agent_id),
            )
            return [(int(r[0]), int(r[1]), int(r[2]), bool(r[3])) for r in rows]

        return await self._write_db("dismissing the movements an agent lost", dismiss)

    async def exceptions(
        self, *, location: str | None = None, limit: int = 1000, transfer_open_max_ms: int | None = None,
        after: ExceptionKey | None = None, kind: str | None = None, since_ms: int | None = None,
        copies_window_ms: int | None = None,
    ) -> list[ExceptionRow]:  # fmt: skip
        checks.limit(limit)
        only = checks.exception_filter(location, kind, since_ms)
        now_ms = wall_ms_now()
        return await self._read_db(
            "reading exceptions",
            lambda db: exceptions.exceptions(
                db, only, limit, transfer_open_max_ms, after, now_ms, copies_window_ms, self.NEGATIVE_STOCK
            ),
            snapshot=True,
        )

    async def quarantine(
        self, *, status: str | None = "pending", location: str | None = None, limit: int = 1000,
        before_id: int | None = None,
    ) -> list[QuarantineRow]:  # fmt: skip
        held.check_query(status)
        checks.limit(limit)
        return await self._read_db(
            "reading the quarantine", lambda db: held.held_rows(db, status, location, before_id, limit)
        )

    async def quarantine_totals(self) -> tuple[int, dict[str, int]]:
        return await self._read_db("reading the quarantine", held.pending_totals)

    async def quarantine_vouched(self) -> dict[str, int]:
        return await self._read_db("reading the quarantine", held.pending_vouched)

    async def resolve_quarantine(self, quarantine_id: int, action: str, operator: str) -> QuarantineRow | None:
        held.check_action(action)
        checks.whole(quarantine_id, "quarantine id", 1, 2**63 - 1)

        async def work(db: D) -> QuarantineRow | None:
            row = await held.held_row(db, quarantine_id, self.LOCK_ROW)
            if row is None:
                return None
            if row.status != "pending":
                raise AlreadyResolved(f"held event {quarantine_id} was already {row.status} by {row.resolved_by}")
            now_ms = wall_ms_now()
            if action == "apply_at_receipt":
                who, event = held.restamped(row, operator)
                batch = replace(prepare_batch(who, event.epoch, [event]), operator=operator)
                result = await self._booking(db, lambda tx: apply_batch(tx, batch, now_ms), batch=batch)
                if result.rejected:
                    raise InvalidInput(f"held event {quarantine_id} cannot be applied: {result.rejected[0].reason}")
                return await held.mark_resolved(db, row, "applied", operator, now_ms)
            await held.discard(db, row, operator, now_ms)
            return await held.mark_resolved(db, row, "discarded", operator, now_ms)

        resolved = await self._write_db(f"resolving held event {quarantine_id}", work, unique_races=True)
        if resolved is not None:
            log.info("%s %s held event %d (%s of %s at %s).", operator, resolved.status, quarantine_id,
                     resolved.kind, resolved.sku, resolved.location)  # fmt: skip
        return resolved

    async def hub_clock_found(self, offset_ms: int) -> tuple[int, int]:
        now_ms = wall_ms_now()

        async def work(db: D) -> tuple[int, int]:
            await self._lock_hub_clock(db)  # a held event's write under way in another hub process ends first
            await held.note_found(db, offset_ms, now_ms)  # … and one after reads it (hub.storage.held.finding_covers)
            marked = await held.mark_hub_clock(db, offset_ms, now_ms, HUB_CLOCK_RECENT_MS, HUB_CLOCK_AGREE_MS)
            return marked, await credentials.correct_created(db, offset_ms, now_ms)

        marked, corrected = await self._write_db("noting the hub's own clock in the quarantine", work)
        if marked:
            log.info("%d held event(s) received before the hub found its clock %d ms off were held because of it; "
                     "they are released once its clock is right.", marked, offset_ms)  # fmt: skip
        if corrected:
            log.warning("%d credential(s) created since the hub's clock went %d ms ahead are dated by its stores' "
                        "time instead.", corrected, offset_ms)  # fmt: skip
        return marked, corrected

    async def mark_held_by_hub_clock(self, offset_ms: int, at_ms: int) -> int:
        async def work(db: D) -> int:
            return await held.mark_hub_clock(db, offset_ms, at_ms, HUB_CLOCK_RECENT_MS, HUB_CLOCK_AGREE_MS)

        marked = await self._write_db("noting the hub's own clock in the quarantine", work)
        if marked:
            log.info("%d held event(s) of a sync decided before the hub found its clock %d ms off, written after, "
                     "were held because of it; they are released once its clock is right.", marked, offset_ms)  # fmt: skip
        return marked

    async def hub_clock_right(self) -> None:
        now_ms = wall_ms_now()

        async def work(db: D) -> None:
            await self._lock_hub_clock(db)  # a held event's write under way ends first: the release reads it after
            await held.note_right(db, now_ms)

        await self._write_db("noting the hub's own clock right again", work)

    async def release_hub_clock(self, window_ms: int, operator: str, *, if_right: bool = False) -> tuple[int, int]:
        checks.whole(window_ms, "clock window", 1, 2**62)
        ids = await self._read_db(
            "reading the quarantine",
            lambda db: held.releasable_hub_clock_ids(db) if if_right else held.pending_ids(db, hub_clock=True),
            snapshot=True,
        )
        return await self._release(
            ids, operator, "event(s) held because of the hub's own clock, at their own time",
            lambda db, q: self._release_one(db, q, window_ms, operator, None),
        )  # fmt: skip

    async def release_held(
        self, window_ms: int, operator: str, wrong_clock: str, agent_id: str | None = None,
        *, override_vouched: bool = False,
    ) -> tuple[int, int]:
        checks.whole(window_ms, "clock window", 1, 2**62)
        held.check_wrong_clock(wrong_clock)
        if agent_id is not None and (not isinstance(agent_id, str) or not AGENT_ID.valid(agent_id)):
            what = shown(agent_id) if isinstance(agent_id, str) else type(agent_id).__name__
            raise InvalidInput(f"{what} is not an agent id; an agent id is {AGENT_ID.rule()}")
        if override_vouched is not False and (override_vouched is not True or wrong_clock != held.WRONG_HUB
                                              or agent_id is None):  # fmt: skip
            raise InvalidInput(held.OVERRIDE_RULE)
        vouched: tuple[int, int] = (0, 0)  # what an override goes against: (held events, most stores that vouched)

        async def pending(db: D) -> list[int]:
            nonlocal vouched
            if agent_id is not None and not await held.agent_known(db, agent_id):
                raise held.UnknownAgent(f"there is no agent {agent_id} at this hub; GET /v1/agents lists them")
            if wrong_clock == held.WRONG_HUB and override_vouched:
                vouched = await held.vouched_of(db, agent_id)
            elif wrong_clock == held.WRONG_HUB:
                await held.check_not_vouched(db, agent_id)  # what the other stores said when it was held
            if agent_id is None and wrong_clock == held.WRONG_HUB:
                await held.check_one_hub_offset(db)
            return await held.pending_ids(db, hub_clock=False, agent_id=agent_id)

        ids = await self._read_db("reading the quarantine", pending)
        whose = "every store" if agent_id is None else agent_id
        if vouched[0]:
            log.warning("%s overrode what up to %d other store(s) said of the hub's clock (right) when %d held "
                        "movement(s) of %s were held, and releases them at their own time as if the hub's clock "
                        "had been wrong.", operator, vouched[1], vouched[0], whose)  # fmt: skip
        if wrong_clock == held.WRONG_HUB:
            return await self._release(
                ids, operator, f"event(s) of {whose} held when the hub could not tell whose clock was wrong, at "
                "their own time (the hub's clock was wrong)",
                lambda db, q: self._release_one(db, q, window_ms, operator, held.WRONG_HUB),
            )  # fmt: skip
        return await self._release(
            ids, operator, f"event(s) of {whose} held when the hub could not tell whose clock was wrong, at the "
            "hub's time of receipt (the store's clock was wrong)",
            lambda db, q: self._apply_unattributed(db, q, operator),
        )  # fmt: skip

    async def _release(
        self, ids: Sequence[int], operator: str, what: str, one: Callable[[D, int], Coroutine[Any, Any, str | None]]
    ) -> tuple[int, int]:
        """Release each held event of ``ids`` in a transaction of its own (``one``: None once applied, else why it
        stays; ``_NotReleased`` rolls it back) and say in one sentence how many were and why the others stay."""
        released = 0
        stays: dict[str, int] = {}
        first_refusal = ""
        for quarantine_id in ids:
            try:
                why = await self._write_db(
                    f"releasing held event {quarantine_id}", lambda db, q=quarantine_id: one(db, q),  # type: ignore[misc]
                    unique_races=True,
                )  # fmt: skip
            except InvalidInput as err:  # _NotReleased, or one that cannot be made an event again
                why, first_refusal = held.REFUSED, first_refusal or str(err)
                log.debug("Held event %d stays for an operator: %s.", quarantine_id, err)
            if why is None:
                released += 1
            elif why != held.GONE:  # resolved meanwhile: not this one's to count
                stays[why] = stays.get(why, 0) + 1
        left = sum(stays.values())
        if ids:
            log.info("%s released %d %s; %s.", operator, released, what, held.stays_sentence(stays, first_refusal))
        return released, left

    async def _release_one(
        self, db: D, quarantine_id: int, window_ms: int, operator: str, judged: str | None
    ) -> str | None:
        """Apply one held event at its own time, its receipt checked against the window with the hub's clock
        corrected: by ``hub_clock_off_ms`` (``judged`` None), or by its sender's skew then (``judged`` "hub": an
        operator found the hub's clock the wrong one)."""
        row = await held.held_row(db, quarantine_id, self.LOCK_ROW)
        if row is None or row.status != "pending" or (row.hub_clock_off_ms is None) != (judged is not None):
            return held.GONE
        off_ms = row.hub_clock_off_ms if judged is None else held.sender_skew(row)
        if off_ms is None:
            log.debug("Held event %d stays for an operator: its sender did not say its clock.", quarantine_id)
            return held.NO_CLOCK
        created = await held.created_ms(db, row.agent_id)
        clock = ClockWindow(row.received_at_ms, window_ms, sent_ms=row.sent_ms).corrected(off_ms, created)
        rule = clock.outside(row.occurred_at)
        if rule is not None:  # nothing written yet: nothing to roll back
            log.debug("Held event %d stays for an operator: %s.", quarantine_id,
                      clock.reason(row.occurred_at, "GET /v1/quarantine"))  # fmt: skip
            return rule
        who, event = held.released(replace(row, hub_clock_off_ms=off_ms), operator)
        batch = replace(prepare_batch(who, event.epoch, [event]), operator=operator)
        result = await self._booking(db, lambda tx: apply_batch(tx, batch, wall_ms_now()), batch=batch)
        if result.rejected:
            raise _NotReleased(result.rejected[0].reason)  # rolled back whole
        await held.mark_resolved(db, row, "applied", operator, wall_ms_now())
        return None

    async def _apply_unattributed(self, db: D, quarantine_id: int, operator: str) -> str | None:
        """Apply one held event the hub did not attribute to its own clock at its receipt time (an operator found
        its store's clock the wrong one), as ``resolve_quarantine``'s "apply_at_receipt"."""
        row = await held.held_row(db, quarantine_id, self.LOCK_ROW)
        if row is None or row.status != "pending" or row.hub_clock_off_ms is not None:
            return held.GONE
        now_ms = wall_ms_now()
        who, event = held.restamped(row, operator)
        batch = replace(prepare_batch(who, event.epoch, [event]), operator=operator)
        result = await self._booking(db, lambda tx: apply_batch(tx, batch, now_ms), batch=batch)
        if result.rejected:
            raise _NotReleased(result.rejected[0].reason)  # rolled back whole
        await held.mark_resolved(db, row, "applied", operator, now_ms)
        return None

    # --- change feed and webhooks ----------------------------------------------------------------------------

    async def changes(
        self, after: int, limit: int, location: str | None = None, sku: str | None = None
    ) -> list[ChangeRow]:
        checks.whole(after, "after", 0, 2**63 - 1)
        checks.limit(limit)
        return await self._read_db(
            "reading the change feed", lambda db: self._changes(db, after, limit, location, sku)
        )

    async def _changes(self, db: D, after: int, limit: int, location: str | None, sku: str | None) -> list[ChangeRow]:
        """The feed's rows as the backend keeps them (``changes``)."""
        return await feed.changes(db, after, limit, location, sku)

    async def latest_change_id(self) -> int:
        return await self._read_db(
            "reading the change feed", lambda db: feed.latest_change_id(db, self.LATEST_CHANGE_SQL)
        )

    async def webhook_state(self, name: str) -> WebhookState:
        return await self._read_db(f"reading the state of webhook {name}", lambda db: feed.webhook_state(db, name))

    async def save_webhook_state(
        self, name: str, cursor: int, last_error: str | None = None, attempts: int = 0, settings: str | None = None
    ) -> None:
        await self._write_db(
            f"saving the state of webhook {name}",
            lambda db: feed.save_webhook_state(db, name, cursor, last_error, attempts, wall_ms_now(), settings),
        )

    async def webhook_settings(self, name: str) -> str | None:
        return await self._read_db(
            f"reading the settings of webhook {name}", lambda db: feed.webhook_settings(db, name)
        )

    async def claim_webhook_settings(self, name: str, settings: str, seen: str | None) -> WebhookClaim:
        return await self._write_db(
            f"storing the settings of webhook {name}",
            lambda db: feed.claim_webhook_settings(db, name, settings, seen, wall_ms_now()),
        )

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
        attempt = WebhookDelivery(0, name, first_change, last_change, status, http_status, error, at_ms)
        await self._write_db(f"logging a delivery of webhook {name}", lambda db: feed.log_webhook_delivery(db, attempt))

    async def webhook_deliveries(
        self, name: str, limit: int = 100, before_id: int | None = None
    ) -> list[WebhookDelivery]:
        checks.limit(limit)
        return await self._read_db(
            f"reading the deliveries of webhook {name}", lambda db: feed.webhook_deliveries(db, name, limit, before_id)
        )

    # --- catalog -----------------------------------------------------------------------------------------------

    async def catalog(self) -> Catalog:
        return await self._read_db("reading the catalog", catalog.catalog, snapshot=True)

    async def catalog_version(self) -> int:
        return await self._read_db("reading the catalog version", catalog.catalog_version)

    async def put_catalog(self, items: Sequence[CatalogItem]) -> CatalogUpdate:
        checked = checks.catalog_items(items)

        async def work(db: D) -> CatalogUpdate:
            await self._lock(db, catalog.CATALOG_LOCK)  # the version is read, raised and written back
            return await catalog.put_catalog(db, checked, wall_ms_now())

        update = await self._write_db(f"writing {len(checked)} catalog item(s)", work)
        if update.updated:
            log.info("The catalog is at version %d: %d item(s) added or changed.", update.version, update.updated)
        return update

    async def unknown_events(self, skus: Sequence[str]) -> list[LedgerRow]:
        async def work(db: D) -> list[LedgerRow]:
            return [ledger_row(r) for r in await catalog.unknown_event_rows(db, skus)]

        return await self._read_db("reading unknown-barcode events", work, snapshot=True)

    # --- observations, import issues, divergence ---------------------------------------------------------------

    async def add_observations(self, who: AgentIdentity, observations: Sequence[Observation]) -> ReportResult:
        # An observation's figure is the stock's as of it: no ingest of its keys may move them meanwhile.
        keys = sorted({(o.location, o.sku) for o in observations})
        return await self._add_reports(reports.OBSERVATIONS, who, observations, keys)

    async def add_import_issues(self, who: AgentIdentity, issues: Sequence[ImportIssue]) -> ReportResult:
        return await self._add_reports(reports.IMPORT_ISSUES, who, issues)

    async def _add_reports(
        self, kind: reports.ReportTable[R], who: AgentIdentity, items: Sequence[R], stock_keys: Sequence[StockKey] = ()
    ) -> ReportResult:
        """Store ``items``, holding the locks of ``stock_keys`` (whose stock they read) where hubs share them."""
        checks.reporter(who, kind.plural)
        kind.check(items)

        async def work(db: D) -> ReportResult:
            def store(_: object = None) -> Awaitable[ReportResult]:
                return reports.add_reports(db, kind, who, items, wall_ms_now())

            return await self._booking(db, store, stock_keys=stock_keys) if stock_keys else await store()

        return await self._write_db(f"storing {len(items)} {kind.noun}(s) from {who.agent_id}", work, unique_races=True)

    async def divergence(
        self, *, location: str | None = None, system: str | None = None, limit: int = 1000,
        after: DivergenceKey | None = None,
    ) -> list[DivergenceRow]:  # fmt: skip
        checks.limit(limit)
        page = keys.divergence_after(after) if after is not None else None
        return await self._read_db(
            "comparing observations", lambda db: reports.divergence(db, location, system, limit, page), snapshot=True
        )

    async def keep_variance_report(self, report: VarianceReport, parts: Sequence[str]) -> None:
        await self._write_db(
            "keeping a shrinkage report for its next pages", lambda db: reports.keep_variance_report(db, report, parts)
        )

    async def kept_variance_report(
        self, report_id: str, first_part: int, last_part: int, *, now_ms: int
    ) -> tuple[VarianceReport, list[str]] | None:
        return await self._read_db(
            "reading a page of a kept shrinkage report",
            lambda db: reports.kept_variance_report(db, report_id, first_part, last_part, now_ms),
            snapshot=True,
        )

    # --- bundles (schema version 6) ----------------------------------------------------------------------------

    async def put_bundle(self, sku: str, components: Mapping[str, int], set_by: str) -> tuple[Bundle, bool]:
        checked = checks.bundle_recipe(sku, components)

        async def work(db: D) -> tuple[Bundle, bool]:
            return await self._booking(db, lambda tx: apply_recipe(tx, sku, checked, set_by, wall_ms_now()))

        bundle, changed = await self._write_db(f"setting the recipe of bundle {sku}", work)
        if changed:
            log.info("%s set bundle %s to recipe version %d (%s).", set_by, sku, bundle.recipe.version,
                     describe_parts(checked))  # fmt: skip
        return bundle, changed

    async def bundles(self, *, sku: str | None = None, after: str | None = None, limit: int = 1000) -> list[Bundle]:
        checks.limit(limit)
        return await self._read_db(
            "reading bundles",
            lambda db: bundles.bundles(db, self._bundle_reads(db), sku, after, limit),
            snapshot=True,
        )

    async def bundles_version(self) -> int:
        return await self._read_db("reading the bundles' version", bundles.bundles_version)

    async def bundle_versions(self, sku: str) -> list[BundleRecipe]:
        return await self._read_db("reading a bundle's recipes", lambda db: bundles.bundle_versions(db, sku))

    async def bundle_parts(self, skus: Collection[str] | None = None) -> dict[str, dict[str, int]]:
        return await self._read_db(
            "reading bundle recipes", lambda db: bundles.bundle_parts(self._bundle_reads(db), skus), snapshot=True
        )

    @abc.abstractmethod
    async def health(self) -> dict[str, Any]: ...
