"""The ``shelfsync-agent`` command (and ``python -m agent``): ``--version`` first, then agent/cli.py.

``--version`` is answered from the package metadata before agent/cli.py is imported, so it works on any
install, a hub-only one too; another command on an install without the agent extra is one sentence
naming the extra, never an ImportError traceback.

It imports nothing of shelfsync (hub/entry.py is its twin): the agent and the hub share only protocol/.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Sequence

PROG = "shelfsync-agent"
DISTRIBUTION = "shelfsync"
EXTRA = "agent"
EXIT_OK = 0
EXIT_USAGE = 2
OWN_PACKAGES = frozenset({"hub", "agent", "protocol", "hardware"})  # missing one of these is a broken install


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
    if (err.name or "agent").partition(".")[0] in OWN_PACKAGES:
        return None
    return f"{prog}: this command needs the {err.name} package, which is not installed; install shelfsync[{extra}]"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if asks_for_version(args):
        print(f"{PROG} {package_version()}")
        return EXIT_OK
    try:
        from agent.cli import main as cli_main
    except ModuleNotFoundError as err:
        sentence = missing_extra(err, PROG, EXTRA)
        if sentence is None:
            raise
        print(sentence, file=sys.stderr)
        return EXIT_USAGE
    return cli_main(args)
