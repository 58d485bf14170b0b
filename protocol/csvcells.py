"""Text cells of a CSV file a spreadsheet opens: guarded against formulas when written, read back as they were.

The hub writes its CSV answers with these rules (hub/csvexport.py) and reads a catalog CSV back with them
(hub/catalog.py); the agent reads a store's catalog file with them (agent/catalog.py), so a file made from the
hub's export means the same SKUs at the store. A text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or
a carriage return — also behind a character that shows nothing — is written with a leading ``'``, so that no
spreadsheet runs it as a formula; so is one starting with ``'`` itself or with blanks round it, which reading it
back would change. Reading takes the ``'`` off exactly those.
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMULA_GUARD = "'"
GUARDED_STARTS = (*FORMULA_STARTS, FORMULA_GUARD)  # a cell starting with the guard itself is guarded too
# Characters that show nothing and that a reader may drop before it looks for a formula: the byte-order mark and
# the zero-width ones. A formula start behind them is guarded as one at the cell's start.
INVISIBLE = "\ufeff\u200b\u200c\u200d\u2060"


def needs_guard(text: str) -> bool:
    """Whether ``guarded`` guards ``text``: a formula start, and whatever reading it back would change — a
    leading ``'`` (an import takes that for a guard) and surrounding blanks (an import strips them)."""
    return text.startswith(GUARDED_STARTS) or text.lstrip(INVISIBLE).startswith(FORMULA_STARTS) or text != text.strip()


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
