"""Hostile identifiers and values against a real hub process: lone surrogates, NBSP and U+2028 SKUs,
NaN/Infinity, deep and huge attrs — on /v1/sync (raw msgpack), /v1/events, the catalog and the reports.

Each is answered 4xx with one sentence, never 500; every answer is strict JSON (no NaN, no lone
surrogate); what was accepted can be read back by every read route; and the ledger stays readable, rows
stored before the value rule included."""

from __future__ import annotations

import json
import math
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import msgpack

from protocol import MSGPACK_CONTENT_TYPE, new_event_id, pack_hlc
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess

NBSP_SKU = "CAFÉ\u00a0NOIR"
LINE_SEP_SKU = "CAFÉ\u2028NOIR"


def strict(raw: bytes) -> Any:
    """Parse an answer as a strict parser does: UTF-8, no NaN/Infinity, no lone surrogate."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"the answer holds {name}")

    text = raw.decode("utf-8")  # strict: a lone surrogate cannot have been encoded
    value = json.loads(text, parse_constant=refuse)
    assert is_text_tree(value), text[:200]  # no lone surrogate escape either
    return value


def is_text_tree(value: Any) -> bool:
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(is_text_tree(k) and is_text_tree(v) for k, v in value.items())
    if isinstance(value, list):
        return all(is_text_tree(v) for v in value)
    return True


def call(hub: HubProcess, method: str, path: str, token: str, body: bytes | None = None,
         content_type: str = "application/json") -> tuple[int, Any]:  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(hub.url + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        status, raw, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
    assert status < 500, (method, path, status, raw[:300])
    if ctype.startswith(("application/json", "application/problem+json")):
        answer = strict(raw)
        if status >= 400:
            message = answer["detail"]
            assert message and "\n" not in message and "\u2028" not in message, message
        return status, answer
    return status, msgpack.unpackb(raw) if raw else None


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def sync_body(agent_id: str, seq: int, **event: Any) -> bytes:
    now = time.time_ns() // 1_000_000
    ev = {"id": new_event_id(), "seq": seq, "location": "S001", "sku": "SKU-1", "kind": "receive", "qty": 1,
          "occurred_at": pack_hlc(now, 0), "wall_ms": now, "source": "scanner:door"} | event  # fmt: skip
    return msgpack.packb({"v": 1, "agent_id": agent_id, "epoch": 1, "events": [ev]})


def events_body(**event: Any) -> bytes:
    ev = {"id": f"o-{new_event_id().hex()}", "location": "WEB", "sku": "SKU-1", "kind": "reserve", "qty": 1,
          "occurred_at": time.time_ns() // 1_000_000} | event  # fmt: skip
    return json.dumps({"events": [ev]}, ensure_ascii=True).encode()


def test_hostile_values_are_refused_everywhere_and_what_is_accepted_reads_back(hub: HubProcess) -> None:
    agent = add_credential(hub.db, "S001")
    web = add_credential(hub.db, "WEB")
    admin = add_credential(hub.db, role="admin")
    hub.start()
    seq = iter(range(1, 1_000))

    def sync(expect: int, **event: Any) -> Any:
        status, answer = call(hub, "POST", "/v1/sync", agent.token, sync_body(agent.agent_id, next(seq), **event),
                              MSGPACK_CONTENT_TYPE)  # fmt: skip
        assert status == expect, (event, answer)
        return answer

    # /v1/sync, raw msgpack
    sync(200, sku=NBSP_SKU, attrs={"lot": "A\u00a01", "gs1": "01\x1d10ABC"})  # NBSP is text; GS1 data keeps its GS
    for bad in (
        {"sku": LINE_SEP_SKU}, {"sku": "A\x00B"}, {"ref": "R\u2029"}, {"reason": "x\x85"},
        {"attrs": {"x": float("nan")}}, {"attrs": {"x": float("inf")}}, {"attrs": {"x": {"deep": {"er": 1}}}},
        {"attrs": {f"k{i}": "v" for i in range(33)}}, {"attrs": {"x": "v" * 5_000}}, {"attrs": {"\u2028": 1}},
    ):
        answer = sync(422, **bad)
        assert "detail" in answer  # 422 answers are problem details with a sentence (checked in call)
    # a lone surrogate cannot be carried by a msgpack str: its UTF-8 form is refused as not msgpack
    raw = sync_body(agent.agent_id, next(seq), sku="SKU-\u00e9")
    forged = raw.replace("SKU-\u00e9".encode(), b"SKU\xed\xa0\x80")
    status, _ = call(hub, "POST", "/v1/sync", agent.token, forged, MSGPACK_CONTENT_TYPE)
    assert status == 400

    # /v1/events, JSON
    status, _ = call(hub, "POST", "/v1/events", web.token, events_body(sku=NBSP_SKU))
    assert status == 200
    for body in (
        events_body(sku="\ud800"), events_body(attrs={"x": "\udfff"}), events_body(ref="a\ud83dz"),
        events_body().replace(b'"qty": 1', b'"qty": NaN'), events_body(attrs={"x": 1}).replace(b'"x": 1', b'"x": Infinity'),
        events_body(attrs={"x": 1}).replace(b'"x": 1', b'"x": -1e999'),
        b'{"events": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}",
    ):
        status, answer = call(hub, "POST", "/v1/events", web.token, body)
        assert status == 400, (body[:80], answer)
    for bad in ({"sku": LINE_SEP_SKU}, {"attrs": {"a": {"b": {"c": 1}}}}, {"attrs": {"x": "y" * 300}},
                {"attrs": {f"k{i}": i for i in range(40)}}, {"id": "x\u2028"}):  # fmt: skip
        status, answer = call(hub, "POST", "/v1/events", web.token, events_body(**bad))
        assert status == 422 and "events[0]" in answer["detail"], (bad, answer)

    # catalog PUT (admin)
    def put_catalog(items: list[dict[str, Any]], raw: bytes | None = None) -> int:
        body = raw if raw is not None else json.dumps({"items": items}).encode()
        return call(hub, "PUT", "/v1/catalog", admin.token, body)[0]

    assert put_catalog([{"barcode": "CODE-NBSP", "sku": NBSP_SKU, "description": "Café\u00a0noir"}]) == 200
    assert put_catalog([{"barcode": "CODE-2028", "sku": LINE_SEP_SKU}]) == 400
    assert put_catalog([{"barcode": "X", "sku": "S", "description": "\ud800"}]) == 400
    assert put_catalog([], b'{"items": [{"barcode": "Y", "sku": "S", "pack_size": NaN}]}') == 400
    assert put_catalog([], b'{"items": [{"barcode": "Y", "sku": "S", "pack_size": 1e999}]}') == 400

    # reports: an observation with a hostile SKU (msgpack), a hostile system name (query)
    obs = {"v": 1, "agent_id": agent.agent_id, "observations": [
        {"id": "o1", "location": "S001", "sku": LINE_SEP_SKU, "system": "pos", "on_hand": 1, "observed_at_ms": 1}]}
    assert call(hub, "POST", "/v1/observations", agent.token, msgpack.packb(obs), MSGPACK_CONTENT_TYPE)[0] == 400
    for system in ("\u2028", "a\x00", "x" * 40):
        assert call(hub, "GET", f"/v1/divergence?system={q(system)}", admin.token)[0] == 400

    # read routes take the same rule: the NBSP SKU reads back everywhere, the U+2028 one is refused everywhere
    status, counts = call(hub, "GET", f"/v1/skus/{q(NBSP_SKU)}/counts", admin.token)
    assert status == 200 and {c["location"] for c in counts["counts"]} == {"S001", "WEB"}
    status, ledger = call(hub, "GET", f"/v1/ledger?sku={q(NBSP_SKU)}", admin.token)
    assert status == 200 and len([e for e in ledger["events"] if e["effect"] != "rejected"]) == 2
    assert call(hub, "GET", f"/v1/counts?sku={q(NBSP_SKU)}", admin.token)[1]["counts"]
    status, _ = call(hub, "PUT", f"/v1/locations/S001/skus/{q(NBSP_SKU)}/safety-stock", admin.token, b'{"qty": 2}')
    assert status == 200
    for path in (f"/v1/skus/{q(LINE_SEP_SKU)}/counts", f"/v1/ledger?sku={q(LINE_SEP_SKU)}",
                 f"/v1/counts?sku={q(LINE_SEP_SKU)}", "/v1/ledger?location=S%C2%A0001"):  # fmt: skip
        status, answer = call(hub, "GET", path, admin.token)
        assert status == 400 and ("SKU" in answer["detail"] or "location" in answer["detail"])
    status, _ = call(hub, "PUT", f"/v1/locations/S001/skus/{q(LINE_SEP_SKU)}/safety-stock", admin.token, b'{"qty": 2}')
    assert status == 400
    # UTF-8 that encodes a surrogate, in a URL: in a query (which would read it as U+FFFD, a character a SKU may
    # hold) and in a path (which would take it for the literal text), refused with one sentence; never a 500
    for path in ("/v1/ledger?sku=%ED%A0%80", "/v1/skus/%ED%A0%80/counts"):
        status, answer = call(hub, "GET", path, admin.token)
        assert status == 400 and "UTF-8" in answer["detail"], answer


def test_rows_stored_before_the_rule_are_served_as_strict_json(hub: HubProcess) -> None:
    agent = add_credential(hub.db, "S001")
    reader = add_credential(hub.db, role="reader")
    hub.start()
    for seq in range(1, 4):
        assert call(hub, "POST", "/v1/sync", agent.token, sync_body(agent.agent_id, seq), MSGPACK_CONTENT_TYPE)[0] == 200
    # what an older hub stored: json.dumps of attrs with NaN, Infinity and a lone surrogate
    old = json.dumps({"nan": math.nan, "inf": -math.inf, "lot": "L\ud800", "ok": 1})
    with sqlite3.connect(hub.db, timeout=10) as db:
        db.execute("PRAGMA busy_timeout = 10000")
        assert db.execute("UPDATE events SET attrs = ? WHERE seq = 2", (old,)).rowcount == 1
    rows: list[dict[str, Any]] = []
    path = "/v1/ledger?limit=1"
    for _ in range(10):
        status, page = call(hub, "GET", path, reader.token)
        assert status == 200
        rows += page["events"]
        if page["next"] is None:
            break
        path = f"/v1/ledger?limit=1&cursor={page['next']}"
    assert [r["seq"] for r in rows] == [3, 2, 1]
    assert rows[1]["attrs"] == {"nan": None, "inf": None, "lot": "L\ufffd", "ok": 1}
