"""protocol.reports: observations, import issues and their answer on the wire; strict, fuzzed."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import ProtocolError
from protocol.catalog import barcode_key, gs1_check_digit_ok, gtin14, unknown_sku
from protocol.reports import (
    MAX_REPORT_ITEMS,
    ImportIssueReport,
    ImportIssuesRequest,
    ObservationReport,
    ObservationsRequest,
    ReportAnswer,
    ReportRejection,
    decode_import_issues,
    decode_observations,
    decode_report_answer,
    encode_import_issues,
    encode_observations,
    encode_report_answer,
)

OBS = ObservationReport("o-1", "S001", "SKU-1", "shopify", 7, 1_764_061_200_000, "inventory.csv")
ISSUE = ImportIssueReport("i-1", "S001", "sales.csv", 17, "qty 'abc' is not a number", "2025-11-25\tSKU-1\tabc")


def obs_body(items: list[Any], **envelope: Any) -> bytes:
    return msgpack.packb({"v": 1, "agent_id": "agent-1", "observations": items, **envelope}, use_bin_type=True)


def obs_wire(**changes: Any) -> dict[str, Any]:
    wire = {
        "id": OBS.id,
        "location": OBS.location,
        "sku": OBS.sku,
        "system": OBS.system,
        "on_hand": OBS.on_hand,
        "observed_at_ms": OBS.observed_at_ms,
        "source_file": OBS.source_file,
    }
    wire.update(changes)
    return {k: v for k, v in wire.items() if v is not ...}


def test_round_trips() -> None:
    obs = ObservationsRequest("agent-1", (OBS, ObservationReport("o-2", "S2", "B", "square", -3, 0)))
    assert decode_observations(encode_observations(obs)) == obs
    issues = ImportIssuesRequest("agent-1", (ISSUE, ImportIssueReport("i-2", "S2", "f.csv", 0, "empty file")))
    assert decode_import_issues(encode_import_issues(issues)) == issues
    answer = ReportAnswer(("o-1",), (ReportRejection("o-2", "agent-1 may not report for S2"),))
    assert decode_report_answer(encode_report_answer(answer)) == answer
    assert decode_report_answer(encode_report_answer(ReportAnswer())) == ReportAnswer()


def test_optional_fields_default() -> None:
    req = decode_observations(obs_body([obs_wire(source_file=...)]))
    assert req.observations[0].source_file == ""
    raw = {"id": "i", "location": "S1", "file": "f.csv", "line": 1, "reason": "bad"}
    issues = decode_import_issues(msgpack.packb({"v": 1, "agent_id": "a", "issues": [raw]}))
    assert issues.issues[0].raw == ""


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (msgpack.packb([1]), "must be a msgpack map"),
        (obs_body([], v=2), "unsupported wire version"),
        (obs_body([], extra=1), "unknown field"),
        (obs_body("x"), "observations: must be a list"),
        (obs_body([], agent_id=""), "agent_id: must not be empty"),
        (obs_body([5]), "observations[0]: must be a map"),
        (obs_body([obs_wire(id=...)]), "observations[0]: is missing id"),
        (obs_body([obs_wire(colour="red")]), "observations[0]: has unknown field(s) colour"),
        (obs_body([obs_wire(id="x" * 65)]), "observations[0].id: is 65 characters long"),
        (obs_body([obs_wire(id=7)]), "observations[0].id: must be a string"),
        (obs_body([obs_wire(location="S 1")]), "observations[0].location"),
        (obs_body([obs_wire(system="s" * 33)]), "observations[0].system"),
        (obs_body([obs_wire(on_hand="7")]), "observations[0].on_hand: must be an integer"),
        (obs_body([obs_wire(on_hand=True)]), "observations[0].on_hand: must be an integer"),
        (obs_body([obs_wire(observed_at_ms=-1)]), "observations[0].observed_at_ms"),
        (obs_body([obs_wire(source_file="f" * 257)]), "observations[0].source_file"),
        (obs_body([obs_wire(sku="A\x00")]), "observations[0].sku"),
        (obs_body([obs_wire()] * (MAX_REPORT_ITEMS + 1)), "the limit per request is"),
    ],
)
def test_bad_observations_raise_one_clear_protocol_error(data: bytes, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_observations(data)
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("line", -1, "issues[0].line"),
        ("reason", "", "issues[0].reason: must not be empty"),
        ("reason", "r" * 513, "issues[0].reason"),
        ("raw", "r" * 2049, "issues[0].raw"),
        ("raw", b"bytes", "issues[0].raw: must be a string"),
        ("file", None, "issues[0].file: must be a string"),
    ],
)
def test_bad_import_issues_raise_one_clear_protocol_error(field: str, value: Any, words: str) -> None:
    raw = {"id": "i", "location": "S1", "file": "f.csv", "line": 1, "reason": "bad", "raw": ""} | {field: value}
    with pytest.raises(ProtocolError) as info:
        decode_import_issues(msgpack.packb({"v": 1, "agent_id": "a", "issues": [raw]}, use_bin_type=True))
    assert words in str(info.value)


def test_raw_keeps_control_characters_as_evidence() -> None:
    req = ImportIssuesRequest("a", (ImportIssueReport("i", "S1", "f.csv", 3, "bad", "a\tb\x00c"),))
    assert decode_import_issues(encode_import_issues(req)).issues[0].raw == "a\tb\x00c"


def test_a_bad_answer_is_refused() -> None:
    bad = msgpack.packb({"v": 1, "accepted": ["o"], "rejected": [{"id": "o"}]})
    with pytest.raises(ProtocolError, match="rejected\\[0\\]: is missing reason"):
        decode_report_answer(bad)


def test_barcode_keys() -> None:
    assert gs1_check_digit_ok("4006381333931") and not gs1_check_digit_ok("4006381333932")
    assert gtin14("4006381333931") == "04006381333931"
    assert gtin14("96385074") == "00000096385074"  # a GTIN-8
    assert gtin14("14006381333938") == "14006381333938"
    assert gtin14("4006381333932") is None and gtin14("40063813339") is None
    assert barcode_key("4006381333931") == barcode_key("04006381333931") == "04006381333931"
    assert barcode_key("QR:promo-1") == "QR:promo-1"
    assert unknown_sku("4006381333931") == "unknown:04006381333931"
    assert len(unknown_sku("x" * 64)) == 64


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_fuzzed_bytes_only_ever_raise_protocol_error(data: bytes) -> None:
    for decode in (decode_observations, decode_import_issues, decode_report_answer):
        try:
            decode(data)
        except ProtocolError:
            pass


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(_values)
def test_fuzzed_structures_inside_the_envelope_only_raise_protocol_error(obj: Any) -> None:
    bodies = [
        msgpack.packb(obj, use_bin_type=True),
        obs_body([obj]),
        obs_body(obj),
        msgpack.packb({"v": 1, "agent_id": "a", "issues": [obj]}, use_bin_type=True),
        msgpack.packb({"v": 1, "accepted": [obj], "rejected": [obj]}, use_bin_type=True),
    ]
    for data in bodies:
        for decode in (decode_observations, decode_import_issues, decode_report_answer):
            try:
                decode(data)
            except ProtocolError:
                pass


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["id", "location", "sku", "system", "on_hand", "observed_at_ms", "source_file"]),
        _values,
        max_size=7,
    )
)
def test_fuzzed_fields_of_an_observation_decode_or_raise_protocol_error(changes: dict[str, Any]) -> None:
    try:
        req = decode_observations(obs_body([obs_wire() | changes]))
    except ProtocolError:
        return
    (got,) = req.observations
    assert decode_observations(encode_observations(req)) == req  # what decodes is within the contract
    assert isinstance(got.on_hand, int) and 0 < len(got.id) <= 64


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        ObservationReport,
        id=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=64),
        location=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,31}", fullmatch=True),
        sku=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=64),
        system=st.sampled_from(["shopify", "square", "lightspeed"]),
        on_hand=st.integers(-1_000_000_000, 1_000_000_000),
        observed_at_ms=st.integers(0, 2**47 - 1),
        source_file=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=256),
    )
)
def test_any_valid_observation_round_trips(obs: ObservationReport) -> None:
    req = ObservationsRequest("agent-1", (obs,))
    assert decode_observations(encode_observations(req)) == req
