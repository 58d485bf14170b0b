"""``GET /v1/quarantine`` and ``POST /v1/quarantine/{id}``: events held for a clock outside the window.

An event whose stamp is further than ``clock_window_s`` ahead of the hub's
clock, or that far before its credential was created, is neither applied nor
refused (hub.clock_window): it waits here. A reader lists what waits; an
admin resolves each one, ``{"action": "apply_at_receipt"}`` (ingested
re-stamped at the hub's receipt time, the original stamp kept in its attrs)
or ``{"action": "discard"}`` (kept as a rejection naming the admin).

Events held while the hub's own clock was off its stores' (``hub_clock_off_ms``: the stores agreed with each
other, the sender's clock with them) were held because of the hub's clock, not the store's: the hub releases
them itself once its clock looks right again (hub.app), and an admin releases them all at once with
``POST /v1/quarantine/release``: each whose time is inside the window by the corrected clock is applied at its
own time; the others stay for one by one.

Events held when the hub could not tell whose clock was wrong (a lone store, stores that disagree) have no
``hub_clock_off_ms``; an admin who checked both clocks releases them together with ``{"wrong_clock": "hub" |
"store", "agent_id": ...}`` on the same route (one store's, or all): at their own time, or at the hub's time of
receipt (``HubStore.release_held``). Those held while the other stores put the hub's clock right
(``hub_clock_vouched``) are refused to "hub" unless the admin adds ``"override_vouched": true`` for one store's,
which the log names.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from hub import csvexport, events_api, feed, heads, paging, views
from hub.auth import STORE_KEY, identity_of, require_role, role_refused
from hub.storage import held
from hub.storage.base import QUARANTINE_ACTIONS, QUARANTINE_STATUSES, AgentIdentity, AlreadyResolved, QuarantineRow
from protocol import event_id_hex

log = logging.getLogger(__name__)

LIMIT_DEFAULT = 100
LIMIT_MAX = 1_000
BODY_MAX_BYTES = 1_024
READ_ROLES = frozenset({"reader", "admin"})
RELEASE_PATH = "/v1/quarantine/release"


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/quarantine", get_quarantine, name="quarantine")
    heads.add(app, "POST", RELEASE_PATH, post_release, name="quarantine_release", check=_release_head)  # before {id}
    heads.add(app, "POST", "/v1/quarantine/{quarantine_id}", post_quarantine, name="quarantine_resolve", check=_head)


def quarantine_row(r: QuarantineRow) -> dict[str, Any]:
    return {
        "id": r.quarantine_id,
        "event_id": event_id_hex(r.event_id),
        "agent_id": r.agent_id,
        "epoch": r.epoch,
        "seq": r.seq,
        "location": r.location,
        "sku": r.sku,
        "kind": r.kind,
        "qty": r.qty,
        "occurred_at": r.occurred_at,
        "occurred": views.hlc_time(r.occurred_at),
        "wall_ms": r.wall_ms,
        "source": r.source,
        "ref": r.ref,
        "reason": r.reason,
        "attrs": r.attrs,
        "received_at_ms": r.received_at_ms,
        "received": views.iso_ms(r.received_at_ms),
        "skew_ms": r.skew_ms,
        "detail": r.detail,
        "attempts": r.attempts,
        "status": r.status,
        "resolved_by": r.resolved_by,
        "resolved_at_ms": r.resolved_at_ms,
        "hub_clock_off_ms": r.hub_clock_off_ms,
        "hub_clock_vouched": r.hub_clock_vouched,
    }


def quarantine_cursor(quarantine_id: int) -> str:
    """The opaque ``next`` of a page ending at this held event (hub.paging's convention)."""
    return paging.encode("quarantine", [quarantine_id])


def quarantine_key(cursor: str) -> int:
    """The held event id a cursor of this route names; ``paging.BadCursor`` for anything else."""
    fields = paging.decode("quarantine", cursor)
    if len(fields) != 1 or isinstance(fields[0], bool) or not isinstance(fields[0], int) or not 1 <= fields[0] < 2**63:
        raise paging.BadCursor
    quarantine_id: int = fields[0]
    return quarantine_id


async def get_quarantine(request: web.Request) -> web.StreamResponse:
    """Held events, newest first: ``status`` pending (default), applied, discarded or all; paged by ``cursor``
    (every page as CSV when asked, hub/csvexport.py)."""
    require_role(request, READ_ROLES, "read the quarantine")
    as_csv = csvexport.wants_csv(request)
    params = views.Query(request, {"status", "location", "limit", "cursor", *(("format",) if as_csv else ())})
    status = request.query.get("status", "pending")
    if status not in (*QUARANTINE_STATUSES, "all"):
        raise web.HTTPBadRequest(text=f"status must be one of {', '.join(QUARANTINE_STATUSES)} or all, got {status[:40]!r}")
    before_id = paging.parse(request, quarantine_key, "the quarantine")
    if as_csv:
        return await csvexport.quarantine(
            request, params, status=None if status == "all" else status, location=params.location(), before_id=before_id
        )
    limit = params.limit(LIMIT_DEFAULT, LIMIT_MAX)
    rows = await request.app[STORE_KEY].quarantine(
        status=None if status == "all" else status, location=params.location(), limit=limit + 1, before_id=before_id
    )
    more = len(rows) > limit
    rows = rows[:limit]
    page: dict[str, Any] = {
        "quarantine": [quarantine_row(r) for r in rows],
        "next": quarantine_cursor(rows[-1].quarantine_id) if more else None,
    }
    if before_id is None:  # the first page: what waits in all, as a release takes it, however many pages it fills
        hub_clock, unattributed = await request.app[STORE_KEY].quarantine_totals()
        page["pending"] = {
            "total": hub_clock + sum(unattributed.values()),
            "hub_clock": hub_clock,
            "unattributed": unattributed,
            "vouched": await request.app[STORE_KEY].quarantine_vouched(),
        }
    return web.json_response(page, dumps=views.dumps)


def _head(request: web.Request, who: AgentIdentity) -> None:
    """What ``post_quarantine`` refuses before it reads the body, asked of a head too (hub.heads): its Content-Length
    over ``BODY_MAX_BYTES`` is the 413 its body would get."""
    heads.refuse(role_refused(who, frozenset({"admin"}), "resolve held events"))
    raw_id = request.match_info["quarantine_id"]
    if not raw_id.isascii() or not raw_id.isdigit() or len(raw_id) > 18 or int(raw_id) < 1:
        raise web.HTTPBadRequest(text=f"{raw_id[:40]!r} is not a quarantine id; GET /v1/quarantine lists them")
    _too_big(request.content_length or 0)


def _too_big(length: int) -> None:
    if length > BODY_MAX_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            max_size=BODY_MAX_BYTES, actual_size=length, text=f"the body must be under {BODY_MAX_BYTES} bytes"
        )


async def post_quarantine(request: web.Request) -> web.Response:
    """Resolve one held event: ``{"action": "apply_at_receipt"}`` or ``{"action": "discard"}`` (admin)."""
    who = identity_of(request)
    _head(request, who)
    raw_id = request.match_info["quarantine_id"]
    body = await request.read()  # bounded by max_body_bytes (the body middleware)
    _too_big(len(body))
    try:
        parsed = views.loads(body)
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON ({err})") from err
    actions = " or ".join(f'{{"action": "{a}"}}' for a in QUARANTINE_ACTIONS)
    if not isinstance(parsed, dict) or set(parsed) != {"action"} or parsed["action"] not in QUARANTINE_ACTIONS:
        raise web.HTTPBadRequest(text=f"the body must be {actions}")
    try:
        row = await request.app[STORE_KEY].resolve_quarantine(int(raw_id), parsed["action"], who.agent_id)
    except AlreadyResolved as err:
        raise web.HTTPConflict(text=f"{err}; nothing was changed") from err
    if row is None:
        raise web.HTTPNotFound(text=f"there is no held event {raw_id}; GET /v1/quarantine lists them")
    if row.status == "applied":
        feed.poke(request.app)  # committed: the counts it moved go out on the change feed
    return web.json_response({"quarantine": quarantine_row(row)}, dumps=views.dumps)


def _release_head(request: web.Request, who: AgentIdentity) -> None:
    """What ``post_release`` refuses before it reads the body, asked of a head too (hub.heads)."""
    heads.refuse(role_refused(who, frozenset({"admin"}), "release held events"))
    _too_big(request.content_length or 0)


async def post_release(request: web.Request) -> web.Response:
    """Release every pending event held because of the hub's own clock (admin; no body, or ``{}``): each whose time
    is inside the clock window by the corrected clock is applied at its own time; the others stay pending.

    ``{"wrong_clock": "hub" | "store", "agent_id": ID}`` (``agent_id`` optional: every store): release those the
    hub could not attribute to its own clock (a lone store, stores that disagree), of one store or all, as the
    admin found whose clock was wrong: at their own time, or at the hub's time of receipt."""
    who = identity_of(request)
    _release_head(request, who)
    body = await request.read()
    _too_big(len(body))
    window_ms = request.app[events_api.WINDOW_KEY]
    if body.strip() in (b"", b"{}"):
        released, left = await request.app[STORE_KEY].release_hub_clock(window_ms, who.agent_id)
        if released:
            feed.poke(request.app)  # committed: the counts they moved go out on the change feed
        return web.json_response({"released": released, "left": left}, dumps=views.dumps)
    wrong_clock, agent_id, override = _release_body(body)
    try:
        released, left = await request.app[STORE_KEY].release_held(
            window_ms, who.agent_id, wrong_clock, agent_id, override_vouched=override
        )
    except (held.ClocksDisagree, held.StoresSidedWithHub) as err:
        raise web.HTTPConflict(text=str(err)) from err
    except held.UnknownAgent as err:
        raise web.HTTPNotFound(text=str(err)) from err
    if released:
        feed.poke(request.app)
    return web.json_response(
        {
            "released": released,
            "left": left,
            "wrong_clock": wrong_clock,
            "agent_id": agent_id,
            "detail": held.released_sentence(released, left, wrong_clock, agent_id),
        },
        dumps=views.dumps,
    )


RELEASE_BODIES = (
    'the body must be empty or {} (every event held because of the hub\'s own clock), or {"wrong_clock": "hub"} or '
    '{"wrong_clock": "store"} with an optional "agent_id" (those the hub could not attribute, of one store or all)'
)


def _release_body(body: bytes) -> tuple[str, str | None, bool]:
    """``wrong_clock``, ``agent_id`` (None: every store) and ``override_vouched`` of a release of what the hub could
    not attribute."""
    try:
        parsed = views.loads(body)
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"the body is not valid JSON ({err})") from err
    fields = {"wrong_clock", "agent_id", "override_vouched"}
    if not isinstance(parsed, dict) or "wrong_clock" not in parsed or not set(parsed) <= fields:
        raise web.HTTPBadRequest(text=RELEASE_BODIES)
    if parsed["wrong_clock"] not in held.WRONG_CLOCKS:
        raise web.HTTPBadRequest(text=f"wrong_clock must be \"hub\" or \"store\": whose clock an admin found wrong, "
                                 f"got {json.dumps(parsed['wrong_clock'])[:40]}")  # fmt: skip
    agent_id = parsed.get("agent_id")
    if "agent_id" in parsed and not isinstance(agent_id, str):
        raise web.HTTPBadRequest(
            text=f"agent_id must be a string (GET /v1/agents lists them), got {json.dumps(agent_id)[:40]}"
        )
    override = parsed.get("override_vouched", False)
    if override is not False and (override is not True or parsed["wrong_clock"] != held.WRONG_HUB or agent_id is None):
        got = (f"got {json.dumps(override)[:40]}" if override is not True
               else "got no agent_id" if agent_id is None else f"got wrong_clock {parsed['wrong_clock']}")  # fmt: skip
        raise web.HTTPBadRequest(text=f"{held.OVERRIDE_RULE}; {got}")
    return parsed["wrong_clock"], agent_id, override
