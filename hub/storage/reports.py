"""What the stores report to the hub (observations, quarantined import rows) and the divergence read,
in SQL both backends run.

Checks and wording are ``hub.storage.checks``'. Two PostgreSQL hubs storing
the same new report at once collide on its primary key; the store retries the
transaction, which then finds it stored (a resend).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hub.resolver import diverges
from hub.storage import checks, keys
from hub.storage.base import (
    AgentIdentity,
    DivergenceRow,
    ImportIssue,
    Observation,
    ReportResult,
    VarianceReport,
)
from hub.storage.db import Db, Row, Where, in_lists, marks
from hub.storage.sql import DELTA_KINDS, NEWEST_FIRST
from protocol import pack_hlc

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ReportTable(Generic[T]):
    """One kind of report: how it is checked, and where it is kept (keyed by (agent_id, its id), with
    ``content`` in ``fields``)."""

    table: str
    id_field: str
    fields: str
    noun: str  # "observation": for messages ("observation obs-1 was already received …")
    plural: str  # "observations": for the refusal of a sender who may not report
    ident: Callable[[T], str]
    content: Callable[[T], tuple[Any, ...]]  # what a resend must repeat, in ``fields`` order
    check: Callable[[Sequence[T]], None]  # raises ``InvalidInput`` for the first bad item


OBSERVATIONS: ReportTable[Observation] = ReportTable(
    "observations", "obs_id", "location, sku, system, on_hand, observed_at_ms, source_file", "observation",
    "observations", lambda o: o.obs_id, checks.observation_content, checks.observations,
)  # fmt: skip
IMPORT_ISSUES: ReportTable[ImportIssue] = ReportTable(
    "import_issues", "issue_id", "location, file, line, reason, raw", "import issue", "import issues",
    lambda x: x.issue_id, checks.issue_content, checks.import_issues,
)  # fmt: skip


async def add_reports(
    db: Db, kind: ReportTable[T], who: AgentIdentity, items: Sequence[T], now_ms: int
) -> ReportResult:
    """Store those of ``items`` not stored yet under their id; resends and refusals as ``checks.triage`` says."""
    stored: dict[str, tuple[Any, ...]] = {}
    for part in in_lists(list({kind.ident(x) for x in items})):
        rows = await db.fetch(
            f"SELECT {kind.id_field}, {kind.fields} FROM {kind.table} "
            f"WHERE agent_id = ? AND {kind.id_field} IN ({marks(len(part))})",
            (who.agent_id, *part),
        )
        stored.update((r[0], tuple(r[1:])) for r in rows)
    fresh, result = checks.triage(who, items, kind.ident, kind.content, stored, kind.noun)
    width = len(kind.fields.split(", ")) + 3
    await db.executemany(
        f"INSERT INTO {kind.table} (agent_id, {kind.id_field}, {kind.fields}, received_at_ms) VALUES ({marks(width)})",
        [(who.agent_id, kind.ident(x), *kind.content(x), now_ms) for x in fresh],
    )
    if kind is OBSERVATIONS:
        await add_newest(db, [(who.agent_id, x) for x in fresh], now_ms)  # type: ignore[misc]
    return result


NEWEST_FIELDS = (
    "system, location, sku, on_hand, observed_at_ms, agent_id, obs_id, source_file, received_at_ms, hub_on_hand"
)
OBSERVED_FIELDS = "location, sku, system, on_hand, observed_at_ms, hub_on_hand, from_events"  # settle_observed's
# The newest observation of a key first: observations_newest keeps only that one.
NEWEST_ORDER = ("observed_at_ms", "received_at_ms", "agent_id", "obs_id")


def as_of_before(at_ms: int) -> int:
    """The packed HLC just after wall time ``at_ms``: events ordered before it count as of ``at_ms``."""
    return pack_hlc(at_ms + 1, 0)


async def on_hand_as_of(db: Db, location: str, sku: str, at_ms: int) -> int:
    """The hub's on_hand of (location, sku) counting the events of wall time <= ``at_ms``:
    the last such count plus the deltas after it (``hub.resolver.on_hand_as_of``)."""
    stock = await db.fetchone("SELECT on_hand, max_at FROM stock WHERE location = ? AND sku = ?", (location, sku))
    if stock is None:
        return 0
    if stock[1] is None or stock[1] < as_of_before(at_ms):  # nothing ordered after it: today's is that day's
        return int(stock[0])
    return await events_as_of(db, location, sku, at_ms)


async def events_as_of(db: Db, location: str, sku: str, at_ms: int) -> int:
    """The last count of (location, sku) ordered before ``as_of_before(at_ms)`` plus the deltas between."""
    key = "location = ? AND sku = ? AND occurred_at < ?"
    before = as_of_before(at_ms)
    count = await db.fetchone(
        f"SELECT occurred_at, agent_id, seq, event_id, qty FROM events WHERE {key} AND kind = 'count' "
        f"ORDER BY {NEWEST_FIRST} LIMIT 1",
        (location, sku, before),
    )
    sql = f"SELECT COALESCE(SUM(qty), 0) FROM events WHERE {key} AND kind IN {DELTA_KINDS}"
    params: tuple[Any, ...] = (location, sku, before)
    if count is not None:
        sql += " AND (occurred_at, agent_id, seq, event_id) > (?, ?, ?, ?)"
        params += count[:4]
    deltas = await db.fetchone(sql, params)
    return (count[4] if count is not None else 0) + int(deltas[0] if deltas else 0)


# --- the newest observation of each (system, location, sku), with the hub's on_hand as of it ----------------------
#
# observations_newest (schema 10) keeps, per key, the newest observation and the hub's on_hand as of its time
# (``hub_on_hand``), whether that figure came from the events (``from_events``: stock moved after the
# observation) and whether they diverge; the divergence reads walk the diverging rows in their order and stop
# at a page, however many observations agree. An observation's figure changes only when the key's stock row
# does while nothing is ordered after the observation (then it is today's on_hand), or when an event ordered
# before it is stored (a late one): ``settle_observed`` is told both by ingest.


async def _by_location(db: Db, select: str, wanted: Iterable[tuple[str, str]]) -> list[Row]:
    """The rows of ``select`` (a table keyed by location and sku) of the keys ``wanted``: one statement per
    location (a batch, an export, is mostly one store's) and up to ``in_lists``' SKUs."""
    skus_at: dict[str, list[str]] = defaultdict(list)
    for location, sku in sorted(wanted):
        skus_at[location].append(sku)
    found: list[Row] = []
    for location, skus in skus_at.items():
        for part in in_lists(skus):
            found += await db.fetch(f"{select} WHERE location = ? AND sku IN ({marks(len(part))})", (location, *part))
    return found


async def add_newest(db: Db, fresh: Sequence[tuple[str, Observation]], now_ms: int) -> None:
    """Make each of ``fresh`` (agent_id, observation; just stored) its key's newest when it is newer than the one
    kept, with the hub's on_hand as of it."""
    best: dict[tuple[str, str, str], tuple[Any, ...]] = {}
    for agent_id, o in fresh:
        rank = (o.observed_at_ms, now_ms, agent_id, o.obs_id)
        key = (o.system, o.location, o.sku)
        if key not in best or rank > best[key][0]:
            best[key] = (rank, agent_id, o)
    kept = await _by_location(
        db, f"SELECT location, sku, system, {', '.join(NEWEST_ORDER)} FROM observations_newest",
        {(location, sku) for _, location, sku in best},
    )
    ranks = {(r[2], r[0], r[1]): tuple(r[3:]) for r in kept}
    newer = {k: v for k, v in best.items() if k not in ranks or ranks[k] < v[0]}  # else one received late
    stock = {
        (r[0], r[1]): (int(r[2]), r[3])
        for r in await _by_location(
            db, "SELECT location, sku, on_hand, max_at FROM stock", {(loc, sku) for _, loc, sku in newer}
        )
    }
    rows = []
    for (system, location, sku), (rank, agent_id, o) in sorted(newer.items()):
        on_hand, max_at = stock.get((location, sku), (0, None))
        if max_at is None or max_at < as_of_before(o.observed_at_ms):
            hub, from_events = on_hand, 0
        else:
            hub, from_events = await events_as_of(db, location, sku, o.observed_at_ms), 1
        rows.append((system, location, sku, o.on_hand, o.observed_at_ms, agent_id, o.obs_id, o.source_file, now_ms,
                     hub, from_events, int(diverges(o.on_hand, hub))))  # fmt: skip
    await db.executemany(
        f"INSERT INTO observations_newest ({NEWEST_FIELDS}, from_events, diverging) VALUES ({marks(12)}) "
        "ON CONFLICT (location, sku, system) DO UPDATE SET on_hand = excluded.on_hand, "
        "observed_at_ms = excluded.observed_at_ms, agent_id = excluded.agent_id, obs_id = excluded.obs_id, "
        "source_file = excluded.source_file, received_at_ms = excluded.received_at_ms, "
        "hub_on_hand = excluded.hub_on_hand, from_events = excluded.from_events, diverging = excluded.diverging",
        rows,
    )


async def settle_observed(
    db: Db, stock: Mapping[tuple[str, str], tuple[int, int | None]], earliest: Mapping[tuple[str, str], int],
    found: tuple[Collection[tuple[str, str]], Sequence[Row]] | None = None, bundles: bool = True,
) -> None:  # fmt: skip
    """After ingest moved the stock rows ``stock`` ((location, sku) -> (on_hand, max_at) as written now) and
    stored events of the keys of ``earliest`` (-> the first of them in the order): the figures of the newest
    observations of those keys that changed. One read for the keys; events are read only for an observation a
    late event precedes, or the first time stock moves after it where ``bundles`` may be among the keys (a
    bundle's on_hand is its parts', not its own events'; any other key's is its last count plus the deltas after
    it, the events' sum the figure kept already). ``found``: keys whose rows (``OBSERVED_FIELDS``) were read
    already, and those rows."""
    wanted = set(stock) | set(earliest)
    known, rows = found if found is not None else ((), [])
    rows = [r for r in rows if (r[0], r[1]) in wanted]
    if missing := wanted.difference(known):
        rows += await _by_location(db, f"SELECT {OBSERVED_FIELDS} FROM observations_newest", missing)
    updates = []
    for location, sku, system, observed, at_ms, hub, from_events in rows:
        key = (location, sku)
        before = as_of_before(at_ms)
        now = stock.get(key)
        if now is None:  # not moved here: only events of the key were stored
            row = await db.fetchone("SELECT on_hand, max_at FROM stock WHERE location = ? AND sku = ?", key)
            now = (0, None) if row is None else (int(row[0]), row[1])
        if now[1] is None or now[1] < before:  # nothing ordered after the observation: today's on_hand
            new, new_from_events = now[0], 0
        elif (bundles and not from_events) or earliest.get(key, before) < before:  # a bundle moved, a late event
            new, new_from_events = await events_as_of(db, location, sku, at_ms), 1
        else:
            continue  # only events after the observation: its figure stands
        if (new, new_from_events) != (hub, from_events):
            updates.append((new, new_from_events, int(diverges(observed, new)), location, sku, system))
    await db.executemany(
        "UPDATE observations_newest SET hub_on_hand = ?, from_events = ?, diverging = ? "
        "WHERE location = ? AND sku = ? AND system = ?",
        updates,
    )


async def divergence(
    db: Db, location: str | None, system: str | None, limit: int,
    page: tuple[str, tuple[Any, ...]] | None = None, order: str = keys.DIVERGENCE_ORDER,
    received_since: int | None = None,
) -> list[DivergenceRow]:  # fmt: skip
    """Up to ``limit`` diverging latest observations in ``order``, those after the paging term ``page`` (and
    received at or after ``received_since``): a walk of the diverging rows of observations_newest in that order
    (an index each), stopped at ``limit``."""
    where = Where("diverging = 1").add("location = ?", location).add("system = ?", system)
    where.add("received_at_ms >= ?", received_since).page(page)
    rows = await db.fetch(
        f"SELECT {NEWEST_FIELDS} FROM observations_newest{where.sql} ORDER BY {order} LIMIT ?", (*where.params, limit)
    )
    return [
        DivergenceRow(system_, loc, sku, observed, hub, observed - hub, at_ms, agent_id, obs_id, source_file, received)
        for system_, loc, sku, observed, at_ms, agent_id, obs_id, source_file, received, hub in rows
    ]


# --- the shrinkage report by SKU, kept for its later pages (schema 30) ---------------------------------------------
#
# The first page of a report with more than one page reads the period's counts, ranks every row and keeps them
# here, in the report's order, ``VARIANCE_PART_ROWS`` to a part (JSON text); its cursor names the report and a
# row, and a later page reads only the parts it shows, on whichever hub it reaches. A report is kept
# ``VARIANCE_KEEP_MS``, and at most ``VARIANCE_KEEP_MAX`` of them: the older ones are removed as a new one is kept.

VARIANCE_PART_ROWS = 1000
VARIANCE_KEEP_MS = 10 * 60_000
VARIANCE_KEEP_MAX = 20
VARIANCE_REPORT_FIELDS = "report_id, made_ms, from_ms, to_ms, location, sku, row_count, counts, shrinkage, overage"


async def keep_variance_report(db: Db, report: VarianceReport, parts: Sequence[str]) -> None:
    """Keep ``report`` and its rows (``parts``: JSON text of ``VARIANCE_PART_ROWS`` rows each, in order), removing
    the reports kept longer than ``VARIANCE_KEEP_MS`` before it and those beyond the newest ``VARIANCE_KEEP_MAX``."""
    kept = await db.fetch("SELECT report_id, made_ms FROM variance_reports ORDER BY made_ms DESC, report_id")
    gone = [
        report_id
        for n, (report_id, made_ms) in enumerate(kept)
        if n >= VARIANCE_KEEP_MAX - 1 or made_ms <= report.made_ms - VARIANCE_KEEP_MS
    ]
    for part in in_lists(gone):
        await db.execute(f"DELETE FROM variance_report_parts WHERE report_id IN ({marks(len(part))})", part)
        await db.execute(f"DELETE FROM variance_reports WHERE report_id IN ({marks(len(part))})", part)
    await db.execute(
        f"INSERT INTO variance_reports ({VARIANCE_REPORT_FIELDS}) VALUES ({marks(10)})",
        (report.report_id, report.made_ms, report.from_ms, report.to_ms, report.location, report.sku,
         report.row_count, report.counts, report.shrinkage, report.overage),
    )  # fmt: skip
    await db.executemany(
        "INSERT INTO variance_report_parts (report_id, part, rows) VALUES (?, ?, ?)",
        [(report.report_id, n, rows) for n, rows in enumerate(parts)],
    )


async def kept_variance_report(
    db: Db, report_id: str, first_part: int, last_part: int, now_ms: int
) -> tuple[VarianceReport, list[str]] | None:
    """A kept report (None when there is none of that id, or it was kept longer than ``VARIANCE_KEEP_MS`` ago) and
    its parts ``first_part`` to ``last_part`` (JSON text, in order; those past its end are not there)."""
    row = await db.fetchone(
        f"SELECT {VARIANCE_REPORT_FIELDS} FROM variance_reports WHERE report_id = ? AND made_ms > ?",
        (report_id, now_ms - VARIANCE_KEEP_MS),
    )
    if row is None:
        return None
    parts = await db.fetch(
        "SELECT rows FROM variance_report_parts WHERE report_id = ? AND part >= ? AND part <= ? ORDER BY part",
        (report_id, first_part, last_part),
    )
    return VarianceReport(*row), [str(p[0]) for p in parts]
