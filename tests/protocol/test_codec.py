import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    BadEvents,
    CountSnapshot,
    DiskReport,
    Kind,
    LostReport,
    ProtocolError,
    Rejection,
    StockEvent,
    SyncRequest,
    SyncResponse,
    decode_sync_request,
    decode_sync_response,
    encode_sync_request,
    encode_sync_response,
    event_to_wire,
    new_event_id,
    pack_hlc,
)


def event(seq: int, **kw) -> StockEvent:
    base = {
        "event_id": new_event_id(), "agent_id": "agent-1", "epoch": 3, "seq": seq, "location": "S1", "sku": "A",
        "kind": Kind.RECEIVE, "qty": 5, "occurred_at": pack_hlc(1_000 + seq, 0), "wall_ms": 1_000 + seq, "source": "api:test",
        "attrs": {"lot": "L1", "expiry": "2027-01-31"},
    }
    base.update(kw)
    return StockEvent(**base)


def body(events: list, **envelope) -> bytes:
    obj = {"v": 1, "agent_id": "agent-1", "epoch": 3, "acked_seq": 0, "events": events}
    obj.update(envelope)
    return msgpack.packb(obj, use_bin_type=True)


def test_request_round_trip():
    req = SyncRequest("agent-1", 3, tuple(event(i) for i in range(1, 4)), acked_seq=0)
    assert decode_sync_request(encode_sync_request(req)) == req


def test_response_round_trip():
    resp = SyncResponse(
        "agent-1", 3, 42, (Rejection(new_event_id(), 7, "conflict", "already recorded"),), 2,
        (CountSnapshot("S1", "A", 5, 1, 4, 0),), 1234,
    )
    assert decode_sync_response(encode_sync_response(resp)) == resp


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"\xc1\xc1\xc1", "not valid msgpack"),
        (encode_sync_request(SyncRequest("agent-1", 3, (event(1),)))[:-5], "truncated"),
        (msgpack.packb([1, 2, 3]), "must be a msgpack map"),
        (body([], v=2), "unsupported wire version"),
        (body([], agent_id=5), "agent_id: must be a string"),
        (body([], epoch="3"), "epoch: must be an integer"),
        (body("nope"), "events: must be a list"),
        (body([], extra=1), "unknown field"),
        (msgpack.packb({"v": 1}) + b"\x00", "bytes after the end"),
    ],
)
def test_bad_envelopes_raise_protocol_error(data, words):
    with pytest.raises(ProtocolError) as info:
        decode_sync_request(data)
    assert not isinstance(info.value, BadEvents)
    assert words in str(info.value)


def test_bad_events_are_all_listed_and_good_ones_named_nowhere():
    good = event_to_wire(event(1))
    unknown_kind = event_to_wire(event(2)) | {"kind": "teleport"}
    wrong_type = event_to_wire(event(3)) | {"qty": "3"}
    with pytest.raises(BadEvents) as info:
        decode_sync_request(body([good, unknown_kind, wrong_type]))
    bad = info.value.bad
    assert [b.index for b in bad] == [1, 2]
    assert [b.seq for b in bad] == [2, 3]
    assert "unknown kind 'teleport'" in bad[0].reason
    assert "events[2].qty: must be an integer" in bad[1].reason


def test_seq_must_increase_within_a_request():
    with pytest.raises(ProtocolError, match="strictly increase"):
        decode_sync_request(body([event_to_wire(event(2)), event_to_wire(event(1))]))


def test_deep_nesting_is_a_clear_error():
    deep = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError):
        decode_sync_request(deep)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzzed_bytes_only_ever_raise_protocol_error(data):
    try:
        decode_sync_request(data)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
                    max_leaves=30))
def test_fuzzed_structures_inside_the_envelope_only_raise_protocol_error(obj):
    for data in (msgpack.packb(obj, use_bin_type=True), body([obj]), body(obj)):
        try:
            decode_sync_request(data)
        except ProtocolError:
            pass


def test_backlog_report_round_trips_and_is_optional():
    req = SyncRequest("agent-1", 3, (event(1),), acked_seq=0, backlog=1200, oldest_pending_ms=1_700_000_000_000)
    assert decode_sync_request(encode_sync_request(req)) == req
    assert decode_sync_request(body([])).backlog is None
    with pytest.raises(ProtocolError, match="backlog: must be between"):
        decode_sync_request(body([], backlog=-1))


def test_lost_report_round_trips_is_optional_and_refuses_what_cannot_be():
    """An agent's report of acknowledged movements its outbox no longer holds and the hub lacks (agent.outbox
    ``hub_lacks``): their seqs, how many (or at least how many, after a rebind), when it found it, of which agent."""
    lost = LostReport(6, 9, 4, found_ms=1_765_000_000_000, epoch=77)
    req = SyncRequest("agent-1", 3, (event(1),), lost=lost)
    assert decode_sync_request(encode_sync_request(req)) == req
    rebound = LostReport(4, 5, 2, found_ms=5, epoch=3, at_least=True, of_agent="agent-0")
    assert decode_sync_request(encode_sync_request(SyncRequest("agent-1", 3, (), lost=rebound))).lost == rebound
    assert decode_sync_request(encode_sync_request(SyncRequest("agent-1", 3, ()))).lost is None  # an older agent
    good = {"first_seq": 6, "last_seq": 9, "count": 4, "found_ms": 1, "epoch": 3}
    for bad, said in [
        ({**good, "first_seq": 0}, "lost.first_seq: must be between 1"),
        ({**good, "last_seq": 5}, "lost.last_seq: must be between 6"),
        ({**good, "count": 5}, "lost.count: must be between 1 and 4"),
        ({**good, "count": 0}, "lost.count: must be between 1 and 4"),
        ({**good, "found_ms": -1}, "lost.found_ms: must be between"),
        ({**good, "found_ms": 1 << 47}, "lost.found_ms: must be between"),  # the hub writes it as a date
        ({**good, "epoch": "3"}, "lost.epoch: must be an integer"),
        ({**good, "at_least": 1}, "lost.at_least: must be true or false"),
        ({**good, "of_agent": "no spaces"}, "lost.of_agent"),
        ({k: v for k, v in good.items() if k != "count"}, "lost.count: must be an integer"),
        ({**good, "skus": ["A"]}, "lost: unknown field"),
        ([6, 9], "lost: must be a map"),
    ]:
        with pytest.raises(ProtocolError, match=said):
            decode_sync_request(body([], lost=bad))


def test_disk_report_round_trips_is_optional_and_says_the_disks_state():
    """An agent's disk report (agent.reserve): its reserve, the outbox's free bytes, a write the full disk refused."""
    full = DiskReport(8 << 20, 0, 4096, refused_ms=1_765_000_000_000)
    req = SyncRequest("agent-1", 3, (event(1),), disk=full)
    assert decode_sync_request(encode_sync_request(req)) == req
    assert decode_sync_request(encode_sync_request(SyncRequest("agent-1", 3, ()))).disk is None  # an older agent
    assert full.state == "full"
    assert DiskReport(8 << 20, 0, 4096).state == "full"  # the reserve spent, less than a step free
    assert DiskReport(8 << 20, 0, 50 << 20).state == "reserve_in_use"  # room again, the reserve not made whole yet
    assert DiskReport(8 << 20, 3 << 20, 0).state == "reserve_in_use"
    assert DiskReport(8 << 20, 8 << 20, 1 << 30).state == "ok"
    assert DiskReport(0, 0, 0).state == "ok"  # no reserve, and the disk took the last write
    assert DiskReport(0, 0, None, refused_ms=5).state == "full"
    larger = decode_sync_request(body([], disk={"reserve_bytes": 1, "reserve_held_bytes": 2})).disk
    assert larger == DiskReport(1, 1), "more held than configured is the whole reserve"
    with pytest.raises(ProtocolError, match="disk.reserve_held_bytes: must be an integer"):
        decode_sync_request(body([], disk={"reserve_bytes": 1, "reserve_held_bytes": "1"}))
    with pytest.raises(ProtocolError, match="disk.free_bytes: must be between"):
        decode_sync_request(body([], disk={"reserve_bytes": 0, "reserve_held_bytes": 0, "free_bytes": -1}))
    with pytest.raises(ProtocolError, match="disk: unknown field"):
        decode_sync_request(body([], disk={"reserve_bytes": 0, "reserve_held_bytes": 0, "inodes": 3}))
    with pytest.raises(ProtocolError, match="disk: must be a map"):
        decode_sync_request(body([], disk=[1, 2]))
