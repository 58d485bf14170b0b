"""What the stores report to the hub (observations, quarantined import rows) and the divergence read,
in SQL both backends run.

Checks and wording are ``hub.storage.checks``'. Two PostgreSQL hubs storing
the same new report at once collide on its primary key; the store retries the
transaction, which then finds it stored (a resend).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hub.resolver import diverges
from hub.storage import checks, keys
from hub.storage.base import AgentIdentity, DivergenceRow, ImportIssue, Observation, ReportResult
from hub.storage.db import Db, Where, in_lists, marks
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
    return result


async def on_hand_as_of(db: Db, location: str, sku: str, at_ms: int) -> int:
    """The hub's on_hand of (location, sku) counting the events of wall time <= ``at_ms``:
    the last such count plus the deltas after it (``hub.resolver.on_hand_as_of``)."""
    before = pack_hlc(at_ms + 1, 0)
    stock = await db.fetchone("SELECT on_hand, max_at FROM stock WHERE location = ? AND sku = ?", (location, sku))
    if stock is None:
        return 0
    if stock[1] is None or stock[1] < before:  # nothing ordered after it: today's on_hand is that day's
        return int(stock[0])
    key = "location = ? AND sku = ? AND occurred_at < ?"
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


async def divergence(
    db: Db, location: str | None, system: str | None, limit: int,
    page: tuple[str, tuple[Any, ...]] | None = None, order: str = keys.DIVERGENCE_ORDER,
) -> list[DivergenceRow]:  # fmt: skip
    """Up to ``limit`` diverging latest observations in ``order``, those after the paging term ``page``."""
    inner = Where().add("location = ?", location).add("system = ?", system)
    outer = Where("newest = 1").page(page)
    latest = await db.fetch(
        "SELECT system, location, sku, on_hand, observed_at_ms, agent_id, obs_id, source_file, received_at_ms "
        "FROM (SELECT o.*, ROW_NUMBER() OVER (PARTITION BY system, location, sku "
        "ORDER BY observed_at_ms DESC, received_at_ms DESC, agent_id DESC, obs_id DESC) AS newest "
        f"FROM observations o{inner.sql}) AS latest{outer.sql} ORDER BY {order}",
        (*inner.params, *outer.params),
    )
    out: list[DivergenceRow] = []
    for system_, loc, sku, observed, at_ms, agent_id, obs_id, source_file, received_ms in latest:
        hub = await on_hand_as_of(db, loc, sku, at_ms)
        if diverges(observed, hub):
            out.append(
                DivergenceRow(
                    system_, loc, sku, observed, hub, observed - hub, at_ms, agent_id, obs_id, source_file, received_ms
                )
            )
            if len(out) >= limit:
                break
    return out
