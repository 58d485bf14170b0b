"""A burst of connections the hub has not taken yet waits in the kernel's queue, not in the clients' retransmissions.

asyncio listens with the number of connections it accepts a turn (64), which is the kernel's queue of completed
handshakes too: past it the kernel dropped the handshakes of a burst, and each of those clients waited for its own
SYN to be sent again (1 s, then 3 s, then 7 s …) before the hub could answer it even a 503 (a 10 s flood of 200
clients against 50 connections: 1,445 dropped handshakes; none with the longer queue). Real hub process on
127.0.0.1, paused with SIGSTOP so that nothing is taken from the queue while the burst connects.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from hub.limits import KERNEL_BACKLOG
from tests.harness.commands import hub_env
from tests.harness.hub_process import HubProcess

BURST = 300  # past asyncio's 64, well within the hub's queue
CONNECT_S = 0.8  # under the first retransmission of a dropped handshake (1 s)
ANSWER_S = 30.0


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CONNECT_S)
    except (TimeoutError, OSError):
        return None


async def _answer(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bytes:
    reader, writer = conn
    try:
        writer.write(b"GET /livez HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readuntil(b"\r\n"), ANSWER_S)).split(b" ", 2)[1]
    finally:
        writer.close()


async def test_a_burst_of_connections_while_the_hub_is_busy_waits_in_the_kernels_queue(tmp_path: Path) -> None:
    assert BURST < KERNEL_BACKLOG
    with HubProcess(tmp_path / "hub.log", db=tmp_path / "hub.db", port=0, env=hub_env()) as hub:
        os.kill(hub.pid, signal.SIGSTOP)  # busy: it takes nothing from the queue meanwhile
        try:
            conns = await asyncio.gather(*(_connect(hub.port) for _ in range(BURST)))
        finally:
            os.kill(hub.pid, signal.SIGCONT)
        connected = [c for c in conns if c is not None]
        statuses = await asyncio.gather(*(_answer(c) for c in connected))
    assert len(connected) == BURST, f"{BURST - len(connected)} of {BURST} handshakes were dropped by a full queue"
    assert set(statuses) <= {b"200", b"503"} and len(statuses) == BURST
