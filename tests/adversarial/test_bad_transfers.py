"""Bad and unfinished transfers against a real hub process over HTTP: nothing lands in transit that should
not, a final receipt closes the transfer with a write-off, and a partial one keeps it open."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import get_json

NOW_MS = time.time_ns() // 1_000_000


def push(hub: HubProcess, token: str, *events: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{hub.url}/v1/events",
        data=json.dumps({"events": list(events)}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body
    except urllib.error.HTTPError as err:
        raise AssertionError(f"{err.code}: {err.read()[:300]!r}") from None


def move(id_: str, location: str, kind: str, qty: int, ref: str, **attrs: Any) -> dict[str, Any]:
    return {"id": id_, "location": location, "sku": "SKU-1", "kind": kind, "qty": qty, "occurred_at": NOW_MS,
            "ref": ref, "attrs": attrs}  # fmt: skip


def in_transit(hub: HubProcess, token: str, location: str) -> int:
    rows = get_json(f"{hub.url}/v1/locations/{location}/counts", token)["counts"]
    return sum(r["in_transit"] for r in rows)


def test_a_billion_to_anywhere_and_other_bad_transfers_are_refused(hub: HubProcess) -> None:
    sender = add_credential(hub.db, "S001")
    hub.start()
    answer = push(
        hub,
        sender.token,
        move("billion", "S001", "transfer_out", -1_000_000_000, "T-1", to="S002"),
        move("nowhere", "S001", "transfer_out", -5, "T-2"),
        move("to-self", "S001", "transfer_out", -5, "T-3", to="S001"),
        move("not-a-code", "S001", "transfer_out", -5, "T-4", to="../etc"),
        move("maybe-final", "S001", "transfer_in", 5, "T-5", final="yes"),
    )
    assert [(e["status"], e.get("code")) for e in answer["events"]] == [("rejected", "invalid_transfer")] * 5
    assert all(e["reason"] for e in answer["events"])
    for location in ("S001", "S002"):
        assert in_transit(hub, sender.token, location) == 0
    refused = [e for e in get_json(f"{hub.url}/v1/exceptions", sender.token)["exceptions"] if e["kind"] == "rejected_event"]
    assert len(refused) == 5


def test_a_short_final_receipt_closes_the_transfer_with_a_write_off(hub: HubProcess) -> None:
    a = add_credential(hub.db, "S001")
    b = add_credential(hub.db, "S002")
    hub.start()
    push(hub, a.token, move("ship", "S001", "transfer_out", -10, "T-9", to="S002"))
    assert in_transit(hub, a.token, "S002") == 10
    push(hub, b.token, move("part", "S002", "transfer_in", 5, "T-9"))
    assert in_transit(hub, b.token, "S002") == 5, "a partial receipt keeps it open"
    push(hub, b.token, move("last", "S002", "transfer_in", 3, "T-9", final=True))
    assert in_transit(hub, b.token, "S002") == 0, "the final receipt closes it"
    [short] = [e for e in get_json(f"{hub.url}/v1/exceptions", a.token)["exceptions"] if e["kind"] == "transfer_short"]
    assert (short["data"]["written_off"], short["data"]["shipped"], short["data"]["received"]) == (2, 10, 8)
    ledger = get_json(f"{hub.url}/v1/ledger?location=S002", b.token)["events"]
    [off] = [e for e in ledger if e["kind"] == "transfer_writeoff"]
    assert (off["qty"], off["ref"], off["reason"]) == (-2, "T-9", "lost_in_transit")
    push(hub, b.token, move("last", "S002", "transfer_in", 3, "T-9", final=True))  # a resend changes nothing
    assert in_transit(hub, b.token, "S002") == 0
    assert [e["qty"] for e in get_json(f"{hub.url}/v1/ledger?location=S002", b.token)["events"]
            if e["kind"] == "transfer_writeoff"] == [-2]  # fmt: skip
