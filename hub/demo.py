"""``python -m hub.demo``: a hub on embedded SQLite with one store agent.

Everything lives in ``demo-data/`` (recreated each run): the hub database, the
agent's configuration, outbox and files. The hub serves on 127.0.0.1; the
store agent runs as its own process (``python -m agent run``), exactly as in a
store, with three sources of movements:

- a **simulated serial scanner**: a pseudo-terminal the agent reads as a
  scanner in receive mode, into which the demo "scans" a delivery (EAN-13s, a
  case GTIN-14 of 12, and one barcode the catalog does not know);
- a **POS export** dropped into the agent's watched folder (sales and a refund);
- simulated movements at a steady rate.

The hub resolves them into counts; the demo prints the counts as they change
and where to look (API, dashboard, the handheld page with PIN 1234). Ctrl-C
stops it. The demo's hub never imports the agent: they talk over HTTP only.
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
import time
from pathlib import Path

from hub.config import HubSettings
from hub.server import serve
from hub.storage import open_store

log = logging.getLogger("hub.demo")

LOCATION = "STORE-1"
SKUS = ("COFFEE-250G", "TEA-GREEN-50", "MUG-WHITE", "FILTER-100", "KETTLE-1L")
REFRESH_S = 2.0
SCAN_EVERY_S = 1.5
DEMO_PIN = "1234"
GS = "\x1d"


def gtin(body: str) -> str:
    """``body`` with its GS1 mod-10 check digit appended."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


# barcode → (sku, pack size): EAN-13s for single units, a GTIN-14 case of 12 mugs.
CATALOG = {
    gtin("400638133393"): ("COFFEE-250G", 1),
    gtin("501234567890"): ("TEA-GREEN-50", 1),
    gtin("590123412345"): ("MUG-WHITE", 1),
    gtin("1590123412345"): ("MUG-WHITE", 12),
    gtin("871234567890"): ("FILTER-100", 1),
}
UNKNOWN_BARCODE = gtin("200000000001")  # not in the catalog: booked as unknown, listed in the exceptions
# What the simulated scanner "scans" at the back door: AIM ]E0 EAN-13s, a GS1-128 case with lot and expiry.
DELIVERY = [
    f"]E0{gtin('400638133393')}",
    f"]E0{gtin('400638133393')}",
    f"]E0{gtin('501234567890')}",
    f"]C101{gtin('1590123412345')}10LOT42{GS}17271231",
    f"]E0{UNKNOWN_BARCODE}",
    f"]E0{gtin('871234567890')}",
]
POS_EXPORT = """date,sku,qty,kind,ref,location
{day}T09:05:00,COFFEE-250G,2,sale,R-1001,STORE-1
{day}T09:40:00,KETTLE-1L,1,sale,R-1002,STORE-1
{day}T10:15:00,TEA-GREEN-50,3,sale,R-1003,STORE-1
{day}T11:02:00,COFFEE-250G,1,return,R-1001,STORE-1
"""


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
    (work / "catalog.csv").write_text(
        "barcode,sku,pack_size,description\n"
        + "".join(f"{code},{sku},{pack},{sku.replace('-', ' ').title()}\n" for code, (sku, pack) in CATALOG.items())
    )
    pos_drop = work / "pos-drop"
    pos_drop.mkdir()
    scanner_master, scanner_slave = os.openpty()
    scanner_port = os.ttyname(scanner_slave)
    pin_line = await _hash_pin(DEMO_PIN)
    config = work / "agent.toml"
    config.write_text(
        f'[agent]\nid = "{agent_id}"\nlocation = "{LOCATION}"\ntoken = "{agent_token}"\nhub_url = "{hub_url}"\n'
        f'data_dir = "{work.as_posix()}"\n\n[replicator]\ntick_s = 1\n\n'
        f"[simulate]\ncount = {args.movements}\nrate_per_s = {args.rate}\nseed = 7\n"
        f"skus = [{', '.join(repr(s).replace(chr(39), chr(34)) for s in SKUS)}]\n\n"
        f'[catalog]\nfile = "catalog.csv"\n\n'
        f'[[scanner]]\nid = "backdoor"\ntype = "serial"\nport = "{scanner_port}"\nbaudrate = 115200\nmode = "receive"\n\n'
        f'[pos]\nwatch_dir = "pos-drop"\nprofile = "generic"\n\n'
        f"[localapi]\nenabled = true\nport = {args.port + 1}\n\n[localapi.staff]\n{pin_line}\n"
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
        f"  dashboard:  {hub_url}/dashboard  (sign in with the reader credential below)\n"
        f"  counts:     curl -H 'Authorization: Bearer {reader_token}' {hub_url}/v1/locations/{LOCATION}/counts\n"
        f"  ledger:     {hub_url}/v1/ledger?location={LOCATION}   exceptions: {hub_url}/v1/exceptions\n"
        f"  handheld:   http://127.0.0.1:{args.port + 1}/  (staff demo, PIN {DEMO_PIN})\n"
        f"  agent:      python -m agent status --config {config}\n"
        f"  scanner:    {scanner_port} (receive mode); POS drop folder: {pos_drop}\n"
        f"  reader credential: {reader_token} (also in {work / 'reader.token'}); Ctrl-C stops the demo.\n",
        flush=True,
    )
    feeder = asyncio.create_task(_scan_delivery(scanner_master))
    (pos_drop / "sales-today.csv").write_text(POS_EXPORT.format(day=time.strftime("%Y-%m-%d")))
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
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
            await agent.wait()
        await hub_task
        os.close(scanner_master)
        os.close(scanner_slave)
    print("demo stopped; its files are in", work)
    return 0


async def _hash_pin(pin: str) -> str:
    """``demo = "<hash>"`` for [localapi.staff], from the agent's own tool (the hub never imports the agent)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent.localapi", "hash-pin", "--staff", "demo",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate(f"{pin}\n".encode())
    if proc.returncode != 0:
        raise RuntimeError("could not hash the demo PIN with python -m agent.localapi hash-pin")
    return out.decode().strip().splitlines()[-1]


async def _scan_delivery(master_fd: int) -> None:
    """Be a serial scanner: write one frame (CR LF terminated) every few seconds, round and round."""
    await asyncio.sleep(3.0)  # let the agent open the port
    n = 0
    while True:
        os.write(master_fd, DELIVERY[n % len(DELIVERY)].encode() + b"\r\n")
        n += 1
        await asyncio.sleep(SCAN_EVERY_S)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run_demo(build_parser().parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
