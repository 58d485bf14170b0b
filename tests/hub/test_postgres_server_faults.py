"""PostgreSQL hub processes when the server itself goes away: stopped, restarted (fast and immediate mode).

Each test runs its own throwaway server (``tests.harness.pg_server``): the shared test server serves every other
test at the same time and is never restarted. The hubs are real processes (``python -m hub serve``) on 127.0.0.1.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.commands import run_hub
from tests.harness.credentials import Credential, add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json, wait_until
from tests.harness.pg_server import ThrowawayPostgres

BOUND_S = 60.0
FLOOR_SAID = "cannot reopen the connection it keeps ready"


@pytest.fixture
def server() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as pg:
        yield pg


def _post_event(url: str, token: str, n: int) -> int:
    """POST one receipt of a SKU of its own (event id ``e-N``); the answer's status (a refused connection: 0)."""
    event = {"id": f"e-{n}", "location": "S1", "sku": f"SKU-{n}", "kind": "receive", "qty": 1,
             "occurred_at": "2026-01-01T00:00:00Z"}  # fmt: skip
    req = urllib.request.Request(
        f"{url}/v1/events", data=json.dumps({"events": [event]}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def _posted(url: str, agent: Credential, n: int) -> bool:
    return _post_event(url, agent.token, n) == 200


def test_a_hub_says_in_a_sentence_not_a_traceback_that_it_cannot_reopen_its_connections(
    tmp_path: Path, server: ThrowawayPostgres
) -> None:
    """While the server is down the driver tries to reopen the connection the hub keeps ready, and logged a
    traceback of the refused connection at each try (asyncpg's "Failed to restore the pool connection floor"): one
    sentence with the reason instead, and the hub serves again once the server is back, without a restart."""
    agent = add_credential(server.url, "S1")
    with HubProcess(tmp_path / "hub.log", db=server.url, port=free_port()) as hub:
        assert _posted(hub.url, agent, 1)
        server.stop("fast")
        assert _post_event(hub.url, agent.token, 2) == 503
        wait_until(  # the driver's first try, at once, then after 1 s and 2 s
            "the driver's third try to reopen the hub's connection",
            lambda: hub.log.count(FLOOR_SAID) + hub.log.count("pool connection floor") >= 3,
            timeout_s=BOUND_S,
        )
        server.start()
        wait_until("the hub stores events again", lambda: _posted(hub.url, agent, 2), timeout_s=BOUND_S, poll_s=0.5)
    assert "Traceback" not in hub.log, hub.log
    assert FLOOR_SAID in hub.log
    assert "shelfsync:shelfsync@" not in hub.log  # no password


def test_a_hub_on_a_server_turned_read_only_writes_to_the_one_that_took_over(tmp_path: Path) -> None:
    """Failover: the server the hubs write to is demoted to a read-only standby, and another took over; the hub's
    URL names both, with ``target_session_attrs=read-write``, so that a new connection finds the writable one. The
    hub's open connections were kept, though — a refused write is not a broken connection — so it answered every
    sync 503 (the server is read only) until it was restarted. A connection that meets a read-only server is
    dropped: the next one goes to the server that takes writes."""
    with ThrowawayPostgres() as old, ThrowawayPostgres() as new:
        init = run_hub("init", "--db", old.url)
        assert init.returncode == 0, init.stderr
        agent = add_credential(old.url, "S1")
        both = (
            f"postgresql://shelfsync:shelfsync@127.0.0.1:{old.port},127.0.0.1:{new.port}/shelfsync"
            "?target_session_attrs=read-write"
        )
        with HubProcess(tmp_path / "hub.log", db=both, port=free_port()) as hub:
            assert _posted(hub.url, agent, 1)
            old.copy_to(new)  # the standby that takes over holds what the primary held
            old.read_only()
            assert _post_event(hub.url, agent.token, 2) == 503  # the write the demotion refused: the agent resends
            wait_until("the hub writes to the new primary", lambda: _posted(hub.url, agent, 2), timeout_s=BOUND_S,
                       poll_s=0.5)  # fmt: skip
        assert new.psql("SELECT count(*) FROM events WHERE event_id IS NOT NULL") == "2"
    assert "Traceback" not in hub.log, hub.log


RECOVERED = "answers again"


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_hubs_through_a_server_restart_say_once_that_the_database_answers_again(
    tmp_path: Path, server: ThrowawayPostgres, mode: str
) -> None:
    """PostgreSQL restarts under two hubs taking events, one of them delivering a webhook. Each hub answers 503
    meanwhile and serves again without a restart; every event is stored once, and afterwards one hub delivers the
    webhook. The hub said that requests failed ("answered N requests 503 as the database failed"), and then
    nothing: an operator reading the log could not tell whether, or when, it had recovered. It says so once."""
    agent = add_credential(server.url, "S1")
    reader = add_credential(server.url, role="reader")
    config = tmp_path / "hub.toml"
    config.write_text(
        '[[webhooks]]\nname = "shop"\nurl = "http://127.0.0.1:9/hooks"\nsecret = "a-secret-of-the-shop-1234"\n',
        encoding="utf-8",
    )
    hubs = [HubProcess(tmp_path / f"hub-{i}.log", "--config", str(config), db=server.url, port=free_port())
            for i in (1, 2)]  # fmt: skip
    try:
        for hub in hubs:
            hub.start()
        for n, hub in enumerate(hubs):
            assert _posted(hub.url, agent, n)
        server.stop(mode)
        for n, hub in enumerate(hubs, start=len(hubs)):  # refused while the server is down: the agent resends
            assert _post_event(hub.url, agent.token, n) == 503
        server.start()
        for n, hub in enumerate(hubs, start=len(hubs)):  # each hub stores again, each event once
            wait_until("the hub stores events again", lambda: _posted(hub.url, agent, n), timeout_s=BOUND_S,  # noqa: B023
                       poll_s=0.3)  # fmt: skip
        for hub in hubs:
            wait_until("the hub says its database answers again", lambda: RECOVERED in hub.log, timeout_s=BOUND_S)  # noqa: B023

        def deliverers() -> list[str]:
            return sorted(get_json(f"{h.url}/v1/webhooks", reader.token)["webhooks"][0]["deliverer"] for h in hubs)

        wait_until("one hub delivers the webhook", lambda: deliverers() == ["another hub", "this hub"],
                   timeout_s=BOUND_S, poll_s=0.3)  # fmt: skip
        rows = get_json(f"{hubs[0].url}/v1/ledger?location=S1&limit=100", reader.token)["events"]
        ids = [r["event_id"] for r in rows if r["effect"] != "rejected"]
        assert sorted(ids) == sorted(set(ids)) and len(ids) == 2 * len(hubs), ids
    finally:
        for hub in hubs:
            hub.close()
    for hub in hubs:
        assert hub.log.count(RECOVERED) == 1, hub.log
        assert "Traceback" not in hub.log, hub.log
