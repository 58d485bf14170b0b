"""Each backend's schema migrations: ``migrations/NNN_what_it_does.sql`` in the backend's package.

File ``NNN_…`` brings the schema from version NNN - 1 to NNN. The numbers run 1, 2, 3, … with no gap,
and both backends name each step the same way (a test checks), so a version means one thing everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

MIGRATION_NAME_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str  # what it does, from the file name: "channels_and_bundles"
    read: Callable[[], str]  # the script's text


def migrations(package: str) -> dict[int, Migration]:
    """The migrations of ``package`` by version; raises RuntimeError if the files skip or repeat a number."""
    folder = resources.files(package).joinpath("migrations")
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = MIGRATION_NAME_RE.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"{package} has two migrations numbered {version:03d}")
        found[version] = Migration(version, match.group(2), _reader(package, entry.name))
    if sorted(found) != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{package}'s migrations must be numbered 001, 002, … without a gap: {sorted(found)}")
    return dict(sorted(found.items()))


def _reader(package: str, name: str) -> Callable[[], str]:
    return lambda: resources.files(package).joinpath("migrations", name).read_text(encoding="utf-8")
