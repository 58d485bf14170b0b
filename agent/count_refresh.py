"""Reading again from the hub the counts the cache holds without some of this store's acknowledged movements.

``agent.counts`` marks a key *due* when the acknowledged mark moves past movements of it whose counts no answer
brought: a batch's answer was lost (the hub booked it) and the handshake after it finds the hub's mark past the
batch, or the agent restarted while a full disk kept those answers' counts only in memory. Until then the local
count adds those movements to the hub's count held here, as it adds pending ones, and says so (``stale_events``).
The replicator then reads the keys' counts from the hub, between its syncs, with ``GET /v1/counts`` (any
credential may read it), and stores them (``CountCache.store_read``):

- a few SKUs of a location (at most ``FEW_KEYS``): one request each, ``?location=…&sku=…``;
- more: the location's counts, ``?location=…``, ``PAGE_LIMIT`` a page, until none of its due SKUs is left to
  read or the last page is read (a due SKU the hub has no count for, its movements all held or refused there,
  is then no longer due). However many movements the mark passed (a catch-up of a million), this is one row a
  key in the outbox and one page in memory; the pages stop at the last due SKU found.

Only keys with nothing pending are read: the hub may already hold a pending movement whose answer is on its way,
and it would count twice; the answer to that movement carries the key's count anyway. What was read is stored
only if the acknowledged mark did not move meanwhile. A failure (the hub unreachable, its read budget spent, a
5xx, an answer that is not the hub's) leaves the keys due; the replicator tries again after a backoff.
"""

from __future__ import annotations

import email.utils
import logging
from typing import TYPE_CHECKING, Any

import aiohttp

from agent.errors import AgentError
from agent.hub_loop import FOLLOW_REDIRECTS, AnswerTooLarge, broken, not_a_hubs_json, not_the_hubs, read_answer
from agent.huberrors import error_message
from protocol import CountSnapshot
from protocol.hlc import wall_ms_now
from protocol.values import loads_json

if TYPE_CHECKING:
    from agent.outbox import Outbox

log = logging.getLogger(__name__)

FEW_KEYS = 10  # due SKUs of a location read one request each; more: the location's counts, page by page
PAGE_LIMIT = 5_000  # counts a page (the hub takes up to 10,000)
COUNT_MAX_BYTES = 1_024  # a count's JSON: a 64-character SKU escaped, a location, six numbers, two times
COUNTS_PATH = "/v1/counts"
PAGE_FIELDS = ("counts", "next")


class RefreshFailed(AgentError):
    """The hub's counts could not be read; the message is one sentence."""


async def refresh_due(outbox: Outbox, session: aiohttp.ClientSession, hub_url: str, token: str) -> bool:
    """Read and store the counts of the keys due now. True when every one that can be read was (keys with
    pending movements wait for their answer); False when the mark moved meanwhile (read again later)."""
    url = hub_url.rstrip("/") + COUNTS_PATH
    for location in await outbox.counts.due_locations():
        acked, few = await outbox.counts.due_keys(location, FEW_KEYS + 1)
        if not few:
            continue
        if len(few) <= FEW_KEYS:
            for sku in few:
                counts, _, as_of_ms = await _page(session, url, token, {"location": location, "sku": sku, "limit": "1"})
                missing = [] if any(c.sku == sku for c in counts) else [sku]
                stored = await outbox.counts.store_read(
                    location, counts, acked_seq=acked, as_of_ms=as_of_ms, missing=missing
                )
                if stored is None:
                    return False
            log.debug("Read the hub's counts of %d SKU(s) at %s again.", len(few), location)
            continue
        cursor: str | None = None
        pages = 0
        while True:
            params = {"location": location, "limit": str(PAGE_LIMIT)}
            if cursor is not None:
                params["cursor"] = cursor
            counts, cursor, as_of_ms = await _page(session, url, token, params)
            pages += 1
            left = await outbox.counts.store_read(
                location, counts, acked_seq=acked, as_of_ms=as_of_ms, missing=None if cursor is None else ()
            )
            if left is None:
                return False
            if left == 0 or cursor is None:
                break
        log.info(
            "Read the hub's counts at %s again (%d page(s)) for the SKUs whose answers were lost.", location, pages
        )
    return True


async def _page(
    session: aiohttp.ClientSession, url: str, token: str, params: dict[str, str]
) -> tuple[list[CountSnapshot], str | None, int]:
    """One page of ``GET /v1/counts``: its counts, its ``next`` cursor, and the hub's time of the answer (ms)."""
    limit = int(params["limit"])
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    try:
        async with session.get(url, params=params, headers=headers, allow_redirects=FOLLOW_REDIRECTS) as http:
            body = await read_answer(http, limit * COUNT_MAX_BYTES + 4_096, "counts page")
            status, content_type, date = http.status, http.headers.get("Content-Type", ""), http.headers.get("Date")
    except AnswerTooLarge as err:
        raise RefreshFailed(str(err)) from err
    except TimeoutError:
        raise RefreshFailed(f"the hub at {url} did not answer in time") from None
    except aiohttp.ClientError as err:
        raise RefreshFailed(f"the counts at {url} could not be read ({broken(err)})") from err
    if (foreign := not_the_hubs(url, status, content_type, body, "application/json")) is not None:
        raise RefreshFailed(foreign)
    if status != 200:
        raise RefreshFailed(f"the hub answered HTTP {status} to {url} ({error_message(body)})")
    try:
        data = loads_json(body)
        if (foreign := not_a_hubs_json(url, data, PAGE_FIELDS)) is not None:
            raise RefreshFailed(foreign)
        counts = [_count(row) for row in data["counts"]]
        cursor = data["next"]
        if cursor is not None and not isinstance(cursor, str):
            raise ValueError("next is not a cursor")
    except (ValueError, KeyError, TypeError) as err:
        raise RefreshFailed(f"the hub's counts page could not be read ({err})") from err
    return counts, cursor, _hub_ms(date)


def _count(row: Any) -> CountSnapshot:
    numbers = [row[k] for k in ("on_hand", "reserved", "available", "in_transit")]
    if not (isinstance(row["location"], str) and isinstance(row["sku"], str)) or not all(
        isinstance(n, int) and not isinstance(n, bool) for n in numbers
    ):
        raise ValueError("a count is not a location, a SKU and four whole numbers")
    return CountSnapshot(row["location"], row["sku"], *numbers)


def _hub_ms(date: str | None) -> int:
    """The hub's clock when it answered, from its ``Date`` header (whole seconds), else this machine's."""
    if date:
        try:
            return int(email.utils.parsedate_to_datetime(date).timestamp() * 1000)
        except (TypeError, ValueError, OverflowError):
            pass
    return wall_ms_now()
