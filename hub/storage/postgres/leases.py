"""Which hub process does a job that only one may do at a time: session-level advisory locks, one per name.

Several hub processes share one database, but only one may push a channel
(``hub.channels.runner``) or deliver a webhook (``hub.webhooks``). Each such
job holds a session-level advisory lock, keyed by its kind, the schema
(``search_path``) and its name, on a connection of its own; a hub that does
not get it stands by and tries again. The lock goes when the holder's
connection does (a stopped or killed hub, or one cut off from the database),
and another hub takes the job over from what the holder saved. The schema in
the key keeps hubs in different schemas of one database from waiting for
each other; the kind keeps a channel and a webhook of one name apart.

``lead`` is the one standby/takeover loop both use: it runs the jobs whose
lock this hub holds and stands by for the others. A job whose work ends by
itself while the hub runs (its loop returned or died) gives its lock back,
with one sentence, so another hub takes it over — or this one, after a
backoff — instead of nobody doing it any more.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from hub.storage.base import StoreError
from hub.storage.postgres.store import CONNECT_TIMEOUT_S, SERVER_SETTINGS, redacted
from protocol.retry import Backoff, Health

LEASE_QUERY_TIMEOUT_S = 5.0
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
LEASE_KEY_SQL = "hashtextextended('shelfsync.' || $1 || '.' || current_schema() || '.' || $2, 0)"


class Leases:
    """Session-level advisory locks of one ``kind``, one per name, on one connection of their own.

    ``take`` tries to take a name's lock without waiting; ``alive`` tells whether the connection (and so every
    lock taken on it) is still there. When it is not, the locks are gone: stop the jobs, then ``take`` again
    (it connects anew). ``kind`` is part of the key (``channel.pusher``: the key channel pushers always had);
    ``lock`` names one lock in errors (``{name}`` is the name) and ``locks`` all of them."""

    def __init__(self, url: str, kind: str, lock: str, locks: str) -> None:
        self._url = url
        self._where = redacted(url)
        self._kind = kind
        self._lock = lock
        self._locks = locks
        self._conn: asyncpg.Connection | None = None
        self.held: set[str] = set()

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self.held.clear()  # a new connection holds nothing
            try:
                self._conn = await asyncpg.connect(
                    self._url, timeout=CONNECT_TIMEOUT_S, server_settings=SERVER_SETTINGS
                )
            except (*DB_ERRORS, ValueError) as err:
                raise StoreError(f"cannot reach {self._where} to take {self._locks} ({err})") from err
        return self._conn

    async def take(self, name: str) -> bool:
        """True when this hub now holds (or already held) ``name``'s lock."""
        if name in self.held and await self.alive():
            return True
        conn = await self._connection()
        try:
            got = await conn.fetchval(f"SELECT pg_try_advisory_lock({LEASE_KEY_SQL})", self._kind, name,
                                      timeout=LEASE_QUERY_TIMEOUT_S)  # fmt: skip
        except DB_ERRORS as err:
            await self._drop()
            what = self._lock.format(name=name)
            raise StoreError(f"taking {what} in {self._where} failed ({err})") from err
        if got:
            self.held.add(name)
        return bool(got)

    async def release(self, name: str) -> None:
        """Give ``name``'s lock back, keeping the others; a failure drops the connection (and every lock)."""
        if name not in self.held or self._conn is None or self._conn.is_closed():
            self.held.discard(name)
            return
        self.held.discard(name)
        try:
            await self._conn.fetchval(f"SELECT pg_advisory_unlock({LEASE_KEY_SQL})", self._kind, name,
                                      timeout=LEASE_QUERY_TIMEOUT_S)  # fmt: skip
        except DB_ERRORS as err:
            await self._drop()
            what = self._lock.format(name=name)
            raise StoreError(f"giving back {what} in {self._where} failed ({err})") from err

    async def alive(self) -> bool:
        """The connection answers: every lock in ``held`` is still this hub's."""
        if self._conn is None or self._conn.is_closed():
            self.held.clear()
            return False
        try:
            await self._conn.fetchval("SELECT 1", timeout=LEASE_QUERY_TIMEOUT_S)
        except DB_ERRORS:
            await self._drop()
            return False
        return True

    async def _drop(self) -> None:
        self.held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """Give every lock back (closing the connection does); safe twice."""
        conn, self._conn = self._conn, None
        self.held.clear()
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), LEASE_QUERY_TIMEOUT_S)
            except DB_ERRORS:
                conn.terminate()


# --- the standby/takeover loop ---------------------------------------------------


class Job(Protocol):
    """One job a lock guards (a channel's pusher, a webhook's deliverer), as ``lead`` sees it."""

    def here(self) -> bool:
        """This hub process runs the job now."""
        ...

    def task(self) -> asyncio.Task[None] | None:
        """The task doing the work while it runs here (done: the work ended)."""
        ...

    def start(self) -> None:
        """Run the job here, from what the last holder saved."""
        ...

    async def stop(self) -> None:
        """Stop running it here (what it saved stays); a task that ended already is not awaited again (its
        error, if any, is said by ``lead``)."""
        ...

    async def stand_by(self) -> None:
        """Show the saved state while another hub runs the job."""
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


def why_ended(task: asyncio.Task[None]) -> str:
    """What ended a done task, in a few words."""
    if task.cancelled():
        return "its task was cancelled"
    err = task.exception()
    if err is None:
        return "its loop returned"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


async def lead(
    leases: Leases,
    jobs: Mapping[str, Job],
    log: logging.Logger,
    words: Words,
    retry_s: float,
    stopping: Callable[[], bool],
    ended_backoff: Backoff = ENDED_BACKOFF,
) -> None:
    """Forever: run the jobs whose lock this hub holds, stand by for the others, every ``retry_s``.

    A job whose work ended by itself (not stopped by the hub) is stopped, its lock given back and one sentence
    logged; this hub takes it again only after ``ended_backoff`` (longer each time it ends again before a check
    sees it running), so another hub gets it first. Once ``stopping()`` (the hub is on its way out: its change
    watch closed, which ends every job's loop) nothing is taken, given back or said: the hub stops the jobs and
    closes the leases itself."""
    health = Health(log, f"taking {words.locks}")
    ended: dict[str, int] = {}  # name: times in a row its work ended by itself here
    not_before: dict[str, float] = {}  # name: when this hub may take it again
    loop = asyncio.get_running_loop()
    while not stopping():
        try:
            if leases.held:
                await leases.alive()  # when the connection went, the locks went with it: ``held`` is emptied
            for name, job in jobs.items():
                if job.here() and name not in leases.held:  # its lock went (with a connection taken anew too)
                    await job.stop()
                    log.warning("%s %s: this hub lost its %s and stopped %s it", words.noun, name, words.lock,
                                words.doing)  # fmt: skip
            for name, job in jobs.items():
                if job.here():
                    task = job.task()
                    if task is None or not task.done():
                        ended.pop(name, None)  # it ran through a check: the next end starts the backoff over
                        continue
                    if stopping():  # the hub is stopping: that is what ended it
                        return
                    await _give_back(leases, name, job, task, log, words, ended, not_before, ended_backoff, loop)
                    continue
                if loop.time() < not_before.get(name, 0.0):
                    await job.stand_by()
                elif await leases.take(name):
                    job.start()
                    log.info("%s %s: this hub %s it now", words.noun, name, words.does)
                else:
                    await job.stand_by()
            health.succeeded()
        except StoreError as err:
            health.failed(str(err))
        await asyncio.sleep(retry_s)


async def _give_back(
    leases: Leases,
    name: str,
    job: Job,
    task: asyncio.Task[None],
    log: logging.Logger,
    words: Words,
    ended: dict[str, int],
    not_before: dict[str, float],
    backoff: Backoff,
    loop: asyncio.AbstractEventLoop,
) -> None:
    """``name``'s work ended by itself: stop it, give its lock back, and wait a backoff before taking it again."""
    why = why_ended(task)
    await job.stop()
    ended[name] = ended.get(name, 0) + 1
    wait_s = backoff.delay_s(ended[name], random.Random())
    not_before[name] = loop.time() + wait_s
    log.error("%s %s: %s ended by itself (%s) while this hub runs; it gave its %s back for another hub (or this "
              "one, in %.0f s) to take over", words.noun, name, words.doing, why, words.lock, wait_s)  # fmt: skip
    await leases.release(name)
