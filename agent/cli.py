"""``shelfsync-agent``: run the agent, show its status, record one movement by hand, send a saved outbox.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error (an
outbox of another agent id included); ``run`` 3 when another agent already
runs on the same outbox, 1 when its outbox was replaced by another file while it
ran (its own was saved beside it; the restart uses the new one); ``status`` 3
when no agent is running on the outbox,
4 when the hub does not answer, 5 when the hub refused this agent's
credentials (docs/agent.md).

The configuration is ``--config``, else ``$SHELFSYNC_AGENT_CONFIG``, else this
system's default file, with ``SHELFSYNC_AGENT_*`` variables over it
(``agent.config_sources``). Runs on Windows too: where the event loop cannot
watch signals, Ctrl+C and Ctrl+Break (what a service manager sends) stop the
agent, and there is no SIGHUP reload (restart the service instead).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import aiohttp

from agent import huberrors
from agent.catalog import AgentCatalog
from agent.config import AgentConfig, AgentSection, load_config
from agent.config_sources import CONFIG_ENV, LOG_LEVEL_ENV, default_config_path
from agent.discovery import HubFinder
from agent.entry import held_reload
from agent.errors import AgentError, ConfigError, InvalidMovement, OutboxError, OutboxOfAnotherAgent
from agent.hub_loop import (
    FOLLOW_REDIRECTS,
    AnswerTooLarge,
    broken,
    hub_connector,
    not_a_hubs_json,
    not_found,
    not_the_hubs,
    read_answer,
    redirected,
    use_ca_file,
    wrong_address,
)
from agent.localapi.runtime import start_staff_services
from agent.lock import (
    AgentAlreadyRunning,
    agent_running,
    hold_agent_lock,
    hold_data_dir_lock,
    refuse_new_outbox_beside_agent,
)
from agent.outbox import FILE_CHECK_S, NEVER_RESENT, Movement, Outbox, OutboxStats
from agent.pos import PosFolderState, PosFolderWatcher, PosImporter, PosStore, add_import_parser, import_command
from agent.redact import install_log_redaction, redact_url
from agent.replicator import Replicator
from agent.reports import ReportSender
from agent.reserve import Reserve, reserve_state
from agent.saved import TAKEN_SUFFIX, NotSent, SavedCopies, saved_copies, send_file, waiting_in
from agent.scan_journal import JOURNAL_FILENAME, ReaderState, ScanJournal, read_reader_states
from agent.scanning import ModeRouter, ScanRouter, ScanService
from agent.sessions.router import SessionRouter
from agent.simulate import Simulator
from protocol import Kind, book_out_ref_problem, event_id_hex
from protocol.entry import option_before_command, package_version
from protocol.routes import HEALTH_PATH, HUB_ID_HEADER
from protocol.runtime import gc_for_serving
from protocol.values import shown

log = logging.getLogger("agent")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ALREADY_RUNNING = 3  # run: another agent holds this outbox
EXIT_NOT_RUNNING = 3  # status: no agent runs on this outbox
EXIT_HUB_UNREACHABLE = 4  # status: the hub does not answer /healthz
PROBE_ANSWER_MAX_BYTES = 64 << 10  # the hub's /healthz answer is a few dozen bytes of JSON
HEALTH_FIELDS = ("status", "db")  # in every 200 of the hub's GET /healthz (agent.hub_loop.not_a_hubs_json)
JSON = "application/json"
EXIT_CREDENTIALS_REFUSED = 5  # status: the hub refused this agent's token at the last sync
PROBE_TIMEOUT_S = 3.0
CLOCK_WRONG_MS = 60_000  # status calls this machine's clock wrong past this skew from the hub's
CATALOG_CACHE_FILENAME = "catalog-cache.json"
PROG = "shelfsync-agent"
LOG_LEVELS = ("debug", "info", "warning", "error")
SEND_WAIT_S = 300.0  # outbox send: how long to wait for the hub to hold every movement before giving up
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGBREAK")  # SIGBREAK: Ctrl+Break on Windows
RELOAD_SIGNALS = ("SIGHUP",)  # none on Windows


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help=f"the agent's TOML configuration file (default: ${CONFIG_ENV}, else {default_config_path()})",
    )
    common.add_argument(
        "--log-level", choices=LOG_LEVELS, help=f"how much to log (default: ${LOG_LEVEL_ENV}, else info)"
    )
    parser = argparse.ArgumentParser(prog=PROG, description="The shelfsync store agent.")
    parser.add_argument("--version", action="version", version=f"{PROG} {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "run", parents=[common], help="run the replicator (and the simulator, if configured) until SIGTERM/SIGINT"
    )
    status = commands.add_parser("status", parents=[common], help="show backlog, last sync and whether the hub answers")
    status.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    record = commands.add_parser("record", parents=[common], help="record one movement by hand and print its event id")
    record.add_argument("--sku", required=True)
    record.add_argument("--kind", required=True, choices=[k.value for k in Kind])
    record.add_argument(
        "--qty", required=True, type=int, help="signed delta (a sale is negative); for count, the quantity counted"
    )
    record.add_argument("--ref", help="document reference (receipt, transfer …); required for transfers")
    record.add_argument("--reason", help="reason code (damaged, theft, found …)")
    record.add_argument("--location", help="default: the agent's location")
    record.add_argument("--source", default="api:cli", help="what produced it (default: api:cli)")
    add_import_parser(commands, parents=[common])
    outbox = commands.add_parser("outbox", help="work with outbox files (send a saved copy to the hub)")
    actions = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    send = actions.add_parser(
        "send",
        parents=[common],
        help="send the movements of another outbox file of this agent (a saved outbox.sqlite3.replaced-…) to the hub",
    )
    send.add_argument("file", metavar="FILE", help="the outbox file to send")
    send.add_argument(
        "--wait-s",
        type=float,
        default=SEND_WAIT_S,
        help=f"give up when the hub does not hold every movement after this long (default {SEND_WAIT_S:g})",
    )
    commands.add_parser(
        "rebind",
        parents=[common],
        help="let the outbox send as the configured agent id (the store's credential is another agent's now)",
    )
    resend = commands.add_parser(
        "resend",
        parents=[common],
        help="queue movements the hub refused (set aside) again, once what made it refuse them is put right"
        " (run it while the agent is stopped)",
    )
    which = resend.add_mutually_exclusive_group()
    which.add_argument(
        "--code",
        action="append",
        metavar="CODE",
        help="those set aside with this code (forbidden_location …); repeatable",
    )
    which.add_argument("--seq", action="append", type=int, metavar="SEQ", help="the one at this seq; repeatable")
    which.add_argument("--all", action="store_true", help="every one whose code a resend can change")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if (misplaced := option_before_command(sys.argv[1:] if argv is None else argv, parser.prog)) is not None:
        parser.error(misplaced)
    args = parser.parse_args(argv)
    level = args.log_level or os.environ.get(LOG_LEVEL_ENV, "").strip().lower() or "info"
    if level not in LOG_LEVELS:
        print(f"{PROG}: {LOG_LEVEL_ENV} must be one of {', '.join(LOG_LEVELS)}, got {level!r}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "debug":  # its "3 changes detected" at every change of the drop folder: 400 lines for 3,000 exports
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
    install_log_redaction()
    try:
        config = load_config(args.config, environ=os.environ)
    except ConfigError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_USAGE
    install_log_redaction([config.agent.token] if config.agent.token else [])
    use_ca_file(config.agent.ca_file)
    command: Callable[[AgentConfig, argparse.Namespace], Coroutine[Any, Any, int]] = {
        "run": _run,
        "status": _status,
        "record": _record,
        "import": import_command,
        "rebind": _rebind,
        "resend": _resend,
        "outbox": _outbox_send,
    }[args.command]
    try:
        return asyncio.run(command(config, args))
    except OutboxOfAnotherAgent as err:
        print(f"{PROG}: {err.recovery(rebind_command(args.config))}", file=sys.stderr)
        return EXIT_USAGE
    except AgentAlreadyRunning as err:
        print(f"shelfsync-agent: {err}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    except (InvalidMovement, ConfigError) as err:
        print(f"shelfsync-agent: {err}", file=sys.stderr)
        return EXIT_USAGE
    except AgentError as err:
        print(f"shelfsync-agent: {err}", file=sys.stderr)
        return EXIT_FAILURE


def rebind_command(config_arg: str | None) -> str:
    """The ``rebind`` command line for the configuration this command was started with."""
    if config_arg is None:
        return f"{PROG} rebind"  # the same $SHELFSYNC_AGENT_CONFIG or default file finds the same configuration
    if os.name == "nt":
        quoted = f'"{config_arg}"' if any(c in config_arg for c in " \t&()^%") else config_arg
    else:
        quoted = shlex.quote(config_arg)
    return f"{PROG} rebind --config {quoted}"


def _open(config: AgentConfig, *, create: bool = True, owner: bool = False) -> Any:
    """``owner``: ``run``'s, the one process that copies the outbox's WAL back while it runs (see agent.db)."""
    a = config.agent
    return Outbox.open(
        a.outbox,
        agent_id=a.id,
        location=a.location if create else None,
        synchronous=a.synchronous,
        retention_s=a.retention_days * 86_400,
        create=create,
        owner=owner,
    )


def _replicator(config: AgentConfig, outbox: Outbox, *, feed: bool = True) -> Replicator | None:
    a, r = config.agent, config.replicator
    if a.hub_url is None or a.token is None:
        return None
    return Replicator(
        outbox,
        a.hub_url,
        a.token,
        batch_size=r.batch_size,
        tick_s=r.tick_s,
        retry_base_s=r.retry_base_s,
        retry_max_s=r.retry_max_s,
        timeout_s=r.timeout_s,
        auth_retry_s=r.auth_retry_s,
        heartbeat_s=r.heartbeat_s,
        answer_max_bytes=r.answer_max_bytes,
        feed=feed,  # the count cache follows the hub's change feed for this location (agent.feed)
    )


# --- run ---------------------------------------------------------------------
async def _run(config: AgentConfig, args: argparse.Namespace) -> int:
    """One agent per outbox, and per directory of its files: the locks are taken before anything is opened and
    held until the end."""
    with hold_agent_lock(config.agent.outbox), hold_data_dir_lock(config.agent.outbox):
        stop, reload = asyncio.Event(), asyncio.Event()
        with _signals(asyncio.get_running_loop(), stop, reload), gc_for_serving():  # protocol/runtime.py
            return await _run_locked(config, args, stop, reload)


@contextlib.contextmanager
def _signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event, reload: asyncio.Event) -> Iterator[None]:
    """SIGTERM, SIGINT (and Windows' SIGBREAK) set ``stop``; SIGHUP sets ``reload`` where it exists.

    Windows' event loops cannot watch signals (``add_signal_handler`` raises NotImplementedError): there a
    plain handler passes Ctrl+C and Ctrl+Break — what a service manager sends to stop a console program — on
    to the loop, and the previous handlers come back at the end.
    """
    watched: list[int] = []
    previous: dict[int, Any] = {}
    wanted = [(getattr(signal, name), stop) for name in STOP_SIGNALS if hasattr(signal, name)]
    wanted += [(getattr(signal, name), reload) for name in RELOAD_SIGNALS if hasattr(signal, name)]
    for sig, event in wanted:
        before = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, event.set)
            watched.append(sig)
        except (NotImplementedError, RuntimeError):
            signal.signal(sig, lambda *_, set_=event.set: loop.call_soon_threadsafe(set_))
        previous[sig] = before
    if not any(event is reload for _, event in wanted):
        log.debug("This system has no SIGHUP: restart the agent to reload its configuration.")
    elif held_reload():  # held since the process began (agent/entry.py): a reload, not an end
        log.info("A SIGHUP came while the agent started; its configuration is read again now.")
        reload.set()
    try:
        yield
    finally:
        for sig in watched:
            loop.remove_signal_handler(sig)  # back to SIG_DFL: the handler before comes back below
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


async def _run_locked(config: AgentConfig, args: argparse.Namespace, stop: asyncio.Event, reload: asyncio.Event) -> int:
    a = config.agent
    async with _open(config, owner=True) as outbox:
        log.info(
            "Agent %s for location %s started with outbox %s and hub %s.",
            a.id,
            a.location,
            a.outbox,
            redact_url(a.hub_url) if a.hub_url else "not configured (recording only, nothing is sent)",
        )
        if saved := saved_copies(Path(a.outbox)):
            log.warning(
                "%d saved copies of this agent's outbox lie beside it, kept when the outbox was replaced or written"
                " over while the agent ran: %s; the agent takes their movements the hub has not acknowledged into"
                " its outbox, and renames each %s%s<UTC time>.",
                len(saved), ", ".join(str(p) for p in saved), a.outbox.name, TAKEN_SUFFIX,
            )  # fmt: skip
        reserve = Reserve(Path(a.outbox), a.reserve_mib << 20) if a.reserve_mib else None
        keeping: asyncio.Task[None] | None = None
        if reserve is not None:  # made in the background: 8 MiB written and flushed need not delay the start
            outbox.reserve = reserve  # the session store's too (agent.localapi.runtime)
            keeping = asyncio.create_task(reserve.run(), name="disk reserve")
        moved = asyncio.Event()  # zeroconf found the hub at a new address
        finder = await _find_hub(config, moved)
        if finder is not None and finder.current is not None:
            config = _with_hub_url(config, finder.current.url)
        services = await _start_services(config, outbox)
        replicator = _replicator(config, outbox)
        simulation: asyncio.Task[int] | None = None
        if config.simulate is not None and config.simulate.enabled:
            simulation = asyncio.create_task(Simulator(outbox, config.simulate, location=a.location).run())
        watch = asyncio.create_task(_watch_outbox(outbox))
        copies = SavedCopies(outbox, keep_s=a.retention_days * 86_400)  # taken into the outbox (agent.saved)
        try:
            await copies.start()
            if replicator is not None:
                await replicator.start()
            while not stop.is_set() and not outbox.replaced.is_set():
                waits: list[asyncio.Future[Any]] = [
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(reload.wait()),
                    asyncio.ensure_future(moved.wait()),
                    asyncio.ensure_future(outbox.replaced.wait()),
                ]
                if simulation is not None and not simulation.done():
                    waits.append(simulation)
                if copies.task is not None and not copies.task.done():
                    waits.append(copies.task)
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits[:4]:
                    waiting.cancel()
                if simulation is not None and simulation.done() and (failure := simulation.exception()) is not None:
                    raise failure
                if copies.task is not None and copies.task.done() and (failure := copies.task.exception()) is not None:
                    raise failure
                if reload.is_set():
                    reload.clear()
                    config, replicator = await _reload(config, outbox, replicator, args.config)
                    services.update_credentials(config)
                    if finder is not None:
                        moved.set()  # keep following the hub found, with the reloaded token
                if moved.is_set() and finder is not None and finder.current is not None:
                    moved.clear()
                    config = _with_hub_url(config, finder.current.url)
                    replicator = await _follow_hub(config, outbox, replicator)
                    services.update_credentials(config)
        finally:
            await copies.stop()
            for task in (watch, keeping):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if finder is not None:
                await finder.stop()
            if simulation is not None:  # done already when its failure stops the agent: raised above, not again
                simulation.cancel()
                await asyncio.gather(simulation, return_exceptions=True)
            if replicator is not None:
                await replicator.stop()
            await services.aclose()
        backlog = (await outbox.stats()).backlog
        if outbox.replaced.is_set():  # said in one sentence when it was found; the restart uses the new file
            return EXIT_FAILURE
    log.info("Agent %s stopped; %s events wait for the hub in the outbox.", a.id, f"{backlog:,}")
    return EXIT_OK


async def _watch_outbox(outbox: Outbox) -> None:
    """Every FILE_CHECK_S: is the outbox still at its path? (Writes look too; this finds it with none.)"""
    while not outbox.replaced.is_set():
        await asyncio.sleep(FILE_CHECK_S)
        try:
            await outbox.check_file()
        except AgentError as err:  # said by the outbox; the next look tries again
            log.debug("Looking at the outbox file failed: %s", err)
        except Exception:  # a bug must not end the looking: the writes look too
            log.exception("Looking whether the outbox %s is still on disk failed.", outbox.path)


class _Services(contextlib.AsyncExitStack):
    """What ``run`` starts besides the replicator; ``aclose()`` stops it all, in reverse order."""

    def __init__(self) -> None:
        super().__init__()
        self.hub_clients: list[AgentCatalog | ReportSender] = []
        self.hub_url: str | None = None  # in use now: configured, or found by zeroconf
        self.pos_watcher: PosFolderWatcher | None = None  # the POS drop folder's, when one is configured

    def pos_state(self) -> PosFolderState | None:
        return self.pos_watcher.state() if self.pos_watcher is not None else None

    def update_credentials(self, config: AgentConfig) -> None:
        """SIGHUP: the token and hub address of a reloaded configuration (unchanged if it did not load)."""
        if config.agent.token is not None and config.agent.hub_url is not None:
            self.hub_url = config.agent.hub_url
            for client in self.hub_clients:
                client.update_credentials(config.agent.token, config.agent.hub_url)


async def _start_services(config: AgentConfig, outbox: Outbox) -> _Services:
    """The catalog, the scanners, the POS drop folder and the reports to the hub; close the stack to stop them."""
    a, r, c = config.agent, config.replicator, config.catalog
    stats = await outbox.stats()
    new_outbox = stats.last_sync_ms is None and stats.acked_seq == 0  # never synced: is an older one elsewhere?
    stack = _Services()
    try:
        catalog = await stack.enter_async_context(
            AgentCatalog(
                file=c.file, encoding=c.encoding, hub_url=a.hub_url, token=a.token,
                cache=c.cache_file or a.outbox.with_name(CATALOG_CACHE_FILENAME),
                refresh_s=c.refresh_s, retry_base_s=r.retry_base_s, retry_max_s=c.retry_max_s, timeout_s=c.timeout_s,
                answer_max_bytes=c.answer_max_bytes, agent_id=a.id, location=a.location, outbox=outbox,
                new_outbox=(Path(outbox.path), outbox.epoch) if new_outbox else None,
            )
        )  # fmt: skip
        stack.hub_clients.append(catalog)
        stack.hub_url = a.hub_url
        sessions = await start_staff_services(stack, config, outbox, catalog, lambda: stack.hub_url, stack.pos_state)
        if config.scanners:
            journal = await stack.enter_async_context(
                ScanJournal.open(a.outbox.with_name(JOURNAL_FILENAME), retention_s=a.retention_days * 86_400)
            )
            modes = ModeRouter(outbox, catalog, config.scanners, location=a.location, journal=journal)
            await modes.recover_interrupted()
            router: ScanRouter = modes
            if sessions is not None:  # a scanner feeds the session open on it first
                router = SessionRouter(sessions, router)
            await stack.enter_async_context(ScanService(config.scanners, router, journal))
        store_path = config.pos.store_path_for(a.outbox)
        # Opened whenever the hub is known, not only when the file exists already: rows that a manual
        # `import` (another process) quarantines later land in this file and must reach the hub without
        # a restart of this agent.
        reports_to_hub = a.hub_url is not None and a.token is not None
        if config.pos.watch_dir is not None or reports_to_hub or store_path.exists():
            store = await stack.enter_async_context(PosStore.open(store_path))
            sender: ReportSender | None = None
            if a.hub_url is not None and a.token is not None:

                async def hub_restores() -> int:  # each time the count cache found the hub's feed gone back
                    return (await outbox.feed_position()).restarts

                sender = ReportSender(
                    store, a.hub_url, a.token, agent_id=a.id, location=a.location, tick_s=r.tick_s,
                    retry_base_s=r.retry_base_s, retry_max_s=r.retry_max_s, timeout_s=r.timeout_s, auth_retry_s=r.auth_retry_s,
                    answer_max_bytes=r.answer_max_bytes, outbox=outbox, restores=hub_restores,
                )  # fmt: skip
                await stack.enter_async_context(sender)
                stack.hub_clients.append(sender)
            if config.pos.watch_dir is not None:
                importer = PosImporter(outbox, store, config.pos, location=a.location)
                kick = sender.kick if sender is not None else None
                stack.pos_watcher = await stack.enter_async_context(
                    PosFolderWatcher(importer, config.pos.watch_dir, on_report=lambda *_: kick() if kick else None)
                )
    except BaseException:
        await stack.aclose()
        raise
    return stack


async def _reload(
    config: AgentConfig, outbox: Outbox, replicator: Replicator | None, config_arg: str | None
) -> tuple[AgentConfig, Replicator | None]:
    """SIGHUP: re-read the token and hub address; other changes need a restart, and the log names them.

    A configuration of another agent (its id or outbox) is not taken at all: its token would send this outbox's
    movements as that agent's, which the hub refuses."""
    try:
        fresh = load_config(config_arg, environ=os.environ)
    except ConfigError as err:
        log.error("Configuration not reloaded, the running one stays: %s", err)
        return config, replicator
    a, running = fresh.agent, config.agent
    if (a.id, a.outbox) != (running.id, running.outbox):
        log.error(
            "Configuration not reloaded, the running one stays: %s names agent %s with the outbox %s, and this agent"
            " runs as %s on its outbox %s; a reload takes only a new token and hub address of the same agent."
            " Restart the agent to run the configuration as it is now (it says what to do with an outbox of another"
            " agent), or put the agent's own id back.",
            fresh.path, shown(a.id), a.outbox, shown(running.id), running.outbox,
        )  # fmt: skip
        return config, replicator
    install_log_redaction([a.token] if a.token else [])
    applied = replace(config, agent=replace(running, token=a.token, hub_url=a.hub_url))
    if replicator is not None and a.hub_url is not None and a.token is not None:
        replicator.update_credentials(a.token, a.hub_url)
    elif replicator is None and (new := _replicator(applied, outbox)) is not None:
        await new.start()
        replicator = new
    hub = redact_url(a.hub_url) if a.hub_url else "not configured"
    log.info("Configuration reloaded from %s; hub %s.", fresh.path, hub)
    if changed := _restart_only_changes(config, fresh):
        log.warning(
            "The configuration %s changes what only a restart applies: %s; until then the agent runs with the"
            " settings it started with (restart it: systemctl restart shelfsync-agent, or the service's restart).",
            fresh.path, "; ".join(changed),
        )  # fmt: skip
    return applied, replicator


RELOADED_KEYS = frozenset({"token", "hub_url"})  # of [agent]: what a SIGHUP applies
SECTION_NAMES = {"scanners": "[[scanner]]"}  # AgentConfig's fields named otherwise in the file


def _restart_only_changes(running: AgentConfig, fresh: AgentConfig) -> list[str]:
    """What differs between the two configurations that a reload does not apply: each ``[agent]`` key with its
    values, any other section by name."""
    changed: list[str] = []
    for section in fields(AgentConfig):
        if section.name == "path":
            continue
        before, after = getattr(running, section.name), getattr(fresh, section.name)
        if section.name != "agent":
            if before != after:
                changed.append(SECTION_NAMES.get(section.name, f"[{section.name}]"))
            continue
        for key in fields(AgentSection):
            old, new = getattr(before, key.name), getattr(after, key.name)
            if key.name not in RELOADED_KEYS and old != new:
                changed.append(f"[agent] {key.name} ({shown(str(old))} → {shown(str(new))})")
    return changed


async def _find_hub(config: AgentConfig, moved: asyncio.Event) -> HubFinder | None:
    """With [discovery] on and no hub_url: browse for the hub, waiting up to wait_s for it before going on."""
    d = config.discovery
    if not d.enabled or config.agent.hub_url is not None:
        return None
    finder = HubFinder(lambda location: moved.set(), hub_id=d.hub_id, interfaces=list(d.interfaces) or None)
    await finder.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(finder.wait_for(lambda location: location is not None), d.wait_s)
    if finder.current is None:
        log.warning("No hub found by zeroconf within %g s; recording only until one is found.", d.wait_s)
    moved.clear()  # what was found so far is used from the start
    return finder


def _with_hub_url(config: AgentConfig, url: str) -> AgentConfig:
    return replace(config, agent=replace(config.agent, hub_url=url))


async def _follow_hub(config: AgentConfig, outbox: Outbox, replicator: Replicator | None) -> Replicator | None:
    """Point the replicator at the hub's address found by zeroconf (start it if this is the first)."""
    a = config.agent
    if replicator is not None and a.token is not None and a.hub_url is not None:
        replicator.update_credentials(a.token, a.hub_url)
    elif replicator is None and (replicator := _replicator(config, outbox)) is not None:
        await replicator.start()
    return replicator


# --- status --------------------------------------------------------------------
async def _status(config: AgentConfig, args: argparse.Namespace) -> int:
    hub_url = config.agent.hub_url
    async with _open(config, create=False) as outbox:
        stats = await outbox.stats()
        synced_hub_id = await outbox.synced_hub_id(huberrors.sync_url(hub_url)) if hub_url else None
    readers = await asyncio.to_thread(read_reader_states, config.agent.outbox.with_name(JOURNAL_FILENAME))
    saved = await waiting_in(config.agent.outbox, config.agent.id)
    probe, hub_id = await _probe(hub_url) if hub_url else (None, None)
    report = _report(config, stats, probe)
    # The probe's answer names the hub's database: another than the one this agent last synced with there is said
    # as the sync says it, also while the agent is stopped or has not tried that hub since.
    report["hub_database"] = huberrors.another_database(redact_url(hub_url), hub_id, synced_hub_id) if hub_url else None
    report["scanners"] = [asdict(state) for state in readers or ()]
    report["saved_copies"], report["saved_copy_events"] = saved.copies, saved.events
    report["saved_copies_unreadable"] = saved.unreadable
    reserve = reserve_state(config.agent.outbox, config.agent.reserve_mib << 20)
    report["disk_reserve_bytes"], report["disk_reserve_held_bytes"] = reserve.size, reserve.held
    report["agent_running"] = await asyncio.to_thread(agent_running, config.agent.outbox)
    report["exit_code"] = _status_code(report)
    print(json.dumps(report, indent=2) if args.json else _human(report))
    return int(report["exit_code"])


def _status_code(report: dict[str, Any]) -> int:
    """0 all well; else the first of: agent not running, credentials refused, hub unreachable (docs/agent.md)."""
    if not report["agent_running"]:
        return EXIT_NOT_RUNNING
    if report["sync_state"] == "credentials_refused":
        return EXIT_CREDENTIALS_REFUSED
    if report["hub_reachable_now"] is False:
        return EXIT_HUB_UNREACHABLE
    return EXIT_OK


async def _probe(hub_url: str) -> tuple[str | None, str | None]:
    """None if GET /healthz answers 200 within PROBE_TIMEOUT_S, else why not (one phrase); and the id of the hub's
    database its answer names (HUB_ID_HEADER), if it names one.

    A redirect is not followed, as the replicator does not follow one: another server's 200 says nothing of the
    hub the agent syncs with. Nor is a 200 that is not the hub's JSON: a captive portal answers 200 to every
    address, and the replicator meets the same page (agent.hub_loop.not_the_hubs)."""
    url = hub_url + HEALTH_PATH
    try:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        session = aiohttp.ClientSession(timeout=timeout, connector=hub_connector())
        async with session, session.get(url, allow_redirects=FOLLOW_REDIRECTS) as resp:
            if 300 <= resp.status < 400:
                return redact_url(redirected(url, resp.status, resp.headers.get("Location"))), None
            body = await read_answer(resp, PROBE_ANSWER_MAX_BYTES, "health answer")
            kind = resp.headers.get("Content-Type", "")
            if (foreign := not_the_hubs(url, resp.status, kind, body, JSON)) is not None:
                return redact_url(foreign), None
            if resp.status == 404:
                return redact_url(not_found(hub_url, url, huberrors.error_message(body))), None
            if resp.status != 200:  # the hub's own sentence: "the hub is migrating its database to …" (docs/agent.md)
                detail = huberrors.error_member(body, "detail")
                said = f": {detail}" if isinstance(detail, str) and detail else ""
                return f"answered HTTP {resp.status}{said}", None
            try:  # another service's {"status": "ok"} (hub_url one port off) is not the hub's health
                foreign = not_a_hubs_json(url, json.loads(body), HEALTH_FIELDS)
            except ValueError:
                return redact_url(f"{url} answered a body that is not JSON, so not a shelfsync hub's health"), None
            if foreign is not None:
                return redact_url(foreign), None
            return None, huberrors.hub_id_of(resp.headers.get(HUB_ID_HEADER))
    except AnswerTooLarge as err:
        return str(err), None
    except TimeoutError:
        return f"no answer within {PROBE_TIMEOUT_S:g} s", None
    except aiohttp.ClientConnectorError as err:
        wrong = await wrong_address(hub_url, err)
        return redact_url(wrong) if wrong else f"connection failed ({err.os_error.strerror or err.os_error})", None
    except aiohttp.ClientError as err:
        wrong = await wrong_address(hub_url, err)
        return redact_url(wrong) if wrong else f"request failed: {broken(err)}", None


def _report(config: AgentConfig, stats: OutboxStats, probe: str | None) -> dict[str, Any]:
    now_ms = time.time_ns() // 1_000_000
    report = asdict(stats)
    report["outbox"] = report.pop("path")
    report["last_sync_age_s"] = None if stats.last_sync_ms is None else max(0.0, (now_ms - stats.last_sync_ms) / 1000)
    report["hub_url"] = redact_url(config.agent.hub_url) if config.agent.hub_url else None
    report["hub_reachable_now"] = None if config.agent.hub_url is None else probe is None
    report["hub_probe"] = "ok" if config.agent.hub_url and probe is None else probe
    return report


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86_400:
        return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:.0f} min"
    return f"{seconds / 86_400:.1f} days"


def _human(r: dict[str, Any]) -> str:
    oldest = f", the oldest {_age(r['oldest_pending_age_s'])} old" if r["oldest_pending_age_s"] is not None else ""
    if r["last_sync_ms"] is None:
        last_sync = "never"
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r["last_sync_ms"] / 1000))
        last_sync = f"{stamp} ({_age(r['last_sync_age_s'])} ago)"
    if r["hub_url"] is None:
        hub = "not configured"
    else:
        hub = f"{r['hub_url']} " + ("reachable" if r["hub_reachable_now"] else f"NOT reachable: {r['hub_probe']}")
    skew = "unknown" if r["clock_skew_ms"] is None else f"{r['clock_skew_ms']:+,} ms (hub minus this machine)"
    lines = [
        f"agent        {r['agent_id']} at {r['location']} (epoch {r['epoch']})",
        f"running      {_running(r)}",
        f"outbox       {r['outbox']}",
        f"backlog      {r['backlog']:,} events waiting{oldest}",
        f"acknowledged up to seq {r['acked_seq']:,} (last recorded {r['last_seq']:,})",
        f"last sync    {last_sync}",
        f"sync state   {r['sync_state']}",
        f"last error   {r['last_error'] or 'none'}",
        f"hub          {hub}",
        *([f"hub database {r['hub_database']}"] if r.get("hub_database") else []),
        f"set aside    {r['set_aside']:,} events the hub refused{_codes(r.get('set_aside_codes'))}",
        f"clock skew   {skew}",
        f"count cache  {_feed_line(r.get('feed_cursor'))}",
    ]
    if r.get("hub_clock_off_ms") is not None:  # the stores agree with each other: the hub's clock is the wrong one
        said = huberrors.hub_clock_words(r["hub_clock_off_ms"])
        lines.append(f"clock        the HUB's clock is WRONG, not this machine's. {said}")
    elif r["clock_skew_ms"] is not None and abs(r["clock_skew_ms"]) > CLOCK_WRONG_MS:  # measured against the hub's
        # wrong when other stores side with the hub's clock; else only that the two disagree (a lone store)
        lines.append(f"clock        {huberrors.clock_words(r['clock_skew_ms'], r.get('hub_clock_agreed'))}")
    if r.get("held_by_hub"):  # processed, not refused: the hub's operator applies or discards them
        lines.append(f"held by hub  {r['held_by_hub']:,} events with a clock outside the hub's window, for its operator")
    if r.get("forked_from_epoch") is not None:
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r["forked_ms"] / 1000))
        lines.append(
            f"lineage      forked from epoch {r['forked_from_epoch']} at {at} (outbox restored, copied or rolled"
            f" back); resent {r['fork_resent']:,} events from seq {r['epoch_base']:,}"
        )
    if r.get("hub_lacks") and r.get("hub_lacks_of"):
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r["hub_lacks_ms"] / 1000))
        lines.append(
            f"hub LACKS    at least {r['hub_lacks']:,} movements (of seq {r['hub_lacks_seqs']}) agent"
            f" {r['hub_lacks_of']} had acknowledged before the rebind, found at {at} (restored from an older copy?),"
            " which this outbox cannot send again as this id: count the stock again"
        )
    elif r.get("hub_lacks"):
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r["hub_lacks_ms"] / 1000))
        lines.append(
            f"hub LACKS    {r['hub_lacks']:,} acknowledged movements (of seq {r['hub_lacks_seqs']}) since its mark went"
            f" back at {at} (restored from an older copy?), which this outbox had purged: count the stock again"
        )
    if r.get("rebound_from") is not None:
        at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r["rebound_ms"] / 1000))
        lines.append(f"rebound      from agent {r['rebound_from']} at {at} (shelfsync-agent rebind)")
    if r.get("saved_copies") or r.get("saved_copies_unreadable"):
        unreadable = r.get("saved_copies_unreadable") or 0
        left = f"; {unreadable:,} cannot be read and are left as they are (the agent's log says why)"
        lines.append(
            f"saved copies {r['saved_copies']:,} beside the outbox hold {r['saved_copy_events']:,} events the hub has"
            f" not acknowledged; the running agent takes them into its outbox{left if unreadable else ''}"
        )
    reserve, reserve_held = r.get("disk_reserve_bytes"), r.get("disk_reserve_held_bytes")
    if r.get("agent_running") and reserve and reserve_held is not None and reserve_held < reserve:
        lines.append(
            f"disk reserve IN USE: {reserve_held / (1 << 20):.1f} of {reserve / (1 << 20):g} MiB left; the disk is"
            " full and scans are refused once it is spent: free disk space"
        )
    lines += [_reader_line(ReaderState(**state)) for state in r.get("scanners", ())]
    return "\n".join(lines)


def _codes(codes: dict[str, int] | None) -> str:
    """By code, and how to send again those a resend can change."""
    if not codes:
        return ""
    line = " (" + ", ".join(f"{code} {n:,}" for code, n in sorted(codes.items())) + ")"
    if any(code not in NEVER_RESENT for code in codes):
        line += f"; once the hub would take them, stop the agent and run `{PROG} resend --all`"
    return line


def _feed_line(cursor: int | None) -> str:
    if cursor is None:
        return "has not read the hub's change feed yet"
    return f"follows the hub's change feed (read up to change {cursor:,})"


def _running(r: dict[str, Any]) -> str:
    if r.get("agent_running") is None:
        return "unknown"
    if r["agent_running"]:
        return "yes (an agent process holds this outbox)"
    return "NO: no `shelfsync-agent run` holds this outbox; start the agent"


def _reader_line(state: ReaderState) -> str:
    now_ms = time.time_ns() // 1_000_000
    since = f" for {_age(max(0, now_ms - state.changed_ms) / 1000)}" if state.changed_ms else ""
    line = f"scanner      {state.reader_id} " + (
        f"available{since}"
        if state.available
        else f"UNAVAILABLE{since}: {state.error or 'no reason given'}; scans made until it is back are not read"
    )
    line += f"; {state.scans:,} scans, {state.problems:,} not booked"
    if state.last_problem:
        ago = f" ({_age(max(0, now_ms - state.last_problem_ms) / 1000)} ago)" if state.last_problem_ms else ""
        line += f"; last problem{ago}: {state.last_problem}"
    return line


# --- rebind ----------------------------------------------------------------------
async def _rebind(config: AgentConfig, args: argparse.Namespace) -> int:
    """The outbox sends as the configured id from now on; no agent may run on it meanwhile."""
    a = config.agent
    with hold_agent_lock(a.outbox):
        async with Outbox.open(a.outbox, agent_id=None, location=None, synchronous=a.synchronous, create=False) as outbox:
            done = await outbox.rebind(a.id)
    if not done.changed:
        print(f"The outbox {a.outbox} belongs to agent {a.id!r} already; nothing to do.")
    else:
        print(
            f"The outbox {a.outbox} now belongs to agent {done.agent_id!r} instead of {done.previous_agent_id!r}:"
            f" its {done.waiting:,} waiting movements are sent as {done.agent_id!r} when the agent runs, and what the"
            f" hub acknowledged to {done.previous_agent_id!r} (up to seq {done.epoch_base:,}) stays counted there."
        )
    return EXIT_OK


# --- resend ----------------------------------------------------------------------
async def _resend(config: AgentConfig, args: argparse.Namespace) -> int:
    """Set-aside movements back in the queue (Outbox.requeue); no agent may run on the outbox meanwhile."""
    if not (args.code or args.seq or args.all):
        raise ConfigError(
            "say which set-aside movements to queue again: --code, --seq or --all (`shelfsync-agent status` counts"
            " them by code)"
        )
    a = config.agent
    with hold_agent_lock(a.outbox):
        async with _open(config, create=False) as outbox:
            try:
                done = await outbox.requeue(
                    codes=set(args.code) if args.code else None, seqs=set(args.seq) if args.seq else None
                )
            except OutboxError as err:
                raise ConfigError(str(err)) from err
            aside = (await outbox.stats()).set_aside_codes if args.code else {}
    for r in done.requeued:
        ev = r.event
        print(
            f"seq {r.previous_seq} -> {ev.seq}  {ev.event_id.hex()[:8]}  {ev.kind.value} {ev.qty} {ev.sku} at"
            f" {ev.location} (was {r.code})"
        )
    left = "".join(
        f"; {n:,} set aside as {code} stay aside: {NEVER_RESENT[code]}" for code, n in sorted(done.refused.items())
    )
    if not done.requeued and args.code and not set(args.code) & aside.keys():
        now = ", ".join(f"{n:,} as {code}" for code, n in sorted(aside.items())) or "none"
        print(
            f"No movement of {a.outbox} is set aside as {', '.join(sorted(set(args.code)))}, so none was queued"
            f" again; set aside now: {now} (`{PROG} status` counts them by code)."
        )
    elif not done.requeued:
        print(f"No set-aside movement of {a.outbox} was queued again{left}.")
    else:
        print(
            f"{len(done.requeued):,} set-aside movements are queued again, after the {done.waiting_before:,} waiting;"
            f" the agent sends them when it runs{left}."
        )
    return EXIT_OK


# --- outbox send ------------------------------------------------------------------
async def _outbox_send(config: AgentConfig, args: argparse.Namespace) -> int:
    """Send another outbox file of this agent (a copy saved when its outbox was replaced) until the hub holds it all."""
    a = config.agent
    path = Path(args.file)
    if a.hub_url is None or a.token is None:
        raise ConfigError("sending an outbox needs hub_url and the token in [agent]")
    if not path.is_file():
        raise AgentError(f"there is no outbox file at {path}")
    if path.resolve() == a.outbox.resolve():
        raise ConfigError(f"{path} is this agent's own outbox; `{PROG} run` sends it")

    def replicator(outbox: Outbox) -> Replicator:
        made = _replicator(config, outbox, feed=False)
        assert made is not None  # hub_url and token are set
        return made

    try:  # what the running agent does for the copies beside its outbox (agent.saved)
        sent = await send_file(path, a.id, a.synchronous, replicator, wait_s=args.wait_s)
    except NotSent as err:
        print(
            f"{PROG}: {err.left:,} of the {err.waiting:,} movements in {path} have not reached the hub within"
            f" {args.wait_s:g} s ({err.why}); they stay in the file, run the command again",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(f"The hub holds every movement of {path} ({sent.waiting:,} were waiting); the file may be deleted now.")
    return EXIT_OK


# --- record ----------------------------------------------------------------------
async def _record(config: AgentConfig, args: argparse.Namespace) -> int:
    if (problem := book_out_ref_problem(Kind(args.kind), args.reason, args.ref, args.source)) is not None:
        raise InvalidMovement(f"{problem}; give it with --ref")  # whoever types it can look at the papers
    movement = Movement(
        args.location or config.agent.location,
        args.sku,
        Kind(args.kind),
        args.qty,
        args.source,
        ref=args.ref,
        reason=args.reason,
    )
    await refuse_new_outbox_beside_agent(config.agent.outbox)
    async with _open(config) as outbox:
        result = await outbox.record([movement])
    print(event_id_hex(result.events[0].event_id), flush=True)
    return EXIT_OK
