"""The hub's error answers, as the agent reads them: ``protocol.answers`` reads both shapes hubs have sent
(RFC 9457 problem details, and the ``{"error": {…}}`` of older hubs), since agents and hubs of different
versions meet. Named here for the agent's hub clients (replicator, feed, reports, catalog).

A 401/403 is said in one sentence by every client that meets it (``refusal``): the token is wrong, or it belongs
to another agent id, or the hub now serves another database than the one this agent last synced with at that
address (its answer's ``Shelfsync-Hub-Id`` is not the id the outbox keeps: another hub's backup restored onto
it), when a new token would only attach the store to that other database."""

from __future__ import annotations

import contextlib
import re
from typing import Any, Protocol

from agent.errors import OutboxError
from protocol.answers import EXCERPT_MAX_CHARS, error_member, error_message
from protocol.routes import SYNC_PATH

__all__ = [
    "EXCERPT_MAX_CHARS",
    "SyncedHubIds",
    "another_database",
    "credentials_refused",
    "error_member",
    "error_message",
    "hub_id_of",
    "refusal",
    "sync_url",
]

HUB_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a hub database's id as HUB_ID_HEADER carries it (uuid hex)
HUB_CLOCK_OFF_RE = re.compile(r"-?[0-9]{1,13}")
HUB_CLOCK_AGREED_RE = re.compile(r"[0-9]{1,9}")


class SyncedHubIds(Protocol):
    """Where the hub's database id this agent last synced with is kept (the outbox)."""

    async def synced_hub_id(self, hub_url: str) -> str | None: ...


def sync_url(hub_url: str) -> str:
    """The sync route of the hub at ``hub_url``: the URL the outbox keeps the hub's database id under."""
    return hub_url.rstrip("/") + SYNC_PATH


async def refusal(
    ids: SyncedHubIds | None, sync_url: str, url: str, status: int, body: bytes, agent_id: str, hub_id: str | None
) -> tuple[str, str]:
    """``credentials_refused`` for a 401/403 answered at ``url`` by the hub whose sync route is ``sync_url``, with
    the id of the hub's database ``ids`` kept for it (the sync, the change feed, the report uploads and the catalog
    say the same sentence). ``hub_id`` is the answer's (``hub_id_of``); without it, or without ``ids``, or when they cannot be
    read, the refusal is said as without the id."""
    synced = None
    if ids is not None and hub_id is not None:
        with contextlib.suppress(OutboxError):  # not known: the refusal is said as without it
            synced = await ids.synced_hub_id(sync_url)
    return credentials_refused(url, status, body, agent_id, hub_id=hub_id, synced_hub_id=synced)


def another_database(url: str, hub_id: str | None, synced_hub_id: str | None) -> str | None:
    """The sentence for a hub at ``url`` whose database (``hub_id``, from an answer's HUB_ID_HEADER) is not the one
    this agent last synced with there (``synced_hub_id``, kept in the outbox); None when either is unknown or they
    are the same."""
    if hub_id is None or synced_hub_id is None or hub_id == synced_hub_id:
        return None
    return (
        f"the hub at {url} now serves another database (id {hub_id}; this agent last synced with {synced_hub_id}):"
        " its database may have been restored from another hub's backup; restore this hub's own backup, do not"
        " re-issue the token"
    )


def credentials_refused(
    url: str, status: int, body: bytes, agent_id: str, *, hub_id: str | None = None, synced_hub_id: str | None = None
) -> tuple[str, str]:
    """What a 401/403 from the hub means, and what fixes it: "the token is wrong" unless the hub serves another
    database than the one this agent last synced with there (``hub_id``, from the answer's HUB_ID_HEADER, differs
    from ``synced_hub_id``, kept in the outbox: another hub's backup restored onto it, and a new token would make it
    worse), or the hub says the token is good but belongs to another agent (``credential_agent_id``): then this
    agent is configured with the wrong id."""
    if (changed := another_database(url, hub_id, synced_hub_id)) is not None:
        return f"{changed} (HTTP {status}: {error_message(body)})", "the hub serves its own database again"
    other = _field(body, "credential_agent_id")
    if status == 403 and isinstance(other, str) and other != agent_id:
        return (
            (
                f"the hub at {url} says this agent's token belongs to agent {other!r}, not {agent_id!r} as configured"
                f' (HTTP 403): set id = "{other}" in [agent] and run `shelfsync-agent rebind` so the outbox sends'
                f" as {other!r}, or give this agent the token of {agent_id!r}"
            ),
            "the id or the token is fixed",
        )
    return (
        f"the hub at {url} refused this agent's credentials (HTTP {status}: {error_message(body)})",
        "the token is fixed",
    )


def hub_clock_off_of(header: str | None) -> int | None:
    """How far the hub says its own clock is off its stores' (HUB_CLOCK_HEADER, whole ms; negative: behind), if
    the header reads as a whole number of at most 13 digits (about 300 years); None when absent or anything else."""
    if header is None or not HUB_CLOCK_OFF_RE.fullmatch(header):
        return None
    return int(header)


def hub_clock_agreed_of(header: str | None) -> int | None:
    """How many other stores the hub says agree with its clock while this machine's is a minute or more off it
    (HUB_CLOCK_AGREED_HEADER), if the header reads as a whole number of at most 9 digits; None when absent (the hub
    cannot tell whose clock is wrong, or a hub from before API 1.10) or anything else."""
    if header is None or not HUB_CLOCK_AGREED_RE.fullmatch(header):
        return None
    return int(header)


def clock_words(skew_ms: int, agreed: int | None) -> str:
    """What ``status`` says of this machine's clock ``skew_ms`` off the hub's (the hub's minus this machine's), when
    the hub does not say its own clock is off: wrong, when ``agreed`` other stores side with the hub's clock
    (HUB_CLOCK_AGREED_HEADER); else only that the two disagree, for neither side can tell which is wrong."""
    off = clock_span(skew_ms)
    way = "behind" if skew_ms > 0 else "ahead of"
    held = "(the hub holds movements stamped outside its clock window for its operator)"
    if agreed is not None:
        others = (
            f"{agreed:,} other store{'s' if agreed != 1 else ''} that synced lately agree{'s' if agreed == 1 else ''}"
        )
        return f"WRONG: this machine's clock is {off} {way} the hub's, and {others} with the hub's clock; set it right {held}"
    return (
        f"OFF: this machine's clock and the hub's disagree by {off} (this machine's is {way} the hub's), and no other"
        f" store's clock tells which one is wrong: check both against a time server (NTP) before changing either {held}"
    )


def clock_span(ms: int) -> str:
    """A clock's offset in words: "12 minutes", "3.0 hours", "2.0 days"."""
    off_s = abs(ms) / 1000
    if off_s < 5400:
        return f"{off_s / 60:.0f} minutes"
    return f"{off_s / 3600:.1f} hours" if off_s < 172_800 else f"{off_s / 86_400:,.1f} days"


def hub_clock_words(off_ms: int) -> str:
    """What a store says when the hub says its own clock is ``off_ms`` off (HUB_CLOCK_HEADER; negative: behind)."""
    way = "behind" if off_ms < 0 else "ahead of"
    return (
        f"The hub says its own clock is {clock_span(off_ms)} {way} this store's and the other stores' clocks, which"
        " agree with each other: this machine's clock is right, leave it as it is; the hub's operator sets the"
        " hub's clock right (until then the hub holds movements stamped outside its clock window for its operator)."
    )


def hub_id_of(header: str | None) -> str | None:
    """The hub's database id an answer's HUB_ID_HEADER says, if it reads as one (an id of at most 64 letters,
    digits, ``-`` or ``_``): None for an older hub, or anything else, which is not put in a log line."""
    if header is None or not HUB_ID_RE.fullmatch(header):
        return None
    return header


def _field(body: bytes, name: str) -> Any:
    return error_member(body, name)  # a problem details answer, or an older hub's {"error": …}
