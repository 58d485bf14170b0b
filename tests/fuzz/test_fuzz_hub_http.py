"""Fuzzing the hub over HTTP: mutated sync requests and JSON bodies never make it fail (no 5xx),
every refusal is a JSON error with one sentence, and the ledger only ever holds valid events."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import MSGPACK_CONTENT_TYPE
from tests.fuzz.test_fuzz_codec import anything, byte_mutated, mutated, wire_request
from tests.harness.inprocess import ThreadedHub, hub_in_thread

pytestmark = pytest.mark.timeout(240)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
REFUSALS = {400, 403, 413, 415, 422}


@dataclass
class FuzzedHub:
    hub: ThreadedHub
    agent_id: str
    token: str
    admin_token: str

    def post(self, path: str, body: bytes, content_type: str, token: str | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.hub.port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {token or self.token}", "Content-Type": content_type}
            conn.request("POST" if path != "/v1/catalog" else "PUT", path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def ledger_size(self) -> int:
        return len(self.hub.call(self.hub.store.ledger(limit=10_000)))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedHub]:
    """One hub for the whole module, in a thread of its own (hypothesis drives it from this one)."""
    db: Path = tmp_path_factory.mktemp("fuzz-hub") / "hub.db"
    with hub_in_thread(db, rate_limit_per_s=0.0) as hub:
        agent_id, token = hub.call(hub.store.add_agent(["S1"]))
        _, admin = hub.call(hub.store.add_agent(["S1"], role="admin"))
        yield FuzzedHub(hub, agent_id, token, admin)


def check_answer(status: int, body: bytes) -> None:
    assert status < 500, f"the hub failed: {status} {body[:300]!r}"
    if status in REFUSALS:
        message = json.loads(body)["detail"]
        assert message and "\n" not in message


def with_agent(msg: dict[str, Any], hub: FuzzedHub) -> dict[str, Any]:
    """Most mutations keep the request the credential's own, so they get past the sender check."""
    if isinstance(msg.get("agent_id"), str):
        msg["agent_id"] = hub.agent_id
    events = msg.get("events")
    for ev in events if isinstance(events, list) else []:
        if isinstance(ev, dict) and isinstance(ev.get("location"), str):
            ev["location"] = "S1"
    return msg


@FUZZ
@given(msg=mutated(wire_request()), data=byte_mutated(wire_request()))
def test_mutated_sync_requests_are_answered_never_failed(served: FuzzedHub, msg: dict[str, Any], data: bytes) -> None:
    before = served.ledger_size()
    status, body = served.post("/v1/sync", msgpack.packb(with_agent(msg, served), use_bin_type=True), MSGPACK_CONTENT_TYPE)
    check_answer(status, body)
    if status != 200:
        assert served.ledger_size() == before, "a refused request commits nothing"
    check_answer(*served.post("/v1/sync", data, MSGPACK_CONTENT_TYPE))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    shapes = [
        {"events": [{"id": "a", "location": "S1", "sku": "K", "kind": "receive", "qty": 1, "occurred_at": "2025-01-01T00:00:00Z"}]},
        {"items": [{"barcode": "4006381333931", "sku": "K", "pack_size": 1}]},
        {"qty": 3},
    ]  # fmt: skip
    body = draw(st.sampled_from(shapes))
    body = json.loads(json.dumps(body))
    inner = body[next(iter(body))]
    target = inner[0] if isinstance(inner, list) else body
    key = draw(st.sampled_from(sorted(target)))
    target[key] = draw(json_values)
    text = json.dumps(body, allow_nan=True)
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=5))
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(body=json_bodies(), extra=anything)
def test_mutated_json_bodies_are_answered_never_failed(served: FuzzedHub, body: bytes, extra: Any) -> None:
    for path in ("/v1/events", "/v1/catalog", "/v1/locations/S1/skus/K/safety-stock"):
        check_answer(*served.post(path, body, "application/json", token=served.admin_token))
    check_answer(*served.post("/v1/observations", msgpack.packb(extra, use_bin_type=True), MSGPACK_CONTENT_TYPE))
