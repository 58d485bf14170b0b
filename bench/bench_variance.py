"""Pages of the shrinkage report by SKU of a stocktake: 10 locations x 5,000 SKUs (50,000 rows; a receipt and a
count of each, 100,000 ledger rows), on SQLite or PostgreSQL, over real HTTP on 127.0.0.1.

It times the first page (limit 500), then the second (its ``next``), then the second again, and notes the longest
the event loop was held meanwhile (a 1 ms ticker beside the hub in the same process).

    python -m bench.bench_variance [--skus 5000] [--locations 10] [--runs 3] [--no-pg]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import median, write_result
from hub import HubSettings, create_app, open_store
from protocol import Kind, StockEvent, new_event_id, pack_hlc
from tests.harness.inprocess import IN_PROCESS_DB, serve_app


async def load(store, locations: int, skus: int) -> str:  # type: ignore[no-untyped-def]
    now_ms = time.time_ns() // 1_000_000 - 3_600_000
    locs = [f"S{i:03d}" for i in range(locations)]
    _, agent_token = await store.add_agent(locs, role="agent")
    who = await store.authenticate(agent_token)
    _, token = await store.add_agent([], role="reader")
    seq = 0
    for loc in locs:
        events = []
        for n in range(skus):
            for kind, qty, at in ((Kind.RECEIVE, 20, now_ms), (Kind.COUNT, 20 - n % 7, now_ms + 1000)):
                seq += 1
                events.append(StockEvent(new_event_id(), who.agent_id, 1, seq, loc, f"SKU-{n:05d}", kind, qty,
                                         pack_hlc(at, 0), at, "api:bench"))  # fmt: skip
        for start in range(0, len(events), 5000):
            assert not (await store.ingest(who, 1, events[start : start + 5000])).rejected
    return token


async def ticker(worst: list[float]) -> None:
    while True:
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        worst[0] = max(worst[0], time.perf_counter() - t - 0.001)


async def run(url: str, locations: int, skus: int, runs: int) -> list[dict[str, float]]:
    """``runs`` walks of the report's first two pages (each first page saves a report of its own): their times and the
    longest the event loop was held in each."""
    out: list[dict[str, float]] = []
    async with open_store(url) as store:
        token = await load(store, locations, skus)
        auth = {"Authorization": f"Bearer {token}"}
        async with serve_app(create_app(store, HubSettings(db=IN_PROCESS_DB))) as served:
            worst = [0.0]
            tick = asyncio.create_task(ticker(worst))
            try:
                for attempt in range(runs):
                    t0 = time.perf_counter()
                    worst[0] = 0.0
                    async with served.client.get("/v1/reports/variance", params={"limit": "500"}, headers=auth) as r:
                        assert r.status == 200, await r.text()
                        body = await r.json()
                    t1 = time.perf_counter()
                    held1 = worst[0]
                    assert body["row_count"] == locations * skus, body["row_count"]
                    times = []
                    for _ in range(2):
                        worst[0] = 0.0
                        t2 = time.perf_counter()
                        params = {"limit": "500", "cursor": body["next"]}
                        async with served.client.get("/v1/reports/variance", params=params, headers=auth) as r:
                            assert r.status == 200, await r.text()
                            page2 = await r.json()
                        times.append((time.perf_counter() - t2, worst[0]))
                    assert len(page2["rows"]) == 500
                    print(f"run {attempt + 1}: page 1 {t1 - t0:.3f} s (loop held {held1 * 1000:.0f} ms at most); "
                          f"page 2 {times[0][0]:.3f} s ({times[0][1] * 1000:.0f} ms), "
                          f"again {times[1][0]:.3f} s ({times[1][1] * 1000:.0f} ms)", flush=True)  # fmt: skip
                    out.append({"page1_s": t1 - t0, "held1_ms": held1 * 1000, "page2_s": times[0][0],
                                "held2_ms": times[0][1] * 1000})  # fmt: skip
            finally:
                tick.cancel()
    return out


def _rows(backend: str, walks: list[dict[str, float]]) -> list[dict[str, Any]]:
    page1, page2 = median([w["page1_s"] for w in walks]), median([w["page2_s"] for w in walks])
    return [
        {"measure": f"{backend}: page 1 (reads the period, ranks it, keeps the report)", "value": f"{page1:.3f} s",
         "baseline": "", "ratio": ""},
        {"measure": f"{backend}: page 2 (from the kept report)", "value": f"{page2 * 1000:.1f} ms",
         "baseline": f"page 1 {page1:.3f} s", "ratio": f"{page2 / page1:.3f}"},
        {"measure": f"{backend}: event loop held at most, page 1 / page 2",
         "value": f"{median([w['held1_ms'] for w in walks]):.0f} / {median([w['held2_ms'] for w in walks]):.0f} ms",
         "baseline": "", "ratio": ""},
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=5000)
    parser.add_argument("--locations", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3, help="walks of the first two pages on each backend")
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += _rows("SQLite", asyncio.run(run(str(Path(tmp) / "hub.db"), args.locations, args.skus, args.runs)))
    if not args.no_pg:
        from tests.harness.pg import fresh_schema

        async def on_pg() -> list[dict[str, float]]:
            async with fresh_schema("bench") as url:
                return await run(url, args.locations, args.skus, args.runs)

        rows += _rows("PostgreSQL", asyncio.run(on_pg()))
    write_result(
        "variance_pages",
        title=f"Shrinkage report by SKU: {args.locations * args.skus:,} rows, pages of 500 (median of {args.runs})",
        command=f"python -m bench.bench_variance --skus {args.skus} --locations {args.locations} --runs {args.runs}",
        rows=rows,
        notes="A walk's later pages read the report its first page kept (schema 30), not the ledger again.",
    )


if __name__ == "__main__":
    main()
