"""Fuzzing the wire decoders: valid messages, structurally mutated and byte-mutated.

Every decoder either returns a value that re-encodes to an equivalent message
or raises ``ProtocolError`` with one sentence; nothing else escapes, nothing
hangs. tests/protocol/test_codec.py fuzzes random bytes and random
structures; here the inputs start as valid requests and answers, so the
mutations reach deep into the validation (one bad field among good ones).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    BadEvents,
    Kind,
    ProtocolError,
    decode_sync_request,
    decode_sync_response,
    encode_sync_request,
    pack_hlc,
)
from protocol.reports import decode_import_issues, decode_observations, decode_report_answer

pytestmark = pytest.mark.timeout(240)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- valid messages -------------------------------------------------------------------

codes = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,20}", fullmatch=True)
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=30)
# A SKU is printable text but not a URL path's dot segment, which the codec refuses by rule.
skus = printable.filter(lambda text: text not in (".", ".."))
# Any text protocol.values takes (keys of attrs): every code point but controls, U+2028/9 and surrogates.
text_by_the_rule = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029"), min_size=1, max_size=8
)
SIGNS = {Kind.SALE: -1, Kind.RETURN: 1, Kind.RECEIVE: 1, Kind.ADJUST: 1, Kind.TRANSFER_OUT: -1,
         Kind.TRANSFER_IN: 1, Kind.RESERVE: 1, Kind.RELEASE: -1, Kind.COUNT: 1}  # fmt: skip


@st.composite
def wire_event(draw: st.DrawFn, seq: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(list(Kind)))
    qty = draw(st.integers(0 if kind is Kind.COUNT else 1, 10_000)) * SIGNS[kind]
    wall = draw(st.integers(1_600_000_000_000, 1_900_000_000_000))
    return {
        "id": draw(st.binary(min_size=16, max_size=16)),
        "seq": seq,
        "location": draw(codes),
        "sku": draw(skus),
        "kind": kind.value,
        "qty": qty,
        "occurred_at": pack_hlc(wall, draw(st.integers(0, 65_535))),
        "wall_ms": wall,
        "source": "pos:" + draw(codes),
        "ref": draw(printable) if kind in (Kind.TRANSFER_IN, Kind.TRANSFER_OUT) else draw(st.none() | printable),
        "reason": draw(st.none() | printable),
        "attrs": draw(st.dictionaries(text_by_the_rule, st.none() | st.booleans() | st.integers(-5, 5) | printable, max_size=3)),
    }


@st.composite
def wire_request(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(0, 6))
    first = draw(st.integers(1, 1_000))
    return {
        "v": 1,
        "agent_id": draw(codes),
        "epoch": draw(st.integers(0, 2**63 - 1)),
        "acked_seq": draw(st.integers(0, first - 1)),
        "events": [draw(wire_event(first + i * 2)) for i in range(n)],
    }


WIRE_FIELDS = ("id", "seq", "location", "sku", "kind", "qty", "occurred_at", "wall_ms", "source", "ref", "reason", "attrs")


def as_columns(msg: dict[str, Any]) -> dict[str, Any]:
    """The request with its events as columns (one list per field, nil where an event lacks one), as agents send."""
    events = msg.pop("events")
    if not events:
        return {**msg, "events": []}
    return {**msg, "columns": {f: [ev.get(f) for ev in events] for f in WIRE_FIELDS if any(f in ev for ev in events)}}


def event_count(msg: dict[str, Any]) -> int:
    return len(msg["events"]) if "events" in msg else len(msg["columns"]["id"])


any_request = wire_request() | wire_request().map(as_columns)  # both forms a hub reads


@st.composite
def wire_response(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "v": 1, "agent_id": draw(codes), "epoch": draw(st.integers(0, 2**63 - 1)), "hwm": draw(st.integers(0, 10**6)),
        "rejected": [[draw(st.binary(min_size=16, max_size=16)), draw(st.integers(1, 100)), "conflict", "why"]],
        "duplicates": draw(st.integers(0, 100)),
        "counts": [[draw(codes), draw(printable), draw(st.integers(-5, 5)), 0, 0, 0]],
        "server_time_ms": draw(st.integers(0, 2**40)),
    }  # fmt: skip


# --- mutations ------------------------------------------------------------------------

# Values of every msgpack type, at and beyond the edges the contract names.
anything = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=80) | st.binary(max_size=40) | st.just("x" * 5_000) | st.just(2**63) | st.just(-1),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)  # fmt: skip


def _containers(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every map and list inside ``obj`` (the top included)."""
    out = [path] if isinstance(obj, (dict, list)) else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _containers(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out += _containers(value, (*path, i))
    return out


def _at(obj: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        obj = obj[step]
    return obj


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid message with one to three structural mutations: a field deleted, replaced, added or retyped."""
    msg = draw(base)
    for _ in range(draw(st.integers(1, 3))):
        target = _at(msg, draw(st.sampled_from(_containers(msg))))
        action = draw(st.sampled_from(("replace", "delete", "add", "wrap", "empty")))
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        if not keys or action == "add":
            if isinstance(target, dict):
                target[draw(st.text(max_size=10) | st.sampled_from(list(target) or ["v"]))] = draw(anything)
            else:
                target.append(draw(anything))
            continue
        key = draw(st.sampled_from(keys))
        if action == "replace":
            target[key] = draw(anything)
        elif action == "delete":
            del target[key]
        elif action == "wrap":
            target[key] = [target[key]] if draw(st.booleans()) else {"x": target[key]}
        else:
            target[key] = type(target[key])() if isinstance(target[key], (str, bytes, list, dict)) else 0
    return msg


def pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def only_clear_errors(decode: Callable[[bytes], Any], data: bytes) -> Any:
    """Decode; a failure must be a ProtocolError with one non-empty sentence."""
    try:
        return decode(data)
    except ProtocolError as err:
        message = str(err)
        assert message and "\n" not in message and len(message) < 2_000, repr(message)
        if isinstance(err, BadEvents):
            assert err.bad and all(b.reason for b in err.bad)
        return None


# --- properties -------------------------------------------------------------------------


@FUZZ
@given(any_request)
def test_valid_requests_decode_and_encode_back(msg: dict[str, Any]) -> None:
    req = decode_sync_request(pack(msg))
    assert len(req.events) == event_count(msg)
    assert decode_sync_request(encode_sync_request(req)) == req
    assert decode_sync_request(encode_sync_request(req, as_columns=False)) == req


@FUZZ
@given(mutated(any_request))
def test_structurally_mutated_requests_decode_or_fail_clearly(msg: dict[str, Any]) -> None:
    req = only_clear_errors(decode_sync_request, pack(msg))
    if req is not None:  # accepted: then it is a valid request through and through
        assert decode_sync_request(encode_sync_request(req)) == req


@st.composite
def byte_mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> bytes:
    data = bytearray(pack(draw(base)))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, max(0, len(data) - 1)))
        action = draw(st.sampled_from(("flip", "truncate", "insert", "delete", "duplicate")))
        if action == "flip" and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del data[where:]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        else:
            data += data[where : where + draw(st.integers(1, 32))]
    return bytes(data)


@FUZZ
@given(byte_mutated(any_request))
def test_byte_mutated_requests_decode_or_fail_clearly(data: bytes) -> None:
    only_clear_errors(decode_sync_request, data)


@FUZZ
@given(mutated(wire_response()) | st.builds(lambda d: d, byte_mutated(wire_response())))
def test_mutated_responses_decode_or_fail_clearly(msg: dict[str, Any] | bytes) -> None:
    only_clear_errors(decode_sync_response, msg if isinstance(msg, bytes) else pack(msg))


@st.composite
def observations(draw: st.DrawFn) -> dict[str, Any]:
    item = {"id": draw(printable), "location": draw(codes), "sku": draw(skus), "system": "shopify",
            "on_hand": draw(st.integers(-10, 10)), "observed_at_ms": draw(st.integers(0, 2**40)), "source_file": "a.csv"}  # fmt: skip
    return {"v": 1, "agent_id": draw(codes), "observations": [item]}


@st.composite
def issues(draw: st.DrawFn) -> dict[str, Any]:
    item = {"id": draw(printable), "location": draw(codes), "file": "a.csv", "line": draw(st.integers(0, 10**6)),
            "reason": draw(printable), "raw": draw(st.text(max_size=50))}  # fmt: skip
    return {"v": 1, "agent_id": draw(codes), "issues": [item]}


@FUZZ
@given(mutated(observations()), mutated(issues()), byte_mutated(observations()))
def test_mutated_reports_decode_or_fail_clearly(obs: dict[str, Any], iss: dict[str, Any], raw: bytes) -> None:
    only_clear_errors(decode_observations, pack(obs))
    only_clear_errors(decode_import_issues, pack(iss))
    only_clear_errors(decode_observations, raw)
    only_clear_errors(decode_report_answer, pack({"v": 1, "accepted": obs.get("observations"), "rejected": iss}))


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff",  # an array of 4 billion items, then nothing
        b"\xdf\xff\xff\xff\xff",  # a map of 4 billion pairs
        b"\xdb\xff\xff\xff\xff",  # a string of 4 GiB
        b"\xc6\xff\xff\xff\xff",  # a binary of 4 GiB
        b"\x81\xa6events\xdd\x7f\xff\xff\xff",  # a huge events list inside a map
    ],
)
def test_lengths_that_lie_fail_at_once_without_allocating(header: bytes) -> None:
    for decode in (decode_sync_request, decode_sync_response, decode_observations, decode_import_issues):
        with pytest.raises(ProtocolError):
            decode(header)
