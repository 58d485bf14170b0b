"""The msgpack wire codec for sync requests (agent → hub) and answers.

Every message is a msgpack map with ``"v": WIRE_VERSION``. Decoding is strict:
anything that is not exactly the contract raises one ``ProtocolError`` whose
message names the field. A request whose envelope is sound but some of whose
events are not raises ``BadEvents``, which lists every bad event, so the hub
can answer all of them at once and the agent can set exactly those aside.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from protocol.errors import ProtocolError
from protocol.event import (
    _AGENT_RE,
    _REQUIRED_WIRE_FIELDS,
    _WIRE_FIELD_SET,
    AGENT_ID_MAX_LEN,
    EPOCH_MAX,
    SEQ_MAX,
    StockEvent,
    _check_int,
    _check_str,
    _event_from_wire_checked,
    _plain_event,
    columns_of,
    event_to_wire,
    events_from_columns,
    events_to_columns,
)
from protocol.ids import EVENT_ID_BYTES

WIRE_VERSION = 1
CHAIN_BYTES = 16  # a lineage digest (blake2b, digest_size 16)
MAX_BATCH_EVENTS = 10_000
MAX_COUNTS = 100_000
MSGPACK_CONTENT_TYPE = "application/msgpack"
# An agent's disk with less room than this, its reserve spent, is full: a step of the agent's disk reserve
# (agent.reserve.STEP_BYTES), room for a few thousand scans.
DISK_ROOM_BYTES = 1 << 20
DISK_STATES = ("ok", "reserve_in_use", "full")
# The latest wall ms a LostReport's found_ms may say (far beyond year 6000, as protocol.reports' times): the hub
# writes it as a date, and a clock a century wrong is still one.
LOST_FOUND_MS_MAX = (1 << 47) - 1


def chain_link(previous: bytes, event_id: bytes) -> bytes:
    """The lineage digest of an outbox row (agent.outbox): its predecessor's digest and its event id, hashed."""
    return hashlib.blake2b(previous + event_id, digest_size=CHAIN_BYTES).digest()


_CHAIN_HASH = hashlib.blake2b(digest_size=CHAIN_BYTES)  # copied for each link: a third faster than made anew


def chain_over(start: bytes, event_ids: Iterable[bytes]) -> bytes:
    """The lineage digest after rows with these event ids, in order, following a row whose digest is ``start``
    (``chain_link`` of each in turn)."""
    new, chain = _CHAIN_HASH.copy, start
    for event_id in event_ids:
        link = new()
        link.update(chain + event_id)
        chain = link.digest()
    return chain


@dataclass(frozen=True, slots=True)
class DiskReport:
    """A store agent's report of the disk its outbox is on (agent.reserve), sent with each sync request.

    ``reserve_bytes``: the disk reserve configured (0: none); ``reserve_held_bytes``: how much of it is on disk now;
    ``free_bytes``: the free bytes of the outbox's file system (None: could not be read); ``refused_ms``: the
    agent's wall ms of a write the disk refused for want of room when no write storing rows in that file has
    succeeded since (None: the disk took the agent's last such write, or its reserve is whole again)."""

    reserve_bytes: int
    reserve_held_bytes: int
    free_bytes: int | None = None
    refused_ms: int | None = None

    @property
    def state(self) -> str:
        """``full``: the disk refuses the agent's writes, or its reserve is spent and less than ``DISK_ROOM_BYTES``
        are free (scans the disk refuses are refused); ``reserve_in_use``: the disk was full and the reserve is not
        whole (scans are stored in the room it gave back; it is made whole once there is room for it twice over);
        ``ok``: neither."""
        if self.refused_ms is not None:
            return "full"
        if self.reserve_held_bytes < self.reserve_bytes:
            spent = self.reserve_held_bytes == 0 and (self.free_bytes is None or self.free_bytes < DISK_ROOM_BYTES)
            return "full" if spent else "reserve_in_use"
        return "ok"


@dataclass(frozen=True, slots=True)
class LostReport:
    """A store agent's report of movements the hub had acknowledged and lacks now (its database restored from a
    copy older than them), which the agent's outbox no longer holds (retention purged them, or they were
    acknowledged to the agent id it had before a rebind): sent with each sync request until a hub takes it
    (agent.outbox ``hub_lacks``). The hub cannot know their SKUs: the store's stock must be counted again.

    ``first_seq``..``last_seq``: their seqs in ``epoch``; ``count``: how many (``at_least``: a lower bound, after a
    rebind); ``found_ms``: the agent's wall ms when it found them lacking; ``of_agent``: the agent id they were
    acknowledged to when it is not the sender's (a rebind; None: the sender's)."""

    first_seq: int
    last_seq: int
    count: int
    found_ms: int
    epoch: int
    at_least: bool = False
    of_agent: str | None = None


@dataclass(frozen=True, slots=True)
class SyncRequest:
    agent_id: str
    epoch: int
    events: tuple[StockEvent, ...]
    acked_seq: int = 0  # the agent's acknowledged mark, for the hub to compare with its own
    backlog: int | None = None  # events in the outbox not yet acknowledged, this batch included
    oldest_pending_ms: int | None = None  # wall ms of the oldest of them (None when the backlog is empty)
    # The outbox's lineage (see agent.outbox): the chain digest at the last seq sent (at acked_seq for a
    # request without events); the seq this epoch continues from and the chain there. None: not sent.
    chain: bytes | None = None
    epoch_base: int | None = None
    base_chain: bytes | None = None
    sent_ms: int | None = None  # the agent's wall clock when it sent this request: the hub measures its skew from it
    follows_feed: bool = False  # the agent follows the change feed: answer ``change_id`` (older agents refuse it)
    # The seq this batch's events follow on from (the end of a batch sent before it and not yet answered): the
    # hub raises its mark over the batch only when its mark is at least this. None: follows the acknowledged
    # mark. Sent only to a hub whose answers carry ``PIPELINE_HEADER`` (older hubs refuse the field).
    after_seq: int | None = None
    # The disk the outbox is on (DiskReport). None: not sent (an agent from before it, or to a hub that refused it).
    disk: DiskReport | None = None
    # Movements the hub lacks for good (LostReport). None: none known, not sent (an older agent, or a hub refused it).
    lost: LostReport | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """One event the hub will not apply, and why. ``code`` is machine-readable."""

    event_id: bytes
    seq: int
    code: str  # "invalid", "forbidden_location", "conflict", "invalid_transfer", "quarantined" (held, not final) ...
    reason: str


class CountSnapshot(NamedTuple):
    """One (location, sku)'s counts as the hub resolved them. A named tuple: a hub builds hundreds per
    batch, and a tuple is built in one step where a frozen dataclass sets its slots one by one."""

    location: str
    sku: str
    on_hand: int
    reserved: int
    available: int
    in_transit: int = 0


@dataclass(frozen=True, slots=True)
class SyncResponse:
    agent_id: str
    epoch: int
    hwm: int  # the highest seq of this agent and epoch the hub has committed
    rejected: tuple[Rejection, ...] = ()
    duplicates: int = 0
    counts: tuple[CountSnapshot, ...] = ()
    server_time_ms: int = 0
    chain: bytes | None = None  # the hub's chain digest at hwm; None: unknown (a mark from before chains)
    held: int | None = None  # this agent's events the hub holds for an operator (clock quarantine); None: not said
    # The change feed's position as of this commit: the newest change_id committed up to and including it, so
    # ``counts`` are those keys' values as of that change (protocol.feed). None: not said.
    change_id: int | None = None


@dataclass(frozen=True, slots=True)
class BadEvent:
    index: int
    event_id: bytes | None
    seq: int | None
    reason: str


class BadEvents(ProtocolError):
    """A sound envelope carrying events that break the contract."""

    def __init__(self, bad: list[BadEvent], agent_id: str, epoch: int) -> None:
        self.bad = tuple(bad)
        self.agent_id = agent_id
        self.epoch = epoch
        first = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        super().__init__(f"{len(bad)} event(s) are invalid; first: {first.reason}{more}")


def _unpack(data: bytes, what: str) -> Any:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"the {what} body must be bytes")
    if not data:
        raise ProtocolError(f"the {what} body is empty; expected a msgpack map")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData:
        raise ProtocolError(f"the {what} body has bytes after the end of the msgpack message") from None
    except msgpack.StackError:
        raise ProtocolError(f"the {what} body is nested too deeply") from None
    except (ValueError, msgpack.FormatError, TypeError) as err:
        detail = "is truncated" if "incomplete" in str(err).lower() else "is not valid msgpack"
        raise ProtocolError(f"the {what} body {detail} ({err})") from None


def _envelope(obj: Any, what: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ProtocolError(f"the {what} must be a msgpack map, got {type(obj).__name__}")
    version = obj.get("v")
    if version != WIRE_VERSION:
        raise ProtocolError(f"unsupported wire version {version!r}; this side speaks version {WIRE_VERSION}", field="v")
    _no_unknown(obj, keys, what)
    return obj


def _no_unknown(obj: Mapping[Any, Any], keys: set[str], field: str) -> None:
    unknown = set(obj) - keys
    if unknown:
        raise ProtocolError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))[:80]}", field=field)


def _sub_map(raw: Any, field: str, keys: set[str]) -> dict[Any, Any]:
    """``raw``, a map of a sync request's optional field ``field`` (``disk``, ``lost``) holding only ``keys``."""
    if type(raw) is not dict:
        raise ProtocolError(f"must be a map, got {type(raw).__name__}", field=field)
    _no_unknown(raw, keys, field)
    return raw


def encode_events(events: tuple[StockEvent, ...] | list[StockEvent], *, as_columns: bool = True) -> bytes:
    """The events of a sync request, packed on their own (``encode_sync_request(..., packed_events=)``): a
    sender can pack the next batch while the one before it is on its way. ``as_columns``: its ``columns``
    (``protocol.event.events_to_columns``); else its ``events``, one map per event, as agents before the
    columns sent. No events pack as an empty ``events`` list either way."""
    data: bytes = msgpack.packb(
        events_to_columns(events) if as_columns and events else [event_to_wire(ev) for ev in events],
        use_bin_type=True,
    )
    return data


_NO_EVENTS: bytes = msgpack.packb([])  # what encode_events packs for no events, either way


class EventsPacker:
    """Packs the events of one sync request a part at a time: ``add`` the parts in order, then ``finish()`` is
    exactly what ``encode_events`` packs for all of them at once. A sender then holds a batch as its packed
    bytes, never more than one part of it as events (agent.replicator)."""

    def __init__(self, *, as_columns: bool = True) -> None:
        self.as_columns = as_columns
        self.events = 0  # events added so far
        self.nbytes = 0  # their packed size so far
        self._values: dict[str, bytearray] = {}  # per column (one list, "", for maps): its values, packed
        self._optional: set[str] = set()  # the optional columns (protocol.event.columns_of)
        self._filled: set[str] = set()  # … that hold a value other than None: sent

    def add(self, events: tuple[StockEvent, ...] | list[StockEvent]) -> None:
        if not events:
            return
        if self.as_columns:
            cols, optional = columns_of(events)
            for name, col in cols.items():
                self._append(name, col)
            for name, col in optional.items():
                self._append(name, col)
                self._optional.add(name)
                if name not in self._filled and any(v is not None for v in col):
                    self._filled.add(name)
        else:
            self._append("", [event_to_wire(ev) for ev in events])
        self.events += len(events)

    def _append(self, name: str, values: list[Any]) -> None:
        packed = msgpack.packb(values, use_bin_type=True)
        header = len(msgpack.Packer().pack_array_header(len(values)))
        self._values.setdefault(name, bytearray()).extend(memoryview(packed)[header:])
        self.nbytes += len(packed) - header

    def finish(self) -> bytes:
        """The packed events (the packer is empty afterwards)."""
        values, self._values = self._values, {}
        if not self.events:
            return _NO_EVENTS
        packer = msgpack.Packer(use_bin_type=True)
        if not self.as_columns:
            return b"".join([packer.pack_array_header(self.events), values[""]])
        names = [name for name in values if name not in self._optional or name in self._filled]
        parts = [packer.pack_map_header(len(names))]
        for name in names:
            parts += [packer.pack(name), packer.pack_array_header(self.events), values.pop(name)]
        return b"".join(parts)


def encode_sync_request(req: SyncRequest, packed_events: bytes | None = None, *, as_columns: bool = True) -> bytes:
    """``req`` as msgpack; ``packed_events``: ``encode_events(req.events, as_columns=…)`` (or an ``EventsPacker``'s)
    done beforehand (the same bytes; ``req.events`` is then not read and may be left empty)."""
    if packed_events is None:
        packed_events = encode_events(req.events, as_columns=as_columns)
    head = _request_head(req)
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_map_header(len(head) + 1)]
    for key, value in head.items():
        parts += [packer.pack(key), packer.pack(value)]
    key = "columns" if as_columns and packed_events != _NO_EVENTS else "events"
    return b"".join([*parts, packer.pack(key), packed_events])


def _request_head(req: SyncRequest) -> dict[str, Any]:
    """Every field of a request but its events, in wire order."""
    return {
        "v": WIRE_VERSION,
        "agent_id": req.agent_id,
        "epoch": req.epoch,
        "acked_seq": req.acked_seq,
        **({"backlog": req.backlog} if req.backlog is not None else {}),
        **({"oldest_pending_ms": req.oldest_pending_ms} if req.oldest_pending_ms is not None else {}),
        **({"chain": req.chain} if req.chain is not None else {}),
        **({"epoch_base": req.epoch_base} if req.epoch_base is not None else {}),
        **({"base_chain": req.base_chain} if req.base_chain is not None else {}),
        **({"sent_ms": req.sent_ms} if req.sent_ms is not None else {}),
        **({"follows_feed": True} if req.follows_feed else {}),
        **({"after_seq": req.after_seq} if req.after_seq is not None else {}),
        **({"disk": _disk_to_wire(req.disk)} if req.disk is not None else {}),
        **({"lost": _lost_to_wire(req.lost)} if req.lost is not None else {}),
    }


def _disk_to_wire(disk: DiskReport) -> dict[str, int]:
    return {
        "reserve_bytes": disk.reserve_bytes,
        "reserve_held_bytes": disk.reserve_held_bytes,
        **({"free_bytes": disk.free_bytes} if disk.free_bytes is not None else {}),
        **({"refused_ms": disk.refused_ms} if disk.refused_ms is not None else {}),
    }


_DISK_KEYS = {"reserve_bytes", "reserve_held_bytes", "free_bytes", "refused_ms"}


def _disk_from_wire(raw: Any) -> DiskReport:
    raw = _sub_map(raw, "disk", _DISK_KEYS)
    size = _check_int(raw.get("reserve_bytes"), "disk.reserve_bytes", 0, SEQ_MAX)
    # More held than configured (a reserve file left larger by hand) is the whole reserve, as the agent reads it.
    held = min(size, _check_int(raw.get("reserve_held_bytes"), "disk.reserve_held_bytes", 0, SEQ_MAX))
    free = raw.get("free_bytes")
    refused = raw.get("refused_ms")
    return DiskReport(
        size, held,
        None if free is None else _check_int(free, "disk.free_bytes", 0, SEQ_MAX),
        None if refused is None else _check_int(refused, "disk.refused_ms", 0, SEQ_MAX),
    )  # fmt: skip


def _lost_to_wire(lost: LostReport) -> dict[str, Any]:
    return {
        "first_seq": lost.first_seq,
        "last_seq": lost.last_seq,
        "count": lost.count,
        "found_ms": lost.found_ms,
        "epoch": lost.epoch,
        **({"at_least": True} if lost.at_least else {}),
        **({"of_agent": lost.of_agent} if lost.of_agent is not None else {}),
    }


_LOST_KEYS = {"first_seq", "last_seq", "count", "found_ms", "epoch", "at_least", "of_agent"}


def _lost_from_wire(raw: Any) -> LostReport:
    raw = _sub_map(raw, "lost", _LOST_KEYS)
    first = _check_int(raw.get("first_seq"), "lost.first_seq", 1, SEQ_MAX)
    last = _check_int(raw.get("last_seq"), "lost.last_seq", first, SEQ_MAX)
    count = _check_int(raw.get("count"), "lost.count", 1, last - first + 1)  # no more than the seqs it spans
    at_least = raw.get("at_least", False)
    if not isinstance(at_least, bool):
        raise ProtocolError("must be true or false", field="lost.at_least")
    of_agent = raw.get("of_agent")
    if of_agent is not None:
        of_agent = _check_str(of_agent, "lost.of_agent", AGENT_ID_MAX_LEN, _AGENT_RE, what="agent id")
    return LostReport(
        first, last, count, _check_int(raw.get("found_ms"), "lost.found_ms", 0, LOST_FOUND_MS_MAX),
        _check_int(raw.get("epoch"), "lost.epoch", 0, EPOCH_MAX), at_least, of_agent,
    )  # fmt: skip


_REQUEST_KEYS = {
    "v", "agent_id", "epoch", "acked_seq", "backlog", "oldest_pending_ms", "chain", "epoch_base", "base_chain", "events",
    "columns", "sent_ms", "follows_feed", "after_seq", "disk", "lost",
}  # fmt: skip


def _check_chain(value: Any, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, bytes) or len(value) != CHAIN_BYTES:
        raise ProtocolError(f"must be {CHAIN_BYTES} bytes or absent", field=name)
    return value


def _request_events(obj: Mapping[str, Any], agent_id: str, epoch: int) -> tuple[list[StockEvent], list[BadEvent]]:
    """A sync request's events, from its ``events`` (maps) or its ``columns``, and those that are bad."""
    raw_columns = obj.get("columns")
    if raw_columns is not None:
        if "events" in obj:
            raise ProtocolError("a sync request carries its events as events or as columns, not both", field="columns")
        columns = _columns(raw_columns)
        valid = events_from_columns(columns, agent_id, epoch)
        if valid is not None:
            return valid, []  # most bodies: every event valid, checked column by column
        # Some event is not: each one as the map it stands for, for the messages that name the bad ones.
        names = list(columns)
        raw_events: Any = [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    else:
        raw_events = obj.get("events")
        if not isinstance(raw_events, list):
            raise ProtocolError(f"must be a list, got {type(raw_events).__name__}", field="events")
        if len(raw_events) > MAX_BATCH_EVENTS:
            raise ProtocolError(
                f"holds {len(raw_events)} events; the limit per request is {MAX_BATCH_EVENTS}", field="events"
            )
    events: list[StockEvent] = []
    bad: list[BadEvent] = []
    for i, raw in enumerate(raw_events):
        if (plain := _plain_event(raw, agent_id, epoch)) is not None:  # most events: no name built for an error
            events.append(plain)
            continue
        try:
            events.append(_event_from_wire_checked(raw, agent_id, epoch, f"events[{i}]"))  # the plain path said no
        except ProtocolError as err:
            ident = raw.get("id") if isinstance(raw, Mapping) else None
            seq = raw.get("seq") if isinstance(raw, Mapping) else None
            bad.append(
                BadEvent(
                    index=i,
                    event_id=ident if isinstance(ident, bytes) and len(ident) == EVENT_ID_BYTES else None,
                    seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
                    reason=str(err),
                )
            )
    return events, bad


def _columns(raw: Any) -> dict[str, list[Any]]:
    """The ``columns`` of a sync request, their shape checked: known names, the required ones, lists of one
    length, at most ``MAX_BATCH_EVENTS`` events."""
    if type(raw) is not dict:
        raise ProtocolError(f"must be a map of one list per event field, got {type(raw).__name__}", field="columns")
    unknown = set(raw) - _WIRE_FIELD_SET
    if unknown:
        raise ProtocolError(f"unknown column(s) {', '.join(sorted(map(str, unknown)))[:80]}", field="columns")
    for name in _REQUIRED_WIRE_FIELDS:
        if name not in raw:
            raise ProtocolError("is missing: every event has one", field=f"columns.{name}")
    for name, col in raw.items():
        if type(col) is not list:
            raise ProtocolError(f"must be a list, got {type(col).__name__}", field=f"columns.{name}")
    n = len(raw["id"])
    if n > MAX_BATCH_EVENTS:
        raise ProtocolError(f"holds {n} events; the limit per request is {MAX_BATCH_EVENTS}", field="columns")
    for name, col in raw.items():
        if len(col) != n:
            raise ProtocolError(
                f"holds {len(col)} values and columns.id {n}: each column holds one value per event",
                field=f"columns.{name}",
            )
    return raw


def decode_sync_request(data: bytes) -> SyncRequest:
    """Decode and validate a sync request.

    Raises ``ProtocolError`` for a bad envelope and ``BadEvents`` (a subclass)
    when the envelope is sound but one or more events are not.
    """
    obj = _envelope(
        _unpack(data, "sync request"), "sync request", _REQUEST_KEYS
    )
    agent_id = _check_str(obj.get("agent_id"), "agent_id", AGENT_ID_MAX_LEN, _AGENT_RE, what="agent id")
    epoch = _check_int(obj.get("epoch"), "epoch", 0, EPOCH_MAX)
    acked_seq = _check_int(obj.get("acked_seq", 0), "acked_seq", 0, SEQ_MAX)
    backlog = obj.get("backlog")
    if backlog is not None:
        _check_int(backlog, "backlog", 0, SEQ_MAX)
    oldest_pending_ms = obj.get("oldest_pending_ms")
    if oldest_pending_ms is not None:
        _check_int(oldest_pending_ms, "oldest_pending_ms", 0, SEQ_MAX)
    chain = _check_chain(obj.get("chain"), "chain")
    epoch_base = obj.get("epoch_base")
    if epoch_base is not None:
        _check_int(epoch_base, "epoch_base", 0, SEQ_MAX)
    base_chain = _check_chain(obj.get("base_chain"), "base_chain")
    sent_ms = obj.get("sent_ms")
    if sent_ms is not None:
        _check_int(sent_ms, "sent_ms", 0, SEQ_MAX)
    follows_feed = obj.get("follows_feed", False)
    if not isinstance(follows_feed, bool):
        raise ProtocolError("must be true or false", field="follows_feed")
    after_seq = obj.get("after_seq")
    if after_seq is not None:
        _check_int(after_seq, "after_seq", 0, SEQ_MAX)
    disk = obj.get("disk")
    if disk is not None:
        disk = _disk_from_wire(disk)
    lost = obj.get("lost")
    if lost is not None:
        lost = _lost_from_wire(lost)
    events, bad = _request_events(obj, agent_id, epoch)
    if bad:
        raise BadEvents(bad, agent_id, epoch)
    seqs = [ev.seq for ev in events]
    if not all(map(operator.lt, seqs, itertools.islice(seqs, 1, None))):
        raise ProtocolError("seq must strictly increase within a request", field="events")
    return SyncRequest(
        agent_id=agent_id, epoch=epoch, events=tuple(events), acked_seq=acked_seq,
        backlog=backlog, oldest_pending_ms=oldest_pending_ms, chain=chain, epoch_base=epoch_base, base_chain=base_chain,
        sent_ms=sent_ms, follows_feed=follows_feed, after_seq=after_seq, disk=disk, lost=lost,
    )  # fmt: skip


def encode_sync_response(resp: SyncResponse) -> bytes:
    data: bytes = msgpack.packb(
        {
            "v": WIRE_VERSION,
            "agent_id": resp.agent_id,
            "epoch": resp.epoch,
            "hwm": resp.hwm,
            "rejected": [[r.event_id, r.seq, r.code, r.reason] for r in resp.rejected],
            "duplicates": resp.duplicates,
            "counts": [
                [c.location, c.sku, c.on_hand, c.reserved, c.available, c.in_transit] for c in resp.counts
            ],
            "server_time_ms": resp.server_time_ms,
            **({"chain": resp.chain} if resp.chain is not None else {}),
            **({"held": resp.held} if resp.held is not None else {}),
            **({"change_id": resp.change_id} if resp.change_id is not None else {}),
        },
        use_bin_type=True,
    )
    return data


_RESPONSE_KEYS = {
    "v", "agent_id", "epoch", "hwm", "rejected", "duplicates", "counts", "server_time_ms", "chain", "held", "change_id",
}  # fmt: skip


def decode_sync_response(data: bytes) -> SyncResponse:
    obj = _envelope(
        _unpack(data, "sync response"),
        "sync response",
        _RESPONSE_KEYS,
    )
    agent_id = _check_str(obj.get("agent_id"), "agent_id", AGENT_ID_MAX_LEN, _AGENT_RE, what="agent id")
    epoch = _check_int(obj.get("epoch"), "epoch", 0, EPOCH_MAX)
    hwm = _check_int(obj.get("hwm"), "hwm", 0, SEQ_MAX)
    rejected: list[Rejection] = []
    raw_rejected = obj.get("rejected", [])
    if not isinstance(raw_rejected, list):
        raise ProtocolError("must be a list", field="rejected")
    for i, item in enumerate(raw_rejected):
        if not (
            isinstance(item, list)
            and len(item) == 4
            and isinstance(item[0], bytes)
            and isinstance(item[1], int)
            and isinstance(item[2], str)
            and isinstance(item[3], str)
        ):
            raise ProtocolError("must be [event_id, seq, code, reason]", field=f"rejected[{i}]")
        rejected.append(Rejection(item[0], item[1], item[2], item[3]))
    raw_counts = obj.get("counts", [])
    if not isinstance(raw_counts, list) or len(raw_counts) > MAX_COUNTS:
        raise ProtocolError(f"must be a list of at most {MAX_COUNTS} entries", field="counts")
    counts: list[CountSnapshot] = []
    for i, item in enumerate(raw_counts):
        if not (
            isinstance(item, list)
            and len(item) == 6
            and isinstance(item[0], str)
            and isinstance(item[1], str)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item[2:])
        ):
            raise ProtocolError("must be [location, sku, on_hand, reserved, available, in_transit]", field=f"counts[{i}]")
        counts.append(CountSnapshot(*item))
    duplicates = _check_int(obj.get("duplicates", 0), "duplicates", 0, SEQ_MAX)
    server_time_ms = _check_int(obj.get("server_time_ms", 0), "server_time_ms", 0, SEQ_MAX)
    chain = _check_chain(obj.get("chain"), "chain")
    raw_held = obj.get("held")
    held = None if raw_held is None else _check_int(raw_held, "held", 0, SEQ_MAX)
    raw_change_id = obj.get("change_id")
    change_id = None if raw_change_id is None else _check_int(raw_change_id, "change_id", 0, SEQ_MAX)
    return SyncResponse(
        agent_id, epoch, hwm, tuple(rejected), duplicates, tuple(counts), server_time_ms, chain, held, change_id
    )
