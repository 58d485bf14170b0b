"""Two agent processes sharing one credential: nothing is lost, nothing is counted twice.

Two cases (docs/faults.md says what happens and why):

- two machines configured with the same agent id and token, each with its own
  outbox: each outbox has its own random epoch, so the hub keeps a separate
  high-water mark per (agent id, epoch) and the two streams never overwrite
  each other's marks; their events never collide, their ids being UUIDv7s;
- two agent processes pointed at the same outbox file: both replicators send
  the same rows, the hub keeps the first copy of each event and counts the
  others as duplicates; the mark only moves forward.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent import Movement, Outbox
from protocol import Kind
from tests.faults.helpers import Simulation, Store, drained, hub_events, outbox_meta, scale, verify, wait_until
from tests.harness.hub_process import HubProcess
from tests.harness.net import get_json


def test_two_outboxes_under_one_credential_keep_separate_marks(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    total = scale(1_500, 6_000)
    first = make_store(hub, hub.url, name="till-1", simulation=Simulation(total, rate_per_s=400, seed=1, batch=5))
    second = Store(
        "till-2", first.location, first.cred, first.data_dir.with_name("till-2"), hub.url,
        Simulation(total, rate_per_s=400, seed=2, batch=5),
    )  # fmt: skip — the same agent id and token, another machine
    hub.start()
    try:
        agents = [first.start(), second.start()]
        for store in (first, second):
            wait_until(f"{store.name} completes", store.simulation_complete)
        wait_until("both outboxes drain", lambda: drained([first, second], hub.db))
        for agent in agents:
            assert agent.stop() == 0
    finally:
        second.kill_all()

    epochs = {outbox_meta(s.outbox)["epoch"] for s in (first, second)}
    assert len(epochs) == 2, "each outbox chose its own epoch"
    status = get_json(f"{hub.url}/v1/agents", first.cred.token)["agents"]
    marks = {m["epoch"]: m["hwm"] for a in status if a["agent_id"] == first.cred.agent_id for m in a["epochs"]}
    assert marks == {outbox_meta(s.outbox)["epoch"]: outbox_meta(s.outbox)["last_seq"] for s in (first, second)}
    held = verify(hub, [first, second])
    assert len(held) == 2 * total


def test_two_agents_on_one_outbox_send_each_event_once(hub: HubProcess, make_store: Callable[..., Store]) -> None:
    """The same configuration started twice: the second ``run`` refuses (exit 3, one sentence) and the first
    sends every event once, with a ``record`` process writing beside it."""
    n = scale(1_500, 6_000)
    store = make_store(hub, hub.url, batch_size=50)
    hub.start()
    agents = [store.start(), store.start()]  # two processes, one config, one outbox file
    wait_until("one of the two refuses to run", lambda: any(a.proc.poll() is not None for a in agents), timeout_s=60)
    [refused] = [a for a in agents if a.proc.poll() is not None]
    assert refused.wait(10) == 3
    assert "another shelfsync agent is already running on the outbox" in store.log()
    agents.remove(refused)

    async def record() -> None:
        async with Outbox.open(store.outbox, agent_id=store.cred.agent_id, location=store.location) as outbox:
            for i in range(0, n, 10):
                await outbox.record([Movement(store.location, f"SKU-{j % 5}", Kind.RECEIVE, 1 + j % 3, "api:test") for j in range(i, i + 10)])

    asyncio.run(record())
    wait_until("the outbox drains", lambda: drained([store], hub.db) and len(hub_events(hub.db)) == n)
    for agent in agents:
        assert agent.stop() == 0
    held = verify(hub, [store])
    assert len(held) == n
    status = get_json(f"{hub.url}/v1/agents", store.cred.token)["agents"]
    [mine] = [a for a in status if a["agent_id"] == store.cred.agent_id]
    assert [m["hwm"] for m in mine["epochs"]] == [n]
