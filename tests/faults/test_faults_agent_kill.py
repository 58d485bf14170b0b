"""The agent SIGKILLed at random points, again and again, loses nothing it acknowledged.

Each run of a real agent process is SIGKILLed at one of these points, drawn
at random: after a random time (while starting, recording or sending); the
moment one of its sync requests has reached the hub (the hub commits, the
agent never stores the answer); when the hub's answer reaches it (it may be
storing the answer). Then it is started again and resumes the simulation.
Short run: 10 kills; long run (SHELFSYNC_LONG_FAULTS=1): 50.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from collections.abc import Callable

from tests.faults.helpers import Simulation, Store, drained, scale, verify, wait_until
from tests.faults.proxy import ProxyThread, RequestInfo
from tests.harness.hub_process import HubProcess

HOOK_WAIT_S = 5.0  # a hooked kill that finds no request by then becomes a timed one


def test_the_agent_sigkilled_at_random_points_loses_nothing(
    hub: HubProcess, proxy_to: Callable[..., ProxyThread], make_store: Callable[..., Store]
) -> None:
    kills = scale(10, 50)
    total = kills * 600  # more than the runs between kills can record (at most ~1.5 s each at 500/s)
    rng = random.Random(2026)
    target: list[int] = []  # the pid to kill at the armed point
    armed: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def take(point: str) -> int | None:
        with lock:
            if armed != [point] or not target:
                return None
            armed.clear()
            return target[0]

    def kill(pid: int | None) -> None:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            done.set()

    def on_forwarded(info: RequestInfo) -> None:
        if info.path == "/v1/sync":
            kill(take("request_at_hub"))

    def on_answer(info: RequestInfo, status: int) -> bool:
        if info.path == "/v1/sync":
            pid = take("answer_arriving")
            if pid is not None:
                threading.Timer(rng.uniform(0.0, 0.01), kill, (pid,)).start()  # mid-way through storing it
        return False

    proxy = proxy_to(hub, on_request_forwarded=on_forwarded, on_response=on_answer)
    store = make_store(hub, proxy.url, simulation=Simulation(total, rate_per_s=500, seed=21, batch=5), batch_size=100)
    hub.start()
    points: list[str] = []
    for _ in range(kills):
        run = store.start()
        point = rng.choice(("timed", "timed", "request_at_hub", "answer_arriving"))
        points.append(point)
        if point == "timed":
            time.sleep(rng.uniform(0.05, 1.5))
            assert run.alive(), f"the agent died on its own; see {run.log_path}"
        else:
            time.sleep(rng.uniform(0.3, 1.0))  # let it start and record a little first
            with lock:
                target[:], armed[:] = [run.pid], [point]
            done.wait(HOOK_WAIT_S)
            with lock:
                target.clear()
                armed.clear()
            done.clear()
        run.kill()

    acked_before_last_run = store.acked()
    assert 0 < len(acked_before_last_run) < total, "the kills land while movements are still being recorded"
    assert {"request_at_hub", "answer_arriving"} & set(points)

    # The last run only finishes the simulation (movement n is the same at any pace and in any batch):
    # unpaced and 100 to a commit, it takes a second instead of the ten it takes at the pace of the kills.
    assert store.simulation is not None
    store.simulation = dataclasses.replace(store.simulation, rate_per_s=0, batch=100)
    store.write_config()
    last = store.start()
    wait_until("the resumed simulation completes", store.simulation_complete)
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert last.stop() == 0
    held = verify(hub, [store])
    assert len(held) == total
    assert acked_before_last_run <= set(held)
