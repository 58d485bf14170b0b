"""``python -m agent.localapi hash-pin``: print the hash of a staff PIN for ``[localapi.staff]`` in agent.toml.

The PIN is read without echo from the terminal, or as one line from standard
input when that is not a terminal. Exit codes: 0 ok, 2 usage error.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from agent.localapi.auth import AuthError, hash_pin


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.localapi", description="Local API tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hp = commands.add_parser("hash-pin", help="print the hash of a staff PIN for [localapi.staff]")
    hp.add_argument("--staff", help='print a whole config line: <staff> = "<hash>"')
    args = parser.parse_args(argv)
    if sys.stdin.isatty():
        pin = getpass.getpass("PIN: ")
        if getpass.getpass("PIN again: ") != pin:
            print("the two PINs differ; nothing was printed", file=sys.stderr)
            return 2
    else:
        pin = sys.stdin.readline().rstrip("\r\n")
    try:
        hashed = hash_pin(pin)
    except AuthError as err:
        print(f"hash-pin: {err}", file=sys.stderr)
        return 2
    print(f'{args.staff} = "{hashed}"' if args.staff else hashed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
