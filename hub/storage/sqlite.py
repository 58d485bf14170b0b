"""The SQLite hub store: one file, one writer, WAL.

One writer task owns the writer connection: every write (a batch, a
credential, a safety stock) commits inside a ``BEGIN IMMEDIATE … COMMIT``
there, and writes that queue up meanwhile share the next one (group commit,
see ``_write``). Reads go through a second, query-only connection: they never
upgrade to writers, and under WAL they never wait for a write.

``synchronous=FULL``: under WAL, NORMAL can lose the last commits on power
loss. The hub answers an agent right after the commit and the agent then
forgets the batch, so a lost commit would be a lost stock movement. FULL costs
one WAL fsync per write transaction; the hub pays it (group commit shares it).

The ingest algorithm lives in ``hub.storage.ingest``; ``hub.storage.sqlite_ingest``
supplies its reads and writes in SQL, ``hub.storage.sqlite_schema`` the schema.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from hub.resolver import Transfer, available, is_location, negative_on_hand_finding
from hub.storage import checks, credentials, findings, sqlite_feed, sqlite_reports
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
from hub.storage.rows import COUNT_FIELDS, count_row, ledger_row, rejection_exception
from hub.storage.sql import EVENT_FIELDS, NEWEST_FIRST, TRANSFER_FIELDS, ledger_events_sql
from hub.storage.sqlite_ingest import SqliteIngest, StockCache
from hub.storage.sqlite_schema import SCHEMA_VERSION, migrate
from hub.storage.sqlite_writer import WAL_VALVE_PAGES, Checkpointer, ConnectionThread, InlineConnection, run_inline
from protocol import QTY_MAX, CountSnapshot, StockEvent, wall_ms_now
from protocol.event import SKU_MAX_LEN

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5_000
CACHE_SIZE_KIB = 16_384
WRITE_GROUP_MAX = 16  # writes that share one transaction at most
ADD_AGENT_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class _Write:
    what: str  # for messages: "adding a credential"
    work: Callable[[InlineConnection], Coroutine[Any, Any, Any]]
    done: asyncio.Future[Any]


def _consume_result(done: asyncio.Future[Any]) -> None:
    """Mark a write's error as seen, for callers that were cancelled while waiting."""
    if not done.cancelled():
        done.exception()


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(result)
    else:
        done.set_exception(error)


def _commit_group(
    conn: sqlite3.Connection, group: list[_Write], cache: StockCache
) -> tuple[list[tuple[_Write, Any, Exception | None]], int]:
    """On the writer thread: every write of ``group`` in one transaction, each in its own savepoint
    (one failing write does not undo the others); one alone runs without one. Also returns the
    number of rows the transaction changed."""
    db = InlineConnection(conn)
    changes_before = conn.total_changes
    single = len(group) == 1
    outcomes: list[tuple[_Write, Any, Exception | None]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        cache.check_version(conn.execute("PRAGMA data_version").fetchone()[0])
        for item in group:
            if not single:
                conn.execute("SAVEPOINT one_write")
            try:
                result = run_inline(item.work(db))
            except Exception as err:
                if single:
                    raise
                conn.execute("ROLLBACK TO one_write")
                conn.execute("RELEASE one_write")
                cache.clear()  # it may hold rows of the write just undone
                outcomes.append((item, None, _translated(err, item.what)))
            else:
                if not single:
                    conn.execute("RELEASE one_write")
                outcomes.append((item, result, None))
        conn.execute("COMMIT")
    except BaseException as err:
        cache.clear()
        log.warning("A write transaction of %d write(s) failed and was rolled back: %s", len(group), err)
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as rollback_err:
                log.warning("Rolling back a failed write transaction failed too: %s", rollback_err)
        raise
    return outcomes, conn.total_changes - changes_before


def _translated(err: Exception, what: str) -> Exception:
    if isinstance(err, sqlite3.Error):
        translated = StoreError(f"the hub database failed while {what}: {err}")
        translated.__cause__ = err
        return translated
    return err


class SqliteHubStore(HubStore):
    """The hub's default store: one SQLite file. Open with ``SqliteHubStore.open(path)``."""

    def __init__(
        self,
        path: Path,
        writer: ConnectionThread,
        checkpointer: Checkpointer,
        reader: aiosqlite.Connection,
        hub_id: str,
    ) -> None:
        self.path = path
        self.hub_id = hub_id
        self._writer = writer
        self._checkpointer = checkpointer
        self._reader = reader
        self._queue: list[_Write] = []
        self._stock_cache = StockCache()  # the writer thread's alone
        self._writer_task: asyncio.Task[None] | None = None
        self._read_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> StoreOpener[SqliteHubStore]:
        """``async with SqliteHubStore.open(path) as store:`` (or ``store = await …``)."""
        return StoreOpener(lambda: cls._open(Path(path)))

    @classmethod
    async def _open(cls, path: Path) -> SqliteHubStore:
        if not path.parent.is_dir():
            raise StoreError(f"cannot open the hub database {path}: the directory {path.parent} does not exist")
        writer = ConnectionThread(path, f"hub-writer:{path.name}")
        checkpointer = Checkpointer(path)
        reader: aiosqlite.Connection | None = None
        try:
            await writer.open(
                [
                    "PRAGMA journal_mode = WAL",
                    "PRAGMA synchronous = FULL",  # see the module doc
                    f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
                    f"PRAGMA cache_size = -{CACHE_SIZE_KIB}",
                    f"PRAGMA wal_autocheckpoint = {WAL_VALVE_PAGES}",  # the checkpointer's job; see hub.storage.sqlite_writer
                ]
            )
            hub_id = await writer.run(lambda conn: run_inline(migrate(InlineConnection(conn), path)))
            await checkpointer.open()
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await reader.execute("PRAGMA query_only = ON")
        except BaseException as err:
            if reader is not None:
                await reader.close()
            await checkpointer.close()
            await writer.close()
            if isinstance(err, (sqlite3.Error, OSError)):
                raise StoreError(f"cannot open the hub database {path}: {err}") from err
            raise
        log.info("Opened the hub database %s (schema version %d).", path, SCHEMA_VERSION)
        return cls(path, writer, checkpointer, reader, hub_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer_task is not None:  # writes already accepted are committed first
            await asyncio.shield(self._writer_task)
        await self._checkpointer.close()
        await self._writer.close()
        async with self._read_lock:
            await self._reader.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()

    # --- transactions ------------------------------------------------------

    async def _write(self, what: str, work: Callable[[InlineConnection], Coroutine[Any, Any, T]]) -> T:
        """Run ``work`` inside a write transaction and return its result once committed.

        One writer task owns the connection. Writes that queue up while it is
        busy share its next transaction (group commit: one BEGIN IMMEDIATE …
        COMMIT and one fsync for all of them), each inside its own SAVEPOINT,
        so one failing write does not undo the others. A caller that is
        cancelled does not cancel its write: it commits or fails whole."""
        self._check_open()
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_consume_result)
        self._queue.append(_Write(what, work, done))
        if self._writer_task is None:
            self._writer_task = asyncio.create_task(self._drain(), name=f"hub-writer:{self.path.name}")
        result: T = await asyncio.shield(done)
        return result

    async def _drain(self) -> None:
        try:
            while self._queue:
                group = self._queue[:WRITE_GROUP_MAX]
                del self._queue[:WRITE_GROUP_MAX]
                await self._commit(group)
        finally:
            self._writer_task = None

    async def _commit(self, group: list[_Write]) -> None:
        try:
            outcomes, rows = await self._writer.run(lambda conn: _commit_group(conn, group, self._stock_cache))
        except BaseException as err:  # the transaction failed as a whole: nothing of it is committed
            if isinstance(err, Exception):
                for item in group:
                    _settle(item.done, None, _translated(err, item.what))
                return
            for item in group:
                _settle(item.done, None, StoreError(f"the hub stopped before {item.what} was committed"))
            raise
        self._checkpointer.committed(rows)
        for item, result, error in outcomes:
            _settle(item.done, result, error)

    async def _read(
        self, what: str, work: Callable[[aiosqlite.Connection], Awaitable[T]], *, snapshot: bool = False
    ) -> T:
        self._check_open()
        # The read runs to its end in a task of its own even when its caller is cancelled (a browser
        # reload, a client gone): aiosqlite queues each statement on the reader thread, so a read
        # abandoned between its BEGIN and its end would leave the next one inside its transaction.
        read = asyncio.ensure_future(self._read_whole(what, work, snapshot))
        read.add_done_callback(_consume_result)
        return await asyncio.shield(read)

    async def _read_whole(
        self, what: str, work: Callable[[aiosqlite.Connection], Awaitable[T]], snapshot: bool
    ) -> T:
        async with self._read_lock:
            self._check_open()
            db = self._reader
            try:
                if not snapshot:
                    return await work(db)
                await db.execute("BEGIN")
                try:
                    return await work(db)
                finally:
                    await db.rollback()  # read only: ROLLBACK ends it like COMMIT
            except sqlite3.Error as err:
                raise StoreError(f"the hub database failed while {what}: {err}") from err

    # --- credentials -------------------------------------------------------

    async def add_agent(
        self, locations: Sequence[str], role: str = "agent", agent_id: str | None = None
    ) -> tuple[str, str]:
        granted = credentials.check_grant(locations, role)
        chosen = None if agent_id is None else credentials.check_agent_id(agent_id)

        async def work(db: InlineConnection) -> tuple[str, str]:
            for _ in range(1 if chosen else ADD_AGENT_ATTEMPTS):
                new_id = chosen or credentials.new_agent_id()
                token = credentials.new_token(new_id)
                cur = await db.execute(
                    "INSERT INTO agents (agent_id, token_sha256, role, locations, created_ms) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (agent_id) DO NOTHING",
                    (new_id, credentials.token_hash(token), role, json.dumps(granted), wall_ms_now()),
                )
                if cur.rowcount == 1:
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

        async def work(db: aiosqlite.Connection) -> list[Any]:
            sql = "SELECT token_sha256, role, locations, revoked_ms, created_ms FROM agents WHERE agent_id = ?"
            return list(await db.execute_fetchall(sql, (agent_id,)))

        rows = await self._read("checking a credential", work)
        row = rows[0] if rows else None
        if not credentials.hash_matches(token, row[0] if row else None) or row is None or row[3] is not None:
            return None
        return AgentIdentity(agent_id, frozenset(json.loads(row[2])), row[1], row[4])

    async def revoke_agent(self, agent_id: str) -> bool:
        async def work(db: InlineConnection) -> bool:
            cur = await db.execute(
                "UPDATE agents SET revoked_ms = ? WHERE agent_id = ? AND revoked_ms IS NULL", (wall_ms_now(), agent_id)
            )
            return cur.rowcount == 1

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
        # Checked before the write lock: overlaps another batch.
        clock = None if clock_window_ms is None else ClockWindow(wall_ms_now(), clock_window_ms, who.created_ms)
        batch = prepare_batch(
            who, epoch, events, acked_seq, backlog=backlog, oldest_pending_ms=oldest_pending_ms, lineage=lineage,
            clock=clock, sent_ms=sent_ms,
        )  # fmt: skip

        async def work(db: InlineConnection) -> IngestResult:
            result = await apply_batch(SqliteIngest(db, self._stock_cache), batch, wall_ms_now())
            # The one writer holds the file: the newest change id now is exactly this commit's position.
            return replace(result, change_id=await sqlite_feed.latest_change_id(db))

        return await self._write(f"committing {len(events)} event(s) from {who.agent_id}", work)

    # --- reads -----------------------------------------------------------------

    async def counts(
        self, *, location: str | None = None, sku: str | None = None, limit: int = 1000, after: CountKey | None = None
    ) -> list[CountRow]:
        terms, after_params = _after_terms(keys.counts_after(after) if after is not None else None)
        where, params = _filters(*terms, location=location, sku=sku)
        params = after_params + params
        sql = (
            f"SELECT {COUNT_FIELDS} "
            f"FROM stock{where} ORDER BY location, sku LIMIT ?"
        )

        async def work(db: aiosqlite.Connection) -> list[CountRow]:
            return [count_row(r) for r in await db.execute_fetchall(sql, (*params, checks.limit(limit)))]

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
        ev_terms, ev_after = _after_terms(keys.events_after(after) if after is not None else None)
        rej_terms, rej_after = _after_terms(keys.rejections_after(after) if after is not None else None)
        ev_where, params = _filters(*ev_terms, location=location, sku=sku, before=before)
        rej_where, _ = _filters(*rej_terms, location=location, sku=sku, before=before)
        events_sql = ledger_events_sql(f"(SELECT * FROM events{ev_where} ORDER BY {NEWEST_FIRST} LIMIT ?)")
        rejections_sql = (
            f"SELECT {EVENT_FIELDS}, 'rejected', NULL, attempts - 1, received_at_ms, detail, code, content_hash "
            f"FROM rejections{rej_where} ORDER BY {keys.REJECTIONS_NEWEST_FIRST} LIMIT ?"
        )

        def writeoffs_sql(closed_at_term: str | None) -> str:
            return (
                f"SELECT {TRANSFER_FIELDS}, updated_at_ms FROM transfers WHERE closed_at IS NOT NULL AND shipped > received"
                + "".join(
                    f" AND {term}"
                    for term, value in (("COALESCE(in_to, out_to) = ?", location), ("sku = ?", sku), ("closed_at < ?", before))
                    if value is not None
                )
                + (f" AND {closed_at_term}" if closed_at_term else "")
                + " ORDER BY closed_at DESC LIMIT ?"
            )

        _, w_params = _filters(location=location, sku=sku, before=before)

        async def work(db: aiosqlite.Connection) -> list[LedgerRow]:
            rows = list(await db.execute_fetchall(events_sql, (*ev_after, *params, limit)))
            rows += await db.execute_fetchall(rejections_sql, (*rej_after, *params, limit))
            out = [ledger_row(r) for r in rows]
            if bundled := expanded_ids(out):  # a bundle's movement: how it was booked on its parts
                out = with_expansions(out, await SqliteIngest(db).expansions(bundled))
            if after is None:
                writeoffs = list(await db.execute_fetchall(writeoffs_sql(None), (*w_params, limit)))
            else:  # those stamped like the cursor's row may sort either side of it: read them all
                older = (*w_params, after.occurred_at, limit)
                writeoffs = list(await db.execute_fetchall(writeoffs_sql("closed_at < ?"), older))
                writeoffs += await db.execute_fetchall(
                    writeoffs_sql("closed_at = ?"), (*w_params, after.occurred_at, keys.TIES_MAX)
                )
            # transfers closed short: a ledger row of their own (hub.storage.held)
            out += [held.writeoff_ledger_row(Transfer(*r[:10]), r[10]) for r in writeoffs]
            return keys.newest_first_after(out, after, limit)

        return await self._read("reading the ledger", work, snapshot=True)

    async def exceptions(
        self, *, location: str | None = None, limit: int = 1000, transfer_open_max_ms: int | None = None,
        after: ExceptionKey | None = None,
    ) -> list[ExceptionRow]:
        checks.limit(limit)
        now_ms = wall_ms_now()
        here = ("location = ?",) if location is not None else ()
        at, at2 = ((location,), (location, location)) if location is not None else ((), ())
        either_end = ""
        if location is not None:  # a transfer is the business of both its ends
            either_end = " AND (COALESCE(in_to, out_to) = ? OR COALESCE(out_from, in_from) = ?)"

        def query(source: ExceptionSource, fields: str, table: str, *terms: str) -> tuple[str, tuple[Any, ...]]:
            """One source's rows after ``after`` in the list's order, at most ``limit``, and the paging
            term's parameters (``?``: those, then those of ``terms``, then the limit)."""
            page, page_params = _after_terms(source.after(after) if after is not None else None)
            where = " AND ".join((*page, *terms))
            return f"SELECT {fields} FROM {table} WHERE {where} ORDER BY {source.order} LIMIT ?", page_params

        transfer_fields = f"{TRANSFER_FIELDS}, updated_at_ms"
        negative = query(keys.NEGATIVE, "location, sku, on_hand, updated_at_ms", "stock", "on_hand < 0", *here)
        transfers = query(
            keys.TRANSFER, transfer_fields, "transfers",
            "((received > 0 AND received <> shipped) OR (closed_at IS NOT NULL AND shipped > received))" + either_end,
        )  # fmt: skip
        overdue = query(
            keys.TRANSFER_OVERDUE, transfer_fields, "transfers",
            "closed_at IS NULL AND shipped > received AND shipped_at_ms < ?" + either_end,
        )  # fmt: skip
        pending = query(keys.CLOCK_QUARANTINE, held.QUARANTINE_FIELDS, "quarantine", "status = 'pending'", *here)
        rejection_fields = (
            "event_id, agent_id, seq, location, sku, kind, qty, code, detail, attempts, received_at_ms, content_hash"
        )
        rejected = query(keys.REJECTED, rejection_fields, "rejections", "code <> 'discarded'", *here)
        divergence_page = keys.DIVERGENCE.after(after) if after is not None else None

        async def work(db: aiosqlite.Connection) -> list[ExceptionRow]:
            async def fetch(sql: tuple[str, tuple[Any, ...]], *params: Any) -> list[Any]:
                return list(await db.execute_fetchall(sql[0], (*sql[1], *params, limit)))

            out: list[ExceptionRow] = []
            for loc, sku, on_hand, at_ms in await fetch(negative, *at):
                finding = negative_on_hand_finding(loc, sku, on_hand)
                if finding is not None:
                    data = finding.data | {"available": 0}
                    row = ExceptionRow(finding.kind, loc, sku, finding.detail, data, at_ms)
                    out.append(findings.sourced(row, keys.NEGATIVE.name, loc, sku))
            for r in await fetch(transfers, *at2):
                if (t := Transfer(*r[:10]).finding()) is not None:
                    row = ExceptionRow(t.kind, t.location, t.sku, t.detail, t.data, r[10])
                    out.append(findings.sourced(row, keys.TRANSFER.name, r[0], r[1]))
            if transfer_open_max_ms is not None:
                for r in await fetch(overdue, now_ms - transfer_open_max_ms, *at2):
                    if (t := Transfer(*r[:10]).overdue_finding(now_ms, transfer_open_max_ms)) is not None:
                        row = ExceptionRow(t.kind, t.location, t.sku, t.detail, t.data, r[10])
                        out.append(findings.sourced(row, keys.TRANSFER_OVERDUE.name, r[0], r[1]))
            for r in await fetch(pending, *at):
                row = held.quarantine_exception(held.quarantine_row(r))
                out.append(findings.sourced(row, keys.CLOCK_QUARANTINE.name, r[0]))
            for r in await fetch(rejected, *at):
                out.append(findings.sourced(rejection_exception(r[:11]), keys.REJECTED.name, r[1], r[0], r[11]))
            out += await sqlite_reports.unknown_barcode_exceptions(db, location, limit, after)
            out += await sqlite_reports.import_issue_exceptions(db, location, limit, after)
            out += await sqlite_reports.channel_exceptions(db, location, limit, after)
            diverging = await sqlite_reports.divergence(
                db, location, None, limit, divergence_page, keys.DIVERGENCE.order
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
        terms = [t for t, v in (("status = ?", status), ("quarantine_id < ?", before_id)) if v is not None]
        where, params = _filters(*terms, location=location)
        sql = f"SELECT {held.QUARANTINE_FIELDS} FROM quarantine{where} ORDER BY quarantine_id DESC LIMIT ?"
        args = tuple(v for v in (status, before_id) if v is not None) + params + (checks.limit(limit),)

        async def work(db: aiosqlite.Connection) -> list[QuarantineRow]:
            return [held.quarantine_row(r) for r in await db.execute_fetchall(sql, args)]

        return await self._read("reading the quarantine", work)

    async def resolve_quarantine(self, quarantine_id: int, action: str, operator: str) -> QuarantineRow | None:
        held.check_action(action)
        checks.whole(quarantine_id, "quarantine id", 1, 2**63 - 1)
        select = f"SELECT {held.QUARANTINE_FIELDS} FROM quarantine WHERE quarantine_id = ?"

        async def work(db: InlineConnection) -> QuarantineRow | None:
            found = list(await db.execute_fetchall(select, (quarantine_id,)))
            if not found:
                return None
            row = held.quarantine_row(found[0])
            if row.status != "pending":
                raise AlreadyResolved(f"held event {quarantine_id} was already {row.status} by {row.resolved_by}")
            now_ms = wall_ms_now()
            if action == "apply_at_receipt":
                who, event = held.restamped(row, operator)
                batch = replace(prepare_batch(who, event.epoch, [event]), operator=operator)
                result = await apply_batch(SqliteIngest(db, self._stock_cache), batch, now_ms)
                if result.rejected:
                    raise InvalidInput(f"held event {quarantine_id} cannot be applied: {result.rejected[0].reason}")
                status = "applied"
            else:
                detail = held.discard_detail(row, operator, now_ms)
                await db.execute(
                    f"INSERT INTO rejections ({EVENT_FIELDS}, content_hash, code, detail, received_at_ms) "
                    "SELECT event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, "
                    "ref, reason, attrs, ?, 'discarded', ?, ? FROM quarantine WHERE quarantine_id = ? "
                    "ON CONFLICT DO NOTHING",
                    (held.discarded_hash(row), detail, now_ms, quarantine_id),
                )
                status = "discarded"
            await db.execute(
                "UPDATE quarantine SET status = ?, resolved_by = ?, resolved_at_ms = ? WHERE quarantine_id = ?",
                (status, operator, now_ms, quarantine_id),
            )
            return replace(row, status=status, resolved_by=operator, resolved_at_ms=now_ms)

        resolved = await self._write(f"resolving held event {quarantine_id}", work)
        if resolved is not None:
            log.info("%s %s held event %d (%s of %s at %s).", operator, resolved.status, quarantine_id,
                     resolved.kind, resolved.sku, resolved.location)  # fmt: skip
        return resolved

    async def agent_status(self, agent_id: str | None = None) -> list[AgentStatus]:
        where, params = ("WHERE agent_id = ?", (agent_id,)) if agent_id is not None else ("", ())

        async def work(db: aiosqlite.Connection) -> list[AgentStatus]:
            marks: dict[str, dict[int, int]] = {}
            for aid, epoch, hwm in await db.execute_fetchall(
                f"SELECT agent_id, epoch, hwm FROM agent_hwm {where} ORDER BY updated_ms, epoch", params
            ):
                marks.setdefault(aid, {})[epoch] = hwm
            rows = await db.execute_fetchall(
                "SELECT agent_id, locations, last_sync_ms, clock_skew_ms, role, revoked_ms, "
                "backlog, oldest_pending_ms, backlog_at_ms "
                f"FROM agents {where} ORDER BY agent_id",
                params,
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

        async def work(db: InlineConnection) -> CountRow:
            now_ms = wall_ms_now()
            old = await db.execute_fetchall(
                "SELECT on_hand, reserved, safety_stock FROM stock WHERE location = ? AND sku = ?", (location, sku)
            )
            rows = await db.execute_fetchall(
                "INSERT INTO stock (location, sku, on_hand, reserved, in_transit, safety_stock, updated_at_ms) "
                "VALUES (?, ?, 0, 0, 0, ?, ?) ON CONFLICT (location, sku) DO UPDATE SET "
                "safety_stock = excluded.safety_stock, updated_at_ms = excluded.updated_at_ms "
                f"RETURNING {COUNT_FIELDS}",
                (location, sku, qty, now_ms),
            )
            self._stock_cache.discard((location, sku))
            row = count_row(next(iter(rows)))
            was = next(iter(old), (0, 0, 0))  # a new key starts at zero
            if available(was[0], was[1], was[2]) != row.available:  # the feed shows the new available
                snapshot = CountSnapshot(location, sku, row.on_hand, row.reserved, row.available, row.in_transit)
                await SqliteIngest(db).append_changes([NewChange(snapshot, ())], now_ms)
            await refresh_bundles(SqliteIngest(db, self._stock_cache), [(location, sku)], now_ms)  # made of it
            return row

        return await self._write(f"setting the safety stock of {sku} at {location}", work)

    # --- change feed and webhooks ----------------------------------------------

    async def changes(
        self, after: int, limit: int, location: str | None = None, sku: str | None = None
    ) -> list[ChangeRow]:
        checks.whole(after, "after", 0, 2**63 - 1)
        checks.limit(limit)
        return await self._read(
            "reading the change feed", lambda db: sqlite_feed.changes(db, after, limit, location, sku)
        )

    async def latest_change_id(self) -> int:
        return await self._read("reading the change feed", sqlite_feed.latest_change_id)

    async def webhook_state(self, name: str) -> WebhookState:
        return await self._read("reading a webhook's state", lambda db: sqlite_feed.webhook_state(db, name))

    async def save_webhook_state(
        self, name: str, cursor: int, last_error: str | None = None, attempts: int = 0
    ) -> None:
        await self._write(
            f"saving the state of webhook {name}",
            lambda db: sqlite_feed.save_webhook_state(db, name, cursor, last_error, attempts, wall_ms_now()),
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
        await self._write(
            f"logging a delivery of webhook {name}",
            lambda db: sqlite_feed.log_webhook_delivery(
                db, name, first_change, last_change, status, http_status, error, at_ms
            ),
        )

    async def webhook_deliveries(
        self, name: str, limit: int = 100, before_id: int | None = None
    ) -> list[WebhookDelivery]:
        checks.limit(limit)
        return await self._read(
            "reading a webhook's deliveries", lambda db: sqlite_feed.webhook_deliveries(db, name, limit, before_id)
        )

    # --- catalog, observations, import issues ------------------------------------

    async def catalog(self) -> Catalog:
        return await self._read("reading the catalog", sqlite_reports.catalog, snapshot=True)

    async def catalog_version(self) -> int:
        return await self._read("reading the catalog version", sqlite_reports.catalog_version)

    async def put_catalog(self, items: Sequence[CatalogItem]) -> CatalogUpdate:
        checked = checks.catalog_items(items)
        update = await self._write(
            f"writing {len(checked)} catalog item(s)", lambda db: sqlite_reports.put_catalog(db, checked, wall_ms_now())
        )
        if update.updated:
            log.info("The catalog is at version %d: %d item(s) added or changed.", update.version, update.updated)
        return update

    async def unknown_events(self, skus: Sequence[str]) -> list[LedgerRow]:
        async def work(db: aiosqlite.Connection) -> list[LedgerRow]:
            return [ledger_row(r) for r in await sqlite_reports.unknown_event_rows(db, skus)]

        return await self._read("reading unknown-barcode events", work, snapshot=True)

    async def add_observations(self, who: AgentIdentity, observations: Sequence[Observation]) -> ReportResult:
        checks.reporter(who, "observations")
        checks.observations(observations)
        return await self._write(
            f"storing {len(observations)} observation(s) from {who.agent_id}",
            lambda db: sqlite_reports.add_observations(db, who, observations, wall_ms_now()),
        )

    async def add_import_issues(self, who: AgentIdentity, issues: Sequence[ImportIssue]) -> ReportResult:
        checks.reporter(who, "import issues")
        checks.import_issues(issues)
        return await self._write(
            f"storing {len(issues)} import issue(s) from {who.agent_id}",
            lambda db: sqlite_reports.add_import_issues(db, who, issues, wall_ms_now()),
        )

    # --- bundles (schema version 6) ----------------------------------------------

    async def put_bundle(self, sku: str, components: Mapping[str, int], set_by: str) -> tuple[Bundle, bool]:
        checked = checks.bundle_recipe(sku, components)
        bundle, changed = await self._write(
            f"setting the recipe of bundle {sku}",
            lambda db: apply_recipe(SqliteIngest(db, self._stock_cache), sku, checked, set_by, wall_ms_now()),
        )
        if changed:
            log.info("%s set bundle %s to recipe version %d (%s).", set_by, sku, bundle.recipe.version,
                     describe_parts(checked))  # fmt: skip
        return bundle, changed

    async def bundles(self, *, sku: str | None = None, after: str | None = None, limit: int = 1000) -> list[Bundle]:
        where, params = _filters(*(("sku > ?",) if after is not None else ()), sku=sku)
        sql = f"SELECT {RECIPE_FIELDS} FROM ({NEWEST_RECIPES}){where} ORDER BY sku LIMIT ?"
        args = ((after,) if after is not None else ()) + params + (checks.limit(limit),)

        async def work(db: aiosqlite.Connection) -> list[Bundle]:
            recipes = [bundle_recipe(r) for r in await db.execute_fetchall(sql, args)]
            return bundles_of(recipes, await SqliteIngest(db).bundle_book([r.sku for r in recipes]))

        return await self._read("reading bundles", work, snapshot=True)

    async def bundle_versions(self, sku: str) -> list[BundleRecipe]:
        sql = f"SELECT {RECIPE_FIELDS} FROM bundle_recipes WHERE sku = ? ORDER BY version"

        async def work(db: aiosqlite.Connection) -> list[BundleRecipe]:
            return [bundle_recipe(r) for r in await db.execute_fetchall(sql, (sku,))]

        return await self._read("reading a bundle's recipes", work)

    async def bundle_parts(self, skus: Collection[str] | None = None) -> dict[str, dict[str, int]]:
        async def work(db: aiosqlite.Connection) -> dict[str, dict[str, int]]:
            book = await SqliteIngest(db).bundle_book(None if skus is None else list(skus))
            return {b: dict(bp.parts) for b, bp in book.items()}

        return await self._read("reading bundle recipes", work, snapshot=True)

    async def divergence(
        self, *, location: str | None = None, system: str | None = None, limit: int = 1000,
        after: DivergenceKey | None = None,
    ) -> list[DivergenceRow]:
        checks.limit(limit)
        page = keys.divergence_after(after) if after is not None else None
        return await self._read(
            "comparing observations",
            lambda db: sqlite_reports.divergence(db, location, system, limit, page),
            snapshot=True,
        )

    async def health(self) -> dict[str, Any]:
        async def work(db: aiosqlite.Connection) -> dict[str, Any]:
            rows = list(await db.execute_fetchall("PRAGMA user_version"))
            return {
                "ok": True,
                "backend": "sqlite",
                "path": str(self.path),
                "hub_id": self.hub_id,
                "schema_version": rows[0][0],
                "writes_queued": len(self._queue),
            }

        return await self._read("checking health", work)


def _after_terms(term: tuple[str, tuple[Any, ...]] | None) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """A paging term of hub.storage.keys (``{}`` per parameter) with SQLite's ``?`` marks."""
    if term is None:
        return (), ()
    sql, params = term
    return (sql.format(*("?" * len(params))),), params


def _filters(
    *terms: str, location: str | None = None, sku: str | None = None, before: int | None = None
) -> tuple[str, tuple[Any, ...]]:
    """A `` WHERE …`` clause (or "") of ``terms`` and the optional filters, and its parameters."""
    where = list(terms)
    params: list[Any] = []
    for term, value in (("location = ?", location), ("sku = ?", sku), ("occurred_at < ?", before)):
        if value is not None:
            where.append(term)
            params.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), tuple(params)
