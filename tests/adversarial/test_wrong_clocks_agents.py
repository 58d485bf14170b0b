"""Wrong clocks in real agent processes against a real hub process, seen the way a store and an operator see them.

Every agent here is ``python -m agent run`` (tests/faults/helpers.py), and every movement is recorded by
``python -m agent record``, another process. A machine's clock is made wrong from outside the agent: a
``sitecustomize`` module on PYTHONPATH shifts ``time.time_ns`` and ``time.time`` of that process by a fixed
offset, exactly as a wrong system clock would (the agent's code is not touched). The operator acts with an
admin credential over HTTP; the store reads ``shelfsync-agent status``.

- A clock a century ahead (a dead CMOS battery): the count it stamps is held, sales after the clock is fixed
  count, the operator applies the count at its receipt: nothing lost, nothing twice.
- A clock set back six months on a machine whose credential is a year old (the hub's rule for a sender's
  clock behind the window, ``hub.clock_window.BEHIND``): its sales are held instead of slipping under a count
  another store took since; once the clock is fixed, its movements count as usual.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from protocol import unpack_hlc, wall_ms_now
from tests.faults.helpers import Store, _api_ledger_ids, hub_events, integrity_ok, outbox_events, wait_until
from tests.harness.commands import run_agent
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import get_json

DAY_MS = 86_400_000
CENTURY_MS = 36_525 * DAY_MS
HALF_YEAR_MS = 182 * DAY_MS
SKEW_SLACK_MS = 60_000
CLI_TIMEOUT_S = 60.0
WAIT_S = 90.0
OFFSET_ENV = "SHELFSYNC_TEST_CLOCK_OFFSET_MS"
SITECUSTOMIZE = f'''"""A wrong system clock for this test process: every wall-clock read is shifted by ${OFFSET_ENV} ms."""
import os
import time

_OFFSET_MS = int(os.environ.get("{OFFSET_ENV}", "0"))
if _OFFSET_MS:
    _time_ns, _time = time.time_ns, time.time
    time.time_ns = lambda: _time_ns() + _OFFSET_MS * 1_000_000
    time.time = lambda: _time() + _OFFSET_MS / 1000
'''


@pytest.fixture
def wrong_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Any]:
    """``with wrong_clock(offset_ms): store.start()`` — processes started inside run with that clock."""
    site = tmp_path / "wrong-clock"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)

    @contextmanager
    def clock(offset_ms: int) -> Iterator[None]:
        with monkeypatch.context() as m:
            m.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
            m.setenv(OFFSET_ENV, str(offset_ms))
            yield

    return clock


def agent_cli(store: Store, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m agent <args> --config <store's>``, with the clock of the environment it is called in."""
    return run_agent(*args, "--config", str(store.config), timeout_s=CLI_TIMEOUT_S)


def record(store: Store, kind: str, qty: int, sku: str) -> str:
    done = agent_cli(store, "record", "--sku", sku, "--kind", kind, "--qty", str(qty))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def status(store: Store) -> tuple[dict[str, Any], str]:
    """``status --json`` and the human ``status``, as the store would read them."""
    done = agent_cli(store, "status", "--json")
    assert done.stdout.strip(), done.stderr
    text = agent_cli(store, "status").stdout
    report: dict[str, Any] = json.loads(done.stdout)
    return report, text


def outbox_meta(store: Store, key: str) -> Any:
    """A value of the outbox's meta table; None before the agent created the outbox (never created here)."""
    if not store.outbox.exists():
        return None
    conn = sqlite3.connect(f"{store.outbox.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]
    except sqlite3.OperationalError:  # the agent is creating it right now
        return None
    finally:
        conn.close()


def synced(store: Store) -> bool:
    """Every movement of the outbox acknowledged by the hub (held ones included: they are processed)."""
    last = outbox_meta(store, "last_seq")
    return bool(last) and (outbox_meta(store, "acked_seq") or 0) >= last


def admin_post(hub: HubProcess, token: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        hub.url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def on_hand(hub: HubProcess, token: str, location: str, sku: str) -> int:
    rows = get_json(f"{hub.url}/v1/locations/{location}/counts", token)["counts"]
    return next((r["on_hand"] for r in rows if r["sku"] == sku), 0)


def verdict(hub: HubProcess, stores: list[Store], token: str, *, applied: set[str], expected: dict[tuple[str, str], int]) -> None:
    """helpers.verify, for outboxes with held movements: the hub holds exactly what the outboxes recorded,
    less what is still held or was discarded, plus what the operator applied; counts as expected; no event
    in a ledger twice; every database intact; no traceback anywhere."""
    recorded: dict[str, Any] = {}
    held: set[str] = set()
    for store in stores:
        recorded |= outbox_events(store.outbox)
        aside = outbox_events(store.outbox, set_aside=True)
        held |= set(aside)
        recorded |= {k: v for k, v in aside.items() if k in applied}
    assert applied <= held, "an applied movement was held first"
    locations = sorted({s.location for s in stores})
    at_hub = {k: v for k, v in hub_events(Path(hub.db)).items() if v.location in locations}
    assert set(at_hub) == set(recorded), (
        f"lost {sorted(set(recorded) - set(at_hub))[:3]}, unknown {sorted(set(at_hub) - set(recorded))[:3]}"
    )
    for key, row in recorded.items():
        assert (at_hub[key].kind, at_hub[key].qty, at_hub[key].sku) == (row.kind, row.qty, row.sku), key
    twice: list[str] = []
    got: dict[tuple[str, str], int] = {}
    for location in locations:
        ids: Counter[str] = _api_ledger_ids(hub.url, token, location)
        twice += [k for k, n in ids.items() if n > 1]
        got |= {(location, r["sku"]): r["on_hand"]
                for r in get_json(f"{hub.url}/v1/locations/{location}/counts", token)["counts"]}  # fmt: skip
    assert not twice, f"in the ledger twice: {twice[:3]}"
    assert got == expected
    for path in [Path(hub.db), *(s.outbox for s in stores)]:
        assert integrity_ok(path), path
    assert "Traceback" not in hub.log_path.read_text(errors="replace")
    for store in stores:
        assert "Traceback" not in store.log(), store.name


def test_a_century_ahead_count_is_held_and_the_operator_applies_it_once(
    hub: HubProcess, make_store: Callable[..., Store], wrong_clock: Callable[[int], Any]
) -> None:
    a = make_store(hub, hub.url, name="store-a", location="STORE-1")
    b = make_store(hub, hub.url, name="store-b", location="STORE-1")  # a second agent at the same location
    admin = add_credential(hub.db, role="admin")
    hub.start()
    b.start()
    record(b, "receive", 30, "SKU-A")
    wait_until("B's receipt reached the hub", lambda: synced(b), WAIT_S)

    with wrong_clock(CENTURY_MS):  # a dead CMOS battery: a hundred years ahead
        a.start()
        counted = record(a, "count", 50, "SKU-A")
    wait_until("A's count was processed", lambda: synced(a), WAIT_S)
    assert on_hand(hub, admin.token, "STORE-1", "SKU-A") == 30, "a count a century ahead froze nothing"
    wrong, text = status(a)
    assert (wrong["held_by_hub"], wrong["set_aside"]) == (1, 0), wrong
    assert wrong["clock_skew_ms"] < -(CENTURY_MS - DAY_MS), "hub minus this machine: the machine is far ahead"
    assert "held by hub  1 events" in text and "clock        WRONG: this machine's clock is 36,52" in text, text
    assert "ahead of the hub's" in text

    assert a.runs[-1].stop() == 0  # the clock is fixed; the agent restarts with it
    a.start()
    wait_until(
        "A's hybrid clock came back to the real time",
        lambda: unpack_hlc(outbox_meta(a, "hlc_last") or 0)[0] < wall_ms_now() + DAY_MS,
        WAIT_S,
    )
    for _ in range(3):
        record(a, "sale", -1, "SKU-A")
    record(b, "sale", -2, "SKU-A")
    wait_until("both agents synced", lambda: synced(a) and synced(b), WAIT_S)
    assert on_hand(hub, admin.token, "STORE-1", "SKU-A") == 25, "every real sale after the held count counts"
    fixed, text = status(a)
    assert fixed["exit_code"] == 0 and fixed["held_by_hub"] == 1 and fixed["set_aside"] == 0, fixed
    assert abs(fixed["clock_skew_ms"]) < SKEW_SLACK_MS and "WRONG" not in text, text
    ledger = get_json(f"{hub.url}/v1/ledger?location=STORE-1&sku=SKU-A", admin.token)["events"]
    assert {e["effect"] for e in ledger if e["kind"] == "sale"} == {"applied"}

    exceptions = get_json(f"{hub.url}/v1/exceptions", admin.token)["exceptions"]
    [exc] = [e for e in exceptions if e["kind"] == "clock_quarantine"]
    assert exc["location"] == "STORE-1" and "ahead of the hub's clock" in exc["detail"]
    [held] = get_json(f"{hub.url}/v1/quarantine", admin.token)["quarantine"]
    assert (held["event_id"], held["kind"], held["qty"], held["agent_id"]) == (counted, "count", 50, a.cred.agent_id)

    code, refused = admin_post(hub, a.cred.token, f"/v1/quarantine/{held['id']}", {"action": "apply_at_receipt"})
    assert code == 403, refused  # the store's own credential cannot resolve it
    code, body = admin_post(hub, admin.token, f"/v1/quarantine/{held['id']}", {"action": "apply_at_receipt"})
    assert code == 200 and body["quarantine"]["status"] == "applied", body
    code, again = admin_post(hub, admin.token, f"/v1/quarantine/{held['id']}", {"action": "apply_at_receipt"})
    assert code == 409, again
    # At its receipt: after B's receipt of 30, before the four sales. 50 - 3 - 2.
    assert on_hand(hub, admin.token, "STORE-1", "SKU-A") == 45
    assert [e for e in get_json(f"{hub.url}/v1/exceptions", admin.token)["exceptions"] if e["kind"] == "clock_quarantine"] == []
    record(a, "sale", -1, "SKU-A")  # A's next sync learns the hub holds nothing of it any more
    wait_until("A's status no longer shows a held event", lambda: status(a)[0]["held_by_hub"] == 0, WAIT_S)
    verdict(hub, [a, b], admin.token, applied={counted}, expected={("STORE-1", "SKU-A"): 44})


def _age_credential(hub: HubProcess, agent_id: str, by_ms: int) -> None:
    """Make a credential as old as a store's that has run for a year (set up before the hub starts)."""
    conn = sqlite3.connect(hub.db)
    try:
        with conn:
            conn.execute("UPDATE agents SET created_ms = created_ms - ? WHERE agent_id = ?", (by_ms, agent_id))
    finally:
        conn.close()


def test_a_clock_set_back_six_months_is_held_instead_of_slipping_under_a_later_count(
    hub: HubProcess, make_store: Callable[..., Store], wrong_clock: Callable[[int], Any]
) -> None:
    c = make_store(hub, hub.url, name="store-c", location="STORE-2")  # its clock will be set back
    d = make_store(hub, hub.url, name="store-d", location="STORE-2")  # counts the shelf meanwhile
    admin = add_credential(hub.db, role="admin")
    _age_credential(hub, c.cred.agent_id, 365 * DAY_MS)
    hub.start()
    d.start()
    record(d, "receive", 40, "SKU-B")
    wait_until("D's receipt reached the hub", lambda: synced(d), WAIT_S)

    with wrong_clock(-HALF_YEAR_MS):
        c.start()
        wait_until("C's handshake", lambda: outbox_meta(c, "clock_skew_ms") is not None, WAIT_S)
        record(d, "count", 38, "SKU-B")  # taken now, by a right clock
        wait_until("D's count reached the hub", lambda: synced(d), WAIT_S)
        sales = [record(c, "sale", -1, "SKU-B") for _ in range(2)]  # stamped six months back
    wait_until("C's sales were processed", lambda: synced(c), WAIT_S)
    assert on_hand(hub, admin.token, "STORE-2", "SKU-B") == 38
    ledger = get_json(f"{hub.url}/v1/ledger?location=STORE-2&sku=SKU-B", admin.token)["events"]
    assert [e for e in ledger if e["kind"] == "sale"] == [], "no sale slipped under the count (none is in the ledger yet)"
    behind, text = status(c)
    assert behind["held_by_hub"] == 2 and abs(behind["clock_skew_ms"] - HALF_YEAR_MS) < SKEW_SLACK_MS, behind
    assert "clock        WRONG: this machine's clock is 182.0 days behind the hub's" in text, text
    held = get_json(f"{hub.url}/v1/quarantine", admin.token)["quarantine"]
    assert sorted(h["event_id"] for h in held) == sorted(sales)
    assert all("behind the hub's when it sent it" in h["detail"] for h in held), held[0]["detail"]

    assert c.runs[-1].stop() == 0  # the clock is fixed
    c.start()
    record(c, "sale", -1, "SKU-B")
    wait_until("C's sale with a right clock", lambda: synced(c), WAIT_S)
    assert on_hand(hub, admin.token, "STORE-2", "SKU-B") == 37, "with its clock right, C's movements count"
    for row in held:
        code, body = admin_post(hub, admin.token, f"/v1/quarantine/{row['id']}", {"action": "apply_at_receipt"})
        assert code == 200, body
    assert on_hand(hub, admin.token, "STORE-2", "SKU-B") == 35, "applied at their receipt: after the count"
    fixed, _ = status(c)
    assert abs(fixed["clock_skew_ms"]) < SKEW_SLACK_MS, fixed
    verdict(hub, [c, d], admin.token, applied=set(sales), expected={("STORE-2", "SKU-B"): 35})
