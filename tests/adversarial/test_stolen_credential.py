"""One store's credential in the wrong hands, used against the other stores through the hub's API.

A real ``python -m hub serve`` process (SQLite) on 127.0.0.1, credentials issued as ``shelfsync-hub agent add``
issues them: store A's agent (bound to S001), store B's (S002), a reader and an admin. Whatever A's credential
sends, it may book movements at S001 only; each test is one way it tried to reach S002 and what B's store sees.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from protocol import (
    Kind,
    StockEvent,
    SyncRequest,
    SyncResponse,
    decode_sync_response,
    encode_sync_request,
    new_event_id,
    pack_hlc,
    parse_event_id,
    wall_ms_now,
)
from tests.harness.commands import run_hub
from tests.harness.credentials import Credential, add_credential
from tests.harness.hub_process import HubProcess

BARCODE = "04006381333931"  # a GTIN-13 with a right check digit
UNKNOWN = f"unknown:{BARCODE}"
ANSWER_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Chain:
    hub: HubProcess
    a: Credential  # store A, bound to S001: the stolen one
    b: Credential  # store B, bound to S002
    reader: Credential
    admin: Credential

    def call(
        self, method: str, path: str, token: str, body: bytes | None = None, ctype: str | None = None
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} | ({"Content-Type": ctype} if ctype else {})
        req = urllib.request.Request(self.hub.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=ANSWER_TIMEOUT_S) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def read(self, path: str) -> Any:
        status, body = self.call("GET", path, self.reader.token)
        assert status == 200, body
        return json.loads(body)

    def sync(self, who: Credential, events: list[StockEvent]) -> SyncResponse:
        body = encode_sync_request(SyncRequest(who.agent_id, 1, tuple(events)))
        status, answer = self.call("POST", "/v1/sync", who.token, body, "application/msgpack")
        assert status == 200, answer
        return decode_sync_response(answer)

    def on_hand(self, location: str, sku: str) -> int:
        rows = self.read(f"/v1/locations/{location}/counts")["counts"]
        return sum(r["on_hand"] for r in rows if r["sku"] == sku)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    hub = HubProcess(tmp_path / "hub.log", db=tmp_path / "hub.db", port=0)
    assert run_hub("init", "--db", str(tmp_path / "hub.db")).returncode == 0
    creds = (
        add_credential(hub.db, "S001"), add_credential(hub.db, "S002"),
        add_credential(hub.db, role="reader"), add_credential(hub.db, role="admin"),
    )  # fmt: skip
    try:
        yield Chain(hub.start(), *creds)
    finally:
        hub.close()


def scan(who: Credential, seq: int, location: str, sku: str, qty: int) -> StockEvent:
    now = wall_ms_now()
    return StockEvent(
        new_event_id(), who.agent_id, 1, seq, location, sku, Kind.RECEIVE, qty, pack_hlc(now, 0), now, "scanner:door"
    )


def test_a_copied_event_id_does_not_stop_another_stores_scans_being_rebooked(chain: Chain) -> None:
    """B receives 7 of a barcode the catalog does not know yet; A reads B's event in the ledger (any credential may)
    and books 1 at S001 under the same event id, wall clock and seq, stamped just before it (so it is re-booked
    first). When the catalog learns the barcode, both stores' scans are re-booked onto the SKU: A's copy used to
    take the re-booked ids first, so B's re-booking was refused as a conflict and B's 7 stayed on the unknown key
    for good."""
    chain.sync(chain.b, [scan(chain.b, 1, "S002", UNKNOWN, 7)])
    (original,) = chain.read(f"/v1/ledger?location=S002&sku={UNKNOWN}")["events"]
    copy = StockEvent(
        parse_event_id(original["event_id"]), chain.a.agent_id, 1, original["seq"], "S001", UNKNOWN, Kind.RECEIVE, 1,
        original["occurred_at"] - 1, original["wall_ms"], "scanner:door",
    )  # fmt: skip
    assert chain.sync(chain.a, [copy]).rejected == ()  # A's own movement at its own location: it may book it

    item = json.dumps({"items": [{"barcode": BARCODE, "sku": "PEN"}]}).encode()
    status, body = chain.call("PUT", "/v1/catalog", chain.admin.token, item, "application/json")
    assert status == 200, body

    assert (chain.on_hand("S002", "PEN"), chain.on_hand("S002", UNKNOWN)) == (7, 0)
    assert (chain.on_hand("S001", "PEN"), chain.on_hand("S001", UNKNOWN)) == (1, 0)
    assert "re-booking event(s) were refused" not in chain.hub.log
    status, body = chain.call("PUT", "/v1/catalog", chain.admin.token, item, "application/json")
    assert (status, json.loads(body)["rebooked"]) == (200, 0)  # re-booking again changes nothing
    assert chain.on_hand("S002", "PEN") == 7


def _head_then_body(
    chain: Chain, token: str, method: str, path: str, ctype: str, body: bytes, meanwhile: list[str]
) -> int:
    """Send a request's head asking to continue, wait for the hub's ``100 Continue`` (its credential was found good
    from the head), run the ``shelfsync-hub`` command ``meanwhile``, then send the body; the answer's status."""
    with socket.create_connection(("127.0.0.1", chain.hub.port), timeout=ANSWER_TIMEOUT_S) as conn:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        )
        conn.sendall(head.encode())
        assert conn.recv(4096).startswith(b"HTTP/1.1 100"), "the hub refused the head"
        done = run_hub(*meanwhile)
        assert done.returncode == 0, done.stderr
        conn.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(65536)
            assert chunk, f"the hub closed the connection: {answer!r}"
            answer += chunk
        return int(answer.split(b" ", 2)[1])


def test_a_credential_revoked_while_its_body_uploads_writes_nothing(chain: Chain) -> None:
    """The thief's batch has its head through (``100 Continue``) when the operator revokes A's credential; the
    body comes after. It used to be committed (200): revocation did not reach a request already under way."""
    body = encode_sync_request(SyncRequest(chain.a.agent_id, 1, (scan(chain.a, 1, "S001", "SKU-1", 50),)))
    revoke = ["agent", "revoke", "--db", str(chain.hub.db), chain.a.agent_id]
    assert _head_then_body(chain, chain.a.token, "POST", "/v1/sync", "application/msgpack", body, revoke) == 401
    assert chain.read("/v1/ledger?location=S001")["events"] == []


def test_a_stolen_admin_credential_revoked_mid_upload_changes_no_catalog(chain: Chain) -> None:
    item = json.dumps({"items": [{"barcode": BARCODE, "sku": "WRONG"}]}).encode()
    revoke = ["agent", "revoke", "--db", str(chain.hub.db), chain.admin.agent_id]
    assert _head_then_body(chain, chain.admin.token, "PUT", "/v1/catalog", "application/json", item, revoke) == 401
    assert chain.read("/v1/catalog")["items"] == []


def test_a_credential_bound_elsewhere_while_its_body_uploads_writes_only_there(chain: Chain) -> None:
    """A's credential is bound to S009 instead of S001 (its PC moved to another store) while a batch is on its way:
    the batch is judged by the binding it has when it arrives."""
    body = encode_sync_request(SyncRequest(chain.a.agent_id, 1, (scan(chain.a, 1, "S001", "SKU-1", 50),)))
    bind = ["agent", "bind", "--db", str(chain.hub.db), chain.a.agent_id, "--location", "S009"]
    assert _head_then_body(chain, chain.a.token, "POST", "/v1/sync", "application/msgpack", body, bind) == 200
    assert chain.on_hand("S001", "SKU-1") == 0
    (refused,) = chain.read("/v1/ledger?location=S001")["events"]
    assert (refused["effect"], refused["rejection_code"]) == ("rejected", "forbidden_location")


def test_a_revocation_reaches_a_batch_under_way_at_another_postgresql_hub(pg_url: str, tmp_path: Path) -> None:
    """Two hub processes share one PostgreSQL database; the operator revokes A's credential (the command writes the
    database) while A's batch is on its way to the second hub. That hub refuses it, and the first refuses A's next
    request: revocation holds on every hub process at once, for a request under way too."""
    first = HubProcess(tmp_path / "hub-1.log", db=pg_url, port=0).start()
    second = HubProcess(tmp_path / "hub-2.log", db=pg_url, port=0)
    try:
        creds = (add_credential(pg_url, "S001"), add_credential(pg_url, "S002"), add_credential(pg_url, role="reader"))
        at_second = Chain(second.start(), *creds, admin=creds[2])
        body = encode_sync_request(SyncRequest(creds[0].agent_id, 1, (scan(creds[0], 1, "S001", "SKU-1", 50),)))
        revoke = ["agent", "revoke", "--db", pg_url, creds[0].agent_id]
        assert (
            _head_then_body(at_second, creds[0].token, "POST", "/v1/sync", "application/msgpack", body, revoke) == 401
        )
        at_first = Chain(first, *creds, admin=creds[2])
        status, _ = at_first.call("POST", "/v1/sync", creds[0].token, body, "application/msgpack")
        assert status == 401
        assert at_first.read("/v1/ledger?location=S001")["events"] == []
    finally:
        second.close()
        first.close()


def test_one_credential_reading_the_biggest_pages_in_a_loop_meets_its_own_read_budget(tmp_path: Path) -> None:
    """Reads had no budget (but the change feed's and the CSV downloads' cap): six connections of A's credential
    reading GET /v1/ledger?limit=10000 in a loop took store B's sync from 3.5 ms to 1,067 ms at the median. Now a
    credential that read more than its budget of answer bytes is answered 429 with Retry-After before anything is
    read; another credential's reads, A's own writes and A's change feed go on."""
    config = tmp_path / "hub.toml"
    config.write_text("[hub]\nread_bytes_per_s = 1000\nread_burst_bytes = 100000\n")
    hub = HubProcess(tmp_path / "hub.log", "--config", str(config), db=tmp_path / "hub.db", port=0)
    assert run_hub("init", "--db", str(tmp_path / "hub.db")).returncode == 0
    a, b, reader = add_credential(hub.db, "S001"), add_credential(hub.db, "S002"), add_credential(hub.db, role="reader")
    try:
        chain = Chain(hub.start(), a, b, reader, admin=reader)
        chain.sync(b, [scan(b, seq, "S002", f"SKU-{seq}", 1) for seq in range(1, 301)])
        status, page = chain.call("GET", "/v1/ledger?limit=10000", a.token)
        assert status == 200 and len(page) > 100_000  # the whole burst in one answer
        request = urllib.request.Request(chain.hub.url + "/v1/counts", headers={"Authorization": f"Bearer {a.token}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_S)
        assert refused.value.code == 429 and int(refused.value.headers["Retry-After"]) >= 1
        assert refused.value.headers["RateLimit-Policy"].startswith('"reads";q=100000;')
        problem = json.loads(refused.value.read())
        assert problem["code"] == "rate_limited" and "read_bytes_per_s" in problem["detail"]
        assert chain.call("GET", "/v1/ledger?limit=10000", b.token)[0] == 200  # B reads on
        assert chain.call("GET", "/v1/changes?location=S001", a.token)[0] == 200  # the feed's own budget
        assert chain.sync(a, [scan(a, 1, "S001", "SKU-1", 1)]).hwm == 1  # and A's writes
    finally:
        hub.close()
