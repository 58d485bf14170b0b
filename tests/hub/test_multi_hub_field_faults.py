"""PostgreSQL hub processes broken the way the field breaks them, each bounded in time.

The hubs are real processes (``python -m hub serve --db postgresql://…``) on 127.0.0.1, on a fresh schema of the
shared test server. Faults of one hub's path to the server are made between the two (a TCP proxy of the test's own,
``tests.harness.tcp_stall``), never by restarting the server, which other tests use at the same time.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.channels.emulators.square import SquareEmulator
from tests.harness.commands import hub_env
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json, wait_until
from tests.harness.tcp_stall import StallingProxy

PG_PORT = 5432
DB_TIMEOUT_S = 2.0  # the hub's db_timeout_s in these tests
# The channel's hubs: a standing-by hub tries to take the channel every LEASE_RETRY_S (lease_retry_s, 3 s by default)
# and ends a lock connection silent for LEASE_STALE_S (lease_stale_s, at least three of those and 1 s more), so the
# takeover from the stalled hub takes seconds
LEASE_RETRY_S = 0.5
LEASE_STALE_S = 4
# A request's longest answer while the database is silent: a free connection's bound (DB_TIMEOUT_S), or the
# wait for a free connection (POOL_ACQUIRE_TIMEOUT_S, 5 s) and a new one's connect (CONNECT_TIMEOUT_S, 10 s), with slack.
ANSWER_BOUND_S = 15.0
HTTP_TIMEOUT_S = 30.0  # the agents' own
# A stop of a hub whose database is silent: mostly 2-4 s; its lock connection's last queries (giving a lock back,
# closing) may take LEASE_QUERY_TIMEOUT_S (5 s) each. The channel state's close alone took 30 s before.
STOP_BOUND_S = 25.0


def _post_events(url: str, token: str, numbers: range) -> tuple[int, float, str | None, str]:
    """POST receipts ``e-N`` of SKUs of their own; the answer's status, how long it took, its Retry-After, its body
    (a status 0: no answer in the agents' time)."""
    events = [{"id": f"e-{n}", "location": "S1", "sku": f"SKU-{n}", "kind": "receive", "qty": 1,
               "occurred_at": "2026-01-01T00:00:00Z"} for n in numbers]  # fmt: skip
    return _ask(url + "/v1/events", token, json.dumps({"events": events}).encode())


def _ask(url: str, token: str | None = None, body: bytes | None = None) -> tuple[int, float, str | None, str]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            return resp.status, time.monotonic() - started, resp.headers.get("Retry-After"), resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, time.monotonic() - started, err.headers.get("Retry-After"), err.read().decode()
    except TimeoutError:
        return 0, time.monotonic() - started, None, ""


def test_a_hub_whose_database_stalls_answers_503_in_bounded_time_recovers_and_stops(
    tmp_path: Path, pg_url: str
) -> None:
    """The path to PostgreSQL stalls (a hung pooler, a middlebox: the connections stay open, nothing comes back).
    A request on a connection the hub held waited for ever — its connection and ingest turn with it — and a SIGTERM
    then never ended the hub (the store waited for that request on its way out). Now every request (events,
    ``/healthz``, ``/v1/status``) is answered 503 with Retry-After within a bound, ``/livez`` answers at once, the
    hub holds no more connections than its pool, says what happened in sentences, serves again by itself once the
    path flows, and stops on SIGTERM while stalled. Events answered 503 and sent again are stored once."""
    agent = add_credential(pg_url, "S1")
    reader = add_credential(pg_url, role="reader")
    with StallingProxy(PG_PORT) as proxy:
        env = hub_env(SHELFSYNC_HUB_DB_TIMEOUT_S=str(DB_TIMEOUT_S))
        hub = HubProcess(tmp_path / "hub.log", db=proxy.through(pg_url), port=free_port(), env=env)
        try:
            hub.start()
            with ThreadPoolExecutor(8) as pool:  # a few connections open, as under load
                assert {a[0] for a in pool.map(lambda n: _post_events(hub.url, agent.token, range(n, n + 1)),
                                               range(6))} == {200}  # fmt: skip
            proxy.stall()
            with ThreadPoolExecutor(12) as pool:
                posts = [pool.submit(_post_events, hub.url, agent.token, range(n, n + 5)) for n in range(100, 130, 5)]
                checks = [pool.submit(_ask, f"{hub.url}/healthz") for _ in range(3)]
                checks += [pool.submit(_ask, f"{hub.url}/v1/status", reader.token) for _ in range(2)]
                time.sleep(0.5)
                live = _ask(f"{hub.url}/livez")
                assert live[0] == 200 and live[1] < 1.0, live
                answers = [f.result() for f in posts + checks]
            for status, took_s, retry_after, _ in answers:
                assert status == 503 and retry_after and took_s < ANSWER_BOUND_S, answers
            said = {text for *_, text in answers}  # the requests that had a connection, then those that waited for one
            assert any(f"did not answer within {DB_TIMEOUT_S:g} s (db_timeout_s)" in text for text in said), said
            assert not any("database connections of this hub stayed busy" in text for text in said), said  # idle
            held = [c for c in psutil.Process(hub.pid).net_connections("tcp") if c.raddr and c.raddr.port == proxy.port]
            assert len(held) <= 10, held  # POOL_MAX_SIZE: no pile-up

            proxy.flow()  # the path flows again: the hub serves without a restart
            wait_until("the hub stores events again",
                       lambda: _post_events(hub.url, agent.token, range(100, 130))[0] == 200, poll_s=0.5)  # fmt: skip
            wait_until("the hub says its database answers again", lambda: "answers again" in hub.log)
            rows = get_json(f"{hub.url}/v1/ledger?location=S1&limit=100", reader.token)["events"]
            skus = sorted(r["sku"] for r in rows)  # a SKU of its own per event: each event once
            assert skus == sorted(f"SKU-{n}" for n in [*range(6), *range(100, 130)]), rows

            proxy.stall()  # stalled again, with a request on its way: SIGTERM still ends the hub
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(_post_events, hub.url, agent.token, range(200, 201))
                time.sleep(0.5)
                started = time.monotonic()
                hub.stop(timeout_s=ANSWER_BOUND_S)
                assert time.monotonic() - started < ANSWER_BOUND_S
                assert pending.result()[0] in (0, 503), pending.result()
        finally:
            hub.close()
    assert "Traceback" not in hub.log, hub.log


def _sold(url: str, token: str, event_id: str, qty: int, minute: int) -> int:
    event = {"id": event_id, "location": "S1", "sku": "SKU-1", "kind": "receive" if qty > 0 else "sale", "qty": qty,
             "occurred_at": f"2026-01-01T00:{minute:02d}:00Z"}  # fmt: skip
    return _ask(f"{url}/v1/events", token, json.dumps({"events": [event]}).encode())[0]


async def test_a_hub_whose_database_stalls_loses_its_channel_to_another_hub_and_stops_without_waiting_for_it(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hubs push one Square channel; the path of the pushing hub to PostgreSQL stalls. The other hub takes the
    channel over (past lease_stale_s) and pushes the next sale. The stalled hub, stopped, waited 30 s on the channel
    state's silent connections (their close had no bound but its own 30 s) and said "(...) failed ()" where a lock
    connection timed out: it stops within the bound now, and says what timed out."""
    async with SquareEmulator() as square:
        monkeypatch.setenv("SQUARE_TOKEN", square.token)
        location_id, variation = square.add_location(), square.add_variation("SKU-1")
        agent = await asyncio.to_thread(add_credential, pg_url, "S1")
        config = tmp_path / "hub.toml"
        config.write_text(
            f"[hub]\nlease_stale_s = {LEASE_STALE_S}\nlease_retry_s = {LEASE_RETRY_S}\ndb_timeout_s = {DB_TIMEOUT_S}\n\n"
            f'[[channel]]\nname = "pickup"\nkind = "square"\nurl = "{square.url}"\nsecret_env = "SQUARE_TOKEN"\n'
            f'pool = {{ S1 = "{location_id}" }}\nbuffer = 1\n',
            encoding="utf-8",
        )
        env = {**hub_env(), "SQUARE_TOKEN": square.token}
        with StallingProxy(PG_PORT) as proxy:
            stalled = HubProcess(tmp_path / "hub-1.log", "--config", str(config), db=proxy.through(pg_url),
                                 port=free_port(), env=env)  # fmt: skip
            other = HubProcess(tmp_path / "hub-2.log", "--config", str(config), db=pg_url, port=free_port(), env=env)
            try:
                await asyncio.to_thread(stalled.start)  # first: it pushes the channel
                await asyncio.to_thread(wait_until, "the first hub pushes the channel",
                                        lambda: "pickup: this hub pushes it now" in stalled.log)  # fmt: skip
                await asyncio.to_thread(other.start)
                assert await asyncio.to_thread(_sold, other.url, agent.token, "delivery-1", 6, 0) == 200
                await asyncio.to_thread(wait_until, "Square shows the 6 received less the buffer of 1",
                                        lambda: square.quantity(variation, location_id) == 5)  # fmt: skip

                proxy.stall()
                assert await asyncio.to_thread(_sold, other.url, agent.token, "sale-1", -2, 1) == 200
                await asyncio.to_thread(wait_until, "the other hub takes the channel over and pushes the sale",
                                        lambda: square.quantity(variation, location_id) == 3, 60.0)  # fmt: skip
                started = time.monotonic()
                await asyncio.to_thread(stalled.stop, timeout_s=STOP_BOUND_S)
                assert time.monotonic() - started < STOP_BOUND_S
            finally:
                stalled.close()
                other.close()
    for hub in (stalled, other):
        assert "Traceback" not in hub.log and "ended by itself" not in hub.log, hub.log
        assert "()" not in hub.log, hub.log  # a timeout is named, not an empty pair of parentheses
    assert "pickup: this hub pushes it now" in other.log
