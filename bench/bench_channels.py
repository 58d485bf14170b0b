"""Channels: how fast a store's sale reaches the web shop, and what a burst costs in API calls.

Everything is real except Shopify: a hub process (``python -m hub serve`` with a
``[[channel]]`` table) pushes to the Shopify GraphQL Admin emulator of the tests
(tests/channels/emulators/shopify.py, API 2026-01) with a **standard plan's
throttle** (a bucket of 1,000 points refilled at 100 points/s; a mutation costs
10). The store is a real outbox and replicator (the agent's own classes) in this
process, syncing to the hub over loopback.

1. **Latency.** Sales are recorded at Poisson times (``--rate`` per second over
   ``--skus`` SKUs, for ``--seconds``). A sale's latency runs from the moment
   its record is durable in the store's outbox to the moment the emulator holds
   a level at or below what that sale left (levels are polled every 5 ms in
   this process, so each figure may be up to 5 ms late).
2. **Burst.** ``--burst`` sales over ``--burst-skus`` SKUs recorded as fast as
   the outbox takes them; the clock runs until every channel level is right.
   API calls are counted at the emulator. Side by side, under the same
   throttle, a naive pusher that makes one call per change of the hub's change
   feed (``GET /v1/changes``), each setting that change's level, as a plain
   per-change webhook integration would. The naive pusher runs for at most
   ``--naive-max-s``; if it has not finished, its total time is projected from
   the call rate it sustained (and marked as projected).

    python -m bench.bench_channels                     # the issue's sizes
    python -m bench.bench_channels --seconds 20 --burst 2000   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from agent import Movement, Outbox
from agent.replicator import Replicator
from bench.common import median, percentile, write_result
from bench.soak import free_port
from hub import open_store
from protocol import Kind
from tests.channels.emulators.shopify import ShopifyEmulator

LOCATION = "S1"
START_STOCK = 100_000
POLL_S = 0.005
HUB_START_S = 30.0
SETTLE_TIMEOUT_S = 600.0
STANDARD_BUCKET = 1000.0
STANDARD_RESTORE_PER_S = 100.0


@dataclass
class Shop:
    emu: ShopifyEmulator
    location_id: str
    items: dict[str, str]  # sku -> inventory item gid

    def level(self, sku: str) -> int | None:
        return self.emu.available(self.items[sku], self.location_id)


async def open_shop(skus: list[str]) -> Shop:
    emu = ShopifyEmulator(maximum_available=STANDARD_BUCKET, restore_rate=STANDARD_RESTORE_PER_S)
    await emu.start()
    location_id = emu.add_location()
    items = {sku: emu.add_variant(sku, stocked_at=[location_id]).item_id for sku in skus}
    return Shop(emu, location_id, items)


@dataclass
class Hub:
    url: str
    proc: asyncio.subprocess.Process
    agent_id: str
    token: str
    reader_token: str
    log: Path


async def start_hub(root: Path, shop: Shop) -> Hub:
    db = root / "hub.db"
    async with open_store(str(db)) as store:
        agent_id, token = await store.add_agent([LOCATION])
        _, reader_token = await store.add_agent([LOCATION], role="reader")
    port = free_port()
    config = root / "hub.toml"
    config.write_text(
        f'[hub]\ndb = "hub.db"\nhost = "127.0.0.1"\nport = {port}\n\n'
        f'[[channel]]\nname = "web"\nkind = "shopify"\nurl = "{shop.emu.url}"\nsecret_env = "BENCH_SHOPIFY_TOKEN"\n'
        f'pool = {{ {LOCATION} = "{shop.location_id}" }}\nbuffer = 0\n',
        encoding="utf-8",
    )
    log = root / "hub.log"
    env = {**os.environ, "BENCH_SHOPIFY_TOKEN": shop.emu.token}
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub", "serve", "--config", str(config), stdout=out, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + HUB_START_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise SystemExit(f"the hub exited with {proc.returncode}; see {log}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{url}/healthz") as resp:
                    if resp.status == 200:
                        return Hub(url, proc, agent_id, token, reader_token, log)
            await asyncio.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the hub did not answer within {HUB_START_S:.0f} s; see {log}")


async def stop_hub(hub: Hub) -> None:
    if hub.proc.returncode is None:
        hub.proc.terminate()
        await asyncio.wait_for(hub.proc.wait(), 60)


@dataclass
class Store:
    outbox: Outbox
    replicator: Replicator

    async def record(self, sku: str, kind: Kind, qty: int) -> None:
        await self.outbox.record([Movement(LOCATION, sku, kind, qty, "pos:bench")])

    async def close(self) -> None:
        await self.replicator.stop()
        await self.outbox.close()


async def open_store_agent(root: Path, hub: Hub) -> Store:
    outbox = await Outbox.open(root / "outbox.sqlite3", agent_id=hub.agent_id, location=LOCATION)
    replicator = Replicator(outbox, hub.url, hub.token, tick_s=1.0, retry_base_s=0.1, retry_max_s=2.0, timeout_s=30.0)
    await replicator.start()
    return Store(outbox, replicator)


async def wait_levels(shop: Shop, expected: dict[str, int], timeout_s: float = SETTLE_TIMEOUT_S) -> float:
    """Seconds until the shop shows ``expected`` for every SKU (polled every ``POLL_S``)."""
    started = time.perf_counter()
    while any(shop.level(sku) != level for sku, level in expected.items()):
        if time.perf_counter() - started > timeout_s:
            wrong = sum(shop.level(sku) != level for sku, level in expected.items())
            raise SystemExit(f"{wrong} channel level(s) still wrong after {timeout_s:.0f} s")
        await asyncio.sleep(POLL_S)
    return time.perf_counter() - started


# --- 1. latency -----------------------------------------------------------------------------------


@dataclass
class Pending:
    level: int  # what the sale left at the hub
    at: float  # perf_counter when it was durable in the outbox


async def latency(root: Path, rate_per_s: float, seconds: float, n_skus: int, seed: int) -> dict[str, float]:
    skus = [f"LAT-{k:03d}" for k in range(n_skus)]
    shop = await open_shop(skus)
    hub = await start_hub(root, shop)
    store = await open_store_agent(root, hub)
    try:
        for sku in skus:
            await store.record(sku, Kind.RECEIVE, START_STOCK)
        await wait_levels(shop, dict.fromkeys(skus, START_STOCK))
        calls_before = shop.emu.stats.requests
        rng = random.Random(seed)
        left = dict.fromkeys(skus, START_STOCK)
        pending: dict[str, list[Pending]] = {sku: [] for sku in skus}
        latencies: list[float] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not (done.is_set() and not any(pending.values())):
                now = time.perf_counter()
                for sku, waiting in pending.items():
                    if not waiting:
                        continue
                    shown = shop.level(sku)
                    while waiting and shown is not None and shown <= waiting[0].level:
                        latencies.append(now - waiting.pop(0).at)
                await asyncio.sleep(POLL_S)

        watcher = asyncio.create_task(watch())
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            await asyncio.sleep(rng.expovariate(rate_per_s))
            sku = rng.choice(skus)
            await store.record(sku, Kind.SALE, -1)
            left[sku] -= 1
            pending[sku].append(Pending(left[sku], time.perf_counter()))
        done.set()
        await asyncio.wait_for(watcher, SETTLE_TIMEOUT_S)
        return {
            "sales": len(latencies),
            "p50_s": percentile(latencies, 50),
            "p99_s": percentile(latencies, 99),
            "max_s": max(latencies),
            "calls": shop.emu.stats.requests - calls_before,
            "throttled": shop.emu.stats.throttled,
        }
    finally:
        await store.close()
        await stop_hub(hub)
        await shop.emu.close()


# --- 2. burst, beside a naive pusher --------------------------------------------------------------


@dataclass
class NaiveRun:
    calls: int = 0
    throttled: int = 0
    changes: int = 0
    seconds: float = 0.0
    finished: bool = False
    seen: set[int] = field(default_factory=set)


async def naive_pusher(hub: Hub, shop: Shop, cursor: str, max_s: float, expected: dict[str, int]) -> NaiveRun:
    """One inventorySetQuantities call per change-feed row, retried on THROTTLED as Shopify asks."""
    run = NaiveRun()
    mutation = (
        "mutation set($input: InventorySetQuantitiesInput!, $key: String!) "
        "{ inventorySetQuantities(input: $input) @idempotent(key: $key) "
        "{ inventoryAdjustmentGroup { id } userErrors { code field message } } }"
    )
    started = time.perf_counter()
    headers = {"X-Shopify-Access-Token": shop.emu.token, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() - started < max_s:
            async with session.get(
                f"{hub.url}/v1/changes", params={"cursor": cursor, "limit": "500"},
                headers={"Authorization": f"Bearer {hub.reader_token}"},
            ) as resp:  # fmt: skip
                page = await resp.json()
            if not page["changes"]:
                if all(shop.level(s) == q for s, q in expected.items()):
                    run.finished = True
                    break
                await asyncio.sleep(0.05)
                continue
            for change in page["changes"]:
                if change["sku"] not in shop.items or time.perf_counter() - started >= max_s:
                    continue
                run.changes += 1
                quantities = [{"inventoryItemId": shop.items[change["sku"]], "locationId": shop.location_id,
                               "quantity": change["available"], "changeFromQuantity": None}]  # fmt: skip
                body = {
                    "query": mutation,
                    "variables": {"input": {"name": "available", "reason": "correction", "quantities": quantities},
                                  "key": f"naive-{change['change_id']}"},
                }  # fmt: skip
                while True:
                    async with session.post(shop.emu.url, json=body, headers=headers) as resp:
                        answer = await resp.json()
                    run.calls += 1
                    errors = answer.get("errors") or []
                    if not any(e.get("extensions", {}).get("code") == "THROTTLED" for e in errors):
                        break
                    run.throttled += 1
                    status = answer["extensions"]["cost"]["throttleStatus"]
                    wanted = answer["extensions"]["cost"]["requestedQueryCost"] - status["currentlyAvailable"]
                    await asyncio.sleep(max(0.01, wanted / status["restoreRate"]))
            cursor = page["cursor"]
    run.seconds = time.perf_counter() - started
    return run


async def burst(root: Path, sales: int, n_skus: int, naive_max_s: float, seed: int) -> dict[str, Any]:
    skus = [f"BURST-{k:03d}" for k in range(n_skus)]
    shop = await open_shop(skus)
    naive_shop = await open_shop(skus)
    hub = await start_hub(root, shop)
    store = await open_store_agent(root, hub)
    try:
        stock = max(10, 4 * sales // n_skus)
        for sku in skus:
            await store.record(sku, Kind.RECEIVE, stock)
        await wait_levels(shop, dict.fromkeys(skus, stock))
        async with aiohttp.ClientSession() as session, session.get(
            f"{hub.url}/v1/changes", params={"cursor": "0", "limit": "5000"},
            headers={"Authorization": f"Bearer {hub.reader_token}"},
        ) as resp:  # fmt: skip
            cursor = (await resp.json())["cursor"]
        for sku in skus:  # the naive pusher starts from the same levels
            naive_shop.emu.levels[(naive_shop.items[sku], naive_shop.location_id)] = stock
        calls_before, throttled_before = shop.emu.stats.requests, shop.emu.stats.throttled
        rng = random.Random(seed)
        expected = dict.fromkeys(skus, stock)
        started = time.perf_counter()
        for _ in range(sales):
            sku = rng.choice(skus)
            expected[sku] -= 1
            await store.record(sku, Kind.SALE, -1)
        record_s = time.perf_counter() - started
        await wait_levels(shop, expected)
        ours_s = time.perf_counter() - started
        ours_calls = shop.emu.stats.requests - calls_before
        ours_throttled = shop.emu.stats.throttled - throttled_before
        naive = await naive_pusher(hub, naive_shop, cursor, naive_max_s, expected)
        naive_rate = naive.calls / naive.seconds if naive.seconds else 0.0
        changes_total = await _changes_after(hub, cursor)
        naive_total_s = naive.seconds if naive.finished else changes_total / max(naive.changes / naive.seconds, 1e-9)
        return {
            "sales": sales,
            "skus": n_skus,
            "record_s": record_s,
            "ours_s": ours_s,
            "ours_calls": ours_calls,
            "ours_throttled": ours_throttled,
            "changes": changes_total,
            "naive_calls": naive.calls,
            "naive_s": naive_total_s,
            "naive_finished": naive.finished,
            "naive_calls_per_s": naive_rate,
        }
    finally:
        await store.close()
        await stop_hub(hub)
        await shop.emu.close()
        await naive_shop.emu.close()


async def _changes_after(hub: Hub, cursor: str) -> int:
    total = 0
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(
                f"{hub.url}/v1/changes", params={"cursor": cursor, "limit": "5000"},
                headers={"Authorization": f"Bearer {hub.reader_token}"},
            ) as resp:  # fmt: skip
                page = await resp.json()
            total += len(page["changes"])
            cursor = page["cursor"]
            if not page["more"]:
                return total


async def main(args: argparse.Namespace) -> None:
    lat_runs = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-channels-") as tmp:
            result = await latency(Path(tmp), args.rate, args.seconds, args.skus, args.seed + run)
            print(f"latency run {run + 1}: {result}")
            lat_runs.append(result)
    with tempfile.TemporaryDirectory(prefix="bench-channels-") as tmp:
        b = await burst(Path(tmp), args.burst, args.burst_skus, args.naive_max_s, args.seed)
        print(f"burst: {b}")
    p50 = median([r["p50_s"] for r in lat_runs])
    p99 = median([r["p99_s"] for r in lat_runs])
    naive_label = "naive pusher, one call per change" + ("" if b["naive_finished"] else " (projected)")
    rows = [
        {"measure": "sale → Shopify level, p50 (s)", "value": p50, "goal": "≤ 1"},
        {"measure": "sale → Shopify level, p99 (s)", "value": p99, "goal": "≤ 5"},
        {"measure": "sale → Shopify level, max (s)", "value": median([r["max_s"] for r in lat_runs]), "goal": ""},
        {"measure": f"burst of {b['sales']:,} sales over {b['skus']} SKUs: until every level is right (s)",
         "value": b["ours_s"], "goal": f"{naive_label}: {b['naive_s']:,.0f} s"},
        {"measure": "burst: API calls", "value": b["ours_calls"],
         "goal": f"{naive_label}: {b['changes']:,} calls"},
    ]  # fmt: skip
    notes = (
        f"Standard Shopify throttle (bucket {STANDARD_BUCKET:.0f} points, {STANDARD_RESTORE_PER_S:.0f} points/s, "
        f"10 points a mutation). Latency: {args.runs} runs of {args.seconds:.0f} s at {args.rate} sales/s over "
        f"{args.skus} SKUs ({', '.join(str(r['sales']) for r in lat_runs)} sales), the median of the runs' "
        f"percentiles; calls per run {', '.join(str(r['calls']) for r in lat_runs)}. Burst: the sales were recorded "
        f"in {b['record_s']:.1f} s; shelfsync's pusher was throttled {b['ours_throttled']} time(s). The naive pusher "
        f"made {b['naive_calls']:,} calls in its {min(args.naive_max_s, float(b['naive_s'])):.0f} s "
        f"({b['naive_calls_per_s']:.1f} calls/s, the throttle's ceiling being 10 a second)"
        + ("." if b["naive_finished"] else f"; the {b['changes']:,} changes would take {b['naive_s']:,.0f} s at that rate.")
    )
    write_result(
        "bench_channels",
        title="Channels: store sale → web shop level, and a burst",
        command="python -m bench.bench_channels " + " ".join(sys.argv[1:]),
        rows=rows,
        notes=notes,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5.0, help="sales per second in the latency run")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each latency run")
    parser.add_argument("--skus", type=int, default=50, help="SKUs in the latency run")
    parser.add_argument("--runs", type=int, default=3, help="latency runs (the median of their percentiles)")
    parser.add_argument("--burst", type=int, default=10_000, help="sales in the burst")
    parser.add_argument("--burst-skus", type=int, default=500, help="SKUs in the burst")
    parser.add_argument("--naive-max-s", type=float, default=90.0, help="longest run of the naive pusher")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
