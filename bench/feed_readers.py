"""The change feed under hostile or careless readers, against a real ``python -m hub serve`` on 127.0.0.1.

Three scenarios, each printed as a few figures (nothing is written to bench/results):

- ``history``: five clients read the whole feed (12,000 changes) from cursor 0 in a loop while a store agent asks
  ``GET /v1/counts?location=S1``; the agent's median and p95 latency, and what the readers were answered;
- ``stalled``: 200 clients open a change stream and never read while an agent syncs 12,000 changes; the syncs'
  time, the hub's RSS growth and what the hub held for the streams at the end;
- ``flood``: 200 clients at once against ``max_connections = 50``, each sending requests in a loop; how many
  answers were 200, 503 (and with Retry-After), and how many ended in a dropped connection;
- ``flood_posts``: the same through aiohttp's client, each client a session of one keep-alive connection sending
  ``POST /v1/sync`` (which a client library never sends again by itself on a new connection); how many were lost.

    PYTHONPATH=. .venv/bin/python -m bench.feed_readers [history|stalled|flood|flood_posts ...]

``HUB_EXTRA`` adds lines to the flood's hub's ``[hub]`` table (``event_loop = "asyncio"``, say).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import psutil

from bench.common import median, percentile
from hub import open_store
from protocol import MSGPACK_CONTENT_TYPE, Kind, SyncRequest, encode_sync_request
from tests.harness.clock import RECENT_MS
from tests.harness.hub_process import HubProcess
from tests.hub.event_factory import EventFactory

CHANGES = 12_000
BATCH = 500
READERS = 5
STALLED = 200
FLOOD_CLIENTS = 200
FLOOD_BUDGET = 50
RUN_S = 10.0
STALL_WAIT_S = 35.0


async def _fill(db: Path, changes: int) -> tuple[str, str, str]:
    """``changes`` changes at S1 (one SKU each), an agent's and a reader's token, and the agent id."""
    async with open_store(str(db)) as store:
        agent_id, token = await store.add_agent(["S1"])
        _, reader = await store.add_agent([], role="reader")
        who = await store.authenticate(token)
        assert who is not None
        events = EventFactory(agent_id, 1, "S1", "A", base_ms=RECENT_MS)
        for start in range(0, changes, 1000):
            batch = [events(Kind.RECEIVE, 1, at_ms=start + i, sku=f"SKU-{start + i:05d}") for i in range(1000)]
            await store.ingest(who, 1, batch, acked_seq=events.seq - len(batch))
        return token, reader, agent_id


def _hub(tmp: Path, config: str) -> HubProcess:
    (tmp / "hub.toml").write_text("[hub]\n" + config)
    return HubProcess(tmp / "hub.log", "--config", str(tmp / "hub.toml"), db=tmp / "hub.db", port=0)


async def history(tmp: Path) -> None:
    token, reader, _ = await _fill(tmp / "hub.db", CHANGES)
    hub = _hub(tmp, "")
    hub.start()
    try:
        async with aiohttp.ClientSession() as session:
            answers: Counter[int] = Counter()
            stop = asyncio.Event()

            async def loop_history() -> None:
                while not stop.is_set():
                    cursor = "0"
                    while not stop.is_set():
                        async with session.get(
                            f"{hub.url}/v1/changes", params={"cursor": cursor, "limit": "1000"},
                            headers={"Authorization": f"Bearer {reader}"},
                        ) as resp:  # fmt: skip
                            answers[resp.status] += 1
                            if resp.status == 429:
                                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                                break
                            body = await resp.json()
                        cursor = body["cursor"]
                        if not body["more"]:
                            break

            async def counts(n: int) -> list[float]:
                took = []
                for _ in range(n):
                    started = time.perf_counter()
                    async with session.get(
                        f"{hub.url}/v1/counts", params={"location": "S1", "limit": "100"},
                        headers={"Authorization": f"Bearer {token}"},
                    ) as resp:  # fmt: skip
                        assert resp.status == 200, await resp.text()
                        await resp.read()
                    took.append((time.perf_counter() - started) * 1000)
                    await asyncio.sleep(0.05)
                return took

            alone = await counts(40)
            readers = [asyncio.create_task(loop_history()) for _ in range(READERS)]
            loaded = await counts(int(RUN_S / 0.05))
            stop.set()
            await asyncio.gather(*readers)
        print(f"history: /v1/counts alone median {median(alone):.1f} ms p95 {percentile(alone, 95):.1f} ms")
        print(f"history: with {READERS} full-history readers median {median(loaded):.1f} ms "
              f"p95 {percentile(loaded, 95):.1f} ms; the readers were answered {dict(answers)}")  # fmt: skip
    finally:
        hub.close()


async def stalled(tmp: Path) -> None:
    token, reader, agent_id = await _fill(tmp / "hub.db", 0)
    hub = _hub(tmp, "")
    hub.start()
    socks = []
    try:
        ps = psutil.Process(hub.pid)
        async with aiohttp.ClientSession() as session:
            events = EventFactory(agent_id, 1, "S1", "A", base_ms=RECENT_MS)

            async def sync_all(offset: int) -> float:
                started = time.perf_counter()
                for start in range(0, CHANGES, BATCH):
                    batch = tuple(
                        events(Kind.RECEIVE, 1, at_ms=offset + start + i, sku=f"SKU-{start + i:05d}")
                        for i in range(BATCH)
                    )  # fmt: skip
                    body = encode_sync_request(SyncRequest(agent_id, 1, batch))
                    async with session.post(
                        f"{hub.url}/v1/sync", data=body,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE},
                    ) as resp:  # fmt: skip
                        assert resp.status == 200, await resp.text()
                return time.perf_counter() - started

            alone = await sync_all(0)
            rss_before = ps.memory_info().rss
            for _ in range(STALLED):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", hub.port))
                s.sendall(
                    f"GET /v1/changes/stream?cursor=0 HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {reader}\r\n\r\n".encode()
                )
                socks.append(s)
            await asyncio.sleep(2.0)
            loaded = await sync_all(100_000)
            await asyncio.sleep(2.0)
            rss_after = ps.memory_info().rss
            await asyncio.sleep(STALL_WAIT_S)  # the hub cuts a stream whose client took nothing for 30 s
            closed = 0
            for s in socks:
                s.setblocking(False)
                try:
                    while s.recv(1 << 16):
                        pass
                    closed += 1  # EOF: the hub closed it
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    closed += 1
        print(
            f"stalled: {CHANGES} changes synced alone in {alone:.2f} s, with {STALLED} stalled streams in "
            f"{loaded:.2f} s; hub RSS +{(rss_after - rss_before) / 1e6:.0f} MB "
            f"({(rss_after - rss_before) / STALLED / 1e3:.0f} kB a stream); {closed} of them cut by the hub"
        )
        cut = [line for line in hub.log.splitlines() if "change stream" in line][-3:]
        print("stalled: log:", *cut, sep="\n  ")
    finally:
        for s in socks:
            s.close()
        hub.close()


async def flood(tmp: Path) -> None:
    token, _, _ = await _fill(tmp / "hub.db", 100)
    hub = _hub(tmp, f"max_connections = {FLOOD_BUDGET}\nrate_limit_per_s = 0\n" + os.environ.get("HUB_EXTRA", ""))
    hub.start()
    outcomes: Counter[str] = Counter()
    stop = time.monotonic() + RUN_S

    async def client() -> None:
        while time.monotonic() < stop:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
            except OSError:
                outcomes["connect failed"] += 1
                continue
            sent = 0
            try:
                for sent in range(5):  # a few requests on one connection, as a client with keep-alive sends them
                    writer.write(
                        f"GET /v1/counts?location=S1 HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
                    )
                    await writer.drain()
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
                    status = head.split(b" ", 2)[1].decode()
                    length = int(next(
                        (h.split(b":", 1)[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")),
                        b"0",
                    ))  # fmt: skip
                    await reader.readexactly(length)
                    outcomes[status + (" with Retry-After" if b"Retry-After" in head else "")] += 1
                    if status != "200":
                        break
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as err:
                where = "its first request" if sent == 0 else "a later request (keep-alive)"
                outcomes[f"dropped without an answer to {where}: {type(err).__name__}"] += 1
            finally:
                writer.close()

    try:
        await asyncio.gather(*(client() for _ in range(FLOOD_CLIENTS)))
        print(f"flood: {FLOOD_CLIENTS} clients against max_connections {FLOOD_BUDGET} for {RUN_S:g} s: "
              f"{dict(outcomes)}")  # fmt: skip
    finally:
        hub.close()
    print("flood: log:", *[line for line in hub.log.splitlines() if "connection" in line][-6:], sep="\n  ")


async def flood_posts(tmp: Path) -> None:
    token, _, agent_id = await _fill(tmp / "hub.db", 100)
    hub = _hub(tmp, f"max_connections = {FLOOD_BUDGET}\nrate_limit_per_s = 0\n" + os.environ.get("HUB_EXTRA", ""))
    hub.start()
    body = encode_sync_request(SyncRequest(agent_id, 1, ()))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": MSGPACK_CONTENT_TYPE}
    outcomes: Counter[str] = Counter()
    stop = time.monotonic() + RUN_S

    async def client() -> None:
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) as session:
            while time.monotonic() < stop:
                try:
                    async with session.post(f"{hub.url}/v1/sync", data=body, headers=headers) as resp:
                        await resp.read()
                        outcomes[f"{resp.status}" + (" with Retry-After" if "Retry-After" in resp.headers else "")] += 1
                except (aiohttp.ClientError, TimeoutError) as err:
                    outcomes[f"lost: {type(err).__name__}"] += 1

    try:
        await asyncio.gather(*(client() for _ in range(FLOOD_CLIENTS)))
        print(f"flood_posts: {FLOOD_CLIENTS} clients against max_connections {FLOOD_BUDGET} for {RUN_S:g} s: "
              f"{dict(outcomes)}")  # fmt: skip
    finally:
        hub.close()


SCENARIOS = {"history": history, "stalled": stalled, "flood": flood, "flood_posts": flood_posts}


def main() -> None:
    for name in sys.argv[1:] or list(SCENARIOS):
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(SCENARIOS[name](Path(tmp)))


if __name__ == "__main__":
    main()
