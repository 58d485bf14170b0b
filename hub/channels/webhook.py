"""The generic ``webhook`` channel: levels POSTed as signed JSON to a receiver the retailer runs.

For a shop system the hub has no connector for: each push is one request to
the channel's ``url``::

    POST <url>
    Content-Type: application/json
    X-Shelfsync-Webhook: <channel name>
    X-Shelfsync-Timestamp: <Unix seconds>
    X-Shelfsync-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body, keyed with the channel's secret>
    Idempotency-Key: <UUID>

    {"channel": "feed", "levels": [{"item_id": "SKU-1", "location_id": "web", "quantity": 7, "previous": 9,
      "occurred_at_ms": 1767225600000, "occurred_at": "2026-01-01T00:00:00.000Z"}]}

signed exactly like the hub's change-feed webhooks (``hub.webhook_spec``: a
receiver checks it with ``verify_signature``). ``previous`` is the quantity the
receiver last confirmed there (null: never, or not since the mapping was last
loaded), ``occurred_at`` the hub's time of the newest change behind the
quantity. The ``Idempotency-Key`` is derived from
the turn and the levels, so a retry after a timeout or a lost answer carries
the same key: the receiver applies a key once.

Answers: any 2xx confirms every level of the request; ``429`` and ``5xx``
(each waiting as long as its ``Retry-After`` asks), timeouts and lost
connections are retried with backoff; ``422`` with ``{"refused": [{"item_id", "location_id", "reason"}]}``
refuses those levels for good and applies nothing (the pusher sends the others
again without them); any other answer is refused as a whole, with one sentence.

A webhook channel is not read back (``readable`` is false: no reconciliation),
and without ``mapping_csv`` its items are the hub's own SKUs (``item_id`` =
SKU).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence

import aiohttp

from hub.channels.config import ChannelSpec
from hub.channels.connector import (
    CallRecord,
    ChannelRejected,
    ChannelUnavailable,
    ConnectorStatus,
    LevelsRefused,
    Moved,
    Sale,
    Target,
    idempotency_key,
    post,
    short,
)
from hub.channels.levels import LevelKey
from hub.channels.mapping import ListingEntry
from hub.webhook_spec import SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_HEADER, sign
from protocol import wall_ms_now
from protocol.retry import peer_wait_s

IDEMPOTENCY_HEADER = "Idempotency-Key"
ANSWER_MAX_BYTES = 1024 * 1024


def iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


class WebhookConnector:
    kind = "webhook"
    readable = False

    def __init__(self, spec: ChannelSpec, session: aiohttp.ClientSession) -> None:
        self.spec = spec
        self._session = session
        self._last = CallRecord()
        self._retry_after: tuple[float, int] | None = None
        self.calls = 0

    async def close(self) -> None:
        return None

    def status(self) -> ConnectorStatus:
        held = self._retry_after
        throttle = None
        if held is not None and held[1] > wall_ms_now():
            throttle = {"retry_after_s": held[0], "until_ms": held[1]}
        return ConnectorStatus(self._last.ok, self._last.at_ms, throttle)

    async def listing(self) -> list[ListingEntry]:
        """A receiver has no listing: without ``mapping_csv`` the pusher maps every SKU to itself."""
        return []

    async def read_levels(self, keys: Sequence[LevelKey]) -> dict[LevelKey, int | None]:
        raise ChannelRejected(f"channel {self.spec.name} is a webhook: its levels cannot be read back")

    async def sold_since(
        self, shown: Mapping[LevelKey, int], counted_ms: Mapping[LevelKey, int]
    ) -> dict[LevelKey, Moved]:
        return {}  # never read back

    async def sales_since(self, counted_ms: Mapping[LevelKey, int]) -> dict[LevelKey, list[Sale]] | None:
        return {}  # a receiver keeps no record the hub reads

    async def push(self, batch: Mapping[LevelKey, Target], turn_key: str) -> dict[LevelKey, int]:
        keys = sorted(batch)
        levels = [
            {
                "item_id": k.item_id,
                "location_id": k.location_id,
                "quantity": batch[k].quantity,
                "previous": batch[k].previous,
                "occurred_at_ms": batch[k].occurred_at_ms,
                "occurred_at": iso_ms(batch[k].occurred_at_ms),
            }
            for k in keys
        ]
        key = idempotency_key(turn_key, levels)
        body = json.dumps({"channel": self.spec.name, "levels": levels}, separators=(",", ":")).encode()
        status, retry_after, text = await self._post(body, key)
        if 200 <= status < 300:
            return {k: batch[k].quantity for k in keys}
        if status == 422:
            refused = _refused_levels(text, keys)
            if refused:
                raise LevelsRefused(
                    f"the receiver of channel {self.spec.name} refused {len(refused)} of {len(keys)} level(s)", refused
                )
        detail = f"HTTP {status}" + (f": {short(text)}" if text.strip() else "")
        if status == 429 or status >= 500:
            # a 503 (or any 5xx) may say Retry-After too (RFC 9110 10.2.3): a receiver down for maintenance
            wait_s = peer_wait_s(status, retry_after)
            if wait_s is not None:
                self._retry_after = (wait_s, wall_ms_now() + round(wait_s * 1000))
            raise ChannelUnavailable(f"the receiver of channel {self.spec.name} answered {detail}", wait_s)
        if status in (401, 403):
            raise ChannelRejected(
                f"the receiver of channel {self.spec.name} refused the request's signature ({detail}); check that it "
                f"holds the secret in {self.spec.secret_source or 'the channel secret'}"
            )
        raise ChannelRejected(f"the receiver of channel {self.spec.name} refused the levels ({detail})")

    async def _post(self, body: bytes, key: str) -> tuple[int, str | None, str]:
        spec = self.spec
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "shelfsync-hub",
            WEBHOOK_HEADER: spec.name,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(spec.secret, timestamp, body),
            IDEMPOTENCY_HEADER: key,
        }
        self.calls += 1
        status, raw, retry_after = await post(
            self._session,
            spec.url,
            data=body,
            headers=headers,
            timeout_s=spec.timeout_s,
            answer_max_bytes=ANSWER_MAX_BYTES,
            last=self._last,
            timed_out=f"the receiver of channel {spec.name} did not answer within {spec.timeout_s:g} s",
            unreachable=f"cannot reach the receiver of channel {spec.name} at {spec.display_url}",
        )
        self._last.answered(status < 500 and status not in (401, 403))
        return status, retry_after, raw[:ANSWER_MAX_BYTES].decode("utf-8", "replace")


def _refused_levels(text: str, keys: list[LevelKey]) -> dict[LevelKey, str]:
    """The levels a 422 names in ``refused``, each with its reason; empty unless every entry names one of ``keys``."""
    try:
        answer = json.loads(text)
    except ValueError:
        return {}
    entries = answer.get("refused") if isinstance(answer, dict) else None
    if not isinstance(entries, list) or not entries:
        return {}
    wanted = set(keys)
    refused: dict[LevelKey, str] = {}
    for e in entries:
        if not isinstance(e, dict):
            return {}
        key = LevelKey(str(e.get("item_id")), str(e.get("location_id")))
        if key not in wanted:
            return {}
        refused[key] = short(str(e.get("reason") or "refused by the receiver"))
    return refused
