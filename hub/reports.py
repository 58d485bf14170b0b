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

import heapq
import logging
import re
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
)
from hub.storage.interfaces import LedgerStore, ReportStore
from hub.storage.keys import LedgerKey
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
    period = variance_period(params, wall_ms_now())
    location, sku = params.location(), params.sku()
    if by == "location" and params.raw("cursor") is not None:
        raise web.HTTPBadRequest(text="cursor pages only by=sku and by=count; the by=location report is one page")
    after: LedgerKey | None = None
    after_sku: tuple[int, int, str, str] | None = None
    if by == "count":
        after = paging.parse(request, paging.ledger_key, "the variance report by count (it pages the ledger)")
    elif by == "sku":
        after_sku = paging.parse(request, paging.variance_sku_key, "the variance report by SKU")
    names = await csvexport.names_of(request)
    scan = counts_in(request, period, location, sku, after)
    stem = csvexport.filename(f"variance-by-{by}", location, sku)
    if by == "count":
        if as_csv:
            rows = _cells(scan, lambda r: variance_count_cells(r, names))
            return await csvexport.stream(request, stem, VARIANCE_COUNT_HEADER, _capped(rows, params))
        return await _variance_count_page(request, params, period, scan, names, location, sku)
    tallies: dict[tuple[str, str], Tally] = {}
    async for page in scan:
        for r in page:
            tallies.setdefault((r.location, "" if by == "location" else r.sku), Tally()).add(r)
    header = VARIANCE_LOCATION_HEADER if by == "location" else VARIANCE_SKU_HEADER
    if as_csv:
        ordered = sorted(tallies) if by == "location" else sorted(tallies, key=lambda k: shrinkage_order(k, tallies))
        return await csvexport.stream(request, stem, header, _tally_cells(by, header, ordered, tallies, names))
    more = False
    if by == "location":
        chosen = sorted(tallies)
    else:  # a page of the most shrinkage after the cursor's row: only its rows are sorted and turned to JSON
        limit = params.limit(VARIANCE_SKU_LIMIT_DEFAULT, LIMIT_MAX)
        orders = (shrinkage_order(k, tallies) for k in tallies)
        picked = heapq.nsmallest(limit + 1, (o for o in orders if after_sku is None or o > after_sku))
        more = len(picked) > limit
        chosen = [(o[2], o[3]) for o in picked[:limit]]
    totals = {
        "counts": sum(t.counts for t in tallies.values()),
        "shrinkage": sum(t.shrinkage for t in tallies.values()),
        "overage": sum(t.overage for t in tallies.values()),
    }
    body = {
        **_variance_head(period, by, location, sku),
        "rows": [tally_json(by, k, tallies[k], names) for k in chosen],
        "totals": {**totals, "net_variance": totals["overage"] - totals["shrinkage"]},
        "row_count": len(tallies),
        "next": paging.variance_sku_cursor(shrinkage_order(chosen[-1], tallies)) if more else None,
    }
    return web.json_response(body, dumps=views.dumps)


def shrinkage_order(key: tuple[str, str], tallies: dict[tuple[str, str], Tally]) -> tuple[int, int, str, str]:
    """Where a (location, sku) row is in the report by SKU: the most shrinkage first, then the lowest net variance
    (the least found over), then by location and SKU, so a page's cursor names one place in a total order."""
    t = tallies[key]
    return (-t.shrinkage, t.net, key[0], key[1])


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
