"""The agent's disk full: it refuses new movements with a clear error and loses nothing it acknowledged.

"Full" is a file-size limit (RLIMIT_FSIZE) on the agent process: a write
past it fails with EFBIG, as a full disk fails with ENOSPC. A real agent
records a simulated stream and replicates it until its outbox can grow no
more; the movement being recorded then is refused (the agent stops with one
sentence saying the disk is full), and so is a movement recorded by hand.
With the limit lifted, the agent resumes and every movement it acknowledged
reaches the hub exactly once.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from tests.faults.helpers import Simulation, Store, drained, scale, verify, wait_until
from tests.harness.agent_process import fsize_limit
from tests.harness.hub_process import HubProcess

LIMIT_BYTES = 160 * 1024  # a few dozen commits of WAL frames
TINY_LIMIT_BYTES = 4096  # not even one WAL frame fits


def test_a_full_disk_refuses_new_movements_and_loses_nothing_acknowledged(
    hub: HubProcess, make_store: Callable[..., Store]
) -> None:
    total = scale(3_000, 20_000)
    store = make_store(hub, hub.url, simulation=Simulation(total, rate_per_s=2_000, seed=4, batch=10), batch_size=100)
    hub.start()

    agent = store.start(fsize_limit_bytes=LIMIT_BYTES)
    assert agent.wait(60) == 1, "the agent stops when its outbox cannot grow"
    log = store.log()
    assert "the disk is full or refuses writes" in log and "everything recorded before is safe" in log, log[-2000:]
    assert "Traceback" not in log
    # it stopped its replicator, feed and services on the way out (their HTTP sessions left open said otherwise)
    assert "Unclosed" not in log and "never retrieved" not in log, log[-3000:]
    acked_while_full = store.acked()
    assert 0 < len(acked_while_full) < total

    by_hand = subprocess.run(
        [sys.executable, "-m", "agent", "record", "--config", str(store.config), "--sku", "SKU-A", "--kind", "receive",
         "--qty", "5"],
        capture_output=True, text=True, timeout=60, check=False, preexec_fn=fsize_limit(TINY_LIMIT_BYTES),
    )  # fmt: skip
    assert by_hand.returncode == 1 and by_hand.stdout == ""
    assert by_hand.stderr.startswith("shelfsync-agent: the outbox") and "the disk is full" in by_hand.stderr
    assert by_hand.stderr.count("\n") == 1, f"one sentence, no traceback: {by_hand.stderr}"

    resumed = store.start()  # space freed
    wait_until("the resumed simulation completes", store.simulation_complete)
    wait_until("the outbox drains", lambda: drained([store], hub.db))
    assert resumed.stop() == 0
    held = verify(hub, [store])
    assert len(held) == total, "the refused movement was recorded once space was back, none twice"
    assert acked_while_full <= set(held)
