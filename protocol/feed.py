"""The change feed as both sides speak it: the route, its query and answer fields, and a strict page reader.

The hub serves ``GET /v1/changes`` (``hub.feed``); a store agent follows it for
its own location to keep its count cache current (``agent.feed``). A page is a
JSON object ``{"changes": [...], "cursor": "<id>", "more": bool}``; each change
holds a (location, sku)'s counts **after** its commit, so applying one twice is
harmless. ``change_id`` orders changes in commit order, the same numbering as
the ``change_id`` a sync answer carries (``protocol.codec.SyncResponse``).

A cursor is ``<change_id>.<history>``: the history names the hub database's
numbering of its changes, new when the database was restored from a backup,
copied or moved. A cursor of another history is answered ``410``: the changes
after it are not the ones its reader saw (another hub, a staging copy of
production). The decimal ``change_id`` alone is the older form, which a hub
answers in that form and judges only by whether it is ahead of its feed.

After the history (``FEED_HISTORY_CHARS`` hex digits) a hub also names the
cursor's change: ``CHANGE_CHECK_CHARS`` hex digits of a digest of change
``change_id`` as it holds it (``hub.feed.change_check``). A restore that keeps
the history (a directory snapshot put back with its side file, a physical
copy of a PostgreSQL cluster) numbers other changes under the same ids: the
hub then no longer holds that change and answers ``410`` as for another
history. To a reader the part after the dot is one opaque token; only an agent
learning the history alone for a cursor stored in the older form
(``feed_history``) looks inside it. A history without a change named is still
taken, as hubs gave it out before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol import routes, values
from protocol.errors import ProtocolError

CHANGES_PATH = routes.CHANGES_PATH
# query parameters
CURSOR_PARAM = "cursor"
LIMIT_PARAM = "limit"
WAIT_PARAM = "wait"
LOCATION_PARAM = "location"
SKU_PARAM = "sku"
# answer fields
CHANGES_FIELD = "changes"
CURSOR_FIELD = "cursor"
MORE_FIELD = "more"
# a change's fields
CHANGE_ID = "change_id"
LOCATION = "location"
SKU = "sku"
ON_HAND = "on_hand"
RESERVED = "reserved"
AVAILABLE = "available"
IN_TRANSIT = "in_transit"
EVENT_IDS = "event_ids"
AT_MS = "at_ms"

CHANGES_LIMIT_MAX = 5_000  # the most changes one page holds
WAIT_MAX_S = 60.0  # the longest a long-poll waits
CURSOR_MAX = (1 << 63) - 1
HISTORY_SEP = "."
HISTORY_CHARS = frozenset("0123456789abcdef")
HISTORY_MAX_CHARS = 32
FEED_HISTORY_CHARS = 12  # a hub's feed history (hub.storage.feed.FEED_HISTORY_BYTES)
CHANGE_CHECK_CHARS = 8  # the digest of the cursor's change that follows it
COUNT_ABS_MAX = 1 << 62  # counts are 64-bit on both backends


@dataclass(frozen=True, slots=True)
class FeedChange:
    """One change of a (location, sku)'s counts: the values after the commit numbered ``change_id``."""

    change_id: int
    location: str
    sku: str
    on_hand: int
    reserved: int
    available: int
    in_transit: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class FeedPage:
    changes: tuple[FeedChange, ...]
    cursor: int  # resume after this
    more: bool  # a full page: ask again at once
    history: str | None = None  # the cursor's part after the dot: its history (and change); None: the older form

    def cursor_text(self) -> str:
        """The cursor as the hub gave it out."""
        return cursor_text(self.cursor, self.history)


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(f"must be a whole number from {lo} to {hi}", field=name)
    return value


def parse_cursor(value: Any, name: str = CURSOR_FIELD) -> int:
    """The change id of a cursor as the hub gives it out (0: the start); its history is ``read_cursor``'s."""
    return read_cursor(value, name)[0]


def read_cursor(value: Any, name: str = CURSOR_FIELD) -> tuple[int, str | None]:
    """A cursor as the hub gives it out: (change id, feed history), the history None in the older form."""
    number, sep, history = value.partition(HISTORY_SEP) if isinstance(value, str) else ("", "", "")
    if not number.isascii() or not number.isdigit() or len(number) > 19:
        raise ProtocolError("must be a cursor: a whole number in decimal text, then its history", field=name)
    if sep and not (0 < len(history) <= HISTORY_MAX_CHARS and set(history) <= HISTORY_CHARS):
        raise ProtocolError(f"must be a cursor: its history is at most {HISTORY_MAX_CHARS} hex digits", field=name)
    return _int(int(number), name, 0, CURSOR_MAX), history if sep else None


def split_history(token: str) -> tuple[str, str | None]:
    """A cursor's part after the dot as (the feed history, the check naming its change or None)."""
    if len(token) == FEED_HISTORY_CHARS + CHANGE_CHECK_CHARS:
        return token[:FEED_HISTORY_CHARS], token[FEED_HISTORY_CHARS:]
    return token, None


def feed_history(token: str) -> str:
    """The feed history alone of a cursor's part after the dot (without the check naming its change)."""
    return split_history(token)[0]


def cursor_text(change_id: int, history: str | None) -> str:
    """A cursor to send: ``<change_id>.<history>``, or the older form when the history is unknown."""
    return str(change_id) if history is None else f"{change_id}{HISTORY_SEP}{history}"


def decode_change(obj: Any, name: str = "change") -> FeedChange:
    if not isinstance(obj, Mapping):
        raise ProtocolError("must be an object", field=name)
    return FeedChange(
        change_id=_int(obj.get(CHANGE_ID), f"{name}.{CHANGE_ID}", 1, CURSOR_MAX),
        location=values.LOCATION.check(obj.get(LOCATION), f"{name}.{LOCATION}"),
        sku=values.SKU.check(obj.get(SKU), f"{name}.{SKU}", stored=True),  # a change of a SKU stored before the dot rule
        on_hand=_int(obj.get(ON_HAND), f"{name}.{ON_HAND}", -COUNT_ABS_MAX, COUNT_ABS_MAX),
        reserved=_int(obj.get(RESERVED), f"{name}.{RESERVED}", -COUNT_ABS_MAX, COUNT_ABS_MAX),
        available=_int(obj.get(AVAILABLE), f"{name}.{AVAILABLE}", -COUNT_ABS_MAX, COUNT_ABS_MAX),
        in_transit=_int(obj.get(IN_TRANSIT), f"{name}.{IN_TRANSIT}", -COUNT_ABS_MAX, COUNT_ABS_MAX),
        at_ms=_int(obj.get(AT_MS), f"{name}.{AT_MS}", 0, CURSOR_MAX),
    )


def decode_page(obj: Any, after: int, limit: int = CHANGES_LIMIT_MAX) -> FeedPage:
    """A page read after cursor ``after`` asking for at most ``limit``: every change checked, in strictly
    increasing ``change_id`` order after ``after``, the cursor not behind the last change; else ``ProtocolError``."""
    if not isinstance(obj, Mapping):
        raise ProtocolError("a change feed page must be a JSON object", field="page")
    raw = obj.get(CHANGES_FIELD)
    if not isinstance(raw, list) or len(raw) > limit:
        raise ProtocolError(f"must be a list of at most {limit} changes", field=CHANGES_FIELD)
    changes = tuple(decode_change(item, f"{CHANGES_FIELD}[{i}]") for i, item in enumerate(raw))
    previous = after
    for change in changes:
        if change.change_id <= previous:
            raise ProtocolError(f"change ids must increase after the cursor {after}", field=CHANGES_FIELD)
        previous = change.change_id
    cursor, history = read_cursor(obj.get(CURSOR_FIELD))
    if cursor < previous:
        raise ProtocolError(f"the cursor {cursor} is behind the page's last change {previous}", field=CURSOR_FIELD)
    more = obj.get(MORE_FIELD)
    if not isinstance(more, bool):
        raise ProtocolError("must be true or false", field=MORE_FIELD)
    return FeedPage(changes, cursor, more, history)
