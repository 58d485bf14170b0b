"""The hub's error answers, as the agent reads them: both shapes hubs have sent, since agents and hubs of
different versions meet.

* RFC 9457 problem details (``application/problem+json``), what hubs send now: ``{"type", "title", "status",
  "detail", "code", …}``, extra members (``rejected``, ``credential_agent_id``) at the top level;
* the shape of older hubs: ``{"error": {"code", "message", …}}``, extra members inside ``error``.

Anything else (a proxy's HTML page, a cut body) gives a short excerpt of the text instead of a message.
"""

from __future__ import annotations

import json
from typing import Any

EXCERPT_MAX_CHARS = 200


def _members(body: bytes) -> dict[str, Any] | None:
    """The error's members in one flat map (``message`` named ``detail``), or None for a body of neither shape."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(parsed, dict):
        return None
    legacy = parsed.get("error")
    if isinstance(legacy, dict):
        members = dict(legacy)
        if "message" in members:
            members["detail"] = members.pop("message")
        return members
    if "detail" in parsed or "code" in parsed:
        return parsed
    return None


def error_member(body: bytes, name: str) -> Any:
    """A member of a hub's error answer (``code``, ``detail``, ``rejected``, ``credential_agent_id`` …), or None."""
    members = _members(body)
    return None if members is None else members.get(name)


def error_message(body: bytes) -> str:
    """The one sentence of a hub's error answer, or a short excerpt of whatever came back."""
    detail = error_member(body, "detail")
    if isinstance(detail, str) and detail:
        return detail
    return body[:EXCERPT_MAX_CHARS].decode("utf-8", "replace").strip() or "no message"
