"""Each backend's schema migrations: ``migrations/NNN_what_it_does.sql`` in the backend's package.

File ``NNN_…`` brings the schema from version NNN - 1 to NNN. The numbers run 1, 2, 3, … with no gap,
and both backends name each step the same way (a test checks), so a version means one thing everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources

log = logging.getLogger(__name__)

MIGRATION_NAME_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
MIGRATION_PROGRESS_S = 10.0  # while a migration step runs, a line this often saying how far it is
PHASE_OPENING, PHASE_MIGRATING, PHASE_WAITING = "opening", "migrating", "waiting"  # MigrationProgress.phase
STARTING_PHASES = (PHASE_OPENING, PHASE_MIGRATING, PHASE_WAITING)
# The steps that read the whole ledger, and what for. Such a step runs for minutes on a ledger of millions before
# the hub serves, so its first line says how many events it reads (counted, or on PostgreSQL estimated, as it
# begins) and its "Still migrating" lines repeat it.
LEDGER_STEPS: dict[int, str] = {
    20: "to rebuild the transfers by destination from their transfer events",
    25: "to find the receipts back at a shipper and the book-outs of receipts taken in at the wrong store",
    26: "to index the adjusts carrying a ref, which book out receipts taken in at the wrong store",
    28: "to word the book-out reason of receipts taken in at the wrong store as the hub does",
    29: "to word the book-out reason as ingest does, whatever its white space and letters",
}


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


@dataclass(slots=True)
class MigrationProgress:
    """How far a hub's migration is: written by the code running it (on the SQLite writer's thread, or by the
    PostgreSQL migrate), read on the event loop by ``progress_logged`` and by what the hub answers while it opens
    its database (hub.starting). A step over a big ledger runs for minutes before the hub serves; without these
    lines the hub said nothing until the step was done."""

    where: str
    step: int = 0  # the version being made; 0: no step under way
    first: int = 0  # the first and last versions this start makes
    last: int = 0
    name: str = ""
    statement: int = 0  # the statement running, from 1; 0: the script is sent whole and not counted
    statements: int = 0
    started: float = 0.0  # time.monotonic() at the step's start
    reads: str = ""  # a step of LEDGER_STEPS: "it reads the ledger's 2,000,000 events to …"; "": another step
    waiting_since: float = 0.0  # PostgreSQL: time.monotonic() since which it waits for the schema's lock; 0: not

    @property
    def phase(self) -> str:
        """What the hub opening its database does: "migrating" (a step), "waiting" (PostgreSQL: for the lock of
        the schema, which another hub migrating it holds) or "opening" (anything else)."""
        if self.step:
            return PHASE_MIGRATING
        return PHASE_WAITING if self.waiting_since else PHASE_OPENING

    def sentence(self) -> str:
        """What the hub does, in one sentence for a probe's answer (no path: a probe needs no credential)."""
        step = self.step
        if step:
            steps = f", step {step - self.first + 1} of {self.last - self.first + 1}" if self.last > self.first else ""
            at = f"statement {self.statement} of {self.statements}, " if self.statement else ""
            return (
                f"the hub is migrating its database to schema version {step} ({self.name}){steps}: "
                f"{at}{time.monotonic() - self.started:.0f} s so far"
            )
        if self.waiting_since:
            return (
                "the hub is waiting for the lock of its database's schema, which another hub migrating it holds "
                f"({time.monotonic() - self.waiting_since:.0f} s so far)"
            )
        return "the hub is opening its database"

    def answer(self) -> dict[str, object] | None:
        """The step under way, for a probe's answer; None when none is."""
        step = self.step
        if not step:
            return None
        return {
            "schema_version": step,
            "name": self.name,
            "step": step - self.first + 1,
            "steps": self.last - self.first + 1,
            "statement": self.statement or None,
            "statements": self.statements or None,
            "elapsed_s": round(time.monotonic() - self.started, 1),
        }

    def begin(
        self, step: int, last: int, name: str, statements: int = 0, events: int | None = None, estimated: bool = False
    ) -> None:
        """A step begins; ``events``: the ledger's size, for a step of LEDGER_STEPS (``estimated``: from the
        database's statistics, not counted)."""
        if not self.first:
            self.first = step
        self.step, self.last, self.name, self.statements = step, last, name, statements
        self.statement = 0
        self.started = time.monotonic()
        self.reads = ""
        if events is not None and step in LEDGER_STEPS:
            about = "about " if estimated else ""
            self.reads = f"it reads the ledger's {about}{events:,} events {LEDGER_STEPS[step]}"
        steps = f", step {step - self.first + 1} of {last - self.first + 1}" if last > self.first else ""
        reads = f": {self.reads}" if self.reads else ""
        log.log(
            self._level(),
            "Migrating the hub database %s to schema version %d (%s)%s%s; the hub serves once the migration is "
            "done.", self.where, step, name, steps, reads,
        )  # fmt: skip

    def done(self) -> None:
        took = time.monotonic() - self.started
        log.log(
            logging.INFO if took >= MIGRATION_PROGRESS_S else self._level(),
            "Migrated the hub database %s to schema version %d (%s) in %.1f s.",
            self.where, self.step, self.name, took,
        )  # fmt: skip
        self.step = 0

    def _level(self) -> int:
        """A database made from nothing (its first step is 1) takes every step in a blink, and "Opened the hub
        database (schema version N)" says what came of them: its steps' lines are for debugging. An upgrade's
        are for the operator."""
        return logging.DEBUG if self.first == 1 else logging.INFO

    def line(self) -> str | None:
        """One sentence on the step under way, or None when none is."""
        step = self.step
        if not step:
            return None
        steps = f", step {step - self.first + 1} of {self.last - self.first + 1}" if self.last > self.first else ""
        at = f"statement {self.statement} of {self.statements}, " if self.statement else ""
        reads = f" ({self.reads})" if self.reads else ""
        return (
            f"Still migrating the hub database {self.where} to schema version {step} ({self.name}){steps}{reads}: "
            f"{at}{time.monotonic() - self.started:.0f} s so far; the hub serves once the migration is done."
        )


@contextlib.asynccontextmanager
async def progress_logged(progress: MigrationProgress) -> AsyncIterator[MigrationProgress]:
    """While the body runs, a line every ``MIGRATION_PROGRESS_S`` saying how far the migration is (none when
    no step is under way, as on every start but an upgrade's)."""

    async def say() -> None:
        while True:
            await asyncio.sleep(MIGRATION_PROGRESS_S)
            line = progress.line()
            if line is not None:
                log.info("%s", line)

    task = asyncio.ensure_future(say())
    try:
        yield progress
    finally:
        task.cancel()


def step_failed(progress: MigrationProgress, why: str, advice: str) -> str:
    """The one sentence of a step that failed and was rolled back: which step, that the database is still at the
    version before it, and what to do."""
    return (
        f"migrating the hub database {progress.where} to schema version {progress.step} ({progress.name}) failed "
        f"({why}); the step was rolled back, so the database is still at schema version {progress.step - 1}, whole, "
        f"and the next start runs the step again: {advice}"
    )


def size_text(size: int) -> str:
    """A size for a sentence: "640 KB", "37 MB", "2.4 GB"."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{max(1, round(size / 1024))} KB"
