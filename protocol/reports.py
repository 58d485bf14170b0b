"""The msgpack codec of what an agent reports besides stock events.

* Observations: another system's belief about on-hand stock (a POS or web
  shop export says "7 on hand"), never a movement; the hub compares them with
  its own counts (``POST /v1/observations``).
* Import issues: rows of a POS export the agent quarantined instead of
  importing (``POST /v1/import-issues``).

Both answer ``ReportAnswer``: the ids the hub keeps (new or resent) and those
it refuses, with a reason. Decoding is strict like ``protocol.codec``: anything
outside the contract raises one ``ProtocolError`` naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.codec import WIRE_VERSION, _envelope, _unpack
from protocol.errors import ProtocolError
from protocol.event import (
    _AGENT_RE,
    _CODE_RE,
    AGENT_ID_MAX_LEN,
    LOCATION_MAX_LEN,
    QTY_MAX,
    SKU_MAX_LEN,
    _check_int,
    _check_str,
)

MAX_REPORT_ITEMS = 10_000  # observations or issues per request
REPORT_ID_MAX_LEN = 64
SYSTEM_MAX_LEN = 32
SOURCE_FILE_MAX_LEN = 256
ISSUE_FILE_MAX_LEN = 256
ISSUE_REASON_MAX_LEN = 512
ISSUE_RAW_MAX_LEN = 2048
ISSUE_LINE_MAX = (1 << 31) - 1
OBSERVED_AT_MS_MAX = (1 << 47) - 1  # wall-clock milliseconds (far beyond year 6000)
REJECT_REASON_MAX_LEN = 1024


@dataclass(frozen=True, slots=True)
class ObservationReport:
    """One observation on the wire; ``id`` is the sender's, unique per agent."""

    id: str
    location: str
    sku: str
    system: str  # the other system: "shopify", "square" …
    on_hand: int
    observed_at_ms: int  # when that system believed it (the export's time)
    source_file: str = ""


@dataclass(frozen=True, slots=True)
class ObservationsRequest:
    agent_id: str
    observations: tuple[ObservationReport, ...]


@dataclass(frozen=True, slots=True)
class ImportIssueReport:
    """One quarantined import row on the wire; ``id`` is the sender's, unique per agent."""

    id: str
    location: str
    file: str
    line: int  # 1-based line of the file; 0 when the issue is the whole file
    reason: str
    raw: str = ""  # the row as text, as far as it could be read


@dataclass(frozen=True, slots=True)
class ImportIssuesRequest:
    agent_id: str
    issues: tuple[ImportIssueReport, ...]


@dataclass(frozen=True, slots=True)
class ReportRejection:
    id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReportAnswer:
    """The hub's answer to either request: every id is either accepted or rejected."""

    accepted: tuple[str, ...] = ()
    rejected: tuple[ReportRejection, ...] = ()


def _pack(obj: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def _items(obj: Mapping[str, Any], key: str) -> list[Any]:
    raw = obj.get(key)
    if not isinstance(raw, list):
        raise ProtocolError(f"must be a list, got {type(raw).__name__}", field=key)
    if len(raw) > MAX_REPORT_ITEMS:
        raise ProtocolError(f"holds {len(raw)} items; the limit per request is {MAX_REPORT_ITEMS}", field=key)
    return raw


def _fields(raw: Any, name: str, required: frozenset[str], optional: frozenset[str] = frozenset()) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ProtocolError(f"must be a map, got {type(raw).__name__}", field=name)
    missing = required - set(raw)
    if missing:
        raise ProtocolError(f"is missing {', '.join(sorted(missing))}", field=name)
    unknown = set(raw) - required - optional
    if unknown:
        raise ProtocolError(f"has unknown field(s) {', '.join(sorted(map(str, unknown)))[:80]}", field=name)
    return raw


def _text(value: Any, name: str, max_len: int, *, allow_empty: bool = False, printable: bool = True) -> str:
    """A string of at most ``max_len`` characters; printable (no control characters) unless told."""
    if isinstance(value, str) and not value and allow_empty:
        return value
    if printable:
        return _check_str(value, name, max_len)
    if not isinstance(value, str):
        raise ProtocolError(f"must be a string, got {type(value).__name__}", field=name)
    if len(value) > max_len:
        raise ProtocolError(f"is {len(value)} characters long; the limit is {max_len}", field=name)
    return value


def _agent_id(obj: Mapping[str, Any]) -> str:
    return _check_str(obj.get("agent_id"), "agent_id", AGENT_ID_MAX_LEN, _AGENT_RE, what="agent id")


def _location(value: Any, name: str) -> str:
    return _check_str(value, name, LOCATION_MAX_LEN, _CODE_RE, what="location code")


# --- observations -------------------------------------------------------------

_OBSERVATION_FIELDS = frozenset({"id", "location", "sku", "system", "on_hand", "observed_at_ms"})


def encode_observations(req: ObservationsRequest) -> bytes:
    return _pack(
        {
            "v": WIRE_VERSION,
            "agent_id": req.agent_id,
            "observations": [
                {
                    "id": o.id,
                    "location": o.location,
                    "sku": o.sku,
                    "system": o.system,
                    "on_hand": o.on_hand,
                    "observed_at_ms": o.observed_at_ms,
                    "source_file": o.source_file,
                }
                for o in req.observations
            ],
        }
    )


def decode_observations(data: bytes) -> ObservationsRequest:
    obj = _envelope(_unpack(data, "observations request"), "observations request", {"v", "agent_id", "observations"})
    agent_id = _agent_id(obj)
    out: list[ObservationReport] = []
    for i, raw in enumerate(_items(obj, "observations")):
        name = f"observations[{i}]"
        f = _fields(raw, name, _OBSERVATION_FIELDS, frozenset({"source_file"}))
        out.append(
            ObservationReport(
                id=_text(f["id"], f"{name}.id", REPORT_ID_MAX_LEN),
                location=_location(f["location"], f"{name}.location"),
                sku=_text(f["sku"], f"{name}.sku", SKU_MAX_LEN),
                system=_text(f["system"], f"{name}.system", SYSTEM_MAX_LEN),
                on_hand=_check_int(f["on_hand"], f"{name}.on_hand", -QTY_MAX, QTY_MAX),
                observed_at_ms=_check_int(f["observed_at_ms"], f"{name}.observed_at_ms", 0, OBSERVED_AT_MS_MAX),
                source_file=_text(
                    f.get("source_file", ""), f"{name}.source_file", SOURCE_FILE_MAX_LEN, allow_empty=True
                ),
            )
        )
    return ObservationsRequest(agent_id, tuple(out))


# --- import issues ------------------------------------------------------------

_ISSUE_FIELDS = frozenset({"id", "location", "file", "line", "reason"})


def encode_import_issues(req: ImportIssuesRequest) -> bytes:
    return _pack(
        {
            "v": WIRE_VERSION,
            "agent_id": req.agent_id,
            "issues": [
                {"id": x.id, "location": x.location, "file": x.file, "line": x.line, "reason": x.reason, "raw": x.raw}
                for x in req.issues
            ],
        }
    )


def decode_import_issues(data: bytes) -> ImportIssuesRequest:
    obj = _envelope(_unpack(data, "import issues request"), "import issues request", {"v", "agent_id", "issues"})
    agent_id = _agent_id(obj)
    out: list[ImportIssueReport] = []
    for i, raw in enumerate(_items(obj, "issues")):
        name = f"issues[{i}]"
        f = _fields(raw, name, _ISSUE_FIELDS, frozenset({"raw"}))
        out.append(
            ImportIssueReport(
                id=_text(f["id"], f"{name}.id", REPORT_ID_MAX_LEN),
                location=_location(f["location"], f"{name}.location"),
                file=_text(f["file"], f"{name}.file", ISSUE_FILE_MAX_LEN),
                line=_check_int(f["line"], f"{name}.line", 0, ISSUE_LINE_MAX),
                reason=_text(f["reason"], f"{name}.reason", ISSUE_REASON_MAX_LEN),
                # the row as read: tabs and other control characters are the evidence, so they stay
                raw=_text(f.get("raw", ""), f"{name}.raw", ISSUE_RAW_MAX_LEN, allow_empty=True, printable=False),
            )
        )
    return ImportIssuesRequest(agent_id, tuple(out))


# --- the answer -----------------------------------------------------------------


def encode_report_answer(answer: ReportAnswer) -> bytes:
    return _pack(
        {
            "v": WIRE_VERSION,
            "accepted": list(answer.accepted),
            "rejected": [{"id": r.id, "reason": r.reason} for r in answer.rejected],
        }
    )


def decode_report_answer(data: bytes) -> ReportAnswer:
    obj = _envelope(_unpack(data, "report answer"), "report answer", {"v", "accepted", "rejected"})
    accepted = tuple(_text(x, f"accepted[{i}]", REPORT_ID_MAX_LEN) for i, x in enumerate(_items(obj, "accepted")))
    rejected: list[ReportRejection] = []
    for i, raw in enumerate(_items(obj, "rejected")):
        name = f"rejected[{i}]"
        f = _fields(raw, name, frozenset({"id", "reason"}))
        rejected.append(
            ReportRejection(
                _text(f["id"], f"{name}.id", REPORT_ID_MAX_LEN),
                _text(f["reason"], f"{name}.reason", REJECT_REASON_MAX_LEN),
            )
        )
    return ReportAnswer(accepted, tuple(rejected))
