"""The staff sessions' exceptions, under the agent's one base."""

from __future__ import annotations

from agent.errors import AgentError, DiskFull


class SessionError(AgentError):
    """Base of every error the sessions raise on purpose; its message is one sentence for the operator."""


class SessionNotFound(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"there is no session {session_id[:40]!r}")


class LineNotFound(SessionNotFound):
    def __init__(self, session_id: str, no: int) -> None:
        SessionError.__init__(self, f"session {session_id[:40]!r} has no line {no}")


class SessionNotOpen(SessionError):
    """The session was closed or cancelled (or is being closed): it takes no more scans."""


class InvalidSessionInput(SessionError, ValueError):
    """A request outside the contract: an unknown session type, a missing transfer reference, a bad quantity …"""


class SessionConflict(SessionError):
    """The request clashes with another open session (a reader that already feeds one)."""


class AlreadyReceived(SessionConflict):
    """A delivery or transfer received here before, opened again without the staff saying it is a second one."""


class UnlikelyQuantity(SessionConflict):
    """A line of a quantity far past what is normal (an incoming line of more units than one line should hold, a
    count far above the local count's scale), sent without the staff confirming it: a keypad slip or a barcode
    scanned into the quantity. A back-office scanner's line of such a quantity is held instead (nobody to ask)."""


class ExceedsOnHand(UnlikelyQuantity):
    """An outgoing line (a write-off, a transfer out) far beyond the local count, or of more units than one line
    should hold, sent without the staff confirming it: a keypad slip or a barcode scanned into the quantity."""


class SessionStoreFailed(SessionError):
    """The session store's file could not be read or written (a full disk): nothing of the request was stored."""


class SessionStoreFull(SessionStoreFailed, DiskFull):
    """The session store could not be written: the disk is full (or a file-size limit); nothing of it was stored."""


class SessionStoreClosed(SessionError):
    def __init__(self, path: str) -> None:
        super().__init__(f"the session store {path} is closed")
