"""Text files a person writes (the agent's configuration, token file and POS mapping on a store PC; the hub's
configuration and its secret files): UTF-8, with or without the byte-order mark Windows tools put first, or UTF-16
or UTF-32 with its mark (the marks are ``protocol.csvtext``'s: one list for every file a person hands us).

Notepad saved UTF-8 only with a mark before Windows 10 1903 (and offers "UTF-8 with BOM" still), Windows PowerShell
5's ``Set-Content -Encoding UTF8`` always writes one, and its ``>`` and ``Out-File`` write UTF-16 with one. Read as
plain UTF-8, such a file was "not valid TOML (Invalid statement (at line 1, column 1))" or "not UTF-8 text" though
it shows right in any editor. A file without a mark is UTF-8, strictly: ``UnicodeDecodeError`` otherwise.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from protocol.csvtext import BOMS

# (mark, the codec of what follows it), the longest first: UTF-32's little-endian mark starts as UTF-16's
MARKS = tuple((mark, codec) for mark, _, _, codec in BOMS)


def read_text(path: Path) -> str:
    """The text of ``path``, decoded by its byte-order mark (dropped), else as UTF-8."""
    return decode_text(path.read_bytes())


def decode_text(raw: bytes) -> str:
    """``raw`` decoded by its byte-order mark (dropped), else as UTF-8 (``UnicodeDecodeError`` when it is not)."""
    for mark, codec in MARKS:
        if raw.startswith(mark):
            return raw[len(mark) :].decode(codec)
    return raw.decode("utf-8")


def toml_hint(err: tomllib.TOMLDecodeError) -> str:
    """What to write instead, for the TOML mistake of a person used to Windows paths: ``"C:\\ProgramData\\…"``."""
    if "Unescaped '\\'" in str(err):
        return (
            "; a backslash in a \"double-quoted\" string starts an escape: write a Windows path in 'single quotes'"
            " (or with forward slashes, or each backslash twice)"
        )
    return ""
