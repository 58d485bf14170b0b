"""``shelfsync-agent import``: import export files by hand, or list what was quarantined.

    shelfsync-agent import -c agent.toml sales-2024-03.csv inventory.csv
    shelfsync-agent import -c agent.toml --report

Hooked into ``agent.cli`` with ``add_import_parser(commands, parents=[common])``
and ``"import": import_command`` (or ``run_import(args)`` on its own).
Exit codes: 0 imported, 1 a file could not be imported or the agent failed,
2 usage or configuration error, 3 imported but some rows were quarantined.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, TextIO

from tqdm import tqdm

from agent.errors import AgentError, ConfigError
from agent.lock import refuse_new_outbox_beside_agent
from agent.outbox import Outbox
from agent.pos.config import PosImportConfig
from agent.pos.importer import PosImporter
from agent.pos.store import PosStore
from protocol.values import shown

if TYPE_CHECKING:  # agent.config may import agent.pos.config: no import cycle through here
    from agent.config import AgentConfig

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_QUARANTINED = 3
PROGRESS_MIN_BYTES = 1 << 20  # smaller files finish before a bar is worth drawing
REASON_SHOWN_MAX_CHARS = 500
RAW_SHOWN_MAX_CHARS = 160


def add_import_parser(subparsers: Any, *, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Add the ``import`` command; without ``parents`` it brings its own ``--config``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "import", parents=list(parents), help="import POS export files, or list quarantined rows with --report",
        description="Import POS exports (Square item sales, Shopify inventory, generic CSV) into the outbox. "
        "Rows already imported are counted as duplicates, never twice; bad rows are quarantined and listed by --report.",
    )
    if not any(a.dest == "config" for p in parents for a in p._actions):
        parser.add_argument(
            "--config", "-c", metavar="FILE",
            help="the agent's TOML configuration file (default: $SHELFSYNC_AGENT_CONFIG, else this system's default)",
        )  # fmt: skip
    parser.add_argument("files", nargs="*", metavar="FILE", help="export files to import")
    parser.add_argument("--profile", help="import profile: square, shopify, generic or a custom one (default: detect)")
    parser.add_argument("--mapping", metavar="TOML", help="a TOML file with [pos] settings and profiles to use instead of the configuration's")
    parser.add_argument("--report", action="store_true", help="list quarantined rows and recent imports instead of importing")
    parser.add_argument("--limit", type=int, default=100, help="rows to list with --report (default 100)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar, even for large files")
    return parser


def run_import(args: argparse.Namespace) -> int:
    """The command on its own: load the configuration, run, map errors to exit codes."""
    from agent.config import load_config

    try:
        config = load_config(args.config, environ=os.environ)
    except ConfigError as err:
        print(f"shelfsync-agent: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(import_command(config, args))
    except ConfigError as err:
        print(f"shelfsync-agent: {err}", file=sys.stderr)
        return EXIT_USAGE
    except AgentError as err:
        print(f"shelfsync-agent: {err}", file=sys.stderr)
        return EXIT_FAILURE


def pos_config(config: AgentConfig, args: argparse.Namespace) -> PosImportConfig:
    """--mapping, else the configuration's [pos] section, else the defaults."""
    if getattr(args, "mapping", None):
        return PosImportConfig.from_toml_file(Path(args.mapping))
    found = getattr(config, "pos", None)
    return found if isinstance(found, PosImportConfig) else PosImportConfig()


async def import_command(config: AgentConfig, args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    pos = pos_config(config, args)
    store_path = pos.store_path_for(config.agent.outbox)
    if args.report:
        return await _report(store_path, args, out)
    if not args.files:
        print("shelfsync-agent: import needs FILE arguments, or --report", file=sys.stderr)
        return EXIT_USAGE
    a = config.agent
    worst = EXIT_OK
    await refuse_new_outbox_beside_agent(a.outbox)
    async with (
        Outbox.open(a.outbox, agent_id=a.id, location=a.location, synchronous=a.synchronous) as outbox,
        PosStore.open(store_path) as store,
    ):
        importer = PosImporter(outbox, store, pos, location=a.location)
        for name in args.files:
            path = Path(name)
            if not path.is_file():
                print(f"shelfsync-agent: {shown(name, bare=True)} is not a file", file=sys.stderr)
                worst = EXIT_FAILURE
                continue
            with _Progress(path, disabled=args.no_progress) as progress:
                report = await importer.import_file(path, profile=args.profile, on_progress=progress)
            print(report.to_json().rstrip() if args.json else report.summary(), file=out, flush=True)
            if report.status == "failed":
                worst = EXIT_FAILURE
            elif report.quarantined and worst == EXIT_OK:
                worst = EXIT_QUARANTINED
    return worst


class _Progress:
    """A tqdm bar by bytes read, with rows and rows/s, for files of PROGRESS_MIN_BYTES or more on a terminal."""

    def __init__(self, path: Path, *, disabled: bool) -> None:
        size = path.stat().st_size
        # disable=None: tqdm draws only when stderr is a terminal.
        self._bar = tqdm(
            total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=shown(path.name, bare=True), file=sys.stderr,
            disable=True if disabled or size < PROGRESS_MIN_BYTES else None, leave=True, dynamic_ncols=True,
        )
        self._started = time.monotonic()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def __call__(self, bytes_read: int, size: int, rows: int) -> None:
        self._bar.update(max(0, bytes_read - self._bar.n))
        elapsed = max(1e-6, time.monotonic() - self._started)
        self._bar.set_postfix_str(f"{rows:,} rows, {rows / elapsed:,.0f} rows/s", refresh=False)


async def _report(store_path: Path, args: argparse.Namespace, out: TextIO) -> int:
    if not store_path.exists():
        print("{}" if args.json else "No POS export has been imported yet.", file=out)
        return EXIT_OK
    async with PosStore.open(store_path) as store:
        await store.mark_interrupted()  # an import whose process is gone is listed as such, not as running
        entries = await store.quarantined(args.limit)
        total = await store.quarantine_count()
        imports = await store.recent_imports(min(args.limit, 20))
    if args.json:
        payload = {
            "quarantined_total": total,
            "quarantined": [asdict(e) for e in entries],
            "imports": [{k: v for k, v in asdict(r).items() if k != "quarantine"} for r in imports],
        }
        print(json.dumps(payload, indent=2, ensure_ascii=False), file=out)
        return EXIT_OK
    lines = [f"Quarantined rows: {total:,}" + (f" (showing {len(entries):,})" if total > len(entries) else "")]
    for e in entries:
        # names, reasons and rows come from files: escaped and bounded, so none can forge a line or a colour
        reason = shown(e.reason, REASON_SHOWN_MAX_CHARS, bare=True)
        lines.append(f"  {shown(e.file_name, bare=True)} line {e.line}: {reason}")
        if e.raw:
            lines.append(f"      {shown(e.raw, RAW_SHOWN_MAX_CHARS, bare=True)}")
    lines.append("Recent imports:")
    for r in imports:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started_ms / 1000))
        lines.append(f"  {when}  {r.summary()}")
    print("\n".join(lines), file=out)
    return EXIT_OK
