"""A list of texts as one query parameter (``text_list``), for the PostgreSQL adapter's statements."""

from __future__ import annotations

from collections.abc import Sequence

# A list of texts as one parameter: joined by the unit separator, a control character no location, SKU or other
# protocol text may hold (``protocol.values``), and split again by PostgreSQL. A list it cannot carry so — a text
# that holds the separator, or an empty text — goes as a text[] in a second parameter instead (``text_list``).
UNIT_SEPARATOR = "\x1f"


def text_list_sql(joined: str, array: str) -> str:
    """The SQL of a text[] sent by ``text_list`` in the parameters ``joined`` and ``array``."""
    return f"COALESCE(string_to_array({joined}::text, E'\\x1f'), {array}::text[])"


def text_list(values: Sequence[str]) -> tuple[str | None, list[str] | None]:
    """The two parameters of ``text_list_sql`` for ``values``: the joined texts, or (when a text holds the
    separator or is empty, or there is none) None and the list."""
    joined = UNIT_SEPARATOR.join(values)
    if values and joined.count(UNIT_SEPARATOR) == len(values) - 1 and all(values):
        return joined, None
    return None, list(values)
