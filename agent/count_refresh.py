"""Reading again from the hub the counts the cache holds without some of this store's acknowledged movements.

``agent.counts`` marks a key *due* when the acknowledged mark moves past movements of it whose counts no answer
brought: a batch's answer was lost (the hub booked it) and the handshake after it finds the hub's mark past the
batch, or the agent restarted while a full disk kept those answers' counts only in memory. Until then the local
count adds those movements to the hub's count held here, as it adds pending ones, and says so (``stale_events``).
The replicator then reads the keys' counts from the hub, between its syncs, with ``GET /v1/counts`` (any
credential may read it), and stores them (``CountCache.store_read``):

- the location's due SKUs a chunk at a time, ``?location=…&sku=…&sku=…`` (API 1.10: at most ``SKUS_PER_REQUEST``
  SKUs, and no more than ``QUERY_MAX_BYTES`` of query, which keeps the request line under the hub's 8,190
  bytes); a due SKU the answer lacks has no count at the hub (its movements all held or refused there) and is
  then no longer due. However many movements the mark passed (a catch-up of a million), this is one row a key
  in the outbox and one chunk in memory, and the rows read are the due SKUs' own.
- a hub from before 1.10 refuses a repeated ``sku`` (``400``, since its first version): then, and for an answer
  with a count the chunk did not ask for, the replicator reads as it did before: a few SKUs of a location (at
  most ``FEW_KEYS``) one request each, ``?location=…&sku=…``; more, the location's counts, ``?location=…``,
  ``PAGE_LIMIT`` a page, until none of its due SKUs is left to read or the last page is read. It remembers that
  hub (``HubForms``: its URL and the API version its answers name, none before 1.11), says so once, and reads so
  from then on, without asking in chunks first, until the hub's answers name another version or the hub is found
  not serving (``agent.hub_loop.hub_lost``: no connection, or a 503; a restart, an upgrade's too, shows so).

Only keys with nothing pending are read: the hub may already hold a pending movement whose answer is on its way,
and it would count twice; the answer to that movement carries the key's count anyway, and one that settles it
without (the hub refused the movement, or holds it in its clock quarantine) has the key read then
(``AnswerResult.due_settled``). What was read is stored
only if the acknowledged mark did not move meanwhile. A failure (the hub unreachable, its read budget spent, a
5xx, an answer that is not the hub's) leaves the keys due; the replicator tries again after a backoff.
"""

from __future__ import annotations

import email.utils
import logging
import urllib.parse
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiohttp

from agent.errors import AgentError
from agent.hub_loop import (
    FOLLOW_REDIRECTS,
    AnswerTooLarge,
    broken,
    hub_lost,
    not_a_hubs_json,
    not_the_hubs,
    read_answer,
    times_lost,
)
from agent.huberrors import error_message
from protocol import CountSnapshot
from protocol.hlc import wall_ms_now
from protocol.routes import API_VERSION_HEADER
from protocol.values import loads_json

if TYPE_CHECKING:
    from agent.outbox import Outbox

log = logging.getLogger(__name__)

SKUS_PER_REQUEST = 500  # due SKUs of a location asked in one request (the hub takes up to 500 since API 1.10)
QUERY_MAX_BYTES = 6_000  # of a chunk's query string: the hub reads a request line of up to 8,190 bytes
FEW_KEYS = 10  # a hub before 1.10: due SKUs read one request each; more: the location's counts, page by page
PAGE_LIMIT = 5_000  # counts a page (the hub takes up to 10,000)
COUNT_MAX_BYTES = 1_024  # a count's JSON: a 64-character SKU escaped, a location, six numbers, two times
COUNTS_PATH = "/v1/counts"
PAGE_FIELDS = ("counts", "next")


class RefreshFailed(AgentError):
    """The hub's counts could not be read; the message is one sentence."""


class SkusRefused(RefreshFailed):
    """The hub refused several ``sku`` in one request, or answered them with counts not asked for (before 1.10)."""


class HubForms:
    """What the replicator learned of its hub's ``GET /v1/counts``: that it does not read several SKUs in one request
    (a hub before API 1.10), for the counts URL it was learned at, the API version that hub's answers named then
    (``API_VERSION_HEADER``; None: none, as before 1.11) and how many times this agent had found the hub not serving
    (``agent.hub_loop.times_lost``). Forgotten when the URL or that version differs, or the hub was found not serving
    since: it may have been upgraded."""

    __slots__ = ("_heard", "_older")

    def __init__(self) -> None:
        self._older: tuple[str, str | None, int] | None = None
        self._heard: tuple[str, str | None] | None = None  # the URL and version of the last answer

    def reads_several(self, url: str) -> bool:
        """Whether the hub at ``url`` is to be asked for several SKUs in one request."""
        if self._older is not None and (self._older[0], self._older[2]) != (url, times_lost(url)):
            self._older = None
        return self._older is None

    def heard(self, url: str, version: str | None) -> None:
        """An answer of the hub at ``url`` named ``version`` (None: none)."""
        self._heard = (url, version)
        if self._older is not None and self._older[:2] != (url, version):
            self._older = None

    def refused(self, url: str, err: SkusRefused) -> None:
        """The hub at ``url`` does not read several SKUs in one request (``err``): said once, and remembered."""
        version = self._heard[1] if self._heard is not None and self._heard[0] == url else None
        self._older = (url, version, times_lost(url))
        log.info(
            "The hub does not read several SKUs in one request (%s): its counts are read as before API 1.10, a few"
            " SKUs one request each or the location's pages, until it answers with another API version or is found"
            " not serving (a restart).",
            err,
        )


async def refresh_due(
    outbox: Outbox, session: aiohttp.ClientSession, hub_url: str, token: str, forms: HubForms | None = None
) -> bool:
    """Read and store the counts of the keys due now. True when every one that can be read was (keys with
    pending movements wait for their answer); False when the mark moved meanwhile (read again later). ``forms``:
    what is known of the hub's reads, learned across calls (None: learned again)."""
    url = hub_url.rstrip("/") + COUNTS_PATH
    forms = forms or HubForms()
    for location in await outbox.counts.due_locations():
        if forms.reads_several(url):
            try:
                done = await _read_chunks(outbox, session, url, token, location, forms)
            except SkusRefused as err:
                forms.refused(url, err)
            else:
                if done is None:
                    return False
                if done:
                    log.debug("Read the hub's counts of %d SKU(s) at %s again.", done, location)
                continue
        if not await _read_one_by_one_or_pages(outbox, session, url, token, location, forms):
            return False
    return True


def chunk_of(skus: Sequence[str], limit: int = QUERY_MAX_BYTES) -> list[str]:
    """The longest head of ``skus`` whose ``sku=…`` parameters, URL-encoded, fit in ``limit`` bytes (one at least)."""
    size = 0
    for n, sku in enumerate(skus):
        size += len("&sku=") + len(urllib.parse.quote(sku, safe=""))
        if size > limit and n:
            return list(skus[:n])
    return list(skus)


async def _read_chunks(
    outbox: Outbox, session: aiohttp.ClientSession, url: str, token: str, location: str, forms: HubForms
) -> int | None:
    """Every due SKU of ``location``, a chunk a request: how many were read; None when the mark moved meanwhile;
    ``SkusRefused`` when the hub does not take several."""
    read = 0
    while True:
        acked, due = await outbox.counts.due_keys(location, SKUS_PER_REQUEST)
        if not due:
            return read
        chunk = chunk_of(due)
        asked = set(chunk)
        params = [("location", location), *(("sku", sku) for sku in chunk), ("limit", str(len(chunk)))]
        counts, cursor, as_of_ms = await _page(session, url, token, params, len(chunk), forms)
        # A hub that takes the filter has at most a count a SKU asked for at this location: one page, no `next`.
        if cursor is not None or any(c.location != location or c.sku not in asked for c in counts):
            raise SkusRefused(f"its answer to {len(chunk)} SKU(s) at {location} holds counts not asked for")
        found = {c.sku for c in counts}  # a SKU the answer lacks has no count at the hub
        left = await outbox.counts.store_read(
            location, counts, acked_seq=acked, as_of_ms=as_of_ms, missing=[s for s in chunk if s not in found]
        )
        if left is None:
            return None
        read += len(chunk)
        if left == 0:
            return read


async def _read_one_by_one_or_pages(
    outbox: Outbox, session: aiohttp.ClientSession, url: str, token: str, location: str, forms: HubForms
) -> bool:
    """As before API 1.10: a few due SKUs one request each, more the location's pages. False: the mark moved."""
    acked, few = await outbox.counts.due_keys(location, FEW_KEYS + 1)
    if not few:
        return True
    if len(few) <= FEW_KEYS:
        for sku in few:
            counts, _, as_of_ms = await _page(session, url, token, [("location", location), ("sku", sku)], 1, forms)
            missing = [] if any(c.sku == sku for c in counts) else [sku]
            stored = await outbox.counts.store_read(
                location, counts, acked_seq=acked, as_of_ms=as_of_ms, missing=missing
            )
            if stored is None:
                return False
        log.debug("Read the hub's counts of %d SKU(s) at %s again.", len(few), location)
        return True
    cursor: str | None = None
    pages = 0
    while True:
        params = [("location", location)]
        if cursor is not None:
            params.append(("cursor", cursor))
        counts, cursor, as_of_ms = await _page(session, url, token, params, PAGE_LIMIT, forms)
        pages += 1
        left = await outbox.counts.store_read(
            location, counts, acked_seq=acked, as_of_ms=as_of_ms, missing=None if cursor is None else ()
        )
        if left is None:
            return False
        if left == 0 or cursor is None:
            break
    log.info("Read the hub's counts at %s again (%d page(s)) for the SKUs whose answers were lost.", location, pages)
    return True


async def _page(
    session: aiohttp.ClientSession, url: str, token: str, query: list[tuple[str, str]], limit: int, forms: HubForms
) -> tuple[list[CountSnapshot], str | None, int]:
    """One page of ``GET /v1/counts`` of at most ``limit`` counts: its counts, its ``next`` cursor, and the hub's
    time of the answer (ms); the API version the answer names goes to ``forms``. ``SkusRefused``: a 400 to
    several ``sku`` (a hub before API 1.10)."""
    params = query if any(k == "limit" for k, _ in query) else [*query, ("limit", str(limit))]
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    try:
        async with session.get(url, params=params, headers=headers, allow_redirects=FOLLOW_REDIRECTS) as http:
            body = await read_answer(http, limit * COUNT_MAX_BYTES + 4_096, "counts page")
            status, content_type, date = http.status, http.headers.get("Content-Type", ""), http.headers.get("Date")
            version = http.headers.get(API_VERSION_HEADER)
    except AnswerTooLarge as err:
        raise RefreshFailed(str(err)) from err
    except TimeoutError:
        raise RefreshFailed(f"the hub at {url} did not answer in time") from None
    except aiohttp.ClientError as err:
        if isinstance(err, aiohttp.ClientConnectorError):
            hub_lost(url)
        raise RefreshFailed(f"the counts at {url} could not be read ({broken(err)})") from err
    if (foreign := not_the_hubs(url, status, content_type, body, "application/json")) is not None:
        raise RefreshFailed(foreign)
    if status == 503:
        hub_lost(url)
    forms.heard(url, version)
    if status == 400 and sum(k == "sku" for k, _ in params) > 1:
        raise SkusRefused(f"it answered HTTP 400 to several SKUs at {url} ({error_message(body)})")
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
