"""``shelfsync-hub``: serve the hub, and manage agent, reader and admin credentials.

    shelfsync-hub serve --db PATH [--host 127.0.0.1] [--port 8470] [--max-body-bytes N] [--config FILE.toml]
    shelfsync-hub agent add --db PATH --location CODE [--location CODE2 …]
    shelfsync-hub agent add --db PATH --role reader|admin
    shelfsync-hub agent revoke --db PATH AGENT_ID
    shelfsync-hub agent list --db PATH

Every failure is one sentence on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from hub.auth import ROLE_AGENT, ROLE_READER
from hub.config import DEFAULT_HOST, DEFAULT_PORT, HubSettings, load_settings, log_level_number
from hub.resolver import is_location
from hub.server import serve
from hub.storage import open_store
from hub.storage.base import ROLES, AgentStatus, HubError, HubStore
from hub.views import iso_ms

PROG = "shelfsync-hub"
EXIT_OK = 0
EXIT_ERROR = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CliError(HubError):
    """A command-line mistake; the message says how to fix it."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db", metavar="PATH", help="the hub database: a SQLite file path (created if missing) or a URL"
    )
    common.add_argument("--config", metavar="FILE.toml", help="read settings from the [hub] table of this TOML file")

    parser = argparse.ArgumentParser(
        prog=PROG, description="The shelfsync hub: one central stock ledger for every store."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    srv = commands.add_parser("serve", parents=[common], help="serve the hub's HTTP API until SIGTERM or SIGINT")
    srv.add_argument("--host", help=f"address to listen on (default {DEFAULT_HOST})")
    srv.add_argument("--port", type=int, help=f"TCP port to listen on; 0 picks a free one (default {DEFAULT_PORT})")
    srv.add_argument("--max-body-bytes", type=int, metavar="N", help="largest request body accepted (default 8 MiB)")
    srv.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="how much to log (default INFO)",
    )

    agent = commands.add_parser("agent", help="manage credentials of agents, readers and admins")
    agent_commands = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    add = agent_commands.add_parser("add", parents=[common], help="create a credential and print it once")
    add.add_argument(
        "--location",
        action="append",
        default=[],
        metavar="CODE",
        help="a location the credential may write (repeat for several); agents need at least one",
    )
    add.add_argument(
        "--role",
        choices=ROLES,
        default=ROLE_AGENT,
        help="agent (writes its locations), reader (reads everything) or admin (also changes settings; "
        "writes the locations it is given, if any) (default agent)",
    )
    revoke = agent_commands.add_parser("revoke", parents=[common], help="revoke a credential at once")
    revoke.add_argument("agent_id", metavar="AGENT_ID")
    agent_commands.add_parser("list", parents=[common], help="list agents with their last sync and marks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        settings = load_settings(args.config, db=args.db)
        logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
        return asyncio.run(_agent_command(args, settings, sys.stdout))
    except (HubError, OSError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_ERROR


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(
        args.config,
        db=args.db,
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        log_level=args.log_level,
    )
    logging.basicConfig(level=log_level_number(settings), format=LOG_FORMAT, stream=sys.stderr)
    asyncio.run(serve(settings))
    return EXIT_OK


async def _agent_command(args: argparse.Namespace, settings: HubSettings, out: TextIO) -> int:
    locations = _check_locations(args.role, args.location) if args.agent_command == "add" else []
    async with open_store(settings.db) as store:
        if args.agent_command == "add":
            await _agent_add(store, args.role, locations, out)
        elif args.agent_command == "revoke":
            if not await store.revoke_agent(args.agent_id):
                raise CliError(f"no active credential {args.agent_id} is known to this hub; see: {PROG} agent list")
            out.write(f"revoked {args.agent_id}: its credential no longer works.\n")
        else:
            out.write(format_agents(await store.agent_status()))
    return EXIT_OK


async def _agent_add(store: HubStore, role: str, locations: list[str], out: TextIO) -> None:
    agent_id, token = await store.add_agent(locations, role=role)
    where = f"locations: {', '.join(locations)}\n" if locations else ""
    keep = "put it in the agent's configuration now" if role == ROLE_AGENT else "store it safely now"
    out.write(
        f"agent_id: {agent_id}\nrole: {role}\n{where}credential: {token}\n"
        f"The hub keeps only a hash of this credential, so this is the only time it is shown: {keep}.\n"
    )


def _check_locations(role: str, locations: list[str]) -> list[str]:
    if role == ROLE_AGENT and not locations:
        raise CliError("an agent needs at least one --location CODE it may write")
    if role == ROLE_READER and locations:
        raise CliError("a reader reads every location and writes none; leave out --location")
    for code in locations:
        if not is_location(code):
            raise CliError(
                f"{code!r} is not a location code (letters, digits, '.', '_' and '-', at most 32 characters)"
            )
    return list(dict.fromkeys(locations))


def format_agents(rows: Sequence[AgentStatus]) -> str:
    if not rows:
        return f"no agents yet; add one with: {PROG} agent add --db PATH --location CODE\n"
    header = ("AGENT", "ROLE", "LOCATIONS", "LAST SYNC (UTC)", "MARKS (epoch:hwm)", "CLOCK SKEW")
    table = [header] + [
        (
            r.agent_id,
            f"{r.role} (revoked)" if r.revoked else r.role,
            ",".join(r.locations) or "-",
            iso_ms(r.last_sync_ms) or "never",
            " ".join(f"{epoch}:{hwm}" for epoch, hwm in sorted(r.hwm.items())) or "-",
            "-" if r.clock_skew_ms is None else f"{r.clock_skew_ms} ms",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n" for row in table)
