"""Bearer credentials: minted here, stored only as a SHA-256 hash, and the agents table they live in.

A token reads ``ssk1.<agent_id>.<secret>``; the agent id inside it finds the
stored hash, and the hash is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Collection, Sequence

from hub.clock_window import HUB_CLOCK_RECENT_MS, hub_clock_suspicion, span
from hub.resolver import is_location
from hub.storage.base import ROLES, AgentDisk, AgentIdentity, AgentStatus, CredentialChanged, InvalidInput, StoreError
from hub.storage.db import Db, Where
from protocol import wall_ms_now
from protocol.values import AGENT_ID, shown

log = logging.getLogger(__name__)

TOKEN_SCHEME = "ssk1"
TOKEN_SECRET_BYTES = 32
TOKEN_MAX_LEN = 256
AGENT_ID_PREFIX = "agent-"
AGENT_ID_HEX_BYTES = 4
ADD_AGENT_ATTEMPTS = 5
# Compared against when the agent id is unknown, so both answers take as long.
_UNKNOWN_HASH = hashlib.sha256(b"shelfsync: no such credential").hexdigest()


def new_agent_id() -> str:
    return AGENT_ID_PREFIX + secrets.token_hex(AGENT_ID_HEX_BYTES)


RESERVED_ID_PREFIX = "channel:"  # the hub's own identities for channel orders (hub/channels/order_routes.py)
# The hub's own identity for what it books itself: catalog re-bookings (hub/catalog.py, which skips its events when
# it looks for scans to re-book) and transfer write-offs (hub/storage/held.py).
RESERVED_IDS = frozenset({"hub"})


def check_agent_id(agent_id: object) -> str:
    """``agent_id`` when a new credential may carry it: an agent id of the wire (protocol.values.AGENT_ID)
    outside the hub's reserved names (``hub``, ``channel:…``); else ``InvalidInput``."""
    if isinstance(agent_id, str) and AGENT_ID.valid(agent_id):
        if agent_id in RESERVED_IDS:
            raise InvalidInput(
                f"the agent id {agent_id} is the hub's own, for what it books itself (catalog re-bookings, "
                "transfer write-offs); choose another id"
            )
        if agent_id.startswith(RESERVED_ID_PREFIX):
            raise InvalidInput(
                f"agent ids starting with {RESERVED_ID_PREFIX!r} are the hub's own, for channel orders; choose another id"
            )
        return agent_id
    what = shown(agent_id) if isinstance(agent_id, str) else type(agent_id).__name__
    raise InvalidInput(f"{what} cannot be an agent id; an agent id is {AGENT_ID.rule()}")


def new_token(agent_id: str) -> str:
    return f"{TOKEN_SCHEME}.{agent_id}.{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_agent_id(token: object) -> str | None:
    """The agent id a well-formed token names, else None."""
    if not isinstance(token, str) or len(token) > TOKEN_MAX_LEN or not token.isascii():
        return None
    scheme, _, rest = token.partition(".")
    agent_id, _, secret = rest.rpartition(".")
    if scheme != TOKEN_SCHEME or not agent_id or not secret:
        return None
    return agent_id


def hash_matches(token: str, stored_hash: str | None) -> bool:
    """Constant-time check of ``token`` against a stored hash (None: unknown agent)."""
    return hmac.compare_digest(token_hash(token), stored_hash or _UNKNOWN_HASH) and stored_hash is not None


def check_grant(locations: Sequence[str], role: str) -> tuple[str, ...]:
    """Validate what a new credential may do; return its locations, sorted and unique."""
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}; a credential is one of {', '.join(ROLES)}")
    if isinstance(locations, str):
        raise InvalidInput("locations must be a list of location codes, not one string")
    for loc in locations:
        if not is_location(loc):
            raise InvalidInput(f"{loc!r} is not a location code (letters, digits, '.', '_', '-'; at most 32)")
    if role == "agent" and not locations:
        raise InvalidInput("an agent credential must be bound to at least one location")
    return tuple(sorted(set(locations)))


# --- the agents table, in SQL both backends run (``hub.storage.db``) -------------------------------------


async def insert_agent(db: Db, granted: Sequence[str], role: str, chosen: str | None) -> tuple[str, str]:
    """Store a new credential (``chosen``: its id; None: a new random one); return (agent_id, token)."""
    now_ms = wall_ms_now()
    off_ms = await hub_clock_off(db, now_ms)
    if off_ms is not None:
        log.warning("The stores that synced lately put the hub's clock %s %s theirs: the new credential is dated by "
                    "their time, not the hub's.", span(off_ms), "behind" if off_ms < 0 else "ahead of")  # fmt: skip
    created = now_ms - (off_ms or 0)  # the stores' time when the hub's clock is off
    for _ in range(1 if chosen else ADD_AGENT_ATTEMPTS):
        new_id = chosen or new_agent_id()
        token = new_token(new_id)
        added = await db.execute(
            "INSERT INTO agents (agent_id, token_sha256, role, locations, created_ms) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (agent_id) DO NOTHING",
            (new_id, token_hash(token), role, json.dumps(list(granted)), created),
        )
        if added == 1:
            await _locate(db, new_id, granted)
            return new_id, token
    if chosen:
        raise InvalidInput(f"a credential with the agent id {chosen} exists already (revoked ones count); "
                           "choose another id")  # fmt: skip
    raise StoreError(f"could not find a free agent id in {ADD_AGENT_ATTEMPTS} tries")


async def hub_clock_off(db: Db, now_ms: int) -> int | None:
    """How far the hub's clock is off its stores' by the skews the store agents that synced lately left
    (hub.clock_window.hub_clock_suspicion, as ``GET /v1/status``'s ``hub_clock``); None: not known off."""
    rows = await db.fetch(
        "SELECT agent_id, clock_skew_ms FROM agents WHERE role = 'agent' AND revoked_ms IS NULL "
        "AND clock_skew_ms IS NOT NULL AND last_sync_ms BETWEEN ? AND ?",
        (now_ms - HUB_CLOCK_RECENT_MS, now_ms + HUB_CLOCK_RECENT_MS),
    )
    found = hub_clock_suspicion({agent_id: skew for agent_id, skew in rows if not agent_id.startswith(RESERVED_ID_PREFIX)})
    return None if found is None else found.offset_ms


async def correct_created(db: Db, offset_ms: int, now_ms: int) -> int:
    """The hub's clock was found ``offset_ms`` ahead of its stores' at ``now_ms``: the credentials it dated since
    its clock went wrong (their creation time within the lesser of that offset and HUB_CLOCK_RECENT_MS of its clock:
    it notices within that; one made before the clock went wrong lies at least the offset back) are dated by the
    stores' time instead, so none of them lies in the future once the clock is right. Returns how many."""
    if offset_ms <= 0:
        return 0  # a clock behind dated them in the past: they hold less, never a right store's movements
    return await db.execute(
        "UPDATE agents SET created_ms = created_ms - ? WHERE created_ms > ?",
        (offset_ms, now_ms - min(offset_ms, HUB_CLOCK_RECENT_MS)),
    )


async def identity(db: Db, token: str) -> AgentIdentity | None:
    """The identity of a bearer token, or None when it is unknown, wrong or revoked."""
    agent_id = token_agent_id(token)
    if agent_id is None:
        return None
    row = await db.fetchone(
        "SELECT token_sha256, role, locations, revoked_ms, created_ms FROM agents WHERE agent_id = ?", (agent_id,)
    )
    if not hash_matches(token, row[0] if row else None) or row is None or row[3] is not None:
        return None
    return AgentIdentity(agent_id, frozenset(json.loads(row[2])), row[1], row[4])


CONFIRM_SQL = "SELECT token_sha256, locations, revoked_ms FROM agents WHERE agent_id = ?"


def still_holds(who: AgentIdentity, stored_hash: str, row: Sequence[object] | None) -> bool:
    """Whether the agents row ``row`` (token_sha256, locations, revoked_ms; None: no row) still makes the token of
    hash ``stored_hash`` the identity ``who``: not revoked, the same token, the same locations."""
    if row is None or row[2] is not None or not isinstance(row[0], str) or not isinstance(row[1], str):
        return False
    return hmac.compare_digest(row[0], stored_hash) and frozenset(json.loads(row[1])) == who.locations


async def confirm(db: Db, who: AgentIdentity, stored_hash: str) -> None:
    """Inside a write: ``CredentialChanged`` unless the token of hash ``stored_hash`` is still ``who``."""
    if not still_holds(who, stored_hash, await db.fetchone(CONFIRM_SQL, (who.agent_id,))):
        raise CredentialChanged(who.agent_id)


async def revoke(db: Db, agent_id: str) -> bool:
    changed = await db.execute(
        "UPDATE agents SET revoked_ms = ? WHERE agent_id = ? AND revoked_ms IS NULL", (wall_ms_now(), agent_id)
    )
    return changed == 1


async def bind(db: Db, agent_id: str, granted: Sequence[str]) -> tuple[str, ...]:
    """Bind an active agent or admin credential to ``granted`` instead of its locations; return the former ones."""
    row = await db.fetchone("SELECT role, locations, revoked_ms FROM agents WHERE agent_id = ?", (agent_id,))
    if row is None:
        raise InvalidInput(f"no credential {agent_id} is known to this hub")
    role, locations, revoked = row
    if revoked is not None:
        raise InvalidInput(f"the credential {agent_id} is revoked; issue a new one with agent add")
    if role not in ("agent", "admin"):
        raise InvalidInput(f"{agent_id} is a {role} credential, which reads every location and writes none")
    check_grant(granted, role)
    await db.execute(
        "UPDATE agents SET locations = ? WHERE agent_id = ? AND revoked_ms IS NULL",
        (json.dumps(list(granted)), agent_id),
    )
    await db.execute("DELETE FROM agents_at WHERE agent_id = ?", (agent_id,))
    await _locate(db, agent_id, granted)
    return tuple(json.loads(locations))


async def _locate(db: Db, agent_id: str, granted: Sequence[str]) -> None:
    """The rows of ``agents_at`` (schema 18) saying ``agent_id`` is bound to ``granted``: written with
    ``agents.locations``, so a read by location (``clock_skews``) finds a credential by its index."""
    for location in sorted(set(granted)):
        await db.execute("INSERT INTO agents_at (location, agent_id) VALUES (?, ?)", (location, agent_id))


def clock_skews_sql(locations: int) -> str:
    """The statement ``clock_skews`` runs for this many locations: the active store agents bound to them whose skew
    the hub measured, found by ``agents_at``' primary key (location first) and each agent by its own."""
    return (
        "SELECT l.location, a.agent_id, a.last_sync_ms, a.clock_skew_ms FROM agents_at l "
        "JOIN agents a ON a.agent_id = l.agent_id "
        f"WHERE l.location IN ({', '.join('?' * locations)}) AND a.role = 'agent' AND a.revoked_ms IS NULL "
        "AND a.clock_skew_ms IS NOT NULL ORDER BY l.location, a.agent_id"
    )


async def clock_skews(db: Db, locations: Collection[str]) -> dict[str, int]:
    """The clock skew (hub minus PC, ms) of the store PC booking at each of ``locations``: of the active store
    agents bound there whose skew the hub measured, the one synced last (the first by id of those synced at the same
    time); a location without one is left out. One statement by ``agents_at``' index: its cost is the
    agents of those locations, not every store's."""
    wanted = sorted(set(locations))
    if not wanted:
        return {}
    found: dict[str, tuple[int, int]] = {}  # location -> (last sync, skew)
    for location, agent_id, last, skew in await db.fetch(clock_skews_sql(len(wanted)), tuple(wanted)):
        if agent_id.startswith(RESERVED_ID_PREFIX):
            continue
        if location not in found or (last or 0) > found[location][0]:
            found[location] = (last or 0, skew)
    return {location: skew for location, (_, skew) in found.items()}


async def agent_status(db: Db, agent_id: str | None) -> list[AgentStatus]:
    where = Where().add("agent_id = ?", agent_id)
    marks: dict[str, dict[int, int]] = {}
    for aid, epoch, hwm in await db.fetch(
        f"SELECT agent_id, epoch, hwm FROM agent_hwm{where.sql} ORDER BY updated_ms, epoch", where.params
    ):
        marks.setdefault(aid, {})[epoch] = hwm
    rows = await db.fetch(
        "SELECT agent_id, locations, last_sync_ms, clock_skew_ms, role, revoked_ms, "
        "backlog, oldest_pending_ms, backlog_at_ms, disk_state, disk_since_ms, disk_at_ms, disk "
        f"FROM agents{where.sql} ORDER BY agent_id",
        where.params,
    )
    return [
        AgentStatus(
            aid, tuple(json.loads(locs)), last, marks.get(aid, {}), skew, role, revoked is not None,
            backlog=backlog, oldest_pending_ms=oldest, backlog_at_ms=backlog_at, disk=AgentDisk.from_row(*disk),
        )
        for aid, locs, last, skew, role, revoked, backlog, oldest, backlog_at, *disk in rows
    ]
