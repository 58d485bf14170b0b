"""The values of a staff session: what is opened, each line scanned or keyed, and the report on close.

A session is one document a person works through on a handheld or at a
back-office scanner: a delivery received, a cycle count, a transfer shipped or
received, a customer return, a write-off. Its lines are kept until it is
closed; closing turns them into stock events (``agent.sessions.plan``).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from agent.sessions.errors import InvalidSessionInput
from protocol import values
from protocol.event import (
    BOOK_OUT_REASON,
    LOCATION_MAX_LEN,
    QTY_MAX,
    REASON_MAX_LEN,
    REF_MAX_LEN,
    SKU_MAX_LEN,
    Kind,
    book_out_ref_problem,
)

if TYPE_CHECKING:
    from hardware import Decoded

STAFF_ID_MAX_LEN = values.STAFF.max_len
READER_ID_MAX_LEN = 64
BIN_MAX_LEN = 64
SCOPE_SKUS_MAX = 5000
EXPECTED_LINES_MAX = 5000
WRITE_OFF_REASON_DEFAULT = "damaged"

_CODE_RE = values.CODE_RE  # location codes, as the protocol checks them


class SessionType(StrEnum):
    RECEIVE = "receive"  # a delivery: receive events, optionally checked against the expected lines
    COUNT = "count"  # a cycle count of a list of SKUs or a bin: count events
    TRANSFER_OUT = "transfer_out"  # shipped to another location under a transfer reference
    TRANSFER_IN = "transfer_in"  # received from another location against that reference
    RETURN = "return"  # a customer return: restocked, or damaged (returned, then written off)
    WRITE_OFF = "write_off"  # damage, expiry, theft …: adjust events with the session's reason


class SessionStatus(StrEnum):
    OPEN = "open"
    CLOSING = "closing"  # the close was decided and its events are being (or were) recorded
    CLOSED = "closed"
    CANCELLED = "cancelled"


class Disposition(StrEnum):
    """What happens to a returned item (return sessions only)."""

    RESTOCK = "restock"  # back on the shelf: one return event
    DAMAGED = "damaged"  # a return event, then an adjust event with reason "damaged"


ACTIVE_STATUSES = (SessionStatus.OPEN, SessionStatus.CLOSING)


@dataclass(frozen=True, slots=True)
class ExpectedLine:
    """One line of an expected delivery: ``qty`` units of ``sku``."""

    sku: str
    qty: int

    def __post_init__(self) -> None:
        check_sku(self.sku, "expected sku")
        check_qty(self.qty, "expected qty", minimum=1)


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """What a person opens: the session type and its document fields."""

    type: SessionType
    ref: str | None = None  # delivery note, transfer reference, return receipt …
    to_location: str | None = None  # transfer_out: the receiving location
    from_location: str | None = None  # transfer_in: the shipping location, if known
    reason: str | None = None  # write_off: damaged (default), expired, theft …
    scope_skus: tuple[str, ...] = ()  # count: the SKUs to count
    bin: str | None = None  # count: the bin counted (attrs {"bin": …} on its events)
    expected: tuple[ExpectedLine, ...] = ()  # receive: the expected delivery's lines
    reader_id: str | None = None  # a back-office scanner that feeds this session

    def __post_init__(self) -> None:
        try:
            kind = SessionType(self.type)
        except ValueError:
            known = ", ".join(t.value for t in SessionType)
            raise InvalidSessionInput(
                f"unknown session type {str(self.type)[:40]!r}; known types are {known}"
            ) from None
        object.__setattr__(self, "type", kind)
        _check_spec(self)


def _check_spec(s: SessionSpec) -> None:
    t = s.type
    if s.ref is not None:
        check_text(s.ref, "ref", REF_MAX_LEN)
    if t in (SessionType.TRANSFER_OUT, SessionType.TRANSFER_IN) and not s.ref:
        raise InvalidSessionInput(f"a {t.value} session needs the transfer reference (ref) that pairs both sides")
    _only(s, "to_location", s.to_location is not None, t is SessionType.TRANSFER_OUT)
    _only(s, "from_location", s.from_location is not None, t is SessionType.TRANSFER_IN)
    _only(s, "reason", s.reason is not None, t is SessionType.WRITE_OFF)
    _only(s, "scope_skus", bool(s.scope_skus), t is SessionType.COUNT)
    _only(s, "bin", s.bin is not None, t is SessionType.COUNT)
    _only(s, "expected", bool(s.expected), t is SessionType.RECEIVE)
    if t is SessionType.TRANSFER_OUT:
        if s.to_location is None:
            raise InvalidSessionInput("a transfer_out session needs the receiving location (to_location)")
        check_location(s.to_location, "to_location")
    if s.from_location is not None:
        check_location(s.from_location, "from_location")
    if t is SessionType.WRITE_OFF:
        object.__setattr__(s, "reason", check_text(s.reason or WRITE_OFF_REASON_DEFAULT, "reason", REASON_MAX_LEN))
        if book_out_ref_problem(Kind.ADJUST, s.reason, s.ref) is not None:  # the handheld page asks the same
            raise InvalidSessionInput(
                f"a write_off session with the reason {BOOK_OUT_REASON!r} books out goods of a transfer received"
                " here by mistake: give the transfer's reference (ref) as on its papers, so the hub knows which"
                " receipt it books out"
            )
    if t is SessionType.COUNT and not s.scope_skus and s.bin is None:
        raise InvalidSessionInput("a count session needs its scope: a list of SKUs (scope_skus) or a bin")
    if len(s.scope_skus) > SCOPE_SKUS_MAX:
        raise InvalidSessionInput(f"a count may list at most {SCOPE_SKUS_MAX} SKUs, got {len(s.scope_skus)}")
    for sku in s.scope_skus:
        check_sku(sku, "scope sku")
    object.__setattr__(s, "scope_skus", tuple(dict.fromkeys(s.scope_skus)))
    if s.bin is not None:
        object.__setattr__(s, "bin", check_text(s.bin, "bin", BIN_MAX_LEN).strip())
    if len(s.expected) > EXPECTED_LINES_MAX:
        raise InvalidSessionInput(f"a delivery may list at most {EXPECTED_LINES_MAX} lines, got {len(s.expected)}")
    seen: set[str] = set()
    for line in s.expected:
        if line.sku in seen:
            raise InvalidSessionInput(f"the expected delivery lists {line.sku!r} twice; give each SKU once")
        seen.add(line.sku)
    if s.reader_id is not None:
        check_text(s.reader_id, "reader_id", READER_ID_MAX_LEN)


def _only(s: SessionSpec, name: str, given: bool, allowed: bool) -> None:
    if given and not allowed:
        raise InvalidSessionInput(f"{name} does not apply to a {s.type.value} session")


def check_text(value: object, name: str, max_len: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidSessionInput(f"{name} must be non-empty text")
    if len(value) > max_len:
        raise InvalidSessionInput(f"{name} is {len(value)} characters long; the limit is {max_len}")
    if not values.is_text(value):  # the one rule for text (protocol.values), as the hub checks it
        raise InvalidSessionInput(f"{name} must not contain control characters, line separators or lone surrogates")
    return value


def bin_key(name: str) -> str:
    """What one bin is known by, however its name was typed: its compatibility form (full-width "Ａ-01" is "A-01"),
    without the invisible format characters a phone keyboard or a paste adds, its white space run together and its
    case folded. A bin counted again as "a-01" or "A-01 " was taken for another bin of the SKU's round of bin counts,
    and the units it held were added to the count again (``agent.sessions.bins``)."""
    text = "".join(c for c in unicodedata.normalize("NFKC", name) if unicodedata.category(c) != "Cf")
    return " ".join(text.split()).casefold()


def ref_key(ref: str) -> str:
    """What one document reference is known by, however it was typed (as ``bin_key``): "dn-9000 ", full-width
    "ＤＮ-９０００" are DN-9000. Only matched by "dn-9000 " before, a delivery note typed full-width opened a second
    session for the same goods, which were booked twice (``agent.sessions.store``)."""
    return bin_key(ref)


def check_ref(ref: str) -> str:
    """Refuse a document reference holding an invisible format character (as ``check_bin_name``): it is stored and
    sent to the hub as typed, so one delivery note was two references there. Checked at a session's open."""
    hidden = next((c for c in ref if unicodedata.category(c) == "Cf"), None)
    if hidden is None:
        return ref
    what = unicodedata.name(hidden, "a format character")
    raise InvalidSessionInput(
        f"ref {values.shown(ref, 40)} holds an invisible character (U+{ord(hidden):04X} {what}), so it reads as"
        " another document than the one kept; type the reference as it is printed, without it"
    )


def check_bin_name(name: str) -> str:
    """Refuse a bin name holding an invisible format character (a zero-width space or joiner, a byte-order mark, a
    soft hyphen, a direction mark, embedding, override or isolate): ``bin_key`` compares it without them, but it is
    stored and sent to the hub as typed, so one bin was two names there, and an override showed another name than
    the one kept. Checked at a count's open (sessions stored before are read as they are)."""
    hidden = next((c for c in name if unicodedata.category(c) == "Cf"), None)
    if hidden is None:
        return name
    what = unicodedata.name(hidden, "a format character")
    raise InvalidSessionInput(
        f"bin {values.shown(name, 40)} holds an invisible character (U+{ord(hidden):04X} {what}), so it reads as"
        " another bin than the one kept; type the bin name as it is written on the shelf, without it"
    )


def check_sku(value: object, name: str = "sku") -> str:
    return check_text(value, name, SKU_MAX_LEN)


def check_location(value: object, name: str) -> str:
    if not isinstance(value, str) or len(value) > LOCATION_MAX_LEN or not _CODE_RE.fullmatch(value):
        raise InvalidSessionInput(
            f"{name} must be a location code (letters, digits, '.', '_', '-'; at most {LOCATION_MAX_LEN}),"
            f" got {str(value)[:40]!r}"
        )
    return value


def check_staff(value: object) -> str:
    if not isinstance(value, str) or not values.STAFF.valid(value):  # the one rule (protocol.values), as at login
        raise InvalidSessionInput(
            f"a staff id is letters, digits, '.', '_' or '-' (at most {STAFF_ID_MAX_LEN}), got {str(value)[:40]!r}"
        )
    return value


SCAN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_scan_id(value: object) -> str:
    if not isinstance(value, str) or not SCAN_ID_RE.fullmatch(value):
        raise InvalidSessionInput(
            f"scan_id must be 1 to 64 letters, digits, '-' or '_', got {values.shown(repr(value), 40, bare=True)}"
        )
    return value


def check_qty(value: object, name: str = "qty", *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= QTY_MAX:
        got = values.shown(repr(value), values.QUOTE_MAX_CHARS, bare=True)  # a 1 MB string is not echoed whole
        raise InvalidSessionInput(f"{name} must be a whole number from {minimum} to {QTY_MAX}, got {got}")
    return value


@dataclass(frozen=True, slots=True)
class Session:
    """A session as stored: its spec, who opened it, where it stands."""

    id: str
    spec: SessionSpec
    location: str
    status: SessionStatus
    by: str  # the staff id who opened it; attrs {"by": …} on its events
    opened_ms: int
    close_hlc: int | None = None  # the HLC the close was decided at (deltas are stamped with it)
    zero_unscanned: bool = False  # count: SKUs in scope never scanned were closed as counted 0
    closed_by: str | None = None
    closed_ms: int | None = None
    report: CloseReport | None = None

    @property
    def type(self) -> SessionType:
        return self.spec.type

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass(frozen=True, slots=True)
class Line:
    """One scan or keyed quantity. Undone lines are kept (marked) for the record, and count for nothing."""

    session_id: str
    no: int  # 1, 2, … within the session
    sku: str
    qty: int  # base units (a case barcode counts its pack size); a count line may be 0 ("none here")
    hlc: int  # packed HLC when it was scanned: a count is stamped at its SKU's last scan
    at_ms: int
    by: str
    source: str  # "handheld", "keyed" or "scanner:<reader id>"
    barcode: str | None = None
    pack_size: int = 1
    disposition: Disposition | None = None  # return sessions only
    unknown: bool = False  # the catalog did not know the barcode; sku is "unknown:" + its key
    undone: bool = False
    # A back-office scanner's line of a quantity a handheld would have been asked about (``UnlikelyQuantity``): the
    # sentence it would have been asked. Held (stored undone, so it counts for nothing, and an older agent never
    # books it) until a person confirms it (it counts) or rejects it (kept undone); ``decided_by`` says who, and
    # ``rejected`` which (a line confirmed may be undone later, as any line: undone, and still not rejected).
    held: str | None = None
    decided_by: str | None = None
    rejected: bool = False

    @property
    def pending(self) -> bool:
        """Held, and neither confirmed nor rejected yet: the session cannot be closed."""
        return self.held is not None and self.decided_by is None


@dataclass(frozen=True, slots=True)
class Total:
    """The effective lines of one SKU (and, for returns, one disposition)."""

    sku: str
    qty: int
    lines: int
    last_hlc: int  # the HLC of its last effective line
    disposition: Disposition | None = None


@dataclass(frozen=True, slots=True)
class ReportLine:
    """One SKU in the close report.

    Receive: status "ok", "over", "short" or "unexpected" (``expected`` None);
    count: "counted", "zero_filled" or "not_counted" (in scope, never scanned,
    and not closed as zero: no event). Other sessions: "booked".
    """

    sku: str
    status: str
    qty: int  # units received / counted / moved
    expected: int | None = None

    @property
    def difference(self) -> int | None:
        return None if self.expected is None else self.qty - self.expected


@dataclass(frozen=True, slots=True)
class BinNote:
    """A bin count's booked count of a SKU that rests on an assumption about movements between its round's bin
    counts (``agent.sessions.bins.Moved``), told to the staff closing it: ``message`` says it with the numbers and
    what to do."""

    sku: str
    bin: str  # the bin counted now
    since: str  # the bin whose count the movements came after
    before: tuple[str, ...]  # the round's bins counted before the movements, first first (``since`` last)
    between: tuple[str, ...]  # the round's bins counted since ``since``: before or after each movement
    put_in: tuple[tuple[str, int], ...]  # units put in since, per word ("received", …): assumed in ``bin``
    taken: tuple[tuple[str, int], ...]  # units taken out since, per word ("sold", …): assumed from ``before``
    message: str


@dataclass(frozen=True, slots=True)
class CountNote:
    """A count's booked count of a SKU that rests on an assumption: this agent booked movements of the SKU between
    the count's first scan of it and its last (a count left open overnight across the evening's sales), and the
    count is stamped at its last scan. ``message`` says it with the numbers and what to do."""

    sku: str
    moved: tuple[tuple[str, int], ...]  # units moved in between, per word ("sold", "received", …), as positive numbers
    message: str


@dataclass(frozen=True, slots=True)
class CloseReport:
    events: int  # stock events the close recorded
    units: int  # base units moved (counted, for a count)
    lines: tuple[ReportLine, ...] = field(default_factory=tuple)
    bin_notes: tuple[BinNote, ...] = field(default_factory=tuple)  # a bin count's assumptions, per SKU
    count_notes: tuple[CountNote, ...] = field(default_factory=tuple)  # movements between a SKU's scans, per SKU

    def with_status(self, status: str) -> tuple[ReportLine, ...]:
        return tuple(line for line in self.lines if line.status == status)


@dataclass(frozen=True, slots=True)
class Refused:
    """A movement a closed session booked that the hub refused (set aside in the outbox), and its reason."""

    session_id: str
    sku: str
    kind: str
    qty: int
    code: str  # the hub's rejection code (invalid_bundle, …)
    reason: str  # the hub's sentence
    refused_ms: int
    event_id: str = ""  # the refused movement's id (UUID text): what the staff dismiss it from the home screen by


@dataclass(frozen=True, slots=True)
class Unstored:
    """A back-office scanner's scan its session could not store (the disk is full), kept in the agent's memory for the
    session's page: nobody at the scanner reads the agent's log, and the close booked the delivery short by it.
    Sent again from the page once there is room (``SessionManager.send_unstored``), by ``scan_id``: never twice."""

    scan_id: str  # minted when it was refused (nothing of it was stored then)
    code: str  # the scan as the scanner sent it
    source: str  # scanner:<id>
    at_ms: int
    why: str  # the agent's sentence: the disk is full …; free disk space, then send it again
    decoded: Decoded | None = None  # the scanner's decoded barcode, added with it again; never shown


@dataclass(frozen=True, slots=True)
class NotAdded:
    """A bound back-office scanner's scan its session did not take (cut off, a wrong check digit, outside a count's
    scope …), kept in the agent's memory for the session's page until someone marks it seen: the scanner beeped at
    it, nobody at it reads the agent's log, and the session was closed short by it."""

    code: str  # the scan as the scanner sent it
    source: str  # scanner:<id>
    at_ms: int
    why: str  # the agent's sentence, which says what to do


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session with its lines (newest last) and its running totals."""

    session: Session
    lines: tuple[Line, ...]
    totals: tuple[Total, ...]
    preview: tuple[ReportLine, ...]  # what closing now would report (receive: over/short so far)
    refused: tuple[Refused, ...] = ()  # after its close: what of it the hub refused
    held: tuple[Line, ...] = ()  # lines held for a person to confirm or reject (``Line.pending``), oldest first
    unstored: tuple[Unstored, ...] = ()  # a bound scanner's scans a full disk refused, oldest first (``Unstored``)
    not_added: tuple[NotAdded, ...] = ()  # a bound scanner's scans it did not take, newest first (``NotAdded``)
