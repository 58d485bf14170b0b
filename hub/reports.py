"""What agents report besides stock movements, over HTTP.

* ``POST /v1/observations``: other systems' on-hand figures (a POS or web shop
  export), msgpack (``protocol.reports``); kept per (agent_id, id).
* ``POST /v1/import-issues``: rows of POS exports the agent quarantined.
* ``GET /v1/divergence``: for the newest observation of each (system,
  location, sku), the hub's on_hand as of the observation's time next to the
  observed figure, where they differ by at least min(2, 5 % of the hub's).

Both posts answer msgpack ``{"v": 1, "accepted": [ids], "rejected": [{"id",
"reason"}]}``: an observation of another location than the agent's, or a
known id resent with other content, is rejected; a resend is accepted again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from hub import paging, views
from hub.auth import STORE_KEY, CredentialOfAnotherAgent, require_role
from hub.storage import keys
from hub.storage.base import INGEST_ROLES, AgentIdentity, DivergenceRow, ImportIssue, Observation, ReportResult
from protocol import MSGPACK_CONTENT_TYPE, ProtocolError, values
from protocol.reports import (
    SYSTEM_MAX_LEN,
    ReportAnswer,
    ReportRejection,
    decode_import_issues,
    decode_observations,
    encode_report_answer,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DECODE_INLINE_MAX_BYTES = 64 * 1024  # larger bodies are decoded in a worker thread
LIMIT_DEFAULT = 1000
LIMIT_MAX = 10_000
SYSTEM = values.TextField("system name", SYSTEM_MAX_LEN)
MSGPACK_CONTENT_TYPES = frozenset({MSGPACK_CONTENT_TYPE, "application/x-msgpack"})


async def _decode(request: web.Request, decode: Callable[[bytes], T], what: str) -> T:
    if request.content_type not in MSGPACK_CONTENT_TYPES:
        raise web.HTTPUnsupportedMediaType(
            text=f"{what} must be msgpack sent with Content-Type: {MSGPACK_CONTENT_TYPE}, got {request.content_type}"
        )
    body = await request.read()  # the app's client_max_size (max_body_bytes) bounds it
    try:
        if len(body) <= DECODE_INLINE_MAX_BYTES:
            return decode(body)
        return await asyncio.to_thread(decode, body)
    except ProtocolError as err:
        raise web.HTTPBadRequest(text=str(err)) from err


def _check_sender(who: AgentIdentity, agent_id: str) -> None:
    if agent_id != who.agent_id:
        raise CredentialOfAnotherAgent(who.agent_id, agent_id)


def _answer(result: ReportResult) -> web.Response:
    answer = ReportAnswer(result.accepted, tuple(ReportRejection(i, reason) for i, reason in result.rejected))
    return web.Response(body=encode_report_answer(answer), content_type=MSGPACK_CONTENT_TYPE)


async def post_observations(request: web.Request) -> web.Response:
    """Keep other systems' on-hand figures an agent read from its exports."""
    who = require_role(request, INGEST_ROLES, "send observations")
    views.Query(request, set())
    req = await _decode(request, decode_observations, "an observations body")
    _check_sender(who, req.agent_id)
    items = [
        Observation(o.id, o.location, o.sku, o.system, o.on_hand, o.observed_at_ms, o.source_file)
        for o in req.observations
    ]
    result = await request.app[STORE_KEY].add_observations(who, items)
    log.info(
        "agent %s sent %d observation(s): %d accepted, %d rejected",
        who.agent_id,
        len(items),
        len(result.accepted),
        len(result.rejected),
    )
    return _answer(result)


async def post_import_issues(request: web.Request) -> web.Response:
    """Keep the rows of POS exports an agent quarantined, for the exceptions list."""
    who = require_role(request, INGEST_ROLES, "send import issues")
    views.Query(request, set())
    req = await _decode(request, decode_import_issues, "an import issues body")
    _check_sender(who, req.agent_id)
    items = [ImportIssue(x.id, x.location, x.file, x.line, x.reason, x.raw) for x in req.issues]
    result = await request.app[STORE_KEY].add_import_issues(who, items)
    log.info(
        "agent %s sent %d import issue(s): %d accepted, %d rejected",
        who.agent_id,
        len(items),
        len(result.accepted),
        len(result.rejected),
    )
    return _answer(result)


def divergence_json(r: DivergenceRow) -> dict[str, Any]:
    return {
        "system": r.system,
        "location": r.location,
        "sku": r.sku,
        "observed": r.observed,
        "hub_on_hand": r.hub_on_hand,
        "difference": r.difference,
        "observed_at_ms": r.observed_at_ms,
        "observed_at": views.iso_ms(r.observed_at_ms),
        "agent_id": r.agent_id,
        "id": r.obs_id,
        "source_file": r.source_file,
        "received_at_ms": r.received_at_ms,
        "received_at": views.iso_ms(r.received_at_ms),
    }


async def get_divergence(request: web.Request) -> web.Response:
    """Where another system's latest on-hand figure disagrees with the hub's at that time, by (location, sku,
    system), a page at a time (``next``/``cursor``)."""
    params = views.Query(request, {"location", "system", "limit", "cursor"})
    system = params.text(SYSTEM, "system")
    after = paging.parse(request, paging.divergence_key, "divergence")
    limit = params.limit(LIMIT_DEFAULT, LIMIT_MAX)
    rows = await request.app[STORE_KEY].divergence(
        location=params.location(), system=system, limit=limit + 1, after=after
    )
    more = len(rows) > limit
    rows = rows[:limit]
    body = {
        "divergence": [divergence_json(r) for r in rows],
        "next": paging.divergence_cursor(keys.divergence_key(rows[-1])) if more else None,
    }
    return web.json_response(body, dumps=views.dumps)


def routes(app: web.Application) -> None:
    app.router.add_post("/v1/observations", post_observations, name="observations")
    app.router.add_post("/v1/import-issues", post_import_issues, name="import_issues")
    app.router.add_get("/v1/divergence", get_divergence, name="divergence")
