"""Everything the agent and the hub must agree on is spelled once, in protocol/, and still reads as it did on
the wire: the sync's 422 byte for byte as hubs sent it before, both error shapes read by the agent, the
zeroconf service types and TXT keys, the routes an agent calls (answered by a real hub on 127.0.0.1 with a
real SQLite store), the location rule and the control-character rule."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from hub import HubStore, problems, views
from hub.feed import Cursor, read_cursor
from hub.resolver import is_location as hub_is_location
from protocol import (
    MSGPACK_CONTENT_TYPE,
    BadEvent,
    BadEvents,
    Kind,
    ProtocolError,
    StockEvent,
    answers,
    discovery,
    event_to_wire,
    new_event_id,
    pack_hlc,
    routes,
    values,
    wall_ms_now,
)
from protocol import feed as wire
from protocol.errors import one_line

ROOT = Path(__file__).resolve().parents[2]
ID_A = bytes.fromhex("0190c7a2b3d47e5f8a9b0c1d2e3f4a5b")
ID_B = bytes.fromhex("0190c7a2b3d47e5f8a9b0c1d2e3f4a5c")
SAMPLE_BAD = (
    BadEvent(1, ID_A, 2, "events[1].qty: must be an integer, got str"),
    BadEvent(3, None, None, 'events[3].sku: "Café\u2028" is not a SKU; a SKU is …'),
)
SAMPLE_DETAIL = str(BadEvents(list(SAMPLE_BAD), "store-7", 1))

# What hubs answered before the shapes moved to protocol/ (hub/problems.py and hub/views.bad_event at 836da03),
# and what hubs before problem details answered (hub/app.py before 74ebf59): agents in the field read these.
PROBLEM_422 = (
    '{"type":"urn:shelfsync:problem:invalid_events","title":"Some events break the contract; nothing was committed",'
    '"status":422,"detail":"2 event(s) are invalid; first: events[1].qty: must be an integer, got str (and 1 more)",'
    '"code":"invalid_events","rejected":[{"index":1,"event_id":"0190c7a2-b3d4-7e5f-8a9b-0c1d2e3f4a5b","seq":2,'
    '"reason":"events[1].qty: must be an integer, got str"},{"index":3,"event_id":null,"seq":null,'
    '"reason":"events[3].sku: \\"Café\u2028\\" is not a SKU; a SKU is …"}]}'
).encode()
LEGACY_422 = json.dumps(
    {"error": {"code": "invalid_events", "message": SAMPLE_DETAIL, "rejected": [
        {"index": 1, "event_id": "0190c7a2-b3d4-7e5f-8a9b-0c1d2e3f4a5b", "seq": 2,
         "reason": "events[1].qty: must be an integer, got str"},
        {"index": 3, "event_id": None, "seq": None, "reason": 'events[3].sku: "Café\u2028" is not a SKU; a SKU is …'},
    ]}}
).encode()  # fmt: skip


def event(seq: int, *, agent_id: str = "store-7", event_id: bytes | None = None, qty: int = 1) -> StockEvent:
    now_ms = wall_ms_now()
    return StockEvent(
        event_id or new_event_id(), agent_id, 1, seq, "S001", "SKU-1", Kind.RECEIVE, qty, pack_hlc(now_ms, 0), now_ms,
        "api:test",
    )  # fmt: skip


# --- the sync's 422 --------------------------------------------------------------------------------------------


def test_the_hub_builds_the_422_byte_for_byte_as_before() -> None:
    built = views.dumps(problems.body(422, SAMPLE_DETAIL, **answers.rejected_members(SAMPLE_BAD)))
    assert built.encode() == PROBLEM_422


@pytest.mark.parametrize("body", [PROBLEM_422, LEGACY_422], ids=["problem-details", "older-hub"])
def test_the_agent_reads_the_422_of_every_hub_back_to_what_was_refused(body: bytes) -> None:
    entries = answers.read_rejected(body)
    assert entries == tuple(answers.RejectedEntry(b.index, b.event_id, b.seq, b.reason) for b in SAMPLE_BAD)
    assert answers.error_message(body) == SAMPLE_DETAIL
    assert answers.error_member(body, "code") == answers.INVALID_EVENTS_CODE


@given(
    st.lists(
        st.builds(
            BadEvent,
            st.integers(0, 999),
            st.none() | st.binary(min_size=16, max_size=16),
            st.none() | st.integers(1, 2**62),
            st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60),  # strict JSON: no surrogate
        ),
        max_size=8,
    )
)
def test_the_422_round_trips_through_json(bad: list[BadEvent]) -> None:
    body = views.dumps(problems.body(422, "some events are invalid", **answers.rejected_members(bad))).encode()
    read = answers.read_rejected(body)
    assert [(e.index, e.event_id, e.seq, e.reason) for e in read] == [
        (b.index, b.event_id, b.seq, b.reason) for b in bad
    ]


def test_the_entries_name_events_of_the_batch_by_index_then_id_then_seq() -> None:
    batch = (event(10, event_id=ID_A), event(11, event_id=ID_B), event(12))
    body = json.dumps({"detail": "x", "code": "invalid_events", "rejected": [
        {"index": 0, "event_id": "0190c7a2-b3d4-7e5f-8a9b-0c1d2e3f4a5c", "seq": 11, "reason": "by id"},  # index wrong
        {"index": 7, "seq": 12},  # index out of the batch, no reason: found by seq
        {"index": 0, "event_id": "not a uuid", "reason": "by index"},
        "not an entry",
        {"event_id": "0190c7a2-b3d4-7e5f-8a9b-0c1d2e3f4a5d", "reason": "a stranger"},
        {"index": 1, "reason": "the second word on seq 11 wins"},
    ]}).encode()  # fmt: skip

    rejections, strangers = answers.rejections_in_batch(batch, answers.read_rejected(body))

    assert [(r.event_id, r.seq, r.code, r.reason) for r in rejections] == [
        (ID_A, 10, "invalid", "by index"),
        (ID_B, 11, "invalid", "the second word on seq 11 wins"),
        (batch[2].event_id, 12, "invalid", answers.INVALID_REASON),
    ]
    assert strangers == [bytes.fromhex("0190c7a2b3d47e5f8a9b0c1d2e3f4a5d")]


@pytest.mark.parametrize("body", [b"", b"<html>502</html>", b'{"detail": "x"}', b'{"error": {"rejected": "all"}}'])
def test_a_body_without_rejected_entries_names_no_event(body: bytes) -> None:
    assert answers.read_rejected(body) == ()


# --- real HTTP (the ``client`` and ``store`` fixtures: a hub on 127.0.0.1 over SQLite in tmp_path) ---------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", routes.SYNC_PATH),
        ("GET", routes.CHANGES_PATH),
        ("GET", routes.CATALOG_PATH),
        ("POST", routes.OBSERVATIONS_PATH),
        ("POST", routes.IMPORT_ISSUES_PATH),
    ],
)
async def test_the_hub_answers_every_route_an_agent_calls(client: TestClient[Any, Any], method: str, path: str) -> None:
    assert (await client.get(routes.HEALTH_PATH)).status == 200
    resp = await client.request(method, path)  # no credential: refused by the route, not unknown (404/405)
    assert resp.status == 401, await resp.text()
    assert resp.content_type == answers.PROBLEM_CONTENT_TYPE
    assert answers.error_member(await resp.read(), "code") == "unauthorized"


async def test_a_real_422_names_exactly_the_invalid_event_for_the_agent(
    store: HubStore, client: TestClient[Any, Any]
) -> None:
    agent_id, token = await store.add_agent(["S001"])
    batch = (event(1, agent_id=agent_id), event(2, agent_id=agent_id), event(3, agent_id=agent_id))
    wire = [event_to_wire(ev) for ev in batch]
    wire[1]["qty"] = "3"
    body = msgpack.packb({"v": 1, "agent_id": agent_id, "epoch": 1, "acked_seq": 0, "events": wire}, use_bin_type=True)

    resp = await client.post(
        routes.SYNC_PATH, data=body, headers={"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}
    )

    assert resp.status == 422 and resp.content_type == answers.PROBLEM_CONTENT_TYPE
    rejections, strangers = answers.rejections_in_batch(batch, answers.read_rejected(await resp.read()))
    assert [(r.event_id, r.seq, r.code) for r in rejections] == [(batch[1].event_id, 2, "invalid")]
    assert "events[1].qty" in rejections[0].reason and strangers == []


# --- zeroconf --------------------------------------------------------------------------------------------------


def test_the_service_types_are_the_ones_agents_and_hubs_in_the_field_use() -> None:
    assert discovery.HUB_SERVICE_TYPE == "_shelfsync-hub._tcp.local."
    assert discovery.AGENT_SERVICE_TYPE == "_shelfsync-agent._tcp.local."


def test_the_txt_records_read_back_as_zeroconf_hands_them_over() -> None:
    def as_received(props: dict[str, str]) -> dict[bytes, bytes | None]:
        return {k.encode(): v.encode() for k, v in props.items()}

    hub = discovery.HubTxt("9f1c2e7a-hub")
    assert discovery.hub_txt(hub) == {"id": "9f1c2e7a-hub", "v": "1"}  # the keys hubs have always announced
    assert discovery.read_hub_txt(as_received(discovery.hub_txt(hub))) == hub
    agent = discovery.AgentTxt("store-7", "S007", "/scan")
    assert discovery.agent_txt(agent) == {"id": "store-7", "location": "S007", "path": "/scan"}
    assert discovery.read_agent_txt(as_received(discovery.agent_txt(agent))) == agent


@pytest.mark.parametrize("props", [None, {}, {b"id": None}, {b"id": b""}, {b"v": b"1"}])
def test_a_txt_record_without_an_id_names_no_hub(props: dict[bytes, bytes | None] | None) -> None:
    assert discovery.read_hub_txt(props) is None
    assert discovery.read_agent_txt(props) is None


def test_a_txt_record_is_read_leniently() -> None:
    read = discovery.read_hub_txt({b"id": b"hub-\xff", b"future": b"ignored"})
    assert read == discovery.HubTxt("hub-\ufffd", "")  # bad UTF-8 replaced, no version, unknown key ignored
    assert discovery.read_agent_txt({b"id": b"a"}) == discovery.AgentTxt("a", "", "/")


def test_instance_names_fit_one_dns_label() -> None:
    assert discovery.instance_name("hub", "h1") == "shelfsync hub h1"
    assert len(discovery.instance_name("agent", "x" * 100)) == discovery.INSTANCE_MAX_LEN


# --- identifier and value rules --------------------------------------------------------------------------------


@given(st.one_of(st.text(max_size=40), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,40}", fullmatch=True)))
def test_the_hub_takes_a_location_exactly_when_an_event_may_carry_it(location: str) -> None:
    wall_ms = 1_700_000_000_000
    try:
        StockEvent(bytes(16), "a", 1, 1, location, "SKU-1", Kind.RECEIVE, 1, pack_hlc(wall_ms, 0), wall_ms, "api:x")
    except ProtocolError:
        carried = False
    else:
        carried = True
    assert hub_is_location(location) is carried


def test_the_control_character_rule_is_c0_del_and_c1_and_text_refuses_more() -> None:
    control = {c for c in range(0x110000) if values.has_control(chr(c))}
    assert control == {*range(0x20), *range(0x7F, 0xA0)}
    not_text = {c for c in range(0x110000) if values.NOT_TEXT_RE.search(chr(c))}
    assert not_text == control | {0x2028, 0x2029, *range(0xD800, 0xE000)}
    assert one_line("a\nb\x9bc\u2028") == "a\\nb\\x9bc\u2028"  # a message escapes the controls, once


# --- one spelling ----------------------------------------------------------------------------------------------

AGREEMENTS = {
    *routes.AGENT_PATHS,
    discovery.HUB_SERVICE_TYPE,
    discovery.AGENT_SERVICE_TYPE,
    values.CONTROL_RE.pattern,
    r"[\x00-\x1f\x7f-\x9f]",
    values.CODE_RE.pattern,
}
# Where the same text means something else: the agent's own local API has a /healthz of its own; hub/openapi.py
# documents the hub's routes (test_openapi_* keeps it in step with the router); a staff id happens to take the
# location code's characters.
ELSEWHERE = {("agent/localapi/app.py", "/healthz"), ("agent/sessions/model.py", values.CODE_RE.pattern)}
DOCUMENTS = {"hub/openapi.py"}


def test_no_agreement_is_spelled_outside_protocol() -> None:
    found = []
    for package in ("agent", "hub", "hardware"):
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name in DOCUMENTS:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in AGREEMENTS and (name, node.value) not in ELSEWHERE:
                    found.append(f"{name}:{node.lineno}: {node.value!r}")
    assert found == [], "use protocol.routes / protocol.discovery / protocol.values instead"


def test_a_feed_cursor_reads_back_with_its_history_as_the_hub_gives_it_out() -> None:
    page = {"changes": [], "cursor": Cursor(7, "33f16c0c6237", "0a1b2c3d").text(), "more": False}
    decoded = wire.decode_page(page, 0)
    assert (decoded.cursor, decoded.history, decoded.cursor_text()) == (
        7, "33f16c0c62370a1b2c3d", "7.33f16c0c62370a1b2c3d")  # fmt: skip
    assert wire.feed_history(decoded.history or "") == "33f16c0c6237"  # what an agent learns for an older cursor
    assert read_cursor(decoded.cursor_text()) == Cursor(7, "33f16c0c6237", "0a1b2c3d")
    assert read_cursor("7.33f16c0c6237") == Cursor(7, "33f16c0c6237")  # the history alone, as hubs gave it before
    old = wire.decode_page({**page, "cursor": "7"}, 0)
    assert (old.history, old.cursor_text()) == (None, "7")  # an older hub's, or an older cursor's answer
    for bad in ("7.", "7.XYZ", "7." + "a" * 33, ".ab", "x.ab"):
        with pytest.raises(ProtocolError):
            wire.decode_page({**page, "cursor": bad}, 0)
