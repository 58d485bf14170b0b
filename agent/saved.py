"""The copies of the outbox saved beside it, taken into the outbox by the running agent, or sent to the hub by hand.

When the outbox is replaced or written over while the agent runs (``agent.outbox``), the agent saves its own
beside the new file as ``outbox.sqlite3.replaced-<UTC time>`` and stops; its restart runs on the file now at the
path. The saved copy holds the movements recorded before, some perhaps never acknowledged by the hub.
``SavedCopies`` in the running agent looks for such copies at its start and every ``LOOK_S`` after (an operator
may put one there), and records each one's movements its hub has not acknowledged in the outbox itself, as they
are (``take_file``): they are sent with the outbox's own, in its epoch, whether the hub answers now or not. The hub
keeps the first delivery of an event and counts the others as resends (an event is the agent id and its event id,
whatever the epoch and seq), so a copy's events the hub already holds are harmless. ``send_file`` sends a copy to
the hub with a replicator of its own, in the copy's epoch (``shelfsync-agent outbox send FILE``, for a copy kept
elsewhere or an agent without a hub).

A copy the outbox holds every movement of is renamed ``outbox.sqlite3.taken-<UTC time>`` (an older agent named
copies it had sent ``.sent-``) and kept for the outbox's retention period (``retention_days``: how long
acknowledged movements stay in the outbox itself), then deleted at a start. A copy that cannot be read as this
agent's outbox (malformed, another agent's) is left as it is, with one ERROR while the agent runs.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError, EventConflict, OutboxClosed
from agent.lock import ACQUIRE_WAIT_S, AgentAlreadyRunning, hold_agent_lock
from agent.outbox import REPLACED_SUFFIX, Outbox
from agent.replicator import Replicator

log = logging.getLogger(__name__)

SENT_SUFFIX = ".sent-"  # a saved copy the hub holds all of (an older agent's): <name>.sent-<UTC time>
TAKEN_SUFFIX = ".taken-"  # a saved copy the outbox holds all of: <name>.taken-<UTC time>
STAMP = "%Y%m%dT%H%M%SZ"
_STAMPED = r"(\d{8}T\d{6}Z)(-\d+)?"
_SAVED_COPY = re.compile(re.escape(REPLACED_SUFFIX) + _STAMPED)
_SENT_COPY = re.compile(f"(?:{re.escape(SENT_SUFFIX)}|{re.escape(TAKEN_SUFFIX)})" + _STAMPED)
LOOK_S = 5.0  # how often the running agent looks for saved copies beside its outbox
TAKE_PAGE = 1_000  # a copy's movements read and recorded at a time (one outbox transaction each)
SQLITE_SIDE_FILES = ("-wal", "-shm")


@dataclass(frozen=True, slots=True)
class Sent:
    """What ``send_file`` did: the movements that were waiting in the file when it began."""

    waiting: int


@dataclass(frozen=True, slots=True)
class Taken:
    """What ``take_file`` did: the movements waiting in the copy for its hub, and how many of them the outbox did
    not hold yet."""

    waiting: int
    added: int


@dataclass(frozen=True, slots=True)
class Waiting:
    """The saved copies beside an outbox not yet sent (``status``): how many, the movements they hold that their
    hub has not acknowledged, and how many cannot be read."""

    copies: int
    events: int
    unreadable: int


def saved_copies(outbox: Path) -> list[Path]:
    """The copies ``run`` saved beside ``outbox`` (``outbox.sqlite3.replaced-<UTC time>``), oldest first."""
    return _beside(outbox, _SAVED_COPY)


def sent_copies(outbox: Path) -> list[Path]:
    """The saved copies sent to the hub and kept (``outbox.sqlite3.sent-<UTC time>``), oldest first."""
    return _beside(outbox, _SENT_COPY)


def _beside(outbox: Path, pattern: re.Pattern[str]) -> list[Path]:
    try:
        found = [p for p in outbox.parent.iterdir() if pattern.fullmatch(p.name.removeprefix(outbox.name))]
    except OSError:
        return []
    return sorted(found)


class NotTaken(AgentError):
    """``take_file``: the outbox refused the copy's movements (a full disk); the message is the outbox's."""


class NotSent(AgentError):
    """``send_file`` gave up: the hub did not hold every movement of the file in time."""

    def __init__(self, path: Path, waiting: int, left: int, why: str) -> None:
        super().__init__(f"{left:,} of the {waiting:,} movements in {path} have not reached the hub ({why})")
        self.waiting, self.left, self.why = waiting, left, why


async def send_file(
    path: Path,
    agent_id: str,
    synchronous: str,
    make_replicator: Callable[[Outbox], Replicator],
    *,
    wait_s: float | None = None,
    lock_wait_s: float = ACQUIRE_WAIT_S,
) -> Sent:
    """Send the outbox file at ``path`` until the hub holds every movement of it; ``NotSent`` after ``wait_s``
    (None: no limit, cancel to stop).

    Raises AgentAlreadyRunning when another process sends (or runs on) the file, OutboxError when it is not a
    usable outbox, OutboxOfAnotherAgent when it is another agent's."""
    with hold_agent_lock(path, wait_s=lock_wait_s):  # two sends of one file would only race each other
        async with Outbox.open(path, agent_id=agent_id, location=None, synchronous=synchronous, create=False) as outbox:
            waiting = (await outbox.stats()).backlog
            replicator = make_replicator(outbox)
            await replicator.start()
            try:
                await asyncio.wait_for(replicator.wait_synced(), wait_s)
            except TimeoutError:
                left = (await outbox.stats()).backlog
                raise NotSent(path, waiting, left, replicator.state.last_error or "no answer yet") from None
            finally:
                await replicator.stop()
    return Sent(waiting)


async def take_file(outbox: Outbox, path: Path, *, lock_wait_s: float = 0) -> Taken:
    """Record in ``outbox`` every movement of the saved copy at ``path`` that its hub has not acknowledged, as they
    are (``Outbox.take_over``), a page at a time: a page taken twice (a crash between two) is all duplicates.

    Raises AgentAlreadyRunning when another process sends the file, OutboxError when it is not a usable outbox,
    OutboxOfAnotherAgent when it is another agent's, EventConflict when it holds an id of the outbox's with another
    movement, NotTaken when the outbox refuses them (a full disk). Pages taken before stay taken."""
    waiting = added = 0
    with hold_agent_lock(path, wait_s=lock_wait_s):
        async with Outbox.open(path, agent_id=outbox.agent_id, location=None, create=False) as copy:
            after = 0
            while events := (await copy.outgoing(TAKE_PAGE, after=after)).events:
                waiting += len(events)
                try:
                    added += len((await outbox.take_over(events)).events)
                except (EventConflict, OutboxClosed):
                    raise
                except AgentError as err:  # the outbox's refusal (a full disk), not the copy's
                    raise NotTaken(str(err)) from err
                after = events[-1].seq
    return Taken(waiting, added)


async def waiting_in(outbox: Path, agent_id: str | None = None) -> Waiting:
    """What the saved copies beside ``outbox`` hold that their hub has not acknowledged, read without changing them."""
    copies = events = unreadable = 0
    for path in saved_copies(outbox):
        try:
            async with Outbox.open(path, agent_id=agent_id, location=None, create=False) as copy:
                events += (await copy.stats()).backlog
            copies += 1
        except AgentError:
            unreadable += 1
    return Waiting(copies, events, unreadable)


class SavedCopies:
    """The running agent's taker of the copies saved beside its outbox (see the module doc): at its start and every
    ``LOOK_S`` while it runs (a copy an operator put there, or one another run saved), each copy's movements its hub
    has not acknowledged are recorded in the outbox as they are (``Outbox.take_over``: their ids, stamps and wall
    times; those the outbox holds already are duplicates), then the copy is set aside as taken.

    So the copies' movements reach the hub with the outbox's own, in its epoch, and nothing waits for anything: a
    copy is taken with the hub down as well, the outbox's sending never waits for a copy, and no second epoch of
    this agent syncs beside the outbox's (two that each sync after the other began are what the hub lists as two
    copies of one agent sending at once, ``agent_copies``). The hub counts each movement once, whichever file sent
    it first (an event is its agent id and event id, whatever the epoch and seq)."""

    def __init__(self, outbox: Outbox, *, keep_s: float) -> None:
        self._outbox = outbox
        self._path = Path(outbox.path)
        self._keep_s = keep_s
        self.task: asyncio.Task[None] | None = None
        self._said: set[Path] = set()  # unreadable (or not taken for a full disk): said once while the agent runs

    async def start(self) -> None:
        """Delete the set-aside copies kept long enough; take the saved ones now and from then on, in the
        background."""
        self._forget_old_sent()
        self.task = asyncio.create_task(self._run(), name="saved outbox copies")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        while not self._outbox.replaced.is_set():  # replaced: the agent stops, and its restart takes the copies
            for path in saved_copies(self._path):
                await self._take(path)
            await asyncio.sleep(LOOK_S)

    def _first_time(self, path: Path) -> bool:
        """Whether what is wrong with ``path`` is to be said now: once while the agent runs, until it is taken."""
        if path in self._said:
            return False
        self._said.add(path)
        return True

    async def _take(self, path: Path) -> None:
        if self._outbox.replaced.is_set():
            return
        try:
            taken = await take_file(self._outbox, path)
        except AgentAlreadyRunning:  # `outbox send` sends it now: looked at again later
            log.debug("The saved outbox copy %s is in use by another process; it is looked at again later.", path)
            return
        except OutboxClosed:
            raise
        except NotTaken as err:
            if self._first_time(path):
                log.error(
                    "The movements of the saved outbox copy %s could not be taken into the outbox: %s; the copy is"
                    " left as it is and taken once the outbox takes them.",
                    path, err,
                )  # fmt: skip
            return
        except EventConflict as err:
            if self._first_time(path):
                log.error(
                    "The saved outbox copy %s holds a movement the outbox holds with other content (%s); it is left"
                    " as it is and taken no further: send it with `shelfsync-agent outbox send %s`.",
                    path, err, path,
                )  # fmt: skip
            return
        except AgentError as err:
            if self._outbox.replaced.is_set():  # the outbox's own refusal: the agent stops
                return
            if self._first_time(path):
                log.error(
                    "The saved outbox copy %s cannot be read as an outbox of this agent (%s); it is left as it is"
                    " and not sent: move it away, or send it with `shelfsync-agent outbox send %s` once it can"
                    " be read.",
                    path, err, path,
                )  # fmt: skip
            return
        except Exception:  # a bug must not end the taking of the other copies, nor the agent
            if self._first_time(path):
                log.exception("Taking the saved outbox copy %s into the outbox failed; it is left as it is.", path)
            return
        self._said.discard(path)
        try:
            kept = self._set_aside(path)
        except OSError as err:
            self._said.add(path)
            log.error(
                "The outbox holds every movement of the saved outbox copy %s, but it could not be renamed (%s);"
                " delete it.",
                path, err,
            )  # fmt: skip
            return
        log.info(
            "The saved outbox copy %s was taken into the outbox: %s of its movements the hub had not acknowledged,"
            " %s of them new to the outbox, are sent with its own; it is kept as %s for %s days, then deleted.",
            path, f"{taken.waiting:,}", f"{taken.added:,}", kept, f"{self._keep_s / 86_400:g}",
        )  # fmt: skip

    def _set_aside(self, path: Path) -> Path:
        """Rename a sent copy (and any file SQLite kept beside it) ``<outbox>.sent-<UTC time>``."""
        stamp = time.strftime(STAMP, time.gmtime())
        target = Path(f"{self._path}{TAKEN_SUFFIX}{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = Path(f"{self._path}{TAKEN_SUFFIX}{stamp}-{n}")
        for side in SQLITE_SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{side}", f"{target}{side}")
        os.replace(path, target)
        return target

    def _forget_old_sent(self) -> None:
        """Delete the sent copies kept longer than ``keep_s`` (by the time in their name)."""
        now = time.time()
        for path in sent_copies(self._path):
            match = _SENT_COPY.fullmatch(path.name.removeprefix(self._path.name))
            assert match is not None
            sent_at = calendar.timegm(time.strptime(match.group(1), STAMP))
            if now - sent_at < self._keep_s:
                continue
            try:
                for side in ("", *SQLITE_SIDE_FILES):
                    Path(f"{path}{side}").unlink(missing_ok=True)
            except OSError as err:
                log.warning("The sent outbox copy %s could not be deleted: %s", path, err)
            else:
                log.info("The sent outbox copy %s, kept %s days, was deleted.", path, f"{self._keep_s / 86_400:g}")
