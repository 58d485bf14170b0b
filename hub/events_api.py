"""``POST /v1/events``: channel connectors push their own movements as JSON.

A web shop or marketplace connector holds an agent-role credential bound to
its channel location(s) (``WEB``). It sends movements under its own ids — an
online order as ``reserve`` then ``sale`` (with the order as ``ref``, so the
sale consumes the reservation), a cancellation as ``release`` — and they go
through the same validation, dedupe and resolution as an agent's events.

The hub turns each into a ``StockEvent``:

* ``event_id`` = ``derived_event_id(occurred_ms, b"api:<agent_id>:<id>")``, so
  resending the same movement (same id, same time) is a duplicate, never a
  second movement;
* epoch 0 (agents never use it), and ``seq`` = the event's time in Unix ms —
  derived from the event itself, not a counter: ``seq`` is part of an event's
  content, so a counter would turn every resend into a conflict. A connector's
  high-water mark is therefore the time of its newest movement;
* ``occurred_at`` = the given time (ISO 8601 with a UTC offset, or Unix ms)
  as a packed HLC with counter 0; ``source`` = ``api:<agent_id>``; the
  connector's id is kept in ``attrs["api_id"]``.

Clocks: a connector is online and hears the answer, so a time further ahead
of the hub's clock than ``clock_window_s`` is refused (422) rather than held
in quarantine as an agent's would be (hub.clock_window): the connector fixes
its unit or clock and sends it again. A time in the past is the channel's own
record of when an order happened (its server's clock, not a store PC's), so
orders from before the connector's credential existed are accepted; only a
time before 2000 (seconds sent as milliseconds) is refused.

The credential is confirmed in the transaction that books the events, as an agent's batch's is
(``hub.auth.ingest_confirmed``): revoked since it was found, 401 and nothing booked; bound elsewhere, the
events are judged by its new locations. So the route takes the connector's identity from the hub's
``IdentityCache`` and does not read it again once the body has come.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from hub import feed, heads, metrics, problems, views
from hub.auth import STORE_KEY, identity_of, ingest_confirmed, role_refused
from hub.decoding import read_body
from hub.storage.base import INGEST_ROLES, AgentIdentity
from hub.storage.interfaces import LedgerStore
from protocol import (
    ProtocolError,
    StockEvent,
    book_out_ref_problem,
    check_kind,
    derived_event_id,
    event_id_hex,
    pack_hlc,
    values,
    wall_ms_now,
)
from protocol.catalog import sku_look

log = logging.getLogger(__name__)

ROUTE = "events"
EVENTS_MAX = 1_000
API_ID_MAX_LEN = 128
API_ID_ATTR = "api_id"
API_ID = values.TextField("id", API_ID_MAX_LEN)
CONNECTOR_EPOCH = 0
EARLIEST_MS = 946_684_800_000  # 2000-01-01: an earlier time is almost surely seconds sent as ms
ODD_CHARS_NAMED = 3
FUTURE_SLACK_MS = 24 * 3_600 * 1_000  # the default clock window (hub.clock_window.DEFAULT_CLOCK_WINDOW_S)
_FIELDS = frozenset({"id", "location", "sku", "kind", "qty", "occurred_at", "ref", "reason", "attrs"})
_REQUIRED = ("id", "location", "sku", "kind", "qty", "occurred_at")


class BadEvent(ValueError):
    """One event of the request breaks the contract; the message names the field."""


@dataclass(frozen=True, slots=True)
class Invalid:
    index: int
    api_id: str | None
    reason: str
    conflict: bool = False  # a later copy of a movement the request names with other content, not a bad event


WINDOW_KEY = web.AppKey("events_clock_window_ms", int)
DECODE_TURN_KEY = web.AppKey("events_decode_turn", asyncio.Lock)


def setup(app: web.Application, clock_window_s: int = FUTURE_SLACK_MS // 1000) -> None:
    app[WINDOW_KEY] = clock_window_s * 1000
    app[DECODE_TURN_KEY] = asyncio.Lock()
    heads.add(app, "POST", "/v1/events", post_events, name=ROUTE, check=_head)


def occurred_ms(value: Any, now_ms: int, window_ms: int = FUTURE_SLACK_MS) -> int:
    """Unix milliseconds of an ``occurred_at``: an integer of ms, or ISO 8601 text with a UTC offset."""
    value = views.whole(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadEvent("occurred_at must be ISO 8601 text with a UTC offset or Unix milliseconds")
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip().replace("z", "Z"))
        except ValueError:
            raise BadEvent(f"occurred_at {value[:40]!r} is not an ISO 8601 time (e.g. 2025-11-25T09:00:00Z)") from None
        if when.tzinfo is None:
            raise BadEvent(f"occurred_at {value[:40]!r} has no UTC offset; add Z or +01:00")
        ms = int(when.timestamp() * 1000)
    else:
        ms = value
    if ms < EARLIEST_MS:
        raise BadEvent(f"occurred_at {value!r} is before the year 2000; Unix time must be in milliseconds")
    if ms > now_ms + window_ms:
        raise BadEvent(
            f"occurred_at {value!r} is more than {window_ms // 1000} s ahead of the hub's clock "
            "(its clock window, clock_window_s); check the unit and the clock"
        )
    return ms


def _api_id(raw: Any) -> str:
    problem = API_ID.problem(raw)
    if problem is not None:
        raise BadEvent(f"id {problem}; an id is {API_ID.rule()}")
    return str(raw)


def build_event(who: AgentIdentity, raw: Any, now_ms: int, window_ms: int = FUTURE_SLACK_MS) -> StockEvent:
    """The stock event one JSON movement stands for, or ``BadEvent`` naming what is wrong."""
    if not isinstance(raw, Mapping):
        raise BadEvent(f"an event must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise BadEvent(f"unknown field(s) {', '.join(unknown)[:80]}; the fields are {', '.join(sorted(_FIELDS))}")
    missing = [f for f in _REQUIRED if f not in raw]
    if missing:
        raise BadEvent(f"missing field(s) {', '.join(missing)}")
    api_id = _api_id(raw["id"])
    attrs = raw.get("attrs")
    if attrs is None:  # absent or null; 0, "" or [] are not an empty map, and are refused below
        attrs = {}
    if not isinstance(attrs, Mapping):
        raise BadEvent(f"attrs must be a JSON object, got {type(attrs).__name__}")
    if API_ID_ATTR in attrs:
        raise BadEvent(f"attrs.{API_ID_ATTR} is set by the hub (it keeps the event's id); use another key")
    ms = occurred_ms(raw["occurred_at"], now_ms, window_ms)
    at = pack_hlc(ms, 0)
    try:
        ev = StockEvent(
            event_id=derived_event_id(ms, f"api:{who.agent_id}:{api_id}".encode()),
            agent_id=who.agent_id,
            epoch=CONNECTOR_EPOCH,
            seq=ms,
            location=raw["location"],
            sku=raw["sku"],
            kind=check_kind(raw["kind"]),
            qty=views.whole(raw["qty"]),
            occurred_at=at,
            wall_ms=ms,
            source=f"api:{who.agent_id}",
            ref=raw.get("ref"),
            reason=raw.get("reason"),
            attrs={**attrs, API_ID_ATTR: api_id},
        )
    except ProtocolError as err:
        raise BadEvent(str(err)) from None
    # The connector hears the answer: a book-out naming no transfer is refused, not booked and listed (the ref
    # is the only thing that tells the hub which receipt it books out).
    if (problem := book_out_ref_problem(ev.kind, ev.reason, ev.ref, ev.source)) is not None:
        raise BadEvent(f"{problem}; set ref to the transfer's reference")
    return ev


def _parse(
    who: AgentIdentity, body: Any, window_ms: int = FUTURE_SLACK_MS
) -> tuple[list[StockEvent], list[str], list[Invalid]]:
    if not isinstance(body, dict) or set(body) != {"events"}:
        raise web.HTTPBadRequest(text='the body must be a JSON object with one field, {"events": [...]}')
    raw_events = body["events"]
    if not isinstance(raw_events, list) or not 1 <= len(raw_events) <= EVENTS_MAX:
        raise web.HTTPBadRequest(text=f"events must be a list of 1 to {EVENTS_MAX} events")
    now_ms = wall_ms_now()
    events: list[StockEvent] = []
    ids: list[str] = []
    invalid: list[Invalid] = []
    first: dict[bytes, tuple[int, bytes]] = {}  # event id -> (index, content hash) of its first copy in the request
    for i, raw in enumerate(raw_events):
        api_id = raw.get("id") if isinstance(raw, Mapping) else None
        try:
            ev = build_event(who, raw, now_ms, window_ms)
        except BadEvent as err:
            invalid.append(Invalid(i, api_id if isinstance(api_id, str) else None, f"events[{i}]: {err}"))
            continue
        # One request naming one movement (id and time) twice with other content contradicts itself: which copy
        # it meant cannot be known, and answering per event id would call both copies rejected while one counted.
        index, content = first.setdefault(ev.event_id, (i, ev.content_hash))
        if content != ev.content_hash:
            reason = (
                f"events[{i}]: events[{index}] names the same movement (id {values.shown(raw['id'])} at the same "
                "occurred_at) with other content; send each movement once"
            )
            invalid.append(Invalid(i, raw["id"], reason, conflict=True))
            continue
        events.append(ev)
        ids.append(raw["id"])  # build_event checked it is a string
    return events, ids, invalid


def _spellings(sku: str) -> set[str]:
    """The other spellings a person takes for ``sku``: its Unicode normal forms, with and without its invisible
    format characters (zero-width spaces and joiners, direction marks), and its look (``sku_look``)."""
    bare = "".join(c for c in sku if unicodedata.category(c) != "Cf")
    forms = {unicodedata.normalize(form, text) for form in ("NFC", "NFD", "NFKC") for text in (sku, bare)}
    return (forms | {sku_look(sku)}) - {sku}


def _odd_chars(sku: str, other: str) -> str:
    """The characters of ``sku`` that ``other`` does not hold, by code point and name (a few): a letter ``other``
    holds with its accent composed (``e`` of ``e`` + U+0301 against ``é``) is not named, the accent is."""
    decomposed = unicodedata.normalize("NFD", other)
    odd = list(dict.fromkeys(c for c in sku if c not in other and (c not in decomposed or unicodedata.combining(c))))
    named = [f"U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}" for c in odd[:ODD_CHARS_NAMED]]
    return ", ".join(named) + (f" and {len(odd) - ODD_CHARS_NAMED} more" if len(odd) > ODD_CHARS_NAMED else "")


async def _look_alikes(store: LedgerStore, events: Sequence[StockEvent], ids: Sequence[str]) -> list[Invalid]:
    """The events whose SKU the hub counts under no spelling yet and that only looks like a SKU it counts, or like
    another SKU of the request before it: a pasted zero-width space, an accent decomposed (e + U+0301), a
    full-width letter. Booked, it would be another SKU no one can tell apart on a screen, whose sales take nothing
    from the shelf's. A SKU the hub counts already is taken, whatever looks like it; an ASCII SKU looks as it is
    spelt, so only the others are looked up: every spelling of each of them at once, one read of the counts' SKU
    index for the request."""
    others = {ev.sku: sorted(_spellings(ev.sku)) for ev in events if not ev.sku.isascii()}
    asked = {spelling for sku, spellings in others.items() for spelling in (sku, *spellings)}
    counted = await store.skus_counted(asked) if asked else set()
    spelt: dict[str, tuple[str, str]] = {}  # look -> (the spelling taken, where it was met)
    invalid: list[Invalid] = []
    for i, (ev, api_id) in enumerate(zip(events, ids, strict=True)):
        if ev.sku.isascii():
            spelt.setdefault(ev.sku, (ev.sku, f"events[{i}]"))
            continue
        look = sku_look(ev.sku)
        other, where = spelt.get(look, (ev.sku, ""))
        if other == ev.sku and ev.sku not in counted:
            known = [s for s in others[ev.sku] if s in counted]
            if known:
                other, where = known[0], "the hub counts"
        if other != ev.sku:
            # another SKU of the request before it, or the ASCII spelling of its look: both among those asked
            if where != "the hub counts" and other in counted:
                where = "the hub counts"
            named = values.shown(other, values.QUOTE_MAX_CHARS, bare=True)
            reason = (
                f"events[{i}]: sku {values.shown(ev.sku, values.QUOTE_MAX_CHARS)} looks like the SKU {named} "
                f"{where if where == 'the hub counts' else 'of ' + where} but is spelt with other characters "
                f"({_odd_chars(ev.sku, other)}), so it would be another SKU; send it as {named}"
            )
            invalid.append(Invalid(i, api_id, reason))
            continue
        spelt.setdefault(look, (ev.sku, f"events[{i}]"))
    return invalid


def _read(who: AgentIdentity, raw: bytes, window_ms: int) -> tuple[list[StockEvent], list[str], list[Invalid]]:
    """The request's events, ids and invalid events (``_parse``) from its body; 400 for one that is not JSON."""
    try:
        body = views.loads(raw)
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON ({err})") from err
    return _parse(who, body, window_ms)


def _head(request: web.Request, who: AgentIdentity) -> None:
    """What ``post_events`` refuses before it reads the body, asked of a head too (hub.heads)."""
    heads.refuse(role_refused(who, INGEST_ROLES, "send events"))
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            text=f"send the events as JSON with Content-Type: application/json, got {request.content_type}"
        )


async def post_events(request: web.Request) -> web.Response:
    """Validate, resolve and commit a connector's movements; answer each one's fate and the counts touched."""
    who = identity_of(request)
    started = time.perf_counter()
    _head(request, who)
    window_ms = request.app[WINDOW_KEY]
    # past 64 KiB read and checked in a worker thread, one body at a time per hub process (hub.decoding)
    events, ids, invalid = await read_body(
        request, lambda raw: _read(who, raw, window_ms), request.app[DECODE_TURN_KEY]
    )
    if not invalid:  # each SKU's spelling is checked against the hub's only once the request is whole
        invalid = await _look_alikes(request.app[STORE_KEY], events, ids)
    if invalid:
        metrics.observe_invalid(request.app, ROUTE, len(invalid))
        log.info("refused %d event(s) from %s: first %s", len(invalid), who.agent_id, invalid[0].reason)
        rejected = [{"index": b.index, "id": b.api_id, "reason": b.reason} for b in invalid]
        if all(b.conflict for b in invalid):  # each event valid alone: the request contradicts itself (409)
            message = f"{len(invalid)} event(s) contradict an earlier one and nothing was committed; first: {invalid[0].reason}"
            return problems.response(409, message, code="conflicting_events", rejected=rejected)
        message = f"{len(invalid)} event(s) are invalid and nothing was committed; first: {invalid[0].reason}"
        return problems.response(422, message, code="invalid_events", rejected=rejected)
    result = await ingest_confirmed(request, who, CONNECTOR_EPOCH, events, _head)  # 401 if revoked meanwhile
    elapsed_s = time.perf_counter() - started
    feed.poke(request.app)
    metrics.observe_ingest(request.app, ROUTE, result, elapsed_s)
    refused = {r.event_id: r for r in result.rejected}
    answers: list[dict[str, Any]] = []
    for api_id, ev in zip(ids, events, strict=True):
        answer: dict[str, Any] = {"id": api_id, "event_id": event_id_hex(ev.event_id), "status": "accepted"}
        if (r := refused.get(ev.event_id)) is not None:
            answer.update(status="rejected", code=r.code, reason=r.reason)
        answers.append(answer)
    log.info(
        "%s pushed %d events (%d new, %d duplicates, %d rejected) in %d ms",
        who.agent_id,
        len(events),
        result.applied,
        result.duplicates,
        len(result.rejected),
        round(elapsed_s * 1000),
    )
    return web.json_response(
        {
            "events": answers,
            "applied": result.applied,
            "duplicates": result.duplicates,
            "rejected": len(result.rejected),
            "counts": [
                {
                    "location": c.location,
                    "sku": c.sku,
                    "on_hand": c.on_hand,
                    "reserved": c.reserved,
                    "available": c.available,
                    "in_transit": c.in_transit,
                }
                for c in result.counts
            ],
        },
        dumps=views.dumps,
    )
