"""A flaky network between a store and the hub loses nothing and counts nothing twice.

A real agent process records a simulated stream while every sync request
crosses the fault proxy: some are dropped, some delayed, some cut halfway
through the request body (the hub must commit nothing), some cut halfway
through the answer (the hub committed, the agent does not know: it resends),
and the network is partitioned twice for longer than the agent's timeout
(held requests then arrive late, after the agent gave up on them).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.faults.helpers import Simulation, Store, drained, scale, verify, wait_until
from tests.faults.proxy import FaultPlan, ProxyThread
from tests.harness.hub_process import HubProcess

TIMEOUT_S = 2.0  # the agent's request timeout: partitions last longer


def test_drops_delays_cut_bodies_and_partitions_lose_nothing(
    hub: HubProcess, proxy_to: Callable[..., ProxyThread], make_store: Callable[..., Store]
) -> None:
    total, partitions = scale(1_500, 8_000), scale(2, 6)
    proxy = proxy_to(hub, plan=FaultPlan.mixed(fault_share=0.4), seed=7)
    store = make_store(
        hub, proxy.url, simulation=Simulation(total, rate_per_s=300, seed=3, batch=2), batch_size=50, timeout_s=TIMEOUT_S
    )
    hub.start()
    agent = store.start()

    for _ in range(partitions):
        proxy.wait_for(lambda s: s.requests >= 5, timeout_s=30)
        proxy.partition()
        time.sleep(TIMEOUT_S * 1.5)  # the agent times out; what it sent is held and delivered after the heal
        proxy.heal()
    wait_until("the simulation completes", store.simulation_complete)
    wait_until("the outbox drains through the faults", lambda: drained([store], hub.db))
    assert agent.stop() == 0

    stats = proxy.stats()
    for fault in FaultPlan.mixed().weights:  # the four kinds mixed() draws
        assert stats.faults.get(fault, 0) > 0, f"no request met {fault}: {stats}"
    assert stats.partitions == partitions
    held = verify(hub, [store])
    assert len(held) == total
