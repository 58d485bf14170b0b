"""The text of an uploaded CSV file: the charset its sender declares, or UTF-8 (``protocol.csvtext``, which the
agent reads its catalog file with too), in the hub's words: a charset refused is one "the hub" does not know."""

from __future__ import annotations

from protocol.csvtext import (
    ASCII_SHIFTING,
    BOMS,
    CHARSET_PARAM,
    EXAMPLES,
    NO_CHARSET,
    UNKNOWN,
    UTF16_BOMS,
    Charset,
    CharsetRefused,
    TextUnreadable,
    accepted,
    declared,
    text_of,
)
from protocol.csvtext import lookup as _lookup

__all__ = [
    "ASCII_SHIFTING", "BOMS", "CHARSET_PARAM", "EXAMPLES", "NO_CHARSET", "UNKNOWN", "UTF16_BOMS", "Charset",
    "CharsetRefused", "TextUnreadable", "accepted", "declared", "lookup", "text_of",
]  # fmt: skip

WHO = "the hub"


def lookup(label: str, what: str = "charset", every: str = "") -> Charset:
    """``protocol.csvtext.lookup``: the charset ``label`` names, or ``CharsetRefused`` saying why the hub does not
    read a file in it."""
    return _lookup(label, what, every, who=WHO)
