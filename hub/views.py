"""JSON shapes of the hub's read API, and validation of query and path parameters.

Packed HLC timestamps are JSON integers that can exceed 2**53, so each one is
accompanied by the ISO 8601 time of its wall-clock part for people and for
JavaScript clients that would round the integer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web

from hub.storage.base import AgentDisk, AgentStatus, CountRow, ExceptionRow, LedgerRow
from hub.storage.keys import EXCEPTION_KINDS, ExceptionFilter
from protocol import event_id_hex, unpack_hlc, values

HLC_QUERY_MAX = (1 << 63) - 1
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return event_id_hex(obj) if len(obj) == 16 else obj.hex()
    if isinstance(obj, (set, frozenset, tuple)):
        return sorted(obj) if isinstance(obj, (set, frozenset)) else list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    """Strict JSON (RFC 8259) of an answer: no NaN or Infinity, no lone surrogate. A value that would break
    that (a row stored before protocol.values refused it) is served made safe (``values.json_safe``)."""
    try:
        text = json.dumps(obj, default=_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN or ±Infinity somewhere
        text = None
    if text is None or values.SURROGATE_RE.search(text):
        text = json.dumps(
            values.json_safe(json.loads(json.dumps(obj, default=_default))),
            ensure_ascii=False, separators=(",", ":"), allow_nan=False,
        )  # fmt: skip
    return text


def loads(raw: bytes) -> Any:
    """A JSON request body under the one rule (protocol.values): UTF-8, no NaN/Infinity literals, no lone
    surrogate escapes, at most ``values.JSON_DEPTH_MAX`` levels deep, no key twice in one object (json would keep
    the last, unseen); ``ValueError`` saying what is wrong."""
    return values.loads_json(raw, unique_keys=True)


WHOLE_FLOAT_MAX = 1 << 53  # beyond this a float no longer holds every whole number exactly


def whole(value: Any) -> Any:
    """A JSON number without a fraction as an ``int`` (JSON has one number type: 5.0 is the number 5, and JSON
    Schema's "integer" says so); anything else, a float beyond 2**53 included, as it came (then refused)."""
    if type(value) is float and value.is_integer() and abs(value) <= WHOLE_FLOAT_MAX:
        return int(value)
    return value


def iso_ms(ms: int | None) -> str | None:
    """ISO 8601 UTC time of a Unix-milliseconds value, or None if absent or out of range."""
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return None


def hlc_time(packed: int | None) -> str | None:
    return None if packed is None else iso_ms(unpack_hlc(packed)[0])


# --- rows -------------------------------------------------------------------


def count_row(r: CountRow) -> dict[str, Any]:
    return {
        "location": r.location,
        "sku": r.sku,
        "on_hand": r.on_hand,
        "reserved": r.reserved,
        "available": r.available,
        "in_transit": r.in_transit,
        "safety_stock": r.safety_stock,
        "last_count_at": r.last_count_at,
        "last_count_time": hlc_time(r.last_count_at),
        "updated_at_ms": r.updated_at_ms,
        "updated_at": iso_ms(r.updated_at_ms),
    }


def ledger_row(r: LedgerRow) -> dict[str, Any]:
    return {
        "event_id": event_id_hex(r.event_id),
        "agent_id": r.agent_id,
        "epoch": r.epoch,
        "seq": r.seq,
        "location": r.location,
        "sku": r.sku,
        "kind": r.kind,
        "qty": r.qty,
        "occurred_at": r.occurred_at,
        "occurred_at_time": hlc_time(r.occurred_at),
        "wall_ms": r.wall_ms,
        "source": r.source,
        "ref": r.ref,
        "reason": r.reason,
        "attrs": r.attrs,
        "effect": r.effect.value,
        "variance": r.variance,
        "duplicates": r.duplicates,
        "rejection": r.rejection,
        "rejection_code": r.rejection_code,
        "expansion": r.expansion.as_json() if r.expansion is not None else None,  # a bundle's movement (hub/bundles.py)
        "received_at_ms": r.received_at_ms,
        "received_at": iso_ms(r.received_at_ms),
    }


def exception_row(r: ExceptionRow) -> dict[str, Any]:
    return {
        "kind": r.kind,
        "location": r.location,
        "sku": r.sku,
        "detail": r.detail,
        "data": r.data,
        "at_ms": r.at_ms,
        "at": iso_ms(r.at_ms),
    }


def agent_status(r: AgentStatus) -> dict[str, Any]:
    return {
        "agent_id": r.agent_id,
        "role": r.role,
        "revoked": r.revoked,
        "locations": list(r.locations),
        "last_sync_ms": r.last_sync_ms,
        "last_sync": iso_ms(r.last_sync_ms),
        # In the order they were last marked: after a fork (an outbox restored, copied or rolled back) the
        # current epoch comes last. epoch_text: the 63-bit epoch exactly, for JavaScript, whose numbers round it.
        "epochs": [{"epoch": epoch, "epoch_text": str(epoch), "hwm": hwm} for epoch, hwm in r.hwm.items()],
        "clock_skew_ms": r.clock_skew_ms,
        "backlog": r.backlog,
        "oldest_pending_ms": r.oldest_pending_ms,
        "oldest_pending": iso_ms(r.oldest_pending_ms),
        "backlog_at_ms": r.backlog_at_ms,
        "backlog_at": iso_ms(r.backlog_at_ms),
        "disk": None if r.disk is None else agent_disk(r.disk),
    }


def agent_disk(d: AgentDisk) -> dict[str, Any]:
    """A store agent's newest disk report (``protocol.DiskReport``) and since when its state holds."""
    return {
        "state": d.state,
        "since_ms": d.since_ms,
        "since": iso_ms(d.since_ms),
        "reserve_bytes": d.reserve_bytes,
        "reserve_held_bytes": d.reserve_held_bytes,
        "free_bytes": d.free_bytes,
        "refused_ms": d.refused_ms,
        "refused": iso_ms(d.refused_ms),
        "at_ms": d.at_ms,
        "at": iso_ms(d.at_ms),
    }


# --- parameters -------------------------------------------------------------


def text_param(field: values.TextField, value: str, name: str, *, stored: bool = False) -> str:
    """A query or path parameter checked by the same rule as on ingest (protocol.values), or a 400.

    ``stored=True`` (a query parameter that looks up what is stored): a SKU an older hub accepted before the
    dot-segment rule, ``.`` or ``..``, is still found."""
    problem = field.problem(value, stored=stored)
    if problem is not None:
        raise web.HTTPBadRequest(text=f"{name} {problem}; {field.a_what} is {field.rule()}")
    return value


def location_param(value: str, name: str = "location", *, stored: bool = False) -> str:
    return text_param(values.LOCATION, value, name, stored=stored)


def sku_param(value: str, name: str = "sku", *, stored: bool = False) -> str:
    return text_param(values.SKU, value, name, stored=stored)


def path_problem(raw_path: str) -> str | None:
    """Why a request's path (as sent, percent-escapes kept) cannot carry text parameters, or None.

    The router leaves an escape that does not decode to UTF-8 (``%ff``, ``%ED%A0%80``: a lone surrogate) as
    the literal characters ``%ff``, which would then name another SKU than the client's; such a path names
    no text at all."""
    try:
        unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        return (
            f"the path {values.shown(raw_path)} does not percent-decode to UTF-8 text; "
            "percent-encode the UTF-8 bytes of each parameter"
        )
    return None


def query_problem(raw_query: str) -> str | None:
    """Why a request's query string (as sent) cannot carry text parameters, or None.

    Its parser reads an escape that does not decode to UTF-8 as U+FFFD (``?sku=caf%E9``, café in Latin-1, as
    ``caf\ufffd``): another SKU than the client's, answered as if it were the one asked for."""
    try:
        unquote_to_bytes(raw_query).decode("utf-8")
    except UnicodeDecodeError:
        return (
            f"the query {values.shown(raw_query)} does not percent-decode to UTF-8 text; "
            "percent-encode the UTF-8 bytes of each parameter"
        )
    return None


def target_problem(request: web.Request) -> str | None:
    """Why a request's path parameters or query string cannot be read as text (``path_problem``,
    ``query_problem``), or None."""
    url = request.rel_url
    if request.match_info and (problem := path_problem(url.raw_path)) is not None:
        return problem
    return query_problem(url.raw_query_string) if url.raw_query_string else None


class Query:
    """The query string of one request, checked against the parameters its route takes."""

    __slots__ = ("_q",)

    def __init__(self, request: web.Request, allowed: Collection[str], repeatable: Collection[str] = ()) -> None:
        self._q = request.rel_url.query
        unknown = sorted(set(self._q) - set(allowed))
        if unknown:
            takes = f"it takes {', '.join(sorted(allowed))}" if allowed else "it takes none"
            # the names and the path are the sender's: shown escaped and bounded, never as they came
            named = ", ".join(values.shown(k, values.QUOTE_MAX_CHARS, bare=True) for k in unknown[:5])
            more = f" and {len(unknown) - 5:,} more" if len(unknown) > 5 else ""
            raise web.HTTPBadRequest(
                text=f"unknown query parameter(s) {named}{more} for {values.shown(request.path, bare=True)}; {takes}"
            )
        for key in self._q:
            if key not in repeatable and len(self._q.getall(key)) > 1:
                named = values.shown(key, values.QUOTE_MAX_CHARS, bare=True)
                raise web.HTTPBadRequest(text=f"query parameter {named} is given more than once")

    def _get(self, key: str) -> str | None:
        return self._q.get(key)

    def _int(self, key: str, lo: int, hi: int) -> int | None:
        raw = self._get(key)
        if raw is None:
            return None
        if not raw.isascii() or not raw.isdigit() or len(raw) > 20 or not lo <= int(raw) <= hi:
            got = values.shown(raw, values.QUOTE_MAX_CHARS)
            raise web.HTTPBadRequest(text=f"{key} must be a whole number from {lo} to {hi}, got {got}")
        return int(raw)

    def raw(self, key: str) -> str | None:
        """A parameter as sent (None when absent), for the route to check itself."""
        return self._get(key)

    def number(self, key: str, lo: int, hi: int) -> int | None:
        """A whole-number parameter from ``lo`` to ``hi``, None when absent, else a 400."""
        return self._int(key, lo, hi)

    def limit(self, default: int, maximum: int) -> int:
        value = self._int("limit", 1, maximum)
        return default if value is None else value

    def before(self) -> int | None:
        return self._int("before", 1, HLC_QUERY_MAX)

    def text(self, field: values.TextField, key: str) -> str | None:
        raw = self._get(key)
        return None if raw is None else text_param(field, raw, key)

    def location(self) -> str | None:
        raw = self._get("location")
        return None if raw is None else location_param(raw, stored=True)

    def sku(self) -> str | None:
        """``?sku=``: also a SKU stored before the dot-segment rule, which no URL path can name."""
        raw = self._get("sku")
        return None if raw is None else sku_param(raw, stored=True)

    def skus(self, maximum: int) -> list[str] | None:
        """``?sku=`` given once or more (a route that takes it ``repeatable``): the SKUs in the order first given,
        each once; None when absent; a 400 past ``maximum`` parameters."""
        raws = self._q.getall("sku", [])
        if not raws:
            return None
        if len(raws) > maximum:
            got = f"got {len(raws):,}"
            raise web.HTTPBadRequest(text=f"at most {maximum:,} sku parameters are taken in one request, {got}")
        return list(dict.fromkeys(sku_param(raw, stored=True) for raw in raws))

    def exception_kind(self) -> str | None:
        """``?kind=`` of the exceptions: one kind the list names, or a 400 naming them all."""
        raw = self._get("kind")
        if raw is None or raw in EXCEPTION_KINDS:
            return raw
        got = values.shown(raw, values.QUOTE_MAX_CHARS)
        raise web.HTTPBadRequest(text=f"kind {got} is not a kind of exception; it is one of {', '.join(EXCEPTION_KINDS)}")

    def exception_filter(self) -> ExceptionFilter:
        """``location``, ``kind`` and ``since`` of an exceptions request, each checked (a 400 says what is wrong)."""
        return ExceptionFilter(self.location(), self.exception_kind(), self.since())

    def since(self) -> int | None:
        """``?since=``: an RFC 3339 time with its offset (``2026-01-31T18:00:00Z``) as Unix ms, or a 400."""
        raw = self._get("since")
        return None if raw is None else max(0, rfc3339_ms(raw, "since"))  # before 1970: every exception


RFC3339_RE = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<clock>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d+))?"
    r"(?P<zone>[Zz]|[+-]\d{2}:\d{2})"
)


def rfc3339_ms(raw: str, name: str) -> int:
    """Unix milliseconds of an RFC 3339 date-time (its zone is required: a time without one is another moment in
    every store's time zone), or a 400 saying what a valid one looks like."""
    got = values.shown(raw, values.QUOTE_MAX_CHARS)
    match = RFC3339_RE.fullmatch(raw) if raw.isascii() else None
    if match is None:
        raise web.HTTPBadRequest(text=f"{name} must be an RFC 3339 time with its zone, such as 2026-01-31T18:00:00Z, got {got}")
    fraction = (match["fraction"] or "")[:6].ljust(6, "0")
    zone = "+00:00" if match["zone"] in "Zz" else match["zone"]
    try:
        at = datetime.fromisoformat(f"{match['date']}T{match['clock']}.{fraction}{zone}")
        return (at - EPOCH) // timedelta(milliseconds=1)
    except (ValueError, OverflowError):
        raise web.HTTPBadRequest(text=f"{name} {got} is not a time on the calendar (a month, day, hour or zone out of range)") from None
