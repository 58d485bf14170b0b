"""The agent's memory while it catches up with a slow hub: a real agent process with a backlog of 40,000 movements
(each with a few hundred bytes of attrs, as a POS import books them) drains it into the real hub on 127.0.0.1,
which answers each batch a second late (a hub under load). Whatever the backlog and however slow the hub, the
replicator holds only a few packed batches of bounded size (docs/agent.md "Memory"), so the agent's peak resident
memory grows by a bounded amount over what it had before its first batch; and no request carries more than about
``BATCH_MAX_BYTES`` of events, however large each movement is."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from agent import Movement, Outbox, Replicator
from agent.replicator import BATCH_MAX_BYTES, READ_CHUNK
from hub import HubSettings, create_app, open_store
from protocol import Kind, decode_sync_request
from protocol.routes import SYNC_PATH
from tests.harness.agent_process import AgentProcess, write_agent_config
from tests.harness.credentials import Credential
from tests.harness.inprocess import serve_app

LOC = "S001"
EVENTS = 40_000  # far above the replicator's CATCHUP_BACKLOG: batches of 10,000 events, two in flight
RECORD_CHUNK = 5_000
ATTRS = {f"note_{k}": f"{k}" * 120 for k in range(4)}  # ~500 bytes a movement (lines of a POS export carry more)
PACKED_EVENT_MAX = 700  # bytes one such movement packs into (~580), at most
SLOW_S = 1.0  # each batch's answer comes this late
DRAIN_WAIT_S = 240.0
# Before the bound: three batches of 10,000 such movements (two in flight, one read ahead) held as decoded events
# (~2 KiB each) beside their packed bodies, and each batch read whole from the outbox: ~90 MiB more at the peak.
PEAK_GROWTH_BOUND_MIB = 45


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def record_backlog(outbox: Outbox, events: int) -> None:
    for start in range(0, events, RECORD_CHUNK):
        await outbox.record(
            [Movement(LOC, f"SKU-{(start + i) % 500}", Kind.SALE, -1, "pos:square", attrs=ATTRS)
             for i in range(min(RECORD_CHUNK, events - start))]
        )  # fmt: skip


class SlowHub:
    """Answers each sync request carrying events ``SLOW_S`` late; notes the agent's peak resident memory when its
    first request (the handshake, no events) arrives: what the agent needed before it read any batch."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.peak_before_kib: int | None = None
        self.batches = 0
        self.largest = 0  # bytes of the largest request

    def middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        @web.middleware
        async def slow(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path != SYNC_PATH or request.method != "POST":
                return await handler(request)
            sync = decode_sync_request(await request.read())
            if not sync.events:
                if self.peak_before_kib is None and self.pid is not None:
                    self.peak_before_kib = _status_kib(self.pid, "VmHWM")
                return await handler(request)
            self.batches += 1
            self.largest = max(self.largest, len(await request.read()))
            response = await handler(request)
            await asyncio.sleep(SLOW_S)
            return response

        return slow


async def test_an_agent_catching_up_with_a_slow_hub_keeps_its_memory_bounded(tmp_path: Path) -> None:
    slow = SlowHub()
    async with open_store(str(tmp_path / "hub.db")) as store:
        agent_id, token = await store.add_agent([LOC])
        async with Outbox.open(tmp_path / "agent" / "outbox.sqlite3", agent_id=agent_id, location=LOC) as outbox:
            await record_backlog(outbox, EVENTS)
        app = create_app(store, HubSettings(db=str(tmp_path / "hub.db")))
        app.middlewares.append(slow.middleware())
        async with serve_app(app) as hub:
            config = write_agent_config(
                tmp_path / "agent" / "agent.toml", cred=Credential(agent_id, token), location=LOC, hub_url=hub.url,
                timeout_s=60.0,
            )  # fmt: skip
            run = AgentProcess(config, tmp_path / "agent.log")
            slow.pid = run.pid
            try:
                async with asyncio.timeout(DRAIN_WAIT_S):
                    while (await store.agent_status(agent_id))[0].hwm.get(outbox.epoch, 0) < EVENTS:
                        assert run.alive(), run.log
                        await asyncio.sleep(0.2)
                peak_kib = _status_kib(run.pid, "VmHWM")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(run.stop)
    assert slow.peak_before_kib is not None, "the agent sent no handshake"
    assert slow.batches >= EVENTS // 10_000, slow.batches
    growth_mib = (peak_kib - slow.peak_before_kib) / 1024
    assert growth_mib < PEAK_GROWTH_BOUND_MIB, (
        f"the agent's peak resident memory grew by {growth_mib:.0f} MiB (from {slow.peak_before_kib / 1024:.0f} MiB"
        f" to {peak_kib / 1024:.0f} MiB) while it sent {EVENTS:,} movements to a slow hub"
    )
    assert "Traceback" not in run.log


async def test_no_request_carries_much_more_than_the_batch_bytes_however_large_the_movements(tmp_path: Path) -> None:
    """Movements of ~500 bytes of attrs: 10,000 of them would be a ~6 MiB request; they go fewer to a batch."""
    slow = SlowHub()
    events = 25_000
    async with open_store(str(tmp_path / "hub.db")) as store:
        agent_id, token = await store.add_agent([LOC])
        app = create_app(store, HubSettings(db=str(tmp_path / "hub.db")))
        app.middlewares.append(slow.middleware())
        async with (
            serve_app(app) as hub,
            Outbox.open(tmp_path / "outbox.sqlite3", agent_id=agent_id, location=LOC) as outbox,
        ):
            await record_backlog(outbox, events)
            replicator = Replicator(
                outbox, hub.url, token, tick_s=0.2, retry_base_s=0.01, retry_max_s=0.05, timeout_s=60.0,
                rng=random.Random(7),
            )  # fmt: skip
            async with replicator:
                await asyncio.wait_for(replicator.wait_synced(), DRAIN_WAIT_S)
            stats = await outbox.stats()
            (status,) = await store.agent_status(agent_id)
    assert (stats.acked_seq, stats.backlog) == (events, 0)
    assert status.hwm == {outbox.epoch: events}
    # a batch ends once its events pack into BATCH_MAX_BYTES, give or take the last chunk read
    assert slow.largest < BATCH_MAX_BYTES + READ_CHUNK * PACKED_EVENT_MAX, f"a request of {slow.largest:,} bytes"
    assert slow.batches > events // 10_000 + 1, "the movements went in batches of 10,000 whatever their size"
