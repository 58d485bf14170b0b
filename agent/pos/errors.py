"""The POS import's exceptions, under the agent's one base."""

from __future__ import annotations

from agent.errors import AgentError


class PosImportError(AgentError):
    """Base of every error the POS import raises on purpose; its message is one sentence."""


class FileRejected(PosImportError):
    """A whole file cannot be imported (no header, no matching profile, unreadable); nothing of it was recorded."""


class PosStoreClosed(PosImportError):
    def __init__(self, path: str) -> None:
        super().__init__(f"the POS import store {path} is closed")


class BadValue(ValueError):
    """One field of one row cannot be read; ``reason`` is the sentence that goes into quarantine.

    Internal to the row mapping: it never leaves ``agent.pos`` — a bad row is
    quarantined, not raised.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
