"""The hub's answers besides a sync's 200 (``protocol.codec``): the error answer of every route, and the 422 a
sync gets when events of its batch break the contract. Built here for the hub, read here for the agent.

**Error answers** are RFC 9457 problem details (``application/problem+json``)::

    {"type": "urn:shelfsync:problem:<code>", "title": "…", "status": 403, "detail": "<one sentence>",
     "code": "<code>", …}

``detail`` is the sentence a person can act on, ``code`` the machine-readable reason; a route adds its own
members beside them (``rejected``, ``credential_agent_id`` …). Hubs from before problem details answered
``{"error": {"code": …, "message": …, …}}`` with the route's members inside ``error``; agents and hubs of
different versions meet, so ``error_member`` and ``error_message`` read both shapes, and anything else (a
proxy's HTML page, a cut body) gives a short excerpt of the text instead of a message.

**The sync's 422** (``POST /v1/sync``, code ``invalid_events``): nothing of the batch was committed; the member
``rejected`` names each invalid event by its index in the batch, with its id and seq as a check, and why::

    "rejected": [{"index": 3, "event_id": "0190c7a2-…", "seq": 17, "reason": "events[3].qty: …"}, …]

The agent sets aside exactly the events named and sends the rest again. ``rejected_members`` builds the
member from the hub's ``BadEvent``s, ``read_rejected`` reads it back from either shape, and
``rejections_in_batch`` finds the events of the batch sent that it names.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from protocol.codec import BadEvent, Rejection
from protocol.ids import event_id_hex, parse_event_id

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
PROBLEM_TYPE_PREFIX: Final = "urn:shelfsync:problem:"  # + the code: names the problem, points nowhere
PROBLEM_MEMBERS: Final = frozenset({"type", "title", "status", "detail", "code", "instance"})  # not a route's to take
EXCERPT_MAX_CHARS: Final = 200  # of an answer in neither shape, quoted instead of its message

INVALID_EVENTS_CODE: Final = "invalid_events"  # the code of the sync's 422
REJECTED_MEMBER: Final = "rejected"
INVALID_REJECTION_CODE: Final = "invalid"  # the Rejection code of an event a 422 names
INVALID_REASON: Final = "invalid event"  # when a 422 names an event without saying why


# --- every error answer ------------------------------------------------------


def problem_body(status: int, detail: str, code: str, title: str, **extra: Any) -> dict[str, Any]:
    """The problem details of an error answer; ``extra`` members go beside the standard ones."""
    clash = PROBLEM_MEMBERS & set(extra)
    if clash:
        raise ValueError(f"extra members may not replace problem members: {', '.join(sorted(clash))}")
    return {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


def error_members(body: bytes) -> dict[str, Any] | None:
    """An error answer's members in one flat map (an older hub's ``message`` named ``detail``), or None for a
    body of neither shape."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parsed, dict):
        return None
    legacy = parsed.get("error")
    if isinstance(legacy, dict):
        members = dict(legacy)
        if "message" in members:
            members["detail"] = members.pop("message")
        return members
    if "detail" in parsed or "code" in parsed:
        return parsed
    return None


def error_member(body: bytes, name: str) -> Any:
    """A member of a hub's error answer (``code``, ``detail``, ``rejected``, ``credential_agent_id`` …), or None."""
    members = error_members(body)
    return None if members is None else members.get(name)


def error_message(body: bytes) -> str:
    """The one sentence of a hub's error answer, or a short excerpt of whatever came back."""
    detail = error_member(body, "detail")
    if isinstance(detail, str) and detail:
        return detail
    return body[:EXCERPT_MAX_CHARS].decode("utf-8", "replace").strip() or "no message"


# --- the sync's 422 -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RejectedEntry:
    """One entry of a 422's ``rejected`` as read: each of index, id and seq None when absent or malformed."""

    index: int | None
    event_id: bytes | None
    seq: int | None
    reason: str


def rejected_entry(bad: BadEvent) -> dict[str, Any]:
    """One invalid event as the 422 names it."""
    return {
        "index": bad.index,
        "event_id": None if bad.event_id is None else event_id_hex(bad.event_id),
        "seq": bad.seq,
        "reason": bad.reason,
    }


def rejected_members(bad: Sequence[BadEvent]) -> dict[str, Any]:
    """The members a sync's 422 adds to its problem details: ``{"rejected": [...]}``."""
    return {REJECTED_MEMBER: [rejected_entry(b) for b in bad]}


def _entry(item: Mapping[str, Any]) -> RejectedEntry:
    event_id: bytes | None = None
    if isinstance(item.get("event_id"), str):
        with contextlib.suppress(ValueError):
            event_id = parse_event_id(item["event_id"])
    index, seq = item.get("index"), item.get("seq")
    return RejectedEntry(
        index if isinstance(index, int) else None,
        event_id,
        seq if isinstance(seq, int) else None,
        str(item.get("reason") or INVALID_REASON),
    )


def read_rejected(body: bytes) -> tuple[RejectedEntry, ...]:
    """The entries of a 422's ``rejected`` (problem details or an older hub's shape); entries that are not maps
    are left out, and a body without the member gives none."""
    items = error_member(body, REJECTED_MEMBER)
    if not isinstance(items, list):
        return ()
    return tuple(_entry(item) for item in items if isinstance(item, dict))


class Sent(Protocol):
    """An event of a batch sent, as an answer names it (a ``protocol.StockEvent``, or what a sender keeps of it)."""

    @property
    def event_id(self) -> bytes: ...

    @property
    def seq(self) -> int: ...


def _pick(
    batch: Sequence[Sent], by_id: Mapping[bytes, Sent], by_seq: Mapping[int, Sent], e: RejectedEntry
) -> Sent | None:
    if e.index is not None and 0 <= e.index < len(batch):
        candidate = batch[e.index]
        if (e.event_id is None or candidate.event_id == e.event_id) and (e.seq is None or candidate.seq == e.seq):
            return candidate
    if e.event_id is not None and e.event_id in by_id:
        return by_id[e.event_id]
    if e.seq is not None and e.seq in by_seq:
        return by_seq[e.seq]
    return None


def rejections_in_batch(batch: Sequence[Sent], entries: Sequence[RejectedEntry]) -> tuple[list[Rejection], list[bytes]]:
    """The events of ``batch`` the entries name, as rejections in seq order (each event once), and the ids of
    events named that are not in the batch. An entry names the event at its index when its id and seq (where
    given) agree, else the event with its id, else the event with its seq."""
    by_id = {ev.event_id: ev for ev in batch}
    by_seq = {ev.seq: ev for ev in batch}
    found: dict[int, Rejection] = {}
    strangers: list[bytes] = []
    for entry in entries:
        event = _pick(batch, by_id, by_seq, entry)
        if event is not None:
            found[event.seq] = Rejection(event.event_id, event.seq, INVALID_REJECTION_CODE, entry.reason)
        elif entry.event_id is not None:
            strangers.append(entry.event_id)
    return [found[seq] for seq in sorted(found)], strangers
