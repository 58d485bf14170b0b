"""The PostgreSQL hub store: several hub processes share one database.

Open it with a URL: ``PostgresHubStore.open("postgresql://user:pw@127.0.0.1/shelfsync")``.
Query parameters the driver does not know are PostgreSQL settings for every
connection (``?search_path=hub2`` keeps a hub's tables in their own schema).

Every write is one READ COMMITTED transaction on a pooled connection. Ingest
serializes per key with advisory locks (``hub.storage.postgres_ingest``), so
hubs ingesting the same or overlapping batches at the same moment commit one
after the other and the second sees the first's events as resends. A
transaction that PostgreSQL aborts as a deadlock or serialization failure, or
that lost a race for an event id, is retried whole with jittered backoff.

Change-feed ids are assigned from one counter row as the last statement before
COMMIT (``hub.storage.postgres_feed``): its row lock is held until commit, so
change N+1 is never visible before change N, whichever hub wrote them.

A caller that is cancelled does not cancel its write: it commits or fails whole.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from hub.resolver import Transfer, available, is_location, negative_on_hand_finding
from hub.storage import checks, credentials, findings, postgres_feed, postgres_reports
from hub.storage.base import (
    AgentIdentity,
    AgentStatus,
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
    ReportResult,
    StoreClosed,
    StoreError,
    StoreOpener,
    WebhookDelivery,
    WebhookState,
)
from hub.clock_window import ClockWindow
from hub.storage import held
from hub.storage.base import AlreadyResolved, QuarantineRow
from hub.storage.ingest import NewChange, apply_batch, prepare_batch
from hub.storage.ingest import apply_recipe, refresh_bundles
from hub.storage.base import Bundle, BundleRecipe
from hub.storage.rows import bundle_recipe, bundles_of, expanded_ids, with_expansions
from hub.storage.sql import NEWEST_RECIPES, RECIPE_FIELDS
from hub.resolver import describe_parts
from hub.storage import keys
from hub.storage.keys import CountKey, DivergenceKey, ExceptionKey, ExceptionSource, LedgerKey
from hub.storage.postgres_ingest import PostgresIngest, batch_locks, lock_keys, stock_lockable
from hub.storage.postgres_schema import SCHEMA_VERSION, migrate, schema_version
from hub.storage.rows import COUNT_FIELDS, count_row, ledger_row, rejection_exception
from hub.storage.sql import EVENT_FIELDS, NEWEST_FIRST, TRANSFER_FIELDS, ledger_events_sql
from protocol import QTY_MAX, CountSnapshot, StockEvent, wall_ms_now
from protocol.event import SKU_MAX_LEN

log = logging.getLogger(__name__)

T = TypeVar("T")

POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10  # connections per hub process; N hubs need N × this below max_connections
CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 30.0
ADD_AGENT_ATTEMPTS = 5
TX_ATTEMPTS = 10
RETRY_BASE_S = 0.005
RETRY_MAX_S = 0.5
# Aborted by PostgreSQL so that another transaction could go on: run it again.
RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
UNIQUE_VIOLATION = "23505"  # an event id another hub stored meanwhile: the retry sees it as stored
SERVER_SETTINGS = {"application_name": "shelfsync-hub"}


def redacted(url: str) -> str:
    """The URL as a log or an error may show it: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


class Filters:
    """A `` WHERE …`` clause built term by term, with ``$n`` placeholders numbered as it goes."""

    def __init__(self, *terms: str) -> None:
        self.terms = list(terms)
        self.params: list[Any] = []

    def add(self, term: str, value: Any) -> Filters:
        """``term`` holds one ``{}`` where the placeholder goes; skipped when ``value`` is None."""
        if value is not None:
            self.params.append(value)
            self.terms.append(term.format(f"${len(self.params)}"))
        return self

    def next(self) -> str:
        """The placeholder of the next parameter (a LIMIT)."""
        return f"${len(self.params) + 1}"

    @property
    def where(self) -> str:
        return " WHERE " + " AND ".join(self.terms) if self.terms else ""


def _after(f: Filters, term: tuple[str, tuple[Any, ...]] | None) -> Filters:
    """``f`` with a paging term of hub.storage.keys (``{}`` per parameter) numbered in."""
    if term is not None:
        sql, params = term
        marks = [f"${len(f.params) + i + 1}" for i in range(len(params))]
        f.params.extend(params)
        f.terms.append(sql.format(*marks))
    return f


def _consume_result(task: asyncio.Task[Any]) -> None:
    """Mark a write's error as seen, for callers that were cancelled while waiting."""
    if not task.cancelled():
        task.exception()


def _retryable(err: asyncpg.PostgresError, unique_races: bool) -> bool:
    state = getattr(err, "sqlstate", None)
    return state in RETRY_SQLSTATES or (unique_races and state == UNIQUE_VIOLATION)


class PostgresHubStore(HubStore):
    """The hub store on PostgreSQL. Open with ``PostgresHubStore.open(url)``."""

    def __init__(self, url: str, pool: asyncpg.Pool, hub_id: str) -> None:
        self.url = url
        self.hub_id = hub_id
        self._pool = pool
        self._inflight: set[asyncio.Task[Any]] = set()
        self._closed = False

    @classmethod
    def open(cls, url: str) -> StoreOpener[PostgresHubStore]:
        """``async with PostgresHubStore.open(url) as store:`` (or ``store = await …``)."""
        return StoreOpener(lambda: cls._open(url))

    @classmethod
    async def _open(cls, url: str) -> PostgresHubStore:
        where = redacted(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=POOL_MIN_SIZE,
                max_size=POOL_MAX_SIZE,
                timeout=CONNECT_TIMEOUT_S,
                server_settings=SERVER_SETTINGS,
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError, ValueError) as err:
            raise StoreError(f"cannot open the hub database {where}: {err or type(err).__name__}") from err
        try:
            async with pool.acquire() as conn:
                hub_id = await migrate(conn, where)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as err:
            await pool.close()
            raise StoreError(f"cannot open the hub database {where}: {err}") from err
        except BaseException:
            await pool.close()
            raise
        log.info("Opened the hub database %s (schema version %d).", where, SCHEMA_VERSION)
        return cls(url, pool, hub_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._inflight:  # writes already accepted are committed (or fail) first
            await asyncio.wait(set(self._inflight))
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("Closing the hub database took over %.0f s; its connections were cut.", CLOSE_TIMEOUT_S)
            self._pool.terminate()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()

    # --- transactions ------------------------------------------------------

    async def _write(
        self, what: str, work: Callable[[asyncpg.Connection], Awaitable[T]], *, unique_races: bool = False
    ) -> T:
        """Run ``work`` in one transaction, retried whole when PostgreSQL aborts it
        for another's sake; return its result once committed. The transaction runs
        in its own task, so a cancelled caller does not cut it short."""
        self._check_open()
        task = asyncio.ensure_future(self._attempts(what, work, unique_races))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        task.add_done_callback(_consume_result)
        return await asyncio.shield(task)

    async def _attempts(self, what: str, work: Callable[[asyncpg.Connection], Awaitable[T]], unique_races: bool) -> T:
        for attempt in range(1, TX_ATTEMPTS + 1):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    return await work(conn)
            except asyncpg.PostgresError as err:
                if attempt == TX_ATTEMPTS or not _retryable(err, unique_races):
                    raise StoreError(f"the hub database failed while {what}: {err}") from err
                delay_s = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                log.info("Retrying %s in %.0f ms: the database aborted it (%s).", what, delay_s * 1000, err)
                await asyncio.sleep(delay_s)
            except (asyncpg.InterfaceError, OSError) as err:
                raise self._unavailable(what, err) from err
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _read(
        self, what: str, work: Callable[[asyncpg.Connection], Awaitable[T]], *, snapshot: bool = False
    ) -> T:
        """Run a read; ``snapshot`` reads see one consistent state (REPEATABLE READ, read only)."""
        self._check_open()
        try:
            async with self._pool.acquire() as conn:
                if not snapshot:
                    return await work(conn)
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    return await work(conn)
        except asyncpg.PostgresError as err:
            raise StoreError(f"the hub database failed while {what}: {err}") from err
        except (asyncpg.InterfaceError, OSError) as err:
            raise self._unavailable(what, err) from err

    def _unavailable(self, what: str, err: Exception) -> Exception:
        if self._closed and isinstance(err, asyncpg.InterfaceError):
            return StoreClosed()
        return StoreError(f"the hub database {redacted(self.url)} could not be reached while {what}: {err}")

    # --- credentials -------------------------------------------------------

    async def add_agent(
        self, locations: Sequence[str], role: str = "agent", agent_id: str | None = None
    ) -> tuple[str, str]:
        granted = credentials.check_grant(locations, role)
        chosen = None if agent_id is None else credentials.check_agent_id(agent_id)

        async def work(conn: asyncpg.Connection) -> tuple[str, str]:
            for _ in range(1 if chosen else ADD_AGENT_ATTEMPTS):
                new_id = chosen or credentials.new_agent_id()
                token = credentials.new_token(new_id)
                inserted = await conn.fetchval(
                    "INSERT INTO agents (agent_id, token_sha256, role, locations, created_ms) "
                    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agent_id) DO NOTHING RETURNING true",
                    new_id,
                    credentials.token_hash(token),
                    role,
                    json.dumps(granted),
                    wall_ms_now(),
                )
                if inserted:
                    return new_id, token
            if chosen:
                raise InvalidInput(
                    f"a credential with the agent id {chosen} exists already (revoked ones count); choose another id"
                )
            raise StoreError(f"could not find a free agent id in {ADD_AGENT_ATTEMPTS} tries")

        added_id, token = await self._write("adding a credential", work)
        log.info("Added the %s credential %s for %s.", role, added_id, ", ".join(granted) or "no location")
        return added_id, token

    async def authenticate(self, token: str) -> AgentIdentity | None:
        self._check_open()
        agent_id = credentials.token_agent_id(token)
        if agent_id is None:
            return None

        async def work(conn: asyncpg.Connection) -> asyncpg.Record | None:
            sql = "SELECT token_sha256, role, locations, revoked_ms, created_ms FROM agents WHERE agent_id = $1"
            return await conn.fetchrow(sql, agent_id)

        row = await self._read("checking a credential", work)
        if not credentials.hash_matches(token, row[0] if row else None) or row is None or row[3] is not None:
            return None
        return AgentIdentity(agent_id, frozenset(json.loads(row[2])), row[1], row[4])

    async def revoke_agent(self, agent_id: str) -> bool:
        async def work(conn: asyncpg.Connection) -> bool:
            done = await conn.fetchval(
                "UPDATE agents SET revoked_ms = $1 WHERE agent_id = $2 AND revoked_ms IS NULL RETURNING true",
                wall_ms_now(),
                agent_id,
            )
            return bool(done)

        revoked = await self._write("revoking a credential", work)
        if revoked:
            log.info("Revoked the credential %s.", agent_id)
        return revoked

    # --- ingest --------------------------------------------------------------

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
    ) -> IngestResult:
        self._check_open()
        clock = None if clock_window_ms is None else ClockWindow(wall_ms_now(), clock_window_ms, who.created_ms)
        batch = prepare_batch(
            who, epoch, events, acked_seq, backlog=backlog, oldest_pending_ms=oldest_pending_ms, lineage=lineage,
            clock=clock, sent_ms=sent_ms,
        )  # fmt: skip
        locks = batch_locks(batch)

        async def work(conn: asyncpg.Connection) -> IngestResult:
            await lock_keys(conn, locks)  # before the first read: see the module doc of postgres_ingest
            tx = PostgresIngest(conn, set(locks))
            result = await apply_batch(tx, batch, wall_ms_now())
            await tx.flush_changes()  # last: the feed's counter row stays locked only until COMMIT
            # This batch's keys stay locked until COMMIT: no change of theirs can commit between this read and it.
            return replace(result, change_id=await postgres_feed.latest_change_id(conn))

        return await self._write(f"committing {len(events)} event(s) from {who.agent_id}", work, unique_races=True)

    # --- reads -----------------------------------------------------------------

    async def counts(
        self, *, location: str | None = None, sku: str | None = None, limit: int = 1000, after: CountKey | None = None
    ) -> list[CountRow]:
        f = _after(Filters(), keys.counts_after(after) if after is not None else None)
        f.add("location = {}", location).add("sku = {}", sku)
        sql = f"SELECT {COUNT_FIELDS} FROM stock{f.where} ORDER BY location, sku LIMIT {f.next()}"
        params = (*f.params, checks.limit(limit))

        async def work(conn: asyncpg.Connection) -> list[CountRow]:
            return [count_row(r) for r in await conn.fetch(sql, *params)]

        return await self._read("reading counts", work)

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

        def filters(term: tuple[str, tuple[Any, ...]] | None) -> Filters:
            return _after(Filters(), term).add("location = {}", location).add("sku = {}", sku).add(
                "occurred_at < {}", before
            )

        f = filters(keys.events_after(after) if after is not None else None)
        rf = filters(keys.rejections_after(after) if after is not None else None)
        events_sql = ledger_events_sql(f"(SELECT * FROM events{f.where} ORDER BY {NEWEST_FIRST} LIMIT {f.next()})")
        rejections_sql = (
            f"SELECT {EVENT_FIELDS}, 'rejected', NULL, attempts - 1, received_at_ms, detail, code, content_hash "
            f"FROM rejections{rf.where} ORDER BY {keys.REJECTIONS_NEWEST_FIRST} LIMIT {rf.next()}"
        )

        def writeoffs(closed_at_term: str | None, closed_at: int | None) -> Filters:
            return (
                Filters("closed_at IS NOT NULL", "shipped > received")
                .add("COALESCE(in_to, out_to) = {}", location)
                .add("sku = {}", sku)
                .add("closed_at < {}", before)
                .add(closed_at_term or "", closed_at)
            )

        if after is None:
            wanted = [(writeoffs(None, None), limit)]
        else:  # those stamped like the cursor's row may sort either side of it: read them all
            wanted = [
                (writeoffs("closed_at < {}", after.occurred_at), limit),
                (writeoffs("closed_at = {}", after.occurred_at), keys.TIES_MAX),
            ]

        async def work(conn: asyncpg.Connection) -> list[LedgerRow]:
            rows = list(await conn.fetch(events_sql, *f.params, limit))
            rows += await conn.fetch(rejections_sql, *rf.params, limit)
            out = [ledger_row(r) for r in rows]
            if bundled := expanded_ids(out):  # a bundle's movement: how it was booked on its parts
                out = with_expansions(out, await PostgresIngest(conn, set()).expansions(bundled))
            for w, most in wanted:  # transfers closed short: a ledger row of their own (hub.storage.held)
                sql = f"SELECT {TRANSFER_FIELDS}, updated_at_ms FROM transfers{w.where} ORDER BY closed_at DESC"
                found = await conn.fetch(f"{sql} LIMIT {w.next()}", *w.params, most)
                out += [held.writeoff_ledger_row(Transfer(*tuple(r)[:10]), r[10]) for r in found]
            return keys.newest_first_after(out, after, limit)

        return await self._read("reading the ledger", work, snapshot=True)

    async def exceptions(
        self, *, location: str | None = None, limit: int = 1000, transfer_open_max_ms: int | None = None,
        after: ExceptionKey | None = None,
    ) -> list[ExceptionRow]:
        checks.limit(limit)
        now_ms = wall_ms_now()

        def query(source: ExceptionSource, fields: str, table: str, f: Filters) -> tuple[str, list[Any]]:
            """One source's rows after ``after`` in the list's order, at most ``limit``."""
            _after(f, source.after(after) if after is not None else None)
            sql = f"SELECT {fields} FROM {table}{f.where} ORDER BY {source.order} LIMIT {f.next()}"
            return sql, [*f.params, limit]

        at = "(COALESCE(in_to, out_to) = {0} OR COALESCE(out_from, in_from) = {0})"
        negative = query(
            keys.NEGATIVE, "location, sku, on_hand, updated_at_ms", "stock",
            Filters("on_hand < 0").add("location = {}", location),
        )  # fmt: skip
        transfers = query(
            keys.TRANSFER, f"{TRANSFER_FIELDS}, updated_at_ms", "transfers",
            Filters(
                "((received > 0 AND received <> shipped) OR (closed_at IS NOT NULL AND shipped > received))"
            ).add(at, location),
        )  # fmt: skip
        overdue = query(
            keys.TRANSFER_OVERDUE, f"{TRANSFER_FIELDS}, updated_at_ms", "transfers",
            Filters("closed_at IS NULL", "shipped > received")
            .add("shipped_at_ms < {}", None if transfer_open_max_ms is None else now_ms - transfer_open_max_ms)
            .add(at, location),
        )  # fmt: skip
        pending = query(
            keys.CLOCK_QUARANTINE, held.QUARANTINE_FIELDS, "quarantine",
            Filters("status = 'pending'").add("location = {}", location),
        )  # fmt: skip
        rejected = query(
            keys.REJECTED,
            "event_id, agent_id, seq, location, sku, kind, qty, code, detail, attempts, received_at_ms, content_hash",
            "rejections", Filters("code <> 'discarded'").add("location = {}", location),
        )  # fmt: skip
        divergence_page = keys.DIVERGENCE.after(after) if after is not None else None

        async def work(conn: asyncpg.Connection) -> list[ExceptionRow]:
            out: list[ExceptionRow] = []
            for loc, sku, on_hand, at_ms in await conn.fetch(negative[0], *negative[1]):
                finding = negative_on_hand_finding(loc, sku, on_hand)
                if finding is not None:
                    data = finding.data | {"available": 0}
                    row = ExceptionRow(finding.kind, loc, sku, finding.detail, data, at_ms)
                    out.append(findings.sourced(row, keys.NEGATIVE.name, loc, sku))
            for r in await conn.fetch(transfers[0], *transfers[1]):
                if (t := Transfer(*tuple(r)[:10]).finding()) is not None:
                    row = ExceptionRow(t.kind, t.location, t.sku, t.detail, t.data, r[10])
                    out.append(findings.sourced(row, keys.TRANSFER.name, r[0], r[1]))
            if transfer_open_max_ms is not None:
                for r in await conn.fetch(overdue[0], *overdue[1]):
                    if (t := Transfer(*tuple(r)[:10]).overdue_finding(now_ms, transfer_open_max_ms)) is not None:
                        row = ExceptionRow(t.kind, t.location, t.sku, t.detail, t.data, r[10])
                        out.append(findings.sourced(row, keys.TRANSFER_OVERDUE.name, r[0], r[1]))
            for r in await conn.fetch(pending[0], *pending[1]):
                row = held.quarantine_exception(held.quarantine_row(tuple(r)))
                out.append(findings.sourced(row, keys.CLOCK_QUARANTINE.name, r[0]))
            for r in await conn.fetch(rejected[0], *rejected[1]):
                row = rejection_exception(tuple(r)[:11])
                out.append(findings.sourced(row, keys.REJECTED.name, r[1], r[0], r[11]))
            out += await postgres_reports.unknown_barcode_exceptions(conn, location, limit, after)
            out += await postgres_reports.import_issue_exceptions(conn, location, limit, after)
            out += await postgres_reports.channel_exceptions(conn, location, limit, after)
            diverging = await postgres_reports.divergence(
                conn, location, None, limit, divergence_page, keys.DIVERGENCE.order
            )
            out += [findings.divergence(d) for d in diverging]
            return keys.exceptions_page(out, limit)

        return await self._read("reading exceptions", work, snapshot=True)

    # --- clock quarantine ---------------------------------------------------------

    async def quarantine(
        self, *, status: str | None = "pending", location: str | None = None, limit: int = 1000,
        before_id: int | None = None,
    ) -> list[QuarantineRow]:
        held.check_query(status)
        f = Filters().add("status = {}", status).add("location = {}", location).add("quarantine_id < {}", before_id)
        sql = f"SELECT {held.QUARANTINE_FIELDS} FROM quarantine{f.where} ORDER BY quarantine_id DESC LIMIT {f.next()}"
        params = (*f.params, checks.limit(limit))

        async def work(conn: asyncpg.Connection) -> list[QuarantineRow]:
            return [held.quarantine_row(tuple(r)) for r in await conn.fetch(sql, *params)]

        return await self._read("reading the quarantine", work)

    async def resolve_quarantine(self, quarantine_id: int, action: str, operator: str) -> QuarantineRow | None:
        held.check_action(action)
        checks.whole(quarantine_id, "quarantine id", 1, 2**63 - 1)
        select = f"SELECT {held.QUARANTINE_FIELDS} FROM quarantine WHERE quarantine_id = $1 FOR UPDATE"

        async def work(conn: asyncpg.Connection) -> QuarantineRow | None:
            found = await conn.fetchrow(select, quarantine_id)
            if found is None:
                return None
            row = held.quarantine_row(tuple(found))
            if row.status != "pending":
                raise AlreadyResolved(f"held event {quarantine_id} was already {row.status} by {row.resolved_by}")
            now_ms = wall_ms_now()
            if action == "apply_at_receipt":
                who, event = held.restamped(row, operator)
                batch = replace(prepare_batch(who, event.epoch, [event]), operator=operator)
                locks = batch_locks(batch)
                await lock_keys(conn, locks)
                tx = PostgresIngest(conn, set(locks))
                result = await apply_batch(tx, batch, now_ms)
                await tx.flush_changes()
                if result.rejected:
                    raise InvalidInput(f"held event {quarantine_id} cannot be applied: {result.rejected[0].reason}")
                status = "applied"
            else:
                await conn.execute(
                    f"INSERT INTO rejections ({EVENT_FIELDS}, content_hash, code, detail, received_at_ms) "
                    "SELECT event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, "
                    "ref, reason, attrs, $1, 'discarded', $2, $3 FROM quarantine WHERE quarantine_id = $4 "
                    "ON CONFLICT DO NOTHING",
                    held.discarded_hash(row),
                    held.discard_detail(row, operator, now_ms),
                    now_ms,
                    quarantine_id,
                )
                status = "discarded"
            await conn.execute(
                "UPDATE quarantine SET status = $1, resolved_by = $2, resolved_at_ms = $3 WHERE quarantine_id = $4",
                status,
                operator,
                now_ms,
                quarantine_id,
            )
            return replace(row, status=status, resolved_by=operator, resolved_at_ms=now_ms)

        resolved = await self._write(f"resolving held event {quarantine_id}", work, unique_races=True)
        if resolved is not None:
            log.info("%s %s held event %d (%s of %s at %s).", operator, resolved.status, quarantine_id,
                     resolved.kind, resolved.sku, resolved.location)  # fmt: skip
        return resolved

    async def agent_status(self, agent_id: str | None = None) -> list[AgentStatus]:
        f = Filters().add("agent_id = {}", agent_id)

        async def work(conn: asyncpg.Connection) -> list[AgentStatus]:
            marks: dict[str, dict[int, int]] = {}
            for aid, epoch, hwm in await conn.fetch(
                f"SELECT agent_id, epoch, hwm FROM agent_hwm{f.where} ORDER BY updated_ms, epoch", *f.params
            ):
                marks.setdefault(aid, {})[epoch] = hwm
            rows = await conn.fetch(
                "SELECT agent_id, locations, last_sync_ms, clock_skew_ms, role, revoked_ms, "
                "backlog, oldest_pending_ms, backlog_at_ms "
                f"FROM agents{f.where} ORDER BY agent_id",
                *f.params,
            )
            return [
                AgentStatus(
                    aid,
                    tuple(json.loads(locs)),
                    last,
                    marks.get(aid, {}),
                    skew,
                    role,
                    revoked is not None,
                    backlog=backlog,
                    oldest_pending_ms=oldest,
                    backlog_at_ms=backlog_at,
                )
                for aid, locs, last, skew, role, revoked, backlog, oldest, backlog_at in rows
            ]

        return await self._read("reading agent status", work, snapshot=True)

    async def set_safety_stock(self, location: str, sku: str, qty: int) -> CountRow:
        if not is_location(location):
            raise InvalidInput(f"{location!r} is not a location code")
        if not isinstance(sku, str) or not 0 < len(sku) <= SKU_MAX_LEN:
            raise InvalidInput(f"{sku!r} is not a SKU (1 to {SKU_MAX_LEN} characters)")
        if isinstance(qty, bool) or not isinstance(qty, int) or not 0 <= qty <= QTY_MAX:
            raise InvalidInput(f"safety stock must be a whole number of units from 0 to {QTY_MAX}, got {qty!r}")

        async def work(conn: asyncpg.Connection) -> CountRow:
            now_ms = wall_ms_now()
            await lock_keys(conn, [stock_lockable((location, sku))])  # ingest rewrites whole stock rows
            was = await conn.fetchrow(
                "SELECT on_hand, reserved, safety_stock FROM stock WHERE location = $1 AND sku = $2", location, sku
            )
            stored = await conn.fetchrow(
                "INSERT INTO stock (location, sku, on_hand, reserved, in_transit, safety_stock, updated_at_ms) "
                "VALUES ($1, $2, 0, 0, 0, $3, $4) ON CONFLICT (location, sku) DO UPDATE SET "
                "safety_stock = excluded.safety_stock, updated_at_ms = excluded.updated_at_ms "
                f"RETURNING {COUNT_FIELDS}",
                location,
                sku,
                qty,
                now_ms,
            )
            row = count_row(stored)
            tx = PostgresIngest(conn, {stock_lockable((location, sku))})
            await refresh_bundles(tx, [(location, sku)], now_ms)  # the bundles made of it follow (feed rows: below)
            if available(*(was or (0, 0, 0))) != row.available:  # the feed shows the new available
                snapshot = CountSnapshot(location, sku, row.on_hand, row.reserved, row.available, row.in_transit)
                await postgres_feed.append_changes(conn, [NewChange(snapshot, ())], now_ms)  # last: see the module doc
            await tx.flush_changes()
            return row

        return await self._write(f"setting the safety stock of {sku} at {location}", work)

    async def health(self) -> dict[str, Any]:
        async def work(conn: asyncpg.Connection) -> dict[str, Any]:
            return {
                "ok": True,
                "backend": "postgresql",
                "database": redacted(self.url),
                "hub_id": self.hub_id,
                "schema_version": await schema_version(conn),
                "pool_size": self._pool.get_size(),
                "pool_idle": self._pool.get_idle_size(),
            }

        return await self._read("checking health", work)

    # --- change feed ---------------------------------------------------------

    async def changes(
        self, after: int, limit: int, location: str | None = None, sku: str | None = None
    ) -> list[ChangeRow]:
        checks.whole(after, "after", 0, 2**63 - 1)
        checks.limit(limit)

        async def work(conn: asyncpg.Connection) -> list[ChangeRow]:
            return await postgres_feed.changes(conn, after, limit, location, sku)

        return await self._read("reading the change feed", work)

    async def latest_change_id(self) -> int:
        return await self._read("reading the change feed", postgres_feed.latest_change_id)

    # --- webhooks --------------------------------------------------------------

    async def webhook_state(self, name: str) -> WebhookState:
        async def work(conn: asyncpg.Connection) -> WebhookState:
            return await postgres_feed.webhook_state(conn, name)

        return await self._read(f"reading the state of webhook {name}", work)

    async def save_webhook_state(
        self, name: str, cursor: int, last_error: str | None = None, attempts: int = 0
    ) -> None:
        async def work(conn: asyncpg.Connection) -> None:
            await postgres_feed.save_webhook_state(conn, name, cursor, last_error, attempts, wall_ms_now())

        await self._write(f"saving the state of webhook {name}", work)

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
        async def work(conn: asyncpg.Connection) -> None:
            await postgres_feed.log_webhook_delivery(
                conn, name, first_change, last_change, status, http_status, error, at_ms
            )

        await self._write(f"logging a delivery of webhook {name}", work)

    async def webhook_deliveries(
        self, name: str, limit: int = 100, before_id: int | None = None
    ) -> list[WebhookDelivery]:
        checks.limit(limit)

        async def work(conn: asyncpg.Connection) -> list[WebhookDelivery]:
            return await postgres_feed.webhook_deliveries(conn, name, limit, before_id)

        return await self._read(f"reading the deliveries of webhook {name}", work)

    # --- catalog ---------------------------------------------------------------

    async def catalog(self) -> Catalog:
        return await self._read("reading the catalog", postgres_reports.catalog, snapshot=True)

    async def catalog_version(self) -> int:
        return await self._read("reading the catalog version", postgres_reports.catalog_version)

    async def put_catalog(self, items: Sequence[CatalogItem]) -> CatalogUpdate:
        checked = checks.catalog_items(items)

        async def work(conn: asyncpg.Connection) -> CatalogUpdate:
            return await postgres_reports.put_catalog(conn, checked, wall_ms_now())

        update = await self._write(f"writing {len(checked)} catalog item(s)", work)
        if update.updated:
            log.info("The catalog is now version %d (%d item(s) changed).", update.version, update.updated)
        return update

    async def unknown_events(self, skus: Sequence[str]) -> list[LedgerRow]:
        async def work(conn: asyncpg.Connection) -> list[LedgerRow]:
            return [ledger_row(r) for r in await postgres_reports.unknown_event_rows(conn, skus)]

        return await self._read("reading unknown-barcode events", work, snapshot=True)

    # --- observations and import issues ------------------------------------------

    async def add_observations(self, who: AgentIdentity, observations: Sequence[Observation]) -> ReportResult:
        checks.reporter(who, "observations")
        checks.observations(observations)

        async def work(conn: asyncpg.Connection) -> ReportResult:
            return await postgres_reports.add_observations(conn, who, observations, wall_ms_now())

        return await self._write(
            f"storing {len(observations)} observation(s) from {who.agent_id}", work, unique_races=True
        )

    async def add_import_issues(self, who: AgentIdentity, issues: Sequence[ImportIssue]) -> ReportResult:
        checks.reporter(who, "import issues")
        checks.import_issues(issues)

        async def work(conn: asyncpg.Connection) -> ReportResult:
            return await postgres_reports.add_import_issues(conn, who, issues, wall_ms_now())

        return await self._write(f"storing {len(issues)} import issue(s) from {who.agent_id}", work, unique_races=True)

    # --- bundles (schema version 6) ----------------------------------------------

    async def put_bundle(self, sku: str, components: Mapping[str, int], set_by: str) -> tuple[Bundle, bool]:
        checked = checks.bundle_recipe(sku, components)

        async def work(conn: asyncpg.Connection) -> tuple[Bundle, bool]:
            tx = PostgresIngest(conn, set())
            result = await apply_recipe(tx, sku, checked, set_by, wall_ms_now())
            await tx.flush_changes()  # last: see the module doc
            return result

        bundle, changed = await self._write(f"setting the recipe of bundle {sku}", work)
        if changed:
            log.info("%s set bundle %s to recipe version %d (%s).", set_by, sku, bundle.recipe.version,
                     describe_parts(checked))  # fmt: skip
        return bundle, changed

    async def bundles(self, *, sku: str | None = None, after: str | None = None, limit: int = 1000) -> list[Bundle]:
        f = Filters().add("sku > {}", after).add("sku = {}", sku)
        sql = f"SELECT {RECIPE_FIELDS} FROM ({NEWEST_RECIPES}) n{f.where} ORDER BY sku LIMIT {f.next()}"
        params = (*f.params, checks.limit(limit))

        async def work(conn: asyncpg.Connection) -> list[Bundle]:
            recipes = [bundle_recipe(r) for r in await conn.fetch(sql, *params)]
            return bundles_of(recipes, await PostgresIngest(conn, set()).bundle_book([r.sku for r in recipes]))

        return await self._read("reading bundles", work, snapshot=True)

    async def bundle_versions(self, sku: str) -> list[BundleRecipe]:
        async def work(conn: asyncpg.Connection) -> list[BundleRecipe]:
            sql = f"SELECT {RECIPE_FIELDS} FROM bundle_recipes WHERE sku = $1 ORDER BY version"
            return [bundle_recipe(r) for r in await conn.fetch(sql, sku)]

        return await self._read("reading a bundle's recipes", work)

    async def bundle_parts(self, skus: Collection[str] | None = None) -> dict[str, dict[str, int]]:
        async def work(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
            book = await PostgresIngest(conn, set()).bundle_book(None if skus is None else list(skus))
            return {b: dict(bp.parts) for b, bp in book.items()}

        return await self._read("reading bundle recipes", work, snapshot=True)

    async def divergence(
        self, *, location: str | None = None, system: str | None = None, limit: int = 1000,
        after: DivergenceKey | None = None,
    ) -> list[DivergenceRow]:
        checks.limit(limit)
        page = keys.divergence_after(after) if after is not None else None

        async def work(conn: asyncpg.Connection) -> list[DivergenceRow]:
            return await postgres_reports.divergence(conn, location, system, limit, page)

        return await self._read("comparing observations", work, snapshot=True)
