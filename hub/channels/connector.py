"""What a push connector is: set levels at a channel, list its items. Errors the pusher understands.

A connector speaks one channel's API and nothing else: it holds no cursor and
no state beyond its session and its throttle model. ``push`` sets one batch of
levels and returns what the channel confirmed; it raises ``ChannelUnavailable``
when trying again later may work (timeouts, 5xx, throttling that did not
clear) and ``ChannelRejected`` when the channel refused the request (a bad
token, an unknown item) and a person must act.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from hub.channels.levels import LevelKey
from hub.channels.mapping import ListingEntry
from hub.storage.base import HubError

IDEMPOTENCY_NAMESPACE = uuid.UUID("6b1f3a52-5c8e-4d8e-9a43-2f0c1d7e9b10")


class ChannelError(HubError):
    """Base of the channel package's errors; the message is one sentence."""


class ChannelUnavailable(ChannelError):
    """The channel did not confirm; trying the same push again later may work."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ChannelRejected(ChannelError):
    """The channel refused the request; the message says what a person must fix."""


@dataclass(frozen=True, slots=True)
class Target:
    """One level to set: the quantity, what the channel had when last confirmed, and when it became true."""

    quantity: int
    previous: int | None  # the last quantity the channel confirmed (None: unknown, read it first)
    occurred_at_ms: int  # the hub's time of the newest change behind ``quantity``


class Connector(Protocol):
    kind: str

    async def push(self, batch: Mapping[LevelKey, Target], turn_key: str) -> dict[LevelKey, int]:
        """Set every level of ``batch``; return the quantities the channel confirmed.

        ``turn_key`` is stable across retries of the same unit of work (the
        channel and the cursor it starts from): with the request's content it
        makes the idempotency key, so a retried request carries the same key
        and a different request never does.
        """

    async def listing(self) -> list[ListingEntry]:
        """Every sellable item of the channel with its SKU (the product listing)."""

    async def close(self) -> None: ...


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


def short(text: str, limit: int = 200) -> str:
    """Text from a channel, cut and on one line, for a log sentence."""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"
