"""``python -m hub demo``: a hub on embedded SQLite with one simulated store agent.

Everything lives in ``demo-data/`` (recreated each run): the hub database, the
agent's configuration and outbox. The hub serves on 127.0.0.1; the store agent
runs as its own process (``python -m agent run``), exactly as in a store, and
records simulated movements that the hub resolves into counts. The demo prints
the counts as they change and where to look at them; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

from hub.config import HubSettings
from hub.server import serve
from hub.storage import open_store

log = logging.getLogger("hub.demo")

LOCATION = "STORE-1"
SKUS = ("COFFEE-250G", "TEA-GREEN-50", "MUG-WHITE", "FILTER-100", "KETTLE-1L")
REFRESH_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shelfsync-hub demo", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", default="demo-data", help="working directory for the demo's files (default demo-data)")
    parser.add_argument("--port", type=int, default=8470, help="hub port on 127.0.0.1 (default 8470)")
    parser.add_argument("--movements", type=int, default=600, help="simulated movements to record (default 600)")
    parser.add_argument("--rate", type=float, default=20.0, help="simulated movements per second (default 20)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (default: run until Ctrl-C)")
    return parser


async def run_demo(args: argparse.Namespace) -> int:
    work = Path(args.dir).absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    db = work / "hub.db"
    async with await open_store(str(db)) as store:
        agent_id, agent_token = await store.add_agent([LOCATION])
        _, reader_token = await store.add_agent([], role="reader")
    hub_url = f"http://127.0.0.1:{args.port}"
    config = work / "agent.toml"
    config.write_text(
        f'[agent]\nid = "{agent_id}"\nlocation = "{LOCATION}"\ntoken = "{agent_token}"\nhub_url = "{hub_url}"\n'
        f'data_dir = "{work.as_posix()}"\n\n[replicator]\ntick_s = 1\n\n'
        f"[simulate]\ncount = {args.movements}\nrate_per_s = {args.rate}\nseed = 7\n"
        f"skus = [{', '.join(repr(s).replace(chr(39), chr(34)) for s in SKUS)}]\n"
    )
    (work / "reader.token").write_text(reader_token + "\n")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    hub_task = asyncio.create_task(serve(HubSettings(db=str(db), port=args.port), stop=stop))
    await asyncio.sleep(0.5)
    if hub_task.done():
        await hub_task
        return 1
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "--config", str(config), "--log-level", "warning",
        stdout=asyncio.subprocess.DEVNULL, stderr=None, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    print(
        f"\nshelfsync demo — hub {hub_url} (SQLite {db}), store agent {agent_id} for {LOCATION}\n"
        f"  counts:     curl -H 'Authorization: Bearer {reader_token}' {hub_url}/v1/locations/{LOCATION}/counts\n"
        f"  ledger:     {hub_url}/v1/ledger?location={LOCATION}   exceptions: {hub_url}/v1/exceptions\n"
        f"  agent:      python -m agent status --config {config}\n"
        f"  reader credential saved in {work / 'reader.token'}; Ctrl-C stops the demo.\n",
        flush=True,
    )
    try:
        async with await open_store(str(db)) as reader:
            deadline = loop.time() + args.duration if args.duration > 0 else None
            while not stop.is_set():
                rows = await reader.counts(location=LOCATION)
                summary = "  ".join(f"{r.sku} {r.on_hand}" for r in rows) or "(waiting for the first sync)"
                print(f"{LOCATION} on hand: {summary}", flush=True)
                timeout = REFRESH_S if deadline is None else max(0.0, min(REFRESH_S, deadline - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout)
                if deadline is not None and loop.time() >= deadline:
                    stop.set()
    finally:
        stop.set()
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
            await agent.wait()
        await hub_task
    print("demo stopped; its files are in", work)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run_demo(build_parser().parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
