"""The one rule for identifiers and values, on ingest and on every read.

Every text an agent, a connector or a person sends — location, SKU, ref,
reason, source, staff name, catalog text, attrs — and every text a read route
takes as a parameter is checked here, so what was accepted can always be
looked up again, and what is refused is refused everywhere with the same
sentence.

**Text** (``is_text``) is a ``str`` of Unicode scalar values with no
character that breaks a line, a log or a terminal:

* no surrogate code point (U+D800–U+DFFF): they are not characters, UTF-8
  cannot encode them, and only a JSON ``\\ud800`` escape (never UTF-8 bytes
  or a well-formed msgpack string) can produce one;
* no control character: C0 (U+0000–U+001F), DEL (U+007F), C1 (U+0080–U+009F);
* no line or paragraph separator (U+2028, U+2029): they end a line in
  JavaScript, logs and CSV readers like a newline does.

Everything else is allowed, spaces included (U+0020 and the no-break space
U+00A0 that POS exports carry), and so are characters newer than this
Python's Unicode tables: the rule is a fixed list of code points, not a
Unicode version's categories, so an agent and a hub on different Python
versions always agree.

**Identifiers** are text with a length bound (``TextField``); location codes
and agent ids also follow a pattern of ASCII letters, digits and ``._-``.
An identifier the hub's API puts in a URL path (``path_segment``: SKU,
location) is never ``.`` or ``..``: browsers and HTTP clients remove such
dot segments from a path, even percent-encoded (RFC 3986 5.2.4), so
``/v1/skus/../counts`` reaches ``/v1/counts`` and no URL could name that SKU.
Values stored before this rule are still read (``stored=True``), by the
query-parameter forms (``/v1/counts?sku=..``), which no client normalises.

**Attrs** (``check_attrs``) are a flat JSON-safe map: at most
``ATTRS_MAX_KEYS`` keys of text (1 to ``ATTR_KEY_MAX_LEN`` characters), each
value a string of at most ``ATTR_STR_MAX_LEN`` characters (valid Unicode;
control characters are allowed there: GS1 element strings carry the GS
separator, and JSON escapes them), a 64-bit integer, a finite float, a
boolean or null. No nesting (depth 1), so an event's attrs are at most a few
kilobytes of JSON. NaN and ±Infinity are refused: strict JSON has no word
for them.

Stored rows from before this rule may still hold a surrogate or a NaN;
``json_safe`` turns such a value into one strict JSON can carry (U+FFFD for a
surrogate, null for NaN/±Infinity, as JavaScript's ``JSON.stringify`` does),
so they are served, never a 500.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeGuard

from protocol.errors import ProtocolError

AttrValue: TypeAlias = str | int | float | bool | None

# The control characters: C0 (U+0000–U+001F), DEL (U+007F) and C1 (U+0080–U+009F), as a regex class body. No text
# holds one; code that must keep or show a string that does (a barcode as scanned, a byte a file's encoding does
# not define, a message quoting a sender) finds them with ``CONTROL_RE`` and replaces or escapes them.
CONTROL_CHARS = "\x00-\x1f\x7f-\x9f"
CONTROL_RE = re.compile(f"[{CONTROL_CHARS}]")
# Characters no text may hold (see the module docstring): the control characters and more.
NOT_TEXT_RE = re.compile(f"[{CONTROL_CHARS}\u2028\u2029\ud800-\udfff]")
SURROGATE_RE = re.compile("[\ud800-\udfff]")
TEXT_RULE = "no control characters, line separators or lone surrogates"
# The dot segments of a URL path (RFC 3986 5.2.4), which no identifier that appears in a path may be.
DOT_SEGMENTS = frozenset({".", ".."})
DOT_SEGMENT_RULE = "not '.' or '..', which URL paths cannot hold"

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
ATTRS_MAX_KEYS = 32
ATTR_KEY_MAX_LEN = 32
ATTR_STR_MAX_LEN = 256
JSON_DEPTH_MAX = 32  # a request body nested deeper than this is refused before any use
SHOWN_MAX_CHARS = 120  # of an untrusted string quoted in a log line or a message (``shown``)
QUOTE_MAX_CHARS = 40  # of a refused value quoted in a 400's sentence


def is_text(value: object) -> bool:
    """True for a ``str`` that follows the text rule (the empty string included)."""
    return isinstance(value, str) and NOT_TEXT_RE.search(value) is None


def has_control(value: str) -> bool:
    """True when ``value`` holds a control character (``CONTROL_RE``)."""
    return CONTROL_RE.search(value) is not None


def is_unicode(value: str) -> bool:
    """True when ``value`` holds no lone surrogate (it can be encoded as UTF-8)."""
    return SURROGATE_RE.search(value) is None


def shown(value: str, limit: int = SHOWN_MAX_CHARS, *, bare: bool = False) -> str:
    """``value`` as it may appear in a log line or a message: one line, nothing a terminal acts on, bounded.

    Quoted as Python's ``repr`` quotes it, so every character that is not printable — a newline, a
    terminal's ESC, a line separator, a lone surrogate, a bidirectional override — appears once as its
    escape (``\\n``, ``\\x1b``, ``\\u2028``), never as itself; at most ``limit`` characters of ``value``,
    with ``…`` after a cut. ``bare=True`` leaves a value that needs no escape unquoted, so an ordinary
    file name reads as itself. Every string a sender, a file or a file name hands us goes through this
    before it reaches a log line or an error sentence.
    """
    cut = value[:limit]
    more = "…" if len(value) > limit else ""
    if bare and cut.isprintable():
        return cut + more
    quoted = repr(cut)
    return quoted[:-1] + more + quoted[-1]


def _quote(value: str) -> str:
    """``value`` cut to 40 characters for a message, quoted, every character the rule refuses escaped once."""
    return shown(value, QUOTE_MAX_CHARS)


@dataclass(frozen=True, slots=True)
class TextField:
    """One kind of identifier or text: its length bound, an optional pattern, and how it is named to people."""

    what: str  # "SKU", "location code" …
    max_len: int
    pattern: re.Pattern[str] | None = None  # a fullmatch on top of the text rule
    shape: str = ""  # the pattern in words, for the message
    path_segment: bool = False  # the hub's API puts it in a URL path: '.' and '..' are refused

    def problem(self, value: object, *, allow_empty: bool = False, stored: bool = False) -> str | None:
        """Why ``value`` is not one of these (a clause), or None when it is.

        ``stored=True`` reads a value as one stored before the dot-segment rule may be: ``.`` and ``..``
        pass, so what an older hub accepted can still be looked up (by a query parameter)."""
        if not isinstance(value, str):
            return f"must be a string, got {type(value).__name__}"
        if not value:
            return None if allow_empty else "must not be empty"
        if len(value) > self.max_len:
            return f"is {len(value)} characters long; the limit is {self.max_len}"
        if NOT_TEXT_RE.search(value) is not None or (self.pattern is not None and not self.pattern.fullmatch(value)):
            return f"{_quote(value)} is not {self.a_what}"
        if self.path_segment and not stored and value in DOT_SEGMENTS:
            return f"{_quote(value)} is not {self.a_what}: browsers and HTTP clients remove it from a URL path"
        return None

    @property
    def a_what(self) -> str:
        """``what`` with its article: "an agent id", "a SKU"."""
        return f"{'an' if self.what[0] in 'aeio' else 'a'} {self.what}"

    def valid(self, value: object) -> bool:
        return self.problem(value) is None

    def check(self, value: object, name: str, *, allow_empty: bool = False, stored: bool = False) -> str:
        """``value`` if it is one of these; else ``ProtocolError`` naming ``name``."""
        problem = self.problem(value, allow_empty=allow_empty, stored=stored)
        if problem is not None:
            raise ProtocolError(f"{problem}; {self.a_what} is {self.rule()}", field=name)
        assert isinstance(value, str)
        return value

    def rule(self) -> str:
        """The rule in words, for a message: "1 to 64 characters, no control characters …"."""
        shape = f"{self.shape}, " if self.shape else ""
        dots = f", {DOT_SEGMENT_RULE}" if self.path_segment else ""
        return f"{shape}1 to {self.max_len} characters, {TEXT_RULE}{dots}"


CODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
AGENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]*")
SOURCE_RE = re.compile(r"(scanner|pos|api|session|import|hub):[^\s]+")
CODE_SHAPE = "ASCII letters, digits, '.', '_' and '-'"

LOCATION = TextField("location code", 32, CODE_RE, CODE_SHAPE, path_segment=True)  # CODE_RE refuses dots already
AGENT_ID = TextField("agent id", 64, AGENT_RE, "ASCII letters, digits, '.', '_', ':' and '-'")
SKU = TextField("SKU", 64, path_segment=True)
SOURCE = TextField("source", 96, SOURCE_RE, "scanner:<id>, pos:<vendor>, api:<client> … without spaces")
REF = TextField("ref", 128)
REASON = TextField("reason", 64)
STAFF = TextField("staff id", 32, CODE_RE, CODE_SHAPE)  # an agent's [localapi.staff] keys; attrs "by" of its events
ATTR_KEY = TextField("key name", ATTR_KEY_MAX_LEN)


def is_location(value: object) -> TypeGuard[str]:
    """True for a well-formed location code: the rule ``LOCATION`` applies to events, as a test."""
    return LOCATION.valid(value)


def check_attrs(value: Any, name: str = "attrs") -> dict[str, AttrValue]:
    """A checked copy of an event's attrs (see the module docstring), or ``ProtocolError`` naming the item."""
    if not isinstance(value, Mapping):
        raise ProtocolError(f"must be a map, got {type(value).__name__}", field=name)
    if len(value) > ATTRS_MAX_KEYS:
        raise ProtocolError(f"has {len(value)} keys; the limit is {ATTRS_MAX_KEYS}", field=name)
    out: dict[str, AttrValue] = {}
    for key, item in value.items():
        if (problem := ATTR_KEY.problem(key)) is not None:
            raise ProtocolError(f"key {problem}", field=name)
        where = f"{name}.{key}"
        if isinstance(item, str):
            if len(item) > ATTR_STR_MAX_LEN:
                raise ProtocolError(f"is {len(item)} characters long; the limit is {ATTR_STR_MAX_LEN}", field=where)
            if not is_unicode(item):
                raise ProtocolError("holds a lone surrogate (\\ud800–\\udfff), which is not Unicode text", field=where)
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise ProtocolError(f"must be between {INT64_MIN} and {INT64_MAX}, got {item}", field=where)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ProtocolError(f"is {item}, which JSON cannot carry; send a finite number or null", field=where)
        else:
            raise ProtocolError(
                f"must be a string, number, boolean or null (attrs are flat), got {type(item).__name__}", field=where
            )
        out[key] = item
    return out


def json_safe(value: Any) -> Any:
    """``value`` (decoded JSON) with what strict JSON cannot carry replaced: a lone surrogate by U+FFFD,
    NaN and ±Infinity by None. Values already safe come back as they are (the same object)."""
    if isinstance(value, str):
        return SURROGATE_RE.sub("\ufffd", value) if SURROGATE_RE.search(value) else value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class JsonRefused(ValueError):
    """A JSON document outside the rule; the message is a clause ("it holds NaN, …")."""


def _refuse_constant(name: str) -> Any:
    raise JsonRefused(f"it holds {name}, which strict JSON has not; send a finite number or null")


def check_json(value: Any, depth_max: int = JSON_DEPTH_MAX) -> Any:
    """``value`` (parsed JSON) if it nests at most ``depth_max`` levels and holds no lone surrogate, in any key
    or string; else ``JsonRefused``. Iterative, so a deep document cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            if SURROGATE_RE.search(item):
                raise JsonRefused("it holds a lone surrogate escape (\\ud800–\\udfff), which is not Unicode text")
        elif isinstance(item, float):
            if not math.isfinite(item):  # 1e999 parses as inf
                raise JsonRefused("it holds a number too large for a float (it reads as Infinity); send a smaller one")
        elif isinstance(item, dict):
            if level >= depth_max:
                raise JsonRefused(f"it nests deeper than {depth_max} levels")
            stack.extend((k, level + 1) for k in item)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            if level >= depth_max:
                raise JsonRefused(f"it nests deeper than {depth_max} levels")
            stack.extend((v, level + 1) for v in item)
    return value


def loads_json(raw: bytes | str, depth_max: int = JSON_DEPTH_MAX, *, unique_keys: bool = False) -> Any:
    """Parse a JSON request body under the rule: UTF-8, no NaN/Infinity literals, no lone surrogate escapes,
    at most ``depth_max`` levels. Raises ``JsonRefused`` (a ``ValueError``) with a clause saying what is wrong.

    ``unique_keys`` also refuses an object naming a key twice: json keeps the last, so
    ``{"type": "receive", "type": "count"}`` would be read as a count that no one can see was sent."""
    try:
        hook = _unique_pairs if unique_keys else None
        value = json.loads(raw, parse_constant=_refuse_constant, object_pairs_hook=hook)
    except JsonRefused:
        raise
    except UnicodeDecodeError as err:
        raise JsonRefused("it is not UTF-8") from err
    except RecursionError as err:  # json's C scanner recurses once per nesting level
        raise JsonRefused(f"it nests deeper than {depth_max} levels") from err
    except ValueError as err:
        if "integer string conversion" in str(err):  # Python's own bound, whose message tells a programmer what to do
            raise JsonRefused("it holds a whole number with thousands of digits; send a smaller one") from err
        raise JsonRefused(str(err)) from err
    return check_json(value, depth_max)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise JsonRefused(f"it names the key {shown(twice, 40)} twice in one object")
    return obj


def token_problem(token: str) -> str | None:
    """Why ``token`` (already stripped) cannot be a bearer credential, or None: one line of visible ASCII."""
    lines = token.splitlines()
    if len(lines) > 1:
        return f"it holds {len(lines)} lines"
    if not all("!" <= c <= "~" for c in token):
        return "it holds a space, a control character or a non-ASCII character"
    if len(token) > 1 and token[0] == token[-1] and token[0] in "'\"":
        # pasted with its quotes: a docker --env-file or systemd EnvironmentFile= line keeps them, and so does a
        # TOML value quoted twice; the hub would only answer 401, as for a revoked credential
        return "it is wrapped in quotes, which are not part of the credential; remove them"
    return None


# C:\… or C:/… (a drive) or \\server\share (UNC): a Windows path, which a POSIX system reads as a relative name
WINDOWS_PATH = re.compile(r"[A-Za-z]:[\\/]|\\\\")


def path_problem(value: str, *, platform: str | None = None) -> str | None:
    """Why ``value`` cannot be a path of this system, or None.

    A control character comes of a backslash in a "double-quoted" TOML string (``"C:\\new\\tmp"`` holds a line
    break and a tab: TOML's escapes); a Windows path on a POSIX system (a configuration copied from a Windows
    machine) would be a folder named ``C:\\ProgramData\\…`` beside the configuration file. Either is refused, not made.
    """
    platform = sys.platform if platform is None else platform
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return (
            f'holds a control character ({value!r}): in a "double-quoted" TOML string a backslash starts an escape'
            " such as \\n or \\t; write a Windows path in 'single quotes' (or with forward slashes)"
        )
    if platform != "win32" and WINDOWS_PATH.match(value):
        return (
            f"is a Windows path ({value!r}) and this system is not Windows; write a path of this system (a"
            " configuration from a Windows machine needs its paths changed)"
        )
    return None
