"""Every member of a real answer is in the OpenAPI document, and every example in the document is what the hub
does: a live hub process (tests/api/live.py) is called on every operation that answers JSON or msgpack, the
writes with the document's own example bodies, and each answer is checked against its documented schema made
closed (``unevaluatedProperties: false`` on every object schema that lists properties; a map described as
free-form stays open), so a field the hub answers but the document lacks fails here. Schemathesis checks the
same answers with open schemas (a /v1 answer may gain fields, docs/hub-api.md "API versions"); this test keeps
the document complete. The examples of the answers are checked against their schemas too, so they cannot rot.
"""

from __future__ import annotations

import copy
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgpack
import pytest
from jsonschema import Draft202012Validator

from hub import openapi
from protocol import (
    MSGPACK_CONTENT_TYPE,
    Kind,
    StockEvent,
    SyncRequest,
    encode_sync_request,
    new_event_id,
    pack_hlc,
    wall_ms_now,
)
from protocol.routes import SYNC_PATH
from tests.api.live import CHANNEL, LOST_AGENT, REFUSED_ORDER, LiveHub, live_hub

JSON_TYPE = "application/json"
PATH_VALUES = {"location": "S001", "sku": "SKU-1", "name": "web-shop"}
PER_PATH = {  # path parameters other than PATH_VALUES
    "/v1/bundles/{sku}": {"sku": "KIT-1"},
    "/v1/channels/{name}/divergences": {"name": CHANNEL},
    "/v1/channels/{name}/mapping/refresh": {"name": CHANNEL},
    "/v1/channels/{name}/reconcile": {"name": CHANNEL},
    "/v1/channels/{name}/orders/{order_id}/dismiss": {"name": CHANNEL, "order_id": REFUSED_ORDER},
    "/v1/channels/{name}/orders/{order_id}/undismiss": {"name": CHANNEL, "order_id": REFUSED_ORDER},
    "/v1/agents/{agent_id}/lost/dismiss": {"agent_id": LOST_AGENT},
}
NOT_CALLED = {
    ("GET", "/v1/changes/stream"): "a stream that does not end (tests/hub covers it)",
    ("GET", "/metrics"): "Prometheus text, not JSON",
    ("POST", "/v1/channels/{name}/webhooks"): "signed by the channel; tests/channels covers its answers",
    ("POST", "/v1/observations"): "msgpack, sent by the live hub's seed; its answer is a ReportAnswer",
    ("POST", "/v1/import-issues"): "msgpack; its answer is a ReportAnswer, as that of observations",
}

pytestmark = pytest.mark.timeout(240)


def closed(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with every object schema that lists its properties closed, except the parts of an ``allOf`` (the
    ``allOf`` itself is closed: ``unevaluatedProperties`` sees through it)."""
    out = copy.deepcopy(doc)
    in_all_of: set[str] = set()

    def parts(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from parts(value)
        elif isinstance(node, list):
            for value in node:
                yield from parts(value)

    for node in parts(out):
        for part in node.get("allOf", []):
            if "$ref" in part:
                in_all_of.add(part["$ref"])
            part["x-open"] = True
    schemas = out["components"]["schemas"]
    for node in parts(out):
        if node.get("x-open") or any(ref == f"#/components/schemas/{n}" and schemas[n] is node
                                     for ref in in_all_of for n in schemas):  # fmt: skip
            continue
        if (node.get("properties") or "allOf" in node) and "additionalProperties" not in node:
            node["unevaluatedProperties"] = False
    return out


def validator(doc: dict[str, Any], pointer: str) -> Draft202012Validator:
    """A validator of the schema at ``pointer`` (a JSON pointer into ``doc``), its ``$ref``s resolved in ``doc``."""
    return Draft202012Validator({**doc, "$ref": pointer})


def pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def answer_of(raw: bytes, media: str) -> Any:
    if media == MSGPACK_CONTENT_TYPE:
        return _text(msgpack.unpackb(raw, raw=False, strict_map_key=False))
    return json.loads(raw)


def _text(value: Any) -> Any:
    """A msgpack answer as the document describes it: a ``bin`` as text of code points 0–255."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def _path(path: str, quarantine_id: int) -> str:
    values = {**PATH_VALUES, **PER_PATH.get(path, {}), "quarantine_id": str(quarantine_id)}
    return path.format(**values)


def _sync_body(hub: LiveHub) -> bytes:
    now = wall_ms_now()
    event = StockEvent(new_event_id(), hub.agent.agent_id, 1, 6, "S001", "SKU-2", Kind.RECEIVE, 3, pack_hlc(now, 0),
                       now, "scanner:door")  # fmt: skip
    return encode_sync_request(SyncRequest(hub.agent.agent_id, 1, (event,), sent_ms=now))


def test_every_member_of_every_answer_is_in_the_document(tmp_path: Path) -> None:
    doc = openapi.build()
    strict = closed(doc)
    checked: list[str] = []
    with live_hub(tmp_path) as hub:
        tokens = {"reader": hub.reader.token, "agent": hub.agent.token, "admin": hub.admin.token}
        held = json.loads(hub.call("GET", "/v1/quarantine", hub.reader.token)[2])["quarantine"]
        assert held, "the live hub holds an event"
        deadline = time.monotonic() + 30
        while json.loads(hub.call("GET", "/v1/channels", hub.reader.token)[2])["channels"][0]["last_push"] is None:
            assert time.monotonic() < deadline, "the channel never pushed"
            time.sleep(0.05)
        for method, path in sorted(openapi.operations(doc), key=lambda op: (op[0] != "GET", op[1])):
            if (method, path) in NOT_CALLED:
                continue
            op = doc["paths"][path][method.lower()]
            roles = op.get("x-shelfsync-roles", [])
            token = next((tokens[r] for r in ("reader", "agent", "admin") if r in roles), None)
            body: bytes | None = None
            content_type = JSON_TYPE
            if "requestBody" in op:
                content = op["requestBody"]["content"]
                if MSGPACK_CONTENT_TYPE in content:
                    assert path == SYNC_PATH, f"{method} {path}: a msgpack body this test cannot build"
                    body, content_type = _sync_body(hub), MSGPACK_CONTENT_TYPE
                else:
                    body = json.dumps(content[JSON_TYPE]["example"]).encode()
            status, headers, raw = hub.call(method, _path(path, held[0]["id"]), token, body, content_type)
            assert str(status) in op["responses"], (method, path, status, raw[:300])
            assert status == 200, f"{method} {path} with the document's example: {status} {raw[:300]!r}"
            media = headers["Content-Type"].split(";")[0]
            answer = answer_of(raw, media)
            where = pointer("paths", path, method.lower(), "responses", "200", "content", media, "schema")
            errors = sorted(validator(strict, where).iter_errors(answer), key=str)
            assert not errors, f"{method} {path}: {errors[0].message} at {list(errors[0].absolute_path)}"
            checked.append(f"{method} {path}")
    assert len(checked) == len(openapi.operations(doc)) - len(NOT_CALLED)


def test_every_example_of_an_answer_fits_its_schema() -> None:
    doc = openapi.build()
    strict = closed(doc)
    examples = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status, answer in op["responses"].items():
                for media, content in answer.get("content", {}).items():
                    if "example" not in content or media not in (JSON_TYPE, MSGPACK_CONTENT_TYPE):
                        continue
                    where = pointer("paths", path, method, "responses", status, "content", media, "schema")
                    errors = list(validator(strict, where).iter_errors(content["example"]))
                    assert not errors, f"{method.upper()} {path} {status}: {errors[0].message}"
                    examples += 1
    assert examples >= 25


SLOW_HEAD_TIMEOUT_S = 0.3  # the live hub's header_timeout_s in the test below
RAW_ANSWER_TIMEOUT_S = 30.0  # a bound on a hung hub, never a measurement


def _raw_status(url: str, head: bytes) -> int:
    """Send ``head`` on a new connection to the hub at ``url`` and return the status it answers with."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), RAW_ANSWER_TIMEOUT_S) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_every_status_the_hub_sends_to_any_request_is_documented_on_every_operation(tmp_path: Path) -> None:
    """What the hub answers whatever the route: another method (405), an Expect it does not take (417), a request
    that is not HTTP/1.1 (400, the public /healthz too) and a head that never ends (408): each operation lists
    them, as sent by a live hub."""
    doc = openapi.build()
    with live_hub(tmp_path, seeded=False, header_timeout_s=SLOW_HEAD_TIMEOUT_S) as hub:
        for method, path in sorted(openapi.operations(doc)):
            op = doc["paths"][path][method.lower()]
            target = _path(path, 1).encode()
            auth = f"Authorization: Bearer {hub.admin.token}\r\n".encode()
            sent = {
                "405": b"DELETE " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n",
                "417": method.encode() + b" " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth
                + b"Expect: foo\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                "400": method.encode() + b" " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                "408": method.encode() + b" " + target + b" HTTP/1.1\r\nHost: x\r\nX-Trickle: 1\r\n",  # never ends
            }
            for status, head in sent.items():
                got = _raw_status(hub.url, head)
                assert str(got) == status, f"{method} {path}: {status} expected, the hub answered {got}"
                assert status in op["responses"], f"{method} {path} answers {status}, which the document omits"
