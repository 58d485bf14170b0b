"""The console commands' first step (``shelfsync-hub``, ``shelfsync-agent``): ``--version``, then the CLI.

``--version`` is answered from the package metadata before a command's CLI is imported, so it works on any
install (an agent-only one for the hub's command, a hub-only one for the agent's); another command on an
install without that command's extra is one sentence naming the extra, never an ImportError traceback.

It needs only what every install has (protocol/ and its base dependencies), as hub/entry.py and
agent/entry.py, which call it, do.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable, Sequence

DISTRIBUTION = "shelfsync"
EXIT_OK = 0
EXIT_USAGE = 2
OWN_PACKAGES = frozenset({"hub", "agent", "protocol", "hardware"})  # missing one of these is a broken install

Cli = Callable[[Sequence[str]], int]


def package_version() -> str:
    """The installed shelfsync's version, from its package metadata."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown (shelfsync is not installed as a package)"


def asks_for_version(args: Sequence[str]) -> bool:
    """Whether argparse would answer ``args`` with the version: ``--version`` (or a prefix, down to ``--v``)
    first, where only ``-h``, ``--help`` and ``--version`` are options."""
    return bool(args) and args[0].startswith("--v") and "--version".startswith(args[0])


def missing_extra(err: ModuleNotFoundError, prog: str, extra: str) -> str | None:
    """The sentence for a package of ``extra`` that is not installed; None when the missing module is ours."""
    if (err.name or extra).partition(".")[0] in OWN_PACKAGES:
        return None
    return f"{prog}: this command needs the {err.name} package, which is not installed; install shelfsync[{extra}]"


def run(prog: str, extra: str, load_cli: Callable[[], Cli], argv: Sequence[str] | None) -> int:
    """Answer ``--version``, or import the command's CLI with ``load_cli`` and run it on ``argv``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if asks_for_version(args):
        print(f"{prog} {package_version()}")
        return EXIT_OK
    try:
        cli_main = load_cli()
    except ModuleNotFoundError as err:
        sentence = missing_extra(err, prog, extra)
        if sentence is None:
            raise
        print(sentence, file=sys.stderr)
        return EXIT_USAGE
    return cli_main(args)


def option_before_command(argv: Sequence[str], prog: str) -> str | None:
    """The sentence for an option given before the command (``--config agent.toml run``), or None.

    The commands take their options after their name; argparse took the option's value for the command ("invalid
    choice: 'agent.toml'") or, with nothing after it, said only that a command is required."""
    first = next(iter(argv), None)
    if first is None or not first.startswith("-") or first in ("-h", "--help", "--version"):
        return None
    return f"{first} before the command; give the command first, then its options ({prog} COMMAND {first} …)"
