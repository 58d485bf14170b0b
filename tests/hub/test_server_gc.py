"""While the hub serves, the garbage collector runs at the serving thresholds with start-up's objects
frozen out of it; once it stops, the process has its own settings back (tests serve hubs in-process)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import aiohttp

from hub.config import HubSettings
from hub.server import serve
from protocol.runtime import SERVING_GC_THRESHOLDS
from tests.harness.net import free_port

START_S = 30.0


async def test_serving_thresholds_and_freeze_hold_while_serving_and_are_undone_after(tmp_path: Path) -> None:
    before = gc.get_threshold()
    assert before != SERVING_GC_THRESHOLDS  # else the test proves nothing
    port = free_port()
    stop = asyncio.Event()
    served = asyncio.create_task(serve(HubSettings(db=str(tmp_path / "hub.db"), port=port, advertise=False), stop))
    try:
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(START_S):
                while True:
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.05)
        assert gc.get_threshold() == SERVING_GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        stop.set()
        await asyncio.wait_for(served, START_S)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
