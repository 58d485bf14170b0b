"""Text cells of a CSV file a spreadsheet opens: guarded against formulas when written, read back as they were.

The hub writes its CSV answers with these rules (hub/csvexport.py) and reads a catalog CSV back with them
(hub/catalog.py); the agent reads a store's catalog file with them (agent/catalog.py), so a file made from the
hub's export means the same SKUs at the store. A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or
a carriage return — also in full width or a small form (``＝``, ``﹢``: what NFKC folds to one of them, which a
spreadsheet may read as the sign itself) — is written with a leading ``'``, so that no spreadsheet runs it as a
formula; so is one that starts with a character that shows nothing (a byte-order mark, a zero-width space, a
direction mark or override, a soft hyphen: one a reader may drop before it looks for a formula, or one that shows
the text after it otherwise than it is), and one starting with ``'`` itself or with blanks round it, which reading
it back would change. Reading takes the ``'`` off exactly those.
"""

from __future__ import annotations

import re
import unicodedata

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMULA_GUARD = "'"
GUARDED_STARTS = (*FORMULA_STARTS, FORMULA_GUARD)  # a cell starting with the guard itself is guarded too
# Characters that show nothing besides the format characters (Unicode category Cf: the byte-order mark, zero-width
# spaces and joiners, direction marks, overrides and isolates, the soft hyphen): the rest of Unicode's
# default-ignorable ones, a combining grapheme joiner, the Hangul fillers, variation selectors.
INVISIBLE_RE = re.compile("[\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164\ufe00-\ufe0f\uffa0\U000e0100-\U000e01ef]")


def shows_nothing(char: str) -> bool:
    """Whether the character ``char`` shows nothing where it stands (a format character or another
    default-ignorable one): a reader may drop it before it looks for a formula, and a direction override among them
    shows the text after it otherwise than it is."""
    return unicodedata.category(char) == "Cf" or INVISIBLE_RE.match(char) is not None


def needs_guard(text: str) -> bool:
    """Whether ``guarded`` guards ``text``: a formula start (in any width: NFKC folds ``＝`` to ``=``), a character
    that shows nothing at its start, and whatever reading it back would change — a leading ``'`` (an import takes
    that for a guard) and surrounding blanks (an import strips them)."""
    if not text:
        return False
    first = text[0]
    return (
        text.startswith(GUARDED_STARTS)
        or shows_nothing(first)
        or (not first.isascii() and unicodedata.normalize("NFKC", first).startswith(FORMULA_STARTS))
        or text != text.strip()
    )


def guarded(text: str) -> str:
    """``text`` as a cell no spreadsheet takes for a formula and that ``uncell`` reads back as it is."""
    return FORMULA_GUARD + text if needs_guard(text) else text


def unguard(text: str) -> str:
    """A cell as it was before ``guarded``: what a spreadsheet round trip hands back."""
    return text[1:] if text.startswith(FORMULA_GUARD) and needs_guard(text[1:]) else text


def uncell(text: str) -> str:
    """A text cell of an imported file as ``guarded`` was given it: a guarded cell exactly (``unguard``), any
    other without the blanks a hand-edited file puts round a value. ``uncell(guarded(s)) == s`` for every string."""
    unguarded = unguard(text)
    return unguarded if unguarded is not text else text.strip()
