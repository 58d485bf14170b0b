"""The one exception of the protocol package."""

from __future__ import annotations

MESSAGE_MAX_CHARS = 500


def one_line(text: str) -> str:
    """``text`` with control characters (``protocol.values.CONTROL_RE``) escaped and cut to MESSAGE_MAX_CHARS:
    what a sender put in a field can neither forge a line of the log nor flood it."""
    from protocol.values import CONTROL_RE  # here, not at the top: protocol.values imports this module

    text = CONTROL_RE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= MESSAGE_MAX_CHARS else text[: MESSAGE_MAX_CHARS - 1] + "…"


class ProtocolError(ValueError):
    """Input that does not follow the wire contract.

    The message is one sentence a person can act on, naming the field that is
    wrong (``events[3].qty: a sale's qty is negative …``). It often quotes the
    input, so it is kept to one line of bounded length (``one_line``).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = None if field is None else one_line(field)
        self.reason = one_line(message)
        super().__init__(f"{self.field}: {self.reason}" if self.field else self.reason)
