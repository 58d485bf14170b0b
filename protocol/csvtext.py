"""The text of a CSV file: in the charset its sender names, else by its byte-order mark, else UTF-8.

The hub reads a catalog CSV body in the charset its Content-Type declares (hub/catalog.py, through hub/csvtext.py);
the agent reads the store's catalog file in the charset its configuration names (agent/catalog.py, ``[catalog]
encoding``). One reading for both, so a file means the same characters at the store and at the hub.

A spreadsheet or an ERP saves a CSV in the charset of its machine: Windows-1252 in much of Europe and the
Americas, Shift_JIS in Japan, UTF-16 for Excel's "Unicode Text". The sender says which (``Content-Type: text/csv;
charset=windows-1252``, ``shelfsync-hub catalog import --encoding``, the dashboard's encoding list, the agent's
``[catalog] encoding``), and the file is read in it, by Python's codec of that name (its aliases too: ``latin1``,
``windows-1252``, ``sjis``).

Not every codec is a charset a file can be saved in. Refused:

- charsets that hide characters in plain ASCII (UTF-7, HZ, the ISO-2022 family): a run of ASCII letters and
  ``+ - ~ ESC`` decodes to other characters, so what a person or a filter reads in the bytes is not what is
  imported;
- codecs that are no character set (``unicode_escape``, ``punycode``, ``idna``, ``base64``, ``rot13`` …);
- names Python's codecs do not know. A name is looked up among the codec modules Python ships (a fixed list),
  never handed to the codec registry as it is: the registry keeps every name it was asked for.

A file that is not valid in its charset is refused with the offset of its first bad byte and its line; a
byte-order mark that contradicts the named charset (a UTF-8 BOM on a file said to be Windows-1252) is refused
saying so. A body the hub gets without a charset is UTF-8, with or without a byte-order mark, or UTF-16 with one
(Excel's "Unicode Text"), as before charsets were read (``text_of``); a file the agent reads without one is read
by its byte-order mark, UTF-8, UTF-16 or UTF-32, else as UTF-8 (``file_text``).

Decoded size: a character of every codec taken comes from at least one byte, so the text has at most as many
characters as the body has bytes (``max_body_bytes`` bounds both); a Python string holds them in 1, 2 or 4
bytes each, by its widest character (UTF-8 text with one emoji: 4; Windows-1252 with a euro sign: 2).
"""

from __future__ import annotations

import codecs
import encodings
import encodings.aliases
import functools
import pkgutil
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value

from protocol import values

CHARSET_PARAM = "charset"
CONTENT_TYPE_SAYS = "its Content-Type says charset="  # where the hub's sender names a body's charset
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # Excel's "Unicode Text" is UTF-16 with one
ASCII_SHIFTING = frozenset({"utf_7", "hz"})  # and every iso2022_*: a run of ASCII bytes decodes to other characters
NO_CHARSET = frozenset({"unicode_escape", "raw_unicode_escape", "punycode", "idna", "undefined", "charmap"})
UNKNOWN = frozenset({"aliases", "mbcs", "oem"})  # not a codec; the code page of the Windows machine that runs it
EXAMPLES = ("utf-8", "utf-16", "windows-1252", "iso-8859-15", "shift_jis", "gb18030")
BOMS = (  # the longest first: UTF-32's little-endian mark starts as UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32 (little-endian)", "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32 (big-endian)", "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8", "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16 (little-endian)", "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16 (big-endian)", "utf-16-be"),
)


class CharsetRefused(ValueError):
    """A charset no file is read in; the message says why (it starts with the name, quoted)."""


class TextUnreadable(ValueError):
    """A body that is not text in its charset: ``line`` (1-based) and why."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Charset:
    """A charset as declared (``label``: shown back in sentences) and the Python codec it names."""

    label: str
    codec: str  # codecs.lookup(...).name: utf-8, utf-16-le, cp1252, iso8859-15, shift_jis …


@functools.cache
def _modules() -> frozenset[str]:
    """The codec modules Python ships (names only: nothing is imported)."""
    return frozenset(m.name for m in pkgutil.iter_modules(encodings.__path__))


@functools.cache
def accepted() -> tuple[str, ...]:
    """Every charset a file is read in, by its codec's name (sorted)."""
    names = set()
    for module in _modules():
        try:
            names.add(_lookup(module).codec)
        except CharsetRefused:
            continue
    return tuple(sorted(names))


def lookup(label: str, what: str = "charset", every: str = "", *, who: str = "shelfsync") -> Charset:
    """The charset ``label`` names, or ``CharsetRefused`` saying why ``who`` (the hub, the agent) does not read a
    file in it: a clause on ``what`` (``charset``, ``--encoding``), naming a few charsets it takes, then ``every``
    (where the others are listed)."""
    if not label.strip():
        raise CharsetRefused(f"{what} is empty; name the file's (e.g. windows-1252), or none for UTF-8")
    key = encodings.normalize_encoding(label.strip().lower()).replace(".", "_")
    module = encodings.aliases.aliases.get(key, key)
    try:
        return _lookup(module, label, every, who)
    except CharsetRefused as err:
        raise CharsetRefused(f"{what} {values.shown(label, values.QUOTE_MAX_CHARS)} {err}") from None


def _lookup(module: str, label: str | None = None, every: str = "", who: str = "shelfsync") -> Charset:
    takes = f"it takes {', '.join(EXAMPLES)}{every}"
    if module not in _modules() or module in UNKNOWN:
        raise CharsetRefused(f"is not one {who} knows; {takes}")
    if module in ASCII_SHIFTING or module.startswith("iso2022_"):
        raise CharsetRefused(
            "hides characters in plain ASCII (a byte sequence that looks like ASCII text decodes to other "
            "characters); save the file as UTF-8 or in another charset, e.g. windows-1252 or shift_jis"
        )
    try:
        info = codecs.lookup(module)  # one of a fixed list of names
    except LookupError:
        raise CharsetRefused(f"is not one {who} knows; {takes}") from None
    if module in NO_CHARSET or not getattr(info, "_is_text_encoding", True):
        raise CharsetRefused(f"is not a character set a file is saved in; {takes}")
    return Charset(label if label is not None else info.name, info.name)


def declared(content_type: str | None) -> str | None:
    """The charset a Content-Type names (``None``: none), or ``CharsetRefused`` when it names two."""
    if not content_type:
        return None
    header = Message()
    header["Content-Type"] = content_type
    found: list[str] = []
    for name, value in header.get_params(failobj=[])[1:]:
        if name.lower() == CHARSET_PARAM:
            text = collapse_rfc2231_value(value)
            if all(text.lower() != f.lower() for f in found):
                found.append(text)
    if len(found) > 1:
        named = " and ".join(values.shown(f, values.QUOTE_MAX_CHARS) for f in found[:2])
        raise CharsetRefused(f"names {len(found)} charsets ({named}); name the file's once")
    return found[0] if found else None


def text_of(
    data: bytes,
    charset: Charset | None = None,
    *,
    how_to_name: str = "charset=",
    named_by: str = CONTENT_TYPE_SAYS,
    then: str = "which one is it? Send it with the charset it is saved in",
) -> str:
    """The text of a body ``data`` in ``charset`` (``None``: UTF-8, or UTF-16 with its byte-order mark), else
    ``TextUnreadable`` naming its first bad byte; ``how_to_name`` tells the sender how to name the charset. A
    byte-order mark that contradicts ``charset`` is refused saying where it was named (``named_by``, before its
    name) and what to do (``then``)."""
    if charset is None:
        return _undeclared(data, how_to_name)
    mark = next((m for m in BOMS if data.startswith(m[0])), None)
    family = _family(charset.codec)
    if family == "utf-16" and data.startswith(UTF16_BOMS):  # not the start of a UTF-32 mark: UTF-16's, and a NUL
        mark = next(m for m in BOMS if m[1] == "utf-16" and data.startswith(m[0]))
    if mark is not None:
        bom, bom_family, bom_name, bom_codec = mark
        endian = charset.codec.removeprefix(f"{family}-")
        if bom_family != family or (endian in ("le", "be") and not bom_codec.endswith(endian)):
            raise TextUnreadable(
                1,
                f"the file starts with a {bom_name} byte-order mark but {named_by}"
                f"{values.shown(charset.label, values.QUOTE_MAX_CHARS, bare=True)}; {then}",
            )
        return _decode(data, bom_codec, charset.label, len(bom))
    if charset.codec == family and family != "utf-8":  # UTF-16 or UTF-32 with no mark: big-endian (RFC 2781, 4.3),
        return _decode(data, f"{family}-be", charset.label, 0)  # not this machine's order
    return _decode(data, charset.codec, charset.label, 0)


def _family(codec: str) -> str | None:
    for family in ("utf-8", "utf-16", "utf-32"):
        if codec == family or codec.startswith(family + "-"):
            return family
    return None


def _decode(data: bytes, codec: str, label: str, start: int) -> str:
    try:
        return codecs.decode(memoryview(data)[start:], codec)
    except UnicodeDecodeError as err:
        at = start + err.start
        line = codecs.decode(data[start:at], codec, "replace").count("\n") + 1
        bad = data[at : start + max(err.end, err.start + 1)][:4]
        shown = f"byte 0x{bad[0]:02x}" if len(bad) == 1 else "bytes " + " ".join(f"0x{b:02x}" for b in bad)
        name = values.shown(label, values.QUOTE_MAX_CHARS, bare=True)
        raise TextUnreadable(line, f"{shown} at offset {at:,} (line {line}) is not {name} text") from None


def _undeclared(data: bytes, how_to_name: str) -> str:
    if data.startswith(UTF16_BOMS):
        try:
            return data.decode("utf-16")  # the byte-order mark says which end first, and is dropped
        except UnicodeDecodeError as err:
            line = data[: err.start].decode("utf-16", "replace").count("\n") + 1
            raise TextUnreadable(
                line, 'the file starts as UTF-16 text but is not; save it as "CSV UTF-8" (Excel)'
            ) from None
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0  # Excel's "CSV UTF-8" has one
    try:
        return codecs.decode(memoryview(data)[start:], "utf-8")
    except UnicodeDecodeError as err:
        at = start + err.start  # counted from the file's start, mark included
        line = data[:at].count(b"\n") + 1
        raise TextUnreadable(
            line,
            f"the file is not UTF-8 text (byte 0x{data[at]:02x} at offset {at:,}); save it as "
            f'"CSV UTF-8" (Excel) or UTF-8 CSV, or name the charset it is saved in ({how_to_name}windows-1252)',
        ) from None


def file_text(data: bytes, charset: Charset | None, *, setting: str) -> str:
    """The text of a file read from disk: in ``charset`` (named by the configuration's ``setting``), else by its
    byte-order mark (UTF-8, UTF-16 or UTF-32, as Notepad, Excel and PowerShell write them), else UTF-8; or
    ``TextUnreadable`` naming its first bad byte, its offset and its line (the mark counted, as in the file)."""
    if charset is None:
        mark = next((m for m in BOMS if data.startswith(m[0])), None)
        charset = Charset("UTF-8", "utf-8") if mark is None else Charset(mark[2], mark[3])
    then = f"set {setting} to the charset it is saved in, or leave it out to read the file by its mark"
    return text_of(data, charset, named_by=f"{setting} is ", then=then)
