"""What agents report besides stock movements, over HTTP.

* ``POST /v1/observations``: other systems' on-hand figures (a POS or web shop
  export), msgpack (``protocol.reports``); kept per (agent_id, id).
* ``POST /v1/import-issues``: rows of POS exports the agent quarantined.
* ``GET /v1/divergence``: for the newest observation of each (system,
  location, sku), the hub's on_hand as of the observation's time next to the
  observed figure, where they differ by at least min(2, 5 % of the hub's).
* ``GET /v1/reports/variance``: the shrinkage report — what cycle counts
  found missing or over, by location and SKU, over a period.

Both posts answer msgpack ``{"v": 1, "accepted": [ids], "rejected": [{"id",
"reason"}]}``: an observation of another location than the agent's, or a
known id resent with other content, is rejected; a resend is accepted again.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import re
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web

from hub import csvexport, heads, paging, views
from hub.auth import STORE_KEY, CredentialOfAnotherAgent, identity_of, role_refused
from hub.decoding import read_body
from hub.storage import keys
from hub.storage.base import (
    INGEST_ROLES,
    AgentIdentity,
    DivergenceRow,
    Effect,
    ImportIssue,
    LedgerRow,
    Observation,
    ReportResult,
    VarianceReport,
    VarianceSkuRow,
)
from hub.storage.interfaces import LedgerStore, ReportStore
from hub.storage.keys import LedgerKey
from hub.storage.reports import VARIANCE_KEEP_MS, VARIANCE_PART_ROWS
from protocol import MSGPACK_CONTENT_TYPE, ProtocolError, event_id_hex, pack_hlc, values, wall_ms_now
from protocol.catalog import is_unknown_sku
from protocol.hlc import COUNTER_BITS, HLC_MAX
from protocol.reports import (
    SYSTEM_MAX_LEN,
    ReportAnswer,
    ReportRejection,
    decode_import_issues,
    decode_observations,
    encode_report_answer,
)
from protocol.routes import IMPORT_ISSUES_PATH, OBSERVATIONS_PATH

log = logging.getLogger(__name__)

T = TypeVar("T")

LIMIT_DEFAULT = 1000
LIMIT_MAX = 10_000
SYSTEM = values.TextField("system name", SYSTEM_MAX_LEN)
MSGPACK_CONTENT_TYPES = frozenset({MSGPACK_CONTENT_TYPE, "application/x-msgpack"})


def _report_head(request: web.Request, who: AgentIdentity, action: str, what: str) -> None:
    """What the two posts refuse before they read the body, asked of a head too (hub.heads)."""
    heads.refuse(role_refused(who, INGEST_ROLES, action))
    views.Query(request, set())
    if request.content_type not in MSGPACK_CONTENT_TYPES:
        raise web.HTTPUnsupportedMediaType(
            text=f"{what} must be msgpack sent with Content-Type: {MSGPACK_CONTENT_TYPE}, got {request.content_type}"
        )


def _observations_head(request: web.Request, who: AgentIdentity) -> None:
    _report_head(request, who, "send observations", "an observations body")


def _import_issues_head(request: web.Request, who: AgentIdentity) -> None:
    _report_head(request, who, "send import issues", "an import issues body")


async def _decode(request: web.Request, decode: Callable[[bytes], T]) -> T:
    try:
        return await read_body(request, decode)  # past 64 KiB in a worker thread
    except ProtocolError as err:
        raise web.HTTPBadRequest(text=str(err)) from err


def _check_sender(who: AgentIdentity, agent_id: str) -> None:
    if agent_id != who.agent_id:
        raise CredentialOfAnotherAgent(who.agent_id, agent_id)


def _answer(result: ReportResult) -> web.Response:
    answer = ReportAnswer(result.accepted, tuple(ReportRejection(i, reason) for i, reason in result.rejected))
    return web.Response(body=encode_report_answer(answer), content_type=MSGPACK_CONTENT_TYPE)


async def post_observations(request: web.Request) -> web.Response:
    """Keep other systems' on-hand figures an agent read from its exports."""
    who = identity_of(request)
    _observations_head(request, who)
    req = await _decode(request, decode_observations)
    _check_sender(who, req.agent_id)
    items = [
        Observation(o.id, o.location, o.sku, o.system, o.on_hand, o.observed_at_ms, o.source_file)
        for o in req.observations
    ]
    result = await request.app[STORE_KEY].add_observations(who, items)
    log.info(
        "agent %s sent %d observation(s): %d accepted, %d rejected",
        who.agent_id,
        len(items),
        len(result.accepted),
        len(result.rejected),
    )
    return _answer(result)


async def post_import_issues(request: web.Request) -> web.Response:
    """Keep the rows of POS exports an agent quarantined, for the exceptions list."""
    who = identity_of(request)
    _import_issues_head(request, who)
    req = await _decode(request, decode_import_issues)
    _check_sender(who, req.agent_id)
    items = [ImportIssue(x.id, x.location, x.file, x.line, x.reason, x.raw) for x in req.issues]
    result = await request.app[STORE_KEY].add_import_issues(who, items)
    log.info(
        "agent %s sent %d import issue(s): %d accepted, %d rejected",
        who.agent_id,
        len(items),
        len(result.accepted),
        len(result.rejected),
    )
    return _answer(result)


def divergence_json(r: DivergenceRow) -> dict[str, Any]:
    return {
        "system": r.system,
        "location": r.location,
        "sku": r.sku,
        "observed": r.observed,
        "hub_on_hand": r.hub_on_hand,
        "difference": r.difference,
        "observed_at_ms": r.observed_at_ms,
        "observed_at": views.iso_ms(r.observed_at_ms),
        "agent_id": r.agent_id,
        "id": r.obs_id,
        "source_file": r.source_file,
        "received_at_ms": r.received_at_ms,
        "received_at": views.iso_ms(r.received_at_ms),
    }


DIVERGENCE_HEADER = (
    "location", "sku", "name", "system", "observed", "hub_on_hand", "difference", "observed_at", "agent_id", "id",
    "source_file", "received_at",
)  # fmt: skip


def divergence_cells(r: DivergenceRow, names: dict[str, str]) -> tuple[object, ...]:
    return (
        r.location, r.sku, names.get(r.sku), r.system, r.observed, r.hub_on_hand, r.difference,
        views.iso_ms(r.observed_at_ms), r.agent_id, r.obs_id, r.source_file, views.iso_ms(r.received_at_ms),
    )  # fmt: skip


async def divergence_csv(request: web.Request) -> web.StreamResponse:
    """Every divergence row (of a location, a system) as CSV, every page (hub.csvexport)."""
    params = views.Query(request, {"location", "system", "limit", "cursor", "format"})
    location, system = params.location(), params.text(SYSTEM, "system")
    after = paging.parse(request, paging.divergence_key, "divergence")
    store: ReportStore = request.app[STORE_KEY]
    names = await csvexport.names_of(request)

    async def fetch(key: Any, n: int) -> list[DivergenceRow]:
        return await store.divergence(location=location, system=system, limit=n, after=key)

    pages = csvexport.walk(fetch, keys.divergence_key, after=after, limit=csvexport.limit_param(params))
    return await csvexport.stream(
        request,
        csvexport.filename("divergence", location, system),
        DIVERGENCE_HEADER,
        _cells(pages, lambda r: divergence_cells(r, names)),
    )


async def _cells(
    pages: AsyncIterator[list[T]], to_cells: Callable[[T], Sequence[object]]
) -> AsyncIterator[list[Sequence[object]]]:
    async for page in pages:
        yield [to_cells(r) for r in page]


async def get_divergence(request: web.Request) -> web.StreamResponse:
    """Where another system's latest on-hand figure disagrees with the hub's at that time, by (location, sku,
    system), a page at a time (``next``/``cursor``); every page as CSV when asked."""
    if csvexport.wants_csv(request):
        return await divergence_csv(request)
    params = views.Query(request, {"location", "system", "limit", "cursor"})
    system = params.text(SYSTEM, "system")
    after = paging.parse(request, paging.divergence_key, "divergence")
    limit = params.limit(LIMIT_DEFAULT, LIMIT_MAX)
    rows = await request.app[STORE_KEY].divergence(
        location=params.location(), system=system, limit=limit + 1, after=after
    )
    more = len(rows) > limit
    rows = rows[:limit]
    body = {
        "divergence": [divergence_json(r) for r in rows],
        "next": paging.divergence_cursor(keys.divergence_key(rows[-1])) if more else None,
    }
    return web.json_response(body, dumps=views.dumps)


# --- the shrinkage (variance) report ------------------------------------------------------------------------

VARIANCE_BY = ("sku", "location", "count")
VARIANCE_DAYS_DEFAULT = 30
VARIANCE_LIMIT_DEFAULT = 1000  # by=count in JSON: rows per page
VARIANCE_SKU_LIMIT_DEFAULT = 500  # by=sku in JSON: rows per page, the most shrinkage first
DAY_MS = 86_400_000
WALL_MS_MAX = HLC_MAX >> COUNTER_BITS
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
VARIANCE_SKU_HEADER = (
    "location", "sku", "name", "counts", "shrinkage", "overage", "net_variance", "first_count_time",
    "last_count_time",
)  # fmt: skip
VARIANCE_LOCATION_HEADER = ("location", "counts", "skus", "shrinkage", "overage", "net_variance")
VARIANCE_COUNT_HEADER = (
    "counted_at", "location", "sku", "name", "counted", "expected", "variance", "ref", "reason", "source",
    "agent_id", "event_id", "occurred_at",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Period:
    """A report's period in Unix ms: from ``from_ms`` (included) to ``to_ms`` (excluded)."""

    from_ms: int
    to_ms: int


class Tally:
    """What the counts of one (location, sku), or one location, found over a period (an accumulator)."""

    __slots__ = ("counts", "first_at", "last_at", "overage", "shrinkage", "skus")

    def __init__(self) -> None:
        self.counts = 0
        self.shrinkage = 0  # units the counts found missing (the sum of negative variances, as a positive number)
        self.overage = 0  # units the counts found beyond what was expected
        self.first_at = 0  # packed HLC of the oldest count
        self.last_at = 0
        self.skus: set[str] = set()

    def add(self, r: LedgerRow) -> None:
        variance = r.variance or 0
        self.counts += 1
        self.shrinkage += max(0, -variance)
        self.overage += max(0, variance)
        self.first_at = r.occurred_at if not self.first_at else min(self.first_at, r.occurred_at)
        self.last_at = max(self.last_at, r.occurred_at)
        self.skus.add(r.sku)

    @property
    def net(self) -> int:
        return self.overage - self.shrinkage


def _time_param(params: views.Query, key: str) -> int | None:
    raw = params.raw(key)
    if raw is None:
        return None
    got = values.shown(raw, values.QUOTE_MAX_CHARS)
    try:
        if DATE_RE.fullmatch(raw):
            at = datetime.combine(date.fromisoformat(raw), datetime.min.time(), tzinfo=UTC)
        else:
            at = datetime.fromisoformat(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text=f"{key} must be a date (2026-01-31, midnight UTC) or an ISO 8601 time with its zone "
            f"(2026-01-31T18:00:00Z), got {got}"
        ) from None
    if at.tzinfo is None:
        raise web.HTTPBadRequest(text=f"{key} {got} has no time zone; add Z (UTC) or an offset such as +01:00")
    ms = (at - EPOCH) // timedelta(milliseconds=1)
    if not 0 <= ms <= WALL_MS_MAX:
        raise web.HTTPBadRequest(text=f"{key} {got} is outside the times the hub can hold (1970 to the year 6000)")
    return ms


def variance_period(params: views.Query, now_ms: int) -> Period:
    """``from`` and ``to`` of a request (default: the last 30 days), or a 400 saying what is wrong."""
    to_ms = _time_param(params, "to")
    from_ms = _time_param(params, "from")
    to_ms = now_ms if to_ms is None else to_ms
    from_ms = to_ms - VARIANCE_DAYS_DEFAULT * DAY_MS if from_ms is None else from_ms
    if from_ms >= to_ms:
        raise web.HTTPBadRequest(text="from must be before to: the period runs from from (included) to to (excluded)")
    return Period(max(0, from_ms), to_ms)


def is_variance(r: LedgerRow) -> bool:
    """A count the report takes: counted, with a variance, of a known SKU (an unknown barcode's counts are
    left out until the catalog maps it; its re-booked counts then are in, under the real SKU)."""
    counted = r.kind == "count" and r.variance is not None and r.effect is not Effect.REJECTED
    return counted and not is_unknown_sku(r.sku)


async def counts_in(
    request: web.Request, period: Period, location: str | None, sku: str | None, after: LedgerKey | None
) -> AsyncGenerator[list[LedgerRow], None]:
    """The counts of ``period`` newest first, a part of the ledger at a time (parts may be empty), read as the
    ledger's CSV download reads it (``csvexport.ledger_pages``: 100 rows, then about 256 KiB of rows). It read
    1,000 rows at a time, attrs and all: with attrs at their limits each read held the event loop ~0.1 s."""
    store: LedgerStore = request.app[STORE_KEY]
    top, bottom = pack_hlc(period.to_ms, 0), pack_hlc(period.from_ms, 0)
    async with aclosing(csvexport.ledger_pages(store, location, sku, before=top, after=after)) as pages:
        async for rows in pages:
            yield [r for r in rows if bottom <= r.occurred_at < top and is_variance(r)]
            if rows[-1].occurred_at < bottom:
                return


def variance_count_json(r: LedgerRow, names: dict[str, str]) -> dict[str, Any]:
    variance = r.variance or 0
    return {
        "counted_at": views.hlc_time(r.occurred_at),
        "occurred_at": r.occurred_at,
        "location": r.location,
        "sku": r.sku,
        "name": names.get(r.sku),
        "counted": r.qty,
        "expected": r.qty - variance,
        "variance": variance,
        "ref": r.ref,
        "reason": r.reason,
        "source": r.source,
        "agent_id": r.agent_id,
        "event_id": event_id_hex(r.event_id),
    }


def variance_count_cells(r: LedgerRow, names: dict[str, str]) -> tuple[object, ...]:
    row = variance_count_json(r, names)
    return (*(row[k] for k in VARIANCE_COUNT_HEADER[:-1]), str(r.occurred_at))


def tally_json(by: str, key: tuple[str, str], t: Tally, names: dict[str, str]) -> dict[str, Any]:
    if by == "location":
        return {"location": key[0], "counts": t.counts, "skus": len(t.skus), "shrinkage": t.shrinkage,
                "overage": t.overage, "net_variance": t.net}  # fmt: skip
    return {
        "location": key[0], "sku": key[1], "name": names.get(key[1]), "counts": t.counts, "shrinkage": t.shrinkage,
        "overage": t.overage, "net_variance": t.net, "first_count_time": views.hlc_time(t.first_at),
        "last_count_time": views.hlc_time(t.last_at),
    }  # fmt: skip


async def get_variance(request: web.Request) -> web.StreamResponse:
    """The shrinkage report: what counts found missing or over in a period, by SKU, by location or each count."""
    params = views.Query(request, {"location", "sku", "from", "to", "by", "limit", "cursor", "format"})
    as_csv = csvexport.wants_csv(request)
    by = params.raw("by") or "sku"
    if by not in VARIANCE_BY:
        got = values.shown(by, values.QUOTE_MAX_CHARS)
        raise web.HTTPBadRequest(text=f"by must be sku, location or count, got {got}")
    if not as_csv:  # checked whatever by is: one range for one parameter
        params.limit(VARIANCE_SKU_LIMIT_DEFAULT if by == "sku" else VARIANCE_LIMIT_DEFAULT, LIMIT_MAX)
    location, sku = params.location(), params.sku()
    if by == "location" and params.raw("cursor") is not None:
        raise web.HTTPBadRequest(text="cursor pages only by=sku and by=count; the by=location report is one page")
    if by == "sku" and params.raw("cursor") is not None:
        if not as_csv:
            return await _kept_variance_page(request, params, location, sku)
        paging.parse(request, paging.variance_sku_key, "the variance report by SKU")  # the CSV is every row
    period = variance_period(params, wall_ms_now())
    after: LedgerKey | None = None
    if by == "count":
        after = paging.parse(request, paging.ledger_key, "the variance report by count (it pages the ledger)")
    names = await csvexport.names_of(request)
    scan = counts_in(request, period, location, sku, after)
    stem = csvexport.filename(f"variance-by-{by}", location, sku)
    if by == "count":
        if as_csv:
            rows = _cells(scan, lambda r: variance_count_cells(r, names))
            return await csvexport.stream(request, stem, VARIANCE_COUNT_HEADER, _capped(rows, params))
        return await _variance_count_page(request, params, period, scan, names, location, sku)
    made_ms = wall_ms_now()  # the ledger is read from here on
    tallies: dict[tuple[str, str], Tally] = {}
    async for page in scan:
        for r in page:
            tallies.setdefault((r.location, "" if by == "location" else r.sku), Tally()).add(r)
    if by == "location":
        if as_csv:
            cells = _tally_cells(by, VARIANCE_LOCATION_HEADER, sorted(tallies), tallies, names)
            return await csvexport.stream(request, stem, VARIANCE_LOCATION_HEADER, cells)
        summed = _totals(tallies)
        body = {
            **_variance_head(period, by, location, sku),
            "rows": [tally_json(by, k, tallies[k], names) for k in sorted(tallies)],
            "totals": {**summed, "net_variance": summed["overage"] - summed["shrinkage"]},
            "row_count": len(tallies),
            "next": None,
        }
        return web.json_response(body, dumps=views.dumps)
    limit = None if as_csv else params.limit(VARIANCE_SKU_LIMIT_DEFAULT, LIMIT_MAX)
    # Tens of thousands of rows (a stocktake: 50,000) are ranked, added up and cut into parts in a worker thread.
    ranked, parts, totals = await asyncio.to_thread(rank_by_shrinkage, tallies, limit)
    if as_csv:
        return await csvexport.stream(request, stem, VARIANCE_SKU_HEADER, _sku_cells(ranked, names))
    assert limit is not None
    nxt = None
    if parts:  # more than one page: kept, so that the later pages are of this report, wherever they are read
        report = VarianceReport(secrets.token_hex(16), made_ms, period.from_ms, period.to_ms, location, sku,
                                len(ranked), totals[0], totals[1], totals[2])  # fmt: skip
        await request.app[STORE_KEY].keep_variance_report(report, parts)
        nxt = paging.variance_sku_cursor(report.report_id, limit)
        log.info("kept the shrinkage report by SKU %s of %d rows for its next pages", report.report_id, len(ranked))
    return _variance_sku_answer(period, location, sku, ranked[:limit], names, len(ranked), totals, nxt)


def _totals(tallies: dict[tuple[str, str], Tally]) -> dict[str, int]:
    return {
        "counts": sum(t.counts for t in tallies.values()),
        "shrinkage": sum(t.shrinkage for t in tallies.values()),
        "overage": sum(t.overage for t in tallies.values()),
    }


def rank_by_shrinkage(
    tallies: dict[tuple[str, str], Tally], limit: int | None
) -> tuple[list[VarianceSkuRow], list[str], tuple[int, int, int]]:
    """The report by SKU's rows in its order (``row_order``), the totals (counts, shrinkage, overage) of every
    row, and — when they are more than ``limit`` — the rows as JSON parts of ``VARIANCE_PART_ROWS`` to keep. Run in a
    worker thread: a stocktake's 50,000 rows took the event loop 0.13 s to sort."""
    rows: list[VarianceSkuRow] = [
        (loc, sku, t.counts, t.shrinkage, t.overage, t.first_at, t.last_at) for (loc, sku), t in tallies.items()
    ]
    rows = sorted_in_steps(rows)
    totals = (sum(r[2] for r in rows), sum(r[3] for r in rows), sum(r[4] for r in rows))
    parts: list[str] = []
    if limit is not None and len(rows) > limit:
        parts = [
            json.dumps(rows[n : n + VARIANCE_PART_ROWS], ensure_ascii=False, separators=(",", ":"))
            for n in range(0, len(rows), VARIANCE_PART_ROWS)
        ]
    return rows, parts, totals


SORT_STEP_ROWS = 2000


def sorted_in_steps(rows: list[VarianceSkuRow]) -> list[VarianceSkuRow]:
    """``rows`` in ``row_order``: sorted ``SORT_STEP_ROWS`` at a time, then merged. A sort is one call that holds
    the interpreter (a worker thread's too) to its end: 50,000 rows at once held the event loop 0.1 to 0.3 s."""
    if len(rows) <= SORT_STEP_ROWS:
        return sorted(rows, key=row_order)
    steps = [sorted(rows[n : n + SORT_STEP_ROWS], key=row_order) for n in range(0, len(rows), SORT_STEP_ROWS)]
    return list(heapq.merge(*steps, key=row_order))


def row_order(r: VarianceSkuRow) -> tuple[int, int, str, str]:
    """Where a row is in the report by SKU: the most shrinkage first, then the lowest net variance (the least found
    over), then by location and SKU: one total order."""
    return (-r[3], r[4] - r[3], r[0], r[1])


def sku_row_json(r: VarianceSkuRow, names: dict[str, str]) -> dict[str, Any]:
    location, sku, counts, shrinkage, overage, first_at, last_at = r
    return {
        "location": location, "sku": sku, "name": names.get(sku), "counts": counts, "shrinkage": shrinkage,
        "overage": overage, "net_variance": overage - shrinkage, "first_count_time": views.hlc_time(first_at),
        "last_count_time": views.hlc_time(last_at),
    }  # fmt: skip


def _variance_sku_answer(
    period: Period, location: str | None, sku: str | None, rows: Sequence[VarianceSkuRow], names: dict[str, str],
    row_count: int, totals: tuple[int, int, int], nxt: str | None,
) -> web.Response:  # fmt: skip
    counts, shrinkage, overage = totals
    body = {
        **_variance_head(period, "sku", location, sku),
        "rows": [sku_row_json(r, names) for r in rows],
        "totals": {"counts": counts, "shrinkage": shrinkage, "overage": overage, "net_variance": overage - shrinkage},
        "row_count": row_count,
        "next": nxt,
    }
    return web.json_response(body, dumps=views.dumps)


async def _kept_variance_page(
    request: web.Request, params: views.Query, location: str | None, sku: str | None
) -> web.Response:
    """A later page of the report by SKU: read from the report its first page kept (``next`` names it and the rows
    before the page), never from the ledger, so the walk is of one report, every row once, whatever was counted
    since; ``from``, ``to``, ``location`` and ``sku`` are the first page's (left out: taken from the report)."""
    report_id, start = paging.parse(request, paging.variance_sku_key, "the variance report by SKU")
    limit = params.limit(VARIANCE_SKU_LIMIT_DEFAULT, LIMIT_MAX)
    given = (_time_param(params, "from"), _time_param(params, "to"))
    store: ReportStore = request.app[STORE_KEY]
    first, last = start // VARIANCE_PART_ROWS, (start + limit) // VARIANCE_PART_ROWS  # one row past: is there more?
    found = await store.kept_variance_report(report_id, first, last, now_ms=wall_ms_now())
    if found is None:
        raise web.HTTPBadRequest(
            text=f"cursor is of a shrinkage report the hub no longer keeps: a report's pages are kept "
            f"{VARIANCE_KEEP_MS // 60_000} minutes after its first page was read; read the first page again (without "
            "cursor) and walk on from its next"
        )
    report, parts = found
    period = Period(report.from_ms, report.to_ms)
    asked = {"location": location, "sku": sku, "from": given[0], "to": given[1]}
    kept = {"location": report.location, "sku": report.sku, "from": report.from_ms, "to": report.to_ms}
    differ = [k for k in asked if asked[k] is not None and asked[k] != kept[k]]
    if differ:
        first_page = ", ".join(
            f"{k} {_shown_param(k, kept[k])}" for k in ("location", "sku", "from", "to") if kept[k] is not None
        )
        raise web.HTTPBadRequest(
            text=f"cursor pages the report of {first_page}, and this request asks for another {' and '.join(differ)}; "
            "send the first page's location, sku, from and to with its cursor, or start again without cursor"
        )
    rows: list[VarianceSkuRow] = []
    for text in parts:  # at most 11 parts: a page is at most 10,000 rows
        rows += [tuple(r) for r in json.loads(text)]
    offset = start - first * VARIANCE_PART_ROWS
    page = rows[offset : offset + limit]
    more = start + len(page) < report.row_count
    nxt = paging.variance_sku_cursor(report.report_id, start + len(page)) if more and page else None
    totals = (report.counts, report.shrinkage, report.overage)
    names = await csvexport.names_of(request)
    return _variance_sku_answer(period, report.location, report.sku, page, names, report.row_count, totals, nxt)


def _shown_param(key: str, value: str | int | None) -> str:
    if key in ("from", "to") and isinstance(value, int):
        return views.iso_ms(value) or str(value)
    return values.shown(str(value), values.QUOTE_MAX_CHARS)


async def _sku_cells(ranked: list[VarianceSkuRow], names: dict[str, str]) -> AsyncIterator[list[Sequence[object]]]:
    """The report by SKU as CSV cells, ``csvexport.PAGE_ROWS`` at a time, each turned to cells as it is sent."""
    for start in range(0, len(ranked), csvexport.PAGE_ROWS):
        rows = (sku_row_json(r, names) for r in ranked[start : start + csvexport.PAGE_ROWS])
        yield [[row[h] for h in VARIANCE_SKU_HEADER] for row in rows]


async def _tally_cells(
    by: str, header: Sequence[str], ordered: list[tuple[str, str]], tallies: dict[tuple[str, str], Tally],
    names: dict[str, str],
) -> AsyncIterator[list[Sequence[object]]]:  # fmt: skip
    """The report's rows as CSV cells, ``csvexport.PAGE_ROWS`` at a time, each turned to cells as it is sent."""
    for start in range(0, len(ordered), csvexport.PAGE_ROWS):
        rows = (tally_json(by, k, tallies[k], names) for k in ordered[start : start + csvexport.PAGE_ROWS])
        yield [[row[h] for h in header] for row in rows]


def _variance_head(period: Period, by: str, location: str | None, sku: str | None) -> dict[str, Any]:
    return {"from": views.iso_ms(period.from_ms), "to": views.iso_ms(period.to_ms), "by": by, "location": location,
            "sku": sku}  # fmt: skip


async def _variance_count_page(
    request: web.Request, params: views.Query, period: Period, scan: AsyncGenerator[list[LedgerRow], None],
    names: dict[str, str], location: str | None, sku: str | None,
) -> web.Response:  # fmt: skip
    """A page of the report by count, each part of the ledger turned to JSON before the next is read."""
    limit = params.limit(VARIANCE_LIMIT_DEFAULT, LIMIT_MAX)
    rows: list[bytes] = []
    last: LedgerKey | None = None
    more = False
    async with aclosing(scan) as parts:
        async for part in parts:
            for r in part:
                if len(rows) == limit:
                    more = True
                    break
                rows.append(views.dumps(variance_count_json(r, names)).encode())
                last = keys.ledger_key(r)
            if more:
                break
    head = views.dumps(_variance_head(period, "count", location, sku)).encode()[:-1]  # without its closing }
    nxt = views.dumps(paging.ledger_cursor(last) if more and last is not None else None).encode()
    body = head + b',"rows":[' + b",".join(rows) + b'],"next":' + nxt + b"}"
    return web.Response(body=body, content_type="application/json", charset="utf-8")


async def _capped(
    pages: AsyncIterator[list[Sequence[object]]], params: views.Query
) -> AsyncIterator[list[Sequence[object]]]:
    left = csvexport.limit_param(params)
    async for page in pages:
        if left is not None:
            page = page[:left]
            left -= len(page)
        if page:
            yield page
        if left == 0:
            return


def routes(app: web.Application) -> None:
    heads.add(app, "POST", OBSERVATIONS_PATH, post_observations, name="observations", check=_observations_head)
    heads.add(app, "POST", IMPORT_ISSUES_PATH, post_import_issues, name="import_issues", check=_import_issues_head)
    app.router.add_get("/v1/divergence", get_divergence, name="divergence")
    app.router.add_get("/v1/reports/variance", get_variance, name="variance")
