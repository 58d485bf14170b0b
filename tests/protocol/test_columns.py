"""The columnar form of a sync request's events (``columns``): what it carries, and that a hub reads it exactly
as it reads the same events sent as maps — the same events, the same bad events with the same messages."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    MAX_BATCH_EVENTS,
    BadEvents,
    EventsPacker,
    Kind,
    ProtocolError,
    StockEvent,
    SyncRequest,
    decode_sync_request,
    encode_events,
    encode_sync_request,
    new_event_id,
    pack_hlc,
)
from protocol.event import OPTIONAL_WIRE_FIELDS, events_to_columns

AGENT = "agent-1"
REQUIRED = ("id", "seq", "location", "sku", "kind", "qty", "occurred_at", "source")


def event(seq: int, **kw: Any) -> StockEvent:
    base: dict[str, Any] = {
        "event_id": new_event_id(), "agent_id": AGENT, "epoch": 3, "seq": seq, "location": "S1",
        "sku": f"SKU-{seq % 3}", "kind": Kind.RECEIVE, "qty": 5, "occurred_at": pack_hlc(1_700_000_000_000 + seq, 0),
        "wall_ms": 1_700_000_000_000 + seq, "source": "scanner:door",
    }  # fmt: skip
    base.update(kw)
    return StockEvent(**base)


def mixed(n: int) -> list[StockEvent]:
    """Every kind, with and without a ref, a reason, attrs and a wall clock apart from the stamp."""
    out = []
    for i in range(1, n + 1):
        kw: dict[str, Any] = {}
        match i % 6:
            case 1:
                kw = {"kind": Kind.SALE, "qty": -2, "ref": f"receipt-{i}"}
            case 2:
                kw = {"kind": Kind.TRANSFER_OUT, "qty": -1, "ref": "T-7", "attrs": {"to": "S2"}}
            case 3:
                kw = {"kind": Kind.COUNT, "qty": 0, "wall_ms": 1_600_000_000_000 + i}
            case 4:
                kw = {"kind": Kind.ADJUST, "qty": -3, "reason": "damaged", "attrs": {"lot": "L1", "n": 2, "ok": True}}
            case 5:
                kw = {"kind": Kind.RESERVE, "qty": 1, "ref": "order-1"}
        out.append(event(i, **kw))
    return out


def columns_body(columns: Any, **envelope: Any) -> bytes:
    obj = {"v": 1, "agent_id": AGENT, "epoch": 3, "acked_seq": 0, "columns": columns, **envelope}
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def maps_body(maps: list[Any]) -> bytes:
    packed: bytes = msgpack.packb({"v": 1, "agent_id": AGENT, "epoch": 3, "acked_seq": 0, "events": maps}, use_bin_type=True)
    return packed


def outcome(body: bytes) -> Any:
    """What a hub makes of ``body``: the request, or the error (its type, message and bad events)."""
    try:
        return decode_sync_request(body)
    except BadEvents as err:
        return ("bad events", str(err), err.bad)
    except ProtocolError as err:
        return ("refused", str(err))


def test_events_sent_as_columns_are_read_back_as_the_same_events_and_request() -> None:
    events = tuple(mixed(30))
    req = SyncRequest(AGENT, 3, events, acked_seq=2, backlog=40, sent_ms=1_700_000_000_500, follows_feed=True)
    as_columns = encode_sync_request(req)
    as_maps = encode_sync_request(req, as_columns=False)

    assert "columns" in msgpack.unpackb(as_columns) and "events" not in msgpack.unpackb(as_columns)
    assert "events" in msgpack.unpackb(as_maps)
    assert decode_sync_request(as_columns) == req == decode_sync_request(as_maps)
    got = decode_sync_request(as_columns).events
    assert [type(ev.kind) for ev in got] == [Kind] * len(got)
    assert got[3].attrs == {"lot": "L1", "n": 2, "ok": True} and got[0].attrs == {}
    assert got[0].attrs is not got[4].attrs  # each event its own (empty) attrs, as from the maps
    assert len(as_columns) < len(as_maps)


def test_an_optional_column_is_left_out_when_every_event_holds_its_default_and_nil_marks_one_that_does() -> None:
    plain = [event(i) for i in range(1, 4)]
    assert set(events_to_columns(plain)) == set(REQUIRED)

    one_of_each = [*plain, event(4, wall_ms=5, ref="R-1", reason="why", attrs={"k": "v"})]
    cols = events_to_columns(one_of_each)
    assert set(cols) == {*REQUIRED, *OPTIONAL_WIRE_FIELDS}
    assert cols["wall_ms"] == [None, None, None, 5]
    assert cols["ref"] == [None, None, None, "R-1"] and cols["reason"] == [None, None, None, "why"]
    assert cols["attrs"] == [None, None, None, {"k": "v"}]
    assert decode_sync_request(encode_sync_request(SyncRequest(AGENT, 3, tuple(one_of_each)))).events == tuple(
        one_of_each
    )


@pytest.mark.parametrize("as_columns", [True, False])
@pytest.mark.parametrize("parts", [[], [0], [1], [15, 1, 0, 17], [40, 3], [3, 40]])
def test_events_packed_part_by_part_are_the_bytes_packed_at_once(as_columns: bool, parts: list[int]) -> None:
    """What a sender packs as it reads a batch (agent.replicator): the same bytes and the same request; the
    optional columns come and go with the parts that hold them (the first 3 events of mixed() hold none of ref,
    reason or attrs in the same part)."""
    events = mixed(sum(parts))
    packer = EventsPacker(as_columns=as_columns)
    start = 0
    for n in parts:
        packer.add(events[start : start + n])
        start += n
    assert packer.events == len(events)
    packed = packer.finish()
    assert packed == encode_events(events, as_columns=as_columns)
    req = SyncRequest(AGENT, 3, tuple(events), acked_seq=2)
    assert encode_sync_request(
        dataclasses.replace(req, events=()), packed, as_columns=as_columns
    ) == encode_sync_request(req, as_columns=as_columns)


def test_a_batch_of_more_events_than_an_array_of_16_bits_holds_packs_part_by_part_as_at_once() -> None:
    events = [event(i) for i in range(1, 70_001)]
    packer = EventsPacker()
    for start in range(0, len(events), 1000):
        packer.add(events[start : start + 1000])
    assert packer.finish() == encode_events(events)


def test_a_request_without_events_is_sent_as_an_empty_events_list_that_any_hub_reads() -> None:
    body = encode_sync_request(SyncRequest(AGENT, 3, (), acked_seq=9))
    assert msgpack.unpackb(body)["events"] == [] and "columns" not in msgpack.unpackb(body)
    assert decode_sync_request(body).events == ()
    assert decode_sync_request(columns_body({name: [] for name in REQUIRED})).events == ()


def test_bad_events_in_columns_are_each_named_as_in_the_map_form_and_the_good_ones_nowhere() -> None:
    events = mixed(12)
    cols = events_to_columns(events)
    cols["qty"][6] = 4  # a sale (i = 7) that adds units
    cols["kind"][9] = "teleport"
    cols["id"][10] = b"short"

    with pytest.raises(BadEvents) as info:
        decode_sync_request(columns_body(cols))

    bad = info.value.bad
    assert [b.index for b in bad] == [6, 9, 10]
    assert [b.seq for b in bad] == [7, 10, 11]
    assert bad[0].event_id == events[6].event_id and bad[2].event_id is None  # no readable id
    assert "events[6].qty: a sale takes units away" in bad[0].reason
    assert "unknown kind 'teleport'" in bad[1].reason
    assert "events[10].id" in bad[2].reason
    maps = [dict(zip(cols, values, strict=True)) for values in zip(*cols.values(), strict=True)]
    assert outcome(columns_body(cols)) == outcome(maps_body(maps))


@pytest.mark.parametrize(
    ("columns", "field", "words"),
    [
        ([1, 2], "columns", "must be a map of one list per event field, got list"),
        ({**{n: [] for n in REQUIRED}, "colour": []}, "columns", "unknown column(s) colour"),
        ({n: [] for n in REQUIRED if n != "sku"}, "columns.sku", "is missing"),
        ({**{n: [] for n in REQUIRED}, "qty": 5}, "columns.qty", "must be a list, got int"),
        ({**{n: [None] for n in REQUIRED}, "ref": [None, None]}, "columns.ref", "holds 2 values and columns.id 1"),
        ({n: [None] * (MAX_BATCH_EVENTS + 1) for n in REQUIRED}, "columns", f"the limit per request is {MAX_BATCH_EVENTS}"),
    ],
)  # fmt: skip
def test_columns_of_the_wrong_shape_refuse_the_whole_request_naming_the_column(
    columns: Any, field: str, words: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_sync_request(columns_body(columns))
    assert not isinstance(info.value, BadEvents)
    assert info.value.field == field and words in str(info.value)


def test_a_request_with_both_events_and_columns_is_refused() -> None:
    with pytest.raises(ProtocolError, match="as events or as columns, not both") as info:
        decode_sync_request(columns_body(events_to_columns([event(1)]), events=[]))
    assert info.value.field == "columns"


def test_seq_must_increase_in_columns_too() -> None:
    cols = events_to_columns([event(2), event(1)])
    with pytest.raises(ProtocolError, match="strictly increase"):
        decode_sync_request(columns_body(cols))


_ODD_VALUES = st.sampled_from(
    [None, 0, -1, 1, 5, -5, 2**63, 2**64 - 1, -(2**63), True, False, 1.5, "", "x", "S1", "sale", "count", "transfer_in",
     "\x00", "a" * 300, b"", b"\x01" * 16, [], [1], {}, {"k": 1}, {"": 1}]
)  # fmt: skip
_COLUMNS = [*REQUIRED, *OPTIONAL_WIRE_FIELDS]


@settings(max_examples=1500, deadline=None)
@given(
    n=st.integers(1, 6),
    kinds=st.lists(st.sampled_from(list(Kind)), min_size=6, max_size=6),
    cells=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(_COLUMNS), _ODD_VALUES), max_size=4),
    nil_columns=st.sets(st.sampled_from(OPTIONAL_WIRE_FIELDS), max_size=2),
    epoch=st.sampled_from([0, 3, 2**63 - 1]),
)  # fmt: skip
def test_columns_are_read_exactly_as_the_maps_they_stand_for(
    n: int, kinds: list[Kind], cells: list[tuple[int, str, Any]], nil_columns: set[str], epoch: int
) -> None:
    """Whatever the values, a body of columns and the body of the maps they stand for (the i-th value of each
    column under its name; nil as a missing optional field) come out the same: the same request, or the same
    refusal naming the same bad events — the column-by-column checks accept nothing the field-by-field ones
    refuse, and refuse nothing they accept."""
    events = []
    for i in range(1, n + 1):
        kind = kinds[i - 1]
        qty = 0 if kind is Kind.COUNT else (-1 if kind in (Kind.SALE, Kind.TRANSFER_OUT, Kind.RELEASE) else 2)
        ref = "T-1" if kind in (Kind.TRANSFER_OUT, Kind.TRANSFER_IN) else None
        events.append(event(i, epoch=epoch, kind=kind, qty=qty, ref=ref))
    cols: dict[str, list[Any]] = events_to_columns(events)
    for name in nil_columns:
        cols.setdefault(name, [None] * n)
    for index, name, value in cells:
        cols.setdefault(name, [None] * n)[index % n] = value
    envelope = {"epoch": epoch}
    assert_read_as_maps(cols, envelope)


def assert_read_as_maps(cols: dict[str, list[Any]], envelope: dict[str, Any]) -> Any:
    maps = [dict(zip(cols, values, strict=True)) for values in zip(*cols.values(), strict=True)]
    got = outcome(columns_body(cols, **envelope))
    head = {"v": 1, "agent_id": AGENT, "epoch": 3, "acked_seq": 0}
    want = outcome(msgpack.packb({**head, "events": maps, **envelope}, use_bin_type=True))

    assert got == want
    if isinstance(got, SyncRequest):
        assert all(type(ev) is StockEvent and type(ev.kind) is Kind for ev in got.events)
    return got


@pytest.mark.parametrize(
    ("name", "index", "value", "words"),
    [
        ("ref", 1, None, "needs the transfer reference"),  # event 2 is a transfer_out
        ("attrs", 0, [], "must be a map"),
        ("attrs", 0, "", "must be a map"),
        ("attrs", 0, 0, "must be a map"),
        ("attrs", 0, {"": 1}, "attrs"),
        ("qty", 0, True, "must be an integer"),
        ("qty", 0, 2**64 - 1, "must be between"),
        ("seq", 0, 0, "must be between"),
        ("occurred_at", 0, 0, "must be between"),
        ("wall_ms", 0, -1, "must be between"),
        ("wall_ms", 0, "1", "must be an integer"),
        ("location", 0, "", "must not be empty"),
        ("sku", 0, ["SKU-1"], "must be a string"),
        ("source", 0, "door", "is not a source"),
        ("reason", 0, "", "must not be empty"),
        ("ref", 0, "a" * 300, "characters long"),
        ("id", 0, b"\x01" * 15, "must be 16 bytes"),
    ],
)  # fmt: skip
def test_each_rule_refuses_in_columns_as_in_maps(name: str, index: int, value: Any, words: str) -> None:
    cols: dict[str, list[Any]] = events_to_columns(mixed(3))
    cols.setdefault(name, [None] * 3)[index] = value
    got = assert_read_as_maps(cols, {})
    assert got[0] == "bad events" and words in got[1] and [b.index for b in got[2]] == [index]


def test_a_nil_in_an_optional_column_is_its_default_and_reads_as_in_maps() -> None:
    events = mixed(6)
    cols: dict[str, list[Any]] = events_to_columns(events)
    assert set(OPTIONAL_WIRE_FIELDS) <= set(cols)
    got = assert_read_as_maps(cols, {})
    assert got.events == tuple(events)
