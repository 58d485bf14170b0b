from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Kind, ProtocolError, StockEvent, event_from_wire, new_event_id, pack_hlc
from protocol.event import _event_from_wire_checked, _plain_event, event_to_wire


def make(**overrides):
    fields = {
        "event_id": new_event_id(),
        "agent_id": "agent-1",
        "epoch": 7,
        "seq": 1,
        "location": "S1",
        "sku": "SKU-1",
        "kind": Kind.SALE,
        "qty": -1,
        "occurred_at": pack_hlc(1_700_000_000_000, 0),
        "wall_ms": 1_700_000_000_000,
        "source": "scanner:door",
    }
    fields.update(overrides)
    return StockEvent(**fields)


def test_valid_event_orders_by_clock_then_agent_then_seq():
    a = make(occurred_at=pack_hlc(10, 1), agent_id="b", seq=5)
    b = make(occurred_at=pack_hlc(10, 2), agent_id="a", seq=1)
    c = make(occurred_at=pack_hlc(10, 2), agent_id="a", seq=2)
    assert sorted([c, b, a], key=lambda e: e.order_key) == [a, b, c]


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"qty": 3}, "qty", "takes units away"),
        ({"kind": Kind.RECEIVE, "qty": -3}, "qty", "adds units"),
        ({"kind": Kind.COUNT, "qty": -1}, "qty", "cannot be negative"),
        ({"qty": 0}, "qty", "moves nothing"),
        ({"qty": -(10**10)}, "qty", "between"),
        ({"kind": "teleport"}, "kind", "unknown kind"),
        ({"location": ""}, "location", "must not be empty"),
        ({"location": "S 1"}, "location", "not a location code"),
        ({"sku": "x" * 65}, "sku", "limit is 64"),
        ({"source": "bluetooth"}, "source", "not a source"),
        ({"kind": Kind.TRANSFER_OUT, "qty": -2}, "ref", "transfer reference"),
        ({"event_id": b"short"}, "event_id", "16 bytes"),
        ({"seq": 0}, "seq", "between 1"),
        ({"attrs": {"lot": ["nested"]}}, "attrs.lot", "string, number"),
        ({"qty": True}, "qty", "must be an integer"),
    ],
)
def test_invalid_events_raise_one_clear_error(overrides, field, words):
    with pytest.raises(ProtocolError) as info:
        make(**overrides)
    assert info.value.field == field
    assert words in str(info.value)


def test_count_of_zero_is_valid_and_kind_string_is_normalised():
    ev = make(kind="count", qty=0)
    assert ev.kind is Kind.COUNT


def test_content_hash_differs_when_any_field_differs():
    ev = make()
    assert ev.content_hash == StockEvent(**ev._asdict()).content_hash
    assert ev.content_hash != make(event_id=ev.event_id, qty=-2).content_hash
    assert ev.content_hash != make(event_id=ev.event_id, attrs={"lot": "A1"}).content_hash


def test_the_content_hash_is_the_same_as_every_earlier_version_computed() -> None:
    # A hub keeps one rejected attempt per (agent, id, content hash): a hash that moved with the wire form
    # would count an agent's old attempt, sent again, as a new one. These values were computed before the
    # wire map left its defaults out.
    plain = StockEvent(bytes(range(16)), "agent-1", 7, 3, "S1", "SKU-1", Kind.SALE, -2,
                       pack_hlc(1_700_000_000_000, 4), 1_700_000_000_000, "scanner:door")  # fmt: skip
    full = StockEvent(bytes(range(16)), "agent-1", 7, 3, "S1", "SKU-1", Kind.TRANSFER_OUT, -2,
                      pack_hlc(1_700_000_000_000, 4), 1_700_000_000_999, "pos:x", "T-9", "moved",
                      {"lot": "A1", "n": 2})  # fmt: skip
    assert plain.content_hash.hex() == "8639d739fab42993caad36de3822f28c"
    assert full.content_hash.hex() == "bded52f65ac0223a0e83e5ac734b370f"


@pytest.mark.parametrize(
    "overrides, sent",
    [
        ({}, set()),
        ({"wall_ms": 1_700_000_000_001}, {"wall_ms"}),  # the device clock apart from the stamp's
        ({"kind": Kind.TRANSFER_OUT, "ref": "T-1"}, {"ref"}),
        ({"kind": Kind.ADJUST, "reason": "damaged"}, {"reason"}),
        ({"attrs": {"lot": "A1"}}, {"attrs"}),
    ],
)
def test_the_wire_map_leaves_out_the_optional_fields_that_hold_their_default(
    overrides: dict[str, Any], sent: set[str]
) -> None:
    ev = make(**overrides)
    wire = event_to_wire(ev)
    assert set(wire) == {"id", "seq", "location", "sku", "kind", "qty", "occurred_at", "source"} | sent
    assert event_from_wire(wire, ev.agent_id, ev.epoch) == ev  # read back whole
    assert _event_from_wire_checked(dict(wire), ev.agent_id, ev.epoch, "event") == ev


def test_an_event_is_immutable_survives_pickle_and_a_stamped_copy_is_checked():
    import pickle

    ev = make(attrs={"lot": "L1"})
    with pytest.raises(AttributeError):
        ev.qty = 5  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(ev)) == ev
    assert ev.stamped(seq=9, occurred_at=ev.occurred_at + 1, wall_ms=ev.wall_ms).seq == 9
    with pytest.raises(ProtocolError, match="seq"):
        ev.stamped(seq=0, occurred_at=ev.occurred_at, wall_ms=ev.wall_ms)
    assert make().attrs == {} and make().attrs is not make().attrs  # no shared default


# --- the plain-event path of event_from_wire -------------------------------------------------------------------

_ODD_VALUES = st.sampled_from(
    [None, 0, -1, 1, 2**63, -(2**63) - 1, True, 1.5, "", "x", "\x00", "a" * 300, b"", b"\x01" * 16, [], {}, {"k": 1}]
)


def _plain_wire(seq: int, kind: str, qty: int) -> dict[str, Any]:
    wire = event_to_wire(make(seq=seq, kind=Kind.COUNT, qty=0))
    wire["kind"], wire["qty"] = kind, qty
    return wire


@settings(max_examples=400, deadline=None)
@given(
    seq=st.integers(1, 2**63 - 1),
    kind=st.sampled_from([k.value for k in Kind] + ["teleport", ""]),
    qty=st.integers(-(10**9) - 1, 10**9 + 1),
    changes=st.dictionaries(
        st.sampled_from(["id", "seq", "location", "sku", "kind", "qty", "occurred_at", "wall_ms", "source", "ref",
                         "reason", "attrs", "extra"]),
        _ODD_VALUES,
        max_size=3,
    ),
    drop=st.sets(st.sampled_from(["id", "seq", "location", "sku", "kind", "qty", "occurred_at", "wall_ms"]), max_size=2),
    epoch=st.sampled_from([0, 1, 2**63 - 1, 2**63, -1, True]),
)  # fmt: skip
def test_the_plain_path_builds_exactly_what_the_checked_path_builds(
    seq: int, kind: str, qty: int, changes: dict[str, Any], drop: set[str], epoch: Any
) -> None:
    """Whatever the map, the inline path either declines (None) or builds the very event the field-by-field
    checks build — never an event they would refuse."""
    wire = _plain_wire(seq, kind, qty) | changes
    for field in drop:
        wire.pop(field, None)
    try:
        checked: StockEvent | None = _event_from_wire_checked(dict(wire), "agent-1", epoch, "event")
    except ProtocolError:
        checked = None
    plain = _plain_event(wire, "agent-1", epoch)
    if plain is not None:
        assert checked is not None, "the plain path accepted an event the checks refuse"
        assert plain == checked and type(plain) is StockEvent
        assert type(plain.kind) is Kind and plain.attrs == {}


@pytest.mark.parametrize("kind, qty", [("sale", -2), ("receive", 5), ("count", 0), ("adjust", -3), ("reserve", 1)])
def test_plain_events_take_the_inline_path(kind: str, qty: int) -> None:
    wire = _plain_wire(7, kind, qty) | {"wall_ms": 1_700_000_000_123}  # a wall clock apart from the stamp's
    checked = _event_from_wire_checked(dict(wire), "agent-1", 1, "event")  # the first sight of its text
    assert _plain_event(wire, "agent-1", 1) == checked and checked.wall_ms == 1_700_000_000_123
    del wire["wall_ms"]  # left out: the wall clock is the stamp's
    assert _plain_event(wire, "agent-1", 1) == checked._replace(wall_ms=checked.occurred_at >> 16)


def test_events_with_a_ref_reason_or_attrs_take_the_checked_path() -> None:
    for extra in ({"ref": "T-1"}, {"reason": "damaged"}, {"attrs": {"lot": "A1"}}):
        wire = _plain_wire(7, "adjust", -1) | extra
        assert _plain_event(wire, "agent-1", 1) is None
        assert event_from_wire(wire, "agent-1", 1) == _event_from_wire_checked(dict(wire), "agent-1", 1, "event")
