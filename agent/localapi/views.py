"""JSON shapes of the local API (docs/agent-api.md shows each), and reading request bodies into values."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

from agent.counts import LocalCount
from agent.outbox import OutboxStats
from agent.pos import PosFolderState
from agent.reserve import ReserveState
from agent.saved import Waiting
from agent.sessions import (
    BinNote,
    CloseReport,
    ExpectedLine,
    InvalidSessionInput,
    Line,
    NotAdded,
    Refused,
    ReportLine,
    Session,
    SessionSpec,
    SessionView,
    Total,
    Unstored,
)
from protocol import unpack_hlc

LINES_SHOWN_DEFAULT = 200
SPEC_FIELDS = frozenset(
    {"type", "ref", "to_location", "from_location", "reason", "scope_skus", "bin", "expected", "reader_id"}
)


def spec_from_json(body: Any) -> SessionSpec:
    """A ``SessionSpec`` from a request body; ``InvalidSessionInput`` names what is wrong."""
    if not isinstance(body, Mapping):
        raise InvalidSessionInput('the body must be a JSON object such as {"type": "receive"}')
    unknown = sorted(set(body) - SPEC_FIELDS)
    if unknown:
        raise InvalidSessionInput(f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(SPEC_FIELDS))}")
    if "type" not in body:
        raise InvalidSessionInput("type is missing: receive, count, transfer_out, transfer_in, return or write_off")
    scope = body.get("scope_skus") or []
    if not isinstance(scope, list):
        raise InvalidSessionInput("scope_skus must be a list of SKUs")
    expected_raw = body.get("expected") or []
    if not isinstance(expected_raw, list) or not all(isinstance(e, Mapping) for e in expected_raw):
        raise InvalidSessionInput('expected must be a list of {"sku": …, "qty": …} objects')
    expected = []
    for e in expected_raw:
        if set(e) - {"sku", "qty"}:
            raise InvalidSessionInput('each expected line has exactly the fields "sku" and "qty"')
        expected.append(ExpectedLine(e.get("sku"), e.get("qty")))
    return SessionSpec(
        type=body["type"],
        ref=_opt(body, "ref"),
        to_location=_opt(body, "to_location"),
        from_location=_opt(body, "from_location"),
        reason=_opt(body, "reason"),
        scope_skus=tuple(scope),
        bin=_opt(body, "bin"),
        expected=tuple(expected),
        reader_id=_opt(body, "reader_id"),
    )


def _opt(body: Mapping[str, Any], key: str) -> Any:
    value = body.get(key)
    if isinstance(value, str) and not value.strip():
        return None  # an empty form field means "not given"
    return value


def session_json(s: Session) -> dict[str, Any]:
    spec = s.spec
    return {
        "id": s.id,
        "type": s.type.value,
        "status": s.status.value,
        "location": s.location,
        "by": s.by,
        "opened_ms": s.opened_ms,
        "ref": spec.ref,
        "to_location": spec.to_location,
        "from_location": spec.from_location,
        "reason": spec.reason,
        "scope_skus": list(spec.scope_skus),
        "bin": spec.bin,
        "expected": [{"sku": e.sku, "qty": e.qty} for e in spec.expected],
        "reader_id": spec.reader_id,
        "zero_unscanned": s.zero_unscanned,
        "closed_by": s.closed_by,
        "closed_ms": s.closed_ms,
        "report": None if s.report is None else report_json(s.report),
    }


def line_json(line: Line) -> dict[str, Any]:
    return {
        "no": line.no,
        "sku": line.sku,
        "qty": line.qty,
        "pack_size": line.pack_size,
        "barcode": line.barcode,
        "unknown": line.unknown,
        "disposition": None if line.disposition is None else line.disposition.value,
        "by": line.by,
        "source": line.source,
        "at_ms": line.at_ms,
        "hlc_ms": unpack_hlc(line.hlc)[0],
        "undone": line.undone,
        "held": line.held,
        "pending": line.pending,
        "decided_by": line.decided_by,
        "rejected": line.rejected,
    }


def total_json(t: Total) -> dict[str, Any]:
    return {
        "sku": t.sku,
        "qty": t.qty,
        "lines": t.lines,
        "disposition": None if t.disposition is None else t.disposition.value,
        "last_scan_ms": unpack_hlc(t.last_hlc)[0],
    }


def report_line_json(r: ReportLine) -> dict[str, Any]:
    return {"sku": r.sku, "status": r.status, "qty": r.qty, "expected": r.expected, "difference": r.difference}


def report_json(r: CloseReport) -> dict[str, Any]:
    return {
        "events": r.events,
        "units": r.units,
        "lines": [report_line_json(x) for x in r.lines],
        "bin_notes": [bin_note_json(n) for n in r.bin_notes],
        "count_notes": [{"sku": n.sku, "moved": dict(n.moved), "message": n.message} for n in r.count_notes],
    }


def bin_note_json(n: BinNote) -> dict[str, Any]:
    return {
        "sku": n.sku, "bin": n.bin, "since": n.since, "before": list(n.before), "between": list(n.between),
        "put_in": dict(n.put_in), "taken": dict(n.taken), "message": n.message,
    }  # fmt: skip


def refused_json(r: Refused) -> dict[str, Any]:
    return {
        "session_id": r.session_id, "sku": r.sku, "kind": r.kind, "qty": r.qty, "code": r.code, "reason": r.reason,
        "refused_ms": r.refused_ms, "event_id": r.event_id,
    }  # fmt: skip


def view_json(v: SessionView, lines_shown: int = LINES_SHOWN_DEFAULT) -> dict[str, Any]:
    """The session, its newest ``lines_shown`` lines (all totals, whatever their number) and the preview."""
    return {
        "session": session_json(v.session),
        "lines": [line_json(x) for x in v.lines[-lines_shown:]] if lines_shown else [],
        "lines_total": len(v.lines),
        "totals": [total_json(t) for t in v.totals],
        "units": sum(t.qty for t in v.totals),
        "preview": [report_line_json(r) for r in v.preview],
        "refused": [refused_json(r) for r in v.refused],
        "held": [line_json(x) for x in v.held],
        "unstored": [unstored_json(u) for u in v.unstored],
        "not_added": [not_added_json(n) for n in v.not_added],
    }


def not_added_json(n: NotAdded) -> dict[str, Any]:
    return {"code": n.code, "source": n.source, "at_ms": n.at_ms, "why": n.why}


def unstored_json(u: Unstored) -> dict[str, Any]:
    return {"scan_id": u.scan_id, "code": u.code, "source": u.source, "at_ms": u.at_ms, "why": u.why}


def count_json(c: LocalCount, *, agent_location: str) -> dict[str, Any]:
    """``followed``: the count cache follows the hub's changes of this location (the agent's own) as they happen;
    another location's count is the hub's as of its last answer for the key, and no later change reaches it."""
    return {
        "location": c.location,
        "sku": c.sku,
        "on_hand": c.on_hand,
        "reserved": c.reserved,
        "available": c.available,
        "in_transit": c.in_transit,
        "pending_events": c.pending_events,
        "stale_events": c.stale_events,
        "hub_as_of_ms": c.hub_as_of_ms,
        "followed": c.location == agent_location,
    }


def status_json(
    stats: OutboxStats,
    hub_url: str | None,
    active_sessions: int,
    pos: PosFolderState | None = None,
    saved: Waiting | None = None,
    reserve: ReserveState | None = None,
) -> dict[str, Any]:
    now_ms = time.time_ns() // 1_000_000
    return {
        "agent_id": stats.agent_id,
        "location": stats.location,
        "backlog": stats.backlog,
        "oldest_pending_age_s": stats.oldest_pending_age_s,
        "set_aside": stats.set_aside,
        "hub_url": hub_url,
        "hub_reachable": stats.hub_reachable,
        "sync_state": stats.sync_state,
        "last_sync_ms": stats.last_sync_ms,
        "last_sync_age_s": None if stats.last_sync_ms is None else max(0.0, (now_ms - stats.last_sync_ms) / 1000),
        "last_error": stats.last_error,
        "clock_skew_ms": stats.clock_skew_ms,
        "hub_clock_off_ms": stats.hub_clock_off_ms,  # the hub says its own clock is off (not this machine's)
        "hub_clock_agreed": stats.hub_clock_agreed,  # … that other stores agree with its clock (this machine's is off)
        "active_sessions": active_sessions,
        "pos_import": None if pos is None else pos.to_json(),
        "saved_copies": None if saved is None else dataclasses.asdict(saved),
        # agent.reserve: in use, the disk is full and scans are stored in the space it gave back
        "disk_reserve": None
        if reserve is None
        else {"size_bytes": reserve.size, "held_bytes": reserve.held, "in_use": reserve.in_use, "spent": reserve.spent},
    }
