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

The hub resolves them into counts; the demo prints where to look (API,
dashboard, the handheld page with PIN 1234) once, then the counts only when
they change — on a terminal in one line rewritten in place, so the banner
stays in view. Ports: ``--port`` (or ``$SHELFSYNC_DEMO_PORT``, default 8470)
for the hub and ``--handheld-port`` (``$SHELFSYNC_DEMO_HANDHELD_PORT``,
default the hub's + 1, or a free one when that is taken); a port asked for
and in use is one sentence, not a traceback. If
the store agent's process dies, the demo says so in one sentence and stops
(exit status 1). Ctrl-C stops it. The demo's hub never imports the agent:
they talk over HTTP only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from hub.catalog import parse_csv
from hub.config import HubSettings
from hub.server import ServeError, serve
from hub.storage import open_store

log = logging.getLogger("hub.demo")

HOST = "127.0.0.1"
DEFAULT_PORT = 8470
PORT_MAX = 65535
PORT_ENV = "SHELFSYNC_DEMO_PORT"
HANDHELD_PORT_ENV = "SHELFSYNC_DEMO_HANDHELD_PORT"
HUB_START_TIMEOUT_S = 20.0
BANNER_EVERY_LINES = 25  # into a file or pipe: the banner's short form again after this many status lines
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


def _env_port(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 <= int(raw) <= PORT_MAX:
        raise DemoError(f"{name} must be a TCP port from 0 to {PORT_MAX}, got {raw[:20]!r}")
    return int(raw)


def build_parser(environ: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    port = _env_port(environ, PORT_ENV)
    handheld = _env_port(environ, HANDHELD_PORT_ENV)
    parser = argparse.ArgumentParser(prog="shelfsync-hub demo", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", default="demo-data", help="working directory for the demo's files (default demo-data)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT if port is None else port,
        help=f"hub port on 127.0.0.1; 0 picks a free one (default ${PORT_ENV}, else {DEFAULT_PORT})",
    )  # fmt: skip
    parser.add_argument(
        "--handheld-port", type=int, default=handheld,
        help=f"the store agent's handheld page port; 0 picks a free one (default ${HANDHELD_PORT_ENV}, else the hub "
        "port + 1, or a free one when that is taken)",
    )  # fmt: skip
    parser.add_argument("--movements", type=int, default=600, help="simulated movements to record (default 600)")
    parser.add_argument("--rate", type=float, default=20.0, help="simulated movements per second (default 20)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (default: run until Ctrl-C)")
    return parser


class DemoError(Exception):
    """The demo cannot start or go on; the message is one sentence saying why."""


def _claim_port(port: int, what: str, option: str, env: str) -> int:
    """``port`` if it is free on 127.0.0.1 (0: a free one), else ``DemoError`` saying how to choose another."""
    if not 0 <= port <= PORT_MAX:
        raise DemoError(f"{option} must be a TCP port from 0 to {PORT_MAX}, got {port}")
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError as err:
            why = os.strerror(err.errno).lower() if err.errno else str(err)
            raise DemoError(
                f"the demo cannot use port {port} on {HOST} for {what} ({why}); choose another with {option} N "
                f"or {env}=N (0 picks a free one)"
            ) from None
        return int(probe.getsockname()[1])


def _handheld_port(hub_port: int, asked: int | None) -> int:
    """The handheld page's port: the one asked for (taken: ``DemoError``), else the hub's + 1, else, when that
    one is taken (another program, or the port after 65535), a free one: the banner prints it either way."""
    if asked is not None:
        handheld = _claim_port(asked, "the handheld page", "--handheld-port", HANDHELD_PORT_ENV)
        if handheld == hub_port:
            raise DemoError(f"the hub and the handheld page cannot share port {hub_port}; give --handheld-port another one")
        return handheld
    with contextlib.suppress(DemoError):
        return _claim_port(hub_port + 1, "the handheld page", "--handheld-port", HANDHELD_PORT_ENV)
    return _claim_port(0, "the handheld page", "--handheld-port", HANDHELD_PORT_ENV)


class Console:
    """What the demo prints: its banner, then a status line only when the counts change. On a terminal the
    status line is rewritten in place, so the banner stays in view; into a file or a pipe, each change is
    one line and the banner's short form comes again every ``BANNER_EVERY_LINES`` lines."""

    def __init__(self, out: TextIO, banner: str, short: str) -> None:
        self._out, self._banner, self._short = out, banner, short
        self._tty = out.isatty()
        self._last: str | None = None
        self._lines = 0
        self._open_line = False

    def banner(self) -> None:
        self._write(self._banner + "\n")

    def status(self, summary: str) -> bool:
        """Show ``summary`` if it differs from the one shown last; True when it was shown."""
        if summary == self._last:
            return False
        self._last = summary
        line = f"{summary}   ({time.strftime('%H:%M:%S %Z')})"
        if self._tty:
            width = shutil.get_terminal_size((120, 24)).columns
            self._out.write("\r\x1b[K" + line[: max(20, width - 1)])
            self._out.flush()
            self._open_line = True
            return True
        self._lines += 1
        if self._lines % BANNER_EVERY_LINES == 0:
            self._write(self._short + "\n")
        self._write(line + "\n")
        return True

    def say(self, sentence: str) -> None:
        """One sentence on a line of its own (the status line, if open, is ended first)."""
        self._write(sentence + "\n")

    def _write(self, text: str) -> None:
        if self._open_line:
            self._out.write("\n")
            self._open_line = False
        self._out.write(text)
        self._out.flush()


async def run_demo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    port = _claim_port(args.port, "the hub", "--port", PORT_ENV)
    handheld_port = _handheld_port(port, args.handheld_port)
    work = Path(args.dir).absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=0o700)  # it holds the agent's token and the reader credential
    work.chmod(0o700)  # mkdir's mode is bent by the umask; parents made above it are not the demo's
    db = work / "hub.db"
    catalog_csv = work / "catalog.csv"  # the agent's copy, and the hub's catalog (the dashboard's product names)
    catalog_csv.write_text(
        "barcode,sku,pack_size,description\n"
        + "".join(f"{code},{sku},{pack},{sku.replace('-', ' ').title()}\n" for code, (sku, pack) in CATALOG.items())
    )
    async with await open_store(str(db)) as store:
        agent_id, agent_token = await store.add_agent([LOCATION])
        _, reader_token = await store.add_agent([], role="reader")
        await store.put_catalog(parse_csv(catalog_csv.read_bytes()).items)
    hub_url = f"http://{HOST}:{port}"
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
        f"[localapi]\nenabled = true\nport = {handheld_port}\n\n[localapi.staff]\n{pin_line}\n"
    )
    (work / "reader.token").write_text(reader_token + "\n")
    for secret in (config, work / "reader.token"):
        secret.chmod(0o600)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    hub_task = asyncio.create_task(serve(HubSettings(db=str(db), port=port), stop=stop))
    try:
        await _wait_listening(port, hub_task)
    except ServeError as err:
        raise DemoError(f"the demo's hub did not start: {err}") from err
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "--config", str(config), "--log-level", "warning",
        stdout=asyncio.subprocess.DEVNULL, stderr=None, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    short = f"shelfsync demo: dashboard {hub_url}/dashboard (reader credential in {work / 'reader.token'}); Ctrl-C stops it"
    console = Console(
        out,
        f"\nshelfsync demo — hub {hub_url} (SQLite {db}), store agent {agent_id} for {LOCATION} (pid {agent.pid})\n"
        f"  dashboard:  {hub_url}/dashboard  (sign in with the reader credential below)\n"
        f"  counts:     curl -H 'Authorization: Bearer {reader_token}' {hub_url}/v1/locations/{LOCATION}/counts\n"
        f"  CSV:        curl -H 'Authorization: Bearer {reader_token}' -H 'Accept: text/csv' {hub_url}/v1/counts\n"
        f"  ledger:     {hub_url}/v1/ledger?location={LOCATION}   exceptions: {hub_url}/v1/exceptions\n"
        f"  handheld:   http://{HOST}:{handheld_port}/  (staff demo, PIN {DEMO_PIN})\n"
        f"  agent:      python -m agent status --config {config}\n"
        f"  scanner:    {scanner_port} (receive mode); POS drop folder: {pos_drop}\n"
        f"  reader credential: {reader_token} (also in {work / 'reader.token'}); Ctrl-C stops the demo.\n"
        f"  The line below changes only when the counts do.",
        short,
    )
    console.banner()
    feeder = asyncio.create_task(_scan_delivery(scanner_master))
    (pos_drop / "sales-today.csv").write_text(POS_EXPORT.format(day=time.strftime("%Y-%m-%d")))
    agent_exit = asyncio.create_task(agent.wait())
    stopping = asyncio.create_task(stop.wait())
    status = 0
    try:
        async with await open_store(str(db)) as reader:
            deadline = loop.time() + args.duration if args.duration > 0 else None
            while not stop.is_set():
                rows = await reader.counts(location=LOCATION)
                summary = "  ".join(f"{r.sku} {r.on_hand}" for r in rows) or "(waiting for the first sync)"
                console.status(f"{LOCATION} on hand: {summary}")
                timeout = REFRESH_S if deadline is None else max(0.0, min(REFRESH_S, deadline - loop.time()))
                await asyncio.wait({agent_exit, stopping, hub_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if agent_exit.done() and not stop.is_set():
                    console.say(
                        f"The demo's store agent (pid {agent.pid}) {_ended(agent.returncode)}, so the demo stops; "
                        f"anything it said is above, and its files are in {work}."
                    )
                    status = 1
                    break
                if hub_task.done() and not stop.is_set():
                    failure = hub_task.exception()
                    console.say(f"The demo's hub stopped ({failure or 'it ended'}), so the demo stops; its files are in {work}.")
                    status = 1
                    break
                if deadline is not None and loop.time() >= deadline:
                    break
    finally:
        stop.set()
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
        await agent_exit
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError, ServeError):
            await hub_task
        os.close(scanner_master)
        os.close(scanner_slave)
    if status == 0:
        console.say(f"demo stopped; its files are in {work}")
    return status


def _ended(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


async def _wait_listening(port: int, hub_task: asyncio.Task[None]) -> None:
    """Until the hub accepts connections on ``port``; the hub's own error if it stops first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HUB_START_TIMEOUT_S
    while loop.time() < deadline:
        if hub_task.done():
            await hub_task  # raises the hub's ServeError
            raise ServeError("the hub ended before it listened")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise ServeError(f"the hub did not listen on {HOST}:{port} within {HUB_START_TIMEOUT_S:g} s")


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
    try:
        return asyncio.run(run_demo(build_parser().parse_args(argv)))
    except DemoError as err:
        print(f"shelfsync demo: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
