"""How long a small read waits while readers fetch fat pages of the ledger: the latency of ``GET /v1/counts``
(5 rows) asked every 100 ms of a hub process on SQLite, alone and beside readers that fetch
``GET /v1/ledger?location=WEB&limit=10000`` in a loop, over a ledger of events with attrs at their limits. The hub's read budget is turned off
(``SHELFSYNC_HUB_READ_BYTES_PER_S=0``), as it is in effect for readers holding several credentials.

Prints the figures; writes no results file.

    python -m bench.ledger_flood [--events 10000] [--readers 0,1,4] [--seconds 15] [--csv]

With ``--csv`` the readers download the location's whole ledger as CSV (``format=csv``) instead. With
``--variance BY`` the events are cycle counts and the readers fetch ``GET /v1/reports/variance?location=WEB&by=BY``
(``limit=10000`` for ``by=count``; with ``--csv``, its CSV) instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.bench_ingest import free_port, run_hub
from hub.storage import open_store
from protocol import Kind, StockEvent, new_event_id, pack_hlc, wall_ms_now
from protocol.values import ATTR_KEY_MAX_LEN, ATTR_STR_MAX_LEN, ATTRS_MAX_KEYS

ATTRS = {f"{k:02d}".ljust(ATTR_KEY_MAX_LEN, "k"): f"{k}".ljust(ATTR_STR_MAX_LEN, "v") for k in range(ATTRS_MAX_KEYS)}
PROBE_EVERY_S = 0.1


async def load(db: Path, n: int, kind: Kind = Kind.RECEIVE) -> str:
    """``n`` receipts (or counts) at WEB with attrs at their limits; the token of their agent."""
    async with await open_store(str(db)) as store:
        _, token = await store.add_agent(["WEB"])
        who = await store.authenticate(token)
        assert who is not None
        start_ms = wall_ms_now() - 3_600_000
        for first in range(1, n + 1, 1000):
            events = [
                StockEvent(
                    new_event_id(), who.agent_id, 1, seq, "WEB", f"SKU-{seq % 500:04d}", kind, 1,
                    pack_hlc(start_ms + seq, 0), start_ms + seq, "api:bench", attrs=ATTRS,
                )
                for seq in range(first, min(n, first + 999) + 1)
            ]  # fmt: skip
            assert not (await store.ingest(who, 1, events)).rejected
    return token


async def flood(
    url: str, token: str, readers: int, seconds: float, csv: bool = False, variance: str | None = None
) -> tuple[list[float], list[int], int]:
    """Small-read latencies (s), the fat pages' sizes (bytes) and how many were read."""
    headers = {"Authorization": f"Bearer {token}"}
    stop = time.monotonic() + seconds
    sizes: list[int] = []
    latencies: list[float] = []
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def reader() -> None:
            while time.monotonic() < stop:
                query = {"location": "WEB", "format": "csv"} if csv else {"location": "WEB", "limit": "10000"}
                path = "/v1/ledger"
                if variance is not None:
                    path = "/v1/reports/variance"
                    query = {"location": "WEB", "by": variance, **({"format": "csv"} if csv else {})}
                    if variance == "count" and not csv:
                        query["limit"] = "10000"
                async with session.get(f"{url}{path}", params=query) as resp:
                    assert resp.status == 200, resp.status
                    sizes.append(len(await resp.read()))

        async def probe() -> None:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                async with session.get(f"{url}/v1/counts", params={"limit": "5"}) as resp:
                    assert resp.status == 200, resp.status
                    await resp.read()
                latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(PROBE_EVERY_S)

        await asyncio.gather(probe(), *(reader() for _ in range(readers)))
    return latencies, sizes, len(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--readers", default="0,1,4")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--csv", action="store_true", help="the readers download the ledger as CSV")
    parser.add_argument("--variance", choices=("sku", "location", "count"), help="the readers fetch this report")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "hub.db"
        token = asyncio.run(load(db, args.events, Kind.RECEIVE if args.variance is None else Kind.COUNT))
        port = free_port()
        os.environ["SHELFSYNC_HUB_READ_BYTES_PER_S"] = "0"  # the hub process's read budget off
        hub = run_hub(db, port)
        try:
            for readers in (int(r) for r in args.readers.split(",")):
                lat, sizes, pages = asyncio.run(
                    flood(f"http://127.0.0.1:{port}", token, readers, args.seconds, args.csv, args.variance)
                )
                lat.sort()
                what = f"variance by={args.variance} " if args.variance else "ledger "
                what += "CSV downloads" if args.csv else "pages"
                size = f"{statistics.median(sizes) / 2**20:.1f} MiB" if sizes else "-"
                print(
                    f"{readers} reader(s) of fat {what} ({pages} of {size} in {args.seconds:.0f} s): "
                    f"GET /v1/counts median {statistics.median(lat) * 1e3:.0f} ms, "
                    f"p90 {lat[int(len(lat) * 0.9)] * 1e3:.0f} ms, max {lat[-1] * 1e3:.0f} ms ({len(lat)} asked)",
                    flush=True,
                )
        finally:
            hub.terminate()
            hub.wait(timeout=30)


if __name__ == "__main__":
    main()
