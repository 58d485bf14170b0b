"""Requests to a real hub that no client of ours sends, but an attacker or a careless consumer does.

A real ``python -m hub serve`` process on 127.0.0.1: a change-feed consumer
whose cursor is ahead of the feed (a cursor of another hub, or the hub's
database restored from a backup) must hear so instead of waiting forever
while changes pass it by; a request carrying two ``Authorization`` headers
must be refused rather than judged by whichever one the hub happens to read.
"""

from __future__ import annotations

import http.client
import json
import shutil
import time
from pathlib import Path

from tests.harness.credentials import Credential, add_credential
from tests.harness.hub_process import HubProcess

ANSWER_TIMEOUT_S = 15.0


def _request(
    hub: HubProcess, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=ANSWER_TIMEOUT_S)
    try:
        conn.putrequest(method, path)
        for name, value in headers:  # putheader keeps repeated headers, as an attacker sends them
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read(64 * 1024).decode(errors="replace")
    finally:
        conn.close()


def _bearer(cred: Credential) -> tuple[str, str]:
    return ("Authorization", f"Bearer {cred.token}")


def _push(hub: HubProcess, agent: Credential, *ids: str) -> None:
    now_ms = int(time.time() * 1000)
    events = [
        {"id": i, "location": "WEB", "sku": f"SKU-{i}", "kind": "receive", "qty": 5, "occurred_at": now_ms - n}
        for n, i in enumerate(ids)
    ]
    status, body = _request(
        hub, "POST", "/v1/events", [_bearer(agent), ("Content-Type", "application/json")],
        json.dumps({"events": events}).encode(),
    )  # fmt: skip
    assert status == 200, body


def _changes(hub: HubProcess, reader: Credential, cursor: str) -> tuple[int, dict[str, object]]:
    status, body = _request(hub, "GET", f"/v1/changes?cursor={cursor}", [_bearer(reader)])
    return status, json.loads(body)


def test_a_cursor_ahead_of_the_feed_is_refused_not_left_waiting(hub: HubProcess) -> None:
    agent = add_credential(hub.db, "WEB")
    reader = add_credential(hub.db, role="reader")
    hub.start()
    _push(hub, agent, "a", "b")
    status, page = _changes(hub, reader, "0")
    assert status == 200 and page["cursor"] == "2", page
    for path, headers in (
        ("/v1/changes?cursor=9223372036854775807", [_bearer(reader)]),
        ("/v1/changes?cursor=3&wait=1", [_bearer(reader)]),
        ("/v1/changes/stream?cursor=3", [_bearer(reader)]),
        ("/v1/changes/stream", [_bearer(reader), ("Last-Event-ID", "3")]),
    ):
        status, body = _request(hub, "GET", path, headers)
        assert status == 400, (path, status, body)
        assert "ahead of this hub's change feed" in body and "newest change is 2" in body, body
        assert "from the start (leave the cursor out)" in body, body
    status, page = _changes(hub, reader, "2")  # the newest cursor itself is fine
    assert status == 200 and page["changes"] == [], page


def test_a_consumer_ahead_of_a_restored_hub_hears_so(hub: HubProcess, tmp_path: Path) -> None:
    agent = add_credential(hub.db, "WEB")
    reader = add_credential(hub.db, role="reader")
    hub.start()
    _push(hub, agent, "a")
    hub.close()
    backup = tmp_path / "backup.db"
    shutil.copyfile(hub.db, backup)  # last night's backup: one change
    hub.start()
    _push(hub, agent, "b", "c", "d")
    status, page = _changes(hub, reader, "0")
    assert status == 200 and page["cursor"] == "4", page  # the web shop has read up to 4
    hub.close()
    for suffix in ("-wal", "-shm"):
        Path(hub.db + suffix).unlink(missing_ok=True)
    shutil.copyfile(backup, hub.db)  # the disk died; the operator restores the backup
    hub.start()
    _push(hub, agent, "e")  # change 2 again: the shop would never see it behind its cursor 4
    status, page = _changes(hub, reader, "4")
    assert status == 400, page
    assert "restored from a backup" in json.dumps(page), page


def test_two_authorization_headers_are_refused(hub: HubProcess) -> None:
    reader = add_credential(hub.db, role="reader")
    admin = add_credential(hub.db, "WEB", role="admin")
    hub.start()
    body = json.dumps({"safety_stock": 3}).encode()
    for first, second in ((reader, admin), (admin, reader)):
        status, text = _request(
            hub, "PUT", "/v1/locations/WEB/skus/SKU-1/safety-stock",
            [_bearer(first), _bearer(second), ("Content-Type", "application/json")], body,
        )  # fmt: skip
        assert status == 400, (status, text)
        assert "more than one Authorization header" in text
        status, text = _request(hub, "GET", "/v1/changes", [_bearer(first), _bearer(second)])
        assert status == 400, (status, text)
    status, text = _request(hub, "GET", "/v1/changes", [_bearer(reader)])
    assert status == 200, text
