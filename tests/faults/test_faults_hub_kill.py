"""The hub SIGKILLed in the middle of a batch loses nothing and counts nothing twice.

A real agent drains a backlog in batches of 200 through the proxy, and the
hub process is SIGKILLed at one of three points of a batch, in turn: the
moment the whole batch has been handed to it (decoding), a few milliseconds
later (resolving or committing), and after it committed, when its answer
arrives at the proxy (the agent never gets the answer). It is restarted on
the same port each time; the agent's handshake learns the hub's mark (a
batch committed before the kill is not sent again) and it resends whatever
the hub does not hold.
Short run: 6 kills; long run: 15.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
from collections.abc import Callable

from tests.faults.helpers import Simulation, Store, drained, scale, verify, wait_until
from tests.faults.proxy import ProxyThread, RequestInfo
from tests.harness.hub_process import HubProcess

BATCH_BODY_MIN_BYTES = 2_000  # a sync request carrying events, not a handshake
KILL_POINTS = ("forwarded", "ingesting", "committed")


def test_the_hub_killed_mid_batch_loses_nothing(
    hub: HubProcess, proxy_to: Callable[..., ProxyThread], make_store: Callable[..., Store]
) -> None:
    kills, total = scale(6, 15), scale(4_000, 12_000)
    rng = random.Random(5)
    armed: list[str] = []  # the kill point armed, if any (touched only in the proxy's thread once armed)
    lock = threading.Lock()
    killed = threading.Event()

    serving = threading.Event()  # the hub said it listens: one still opening answers 503, and is no kill point

    def take(point: str, info: RequestInfo) -> bool:
        with lock:
            if armed != [point] or info.path != "/v1/sync" or info.body_bytes < BATCH_BODY_MIN_BYTES:
                return False
            if not serving.is_set():
                return False
            armed.clear()
            return True

    def kill_hub() -> None:
        os.kill(hub.pid, signal.SIGKILL)
        killed.set()

    def on_forwarded(info: RequestInfo) -> None:
        if take("forwarded", info):
            kill_hub()
        elif take("ingesting", info):
            asyncio.get_running_loop().call_later(rng.uniform(0.002, 0.02), kill_hub)

    def on_answer(info: RequestInfo, status: int) -> bool:
        if status == 200 and take("committed", info):
            kill_hub()
            return True  # and the agent never sees the answer
        return False

    proxy = proxy_to(hub, on_request_forwarded=on_forwarded, on_response=on_answer)
    store = make_store(hub, proxy.url, simulation=Simulation(total, rate_per_s=4_000, seed=9, batch=40), batch_size=200)
    hub.start()
    serving.set()
    agent = store.start()

    for n in range(kills):
        with lock:  # armed before the restart: the batch sent again after it is one, however soon the rest drained
            armed[:] = [KILL_POINTS[n % len(KILL_POINTS)]]
        if n:
            hub.start()
            serving.set()
        assert killed.wait(60), f"kill {n + 1} ({KILL_POINTS[n % 3]}): no batch reached the hub within 60 s"
        killed.clear()
        serving.clear()
        assert hub.kill() is not None  # reaps the process killed above
    hub.start()

    wait_until("the simulation completes", store.simulation_complete)
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert agent.stop() == 0
    held = verify(hub, [store])
    assert len(held) == total
    assert hub.log_path.read_text().count("hub listening") == kills + 1
