"""What both backends share for the clock quarantine and transfer write-offs (schema version 5).

Row mappings, the event an operator's "apply_at_receipt" ingests, the
exception and ledger rows these produce, so SQLite and PostgreSQL answer the
same words, and the quarantine table's reads and writes in SQL both run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from hub.clock_window import (
    AHEAD,
    BEFORE_AGENT,
    BEHIND,
    HUB_CLOCK_AGREE_MS,
    HUB_CLOCK_OFF_MS,
    HUB_CLOCK_RECENT_MS,
    span,
)
from hub.resolver import Effect, Transfer
from hub.storage.base import (
    QUARANTINE_ACTIONS,
    QUARANTINE_STATUSES,
    AgentIdentity,
    ExceptionRow,
    InvalidInput,
    LedgerRow,
    QuarantineRow,
)
from hub.storage.db import Db, Where
from hub.storage.sql import EVENT_FIELDS
from protocol import ProtocolError, StockEvent, derived_event_id, event_id_hex, pack_hlc, unpack_hlc

QUARANTINE_FIELDS = (
    "quarantine_id, event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, "
    "ref, reason, attrs, detail, attempts, received_at_ms, status, resolved_by, resolved_at_ms, sent_ms, hub_clock_off_ms, "
    "hub_clock_vouched"
)
ORIGINAL_AT_ATTR = "original_occurred_at"  # the re-stamped event keeps its original stamp here
ORIGINAL_WALL_ATTR = "original_wall_ms"
APPLIED_BY_ATTR = "applied_by"
WRITEOFF_KIND = "transfer_writeoff"  # a ledger row of its own: not a StockEvent kind, never sent by an agent
WRITEOFF_AGENT = "hub"


def transfer_values(t: Transfer) -> tuple[Any, ...]:
    """A transfer's ``hub.storage.sql.TRANSFER_FIELDS`` values, in order."""
    return (
        t.dest, t.ref, t.sku, t.shipped, t.received, t.out_from, t.out_to, t.in_to, t.in_from, t.shipped_at_ms,
        t.closed_at, t.shippers, t.final_at, t.returned, t.booked_out,
    )  # fmt: skip


TRANSFER_COLUMNS = 15  # the columns of TRANSFER_FIELDS; a read's updated_at_ms comes after them


def transfer_row(r: Sequence[Any]) -> Transfer:
    """The transfer of a row read as ``TRANSFER_FIELDS`` (and maybe more after them)."""
    return Transfer(*r[:TRANSFER_COLUMNS])


def quarantine_row(r: Sequence[Any]) -> QuarantineRow:
    return QuarantineRow(
        r[0], bytes(r[1]), r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
        json.loads(r[14]) if r[14] else {}, r[15], r[16], r[17], r[18], r[19], r[20], r[21], r[22], r[23],
    )  # fmt: skip


def check_query(status: str | None) -> None:
    if status is not None and status not in QUARANTINE_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(QUARANTINE_STATUSES)} or absent, got {status!r}")


def check_action(action: str) -> None:
    if action not in QUARANTINE_ACTIONS:
        raise InvalidInput(f"action must be one of {', '.join(QUARANTINE_ACTIONS)}, got {str(action)[:40]!r}")


def restamped(row: QuarantineRow, operator: str) -> tuple[AgentIdentity, StockEvent]:
    """The held event as "apply_at_receipt" ingests it: stamped at the hub's receipt time (counter 0),
    with its original stamp and the operator in attrs, sent as its agent for its own location."""
    attrs = dict(row.attrs) | {
        ORIGINAL_AT_ATTR: row.occurred_at,
        ORIGINAL_WALL_ATTR: row.wall_ms,
        APPLIED_BY_ATTR: operator,
    }
    try:
        event = StockEvent(
            event_id=row.event_id,
            agent_id=row.agent_id,
            epoch=row.epoch,
            seq=row.seq,
            location=row.location,
            sku=row.sku,
            kind=row.kind,
            qty=row.qty,
            occurred_at=pack_hlc(row.received_at_ms, 0),
            wall_ms=row.received_at_ms,
            source=row.source,
            ref=row.ref,
            reason=row.reason,
            attrs=attrs,
        )
    except ProtocolError as err:
        raise InvalidInput(f"held event {row.quarantine_id} cannot be re-stamped ({err}); discard it") from err
    return AgentIdentity(row.agent_id, frozenset({row.location})), event


def discarded_hash(row: QuarantineRow) -> bytes:
    """The rejections key part of a discarded held event (one row per held event, never a sender's hash)."""
    return hashlib.blake2b(b"discarded:" + row.event_id, digest_size=32).digest()


def discard_detail(row: QuarantineRow, operator: str, now_ms: int) -> str:
    return f"discarded from the clock quarantine by {operator} at hub time {now_ms} ms; it was held because {row.detail}"


def quarantine_exception(row: QuarantineRow) -> ExceptionRow:
    where = "ahead of" if row.skew_ms > 0 else "behind"
    return ExceptionRow(
        "clock_quarantine",
        row.location,
        row.sku,
        f"{row.agent_id}'s {row.kind} of {row.qty:+d} {row.sku} at {row.location} is stamped {span(row.skew_ms)} "
        f"{where} the hub's clock at its receipt and is held in quarantine: "
        + (
            f"the hub's own clock was {span(row.hub_clock_off_ms)} off its stores' then, so it is applied at its own "
            "time once the hub's clock is right, or now with the others (POST /v1/quarantine/release)."
            if row.hub_clock_off_ms is not None
            else f"apply it at its receipt time or discard it (POST /v1/quarantine/{row.quarantine_id})."
        ),
        {
            "quarantine_id": row.quarantine_id,
            "event_id": event_id_hex(row.event_id),
            "agent_id": row.agent_id,
            "occurred_at": row.occurred_at,
            "wall_ms": unpack_hlc(row.occurred_at)[0],
            "received_at_ms": row.received_at_ms,
            "skew_ms": row.skew_ms,
        },
        row.received_at_ms,
    )


def writeoff_ledger_row(t: Transfer, updated_at_ms: int) -> LedgerRow:
    """The ledger row of a transfer closed short: its missing units written off at the receiving location,
    placed at the final receipt's stamp. No on_hand moves (the units left the source when shipped)."""
    assert t.closed_at is not None
    return LedgerRow(
        event_id=derived_event_id(unpack_hlc(t.closed_at)[0], f"writeoff:{t.dest}:{t.ref}:{t.sku}".encode()),
        agent_id=WRITEOFF_AGENT,
        epoch=0,
        seq=0,
        location=t.to_location or t.from_location or "",
        sku=t.sku,
        kind=WRITEOFF_KIND,
        qty=-t.written_off,
        occurred_at=t.closed_at,
        wall_ms=unpack_hlc(t.closed_at)[0],
        source="hub:transfer",
        ref=t.ref,
        reason="lost_in_transit",
        attrs={"from": t.from_location, "to": t.to_location, "shipped": t.shipped, "received": t.received}
        | ({"returned": t.returned} if t.returned else {}),
        effect=Effect.APPLIED,
        variance=None,
        duplicates=0,
        received_at_ms=updated_at_ms,
    )


# --- the quarantine table, in SQL both backends run (``hub.storage.db``) -----------------------------------


async def held_rows(
    db: Db, status: str | None, location: str | None, before_id: int | None, limit: int
) -> list[QuarantineRow]:
    """Held events newest first (by ``quarantine_id``); ``status`` None: all."""
    where = Where().add("status = ?", status).add("location = ?", location).add("quarantine_id < ?", before_id)
    sql = f"SELECT {QUARANTINE_FIELDS} FROM quarantine{where.sql} ORDER BY quarantine_id DESC LIMIT ?"
    return [quarantine_row(r) for r in await db.fetch(sql, (*where.params, limit))]


async def held_row(db: Db, quarantine_id: int, lock_row: str) -> QuarantineRow | None:
    """One held event, its row locked until the commit with the backend's ``lock_row`` ("" where one writer)."""
    row = await db.fetchone(f"SELECT {QUARANTINE_FIELDS} FROM quarantine WHERE quarantine_id = ?{lock_row}",
                            (quarantine_id,))  # fmt: skip
    return None if row is None else quarantine_row(row)


async def discard(db: Db, row: QuarantineRow, operator: str, now_ms: int) -> None:
    """Keep the held event as a rejection naming the operator."""
    await db.execute(
        f"INSERT INTO rejections ({EVENT_FIELDS}, content_hash, code, detail, received_at_ms) "
        "SELECT event_id, agent_id, epoch, seq, location, sku, kind, qty, occurred_at, wall_ms, source, "
        "ref, reason, attrs, ?, 'discarded', ?, ? FROM quarantine WHERE quarantine_id = ? "
        "ON CONFLICT DO NOTHING",
        (discarded_hash(row), discard_detail(row, operator, now_ms), now_ms, row.quarantine_id),
    )


async def mark_resolved(db: Db, row: QuarantineRow, status: str, operator: str, now_ms: int) -> QuarantineRow:
    await db.execute(
        "UPDATE quarantine SET status = ?, resolved_by = ?, resolved_at_ms = ? WHERE quarantine_id = ?",
        (status, operator, now_ms, row.quarantine_id),
    )
    return replace(row, status=status, resolved_by=operator, resolved_at_ms=now_ms)


# --- the hub's own clock (schema version 23) ----------------------------------------------------------------
RELEASED_BY_ATTR = "released_by"  # an event held because of the hub's own clock, applied at its own time
HUB_CLOCK_OFF_ATTR = "hub_clock_off_ms"


async def mark_hub_clock(db: Db, offset_ms: int, now_ms: int, recent_ms: int, agree_ms: int) -> int:
    """The pending events held in the last ``recent_ms`` (by the hub's clock) before the hub found its clock
    ``offset_ms`` off, whose sender's clock was off the hub's by that much too (within ``agree_ms``): held because
    of the hub's clock, as those held since. Returns how many were marked."""
    return await db.execute(
        "UPDATE quarantine SET hub_clock_off_ms = ? WHERE status = 'pending' AND hub_clock_off_ms IS NULL "
        "AND sent_ms IS NOT NULL AND received_at_ms >= ? AND received_at_ms - sent_ms BETWEEN ? AND ?",
        (offset_ms, now_ms - recent_ms, offset_ms - agree_ms, offset_ms + agree_ms),
    )


@dataclass(frozen=True, slots=True)
class HubClockFinding:
    """What a hub process last found of the hub's own clock, kept in the database for every hub sharing it (schema
    version 32, table ``hub_clock_finding``): ``offset_ms`` off its stores' at its time ``found_at_ms``, and right
    again at ``right_at_ms`` (None: not yet)."""

    offset_ms: int
    found_at_ms: int
    right_at_ms: int | None


FINDING_SQL = "SELECT offset_ms, found_at_ms, right_at_ms FROM hub_clock_finding WHERE id = 1"


def finding(row: Sequence[Any] | None) -> HubClockFinding | None:
    return None if row is None else HubClockFinding(int(row[0]), int(row[1]), None if row[2] is None else int(row[2]))


async def note_found(db: Db, offset_ms: int, now_ms: int) -> None:
    """Keep that the hub found its clock ``offset_ms`` off at ``now_ms``, for every hub process (the caller holds
    the hub-clock lock: ``SqlHubStore.hub_clock_found``)."""
    await db.execute(
        "INSERT INTO hub_clock_finding (id, offset_ms, found_at_ms, right_at_ms) VALUES (1, ?, ?, NULL) "
        "ON CONFLICT (id) DO UPDATE SET offset_ms = excluded.offset_ms, found_at_ms = excluded.found_at_ms, "
        "right_at_ms = NULL",
        (offset_ms, now_ms),
    )


async def note_right(db: Db, now_ms: int) -> None:
    """Keep that the hub found its clock right again at ``now_ms`` (once: the first hub process to find it)."""
    await db.execute("UPDATE hub_clock_finding SET right_at_ms = ? WHERE id = 1 AND right_at_ms IS NULL", (now_ms,))


# A write holding events because of the hub's clock, which its hub process found off (``IngestTx.note_hub_clock_off``):
# the finding kept for every hub process says so as that write commits, unless it says so already or the hub's clock
# was found right again after the write was judged (then the caller releases what it held). Parameters: the offset,
# the write's time, its time when it was judged, HUB_CLOCK_AGREE_MS.
NOTE_OFF_SQL = (
    "INSERT INTO hub_clock_finding (id, offset_ms, found_at_ms, right_at_ms) VALUES (1, ?, ?, NULL) "
    "ON CONFLICT (id) DO UPDATE SET offset_ms = excluded.offset_ms, found_at_ms = excluded.found_at_ms, "
    "right_at_ms = NULL WHERE hub_clock_finding.right_at_ms <= ? OR (hub_clock_finding.right_at_ms IS NULL "
    "AND abs(hub_clock_finding.offset_ms - excluded.offset_ms) > ?)"
)


def finding_covers(found: HubClockFinding, judged_ms: int, skew_ms: int) -> bool:
    """Whether an event held by a hub that did not know its clock off, judged at its time ``judged_ms`` from a
    sender whose clock was ``skew_ms`` off its own, is one the marking of ``found`` takes (``mark_hub_clock``): its
    sender's clock off by that much too, judged in the HUB_CLOCK_RECENT_MS before the finding or after it, while
    the hub's clock was not right again, and not later than HUB_CLOCK_RECENT_MS after it (a hub whose stores agree
    finds it itself by then)."""
    return (
        abs(skew_ms - found.offset_ms) <= HUB_CLOCK_AGREE_MS
        and found.found_at_ms - HUB_CLOCK_RECENT_MS <= judged_ms <= found.found_at_ms + HUB_CLOCK_RECENT_MS
        and (found.right_at_ms is None or judged_ms < found.right_at_ms)
    )


async def releasable_hub_clock_ids(db: Db) -> list[int]:
    """``pending_ids(hub_clock=True)``, or none while the finding kept for every hub process says the hub's clock is
    off (``HubClockFinding.right_at_ms`` None): a hub process found it off again since the release was decided (or
    before its marking was written), and what it holds waits for the clock to be found right. Read in one snapshot
    with the finding: an event held knowing the clock off is written with the finding (``NOTE_OFF_SQL``)."""
    ids = await pending_ids(db, hub_clock=True)
    found = finding(await db.fetchone(FINDING_SQL, ()))
    return [] if found is not None and found.right_at_ms is None else ids


async def pending_ids(db: Db, *, hub_clock: bool, agent_id: str | None = None) -> list[int]:
    """The pending held events, oldest first: those held because of the hub's own clock (``hub_clock``), or those
    it did not attribute to it (of ``agent_id`` only, when given)."""
    where = Where("status = 'pending'", f"hub_clock_off_ms IS {'NOT ' if hub_clock else ''}NULL")
    where.add("agent_id = ?", agent_id)
    sql = f"SELECT quarantine_id FROM quarantine{where.sql} ORDER BY quarantine_id"
    rows = await db.fetch(sql, tuple(where.params))
    return [r[0] for r in rows]


async def pending_totals(db: Db) -> tuple[int, dict[str, int]]:
    """How many events are held pending, in one query: those held because of the hub's own clock, and per agent
    those it did not attribute to it (what ``release_hub_clock`` and ``release_held`` would take)."""
    rows = await db.fetch(
        "SELECT agent_id, hub_clock_off_ms IS NOT NULL, COUNT(*) FROM quarantine WHERE status = 'pending' "
        "GROUP BY agent_id, hub_clock_off_ms IS NOT NULL ORDER BY agent_id",
        (),
    )
    hub_clock = sum(int(n) for _, by_hub, n in rows if by_hub)
    return hub_clock, {agent_id: int(n) for agent_id, by_hub, n in rows if not by_hub}


async def pending_vouched(db: Db) -> dict[str, int]:
    """Per agent with any, the most other stores that put the hub's clock right when one of its held events the hub
    did not attribute was held (``hub_clock_vouched``): a release of that agent's as the hub's clock wrong is refused
    unless overridden."""
    rows = await db.fetch(
        "SELECT agent_id, MAX(hub_clock_vouched) FROM quarantine WHERE status = 'pending' "
        "AND hub_clock_off_ms IS NULL AND hub_clock_vouched IS NOT NULL GROUP BY agent_id ORDER BY agent_id",
        (),
    )
    return {agent_id: int(n) for agent_id, n in rows}


# Whose clock an operator found wrong, for the held events the hub could not attribute (``release_held``): the
# hub's (each applied at its own time) or the store's (each at the hub's time of receipt).
WRONG_HUB, WRONG_STORE = "hub", "store"
WRONG_CLOCKS = (WRONG_HUB, WRONG_STORE)
# Why a release left a held event pending, besides the clock window's rules (hub.clock_window.AHEAD, ...):
GONE = "gone"  # resolved (or attributed otherwise) meanwhile: not the release's to count
NO_CLOCK = "no_clock"  # its sender did not say its clock when it sent it: the hub's offset then is unknown
REFUSED = "refused"  # the ingest refused it (its transaction rolled back)


async def agent_known(db: Db, agent_id: str) -> bool:
    return await db.fetchone("SELECT 1 FROM agents WHERE agent_id = ?", (agent_id,)) is not None


def released_sentence(released: int, left: int, wrong_clock: str, agent_id: str | None) -> str:
    """What ``release_held`` did, for the operator who asked (``POST /v1/quarantine/release``, the command)."""
    whose = "every store" if agent_id is None else agent_id
    if released + left == 0:
        return f"Nothing of {whose} is held that the hub could not attribute to its own clock; nothing was changed."
    how = (
        "each at its own time (the hub's clock was the wrong one)" if wrong_clock == WRONG_HUB
        else "each at the hub's time of receipt (the store's clock was the wrong one)"
    )  # fmt: skip
    stay = (
        f"; {left:,} stay pending for one by one (GET /v1/quarantine): outside the clock window even by the "
        "store's clock, without the store's clock, or refused" if left and wrong_clock == WRONG_HUB
        else f"; {left:,} stay pending, refused by the ingest (GET /v1/quarantine)" if left
        else ""
    )  # fmt: skip
    return f"Applied {released:,} held movement(s) of {whose}, {how}{stay}."


class UnknownAgent(InvalidInput):
    """``release_held`` for an agent this hub does not know."""


class ClocksDisagree(InvalidInput):
    """The held events' stores put the hub's clock off by amounts too far apart for "the hub's clock was wrong"
    to hold for all of them (``release_held``)."""


async def check_one_hub_offset(db: Db) -> None:
    """``ClocksDisagree`` unless the stores of the pending events the hub could not attribute put its clock off by
    about one amount when they sent them (by their average skew, within HUB_CLOCK_AGREE_MS): the hub's clock is
    off by one amount at a time."""
    rows = await db.fetch(
        "SELECT agent_id, AVG(received_at_ms - sent_ms) FROM quarantine WHERE status = 'pending' "
        "AND hub_clock_off_ms IS NULL AND sent_ms IS NOT NULL GROUP BY agent_id",
        (),
    )
    skews = sorted((int(avg), agent_id) for agent_id, avg in rows)
    if len(skews) < 2 or skews[-1][0] - skews[0][0] <= HUB_CLOCK_AGREE_MS:
        return

    def put(skew_ms: int) -> str:
        if abs(skew_ms) < HUB_CLOCK_OFF_MS:
            return "right"
        return f"{span(skew_ms)} {'ahead' if skew_ms > 0 else 'behind'}"

    (low, low_agent), (high, high_agent) = skews[0], skews[-1]
    raise ClocksDisagree(
        f"the held movements' stores put the hub's clock {put(high)} ({high_agent}) and {put(low)} ({low_agent}) "
        "when they sent them: it cannot have been wrong by both; release them store by store (agent_id), and those "
        "of a store whose clock was the wrong one with wrong_clock store; nothing was changed"
    )


class StoresSidedWithHub(InvalidInput):
    """An admin's "the hub's clock was the wrong one" for held events the hub held while the other stores put its
    clock right (``QuarantineRow.hub_clock_vouched``: the store's clock was the odd one; ``release_held``)."""


async def check_not_vouched(db: Db, agent_id: str | None) -> None:
    """``StoresSidedWithHub`` when any pending event the hub could not attribute to its own clock (of ``agent_id``,
    or of every store) was held while more than half of the other stores that synced lately put the hub's clock
    right: what the stores said then contradicts "the hub's clock was the wrong one"."""
    where = Where("status = 'pending'", "hub_clock_off_ms IS NULL", "hub_clock_vouched IS NOT NULL")
    where.add("agent_id = ?", agent_id)
    rows = await db.fetch(
        f"SELECT agent_id, COUNT(*), MIN(hub_clock_vouched) FROM quarantine{where.sql} GROUP BY agent_id "
        "ORDER BY agent_id",
        tuple(where.params),
    )
    if not rows:
        return
    which = ", ".join(f"{int(n):,} of {a} (at least {int(v):,} other store(s) sided with the hub)" for a, n, v in rows[:5])
    if len(rows) > 5:
        which += f" and those of {len(rows) - 5:,} more stores"
    raise StoresSidedWithHub(
        f"the other stores that synced when the hub held {which} put the hub's clock right then: the store's clock "
        "was the odd one, not the hub's; release them with wrong_clock store (at the hub's time of receipt), or "
        "resolve them one by one (POST /v1/quarantine/{id}); an admin sure the hub's clock was wrong all the same "
        'releases one store\'s with {"wrong_clock": "hub", "agent_id", "override_vouched": true}; nothing was '
        "changed"
    )


OVERRIDE_RULE = (
    'override_vouched must be true, and goes only with {"wrong_clock": "hub"} and one store\'s "agent_id": it '
    "releases that store's held movements at their own time although the other stores put the hub's clock right "
    "when they were held"
)


async def vouched_of(db: Db, agent_id: str | None) -> tuple[int, int]:
    """How many pending events the hub could not attribute to its own clock (of ``agent_id``, or every store's)
    were held while other stores put the hub's clock right, and the most stores that did for one of them."""
    where = Where("status = 'pending'", "hub_clock_off_ms IS NULL", "hub_clock_vouched IS NOT NULL")
    where.add("agent_id = ?", agent_id)
    row = await db.fetchone(f"SELECT COUNT(*), MAX(hub_clock_vouched) FROM quarantine{where.sql}", tuple(where.params))
    return (0, 0) if row is None or not row[0] else (int(row[0]), int(row[1]))


def check_wrong_clock(wrong_clock: object) -> None:
    if wrong_clock not in WRONG_CLOCKS:
        raise InvalidInput(f"wrong_clock must be one of {', '.join(WRONG_CLOCKS)}, got {str(wrong_clock)[:40]!r}")


def sender_skew(row: QuarantineRow) -> int | None:
    """How far the hub's clock was off its sender's when it received the event (None: the sender did not say)."""
    return None if row.sent_ms is None else row.received_at_ms - row.sent_ms


def stays_sentence(stays: dict[str, int], first_refusal: str) -> str:
    """What a release left pending and why, by how many (``stays``: reason -> count), as the end of a sentence."""
    left = sum(stays.values())
    if not left:
        return "none stay for an operator"
    outside = {rule: stays.get(rule, 0) for rule in (AHEAD, BEHIND, BEFORE_AGENT)}
    parts = []
    if sum(outside.values()):
        rules = ", ".join(f"{n:,} {words}" for rule, words in (
            (AHEAD, "ahead of it"), (BEHIND, "behind it"), (BEFORE_AGENT, "before their credential")
        ) if (n := outside[rule]))  # fmt: skip
        parts.append(f"{sum(outside.values()):,} outside the clock window even by the corrected clock ({rules})")
    if stays.get(NO_CLOCK):
        parts.append(f"{stays[NO_CLOCK]:,} whose sender did not say its clock when it sent them")
    if stays.get(REFUSED):
        parts.append(f"{stays[REFUSED]:,} refused by the ingest (the first: {first_refusal})")
    return f"{left:,} stay for an operator: {', '.join(parts)}"


def released(row: QuarantineRow, operator: str) -> tuple[AgentIdentity, StockEvent]:
    """The held event as a release ingests it: at its own stamp, the operator (``hub``: released by itself) and
    how far the hub's clock was off in attrs, sent as its agent for its own location."""
    attrs = dict(row.attrs) | {RELEASED_BY_ATTR: operator, HUB_CLOCK_OFF_ATTR: row.hub_clock_off_ms}
    try:
        event = StockEvent(
            event_id=row.event_id, agent_id=row.agent_id, epoch=row.epoch, seq=row.seq, location=row.location,
            sku=row.sku, kind=row.kind, qty=row.qty, occurred_at=row.occurred_at, wall_ms=row.wall_ms,
            source=row.source, ref=row.ref, reason=row.reason, attrs=attrs,
        )  # fmt: skip
    except ProtocolError as err:
        raise InvalidInput(f"held event {row.quarantine_id} cannot be released ({err})") from err
    return AgentIdentity(row.agent_id, frozenset({row.location})), event


async def created_ms(db: Db, agent_id: str) -> int | None:
    row = await db.fetchone("SELECT created_ms FROM agents WHERE agent_id = ?", (agent_id,))
    return None if row is None else row[0]
