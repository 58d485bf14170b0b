"""A hostile network between a store and the hub loses nothing, counts nothing twice, and is said plainly.

A real agent process records a simulated stream while its sync requests
cross the fault proxy, which does what broken middleboxes, flaky links and
captive portals do (tests.faults.proxy, ``FaultPlan.hostile``): answers cut
after their head, held past the agent's timeout, trickled a byte a second,
replaced by garbage, by JSON or by a gateway's HTML page; requests replayed
at once or later; a captive portal; the hub and the agent SIGKILLed. The hub
is SQLite, and PostgreSQL in one run. Each run ends with the verdict of the
fault suite (every recorded event at the hub exactly once, counts exact, no
traceback), and checks of its own:

- the agent's acknowledged mark is the hub's mark for it, and every event at
  or below it is at the hub (nothing acknowledged that the hub lacks);
- the agent's log says each incident in a sentence of its own: no markup or
  parser wording quoted, an answer that is not the hub's named as such;
- once the network heals, the agent drains by itself within bounded time,
  and its local count cache comes to hold the hub's counts.

The seeded run puts its faults on every route (the change feed's long poll
and the catalog too), not only on the sync.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.helpers import (
    Simulation,
    Store,
    drained,
    hub_mark,
    outbox_events,
    outbox_meta,
    verify,
    wait_until,
)
from tests.faults.proxy import Fault, FaultPlan, ProxyThread, RequestInfo
from tests.harness.credentials import add_credential
from tests.harness.hub_process import HubProcess
from tests.harness.net import free_port, get_json

TIMEOUT_S = 2.0  # the agent's request timeout; LATE answers are held longer
BATCH_BODY_MIN_BYTES = 2_000  # a sync request carrying events, not a handshake
HEARD_WITHIN_S = 20.0  # a third of the default heartbeat_s: what the hub hears by then came from a tick


def check_acknowledged(store: Store, hub_db: Path | str, held: set[str]) -> None:
    """The agent acknowledged exactly what the hub's mark says, and holds nothing acknowledged the hub lacks."""
    meta = outbox_meta(store.outbox)
    acked, epoch = int(meta.get("acked_seq", 0)), int(meta.get("epoch", 0))
    assert acked == hub_mark(hub_db, store.cred.agent_id, epoch), "the agent's mark is not the hub's"
    below = {k for k, row in outbox_events(store.outbox).items() if row.seq <= acked}
    assert below <= held, f"{len(below - held)} acknowledged event(s) are not at the hub"


def cache_matches_hub(store: Store, hub_url: str) -> bool:
    """The agent's local count cache holds the hub's on_hand for every SKU of its location."""
    hub = get_json(f"{hub_url}/v1/locations/{store.location}/counts?limit=10000", store.cred.token)["counts"]
    conn = sqlite3.connect(store.outbox, timeout=30)
    try:
        cached = dict(conn.execute("SELECT sku, on_hand FROM counts WHERE location = ?", (store.location,)))
    finally:
        conn.close()
    return cached == {row["sku"]: row["on_hand"] for row in hub}


def said(store: Store) -> list[str]:
    """The agent's warnings and errors: what it said about the incidents."""
    return [line for line in store.log().splitlines() if " WARNING " in line or " ERROR " in line]


def check_said_plainly(store: Store) -> None:
    """Each incident in a sentence of the agent's own: no markup or library wording quoted into its log."""
    for line in said(store):
        for raw in UNSAID:
            assert raw not in line, f"the agent's log quotes {raw!r} instead of saying what happened: {line}"


# What a sentence about an incident never holds: a page's markup, a JSON parser's complaint about a page that was
# never the hub's, aiohttp's wording of a broken connection.
UNSAID = (
    "<html",
    "<!DOCTYPE",
    "<title",
    "Expecting value",
    "ContentLengthError",
    "payload is not completed",
    "Errno None",
)


def run(hub: HubProcess, proxy: ProxyThread, store: Store, total: int) -> set[str]:
    hub.start()
    agent = store.start()
    wait_until("the simulation completes", store.simulation_complete)
    proxy.set_plan(FaultPlan.clean())  # the network heals
    wait_until("the outbox drains once the network heals", lambda: drained([store], hub.db))
    wait_until("the agent's count cache holds the hub's counts", lambda: cache_matches_hub(store, hub.url))
    assert agent.stop() == 0
    held = set(verify(hub, [store]))
    assert len(held) == total
    check_acknowledged(store, hub.db, held)
    return held


# What the sentence about an answer that was not the hub's names.
FOREIGN = {
    Fault.HTML_502: "an HTML page titled '502 Bad Gateway' (HTTP 502), not by the hub",
    Fault.HTML_504: "an HTML page titled '504 Gateway Time-out' (HTTP 504), not by the hub",
    Fault.JSON_200: "answered JSON that is not a shelfsync hub's",
    Fault.HTML_403: "an HTML page titled 'Access Denied' (HTTP 403), not by the hub",
}


@pytest.mark.parametrize(
    "fault",
    [
        Fault.CUT_AFTER_HEAD, Fault.LATE, Fault.REPLAY, Fault.SLOW, Fault.GARBAGE_200,
        Fault.HTML_502, Fault.HTML_504, Fault.JSON_200, Fault.DOUBLE_ANSWER, Fault.HTML_403,
    ],
)  # fmt: skip
def test_each_hostile_answer_loses_nothing(
    fault: Fault, hub: HubProcess, proxy_to: Callable[..., ProxyThread], make_store: Callable[..., Store]
) -> None:
    total = 300
    proxy = proxy_to(hub, plan=FaultPlan.only(fault, share=0.5, late_s=TIMEOUT_S * 1.5), seed=11)
    store = make_store(
        hub,
        proxy.url,
        simulation=Simulation(total, rate_per_s=150, seed=4, batch=3),
        batch_size=40,
        timeout_s=TIMEOUT_S,
    )
    run(hub, proxy, store, total)
    assert proxy.stats().faults.get(fault, 0) > 0
    check_said_plainly(store)
    if fault in FOREIGN:
        assert any(FOREIGN[fault] in line for line in said(store)), f"no sentence names {FOREIGN[fault]!r}"
    assert "credentials" not in store.log(), "a middlebox's page was taken for the hub refusing the token"


def test_a_captive_portal_loses_nothing_and_is_left_by_itself(
    hub: HubProcess, proxy_to: Callable[..., ProxyThread], make_store: Callable[..., Store]
) -> None:
    total = 300
    proxy = proxy_to(hub, seed=12)
    store = make_store(
        hub,
        proxy.url,
        simulation=Simulation(total, rate_per_s=100, seed=4, batch=3),
        batch_size=40,
        timeout_s=TIMEOUT_S,
    )
    hub.start()
    agent = store.start()
    proxy.wait_for(lambda s: s.requests >= 3, timeout_s=30)
    proxy.captive_portal()
    proxy.reset_connections()  # the change feed's long poll too: its next request meets the portal
    proxy.wait_for(lambda s: s.faults.get(Fault.PORTAL, 0) >= 20, timeout_s=60)
    proxy.heal()
    wait_until("the simulation completes", store.simulation_complete)
    wait_until("the outbox drains once the portal is gone", lambda: drained([store], hub.db))
    assert agent.stop() == 0
    held = set(verify(hub, [store]))
    check_acknowledged(store, hub.db, held)
    check_said_plainly(store)
    portal = [line for line in said(store) if "an HTML page titled 'Welcome to StoreWiFi' (HTTP 200)" in line]
    assert sum("agent.replicator" in line for line in portal) == 1, f"the replicator says it once: {portal}"
    assert sum("agent.feed" in line for line in portal) == 1, f"the count cache's feed says it once: {portal}"


def test_an_agent_started_behind_a_captive_portal_says_so_for_each_loop(
    hub: HubProcess, proxy_to: Callable[..., ProxyThread], make_store: Callable[..., Store]
) -> None:
    """The catalog, the change feed and the replicator each meet the portal first: each says so, once."""
    total = 100
    proxy = proxy_to(hub, seed=13)
    store = make_store(
        hub, proxy.url, simulation=Simulation(total, rate_per_s=50, seed=4, batch=3), batch_size=40, timeout_s=TIMEOUT_S
    )
    hub.start()
    proxy.captive_portal()
    agent = store.start()
    proxy.wait_for(lambda s: s.faults.get(Fault.PORTAL, 0) >= 10, timeout_s=60)
    proxy.heal()
    wait_until("the simulation completes", store.simulation_complete)
    wait_until("the outbox drains once the portal is gone", lambda: drained([store], hub.db))
    assert agent.stop() == 0
    check_acknowledged(store, hub.db, set(verify(hub, [store])))
    check_said_plainly(store)
    portal = [line for line in said(store) if "an HTML page titled 'Welcome to StoreWiFi' (HTTP 200)" in line]
    for loop in ("agent.catalog", "agent.feed", "agent.replicator"):
        assert sum(f" {loop}: " in line for line in portal) == 1, f"{loop} does not say the portal once: {portal}"


def test_seeded_chaos_of_every_fault_with_kills_loses_nothing(
    hub: HubProcess, proxy_to: Callable[..., ProxyThread], make_store: Callable[..., Store]
) -> None:
    """2,000 events through every fault at random (seeded), a captive portal, the hub and the agent SIGKILLed
    and restarted: the verdict holds and the agent drains by itself once the network heals."""
    total = 2_000
    rng = random.Random(2026)
    plan = FaultPlan.hostile(0.35, late_s=TIMEOUT_S * 1.5, only_path_prefix="/")  # the feed and catalog too
    proxy = proxy_to(hub, plan=plan, seed=2026)
    store = make_store(
        hub,
        proxy.url,
        simulation=Simulation(total, rate_per_s=200, seed=8, batch=4),
        batch_size=60,
        timeout_s=TIMEOUT_S,
    )
    hub.start()
    agent = store.start()
    for step in ("portal", "hub", "agent", "hub"):
        seen = proxy.stats().requests
        proxy.wait_for(lambda s: s.requests >= seen + 8, timeout_s=60)  # noqa: B023 (waited for here)
        if step == "portal":
            proxy.captive_portal()
            time.sleep(rng.uniform(0.5, 1.5))
            proxy.heal()
        elif step == "hub":
            hub.kill()
            time.sleep(rng.uniform(0.1, 0.5))
            hub.start()
        else:
            agent.kill()
            agent = store.start()
    wait_until("the simulation completes", store.simulation_complete)
    proxy.set_plan(FaultPlan.clean())
    wait_until("the outbox drains once the network heals", lambda: drained([store], hub.db))
    wait_until("the agent's count cache holds the hub's counts", lambda: cache_matches_hub(store, hub.url))
    assert agent.stop() == 0
    held = set(verify(hub, [store]))
    assert len(held) == total
    check_acknowledged(store, hub.db, held)
    check_said_plainly(store)


def test_seeded_chaos_against_a_postgresql_hub_loses_nothing(
    pg_url: str, tmp_path: Path, proxy_to: Callable[..., ProxyThread], make_store: Callable[..., Store]
) -> None:
    """The hostile network and a SIGKILLed hub, with the hub on PostgreSQL."""
    total = 1_000
    pg_hub = HubProcess(tmp_path / "pg-hub.log", db=pg_url, port=free_port())
    try:
        proxy = proxy_to(pg_hub, plan=FaultPlan.hostile(0.35, late_s=TIMEOUT_S * 1.5), seed=515)
        store = make_store(
            pg_hub, proxy.url, simulation=Simulation(total, rate_per_s=200, seed=9, batch=4), batch_size=60,
            timeout_s=TIMEOUT_S,
        )  # fmt: skip
        pg_hub.start()
        agent = store.start()
        proxy.wait_for(lambda s: s.requests >= 10, timeout_s=60)
        pg_hub.kill()
        pg_hub.start()
        wait_until("the simulation completes", store.simulation_complete)
        proxy.set_plan(FaultPlan.clean())
        wait_until("the outbox drains once the network heals", lambda: drained([store], pg_url))
        wait_until("the agent's count cache holds the hub's counts", lambda: cache_matches_hub(store, pg_hub.url))
        assert agent.stop() == 0
        held = set(verify(pg_hub, [store]))
        assert len(held) == total
        check_acknowledged(store, pg_url, held)
        check_said_plainly(store)
    finally:
        pg_hub.close()


def test_the_hub_hears_a_backlog_of_0_after_a_drain_whose_last_answer_was_lost(
    hub: HubProcess, proxy_to: Callable[..., ProxyThread], make_store: Callable[..., Store]
) -> None:
    """The last batch's answer is lost (the hub committed it): the handshake after it finds the outbox drained,
    and the hub must hear that within a tick, as after any drain (docs/agent.md, heartbeat_s), not keep showing
    the batch's backlog until the next heartbeat a minute later."""
    total = 100
    lost: list[RequestInfo] = []
    lock = threading.Lock()

    def lose_one_batch_answer(info: RequestInfo, status: int) -> bool:
        with lock:
            if status != 200 or info.body_bytes < BATCH_BODY_MIN_BYTES or lost or not armed:
                return False
            lost.append(info)
            return True

    armed: list[bool] = []
    proxy = proxy_to(hub, on_response=lose_one_batch_answer, seed=14)
    store = make_store(
        hub, proxy.url, simulation=Simulation(total, rate_per_s=0, seed=4, batch=total), timeout_s=TIMEOUT_S
    )
    hub.start()
    admin = add_credential(hub.db, role="admin")
    proxy.partition()  # every movement is recorded before the first batch can go
    agent = store.start()
    wait_until("the simulation completes", store.simulation_complete)
    with lock:
        armed.append(True)
    proxy.heal()
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert lost, "no batch's answer was lost"

    def hub_backlog() -> int | None:
        agents = get_json(f"{hub.url}/v1/agents", admin.token)["agents"]
        return next(a["backlog"] for a in agents if a["agent_id"] == store.cred.agent_id)

    wait_until("the hub hears the backlog is 0", lambda: hub_backlog() == 0, timeout_s=HEARD_WITHIN_S)
    assert agent.stop() == 0
    check_acknowledged(store, hub.db, set(verify(hub, [store])))


def test_a_request_replayed_after_the_drain_does_not_put_the_backlog_back(
    hub: HubProcess, proxy_to: Callable[..., ProxyThread], make_store: Callable[..., Store]
) -> None:
    """A middlebox sends the syncs up to the batch again a second later, after the agent drained and said so:
    the old requests still report the backlog they were sent with, which the hub must not take over the
    drained outbox's 0."""
    total = 100
    holder: list[ProxyThread] = []

    def stop_replaying_after_the_batch(info: RequestInfo) -> None:
        if info.body_bytes >= BATCH_BODY_MIN_BYTES:
            holder[0].proxy.plan = FaultPlan.clean()  # in the proxy's thread: the next request passes

    proxy = proxy_to(
        hub,
        plan=FaultPlan.only(Fault.REPLAY_LATE, late_s=1.0),
        seed=15,
        on_request_forwarded=stop_replaying_after_the_batch,
    )
    holder.append(proxy)
    store = make_store(
        hub, proxy.url, simulation=Simulation(total, rate_per_s=0, seed=4, batch=total), timeout_s=TIMEOUT_S
    )
    hub.start()
    admin = add_credential(hub.db, role="admin")
    proxy.partition()  # every movement is recorded before the first batch can go
    agent = store.start()
    wait_until("the simulation completes", store.simulation_complete)
    proxy.heal()
    wait_until("the outbox drains", lambda: drained([store], hub.db))

    def hub_backlog() -> int | None:
        agents = get_json(f"{hub.url}/v1/agents", admin.token)["agents"]
        return next(a["backlog"] for a in agents if a["agent_id"] == store.cred.agent_id)

    wait_until("the hub hears the backlog is 0", lambda: hub_backlog() == 0, timeout_s=HEARD_WITHIN_S)
    sent = proxy.stats().faults[Fault.REPLAY_LATE]
    proxy.wait_for(lambda s: s.late_replays >= sent, timeout_s=30)  # every old request replayed and answered
    assert hub_backlog() == 0, "a replayed request put its old backlog back on the hub's agent list"
    assert agent.stop() == 0
    check_acknowledged(store, hub.db, set(verify(hub, [store])))
