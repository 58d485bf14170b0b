"""The one rule for identifiers and values (protocol.values): what ingest takes, every read takes."""

from __future__ import annotations

import json
import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import ProtocolError, StockEvent, decode_sync_request, new_event_id, pack_hlc, values
from protocol.values import (
    ATTR_STR_MAX_LEN,
    SKU,
    JsonRefused,
    check_attrs,
    is_text,
    json_safe,
    loads_json,
)

REFUSED = [chr(c) for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0xD800, 0xDBFF, 0xDC00, 0xDFFF)]


def refused(ch: str) -> bool:
    c = ord(ch)
    return c < 0x20 or 0x7F <= c <= 0x9F or c in (0x2028, 0x2029) or 0xD800 <= c <= 0xDFFF


def event(**overrides: object) -> StockEvent:
    fields: dict[str, object] = {
        "event_id": new_event_id(), "agent_id": "agent-1", "epoch": 1, "seq": 1, "location": "S001", "sku": "SKU-1", "kind": "sale",
        "qty": -1, "occurred_at": pack_hlc(1_700_000_000_000, 0), "wall_ms": 1_700_000_000_000, "source": "pos:test",
    }  # fmt: skip
    fields.update(overrides)
    return StockEvent(**fields)  # type: ignore[arg-type]


@given(st.text(st.characters(), max_size=40))
def test_text_is_every_string_without_controls_separators_or_surrogates(s: str) -> None:
    assert is_text(s) == (not any(refused(c) for c in s))


@given(st.text(st.characters(), min_size=1, max_size=64))
def test_a_sku_the_event_takes_is_a_sku_every_read_takes_and_the_reverse(sku: str) -> None:
    try:
        event(sku=sku)
        accepted = True
    except ProtocolError:
        accepted = False
    assert accepted == SKU.valid(sku) == (is_text(sku) and sku not in (".", ".."))


@pytest.mark.parametrize("sku", [".", ".."])
def test_a_dot_segment_is_no_sku_but_one_stored_before_the_rule_is_read(sku: str) -> None:
    with pytest.raises(ProtocolError) as err:
        event(sku=sku)
    assert err.value.field == "sku" and "URL path" in str(err.value)
    assert "not '.' or '..'" in SKU.rule()
    assert SKU.problem(sku, stored=True) is None
    assert SKU.valid("..a") and SKU.valid("a.") and SKU.valid("...")


@pytest.mark.parametrize("ch", REFUSED)
def test_each_refused_character_is_refused_in_every_text_field_with_one_sentence(ch: str) -> None:
    for name in ("sku", "ref", "reason"):
        with pytest.raises(ProtocolError) as err:
            event(**{name: f"A{ch}B"})
        assert err.value.field == name and "\n" not in str(err.value) and "\u2028" not in str(err.value)


@pytest.mark.parametrize("text", ["Café\u00a0Noir 250 g", "茶 250g", "emoji \U0001f600", "\u200dzwj", "a b"])
def test_printable_unicode_is_text_everywhere(text: str) -> None:
    ev = event(sku=text[:64], ref=text, reason=text[:64])
    assert ev.sku == text[:64] and SKU.valid(ev.sku)


@given(
    st.dictionaries(
        st.text(st.characters(), min_size=1, max_size=32),
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(st.characters(), max_size=300),
        max_size=40,
    )
)
def test_attrs_accepted_are_exactly_those_strict_json_carries(attrs: dict[str, object]) -> None:
    def ok() -> bool:
        if len(attrs) > values.ATTRS_MAX_KEYS:
            return False
        for k, v in attrs.items():
            if not is_text(k):
                return False
            if isinstance(v, float) and not math.isfinite(v):
                return False
            if isinstance(v, str) and (len(v) > ATTR_STR_MAX_LEN or any(0xD800 <= ord(c) <= 0xDFFF for c in v)):
                return False
        return True

    try:
        checked = check_attrs(attrs)
    except ProtocolError as err:
        assert not ok(), err
        assert "\n" not in str(err)
        return
    assert ok()
    text = json.dumps(checked, ensure_ascii=False, allow_nan=False)  # strict JSON, and UTF-8 encodable
    assert json.loads(text.encode("utf-8")) == checked


def test_attrs_are_flat_so_depth_and_size_are_bounded() -> None:
    with pytest.raises(ProtocolError, match="flat"):
        check_attrs({"a": {"b": 1}})
    with pytest.raises(ProtocolError, match="flat"):
        check_attrs({"a": [1]})
    biggest = {f"k{i:030d}": "\U0001f600" * ATTR_STR_MAX_LEN for i in range(values.ATTRS_MAX_KEYS)}
    assert len(json.dumps(check_attrs(biggest), ensure_ascii=False).encode()) < 40_000


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": -Infinity}', "-Infinity"),
        (b'{"a": 1e999}', "Infinity"),
        (b'{"a": "\\ud800"}', "surrogate"),
        (b'{"\\udfff": 1}', "surrogate"),
        (b'["x", ["\\udbff"]]', "surrogate"),
        (b"[" * 40 + b"]" * 40, "deeper"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper"),
        ('{"a": "é"}'.encode("latin-1"), "UTF-8"),
        (b'{"a": ', "Expecting"),
    ],
)
def test_json_bodies_outside_the_rule_are_refused_with_one_clause(raw: bytes, needle: str) -> None:
    with pytest.raises(JsonRefused) as err:
        loads_json(raw)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_json_surrogate_pairs_are_text() -> None:
    assert loads_json(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}


@given(st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(st.characters(), max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(st.characters(), max_size=5), inner, max_size=3),
    max_leaves=20,
))  # fmt: skip
def test_json_safe_makes_anything_strict_json(value: object) -> None:
    safe = json_safe(value)
    text = json.dumps(safe, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    assert loads_json(text.encode("utf-8")) == json.loads(text)


def test_msgpack_cannot_carry_a_lone_surrogate() -> None:
    """A msgpack str is UTF-8; the encoded form of U+D800 (ED A0 80) is not, and the decoder refuses it."""
    body = msgpack.packb({"v": 1, "agent_id": "a", "epoch": 1, "events": []})
    forged = body.replace(b"\xa1a", b"\xa3\xed\xa0\x80")
    with pytest.raises(ProtocolError, match="not valid msgpack"):
        decode_sync_request(forged)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain.csv", "'plain.csv'"),
        ("a\nINFO forged", "'a\\nINFO forged'"),
        ("\x1b[31mred", "'\\x1b[31mred'"),
        ("sep\u2028x", "'sep\\u2028x'"),
        ("x" * 200, "'" + "x" * 120 + "…'"),
    ],
)
def test_shown_escapes_once_keeps_one_line_and_bounds(value: str, expected: str) -> None:
    assert values.shown(value) == expected
    assert values.shown(value).isprintable()


def test_shown_bare_leaves_an_ordinary_name_as_it_is() -> None:
    assert values.shown("generic.csv", bare=True) == "generic.csv"
    assert values.shown("evil\n.csv", bare=True) == "'evil\\n.csv'"
