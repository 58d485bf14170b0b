"""What needs a person: the exceptions list, read from every source of ``hub.storage.keys.EXCEPTION_SOURCES``
in SQL both backends run.

Each source is read in the list's order from the cursor on, at most a page of
it, and the sources' rows are merged (``keys.exceptions_page``). The words are
the resolver's and ``hub.storage.findings``'.

A filter (``keys.ExceptionFilter``) is each source's SQL: a location is a term
on its location column (the indexes read by location already), a kind leaves
out every source that cannot raise it (and is a term on the transfer source,
which raises four), and ``since`` is a range on the source's time column, the
one its list order walks. No source is read and then thrown away in Python,
so a filtered page is as cheap as the rows it shows.

Walks whose rows have one shape are one statement, their UNION ALL (``fetch_parts``): the transfer and
overdue sources', and the unknown destinations'; on PostgreSQL each statement is a round trip.

Each source's statement is one its table's indexes answer in the list's order
(schemas 11 and 12; PostgreSQL's negative stock, a table of its own: schema 16,
``SqlHubStore.NEGATIVE_STOCK``), so the planner walks one and stops at the page instead of
sorting the table: an OR of terms that are each indexed is not, so the transfer
and overdue sources read one store's transfers once per end
(``LOCATED_TRANSFER``) and merge them. The unknown-destination source first
reads which destinations of the open transfers are unknown (``UNKNOWN_DESTINATIONS``:
one look-up in the ledger per destination, not per transfer), and walks only
those destinations' transfers. Two copies of one agent (``AGENT_COPIES``) are read from
the epochs' marks, one row per agent, and their epochs for the page's agents after. A channel's refused levels
and its refused orders (padded to the levels' shape) are one statement too.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from hub.resolver import LINKED_MAX, Finding, Transfer, linked_finding, negative_on_hand_finding
from hub.storage import findings, held, keys, reports
from hub.storage.base import ExceptionRow
from hub.storage.db import Db, Row, Where
from hub.storage.keys import ExceptionFilter, ExceptionKey, ExceptionSource
from hub.storage.rows import rejection_exception
from hub.storage.sql import TRANSFER_FIELDS
from protocol import BOOK_OUT_REASON
from protocol.catalog import UNKNOWN_SKU_PREFIX

Statement = tuple[str, tuple[object, ...]]

TRANSFER_ROW_FIELDS = f"{TRANSFER_FIELDS}, updated_at_ms"
TRANSFER_AT = held.TRANSFER_COLUMNS  # where a read of TRANSFER_ROW_FIELDS has its updated_at_ms
# Shipped to one destination under one ref by several locations (the WHERE of the index transfers_shared, word for
# word): ``shippers`` is their codes, comma-separated (schema 20), and a location code holds no comma.
SHARED = "shippers LIKE '%,%'"
# The transfers with a finding: the WHERE of the index transfers_finding (migration 025) word for word, which is
# what lets the planner read through it. A receipt is unmatched unless it is a receipt back at its shipper
# (returned) or booked out again (booked_out, net of adjusts up carrying the ref: below 0 it books nothing, so the
# second term, schema 28); a shipment is settled by what was received and received back.
TRANSFER_FINDING = (
    "((shipped = 0 AND received > returned + booked_out AND received > returned) OR (shipped > 0"
    " AND received + returned > 0 AND received + returned <> shipped) OR (closed_at IS NOT NULL"
    " AND shipped > received + returned) OR shippers LIKE '%,%')"
)
# A transfer is both ends' business: a term at a time, each read through its index (transfers_finding_to, _from,
# transfers_shared; for open transfers transfers_open_to, _from). Its destination, its first shipper or where a
# receipt said it came from, and each other shipper of a shared ref (found in the list exact and case-sensitive by
# replace(), as UNKNOWN_DESTINATIONS finds a code: LIKE took ``_`` for a wildcard and ignores case on SQLite).
LOCATED_TRANSFER = (
    "dest = ?",
    "COALESCE(out_from, in_from) = ?",
    f"{SHARED} AND replace(',' || shippers || ',', ',' || CAST(? AS TEXT) || ',', '') <> ',' || shippers || ','",
)
REJECTION_FIELDS = (
    "event_id, agent_id, seq, location, sku, kind, qty, code, detail, attempts, received_at_ms, content_hash"
)
# A transfer still open: the WHERE of the indexes transfers_open, _to and _from (migration 025) word for word.
OPEN_TRANSFER = "closed_at IS NULL AND shipped > received + returned"
# An open transfer nothing was received of yet: on its way to where it was shipped, COALESCE(in_to, out_to).
IN_TRANSIT = f"{OPEN_TRANSFER} AND in_to IS NULL AND out_to IS NOT NULL"
# The locations the hub does not know that open transfers go to: no active credential is bound to it (agents.
# locations is a JSON list of codes: '["S001", "S002"]') and nothing was ever booked there. The quoted code is found
# in the list by replace(), exact and case-sensitive on both backends: LIKE took a code's ``_`` and ``%`` for
# wildcards (S_02 was known when S002 was), and SQLite's LIKE ignores case. The destinations are read from
# transfers_open_to one at a time, each the least after the one before (an index seek each), so each is looked up
# once, in its one partition of the ledger on PostgreSQL, however many transfers go there. They include where a
# partly received transfer was received, which is known (its receipt was booked there).
UNKNOWN_DESTINATIONS = (
    "WITH RECURSIVE dests(loc) AS ("
    f"SELECT MIN(dest) FROM transfers WHERE {OPEN_TRANSFER}"
    f" UNION ALL SELECT (SELECT MIN(dest) FROM transfers WHERE {OPEN_TRANSFER}"
    " AND dest > dests.loc) FROM dests WHERE dests.loc IS NOT NULL"
    ") SELECT loc FROM dests WHERE loc IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.location = dests.loc)"
    " AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.revoked_ms IS NULL"
    " AND replace(a.locations, '\"' || dests.loc || '\"', '') <> a.locations)"
)
# Up to this many unknown destinations, each one's transfers are walked in the list's order (transfers_open_to) and
# merged, reading no transfer to a known location; beyond, the chain's open transfers are walked (transfers_open)
# for theirs, the destinations read again as a subquery (no parameter list of them).
UNKNOWN_WALKS_MAX = 32
UNKNOWN_KEY = f"substr(s.sku, 1, {len(UNKNOWN_SKU_PREFIX)}) = '{UNKNOWN_SKU_PREFIX}'"
# The same SKUs as a range of the stock's keys (stock_sku, or the primary key after a location), so only the unknown
# barcodes' rows are read: text compares by code point on both backends (binary; COLLATE "C"). No index of the
# stock's time: every ingested event writes its stock row.
UNKNOWN_RANGE = (
    f"s.sku >= '{UNKNOWN_SKU_PREFIX}' AND s.sku < '{UNKNOWN_SKU_PREFIX[:-1]}{chr(ord(UNKNOWN_SKU_PREFIX[-1]) + 1)}'"
)
# Two copies of one agent sending at once (schema 13; findings.agent_copies): epochs of one credential that each
# synced within the window, each at least twice since the other began. A copy that forks leaves its old epoch with
# at most the request it had on its way when it forked, so an outbox restored from a backup (its old copy gone)
# never counts twice there; a clone forked away from goes on syncing in it. Epoch 0 is POST /v1/events'
# (hub.events_api.CONNECTOR_EPOCH), not an outbox's. agent_hwm holds a row per epoch each agent ever had: a few
# hundred agents' few epochs, read whole (no index of its time: every sync writes it). The epoch is the sender's
# to choose, so one credential can sync in thousands within the window (a broken agent forking at every sync, or a
# stolen token): each epoch was checked against every other of its agent, and 6,600 of them took 4 s a read of the
# list (and of /metrics). Only an agent's COPIES_CHECKED_MAX epochs that synced last are checked, against any other.
COPIES_CHECKED_MAX = 20


def _recent_epochs(agents: str = "") -> str:
    """``h``: the epochs (other than 0) that synced since a time (its parameter), of the agents ``agents`` names (an
    SQL condition on ``e``, its parameters before that time's; all agents: ""), each numbered by how lately it
    synced (``recent``)."""
    return (
        "(SELECT e.agent_id, e.epoch, e.hwm, e.first_ms, e.prev_ms, e.updated_ms, e.peer, row_number() OVER"
        " (PARTITION BY e.agent_id ORDER BY e.updated_ms DESC, e.epoch) AS recent FROM agent_hwm e"
        f" WHERE {agents + ' AND ' if agents else ''}e.epoch <> 0 AND e.updated_ms >= ?) h"
    )


LIVE_COPY = (
    f"h.recent <= {COPIES_CHECKED_MAX} AND EXISTS (SELECT 1 FROM agent_hwm o WHERE o.agent_id = h.agent_id"
    " AND o.epoch <> h.epoch AND o.epoch <> 0 AND o.updated_ms >= ? AND h.prev_ms > o.first_ms"
    " AND o.prev_ms > h.first_ms)"
)
# One row per agent: when its newest copy began (the list's time: it stays while the copies run), how many copies.
AGENT_COPIES = (
    f"(SELECT h.agent_id, max(h.first_ms) AS at_ms, count(*) AS copies FROM {_recent_epochs()}"
    f" WHERE {LIVE_COPY} GROUP BY h.agent_id) c JOIN agents g ON g.agent_id = c.agent_id"
)
# An agent's locations are a JSON list (credentials.insert_agent): the code quoted as json.dumps writes it is in it.
# A store agent whose disk is full or whose reserve is in use (findings.agent_disk), while its credential holds.
AGENT_DISK_FULL = "g.disk_state IN ('full', 'reserve_in_use') AND g.revoked_ms IS NULL"
AGENT_LOCATED = "replace(g.locations, ?, '') <> g.locations"
# Movements a store agent reported the hub lacks for good (schema 34; findings.agent_lost), until an admin dismisses
# them: the WHERE of the index agent_lost_listed, walked in the list's order. Listed whether or not the reporting
# credential holds still: the counts stay wrong until the store is counted again.
LOST = "l.dismissed_ms IS NULL"
COPIES_NAMED_MAX = 10  # copies of one agent an exception names, the newest synced first (the rest are counted)
# Those copies of the page's agents: ``LIVE_COPY``, numbered per agent.
COPIES_NAMED = (
    f"SELECT {findings.AGENT_COPY_FIELDS} FROM (SELECT h.agent_id, h.epoch, h.hwm, h.first_ms, h.updated_ms, h.peer,"
    " row_number() OVER (PARTITION BY h.agent_id ORDER BY h.updated_ms DESC, h.epoch) AS n FROM "
    f"{_recent_epochs('e.agent_id IN ({agents})')} WHERE {LIVE_COPY}) x WHERE n <= ? ORDER BY agent_id, n"
)
# An adjust booking out goods received by mistake (reason protocol.BOOK_OUT_REASON) that names no transfer (no ref,
# or its own source): the WHERE of the index events_book_out_unnamed (schema 26) word for word. The agent, the
# handheld and POST /v1/events refuse one; one queued before (an older agent, a POS export) is booked and books
# nothing out, so it is listed while its store lists an unmatched receipt of its SKU (``UNMATCHED_HERE``): its few
# rows are walked in the list's order and each looks up its store's transfers of that SKU by the primary key's dest.
BOOK_OUT_UNNAMED = (
    f"e.kind = 'adjust' AND e.qty < 0 AND e.reason = '{BOOK_OUT_REASON}' AND (e.ref IS NULL OR e.ref = e.source)"
)
_UNMATCHED_AT = (
    "FROM transfers t WHERE t.dest = e.location AND t.sku = e.sku AND t.shipped = 0"
    " AND t.received > t.returned + t.booked_out AND t.received > t.returned"
)
UNMATCHED_HERE = f"EXISTS (SELECT 1 {_UNMATCHED_AT})"
BOOK_OUT_UNNAMED_FIELDS = (
    "e.agent_id, e.event_id, e.location, e.sku, e.qty, e.received_at_ms, "
    f"(SELECT MIN(t.ref) {_UNMATCHED_AT}), (SELECT COUNT(*) {_UNMATCHED_AT})"
)
# Which of the transfer source's rows ``Transfer.finding`` words as each kind, in its order: a shared ref first,
# then closed short (written off), unmatched (nothing shipped), over, short. "transfer_misdirected" is found no more
# (schema 20: a receipt belongs to the transfer to its own location) and lists nothing; a 1.8 client may ask for it.
_AIMED = f"NOT {SHARED}"
TRANSFER_KIND_TERMS = {
    "transfer_shared_ref": SHARED,
    "transfer_misdirected": "1 = 0",
    "transfer_short": f"{_AIMED} AND ((closed_at IS NOT NULL AND shipped > received + returned)"
    " OR (received + returned > 0 AND received + returned < shipped))",
    "transfer_unmatched": f"{_AIMED} AND shipped = 0 AND received > returned + booked_out AND received > returned",
    "transfer_over": f"{_AIMED} AND shipped <> 0 AND received + returned > shipped",
}


async def exceptions(
    db: Db, only: ExceptionFilter, limit: int, transfer_open_max_ms: int | None, after: ExceptionKey | None,
    now_ms: int, copies_window_ms: int | None = None, negative_from: str = "stock",
) -> list[ExceptionRow]:  # fmt: skip
    """The first ``limit`` exceptions of ``only`` after ``after`` (see ``HubStore.exceptions``); with
    ``copies_window_ms``, two copies of one agent syncing within it (``AGENT_COPIES``). ``negative_from``: the FROM
    of the negative-stock source, the stock rows below zero and maybe others (``SqlHubStore.NEGATIVE_STOCK``)."""
    location, kind = only.location, only.kind

    def wanted(source: ExceptionSource) -> bool:
        return kind is None or kind in source.kinds

    def statement(source: ExceptionSource, fields: str, table: str, where: Where) -> list[Statement]:
        """The source's rows of the filter after ``after`` in the list's order, at most ``limit``: its statement
        (none when the filter's kind is not the source's)."""
        if not wanted(source):
            return []
        where.add(f"{source.at} >= ?", only.since_ms).page(source.after(after) if after is not None else None)
        return [(f"SELECT {fields} FROM {table}{where.sql} ORDER BY {source.order} LIMIT ?", (*where.params, limit))]

    async def read(source: ExceptionSource, fields: str, table: str, where: Where) -> list[Row]:
        parts = statement(source, fields, table, where)
        return await db.fetch(*parts[0]) if parts else []

    out: list[ExceptionRow] = []
    # On PostgreSQL the stock rows below zero are a table of their own (schema 16), walked in the list's order, and
    # on_hand is looked up by the key: no index of stock names on_hand. On SQLite a partial index walks them.
    negative = Where("on_hand < 0").add("location = ?", location)
    for loc, sku, on_hand, at_ms in await read(keys.NEGATIVE, "location, sku, on_hand, updated_at_ms", negative_from,
                                               negative):  # fmt: skip
        finding = negative_on_hand_finding(loc, sku, on_hand)
        if finding is not None:
            row = ExceptionRow(finding.kind, loc, sku, finding.detail, finding.data | {"available": 0}, at_ms)
            out.append(findings.sourced(row, keys.NEGATIVE.name, loc, sku))

    def shipped() -> Where:
        return Where(TRANSFER_FINDING, *([TRANSFER_KIND_TERMS[kind]] if kind in TRANSFER_KIND_TERMS else []))

    def located_reads(source: ExceptionSource, where: Callable[[], Where]) -> list[Statement]:
        """``statement`` of transfers, one per term of ``LOCATED_TRANSFER`` when a location is given."""
        if location is None:
            return statement(source, TRANSFER_ROW_FIELDS, "transfers", where())
        return [s for term in LOCATED_TRANSFER
                for s in statement(source, TRANSFER_ROW_FIELDS, "transfers", where().add(term, location))]  # fmt: skip

    def once(parts: list[list[Row]]) -> list[Row]:
        """The rows of a located source's reads, a transfer met by two of them kept once; the page of the list is
        among them (``keys.exceptions_page`` takes it)."""
        rows: dict[tuple[str, str, str], Row] = {}
        for part in parts:
            for r in part:
                rows.setdefault((r[0], r[1], r[2]), r)
        return list(rows.values())

    async def read_nowhere() -> list[Row]:
        """The unknown-destination source's rows: its destinations', one walk each (or one of them all)."""
        if not wanted(keys.TRANSFER_NOWHERE):
            return []
        unknown = [loc for (loc,) in await db.fetch(UNKNOWN_DESTINATIONS)]

        def nowhere(*terms: str) -> Where:
            return Where(IN_TRANSIT, *terms).add("COALESCE(out_from, in_from) = ?", location)

        if len(unknown) > UNKNOWN_WALKS_MAX:
            where = nowhere(f"dest IN ({UNKNOWN_DESTINATIONS})")
            return await read(keys.TRANSFER_NOWHERE, TRANSFER_ROW_FIELDS, "transfers", where)
        walks = [s for loc in sorted(unknown) for s in statement(
            keys.TRANSFER_NOWHERE, TRANSFER_ROW_FIELDS, "transfers", nowhere().add("dest = ?", loc)
        )]  # fmt: skip
        rows = [r for walked in await fetch_parts(db, walks) for r in walked]
        # the walks' first ``limit`` in the list's order: no later one is on the page, so none is worded
        return sorted(rows, key=lambda r: (-r[TRANSFER_AT], r[0], r[1], r[2]))[:limit] if len(walks) > 1 else rows

    # The transfers with a finding and the overdue ones: rows of one shape, read in one statement.
    with_finding = located_reads(keys.TRANSFER, shipped)
    overdue: list[Statement] = []
    if transfer_open_max_ms is not None:
        cutoff = now_ms - transfer_open_max_ms

        def open_() -> Where:
            return Where(OPEN_TRANSFER).add("shipped_at_ms < ?", cutoff)

        overdue = located_reads(keys.TRANSFER_OVERDUE, open_)
    transferred = await fetch_parts(db, [*with_finding, *overdue])

    for r in once(transferred[: len(with_finding)]):
        if (t := held.transfer_row(r).finding()) is not None:
            row = ExceptionRow(t.kind, t.location, t.sku, t.detail, t.data, r[TRANSFER_AT])
            out.append(findings.sourced(row, keys.TRANSFER.name, r[0], r[1], r[2]))
    if transfer_open_max_ms is not None:
        for r in once(transferred[len(with_finding) :]):
            if (t := held.transfer_row(r).overdue_finding(now_ms, transfer_open_max_ms)) is not None:
                row = ExceptionRow(t.kind, t.location, t.sku, t.detail, t.data, r[TRANSFER_AT])
                out.append(findings.sourced(row, keys.TRANSFER_OVERDUE.name, r[0], r[1], r[2]))
    for r in await read_nowhere():
        f = held.transfer_row(r).unknown_destination_finding()
        row = ExceptionRow(f.kind, f.location, f.sku, f.detail, f.data, r[TRANSFER_AT])
        out.append(findings.sourced(row, keys.TRANSFER_NOWHERE.name, r[0], r[1], r[2]))
    pending = Where("status = 'pending'").add("location = ?", location)
    for r in await read(keys.CLOCK_QUARANTINE, held.QUARANTINE_FIELDS, "quarantine", pending):
        row = held.quarantine_exception(held.quarantine_row(r))
        out.append(findings.sourced(row, keys.CLOCK_QUARANTINE.name, r[0]))
    refused = Where("code <> 'discarded'").add("location = ?", location)
    for r in await read(keys.REJECTED, REJECTION_FIELDS, "rejections", refused):
        out.append(findings.sourced(rejection_exception(r[:11]), keys.REJECTED.name, r[1], r[0], r[11]))
    unknown = Where(
        UNKNOWN_RANGE,
        UNKNOWN_KEY,
        "(s.on_hand <> 0 OR NOT EXISTS (SELECT 1 FROM catalog c WHERE c.unknown_sku = s.sku))",
    )
    unknown_fields = "s.location, s.sku, s.on_hand, s.updated_at_ms"
    for r in await read(keys.UNKNOWN_BARCODE, unknown_fields, "stock s", unknown.add("s.location = ?", location)):
        out.append(findings.unknown_barcode(*r))  # still holding stock, or its barcode is not in the catalog yet
    issue_fields = "agent_id, issue_id, location, file, line, reason, raw, received_at_ms"
    issues = Where().add("location = ?", location)
    for r in await read(keys.IMPORT_QUARANTINE, issue_fields, "import_issues", issues):
        out.append(findings.import_quarantine(*r))
    for source, fields, table, make, located in findings.CHANNEL_SOURCES:  # a sales channel's findings (schema 6)
        if location is None or located:
            out += [make(*r) for r in await read(source, fields, table, Where().add("location = ?", location))]
    # A channel's refused levels and its refused orders (schema 14), rows of one shape: one statement. A refused
    # order is listed while it is kept (``findings.ORDER_REFUSALS_KEPT_MS``; it is dropped later, at the channel's
    # next refusal) and not dismissed (schema 15). Its table holds a couple of days of refused orders and no index
    # of their time: the few are sorted for the page.
    def refusals_where(source: ExceptionSource) -> Where:
        if source is not keys.CHANNEL_ORDER_REFUSED:
            return Where().add("location = ?", location)
        listed = Where(findings.ORDER_REFUSED_LISTED).add("location = ?", location)
        return listed.add("refused_at_ms >= ?", now_ms - findings.ORDER_REFUSALS_KEPT_MS)

    refusals = [
        (make, s)
        for source, fields, table, make, located in findings.CHANNEL_REFUSALS
        if location is None or located
        for s in statement(source, fields, table, refusals_where(source))
    ]  # fmt: skip
    for (make, _), part in zip(refusals, await fetch_parts(db, [s for _, s in refusals]), strict=True):
        out += [make(*r) for r in part]
    if copies_window_ms is not None and wanted(keys.AGENT_COPIES):
        out += await agent_copies(db, only, limit, after, now_ms - copies_window_ms)
    # A store agent's disk full or its reserve in use (schema 21): the credentials' few hundred rows, read whole.
    disk_full = Where(AGENT_DISK_FULL).add(AGENT_LOCATED, None if location is None else json.dumps(location))
    for r in await read(keys.AGENT_DISK, findings.AGENT_DISK_FIELDS, "agents g", disk_full):
        out.append(findings.agent_disk(*r))
    lost = Where(LOST).add(AGENT_LOCATED, None if location is None else json.dumps(location))
    for r in await read(keys.AGENT_LOST, findings.AGENT_LOST_FIELDS, "agent_lost l JOIN agents g ON g.agent_id = l.agent_id",
                        lost):  # fmt: skip
        out.append(findings.agent_lost(*r))
    unnamed = Where(BOOK_OUT_UNNAMED, UNMATCHED_HERE).add("e.location = ?", location)
    for r in await read(keys.BOOK_OUT_UNNAMED, BOOK_OUT_UNNAMED_FIELDS, "events e", unnamed):
        out.append(findings.book_out_without_ref(*r))
    if wanted(keys.DIVERGENCE):
        page = keys.DIVERGENCE.after(after) if after is not None else None
        diverging = await reports.divergence(
            db, location, None, limit, page, keys.DIVERGENCE.order, received_since=only.since_ms
        )
        out += [findings.divergence(d) for d in diverging]
    return await linked(db, keys.exceptions_page(out, limit))


# The transfers of one ref and SKU to other destinations that may be a page's unmatched receipt's or overdue
# transfer's other half (``resolver.linked_finding``): for a receipt the shipments not received in full, for a
# shipment the unmatched receipts. Read by the key (ref, sku) of the index transfers_by_ref (schema 25) in the order
# of the destinations.
LINKED_WHERE = "ref = ? AND sku = ? AND dest <> ?"
LINKED = f"SELECT {TRANSFER_ROW_FIELDS} FROM transfers WHERE {LINKED_WHERE} AND "
LINKED_TERMS = {
    "transfer_unmatched": "shipped > received + returned",
    "transfer_overdue": "shipped = 0 AND received > returned + booked_out AND received > returned",
}


def linked_statement(kind: str, ref: str, sku: str, dest: str) -> Statement:
    return f"{LINKED}{LINKED_TERMS[kind]} ORDER BY dest LIMIT ?", (ref, sku, dest, LINKED_MAX)


async def linked(db: Db, page: list[ExceptionRow]) -> list[ExceptionRow]:
    """``page`` with each unmatched receipt and overdue transfer on it naming the transfers of its ref and SKU to
    other destinations that may be its other half (``resolver.linked_finding``): a statement each (``LINKED``),
    all in one (``fetch_parts``), read for the page's few only."""
    rows = [e for e in page if e.kind in LINKED_TERMS and e.location is not None and e.sku is not None]
    if not rows:
        return page
    parts = await fetch_parts(
        db, [linked_statement(e.kind, e.data["ref"], e.sku or "", e.location or "") for e in rows]
    )
    found = {id(e): [held.transfer_row(r) for r in part] for e, part in zip(rows, parts, strict=True)}
    out = []
    for e in page:
        if not found.get(id(e)) or e.location is None or e.sku is None:
            out.append(e)
            continue
        ref, shipped, received, booked_out = (e.data.get(k, 0) for k in ("ref", "shipped", "received", "booked_out"))
        own = Transfer(e.location, ref, e.sku, shipped, received, booked_out=booked_out)
        f = linked_finding(Finding(e.kind, e.location, e.sku, e.detail, e.data), own, found[id(e)])
        out.append(dataclasses.replace(e, detail=f.detail, data=f.data))
    return out


async def fetch_parts(db: Db, statements: list[Statement]) -> list[list[Row]]:
    """The rows of each of ``statements``, whose rows have one shape, in one statement where there are two or
    more: their UNION ALL, each a subquery (planned alone: its index walk, stopped at its LIMIT) whose rows are
    tagged with its place. One round trip, not one each."""
    if len(statements) < 2:
        return [await db.fetch(sql, params) for sql, params in statements]
    sql = " UNION ALL ".join(f"SELECT {n} AS part, p{n}.* FROM ({s}) p{n}" for n, (s, _) in enumerate(statements))
    rows: list[list[Row]] = [[] for _ in statements]
    for n, *row in await db.fetch(sql, [p for _, params in statements for p in params]):
        rows[n].append(tuple(row))
    return rows


async def agent_copies(
    db: Db, only: ExceptionFilter, limit: int, after: ExceptionKey | None, since_ms: int
) -> list[ExceptionRow]:
    """The agents with two copies or more syncing since ``since_ms`` (``AGENT_COPIES``), in the list's order."""
    source = keys.AGENT_COPIES
    located = None if only.location is None else json.dumps(only.location)
    where = Where().add(AGENT_LOCATED, located).add(f"{source.at} >= ?", only.since_ms)
    where.page(source.after(after) if after is not None else None)
    rows = await db.fetch(
        f"SELECT c.agent_id, c.at_ms, c.copies, g.locations FROM {AGENT_COPIES}{where.sql} ORDER BY {source.order} LIMIT ?",
        (since_ms, since_ms, *where.params, limit),
    )
    if not rows:
        return []
    named: dict[str, list[tuple[int, int, int, int, str | None]]] = {}
    agents = [r[0] for r in rows]
    sql = COPIES_NAMED.format(agents=", ".join("?" * len(agents)))
    for agent_id, *copy in await db.fetch(sql, (*agents, since_ms, since_ms, COPIES_NAMED_MAX)):
        named.setdefault(agent_id, []).append(tuple(copy))
    return [findings.agent_copies(agent_id, at_ms, count, locations, named.get(agent_id, []))
            for agent_id, at_ms, count, locations in rows]  # fmt: skip
