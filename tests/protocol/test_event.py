import pytest

from protocol import Kind, ProtocolError, StockEvent, new_event_id, pack_hlc


def make(**overrides):
    fields = dict(
        event_id=new_event_id(),
        agent_id="agent-1",
        epoch=7,
        seq=1,
        location="S1",
        sku="SKU-1",
        kind=Kind.SALE,
        qty=-1,
        occurred_at=pack_hlc(1_700_000_000_000, 0),
        wall_ms=1_700_000_000_000,
        source="scanner:door",
    )
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
        (dict(qty=3), "qty", "takes units away"),
        (dict(kind=Kind.RECEIVE, qty=-3), "qty", "adds units"),
        (dict(kind=Kind.COUNT, qty=-1), "qty", "cannot be negative"),
        (dict(qty=0), "qty", "moves nothing"),
        (dict(qty=-(10**10)), "qty", "between"),
        (dict(kind="teleport"), "kind", "unknown kind"),
        (dict(location=""), "location", "must not be empty"),
        (dict(location="S 1"), "location", "not a location code"),
        (dict(sku="x" * 65), "sku", "limit is 64"),
        (dict(source="bluetooth"), "source", "not a source"),
        (dict(kind=Kind.TRANSFER_OUT, qty=-2), "ref", "transfer reference"),
        (dict(event_id=b"short"), "event_id", "16 bytes"),
        (dict(seq=0), "seq", "between 1"),
        (dict(attrs={"lot": ["nested"]}), "attrs.lot", "string, number"),
        (dict(qty=True), "qty", "must be an integer"),
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
