"""The one exception of the protocol package."""

from __future__ import annotations


class ProtocolError(ValueError):
    """Input that does not follow the wire contract.

    The message is one sentence a person can act on, naming the field that is
    wrong (``events[3].qty: a sale's qty is negative …``).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}" if field else message)
