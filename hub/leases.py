"""Which hub process runs a job only one may run at a time, and the loop that keeps each such job running.

A channel's pusher (``hub.channels.runner``) and a webhook's deliverer
(``hub.webhooks``) are jobs: one hub process at a time runs each, the one
holding its lease. ``lead`` is the one standby/takeover loop both use on
either backend: it runs the jobs whose lease this hub holds and stands by for
the others. A job whose work ends by itself while the hub runs (its loop
returned or died: a bug) is stopped, its lease given back with one sentence
and the error's traceback, and taken again after a backoff — by another hub
first, when there is one — instead of nobody doing it any more. A job of
several loops may start one of them again alone (``Job.restartable``: a
channel's reconciler), after the same backoff, keeping its lease while the
others run on.

The leases are ``LeaseHolder``s: on a PostgreSQL hub
``hub.storage.postgres.leases.Leases`` (session-level advisory locks, shared
by every hub on the database, held on the hub's lock connection for that kind
of job: ``share_locks``; ``lead``'s check of them every turn is also what
proves that kind's lead loop alive, and a hub that stopped checking for
``lease_stale_s`` — paused, stuck — has its lock connection ended by a hub that
wants one of its locks); a job whose own loop is stuck while ``lead`` runs on
is seen by its ``hub.heartbeat.Heartbeat`` and given back by ``lead`` itself (once two of its turns saw the same
silence: a hub resumed from a pause had stopped every loop, not one);
on a SQLite hub, the one process on its file,
``LocalLeases``, always granted. This module imports no database driver.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from hub.heartbeat import DEFAULT_LEASE_RETRY_S, DEFAULT_LEASE_STALE_S
from hub.storage import POSTGRES_SCHEMES
from hub.storage.base import StoreError
from protocol.retry import Backoff, Health

if TYPE_CHECKING:
    from hub.storage.postgres.leases import LockConnection


class LockConnections:
    """A hub's lock connections, one per kind of job (``of``: ``"channels"``, ``"webhooks"``), made when first asked
    for (each connects when first used), the hub's ``lease_stale_s`` and its ``lease_retry_s`` (``retry_s``: how often
    ``lead`` checks the locks held and tries to take the others).

    One per kind, not one for the hub: a lock connection's checks are what prove its holder alive to the other
    hubs (``lead`` runs them every turn), so the channels' lead loop stuck while the webhooks' runs on must leave
    the channels' connection silent, for another hub to end it and take the channels over."""

    def __init__(self, db: str, stale_s: float, retry_s: float = DEFAULT_LEASE_RETRY_S) -> None:
        self.db = db
        self.stale_s = stale_s
        self.retry_s = retry_s
        self._made: dict[str, LockConnection] = {}

    def of(self, kind: str) -> LockConnection | None:
        """On a PostgreSQL hub, the lock connection of ``kind``'s jobs; None on a SQLite hub (no other hub)."""
        if not self.db.startswith(POSTGRES_SCHEMES):
            return None
        if kind not in self._made:
            from hub.storage.postgres.leases import LockConnection  # the driver loads only for a PostgreSQL hub

            self._made[kind] = LockConnection(self.db, self.stale_s, f"locks-{kind}")
        return self._made[kind]


LOCKS_KEY: web.AppKey[LockConnections] = web.AppKey("lock_connections")


def share_locks(
    app: web.Application, db: str, stale_s: float | None = None, retry_s: float = DEFAULT_LEASE_RETRY_S
) -> None:
    """Make the hub's ``LockConnections`` (its channels' and webhooks' lock connections), at setup. ``stale_s``:
    ``lease_stale_s``, how long another hub's lock connection, or a job's own loop here, may stay silent before its
    jobs are taken over; ``retry_s``: ``lease_retry_s``, how often ``lead`` turns (the first call sets both:
    ``hub.app.create_app`` makes them before the webhooks and channels ask for theirs)."""
    if LOCKS_KEY not in app:
        app[LOCKS_KEY] = LockConnections(db, DEFAULT_LEASE_STALE_S if stale_s is None else stale_s, retry_s)


class LeaseHolder(Protocol):
    """The leases of one kind of job this hub holds, one per name, as ``lead`` sees them."""

    held: set[str]  # the names whose lease this hub holds
    shared: bool  # other hub processes may hold these leases (``lead`` says "for another hub … to take over")

    @property
    def stale_s(self) -> float:
        """``lease_stale_s``: a job whose own loop is silent this long past its last bound is given back."""
        ...

    async def take(self, name: str) -> bool:
        """True when this hub now holds (or already held) ``name``'s lease; raises ``StoreError``."""
        ...

    def holds(self, name: str) -> bool:
        """This hub holds ``name``'s lease as far as it knows without asking the database: a job checks it before
        each thing only the holder may do, since ``lead`` learns of a lost lease only at its next turn."""
        ...

    async def release(self, name: str) -> None:
        """Give ``name``'s lease back, keeping the others; raises ``StoreError``."""
        ...

    async def alive(self) -> bool:
        """Every lease in ``held`` is still this hub's (when not, ``held`` is emptied). On PostgreSQL its query is
        also what proves the holder alive to the other hubs: ``lead`` asks it every turn."""
        ...

    async def close(self) -> None:
        """Give every lease back; safe twice."""
        ...


class LocalLeases:
    """Every lease always granted: a SQLite hub is the one process on its file, so it runs every job itself.

    ``lead`` over these leases does what it does on PostgreSQL minus the other hubs: a job whose work ended by
    itself is started again here after the backoff, instead of staying stopped until the hub restarts."""

    shared = False

    def __init__(self, stale_s: float = DEFAULT_LEASE_STALE_S) -> None:
        self.held: set[str] = set()
        self.stale_s = stale_s

    def start_all(self, jobs: Mapping[str, Job]) -> None:
        """Take every lease and start every job now, before ``lead``'s first turn: the hub runs them from its first
        request on."""
        for name, job in jobs.items():
            self.held.add(name)
            job.start()

    async def take(self, name: str) -> bool:
        self.held.add(name)
        return True

    def holds(self, name: str) -> bool:
        return name in self.held

    async def release(self, name: str) -> None:
        self.held.discard(name)

    async def alive(self) -> bool:
        return True

    async def close(self) -> None:
        self.held.clear()


# --- the standby/takeover loop ---------------------------------------------------


class Job(Protocol):
    """One job a lease guards (a channel's pusher, a webhook's deliverer), as ``lead`` sees it."""

    def here(self) -> bool:
        """This hub process runs the job now."""
        ...

    def ended(self) -> tuple[str, asyncio.Task[None]] | None:
        """While the job runs here: None as long as all its work runs, else the work that ended by itself, in
        words (``"pushing"``, ``"reconciling"``), and its done task. Every loop of the job is watched: one that
        ended while the others run on is a job no longer done in full."""
        ...

    def start(self) -> None:
        """Run the job here, from what the last holder saved."""
        ...

    def aside(self) -> bool:
        """This hub leaves the job to other hubs (a webhook whose settings a hub started later stored, and said so
        itself): it neither takes its lease nor keeps it, and stands by."""
        ...

    def restartable(self, doing: str) -> bool:
        """The loop ``doing`` names (``ended``'s words) can be started again alone while the job's other loops run
        on; False: the job is restarted whole (stopped, its lease given back, taken again)."""
        ...

    async def restart(self, doing: str) -> None:
        """Start the loop ``doing`` names again, alone (``restartable``)."""
        ...

    async def stop(self) -> None:
        """Stop running it here (what it saved stays); a task that ended already is not awaited again (its
        error, if any, is said by ``lead``)."""
        ...

    async def stand_by(self) -> None:
        """Show the saved state while another hub runs the job (or while this one waits to start it again)."""
        ...

    def overdue(self) -> tuple[str, float] | None:
        """While the job runs here: its watched loop in words (``ended``'s) and how long it has been silent past
        the bound its ``Heartbeat`` last gave (None: no such loop running)."""
        ...


@dataclass(frozen=True, slots=True)
class Words:
    """How ``lead``'s sentences name a kind of job: ``{noun} NAME: this hub {does} it now``, ``... lost its
    {lock} and stopped {doing} it``, ``taking {locks}``."""

    noun: str  # "channel"
    lock: str  # "pusher lock"
    locks: str  # "the channels' pusher locks"
    does: str  # "pushes"
    doing: str  # "pushing"


ENDED_BACKOFF = Backoff(3.0, 60.0)  # before this hub takes again a job whose work ended by itself here
RAN_WELL_S = 300.0  # a job that ran this long since it was taken ends afresh: its backoff starts over


def why_ended(task: asyncio.Task[None]) -> str:
    """What ended a done task, in a few words."""
    if task.cancelled():
        return "its task was cancelled"
    err = task.exception()
    if err is None:
        return "its loop returned"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


class _Ends:
    """How often each job's work ended by itself here in a row, and when this hub may take it again.

    The count grows with every end and starts over only once the job has run ``ran_well_s`` since it was
    taken: a job that dies a few seconds after each takeover is taken again later and later (up to the
    backoff's cap), not every few seconds forever."""

    def __init__(self, backoff: Backoff, ran_well_s: float) -> None:
        self._backoff = backoff
        self._ran_well_s = ran_well_s
        self._loop = asyncio.get_running_loop()
        self._count: dict[Any, int] = {}  # name (or (name, loop)): times in a row its work ended by itself here
        self._not_before: dict[Any, float] = {}  # name (or (name, loop)): when this hub may take it again
        self._since: dict[Any, float] = {}  # name (or (name, loop)): when this hub took it (or first saw it running)
        self._down: set[tuple[str, str]] = set()  # (name, loop): a loop that ended alone, to be started again

    def started(self, name: Any) -> None:
        self._since[name] = self._loop.time()

    def running(self, name: Any) -> None:
        """A check saw ``name`` running here: after long enough, its next end backs off from the start."""
        now = self._loop.time()
        if now - self._since.setdefault(name, now) >= self._ran_well_s:
            self._count.pop(name, None)

    def stopped(self, name: str) -> None:
        self._since.pop(name, None)
        self._whole(name)

    def _whole(self, name: Any) -> None:
        """``name`` stops whole: a loop of it waiting to be started again alone starts with the job instead."""
        if isinstance(name, str):
            self._down = {p for p in self._down if p[0] != name}

    def running_parts(self, name: str) -> None:
        """``name`` runs whole: the loops started again alone run well after long enough too."""
        for part in [p for p in self._since if isinstance(p, tuple) and p[0] == name]:
            self.running(part)

    def part_down(self, part: tuple[str, str]) -> bool:
        """``part`` (job, loop) ended by itself and is waiting to be started again alone; it is noted the first
        time (False), when its backoff starts."""
        if part in self._down:
            return True
        self._down.add(part)
        return False

    def part_up(self, part: tuple[str, str]) -> None:
        self._down.discard(part)
        self.started(part)

    def ended(self, name: Any) -> float:
        """``name``'s work ended by itself: how long this hub now waits before taking it again."""
        self._since.pop(name, None)
        self._whole(name)
        self._count[name] = self._count.get(name, 0) + 1
        wait_s = self._backoff.delay_s(self._count[name], random.Random())
        self._not_before[name] = self._loop.time() + wait_s
        return wait_s

    def waiting(self, name: Any) -> bool:
        return self._loop.time() < self._not_before.get(name, 0.0)


class _Silences:
    """The jobs seen silent past ``lease_stale_s`` at a turn of ``lead``, and since when.

    A job's loop silent that long is stuck only if the hub ran all that time. A hub paused (SIGSTOP) or whose
    event loop was blocked ran nothing, its jobs' loops included: when it resumes, ``lead``'s first turn may come
    before the loops' own wake-ups (a request's timeout, the end of a wait), and sees them silent since before the
    pause. So a job is given up only when a later turn sees the same silence again — its loop had every chance to
    run in between and did not. A loop that ran in between has beaten since: its silence started after the first
    sighting, over ``lease_stale_s`` later than the one seen then."""

    def __init__(self, stale_s: float) -> None:
        self._stale_s = stale_s
        self._seen: dict[str, tuple[str, float]] = {}  # name: (its silent loop in words, when its silence began)

    def stuck(self, name: str, late: tuple[str, float]) -> bool:
        """``name``'s loop ``late[0]`` is silent ``late[1]`` past its bound: True when the last turn saw this same
        silence already; False at a first sighting (noted)."""
        doing, late_s = late
        began = time.monotonic() - late_s  # the clock of hub.heartbeat.Heartbeat
        seen = self._seen.get(name)
        if seen is not None and seen[0] == doing and abs(began - seen[1]) < self._stale_s / 2:
            del self._seen[name]
            return True
        self._seen[name] = (doing, began)
        return False

    def forget(self, name: str) -> None:
        self._seen.pop(name, None)


async def lead(
    leases: LeaseHolder,
    jobs: Mapping[str, Job],
    log: logging.Logger,
    words: Words,
    retry_s: float,
    stopping: Callable[[], bool],
    ended_backoff: Backoff | None = None,
    ran_well_s: float = RAN_WELL_S,
) -> None:
    """Forever: run the jobs whose lease this hub holds, stand by for the others, every ``retry_s``.

    A job whose work ended by itself (not stopped by the hub) is stopped, its lease given back and one sentence
    logged; this hub takes it again only after ``ended_backoff`` (``ENDED_BACKOFF`` unless given), longer each
    time it ends again until it has run ``ran_well_s`` after a takeover, so another hub gets it first; so is a job
    whose loop two turns in a row saw silent, the same silence, past its bound for ``lease_stale_s`` (``_Silences``).
    Once
    ``stopping()`` (the hub is on its way out: its change watch closed, which ends every job's loop) nothing is
    taken, given back or said: the hub stops the jobs and closes the leases itself."""
    health = Health(log, f"taking {words.locks}")
    ends = _Ends(ended_backoff or ENDED_BACKOFF, ran_well_s)
    silences = _Silences(leases.stale_s)
    while not stopping():
        try:
            if leases.held:
                await leases.alive()  # when the connection went, the locks went with it: ``held`` is emptied
            for name, job in jobs.items():
                if job.here() and name not in leases.held:  # its lock went (with a connection taken anew too)
                    await job.stop()
                    ends.stopped(name)
                    silences.forget(name)
                    log.warning("%s %s: this hub lost its %s and stopped %s it", words.noun, name, words.lock,
                                words.doing)  # fmt: skip
            for name, job in jobs.items():
                if job.here() and job.aside():  # its loop ended, having said why: no error, and no backoff
                    await job.stop()
                    ends.stopped(name)
                    silences.forget(name)
                    await leases.release(name)
                    continue
                if job.here():
                    gone = job.ended()
                    late = job.overdue() if gone is None else None
                    if late is not None and late[1] >= leases.stale_s and not stopping():
                        if silences.stuck(name, late):
                            await _give_up_stuck(leases, name, job, late, log, words, ends)
                            continue
                    else:
                        silences.forget(name)
                    if gone is None:
                        ends.running(name)
                        ends.running_parts(name)
                        continue
                    if stopping():  # the hub is stopping: that is what ended it
                        return
                    if await _restart_part(name, job, gone, log, words, ends):
                        continue
                    await _give_back(leases, name, job, gone, log, words, ends)
                    continue
                if ends.waiting(name) or job.aside():
                    await job.stand_by()
                elif await leases.take(name):
                    job.start()
                    ends.started(name)
                    log.info("%s %s: this hub %s it now", words.noun, name, words.does)
                else:
                    await job.stand_by()
            health.succeeded()
        except StoreError as err:
            health.failed(str(err))
        await asyncio.sleep(retry_s)


async def _restart_part(
    name: str, job: Job, gone: tuple[str, asyncio.Task[None]], log: logging.Logger, words: Words, ends: _Ends
) -> bool:
    """``name``'s loop ``gone`` ended by itself while its others run on, and the job can start it again alone
    (``Job.restartable``): it is, after the same backoff as a whole job, and the job keeps its lease — the
    loops still running lose nothing (a channel's pusher keeps pushing; no other hub takes it over for a loop
    that would die there too). The first sight of it says so in one sentence, with the error's traceback.
    False: the job is to be restarted whole."""
    doing, task = gone
    part = (name, doing)
    if not job.restartable(doing):
        return False
    if not ends.part_down(part):
        wait_s = ends.ended(part)
        err = None if task.cancelled() else task.exception()
        log.error("%s %s: %s ended by itself (%s) while this hub runs; this hub starts %s it again in %.0f s, "
                  "its other work running on", words.noun, name, doing, why_ended(task), doing, wait_s,
                  exc_info=err)  # fmt: skip
        return True
    if ends.waiting(part):
        return True
    await job.restart(doing)
    ends.part_up(part)
    log.info("%s %s: this hub is %s it again", words.noun, name, doing)
    return True


async def _give_back(
    leases: LeaseHolder,
    name: str,
    job: Job,
    gone: tuple[str, asyncio.Task[None]],
    log: logging.Logger,
    words: Words,
    ends: _Ends,
) -> None:
    """``name``'s work ended by itself: stop it, give its lease back, and wait a backoff before taking it again.
    One sentence says so, with the error's traceback when it died."""
    doing, task = gone
    why = why_ended(task)
    err = None if task.cancelled() else task.exception()  # a bug: its traceback says where
    await job.stop()
    wait_s = ends.ended(name)
    if leases.shared:
        log.error("%s %s: %s ended by itself (%s) while this hub runs; it gave its %s back for another hub (or "
                  "this one, in %.0f s) to take over", words.noun, name, doing, why, words.lock, wait_s,
                  exc_info=err)  # fmt: skip
    else:
        log.error("%s %s: %s ended by itself (%s) while this hub runs; this hub starts %s it again in %.0f s",
                  words.noun, name, doing, why, words.doing, wait_s, exc_info=err)  # fmt: skip
    await leases.release(name)


async def _give_up_stuck(
    leases: LeaseHolder, name: str, job: Job, late: tuple[str, float], log: logging.Logger, words: Words, ends: _Ends
) -> None:
    """``name``'s loop has been silent past its own bound for ``lease_stale_s`` (stuck on an await that never
    ends), while this hub, alive, keeps its lock: stop the job, give its lease back and wait a backoff before taking
    it again, as for a job whose work ended by itself. One sentence says so."""
    doing, late_s = late
    await job.stop()  # its stuck await is cancelled: nothing more goes out from here once another hub takes it
    wait_s = ends.ended(name)
    again = f"another hub (or this one, in {wait_s:.0f} s)" if leases.shared else f"this hub, in {wait_s:.0f} s,"
    log.error("%s %s: %s has been stuck for %.0f s past its own time limits, over lease_stale_s (%.0f s), so this "
              "hub stopped it and gave its %s back for %s to take over", words.noun, name, doing, late_s,
              leases.stale_s, words.lock, again)  # fmt: skip
    await leases.release(name)
