"""What every scanner reader shares: lifecycle, reconnect loop, availability, the scan queue.

A reader is an async context manager. Inside, one task keeps the device open:
open it, report available, wait until it goes away, report unavailable, back
off (exponential, jitter, capped) and open it again. The first failure of an
outage is logged once as a WARNING, the recovery once as INFO; the attempts in
between only at DEBUG.

A reader that says how (``_retry_while_away_s``, ``_settle_s``: a device server
reached over TCP) retries at least that often while the device cannot be
reached at all, and counts a reopened device as back only once its link has
lasted ``_settle_s``: one that takes the connection and drops it at once is
still away, and is retried on the backoff.

Frames go into one queue that ``scans()`` drains. When the consumer falls far
behind, reading from the device pauses (the kernel buffers) instead of
dropping anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import Final, Protocol, Self

from hardware.errors import HardwareError, ScannerClosed, ScannerDisconnected
from hardware.framing import Frame
from hardware.scan import ReaderStatus, Scan, wall_ms
from protocol.retry import EQUAL_JITTER, Backoff, Streak

try:
    from termios import error as _termios_error

    TERMIOS_ERRORS: tuple[type[Exception], ...] = (_termios_error,)
except ImportError:  # Windows: no termios; pyserial reports a refused port setting as an OSError or ValueError there
    TERMIOS_ERRORS = ()

log = logging.getLogger(__name__)

RECONNECT_INITIAL_S = 0.5
RECONNECT_MAX_S = 30.0
CLOSE_TIMEOUT_S = 5.0
STABLE_LINK_S = 10.0  # a link that lived this long resets the backoff
QUEUE_PAUSE_SCANS = 1000  # undelivered scans at which reading from the device pauses
QUEUE_RESUME_SCANS = 100
APPEAR_POLL_S = 0.2  # while a device path is missing, how often the wait for the next open looks for it
SHOWN_BYTES_MAX = 40  # of a cut-off scan, in its log line
CUT_OFFS_SAID_MAX = 10  # cut-off scans in a row of one reader warned of one by one; the rest only at DEBUG

StatusCallback = Callable[[ReaderStatus], None]
# What a failed open looks like: pyserial's SerialException is an OSError; ValueError and termios.error
# are settings the device refuses; HardwareError is our own (an evdev grab refused).
OPEN_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, HardwareError, *TERMIOS_ERRORS)


class Link(Protocol):
    """One open connection to a device, as a reader sees it."""

    @property
    def lost(self) -> asyncio.Future[BaseException | None]:
        """Resolves (with the cause, or None) once the device is gone and every frame is delivered."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def abort(self) -> None:
        """Close now; ``lost`` resolves once the device is released."""
        ...


def describe_error(err: BaseException | None) -> str:
    """A short reason for logs and statuses ("No such file or directory", "the device was unplugged")."""
    if err is None:
        return "the device closed the connection"
    if isinstance(err, TERMIOS_ERRORS) and len(err.args) == 2:
        return f"the port refused its line settings ({err.args[1]})"
    if isinstance(err, TimeoutError) and not str(err):
        return "it did not answer in time"
    errno_ = getattr(err, "errno", None)
    if isinstance(errno_, int) and errno_ > 0:
        return os.strerror(errno_)
    text = str(err).strip() or type(err).__name__
    if "returned no data" in text:  # pyserial's words for a tty that hung up
        return "the device was unplugged or stopped answering"
    return text.rstrip(".")


def shown_bytes(data: bytes) -> str:
    """A frame's start for a log line: quoted, control bytes escaped, cut after ``SHOWN_BYTES_MAX`` bytes."""
    text = repr(data[:SHOWN_BYTES_MAX])[1:]  # b'...' without its b
    return text + "..." if len(data) > SHOWN_BYTES_MAX else text


class ScannerReader(ABC):
    """Base of ``SerialScanner`` and ``WedgeScanner``."""

    def __init__(
        self,
        reader_id: str,
        where: str,
        *,
        reconnect_initial_s: float,
        reconnect_max_s: float,
        on_status: StatusCallback | None,
    ) -> None:
        self._reader_id: Final = reader_id
        self._where: Final = where
        self._backoff = Backoff(reconnect_initial_s, reconnect_max_s, jitter=EQUAL_JITTER)
        self._on_status = on_status
        self._status = ReaderStatus(reader_id, False, wall_ms())
        self._queue: asyncio.Queue[Scan | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._link: Link | None = None
        self._pending = 0
        self._paused = False
        self._iterating = False
        self._closed = False
        self._cut_offs_in_a_row = 0  # cut-off frames since the last complete one (the warning's rate limit)
        self._held: list[Frame] | None = None  # frames of a link not yet settled (``_settle_s``)

    # -- public -------------------------------------------------------------

    @property
    def reader_id(self) -> str:
        return self._reader_id

    @property
    def available(self) -> bool:
        return self._status.available

    @property
    def status(self) -> ReaderStatus:
        return self._status

    @property
    def pending_scans(self) -> int:
        """Scans received but not yet taken from ``scans()``."""
        return self._pending

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        """Start keeping the device open (``async with`` does this). Returns at once."""
        if self._closed:
            raise ScannerClosed(f"scanner {self._reader_id!r} is closed; create a new one")
        if self._task is not None:
            raise HardwareError(f"scanner {self._reader_id!r} is already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"scanner:{self._reader_id}")

    async def close(self) -> None:
        """Release the device. Safe to call twice; a running ``scans()`` ends after the queued scans."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), CLOSE_TIMEOUT_S)
            except asyncio.CancelledError:
                if not self._task.done():  # our caller was cancelled, not only the task
                    raise
            except TimeoutError:
                log.warning(
                    "Scanner %r on %s did not release its device within %.0f s.",
                    self._reader_id,
                    self._where,
                    CLOSE_TIMEOUT_S,
                )
        if self._status.available:
            self._set_status(False, None)
        self._queue.put_nowait(None)

    async def scans(self) -> AsyncIterator[Scan]:
        """Every scan, in order, across reconnects, until ``close()``. One consumer at a time."""
        if self._closed and self._queue.qsize() <= 1:
            raise ScannerClosed(f"scanner {self._reader_id!r} is closed; it has no more scans")
        if self._iterating:
            raise HardwareError(f"scanner {self._reader_id!r} already has a consumer of scans()")
        self._iterating = True
        try:
            while True:
                item = await self._queue.get()
                if item is None:
                    self._queue.put_nowait(None)  # a later scans() ends at once too
                    return
                self._pending -= 1
                if self._paused and self._pending <= QUEUE_RESUME_SCANS:
                    self._paused = False
                    if self._link is not None:
                        self._link.resume()
                yield item
        finally:
            self._iterating = False

    # -- for subclasses -----------------------------------------------------

    @abstractmethod
    async def _open(self) -> Link:
        """Open the device; raise (any exception) when it cannot be opened."""

    def _deliver(self, frame: Frame) -> None:
        """Queue one frame as a scan; called by links from the event loop thread."""
        if self._held is not None:  # a link not yet settled: its frames wait for its verdict
            self._held.append(frame)
            if not self._paused and self._pending + len(self._held) >= QUEUE_PAUSE_SCANS:
                self._paused = True  # the kernel keeps the rest; resumed once the queue, held ones in it, drains
                if self._link is not None:
                    self._link.pause()
            return
        if frame.complete:
            self._cut_offs_ended()
        elif frame.by_disconnect:  # at most one per link: always said, and no part of a run of noise
            log.warning(
                "Scanner %r on %s: a scan was cut off by the disconnect (%d bytes: %s); scan it again.",
                self._reader_id, self._where, len(frame.data), shown_bytes(frame.data),
            )  # fmt: skip
        else:
            self._say_cut_off(frame)
        self._queue_scan(frame.data, frame.complete, frame.by_gap)

    def _queue_scan(self, data: bytes, complete: bool, by_gap: bool = False) -> None:
        self._queue.put_nowait(Scan(self._reader_id, data, wall_ms(), complete, by_gap))
        self._pending += 1
        if not self._paused and self._pending >= QUEUE_PAUSE_SCANS:
            self._paused = True
            if self._link is not None:
                self._link.pause()

    def _say_cut_off(self, frame: Frame) -> None:
        """One WARNING per cut-off frame, up to ``CUT_OFFS_SAID_MAX`` in a row; past that one sentence says the
        rest are only at DEBUG. A scanner spewing over-long frames made a warning per frame, burying every other
        line of the log; each cut-off scan is still delivered (and journaled by the agent)."""
        self._cut_offs_in_a_row += 1
        count = self._cut_offs_in_a_row
        if count > CUT_OFFS_SAID_MAX:
            where, size = self._where, len(frame.data)
            log.debug("Scanner %r on %s delivered %d bytes as a cut-off scan.", self._reader_id, where, size)
            return
        log.warning(
            "Scanner %r on %s delivered %d bytes as a cut-off scan (the frame never ended before the device "
            "stopped, or it outgrew the frame limit and the rest of it, up to its line end, is skipped).",
            self._reader_id,
            self._where,
            len(frame.data),
        )
        if count == CUT_OFFS_SAID_MAX:
            log.warning(
                "Scanner %r on %s delivered %d cut-off scans in a row (line noise, or a scanner whose settings do "
                "not match?); further ones are not logged until it delivers a complete one.",
                self._reader_id, self._where, count,
            )  # fmt: skip

    def _cut_offs_ended(self) -> None:
        """A complete frame ends the reader's run of cut-off ones; one sentence when it was not all logged."""
        count, self._cut_offs_in_a_row = self._cut_offs_in_a_row, 0
        if count > CUT_OFFS_SAID_MAX:
            log.info(
                "Scanner %r on %s delivered a complete scan after %d cut-off scans in a row.",
                self._reader_id, self._where, count,
            )  # fmt: skip

    def _device_present(self) -> bool | None:
        """Whether the device is there to open (None: cannot tell). Subclasses with a device path say."""
        return None

    def _retry_while_away_s(self) -> float | None:
        """The longest wait between opens while the device cannot be reached (None: the backoff's). A device
        server, which only a connection tells is back, says how often it may be tried without a burden."""
        return None

    def _settle_s(self) -> float:
        """How long a reopened link must last to be back (0: at once); see ``_settle``."""
        return 0.0

    async def _settle(self, link: Link) -> bytes | None:
        """Wait until a reopened link has lasted ``_settle_s``; None when it has, else what the device sent
        before it dropped. Its frames are held (from before the open: a device server speaks as soon as it takes
        the connection); a link that drops sooner — a device server that takes each connection and closes it,
        saying why — delivers them cut off: the device's words, never a scan."""
        settled = True
        try:
            await asyncio.wait_for(asyncio.shield(link.lost), self._settle_s())
            settled = False
        except TimeoutError:
            pass
        finally:
            said = self._release_held(settled=settled)
        return None if settled else said

    def _release_held(self, *, settled: bool) -> bytes:
        """Deliver the held frames, as they came when ``settled``, else cut off; what they said."""
        held, self._held = self._held or [], None
        for frame in held:
            if settled:
                self._deliver(frame)
            else:
                self._queue_scan(frame.data, False)
        return b"\r\n".join(frame.data for frame in held)

    # -- the loop -------------------------------------------------------------

    async def _pause(self, delay_s: float) -> None:
        """Wait ``delay_s`` before the next open, or only until the device appears when it is missing now.

        After a long outage the backoff waits up to ``reconnect_max_s`` between attempts: a scanner plugged back
        in would sit unopened that long, and what was scanned meanwhile is what the driver may not keep. (The look
        runs in a worker thread: listing Windows' COM ports takes a while.)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay_s
        if await asyncio.to_thread(self._device_present) is not False:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            return
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(APPEAR_POLL_S, left))
            if await asyncio.to_thread(self._device_present):
                return

    def _set_status(self, available: bool, error: ScannerDisconnected | None) -> None:
        old = self._status
        if old.available == available and (available or old.error is not None or error is None):
            return
        self._status = ReaderStatus(self._reader_id, available, wall_ms(), error)
        if self._on_status is not None:
            try:
                self._on_status(self._status)
            except Exception:
                log.exception("The status callback of scanner %r failed.", self._reader_id)

    async def _open_shielded(self) -> Link:
        # A close() during open must not leak a device opened in a worker thread.
        opening = asyncio.ensure_future(self._open())
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_abort_late_link)
            raise

    async def _run(self) -> None:
        try:
            await self._keep_open()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # a bug, not a device problem: stop loudly rather than spin
            log.exception("Scanner %r stopped on an unexpected error.", self._reader_id)
            self._set_status(False, ScannerDisconnected(self._reader_id, self._where, f"the reader failed ({err!r})"))
            self._queue.put_nowait(None)

    async def _keep_open(self) -> None:
        """Open the device, hold it until it goes away, back off, open it again (``protocol.retry``'s schedule).

        The backoff grows over every reopening that did not last ``STABLE_LINK_S``, so a device that drops right
        after opening does not spin; the outage (``down``) is said once when it starts and once when it ends.
        While the device cannot be reached at all, opens are tried at least every ``_retry_while_away_s``; after
        a link that did not last, once too, and no more until the device is found away again: one that takes
        each connection and drops it is retried on the backoff. A link of such a reader, its first one too, is
        there once it lasted ``_settle_s``; one that drops sooner leaves the outage going on (or starts it), said
        once. A link of such a reader that lived ``STABLE_LINK_S`` and was closed by the device (a device
        server's idle timeout) is reopened at once before anything is said: taken again, it is one line at INFO,
        no outage.
        """
        attempts = 0  # waits since the last link that lasted: the backoff's exponent
        down = Streak(self._backoff)
        down_since: float | None = None  # monotonic start of the current outage, once it was logged
        connected_before = False
        early_retry = True  # whether the wait after a link that did not last may be cut to _retry_while_away_s
        refusal_said = False  # a reopened link that dropped at once was said in this outage
        unsaid: ScannerDisconnected | None = None  # a closed link not yet said: its reopening at once is under way
        while True:
            settling = self._settle_s() > 0
            if settling:
                self._held = []
            try:
                link = await self._open_shielded()
            except BaseException as err:
                self._release_held(settled=True)  # a failed open received nothing, in practice
                if not isinstance(err, OPEN_ERRORS):
                    raise
                if unsaid is not None:
                    down_since, unsaid = self._went_away(unsaid, down), None
                error = ScannerDisconnected(self._reader_id, self._where, describe_error(err))
                if down.failed(error.reason):
                    down_since = time.monotonic()
                    log.warning(
                        "Scanner %r cannot open %s (%s); retrying in the background.",
                        self._reader_id,
                        self._where,
                        error.reason,
                    )
                else:
                    log.debug("Scanner %r still cannot open %s: %s", self._reader_id, self._where, error.reason)
                self._set_status(False, error)
                attempts += 1
                early_retry = True  # away: it may be back any moment
                await self._pause(self._retry_delay_s(attempts, early=True))
                continue

            self._link = link
            if self._paused:
                link.pause()
            try:
                refused = await self._settle(link) if settling else None
                if refused is not None and unsaid is not None:
                    down_since, unsaid = self._went_away(unsaid, down), None
                if refused is not None:
                    reason = describe_error(link.lost.result())
                    said = (
                        f", sending {shown_bytes(refused)}, which is delivered cut off, not as a scan"
                        if refused
                        else ""
                    )
                    log.log(
                        logging.DEBUG if refusal_said else logging.WARNING,
                        "Scanner %r on %s took the connection and closed it again at once (%s)%s; retrying on the "
                        "backoff (does another client hold its port?).",
                        self._reader_id, self._where, reason, said,
                    )  # fmt: skip
                    refusal_said = True
                    if down_since is None:  # its first connection: the outage starts here, and the status says why
                        down_since = time.monotonic()
                    down.failed(reason)
                    why = f"it took the connection and closed it again at once ({reason})"
                    self._set_status(False, ScannerDisconnected(self._reader_id, self._where, why))
                    attempts += 1
                    early_retry = False  # it is there and drops each connection: not every second
                    await self._pause(self._retry_delay_s(attempts, early=False))
                    continue
                down.succeeded()  # said below, with how long the outage lasted
                if unsaid is not None:
                    log.info(
                        "Scanner %r on %s closed the connection (%s); a new one was taken at once.",
                        self._reader_id, self._where, unsaid.reason,
                    )  # fmt: skip
                    unsaid = None
                elif down_since is not None and connected_before:
                    log.warning(
                        "Scanner %r is back on %s after %.1f s; a scan made while it was away or coming back may"
                        " have been lost, so scan again what was scanned then.",
                        self._reader_id,
                        self._where,
                        time.monotonic() - down_since,
                    )
                elif down_since is not None:
                    log.info(
                        "Scanner %r opened %s after %.1f s of retries.",
                        self._reader_id,
                        self._where,
                        time.monotonic() - down_since,
                    )
                else:
                    log.info("Scanner %r opened %s.", self._reader_id, self._where)
                connected_before = True
                down_since = None
                refusal_said = False
                opened_at = time.monotonic()
                self._set_status(True, None)
                cause = await asyncio.shield(link.lost)
            except asyncio.CancelledError:
                if not link.lost.done():
                    link.abort()
                    await asyncio.wait_for(asyncio.shield(link.lost), CLOSE_TIMEOUT_S)
                raise
            finally:
                self._link = None
            error = ScannerDisconnected(self._reader_id, self._where, describe_error(cause))
            stable = time.monotonic() - opened_at >= STABLE_LINK_S
            if stable and cause is None and self._settle_s() > 0:
                unsaid = error  # closed by the device after a long while: said only if the reopening fails
            else:
                down_since = self._went_away(error, down)
            if stable:
                attempts = 0  # a healthy link: try again at once, from the start of the backoff
                early_retry = True
            else:  # a device that drops right after opening must not spin
                attempts += 1
                await self._pause(self._retry_delay_s(attempts, early=early_retry))
                early_retry = False  # once; again only when an open finds it away

    def _went_away(self, error: ScannerDisconnected, down: Streak) -> float:
        """Say that the device went away, once, and report it unavailable; the outage's start (monotonic)."""
        down.failed(error.reason)  # news, always: said here in its own words
        log.warning(
            "Scanner %r on %s went away (%s); scans made until it returns may be lost; reconnecting.",
            self._reader_id,
            self._where,
            error.reason,
        )
        self._set_status(False, error)
        return time.monotonic()

    def _retry_delay_s(self, attempts: int, *, early: bool) -> float:
        """The backoff's wait after ``attempts``, cut to ``_retry_while_away_s`` when ``early``."""
        delay_s = self._backoff.delay_s(attempts)
        every_s = self._retry_while_away_s()
        return min(delay_s, every_s) if early and every_s is not None else delay_s


def _abort_late_link(opening: asyncio.Future[Link]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().abort()
