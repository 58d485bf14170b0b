"""What a push connector is: set levels at a channel, read them back, list its items. Errors the pusher
understands.

A connector speaks one channel's API and nothing else: it holds no cursor and
no state beyond its session, its throttle model and how its last call went.
``push`` sets one batch of levels and returns what the channel confirmed; it
raises ``ChannelUnavailable`` when trying again later may work (timeouts, 5xx,
throttling that did not clear), ``LevelsRefused`` when the channel refused
some levels of the batch for good and applied nothing (an item that cannot be
stocked or set there: the pusher sends the rest without them), and
``ChannelRejected`` when the channel refused the request as a whole (a bad
token) and a person must act.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp

from hub.channels.levels import LevelKey
from hub.channels.mapping import ListingEntry
from hub.heartbeat import beat
from hub.storage.base import HubError
from protocol import wall_ms_now

IDEMPOTENCY_NAMESPACE = uuid.UUID("6b1f3a52-5c8e-4d8e-9a43-2f0c1d7e9b10")
# Pages in a row of one walk through a channel's cursors that bring nothing not read already (no new item, no
# new count) before the walk stops: a channel that keeps minting fresh cursors to the same page is broken, and
# would otherwise be asked for page after page up to the walk's last-resort page cap (thousands of requests).
STALE_PAGES_MAX = 3
# A walk whose channel says how many items it holds (Shopify's productVariantsCount) stops once it has read more
# than this many times the pages that count needs, plus COUNTED_PAGES_SLACK: room for items added during the walk
# and a count that lags a write, yet a channel inventing a new item for every page under fresh cursors (which
# the stale rule cannot see) is stopped after a few pages more than it has, not at the page cap.
COUNTED_PAGES_FACTOR = 2
COUNTED_PAGES_SLACK = 3
# A channel's clock read from its answers' Date header (CallRecord.peer_behind_ms): the last this many answers are
# kept, and a lag under PEER_DATE_RESOLUTION_MS (the header's second plus a trip) is taken for none.
PEER_DATES_KEPT = 16
PEER_DATE_RESOLUTION_MS = 1_500


class ChannelError(HubError):
    """Base of the channel package's errors; the message is one sentence."""


class ChannelUnavailable(ChannelError):
    """The channel did not confirm; trying the same push again later may work."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ChannelRejected(ChannelError):
    """The channel refused the request; the message says what a person must fix."""


class LevelsRefused(ChannelRejected):
    """The channel refused these levels of a batch for good and applied none of the batch.

    ``refused``: each refused level with the channel's reason (one sentence);
    the other levels of the batch may be sent again without them. ``gone``: those
    refused because the channel no longer has the item (deleted, perhaps created
    again under a new id, or its SKU moved): the channel's listing is worth
    reading again at once (``ChannelPusher``), not at the next reconciliation.
    """

    def __init__(self, message: str, refused: Mapping[LevelKey, str], gone: Iterable[LevelKey] = ()) -> None:
        super().__init__(message)
        self.refused = dict(refused)
        self.gone = frozenset(gone) & self.refused.keys()


@dataclass(frozen=True, slots=True)
class Kept:
    """A level the channel answered still holding a count of its own instead of the one pushed (Square keeps the
    count with the latest ``occurred_at``): its quantity and when it came in (wall ms, the channel's clock)."""

    quantity: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class Moved:
    """A level the channel took and then moved by changes of its own that came after the push (Square applies a sale
    rung up at a register after the pushed count's ``occurred_at`` on top of it): what was pushed, what the channel
    holds now, and how many of its changes made the difference."""

    pushed: int
    quantity: int
    changes: int


@dataclass(frozen=True, slots=True)
class Sale:
    """A sale the channel recorded (Square: an adjustment from ``IN_STOCK`` to ``SOLD``): the channel's order behind
    it, how many units, when it occurred (wall ms, the channel's ``occurred_at``) and when the channel received it
    (its ``created_at``; 0: not said); ``hub_ms``: that receipt on the hub's clock (corrected by how far the
    channel's clock is behind the hub's, ``CallRecord.peer_behind_ms``; 0: not said); ``change_id``: the channel's
    id of the sale itself (Square's adjustment). ``order_id`` is empty for a sale that names no order (Square: an
    adjustment without a ``transaction_id``, a sale without a payment)."""

    order_id: str
    units: int
    occurred_ms: int
    received_ms: int = 0
    hub_ms: int = 0
    change_id: str = ""


class Confirmed(dict[LevelKey, int]):
    """What a push confirmed (the levels the channel took, at the quantity it holds there now), and ``kept``: the
    levels of the batch it answered holding another count of its own — not applied, so not confirmed; ``moved``:
    levels it took and moved since by changes of its own after the push (confirmed at what it holds); ``skus``: the
    SKU the channel answered for the item of a level it took (Shopify), which differs from the mapped one when the
    item was renamed there; ``less``: of the levels whose sales the connector read (Shopify, ``Target.sales_from_ms``),
    the units of sales whose orders the hub has not booked it took off the quantity confirmed (None: the read
    failed, the hub's level went out)."""

    def __init__(
        self,
        confirmed: Mapping[LevelKey, int],
        kept: Mapping[LevelKey, Kept] | None = None,
        skus: Mapping[LevelKey, str] | None = None,
        moved: Mapping[LevelKey, Moved] | None = None,
        less: Mapping[LevelKey, int | None] | None = None,
    ) -> None:
        super().__init__(confirmed)
        self.kept = dict(kept or {})
        self.skus = dict(skus or {})
        self.moved = dict(moved or {})
        self.less = dict(less or {})


@dataclass(frozen=True, slots=True)
class ConnectorStatus:
    """How a connector's calls are going, for the status API (``GET /v1/channels``)."""

    connected: bool | None  # the last call was answered and the credential accepted (None: no call yet)
    last_call_ms: int | None  # when the last call ended (the hub's clock)
    throttle: dict[str, Any] | None  # the channel's rate limit as last reported (shape per kind), None if none


@dataclass(frozen=True, slots=True)
class Target:
    """One level to set: the quantity, what the channel had when last confirmed, and when it became true."""

    quantity: int
    previous: int | None  # the last quantity the channel confirmed (None: unknown, read it first)
    occurred_at_ms: int  # the hub's time of the newest change behind ``quantity``
    # Shopify: where its orders are read from to take sales the hub has not booked off ``quantity`` (the pusher's
    # ``_read_from``) when the push is answered stale, and before the first set when ``owed`` (the level's last
    # count was taken less such sales, or their read failed). None: not read (no order webhooks, never pushed).
    sales_from_ms: int | None = None
    owed: bool = False


class Connector(Protocol):
    kind: str
    readable: bool  # ``read_levels`` works (a generic webhook cannot be read back)

    async def push(self, batch: Mapping[LevelKey, Target], turn_key: str) -> dict[LevelKey, int]:
        """Set every level of ``batch``; return the quantities the channel confirmed (a ``Confirmed`` when the
        channel's answer says it kept counts of its own at some levels: those are left out).

        ``turn_key`` is stable across retries of the same unit of work (the
        channel and the cursor it starts from): with the request's content it
        makes the idempotency key, so a retried request carries the same key
        and a different request never does.
        """

    async def listing(self) -> list[ListingEntry]:
        """Every sellable item of the channel with its SKU (the product listing)."""

    async def read_levels(self, keys: Sequence[LevelKey]) -> dict[LevelKey, int | None]:
        """What the channel shows at each level now (None: the item is not stocked there)."""

    async def sold_since(
        self, shown: Mapping[LevelKey, int], counted_ms: Mapping[LevelKey, int]
    ) -> dict[LevelKey, Moved]:
        """Of the levels read back at ``shown`` (by ``read_levels``, just before), those whose quantity the channel's
        own record says is the hub's last count there (pushed with the ``occurred_at`` of ``counted_ms``) less sales
        made at the channel after it — sales whose orders may not have reached the hub yet, which the reconciler
        does not push over (``hub.channels.reconcile``). Empty when the channel keeps no such record, or it cannot
        be read (said once by the connector)."""

    async def sales_since(self, counted_ms: Mapping[LevelKey, int]) -> dict[LevelKey, list[Sale]] | None:
        """The sales the channel recorded at these levels since a little before ``counted_ms`` (the ``occurred_at``
        the hub's last count there went out with, or earlier: ``ChannelPusher._read_from``), each with the order
        behind it: the pusher takes those
        whose orders the hub has not booked off the count it pushes next (``ChannelPusher``), so the count does
        not take over a sale the hub does not know of yet. Empty when the channel keeps no such record; None
        when it cannot be read (said once by the connector)."""

    def status(self) -> ConnectorStatus:
        """Whether the last call went through, when, and the throttle state the channel last reported."""

    async def close(self) -> None: ...


class CallRecord:
    """How a connector's last call went (``Connector.status``): answered and accepted or not, and when; and how
    far the channel's clock is behind the hub's, from its answers' ``Date`` header (``peer_behind_ms``)."""

    __slots__ = ("_behind", "at_ms", "ok")

    def __init__(self) -> None:
        self.ok: bool | None = None
        self.at_ms: int | None = None
        self._behind: deque[int] = deque(maxlen=PEER_DATES_KEPT)

    def answered(self, ok: bool) -> None:
        self.ok, self.at_ms = ok, wall_ms_now()

    def dated(self, date: str | None, received_ms: int) -> None:
        """Note an answer's ``Date`` (RFC 9110 5.6.7: when the channel made it, by its clock, to the second); a missing
        or unreadable header notes nothing."""
        if not date:
            return
        try:
            at = parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            return
        if at.tzinfo is None:  # the obsolete forms carry no zone: the header is always GMT
            at = at.replace(tzinfo=UTC)
        self._behind.append(received_ms - round(at.timestamp() * 1000))

    @property
    def peer_behind_ms(self) -> int:
        """How far the channel's clock is behind the hub's, 0 unless surely more than a second. Each answer bounds it
        from above (the channel's time was at least its ``Date`` when the answer arrived), by up to a second of the
        header's rounding plus the trip: the smallest of the last answers' is kept, and under
        ``PEER_DATE_RESOLUTION_MS`` it tells nothing — stamps are then not moved for it, so pushed in a row they
        keep their order."""
        behind = min(self._behind, default=0)
        return behind if behind > PEER_DATE_RESOLUTION_MS else 0


def idempotency_key(turn_key: str, content: Any) -> str:
    """A UUID derived from the turn and the request's content: equal requests of one turn share it."""
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{turn_key}|{digest}"))


async def read_bounded(content: aiohttp.StreamReader, limit_bytes: int) -> bytes:
    """The whole body, or its first ``limit_bytes + 1`` bytes when it is longer (the caller refuses it)."""
    parts: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(64 * 1024):
        parts.append(chunk)
        size += len(chunk)
        if size > limit_bytes:
            break
    return b"".join(parts)[: limit_bytes + 1]


async def post(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    timeout_s: float,
    answer_max_bytes: int,
    last: CallRecord,
    timed_out: str,
    unreachable: str,
    json_body: Any = None,
    data: bytes | None = None,
) -> tuple[int, bytes, str | None]:
    """POST to a channel: (status, the answer's first ``answer_max_bytes``, its Retry-After). A timeout or a
    connection failure is recorded in ``last`` and raised as ChannelUnavailable with ``timed_out`` or
    ``unreachable`` (the client's error is appended to the latter). The loop making it is alive for as long as
    the request may take (``hub.heartbeat.beat``): a slow answer within ``timeout_s`` is not a stuck pusher."""
    beat(timeout_s)
    try:
        async with session.post(
            url,
            json=json_body,
            data=data,
            headers=dict(headers),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as resp:
            raw = await read_bounded(resp.content, answer_max_bytes)
            last.dated(resp.headers.get("Date"), wall_ms_now())
            return resp.status, raw, resp.headers.get("Retry-After")
    except TimeoutError:
        last.answered(False)
        raise ChannelUnavailable(timed_out) from None
    except aiohttp.ClientError as err:
        last.answered(False)
        raise ChannelUnavailable(f"{unreachable}: {err or type(err).__name__}") from err


class PageWalk:
    """One walk through a channel's page cursors: it stops, with one sentence, when ``STALE_PAGES_MAX`` pages in a
    row bring nothing not read already. A cursor that comes back is caught by each connector's own check; this
    catches a channel that gives a new cursor to every page and serves the same (or no) items under each, which
    a check on cursors alone follows until its page cap.

    Where the channel says how many items the walk holds (``expect``), the walk also stops once it has read far
    more pages than that count needs (``COUNTED_PAGES_FACTOR``, ``COUNTED_PAGES_SLACK``) at the smallest page size
    asked for: a channel inventing one new item per page under fresh cursors brings something new every time, and
    would otherwise be followed to the page cap — 10,000 requests when it shrinks its pages to one item."""

    __slots__ = ("_expected", "_pages", "_read", "_seen", "_size", "_stale")

    def __init__(self, pages: str) -> None:
        self._pages = pages  # what the pages are, for the sentence: "Square's catalog pages of channel pos"
        self._seen: set[Any] = set()
        self._stale = 0
        self._read = 0
        self._expected: tuple[int, str] | None = None  # the items the channel counts, and what they are called
        self._size: int | None = None  # the smallest page size asked for so far

    def expect(self, items: int, what: str) -> None:
        """The channel counts ``items`` in all (``what`` names them for the sentence: "variant(s) Shopify
        counts"); a walk without one is bounded by its stale rule and its page cap alone."""
        self._expected = (max(0, items), what)

    def page(self, ids: Iterable[Any], *, size: int | None = None) -> None:
        """One page read, with the ids of what it holds and the page size it was asked for (None: the channel's
        own); ChannelUnavailable when the walk must stop."""
        self._read += 1
        if size is not None and size > 0:
            self._size = size if self._size is None else min(self._size, size)
        new = set(ids) - self._seen
        self._seen |= new
        self._stale = 0 if new else self._stale + 1
        if self._stale >= STALE_PAGES_MAX:
            raise ChannelUnavailable(
                f"{self._pages} keep giving new cursors to pages with nothing not already read ({self._stale} in a "
                f"row, {self._read} page(s) in all); reading stopped there"
            )
        if self._expected is not None and self._size is not None:
            items, what = self._expected
            needed = math.ceil(items / self._size)
            if self._read > COUNTED_PAGES_FACTOR * needed + COUNTED_PAGES_SLACK:
                raise ChannelUnavailable(
                    f"{self._pages} go on far past the {items} {what} ({self._read} page(s) read where {needed} "
                    f"page(s) of {self._size} would hold them, {len(self._seen)} different item(s) seen); reading "
                    "stopped there"
                )


def page_ids(entries: Iterable[Any], *fields: str) -> list[Any]:
    """What identifies each entry of a page for ``PageWalk``: its ``fields`` (an object), or all of it (anything
    else)."""
    return [
        tuple(str(e.get(f)) for f in fields) if isinstance(e, dict) else json.dumps(e, sort_keys=True, default=str)
        for e in entries
    ]


def array(value: Any, what: str) -> list[Any]:
    """A JSON array of a channel's answer (absent or null: empty); anything else is the channel answering oddly,
    not an empty list: reading stops with ChannelUnavailable rather than taking it for "nothing" (a listing read
    as empty would unmap every item)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ChannelUnavailable(f"{what} is not a JSON array")
    return value


def short(text: str, limit: int = 200) -> str:
    """Text from a channel, cut and on one line, for a log sentence."""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"
