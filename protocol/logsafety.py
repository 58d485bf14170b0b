"""What a shelfsync log may hold when the process faces peers it cannot trust (the hub on the open
internet, a store agent's local API on the store network).

Two guards:

- ``RepeatLog`` turns a flood of one kind of refusal (malformed requests,
  unknown credentials, connections cut for being slow) into one line per
  interval with a count: ``refused 1,234 malformed requests in the last 60 s,
  last from 127.0.0.1: …``. The first one after a quiet interval is logged at
  once; never a traceback.
- ``SecretFilter`` is the last line of defence on the log handlers: it masks a
  bearer token, a URL's userinfo password and any literal secret it was given
  (the database password) in every record, its arguments and its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

DEFAULT_INTERVAL_S = 60.0
DETAIL_MAX_CHARS = 120
MASK = "***"

_BEARER_RE = re.compile(r"(?i)\b(bearer|basic|token)(\s+|=)[^\s,;'\"]+")
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^@\s/]*@")
_SECRET_MIN_CHARS = 4  # shorter literals would mask ordinary words


def one_line(text: str, limit: int = DETAIL_MAX_CHARS) -> str:
    """``text`` as a safe log fragment: its first line, printable, at most ``limit`` characters."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    clean = "".join(c if c.isprintable() else "?" for c in first)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


class RepeatLog:
    """One log line per ``interval_s`` for a thing that may happen thousands of times a second.

    ``record(remote, detail)`` counts one occurrence; the count is logged as
    ``"<verb> <n> <noun> in the last <interval> s, last from <remote>: <detail>"``
    at most once per interval (the first one of a quiet spell at once, the rest
    when the interval is over, by a timer on the running loop).
    """

    def __init__(
        self,
        logger: logging.Logger,
        verb: str,
        noun: str,
        *,
        level: int = logging.INFO,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        singular, _, plural = noun.partition("|")
        self._logger = logger
        self._verb = verb
        self._singular, self._plural = singular, plural or singular + "s"
        self._level = level
        self.interval_s = interval_s
        self._clock_s = clock_s
        self._pending = 0
        self._last: tuple[str, str] = ("", "")
        self._emitted_s: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.total = 0  # every occurrence since start, logged or still pending

    def record(self, remote: str | None, detail: str = "", exc: BaseException | None = None) -> bool:
        """Count one; True when it was logged at once (the first of a quiet spell, with ``exc``'s traceback)."""
        self.total += 1
        self._pending += 1
        self._last = (remote or "an unknown address", one_line(detail))
        now_s = self._clock_s()
        if self._emitted_s is None or now_s - self._emitted_s >= self.interval_s:
            self.flush(exc)
            return True
        if self._timer is None:
            self._schedule(self._emitted_s + self.interval_s - now_s)
        return False

    def flush(self, exc: BaseException | None = None) -> None:
        """Log what is pending now (a no-op when nothing is)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        remote, detail = self._last
        count, self._pending = self._pending, 0
        now_s = self._clock_s()
        span_s = self.interval_s if self._emitted_s is None else min(self.interval_s, now_s - self._emitted_s)
        self._emitted_s = now_s
        what = self._singular if count == 1 else self._plural
        tail = f": {detail}" if detail else ""
        self._logger.log(
            self._level,
            "%s %s %s in the last %s s, last from %s%s",
            self._verb, f"{count:,}", what, f"{max(1.0, span_s):.0f}", remote, tail, exc_info=exc,
        )  # fmt: skip

    def _schedule(self, delay_s: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a unit test with its own clock): the next record or flush() logs it
            return
        self._timer = loop.call_later(max(0.0, delay_s), self.flush, None)


class SecretFilter(logging.Filter):
    """Masks secrets in every record that passes a handler: tokens, URL passwords, given literals."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._literals = sorted({s for s in secrets if len(s) >= _SECRET_MIN_CHARS}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._literals:
            text = text.replace(secret, MASK)
        text = _USERINFO_RE.sub(rf"\1:{MASK}@", text)
        return _BEARER_RE.sub(rf"\1\2{MASK}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 -- a malformed call to the logger: keep its raw text, still masked
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


@contextmanager
def secrets_masked(secrets: Iterable[str] = ()) -> Iterator[SecretFilter]:
    """Mask secrets on every handler of the root logger (and the last-resort one) while the block runs."""
    secret_filter = SecretFilter(secrets)
    handlers = list(logging.getLogger().handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        handler.addFilter(secret_filter)
    try:
        yield secret_filter
    finally:
        for handler in handlers:
            handler.removeFilter(secret_filter)
