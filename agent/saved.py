"""The copies of the outbox saved beside it, and sending them to the hub.

When the outbox is replaced or written over while the agent runs (``agent.outbox``), the agent saves its own
beside the new file as ``outbox.sqlite3.replaced-<UTC time>`` and stops; its restart runs on the file now at the
path. The saved copy holds the movements recorded before, some perhaps never acknowledged by the hub. ``send_file``
sends such a file to the hub until the hub holds every movement of it, with a replicator of its own (no change
feed): ``shelfsync-agent outbox send FILE`` does that by hand, and ``SavedCopies`` in the running agent does it for
every copy it finds beside the outbox at its start, in the background, beside the outbox's own replicator. The hub
keeps the first delivery of an event and counts the others as resends (an event is the agent id and its event id,
whatever the epoch and seq), so a copy's events the hub already holds, through the outbox or another copy, are
harmless.

A copy the hub holds every movement of is renamed ``outbox.sqlite3.sent-<UTC time>`` and kept for the outbox's
retention period (``retention_days``: how long acknowledged movements stay in the outbox itself), then deleted at a
start. A copy that cannot be read as this agent's outbox (malformed, another agent's) is left as it is, with one
ERROR at each start.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError
from agent.lock import ACQUIRE_WAIT_S, AgentAlreadyRunning, hold_agent_lock
from agent.outbox import REPLACED_SUFFIX, Outbox
from agent.replicator import Replicator

log = logging.getLogger(__name__)

SENT_SUFFIX = ".sent-"  # a saved copy the hub holds all of: <name>.sent-<UTC time>
STAMP = "%Y%m%dT%H%M%SZ"
_STAMPED = r"(\d{8}T\d{6}Z)(-\d+)?"
_SAVED_COPY = re.compile(re.escape(REPLACED_SUFFIX) + _STAMPED)
_SENT_COPY = re.compile(re.escape(SENT_SUFFIX) + _STAMPED)
STUCK_S = 60.0  # a copy the hub fails otherwise than by not answering this long: the outbox is sent meanwhile
STUCK_POLL_S = 1.0
_HUB_DOWN = ("never", "unreachable", "ok")  # no answer (or none yet): waiting for the hub keeps nothing from it
BUSY_RETRY_S = 60.0  # a copy another process sends now (`outbox send`) is looked at again after this long
SQLITE_SIDE_FILES = ("-wal", "-shm")


@dataclass(frozen=True, slots=True)
class Sent:
    """What ``send_file`` did: the movements that were waiting in the file when it began."""

    waiting: int


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
    """The running agent's sender of the copies saved beside its outbox (see the module doc): each in turn, each
    with its own replicator, which backs off while the hub cannot be reached, until the hub holds all of it.

    The outbox's own replicator starts (``then``) once every copy was sent or found unreadable, not before: a
    copy sends in the epoch it had, and the outbox, a restored one, forks into a new epoch at its first answer;
    two epochs of one agent that each sync after the other began are what the hub lists as two copies of one
    agent sending at once (``agent_copies``). One after the other, they are a restore. So the outbox's movements
    wait for the copies (recording does not), unless a copy's hub keeps failing it otherwise than by not
    answering (a refusal, an error) for ``STUCK_S``: then the outbox is sent all the same, with a WARNING.
    """

    def __init__(
        self,
        outbox: Path,
        agent_id: str,
        synchronous: str,
        make_replicator: Callable[[Outbox], Replicator],
        *,
        keep_s: float,
        then: Callable[[], Awaitable[None]],
    ) -> None:
        self._outbox = outbox
        self._agent_id = agent_id
        self._synchronous = synchronous
        self._make_replicator = make_replicator
        self._keep_s = keep_s
        self._then = then
        self.task: asyncio.Task[None] | None = None  # sending the copies, then starting the outbox's replicator
        self._replicator: Replicator | None = None  # the copy's being sent now

    def _make(self, copy: Outbox) -> Replicator:
        self._replicator = self._make_replicator(copy)
        return self._replicator

    async def start(self) -> None:
        """Delete the sent copies kept long enough, send the saved ones in the background, then ``then()``."""
        self._forget_old_sent()
        if not saved_copies(self._outbox):
            await self._then()
            return
        self.task = asyncio.create_task(self._run(), name="saved outbox copies")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        passed = asyncio.Event()  # every copy was looked at once (one another process sends may be left for later)
        first = asyncio.create_task(self._send_all(passed), name="saved outbox copies: sending")
        try:
            stuck_s = 0.0
            while not first.done() and not passed.is_set():
                await asyncio.wait([first], timeout=STUCK_POLL_S)
                state = self._replicator.state if self._replicator is not None else None
                failing = state is not None and state.failures > 0 and state.sync_state not in _HUB_DOWN
                stuck_s = stuck_s + STUCK_POLL_S if failing else 0.0
                if stuck_s >= STUCK_S:
                    assert state is not None
                    log.warning(
                        "The saved outbox copies beside %s are not getting through to the hub (%s); the outbox's own"
                        " movements are sent meanwhile, and the hub may list this agent as two copies sending at"
                        " once until the copies are sent.",
                        self._outbox, state.last_error or state.sync_state,
                    )  # fmt: skip
                    break
            await self._then()
            await first
        finally:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)

    async def _send_all(self, passed: asyncio.Event) -> None:
        said: set[Path] = set()  # unreadable: said once this start
        while True:
            busy = False
            for path in saved_copies(self._outbox):
                if path in said:
                    continue
                try:
                    sent = await send_file(path, self._agent_id, self._synchronous, self._make, lock_wait_s=0)
                except AgentAlreadyRunning:
                    busy = True  # `outbox send` by hand: looked at again later; the outbox is sent meanwhile
                    continue
                except AgentError as err:
                    said.add(path)
                    log.error(
                        "The saved outbox copy %s cannot be read as an outbox of this agent (%s); it is left as it is"
                        " and not sent: move it away, or send it with `shelfsync-agent outbox send %s` once it can"
                        " be read.",
                        path, err, path,
                    )  # fmt: skip
                    continue
                except Exception:  # a bug must not end the sending of the other copies, nor the agent
                    said.add(path)
                    log.exception("Sending the saved outbox copy %s failed; it is left as it is.", path)
                    continue
                try:
                    kept = self._set_aside(path)
                except OSError as err:
                    said.add(path)
                    log.error(
                        "The hub holds every movement of the saved outbox copy %s, but it could not be renamed (%s);"
                        " delete it.",
                        path, err,
                    )  # fmt: skip
                    continue
                log.info(
                    "The hub holds every movement of the saved outbox copy %s (%s were waiting); it is kept as %s for"
                    " %s days, then deleted.",
                    path, f"{sent.waiting:,}", kept, f"{self._keep_s / 86_400:g}",
                )  # fmt: skip
            passed.set()
            if not busy:
                return
            await asyncio.sleep(BUSY_RETRY_S)

    def _set_aside(self, path: Path) -> Path:
        """Rename a sent copy (and any file SQLite kept beside it) ``<outbox>.sent-<UTC time>``."""
        stamp = time.strftime(STAMP, time.gmtime())
        target = Path(f"{self._outbox}{SENT_SUFFIX}{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = Path(f"{self._outbox}{SENT_SUFFIX}{stamp}-{n}")
        for side in SQLITE_SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{side}", f"{target}{side}")
        os.replace(path, target)
        return target

    def _forget_old_sent(self) -> None:
        """Delete the sent copies kept longer than ``keep_s`` (by the time in their name)."""
        now = time.time()
        for path in sent_copies(self._outbox):
            match = _SENT_COPY.fullmatch(path.name.removeprefix(self._outbox.name))
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
