"""Schemathesis hooks for the live hub run (tests/api/test_schemathesis.py), loaded through SCHEMATHESIS_HOOKS.

* Credentials: each operation is called with a credential of a role it names in ``x-shelfsync-roles`` (the
  reader for reads, the agent for ingest, the admin for admin writes), so the fuzzer gets past 403 and reaches
  the handlers; public operations and the channel webhook (signed, not bearer) get none. The tokens come from
  ``SHELFSYNC_ST_TOKENS`` (JSON: role → token).
* msgpack: ``application/msgpack`` bodies are packed with msgpack, the fields the document marks
  ``x-msgpack: bin`` as bytes; msgpack answers are unpacked, bytes shown as text of code points 0–255 (as the
  document describes them), so their schema is checked like a JSON answer's.
* ``wait`` of ``GET /v1/changes`` is capped at ``WAIT_CAP_S`` before the call: a long-poll on an idle hub
  waits the whole ``wait`` (up to 60 s, as documented), which would spend the run's time budget on sleeping.
* Rules the document states in words because a schema cannot hold them, applied only to the cases
  Schemathesis generates as valid (a generated invalid case keeps its faults, and must be refused): a
  ``cursor`` is opaque — only a value the hub gave out is one (hub.paging checks it), so a valid case asks for
  the first page (in the stateful phase the links then put real cursors from ``next`` in); the ledger takes
  ``cursor`` or ``before``, not both; an exceptions cursor goes with the location, kind and since it was given
  out for (just before the call, once a link has put it in); a report's period starts before it ends; a bundle does not name itself
  (just before the call, once a link has filled the path); a movement is not stamped ahead of the hub's clock;
  a GTIN carries its check digit and a barcode comes once per catalog write; a msgpack report names the
  credential's own agent, a sync batch's seqs increase and its lost report's seqs run first to last. And one for generated invalid cases: ``format=csv``
  takes a ``limit`` past a JSON page's maximum (the whole list streamed), so an invalid query drops
  ``format=csv`` and is judged as the JSON request it then is.
* The examples phase sends the document's own examples (and values of an answer's example as parameters of the
  same name) without ``map_case``: the examples obey those rules themselves (hub/openapi.py).
* The stateful phase asks for JSON, never ``format=csv``: its links read the answer's ``next`` (or an id) into the
  next call, which a CSV answer does not have. The other three phases check the CSV answers.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Any

import msgpack
import schemathesis
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import TestPhase

from hub import paging, views
from protocol import values
from protocol.catalog import sku_look
from protocol.event import QTY_SIGN, REF_REQUIRED, Kind
from protocol.routes import CATALOG_PATH, CHANGES_PATH, IMPORT_ISSUES_PATH, OBSERVATIONS_PATH, SYNC_PATH

_QUERY = ParameterLocation.QUERY
_BODY = ParameterLocation.BODY

GTIN_LENGTHS = (8, 12, 13, 14)
EARLIEST_MS = 946_684_800_000  # 2000-01-01, hub.events_api.EARLIEST_MS
SYNC_BIN_KEYS = frozenset({"chain", "base_chain"})  # the sync request's top-level x-msgpack: bin fields
WAIT_CAP_S = 0.2
BUNDLE_PATH = "/v1/bundles/{sku}"
EXCEPTIONS_PATH = "/v1/exceptions"
TOKENS: dict[str, str] = json.loads(os.environ.get("SHELFSYNC_ST_TOKENS", "{}"))
AGENT_ID = os.environ.get("SHELFSYNC_ST_AGENT_ID", "")


def _fit(value: Any) -> Any:
    """What msgpack can carry: an integer beyond 64 bits is sent as a float (the hub refuses it either way)."""
    if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < (1 << 64):
        return float(value)
    if isinstance(value, dict):
        return {k: _fit(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fit(v) for v in value]
    return value


def _raw(value: Any) -> Any:
    """A bin field's generated text as bytes, one byte per character (code points above 255 wrapped)."""
    return bytes(ord(c) % 256 for c in value) if isinstance(value, str) else value


def _sync_bins(body: Any) -> Any:
    """The sync request's bin fields (x-msgpack: bin): chain and base_chain, and each event's id."""
    if not isinstance(body, dict):
        return body
    out = {k: _raw(v) if k in SYNC_BIN_KEYS else v for k, v in body.items()}
    if isinstance(out.get("events"), list):
        out["events"] = [
            {k: _raw(v) if k == "id" else v for k, v in ev.items()} if isinstance(ev, dict) else ev
            for ev in out["events"]
        ]
    columns = out.get("columns")
    if isinstance(columns, dict) and isinstance(columns.get("id"), list):
        out["columns"] = {**columns, "id": [_raw(v) for v in columns["id"]]}
    return out


def _unbin(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {_unbin(k): _unbin(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unbin(v) for v in value]
    return value


@schemathesis.serializer("application/msgpack")
def to_msgpack(ctx: Any, value: Any) -> bytes:
    if ctx.case.operation.path == SYNC_PATH:
        value = _sync_bins(value)
    packed: bytes = msgpack.packb(_fit(value), use_bin_type=True)
    return packed


@schemathesis.deserializer("application/msgpack")
def from_msgpack(ctx: Any, response: Any) -> Any:
    return _unbin(msgpack.unpackb(response.content, raw=False, strict_map_key=False))


def _role(operation: Any) -> str | None:
    definition = operation.definition.raw
    if not any("bearer" in requirement for requirement in definition.get("security", [{"bearer": []}])):
        return None
    roles = definition.get("x-shelfsync-roles", [])
    for role in ("reader", "agent", "admin"):
        if role in roles:
            return role
    return None


@schemathesis.auth(refresh_interval=None)
class RoleCredential:
    def get(self, case: Any, ctx: Any) -> str | None:
        role = _role(ctx.operation)
        return None if role is None else TOKENS.get(role)

    def set(self, case: Any, data: str | None, ctx: Any) -> None:
        if data is None:
            return
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    query = case.query if isinstance(case.query, dict) else {}
    if case.meta is None:
        return case
    query_info = case.meta.components.get(_QUERY)
    negative_query = query_info is not None and query_info.mode.is_negative
    if case.meta.phase.name == TestPhase.STATEFUL and not negative_query:
        # A link follows the JSON answer (see the module docstring). Not in a case made invalid on purpose: its
        # format may be what was made invalid, and without it the rest may be valid after all (a number as a SKU
        # is a SKU in a query string), so the hub would be blamed for accepting it.
        query.pop("format", None)
    if query_info is not None and query_info.mode.is_negative and query.get("format") == "csv":
        del query["format"]  # a CSV answer takes a limit past a JSON page's (docs/hub-api.md, CSV): test the JSON one
    if not case.meta.generation.mode.is_positive:
        return case
    if case.meta.components.get(_QUERY) is not None and case.meta.components[_QUERY].mode.is_negative:
        return case
    if "cursor" in query:  # in the stateful phase, a link's real cursor replaces it after this
        del query["cursor"]
    if "cursor" in query and "before" in query:
        del query["before"]
    if isinstance(query.get("from"), str) and isinstance(query.get("to"), str) and query["from"] >= query["to"]:
        query["from"], query["to"] = "1970-01-01", query["to"]  # the period runs from before to
    elif isinstance(query.get("from"), str) and "to" not in query and query["from"] >= datetime.now(UTC).isoformat():
        query["from"] = "1970-01-01"  # to is now: the period starts before it
    body_info = case.meta.components.get(_BODY)
    if body_info is not None and body_info.mode.is_positive:
        if case.operation.path == "/v1/events":
            events_within_clock(case.body)
            skus_as_they_look(case.body)
        elif case.operation.path == CATALOG_PATH:
            catalog_items_checked(case.body)
        elif case.operation.path in (SYNC_PATH, OBSERVATIONS_PATH, IMPORT_ISSUES_PATH):
            own_agent(case.body)
    return case


def bundle_without_itself(case: Any) -> None:
    """A bundle does not name itself as a component. Applied just before the call: in the stateful phase a link
    puts a real bundle's SKU in the path after ``map_case``, and the body may name that very SKU."""
    if case.operation.path != BUNDLE_PATH or case.meta is None or not isinstance(case.body, dict):
        return
    body_info = case.meta.components.get(_BODY)
    if body_info is None or not body_info.mode.is_positive:
        return
    components = case.body.get("components")
    sku = (case.path_parameters or {}).get("sku")
    if not isinstance(components, dict) or not isinstance(sku, str) or sku not in components:
        return
    if len(components) > 1:
        del components[sku]
    else:
        case.body["components"] = {f"{sku[:58]}-part": components[sku]}


def own_agent(body: Any) -> None:
    """A msgpack report names the credential's own agent (else 403, as documented), and a sync batch's seqs
    strictly increase: what the schema cannot say, given to a generated valid body so it reaches the ingest."""
    if not isinstance(body, dict):
        return
    if AGENT_ID:
        body["agent_id"] = AGENT_ID
    events = body.get("events")
    if isinstance(events, list) and all(isinstance(ev, dict) and isinstance(ev.get("seq"), int) for ev in events):
        by_seq = {ev["seq"]: ev for ev in events}
        body["events"] = [by_seq[seq] for seq in sorted(by_seq)]
    columns = body.get("columns")
    if isinstance(columns, dict) and columns and all(isinstance(col, list) for col in columns.values()):
        body["columns"] = columns_aligned(columns)
    lost = body.get("lost")
    if isinstance(lost, dict) and all(isinstance(lost.get(k), int) for k in ("first_seq", "last_seq", "count")):
        # the seqs run first to last, and count is at most how many they are (SyncRequest.lost)
        lost["last_seq"] = max(lost["first_seq"], lost["last_seq"])
        lost["count"] = min(lost["count"], lost["last_seq"] - lost["first_seq"] + 1)


def columns_aligned(columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """A sync request's columns as the document says they go together, which no schema of lists can state: all
    of one length, seq strictly increasing, and for each event the rules between its kind, qty and ref that
    SyncEvent states (a count 0 or more, a delta of its kind's sign and never 0, a transfer with its ref)."""
    n = min(map(len, columns.values()))
    cols = {name: col[:n] for name, col in columns.items()}
    seqs = cols.get("seq", [])
    if all(isinstance(seq, int) for seq in seqs):
        order = sorted({seq: i for i, seq in enumerate(seqs)}.values(), key=lambda i: seqs[i])
        cols = {name: [col[i] for i in order] for name, col in cols.items()}
    kinds = {k.value: k for k in Kind}
    for i, (name, qty) in enumerate(zip(cols.get("kind", []), cols.get("qty", []), strict=True)):
        kind = kinds.get(name) if isinstance(name, str) else None
        if kind is None or not isinstance(qty, int) or isinstance(qty, bool):
            continue
        sign = QTY_SIGN.get(kind, 0)
        if kind is Kind.COUNT:
            cols["qty"][i] = abs(qty)
        elif sign:
            cols["qty"][i] = sign * max(1, abs(qty))
        elif qty == 0:
            cols["qty"][i] = 1
        if kind in REF_REQUIRED and cols.setdefault("ref", [None] * n)[i] is None:
            cols["ref"][i] = "T-1"
    return cols


def catalog_items_checked(body: Any) -> None:
    """A barcode of 8, 12, 13 or 14 digits is a GTIN and needs its GS1 check digit, and a barcode is named once per
    request: rules the document states in words (no schema holds a check digit or uniqueness by a key)."""
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return
    seen: set[str] = set()
    kept = []
    for item in items:
        barcode = item.get("barcode") if isinstance(item, dict) else None
        if isinstance(barcode, str) and len(barcode) in GTIN_LENGTHS and barcode.isascii() and barcode.isdigit():
            body_digits = [int(c) for c in barcode[:-1]]
            total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body_digits)))
            barcode = item["barcode"] = barcode[:-1] + str((10 - total % 10) % 10)
        if isinstance(barcode, str) and barcode in seen:
            continue
        seen.add(barcode) if isinstance(barcode, str) else None
        kept.append(item)
    body["items"] = kept


def skus_as_they_look(body: Any) -> None:
    """A connector's SKU that only looks like one the hub counts, or one before it in the request (a zero-width
    character, a decomposed accent, a full-width letter), is refused: a rule of the hub's stock that no schema can
    hold. A generated SKU is sent as it looks (``protocol.catalog.sku_look``), which no other spelling shadows."""
    for event in body.get("events", []) if isinstance(body, dict) else []:
        sku = event.get("sku") if isinstance(event, dict) else None
        if isinstance(sku, str) and not sku.isascii() and values.SKU.problem(sku_look(sku)) is None:
            event["sku"] = sku_look(sku)


def _now_ms() -> int:
    return int(time.time() * 1000)


def events_within_clock(body: Any) -> None:
    """A movement's ``occurred_at`` may not be further ahead of the hub's clock than its window (24 h), a rule of
    the hub's clock that no schema can hold, nor (as text) before 2000: a generated valid one outside is moved
    to now."""
    for event in body.get("events", []) if isinstance(body, dict) else []:
        if not isinstance(event, dict):
            continue
        at = event.get("occurred_at")
        if isinstance(at, (int, float)) and not isinstance(at, bool) and at > _now_ms():
            event["occurred_at"] = _now_ms()
        elif isinstance(at, str):
            try:
                at_ms = datetime.fromisoformat(at.replace("z", "Z")).timestamp() * 1000
            except (ValueError, OverflowError):
                continue  # the hub must take every RFC 3339 time the document allows: leave it to find out
            if not EARLIEST_MS <= at_ms <= _now_ms():
                event["occurred_at"] = datetime.now(UTC).isoformat()


def exceptions_cursor_with_its_filter(case: Any) -> None:
    """A cursor of ``GET /v1/exceptions`` is sent with the filter it was given out for (hub.paging): a generated
    valid case that a link gave such a cursor asks for that filter, not one generated beside it."""
    query = case.query if isinstance(case.query, dict) else None
    if case.operation.path != EXCEPTIONS_PATH or not query or not isinstance(query.get("cursor"), str):
        return
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    try:
        _, only = paging.exception_key(query["cursor"])
    except paging.BadCursor:
        return  # not one the hub gave out: refused whatever the filter
    if only is None:
        return
    for name, value in (("location", only.location), ("kind", only.kind), ("since", views.iso_ms(only.since_ms))):
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    bundle_without_itself(case)
    exceptions_cursor_with_its_filter(case)
    if case.operation.path == SYNC_PATH and case.meta is not None and case.meta.phase.name == TestPhase.EXAMPLES:
        own_agent(case.body)  # an example made of the fields' own examples: map_case does not see it
    if case.operation.path == CHANGES_PATH and isinstance(case.query, dict) and "wait" in case.query:
        try:
            wait = float(case.query["wait"])
        except (TypeError, ValueError):
            return  # not a number: the hub refuses it at once
        if wait > WAIT_CAP_S:
            case.query["wait"] = WAIT_CAP_S
