"""The hub's error answers, as the agent reads them: ``protocol.answers`` reads both shapes hubs have sent
(RFC 9457 problem details, and the ``{"error": {…}}`` of older hubs), since agents and hubs of different
versions meet. Named here for the agent's hub clients (replicator, feed, reports, catalog)."""

from __future__ import annotations

from protocol.answers import EXCERPT_MAX_CHARS, error_member, error_message

__all__ = ["EXCERPT_MAX_CHARS", "error_member", "error_message"]
