"""``shelfsync-hub``: serve the hub, manage agent, reader and admin credentials, back the database up.

    shelfsync-hub serve --db PATH [--host 127.0.0.1] [--port 8470] [--max-body-bytes N] [--config FILE.toml]
    shelfsync-hub init --db PATH
    shelfsync-hub agent add --db PATH --location CODE [--location CODE2 …]
    shelfsync-hub agent add --db PATH --location CODE --id AGENT_ID [--write FILE] [--hub-url URL] [--ca-file PEM]
    shelfsync-hub agent add --db PATH --role reader|admin
    shelfsync-hub agent revoke --db PATH AGENT_ID
    shelfsync-hub agent list --db PATH
    shelfsync-hub backup --db PATH --to FILE
    shelfsync-hub catalog import FILE.csv (--hub URL [--token-file FILE] | --db PATH) [--refused PATH] [--all-or-nothing]

Settings come from the config file (``--config``, ``$SHELFSYNC_HUB_CONFIG`` or
/etc/shelfsync/hub.toml), the ``SHELFSYNC_HUB_*`` environment and the options,
each winning over the one before (hub/config.py). Every failure is one
sentence on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import getpass
import logging
import os
import shlex
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hub import catalog
from hub.activation import inherited_sockets
from hub.auth import ROLE_AGENT, ROLE_READER
from hub.backup import backup
from hub.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    HubSettings,
    config_path,
    load_settings,
    log_level_number,
    url_problem,
)
from hub.resolver import is_location
from hub.server import DatabaseMoved, run_serving, serve
from hub.storage import open_store, sqlite_file
from hub.storage.base import ROLES, AgentDisk, AgentStatus, DatabaseUnreachable, HubError, InvalidInput
from hub.storage.credentials import check_agent_id
from hub.storage.held import WRONG_CLOCKS, released_sentence
from hub.storage.interfaces import CredentialStore
from hub.storage.sqlite.store import special_file
from hub.views import iso_ms
from protocol.entry import (  # shelfsync-hub --version answers before this module loads (hub/entry.py)
    option_before_command,
    package_version,
)
from protocol.values import TextField

PROG = "shelfsync-hub"
EXIT_OK = 0
EXIT_RESTART = 1  # the hub stopped for a reason a restart fixes (DatabaseMoved, DatabaseUnreachable)
EXIT_ERROR = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Who ran a ``quarantine release`` (``--by``, else the OS user): no credential runs it, so its record names the person
OPERATOR_NAME = TextField("name", 64)
CONFIG_FILE_MODE = 0o600  # an agent configuration holds its token
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class CliError(HubError):
    """A command-line mistake; the message says how to fix it."""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        metavar="PATH",
        help="the hub database: a SQLite file path (created if missing by serve and init only) or a URL; a URL with a "
        "password is better "
        "given by SHELFSYNC_HUB_DB or database_url_file, which no other user of the machine can read",
    )
    common.add_argument(
        "--config",
        metavar="FILE.toml",
        help="read settings from the [hub] table of this TOML file (default: $SHELFSYNC_HUB_CONFIG, "
        "else /etc/shelfsync/hub.toml when it exists)",
    )

    parser = argparse.ArgumentParser(
        prog=PROG, description="The shelfsync hub: one central stock ledger for every store."
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
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

    commands.add_parser(
        "init",
        parents=[common],
        help="create the hub database (or bring it to this version's schema) and exit, as serve does at its start",
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
    add.add_argument(
        "--id",
        metavar="AGENT_ID",
        help="the credential's agent id (letters, digits, '.', '_', ':' and '-', at most 64), e.g. the store's "
        "name; with it, an agent credential is printed as a ready agent configuration (default: a new random id)",
    )
    add.add_argument(
        "--write",
        metavar="FILE",
        help="write the ready agent configuration to this new file (mode 0600) instead of printing it",
    )
    add.add_argument(
        "--hub-url",
        metavar="URL",
        help="the hub's address as the agent reaches it, for the agent configuration (default: public_url, else "
        "from host, port and TLS)",
    )
    add.add_argument(
        "--ca-file",
        metavar="PEM",
        help="for the agent configuration: the CA certificate(s) the agent checks the hub's TLS certificate with",
    )
    revoke = agent_commands.add_parser("revoke", parents=[common], help="revoke a credential at once")
    revoke.add_argument("agent_id", metavar="AGENT_ID")
    bind = agent_commands.add_parser(
        "bind",
        parents=[common],
        help="bind a credential to other locations in place, e.g. after its store moved; the running hub honours it "
        "at the next request",
    )
    bind.add_argument("agent_id", metavar="AGENT_ID")
    bind.add_argument(
        "--location",
        action="append",
        default=[],
        metavar="CODE",
        help="a location the credential may write from now on (repeat for several); these replace its locations",
    )
    agent_commands.add_parser("list", parents=[common], help="list agents with their last sync and marks")

    bak = commands.add_parser(
        "backup",
        parents=[common],
        help="copy the hub database while the hub runs (SQLite file, or a pg_dump)",
        description="Copy the hub database while the hub keeps serving: SQLite's online backup (checked, synced, "
        "then renamed into place) or pg_dump --format=custom for PostgreSQL. Run it as the service's user; "
        "restoring is in docs/operations.md, Backup and restore.",
    )
    bak.add_argument(
        "--to",
        required=True,
        metavar="FILE",
        help="where the copy goes: a file (replaced only once the new copy is whole) or a directory "
        "(the copy is named hub-<UTC time>.db, or .dump for PostgreSQL)",
    )
    held = commands.add_parser("quarantine", help="the movements held for a clock outside the clock window")
    held_commands = held.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    release = held_commands.add_parser(
        "release",
        parents=[common],
        help="release every movement held because of the hub's own clock: each whose time is inside the clock "
        "window by the corrected clock is applied at its own time; the others stay for one by one. With "
        "--wrong-clock: those the hub could not attribute to its own clock (a lone store, stores that disagree)",
    )
    release.add_argument(
        "--wrong-clock",
        choices=WRONG_CLOCKS,
        help="release the movements held when the hub could not tell whose clock was wrong, as you found by a time "
        "server: hub (each at its own time) or store (each at the hub's time of receipt)",
    )
    release.add_argument(
        "--agent",
        metavar="AGENT_ID",
        help="with --wrong-clock: only this store's (its agent id; see: agent list); without it, every store's",
    )
    release.add_argument(
        "--override-vouched",
        action="store_true",
        help="with --wrong-clock hub --agent: release that store's movements at their own time even those held "
        "while the other stores put the hub's clock right (refused without it); say so only when a time server "
        "showed the hub's clock was wrong then",
    )
    release.add_argument(
        "--by",
        metavar="NAME",
        help="who releases them, as the quarantine and the log record it (with \"(shelfsync-hub)\" after it); "
        "default: the OS user running the command",
    )
    catalog.add_command(commands, common)  # catalog import FILE (hub/catalog.py)
    return parser


class Stopped(KeyboardInterrupt):
    """A one-shot command stopped by a signal: unwound like Ctrl+C, so what it half made is removed."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _stop_on_signals() -> None:
    """SIGTERM (systemctl stop, a unit's timeout) and SIGHUP (a closed terminal) end a one-shot command as
    Ctrl+C does, instead of killing it where it stands: a backup's half-made copy is removed, not left behind."""

    def stop(signum: int, _frame: object) -> None:
        raise Stopped(signal.Signals(signum).name)

    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if (misplaced := option_before_command(sys.argv[1:] if argv is None else argv, parser.prog)) is not None:
        parser.error(misplaced)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        _stop_on_signals()
        if args.command == "catalog":
            logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
            return catalog.import_command(
                args, lambda: _existing_db(_settings(args, db=args.db)), sys.stdout, sys.stderr
            )
        settings = _settings(args, db=args.db)
        # init is the migration run by hand: it says what it does and how far it is, as serve does
        level = logging.INFO if args.command == "init" else logging.WARNING
        logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
        if args.command == "backup":
            return _backup(settings, args.to, sys.stdout, sys.stderr)
        if args.command == "init":
            return asyncio.run(_init(settings, sys.stdout))
        if args.command == "quarantine":
            if args.override_vouched and (args.wrong_clock != "hub" or args.agent is None):
                parser.error("--override-vouched goes only with --wrong-clock hub and --agent: one store's, as you "
                             "found the hub's clock wrong")  # fmt: skip
            if args.wrong_clock is None and args.agent is not None:
                parser.error("--agent goes with --wrong-clock: say whose clock was wrong (hub or store)")
            operator = operator_of(args.by)  # who the release is recorded as: before anything is opened
            if args.wrong_clock is not None:
                return asyncio.run(_release_held(settings, operator, args.wrong_clock, args.agent, sys.stdout,
                                                 override_vouched=args.override_vouched))  # fmt: skip
            return asyncio.run(_release_hub_clock(settings, operator, sys.stdout))
        return asyncio.run(_agent_command(args, settings, sys.stdout))
    except (DatabaseMoved, DatabaseUnreachable) as err:  # not a configuration error: the service starts it again
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_RESTART
    except HubError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:
        print(f"{PROG}: {os_error_sentence(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as err:
        print(f"{PROG}: stopped by {err.name if isinstance(err, Stopped) else 'SIGINT'}", file=sys.stderr)
        return EXIT_ERROR


def os_error_sentence(err: OSError) -> str:
    """An OS error as one sentence naming its file; a permission refused says whose command this is."""
    where = f" on {err.filename}" if err.filename is not None else ""
    if err.errno in (errno.EACCES, errno.EPERM):
        return (
            f"permission denied{where}; run {PROG} as the user the hub runs as, who owns its files "
            f"(sudo -u shelfsync {PROG} …)"
        )
    return f"{err.strerror}{where}" if err.strerror else str(err)


def _settings(args: argparse.Namespace, **options: object) -> HubSettings:
    """The config file, then the environment, then the command line's options."""
    return load_settings(config_path(args.config, os.environ), environ=os.environ, **options)


def _serve(args: argparse.Namespace) -> int:
    settings = _settings(
        args,
        db=args.db,
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        log_level=args.log_level,
    )
    logging.basicConfig(level=log_level_number(settings), format=LOG_FORMAT, stream=sys.stderr)
    _refuse_empty_file(settings)
    sockets = inherited_sockets()  # systemd's socket activation (packaging/systemd/shelfsync-hub.socket)
    # uvloop's loop where installed, unless set otherwise
    run_serving(serve(settings, sockets=sockets), settings.event_loop)
    return EXIT_OK


def _backup(settings: HubSettings, to: str, out: TextIO, err: TextIO) -> int:
    def progress(line: str) -> None:
        err.write(f"{PROG} backup: {line}\n")
        err.flush()

    result = backup(settings.db, to, progress)  # a BackupError is one sentence, like every HubError
    out.write(result.describe() + "\n")
    return EXIT_OK


def _existing_db(settings: HubSettings) -> HubSettings:
    """Refuse a SQLite database file that does not exist: only ``serve`` and ``init`` create one.

    Opening a mistyped path would create an empty hub database there, and ``agent add`` would then hand out a
    credential no serving hub knows (as ``backup`` does, the path is checked, never created)."""
    path = sqlite_file(settings.db) if settings.db else None
    if path is not None and not Path(path).is_file():
        raise CliError(
            f"there is no hub database at {path}; give the file the hub serves (--db or its config's db), "
            f"or create a new one with: {PROG} init --db {path}"
        )
    _refuse_empty_file(settings)
    return settings


def _refuse_empty_file(settings: HubSettings) -> None:
    """Refuse a SQLite database file of 0 bytes, which SQLite would make a new, empty hub of.

    A restore that copied nothing (a full disk, a failed download) leaves one: served, it is a hub without the
    credentials or the ledger, refusing every agent. ``init`` alone makes a hub in it, when that is the intent."""
    path = sqlite_file(settings.db) if settings.db else None
    if path is None:
        return
    try:
        mode = Path(path).stat().st_mode
        empty = Path(path).stat().st_size == 0 and not Path(f"{path}-wal").exists()
    except FileNotFoundError:
        return  # serve creates it
    special = special_file(path, mode)
    if special is not None:
        raise CliError(special)
    if empty:
        raise CliError(
            f"the hub database {path} is an empty file (0 bytes), not a hub database; if a restore put it there, "
            f"copy the backup again; to begin a new hub in it, run: {PROG} init --db {path}"
        )


async def _init(settings: HubSettings, out: TextIO) -> int:
    path = sqlite_file(settings.db)
    existed = path is None or Path(path).is_file()
    async with open_store(settings.db) as store:  # opening creates and migrates, as serve does at its start
        health = await store.health()
    where = health.get("path") or health.get("database")  # a PostgreSQL URL without its password
    done = "is ready" if existed else "was created"
    out.write(f"the hub database {where} {done} (schema version {health['schema_version']}).\n")
    return EXIT_OK


async def _agent_command(args: argparse.Namespace, settings: HubSettings, out: TextIO) -> int:
    if args.agent_command in ("add", "bind"):
        locations = _check_locations(getattr(args, "role", ROLE_AGENT), args.location)
    else:
        locations = []
    plan = _config_plan(args, settings, locations) if args.agent_command == "add" else None
    _existing_db(settings)  # after the options' own checks: those say what to fix first
    async with open_store(settings.db) as store:
        if locations:
            await _check_location_cases(store, locations)
        if args.agent_command == "add" and plan is not None:
            await _agent_add_config(store, plan, out)
        elif args.agent_command == "add":
            await _agent_add(store, args.role, locations, out, args.id)
        elif args.agent_command == "bind":
            try:
                former = await store.bind_agent(args.agent_id, locations)
            except InvalidInput as err:
                raise CliError(f"{err}; see: {PROG} agent list") from None
            now = ", ".join(sorted(set(locations)))
            out.write(f"{args.agent_id} is now bound to {now} (was {', '.join(former) or 'no location'}).\n")
        elif args.agent_command == "revoke":
            if not await store.revoke_agent(args.agent_id):
                raise CliError(f"no active credential {args.agent_id} is known to this hub; see: {PROG} agent list")
            out.write(f"revoked {args.agent_id}: its credential no longer works.\n")
        else:
            out.write(format_agents(await store.agent_status()))
    return EXIT_OK


def operator_of(by: str | None) -> str:
    """Who a ``quarantine release`` is recorded (``resolved_by``, the released events' ``released_by``) and logged as,
    where the HTTP route names the admin's credential: the person (``--by NAME``, else the OS user running the
    command), and that it was this command."""
    what = "--by"
    if by is None:
        what = "the login name of the OS user running the command"
        try:
            by = getpass.getuser()
        except (OSError, KeyError) as err:  # no login name in the environment, and no account entry for the user
            raise CliError(f"cannot tell who runs this command ({err}); name yourself with --by NAME") from None
    problem = OPERATOR_NAME.problem(by)
    if problem is not None:
        raise CliError(f"{what} {problem}; a name is {OPERATOR_NAME.rule()} (name yourself with --by NAME)")
    return f"{by} ({PROG})"


async def _release_hub_clock(settings: HubSettings, operator: str, out: TextIO) -> int:
    _existing_db(settings)
    async with open_store(settings.db) as store:
        released, left = await store.release_hub_clock(settings.clock_window_s * 1000, operator)
    if released + left == 0:
        out.write("Nothing is held because of the hub's own clock.\n")
    else:
        out.write(
            f"Released {released:,} movement(s) held because of the hub's own clock, each at its own time; "
            f"{left:,} stay held for an operator, outside the clock window even by the corrected clock "
            f"(GET /v1/quarantine).\n"
        )
    return EXIT_OK


async def _release_held(
    settings: HubSettings, operator: str, wrong_clock: str, agent_id: str | None, out: TextIO, *,
    override_vouched: bool = False,
) -> int:
    _existing_db(settings)
    async with open_store(settings.db) as store:
        released, left = await store.release_held(settings.clock_window_s * 1000, operator, wrong_clock,
                                                  agent_id, override_vouched=override_vouched)  # fmt: skip
    out.write(released_sentence(released, left, wrong_clock, agent_id) + "\n")
    return EXIT_OK


async def _agent_add(store: CredentialStore, role: str, locations: list[str], out: TextIO, wanted: str | None) -> None:
    if wanted is not None:
        await _check_id_free(store, wanted)
    agent_id, token = await store.add_agent(locations, role=role, agent_id=wanted)
    where = f"locations: {', '.join(locations)}\n" if locations else ""
    keep = "put it in the agent's configuration now" if role == ROLE_AGENT else "store it safely now"
    out.write(
        f"agent_id: {agent_id}\nrole: {role}\n{where}credential: {token}\n"
        f"The hub keeps only a hash of this credential, so this is the only time it is shown: {keep}.\n"
    )


async def _check_location_cases(store: CredentialStore, locations: Sequence[str]) -> None:
    """Refuse a location that differs from one a credential is bound to only in case: codes are exact, so ``s1``
    beside ``S1`` is another location, with stock of its own, and the store's movements would be booked there."""
    known = {loc for row in await store.agent_status() for loc in row.locations}
    by_case = {loc.lower(): loc for loc in sorted(known)}
    for code in locations:
        alike = by_case.get(code.lower())
        if code not in known and alike is not None:
            raise CliError(
                f"the location {code} differs from the location {alike} only in case; location codes are exact, so "
                f"it would be another location with stock of its own: give {alike}, or see: {PROG} agent list"
            )


@dataclass(frozen=True, slots=True)
class ConfigPlan:
    """What ``agent add`` writes into a ready agent configuration, checked before the credential exists."""

    agent_id: str  # "": a new random one
    locations: tuple[str, ...]
    hub_url: str
    ca_file: Path | None
    write: Path | None  # None: print it


def _config_plan(args: argparse.Namespace, settings: HubSettings, locations: list[str]) -> ConfigPlan | None:
    """None: print the credential as before (no --id, --write, --hub-url or --ca-file, or not an agent)."""
    if args.id is not None:
        try:
            check_agent_id(args.id)
        except HubError as err:
            raise CliError(f"--id {err}") from err
    wants = [opt for opt, value in (("--write", args.write), ("--hub-url", args.hub_url), ("--ca-file", args.ca_file))
             if value is not None]  # fmt: skip
    if args.role != ROLE_AGENT:
        if wants:
            raise CliError(
                f"{wants[0]} makes an agent's configuration; a {args.role} credential has none: leave it out"
            )
        return None
    if args.id is None and not wants:
        return None
    hub_url = args.hub_url or settings.public_url or _derived_url(settings)
    problem = url_problem(hub_url)
    if problem:
        raise CliError(f"the hub URL for the agent {problem}; pass --hub-url https://hub.example:8470")
    ca_file = None
    if args.ca_file is not None:
        ca_file = Path(args.ca_file).absolute()
        if not ca_file.is_file():
            raise CliError(
                f"--ca-file {ca_file} is not a file; give the PEM file of the CA that signed the hub's certificate"
            )
    write = None if args.write is None else Path(args.write).absolute()
    return ConfigPlan(args.id or "", tuple(locations), hub_url, ca_file, write)


def _derived_url(settings: HubSettings) -> str:
    """The hub's own address from host, port and TLS; a wildcard host becomes this machine's name."""
    if settings.port == 0:
        raise CliError(
            "the hub's port is 0 (a free one picked at start), so its address is not known; pass --hub-url URL"
        )
    host = settings.host
    if host in WILDCARD_HOSTS:
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.tls_cert else "http"
    return f"{scheme}://{host}:{settings.port}"


async def _check_id_free(store: CredentialStore, agent_id: str) -> None:
    """Refuse an id taken already, or one that differs from a taken id only in case: ``Store-1`` beside
    ``store-1`` reads as one store in every list, log and configuration, and an agent holding one of the two
    tokens with the other id is refused."""
    if await store.agent_status(agent_id):
        raise CliError(
            f"a credential with the agent id {agent_id} exists already (revoked ones count); choose another id, "
            f"or see: {PROG} agent list"
        )
    alike = next((r.agent_id for r in await store.agent_status() if r.agent_id.lower() == agent_id.lower()), None)
    if alike is not None:
        raise CliError(
            f"the agent id {agent_id} differs from the agent id {alike} only in case (revoked ones count), which "
            f"reads as the same store; choose another id, or see: {PROG} agent list"
        )


async def _agent_add_config(store: CredentialStore, plan: ConfigPlan, out: TextIO) -> None:
    """Create an agent credential and hand it over as a ready agent configuration (printed, or written 0600)."""
    if plan.agent_id:
        await _check_id_free(store, plan.agent_id)
    fd = None
    if plan.write is not None:  # claimed before the credential exists, so a bad path costs no credential
        try:
            fd = os.open(plan.write, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CONFIG_FILE_MODE)
        except FileExistsError:
            raise CliError(
                f"{plan.write} exists already; an agent configuration holds a token and is never overwritten: "
                "remove the file or choose another path"
            ) from None
        except OSError as err:
            raise CliError(f"cannot create {plan.write}: {err.strerror or err}") from err
    try:
        agent_id, token = await store.add_agent(plan.locations, role=ROLE_AGENT, agent_id=plan.agent_id or None)
        text = agent_config_toml(agent_id, plan.locations, token, plan.hub_url, plan.ca_file)
        if fd is None:
            out.write(text)
            return
        os.fchmod(fd, CONFIG_FILE_MODE)  # whatever the umask made of it
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    except BaseException:
        if fd is not None and plan.write is not None:
            os.close(fd)
            fd = None
            plan.write.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)
    out.write(
        f"wrote the configuration of agent {agent_id} (location {plan.locations[0]}, hub {plan.hub_url}) to "
        f"{plan.write}, mode 0600; it holds the only copy of the agent's token. Start the agent with: "
        f"shelfsync-agent run --config {shlex.quote(str(plan.write))}\n"  # quoted: a path with spaces pasted as it is
    )


def agent_config_toml(agent_id: str, locations: Sequence[str], token: str, hub_url: str, ca_file: Path | None) -> str:
    """A ready ``[agent]`` section (docs/agent.md); data_dir defaults to the file's own folder."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lines = [
        f"# shelfsync agent configuration for agent {agent_id}, made by `{PROG} agent add` at {when}.",
        "# The hub keeps only a hash of the token below: this is its only copy. Keep the file private (mode 0600).",
        "# Start the agent with: shelfsync-agent run --config <this file>. docs/agent.md lists every other key.",
    ]
    if len(locations) > 1:
        lines.append(f"# The credential may also write {', '.join(locations[1:])}; an agent records for one location.")
    lines += [
        "[agent]",
        f"id = {toml_string(agent_id)}",
        f"location = {toml_string(locations[0])}",
        f"hub_url = {toml_string(hub_url)}",
        f"token = {toml_string(token)}",
    ]
    if ca_file is not None:
        lines.append(f"ca_file = {toml_string(str(ca_file))}")
    return "\n".join(lines) + "\n"


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string: quotes, backslashes and control characters escaped."""
    escaped = "".join(
        f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else "\\" + c if c in '"\\' else c for c in value
    )
    return f'"{escaped}"'


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


def _disk_text(d: AgentDisk | None) -> str:
    """The store PC's disk as its agent last reported it (GET /v1/agents' disk): "-" when it never did."""
    if d is None:
        return "-"
    if d.state == "ok":
        return "ok"
    what = "FULL, scans refused" if d.state == "full" else "FULL, reserve in use"
    return f"{what} since {iso_ms(d.since_ms)}"


def format_agents(rows: Sequence[AgentStatus]) -> str:
    if not rows:
        return f"no agents yet; add one with: {PROG} agent add --db PATH --location CODE\n"
    header = ("AGENT", "ROLE", "LOCATIONS", "LAST SYNC (UTC)", "MARKS (epoch:hwm)", "CLOCK SKEW", "DISK")
    table = [header] + [
        (
            r.agent_id,
            f"{r.role} (revoked)" if r.revoked else r.role,
            ",".join(r.locations) or "-",
            iso_ms(r.last_sync_ms) or "never",
            " ".join(f"{epoch}:{hwm}" for epoch, hwm in sorted(r.hwm.items())) or "-",
            "-" if r.clock_skew_ms is None else f"{r.clock_skew_ms} ms",
            _disk_text(r.disk),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n" for row in table)
