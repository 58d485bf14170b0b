"""At most so many catch-up batches at once in this hub process; the next few wait in line, the rest are asked to
come back shortly.

After a regional outage, dozens of agents each send 10,000-event batches, two at a time. Taken all at once,
their bodies are decoded together (seconds of the event loop, during which ``/healthz`` and every read wait: a
load balancer's check timed out) and queue for the database together (on PostgreSQL they take every pooled
connection, and a live store's sale or a health check finds none within 5 s). One store's catch-up needs two at
a time; the writer or the database takes one after the other anyway.

So a sync whose body is bigger than ``CATCHUP_BODY_BYTES`` (an agent's 1,000-event batch is ~69 KiB, its
10,000-event catch-up batch ~690 KiB) holds a slot to its answer. With ``CATCHUP_SLOTS`` running, the next
batch waits in line (first come, first served) for a slot, up to ``CATCHUP_QUEUE`` of them and at most
``QUEUE_WAIT_S``: a slot goes to the next in line the moment a batch is answered, where a refused batch would
leave it idle until its agent sent it again. Past the line, past that wait, or past ``PER_AGENT_BATCHES`` of one
agent's batches (running or waiting: an agent's pipeline is two, and one broken or hostile agent must not take
every slot and place in line), it is answered ``429`` with ``Retry-After``, the seconds the line ahead takes to
clear as last measured (at least 1; a slot's hold is measured from its batch's body having come to its answer,
so one store's slow uplink does not make the others wait longer, ``Slot``), and the agent waits that long (and a
random part more) and sends it again (agent/replicator.py). Small syncs, reads and health checks never wait for
a slot. Slots live in this hub process: several hubs sharing one PostgreSQL database each keep their own.

When the slot is taken depends on how the batch is sent:

- **With ``Expect: 100-continue``** (an agent sends its catch-up batches so) the hub decides from the request's
  head, before a byte of the body is sent (``hub.heads.expect``): a known agent's batch whose
  ``Content-Length`` is over ``CATCHUP_BODY_BYTES`` takes its slot, or waits in line for one, before the hub
  answers ``100 Continue``, or is answered ``429`` at once and its connection closed, its body never uploaded.
  A waiting batch's body is not held in the hub meanwhile, and one still waiting when the hub starts draining
  is answered ``503`` then (``leave``), not once it is handed a slot. The same head, any sync's, is refused
  what the middlewares and the route would refuse after the upload (a draining hub's ``503``; an unknown,
  revoked or malformed credential's ``401``; the rate limit's ``429``; a compressed body's or one not msgpack's
  ``415``; one over ``max_body_bytes``'s ``413``; a credential not an agent's ``403``: ``hub.heads.expect``).
  It holds its slot while its body arrives for ``upload_deadline_s`` (its Content-Length at
  ``UPLOAD_MIN_BYTES_PER_S``, at least ``UPLOAD_MIN_S``): a body slower than that gives its slot to the next
  batch in line and is read on, within ``body_timeout_s`` as any, and takes a slot again once it has come, as
  one sent without ``Expect``. So a store on a slow uplink still gets its batch through, where a ``408`` would
  have it send the same batch again and again, and a client that asks and then trickles its body holds no slot
  past that deadline.
- **Without it** (an agent from before, any other client) the body is read first, whole, within
  ``body_timeout_s`` (``body_middleware``), and the slot is taken after it arrived. Its size is the bytes that
  came, so a body sent chunked, without a Content-Length, is judged as one that announced it; a client that
  announces a big body and sends it slowly, or never, holds no slot while it does; and a batch that waits or is
  refused was uploaded whole first (up to ``CATCHUP_QUEUE`` bodies held while they wait).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web

from protocol.retry import retry_after_value
from protocol.routes import SYNC_CATCHUP_BYTES

CATCHUP_BODY_BYTES = SYNC_CATCHUP_BYTES  # above: a catch-up batch (thousands of events)
CATCHUP_SLOTS = 4  # two stores' pipelines: enough to keep one writer (or a few connections) busy
CATCHUP_QUEUE = 12  # six more stores' pipelines wait in line, their bodies (~690 KiB each) held meanwhile
QUEUE_WAIT_S = 10.0  # a third of an agent's request timeout (agent/replicator.py TIMEOUT_S): answered well before it
PER_AGENT_BATCHES = 2  # an agent's pipeline (agent/replicator.py): running or waiting
RETRY_AFTER_S = 1.0  # the least a refused batch is asked to wait
HOLD_S_FIRST = 1.0  # a slot's hold before any was measured: a 10,000-event batch under load
HOLD_WEIGHT = 0.2  # the newest hold's share of the running mean
# A batch given its slot from its head (Expect: 100-continue) holds it while its body uploads for at most its
# Content-Length at this rate (512 kbit/s: a 10,000-event batch ~11 s), and at least UPLOAD_MIN_S; slower, the slot
# goes to the next in line, and the body, read on within body_timeout_s, takes a slot again once it has come.
UPLOAD_MIN_BYTES_PER_S = 64 * 1024
UPLOAD_MIN_S = 5.0  # a far link's round trips and slow start, for a body just over CATCHUP_BODY_BYTES


class CatchUpSlots:
    """The catch-up batches this hub process is working on, and those waiting for a slot. Every count is changed
    with no await between its check and its change, so the caps hold exactly on the one event loop."""

    def __init__(
        self,
        total: int = CATCHUP_SLOTS,
        queue_max: int = CATCHUP_QUEUE,
        per_agent: int = PER_AGENT_BATCHES,
        wait_s: float = QUEUE_WAIT_S,
    ) -> None:
        self.total = total
        self.queue_max = queue_max
        self.per_agent = per_agent
        self.wait_s = wait_s
        self.running = 0
        self.waited = 0  # batches that waited in line, since the start
        self.refused = 0  # … and that were answered 429
        self.hold_s = HOLD_S_FIRST  # a slot's mean hold, as measured
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()
        self._agents: collections.Counter[str] = collections.Counter()  # batches running or waiting, per agent

    @property
    def waiting(self) -> int:
        return len(self._line)

    @contextlib.asynccontextmanager
    async def take(self, agent_id: str, body_bytes: int) -> AsyncIterator[None]:
        """Hold a slot for the block if ``body_bytes`` are a catch-up batch's (``reserve``), its body here."""
        slot = await self.reserve(agent_id, body_bytes)
        if slot is not None:
            slot.working()
        try:
            yield
        finally:
            if slot is not None:
                slot.release()

    async def reserve(self, agent_id: str, body_bytes: int, leave: asyncio.Event | None = None) -> Slot | None:
        """A slot if ``body_bytes`` are a catch-up batch's (None: they are not), waiting in line for one if need
        be; a 429 (with Retry-After) when this agent has its share already, the line is full or the wait too long;
        ``LeftLine`` once ``leave`` is set while the batch waits (the hub drains: hub.app._take_slot). The caller
        says when the batch's work begins (``Slot.working``: its body has come) and gives the slot back
        (``Slot.release``) once the batch is answered, whatever became of it."""
        if body_bytes <= CATCHUP_BODY_BYTES:
            return None
        if self._agents[agent_id] >= self.per_agent:
            retry_after = self._retry_after()
            raise self._refuse(
                f"the hub holds {self._agents[agent_id]} catch-up batches of {agent_id} already; send this one "
                f"again in {retry_after} s",
                retry_after,
            )
        self._agents[agent_id] += 1
        try:
            await self._enter(agent_id, leave)
        except BaseException:
            self._forget(agent_id)
            raise
        return Slot(self, agent_id)

    def _given_back(self, agent_id: str, held_s: float | None) -> None:
        if held_s is not None:  # a batch worked on: how long the next in line waits for its slot
            self.hold_s += HOLD_WEIGHT * (held_s - self.hold_s)
        self._leave()
        self._forget(agent_id)

    def _forget(self, agent_id: str) -> None:
        self._agents[agent_id] -= 1
        if not self._agents[agent_id]:
            del self._agents[agent_id]

    async def _enter(self, agent_id: str, leave: asyncio.Event | None) -> None:
        if self.running < self.total and not self._line:
            self.running += 1
            return
        if len(self._line) >= self.queue_max:
            retry_after = self._retry_after()
            raise self._refuse(
                f"the hub is committing {self.running} catch-up batches and {len(self._line)} more wait; "
                f"{agent_id}, send this one again in {retry_after} s",
                retry_after,
            )
        turn = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        self.waited += 1
        try:
            async with asyncio.timeout(self.wait_s):
                await _turn(turn, leave)  # _leave hands its slot over: ``running`` counts this batch already
        except TimeoutError:
            if turn.done() and not turn.cancelled():
                return  # handed a slot just as the wait ran out: take it
            self._drop(turn)
            retry_after = self._retry_after()
            raise self._refuse(
                f"no catch-up slot came free within {self.wait_s:g} s; {agent_id}, send this one again in "
                f"{retry_after} s",
                retry_after,
            ) from None
        except BaseException:  # cancelled (the hub is stopping), or left: a slot handed over meanwhile goes on
            if turn.done() and not turn.cancelled():
                self._leave()
            else:
                self._drop(turn)
            raise

    def _leave(self) -> None:
        """Hand this slot to the next batch in line, or free it."""
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1

    def _drop(self, turn: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            self._line.remove(turn)

    def _retry_after(self) -> str:
        """Retry-After: how long the batches running and waiting take to clear, as last measured (at least 1 s)."""
        rounds = (self.running + len(self._line)) / max(1, self.total)
        return retry_after_value(max(RETRY_AFTER_S, rounds * self.hold_s))

    def _refuse(self, message: str, retry_after: str) -> web.HTTPTooManyRequests:
        self.refused += 1
        return web.HTTPTooManyRequests(text=message, headers={"Retry-After": retry_after})


class LeftLine(Exception):
    """A batch waiting in line left it, handed no slot, as its caller asked (``CatchUpSlots.reserve``'s ``leave``)."""


async def _turn(turn: asyncio.Future[None], leave: asyncio.Event | None) -> None:
    """Until ``turn`` is handed a slot; ``LeftLine`` if ``leave`` is set first (``turn`` is left as it is)."""
    if leave is None:
        await turn
        return
    left = asyncio.ensure_future(leave.wait())
    try:
        await asyncio.wait((turn, left), return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if not turn.done():
        raise LeftLine


class Slot:
    """A catch-up batch's slot, from when it was taken until ``release`` gives it back (once; again is a no-op).

    Its hold counts in the mean behind Retry-After (``CatchUpSlots.hold_s``) from ``working`` (the body has come)
    to ``release``: a slot taken from a request's head waits for its body first, and one store's slow uplink says
    nothing of how soon the line ahead of the others clears (it holds its slot ``upload_deadline_s`` at most). A
    slot given back before its batch's work began is not counted."""

    __slots__ = ("_slots", "_working_since", "agent_id", "released")

    def __init__(self, slots: CatchUpSlots, agent_id: str) -> None:
        self._slots = slots
        self.agent_id = agent_id
        self._working_since: float | None = None
        self.released = False

    def working(self) -> None:
        """The batch's body has come and the hub works on it: its hold counts from now (once)."""
        if self._working_since is None and not self.released:
            self._working_since = time.monotonic()

    def release(self) -> None:
        """Give the slot to the next batch in line, or free it."""
        if not self.released:
            self.released = True
            since = self._working_since
            self._slots._given_back(self.agent_id, None if since is None else time.monotonic() - since)


def upload_deadline_s(body_bytes: int) -> float:
    """How long a batch of ``body_bytes`` holds the slot it took from its head while its body uploads."""
    return max(UPLOAD_MIN_S, body_bytes / UPLOAD_MIN_BYTES_PER_S)


SLOTS_KEY = web.AppKey("catchup_slots", CatchUpSlots)
SLOT_KEY = web.RequestKey("catchup_slot", Slot)  # a sync's slot, taken from its head before its body came


def setup(app: web.Application, slots: int = CATCHUP_SLOTS) -> None:
    app[SLOTS_KEY] = CatchUpSlots(total=slots)
