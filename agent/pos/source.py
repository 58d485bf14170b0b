"""Reading an export file as a stream of CSV rows, whatever its encoding.

``scan_file`` reads the bytes once (in chunks, memory flat) to hash them and
decide the encoding: UTF-32 if it starts with a UTF-32 byte-order mark (looked
for first: FF FE 00 00 begins with UTF-16's FF FE), UTF-16 if it starts with a
UTF-16 byte-order mark, or
without one when its first bytes are mostly characters of one byte paired with
a zero byte, always on the same side (``_utf16_without_bom``: what Windows'
"Unicode" exports without a mark look like — read as UTF-8 they are a header
of NUL-laced names and the file failed), else
UTF-8 (with or without BOM) if every byte decodes strictly, else cp1252 — the
Windows encoding that Excel and older POS back offices write. The five bytes
cp1252 leaves undefined are read as the C1 control characters Windows maps
them to, so one odd byte lands a row in quarantine instead of failing the file.
A file that is not all UTF-8 but holds UTF-8 beyond ASCII is mixed (``MIXED``,
rows appended by two programs): its UTF-8 is read as UTF-8 and each byte that
is not UTF-8 as cp1252. Read whole as cp1252, its UTF-8 rows were booked
under mojibake SKUs ("CAFÃ‰-01"), silently.

``CsvRows`` then reads the text through the csv module — one row at a time,
with the line it starts on and the bytes read so far (for progress). It
hands the csv module one physical line at a time, each at most
``LINE_MAX_CHARS`` (a longer line is skipped unread and reported as a bad
row, so a 2 GB line costs no memory), and it watches for a quote that is
opened and never closed: such a field would swallow every line after it, so
the row it starts on is reported as bad and the lines after it are read
again on their own. A bad row keeps its text (``bad_text``) for the
quarantine, as a good row that fails validation does.

Rows are read from the bytes the scan hashed and no further: a till writing on
while a long export is read left a row cut at the end of the file, recorded as
a sale of its own and again whole later. ``CsvRows.changed`` tells whether the
file was cut short since the scan (rewritten in place), so the import can stop
before it reads the new version from the middle of a line.

The drop folder reads with ``follow_links=False``: a symbolic link is refused
unread (``O_NOFOLLOW`` where the system has it, a check of the link itself
everywhere), so a link cannot make the agent read a file outside the folder.
"""

from __future__ import annotations

import codecs
import csv
import errno
import hashlib
import io
import itertools
import os
import re
import stat as stat_mode
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self, TextIO

from agent.pos.errors import FileRejected
from agent.pos.model import RAW_MAX_CHARS, clip_raw
from protocol.values import shown

SCAN_CHUNK_BYTES = 1 << 20
LINE_START_MARKS = ("\ufeff", "\x1a")  # a byte-order mark, the DOS end-of-file mark: passed over at a line's start
UTF16_SNIFF_BYTES = 4096  # the first bytes looked at for UTF-16 without a byte-order mark
UTF16_ZERO_SHARE = 0.5  # at least this share of those pairs has a zero byte on one side …
UTF16_STRAY_SHARE = 0.05  # … and at most this share on the other
HEADER_MAX_CHARS = 64 * 1024
LINE_MAX_CHARS = 1 << 20  # a physical line longer than this is no export row: skipped unread, reported
DELIMITERS = (",", ";", "\t", "|")
_C1_ERRORS = "shelfsync-c1"


def _c1_handler(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return "".join(chr(b) for b in err.object[err.start : err.end]), err.end


codecs.register_error(_C1_ERRORS, _c1_handler)

MIXED = "utf-8+cp1252"  # UTF-8 with some rows in cp1252: each byte that is not UTF-8 is read as cp1252
_CP1252_ERRORS = "shelfsync-cp1252"
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8
_WIDE_UTF8 = re.compile("[\u0080-\udc7f\udd00-\U0010ffff]")  # a character UTF-8 writes in several bytes


def _cp1252_handler(err: UnicodeError) -> tuple[str, int]:
    """Bytes that are not UTF-8 in a mixed file, read as cp1252 (the five it leaves undefined as C1 controls)."""
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return err.object[err.start : err.end].decode("cp1252", errors=_C1_ERRORS), err.end


codecs.register_error(_CP1252_ERRORS, _cp1252_handler)


@dataclass(frozen=True, slots=True)
class FileScan:
    """What one pass over a file's bytes found."""

    path: Path
    size_bytes: int
    mtime_ms: int
    sha256: str
    encoding: str  # "utf-8", "utf-8-sig" (BOM), "utf-16", "utf-16-le"/"-be" (no BOM), "utf-32", "cp1252" or MIXED
    follow_links: bool = True  # False: the file is opened again for its rows without following a link
    prefix: Prefix | None = None  # the digest of its first bytes, when ``scan_file`` was asked (``prefix_at``)


@dataclass(frozen=True, slots=True)
class Prefix:
    """The first ``size`` bytes of a file: their SHA-256, and the hash itself, to hash on from there."""

    size: int
    sha256: str
    hasher: Any = field(compare=False, repr=False)


def _open_file(path: Path, follow_links: bool) -> BinaryIO:
    """``path`` opened for reading. With ``follow_links=False`` a symbolic link, or anything that is not a
    regular file, is refused without reading a byte through it."""
    name = shown(path.name, bare=True)
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
    if not follow_links:
        # O_NONBLOCK: a FIFO swapped in is not waited on (it is refused below); regular files ignore it
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        if path.is_symlink():  # systems without O_NOFOLLOW; and a clearer sentence than ELOOP everywhere
            raise FileRejected(_link_refused(path))
        _refuse_special(path)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if not follow_links and (err.errno == errno.ELOOP or path.is_symlink()):
            raise FileRejected(_link_refused(path)) from err
        raise FileRejected(f"{name} could not be read: {err.strerror or err}") from err
    try:
        if not follow_links and not stat_mode.S_ISREG(os.fstat(fd).st_mode):
            raise FileRejected(f"{name} is not a regular file; only files placed in the drop folder are imported")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_SPECIAL_KINDS = ((stat_mode.S_ISFIFO, "a pipe (FIFO)"), (stat_mode.S_ISSOCK, "a socket"),
                  (stat_mode.S_ISCHR, "a device"), (stat_mode.S_ISBLK, "a device"), (stat_mode.S_ISDIR, "a folder"))  # fmt: skip


def _refuse_special(path: Path) -> None:
    """FileRejected for a pipe, socket, device or folder, before it is opened: opening one may block, fail with
    a puzzling error (a socket: "No such device or address") or do something (a tape device rewinds)."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return  # gone: the open says so
    kind = next((what for test, what in _SPECIAL_KINDS if test(mode)), None)
    if kind is not None:
        raise FileRejected(
            f"{shown(path.name, bare=True)} is {kind}, not a regular file; only files placed in the drop folder "
            "are imported"
        )


def _link_refused(path: Path) -> str:
    try:
        target = f" (to {shown(os.readlink(path))})"
    except OSError:
        target = ""
    return (
        f"{shown(path.name, bare=True)} is a symbolic link{target}; the drop folder never reads a file through a "
        "link, which could point anywhere on this computer: move or copy the export itself into the folder"
    )


def _utf16_without_bom(head: bytes) -> str | None:
    """"utf-16-le" or "utf-16-be" when ``head`` (a file's first bytes, no BOM) reads as UTF-16 without a mark.

    An export is mostly digits, letters, separators and line breaks: in UTF-16 each is its byte and a zero
    byte, the zero always on the same side. UTF-8 and cp1252 text holds no zero byte at all, and a UTF-8
    file with stray NULs has them in runs, on both sides alike: neither is taken for UTF-16."""
    sample = head[: min(len(head), UTF16_SNIFF_BYTES) // 2 * 2]
    pairs = len(sample) // 2
    if pairs < 2:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    for zeros, stray, encoding in ((odd, even, "utf-16-le"), (even, odd, "utf-16-be")):
        if zeros >= pairs * UTF16_ZERO_SHARE and stray <= pairs * UTF16_STRAY_SHARE:
            return encoding
    return None


def scan_file(path: Path, *, follow_links: bool = True, prefix_at: int | None = None) -> FileScan:
    """Hash the file and decide its encoding, reading it in chunks (see ``_open_file`` for ``follow_links``).

    ``prefix_at``: the digest of the file's first ``prefix_at`` bytes too (``FileScan.prefix``; None when the
    file is shorter), for an import that goes on from a checkpoint: its bytes up to there must be the same."""
    digest = hashlib.sha256()
    prefix: Prefix | None = None
    try:
        with _open_file(path, follow_links) as raw:
            stat = os.fstat(raw.fileno())
            # A regular file is read to the size it has now, however much is written meanwhile: the digest,
            # the encoding and the rows then all describe the same bytes, the ones as of ``stat``.
            left = stat.st_size if stat_mode.S_ISREG(stat.st_mode) else -1
            first = _read_upto(raw, SCAN_CHUNK_BYTES, left)
            # UTF-32's little-endian mark (FF FE 00 00) starts with UTF-16's (FF FE), so it is looked for first
            utf32 = first.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE))
            utf16 = utf32 or first.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
            bom = first.startswith(codecs.BOM_UTF8)
            wide = "utf-32" if utf32 else None if utf16 or bom else _utf16_without_bom(first)  # None: "utf-16"
            utf16 = utf16 or wide is not None
            # surrogateescape: a byte that is not UTF-8 comes out as U+DC80..U+DCFF, so one pass tells both
            # whether the file is all UTF-8 and whether it holds any UTF-8 beyond ASCII (then it is mixed)
            decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
            utf8_ok, utf8_wide = not utf16, False
            chunk = first
            size = 0
            while chunk or not utf16:
                if prefix_at is not None and prefix is None and size + len(chunk) >= prefix_at:
                    head = digest.copy()
                    head.update(chunk[: prefix_at - size])
                    prefix = Prefix(prefix_at, head.hexdigest(), head)
                digest.update(chunk)
                size += len(chunk)
                if not utf16:
                    text = decoder.decode(chunk, final=not chunk)
                    utf8_ok = utf8_ok and _NOT_UTF8.search(text) is None
                    utf8_wide = utf8_wide or _WIDE_UTF8.search(text) is not None
                if not chunk:
                    break
                left = left - len(chunk) if left >= 0 else -1
                chunk = _read_upto(raw, SCAN_CHUNK_BYTES, left)
    except OSError as err:
        raise FileRejected(f"{shown(path.name, bare=True)} could not be read: {err.strerror or err}") from err
    fallback = MIXED if utf8_wide else "cp1252"
    encoding = (wide or "utf-16") if utf16 else ("utf-8-sig" if bom else "utf-8") if utf8_ok else fallback
    return FileScan(path, size, stat.st_mtime_ns // 1_000_000, digest.hexdigest(), encoding, follow_links, prefix)


_LINE_BREAKS = {  # the bytes of a line feed and a carriage return, and of one character, in each wide encoding
    "utf-16-le": ((b"\n\x00", b"\r\x00"), 2), "utf-16-be": ((b"\x00\n", b"\x00\r"), 2),
    "utf-32-le": ((b"\n\x00\x00\x00", b"\r\x00\x00\x00"), 4), "utf-32-be": ((b"\x00\x00\x00\n", b"\x00\x00\x00\r"), 4),
}  # fmt: skip
TAIL_CHUNK_BYTES = 64 * 1024


def complete_lines_end(scan: FileScan) -> int | None:
    """Where the file's complete lines end: the byte after its last line break, when its last line has none yet
    (then the rows before it can be imported while that line waits); None when it has no line break at all.
    The file's size when it ends with a line break (a DOS end-of-file mark or zero bytes after it pass over)."""
    with _open_file(scan.path, scan.follow_links) as raw:
        head = raw.read(4)
        encoding = scan.encoding
        if encoding in ("utf-16", "utf-32"):  # with a byte-order mark: it says which
            big = head.startswith(codecs.BOM_UTF32_BE if encoding == "utf-32" else codecs.BOM_UTF16_BE)
            encoding = f"{encoding}-{'be' if big else 'le'}"
        breaks, width = _LINE_BREAKS.get(encoding, ((b"\n", b"\r"), 1))
        end = scan.size_bytes - scan.size_bytes % width
        tail_only = True  # only zero bytes and DOS end-of-file marks after the break found
        while end > 0:
            start = max(0, end - TAIL_CHUNK_BYTES)
            start -= start % width
            raw.seek(start)
            chunk = _read_upto(raw, end - start, end - start)
            for at in range(len(chunk) - width, -1, -width):
                if chunk[at : at + width] in breaks:
                    found = start + at + width
                    return scan.size_bytes if tail_only else found
                if chunk[at : at + width].strip(b"\x00\x1a"):
                    tail_only = False
            end = start
    return None


def _read_upto(raw: BinaryIO, chunk: int, left: int) -> bytes:
    """The next ``chunk`` bytes at most, and never more than ``left`` (-1: no bound)."""
    return raw.read(chunk if left < 0 else min(chunk, left))


class _Scanned(io.RawIOBase):
    """The bytes of a file the scan read, and none written after: ``size`` bytes from its start.

    Seekable, so that the text read from it can tell where a row begins (``CsvRows.position``) and an import
    go on from there; every byte read is hashed once, in order, so a checkpoint knows the digest of the bytes
    before it (``hashed``)."""

    def __init__(self, inner: BinaryIO, size: int) -> None:
        super().__init__()
        self._inner = inner
        self._size = size
        self._left = size
        self._pos = 0
        self.hasher: Any = hashlib.sha256()
        self.hashed = 0  # the first bytes hashed

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._left)
        if n <= 0:
            return 0
        view = memoryview(buffer)[:n]
        got = self._inner.readinto(view)  # type: ignore[attr-defined]
        got = got or 0
        end = self._pos + got
        if end > self.hashed and self._pos <= self.hashed:
            self.hasher.update(view[self.hashed - self._pos : got])
            self.hashed = end
        self._left -= got
        self._pos = end
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence] + offset
        target = max(0, min(target, self._size))
        self._inner.seek(target)
        self._pos = target
        self._left = self._size - target
        return target

    def tell(self) -> int:
        return self._pos

    def fileno(self) -> int:
        return self._inner.fileno()

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()


@dataclass(frozen=True, slots=True)
class Position:
    """Where a row begins in an export being read: the text stream's position (``TextIOWrapper.tell``), the
    physical lines before it, and the digest of the first ``hashed`` bytes read (at least those before it)."""

    cookie: int
    line: int
    hashed: int
    sha256: str


@dataclass(frozen=True, slots=True)
class _Line:
    """One physical line of the file, as handed to the csv module."""

    number: int  # 1-based
    text: str
    overlong: bool = False  # longer than LINE_MAX_CHARS: skipped, ``text`` is an empty line in its place
    head: str = ""  # of an overlong line: its first RAW_MAX_CHARS characters, kept for the quarantine

    @property
    def raw(self) -> str:
        """The line as read, for the quarantine (without its line break; an overlong line's head)."""
        return clip_raw(self.head + "…" if self.overlong else self.text.rstrip("\r\n"))


def _runaway(fields: list[str] | None, taken: list[_Line], width: int, delimiter: str) -> bool:
    """Whether a row spanning several lines is a stray quote rather than a field holding line breaks.

    It is when the row is broken (a csv error, a field count other than the
    header's, a line skipped as overlong), when a quote is still open at its
    end (an odd count), or when a line inside it is a whole row on its own (a
    stray quote swallowed rows until the next stray quote closed it): one that
    reads cleanly by itself into the header's number of fields. A line inside a
    field that holds line breaks begins and ends inside its quotes, so read by
    itself it usually leaves a quote open at its end: not a row of its own.
    """
    if fields is None or len(fields) != width or any(line.overlong for line in taken):
        return True
    if sum(line.text.count('"') for line in taken) % 2 == 1:
        return True
    return any(_whole_row(line.text, width, delimiter) for line in taken[1:-1])


def _whole_row(text: str, width: int, delimiter: str) -> bool:
    try:
        return len(next(csv.reader([text], delimiter=delimiter, strict=True), [])) == width
    except csv.Error:  # a quote left open at its end, or a stray one: a piece of a longer row
        return False


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


class CsvRows:
    """The rows of one export: ``header``, then ``for line, fields in rows``.

    ``line`` is the 1-based line a row starts on (the header is line 1; a
    quoted field may span lines). ``bytes_read`` is how far into the file the
    reader is. A row the csv module cannot parse comes back as
    ``(line, None)`` with ``error`` (why) and ``bad_text`` (the line as read,
    cut by ``clip_raw``) set, and reading goes on.
    """

    def __init__(self, scan: FileScan, end: int | None = None) -> None:
        self.scan = scan
        self.end = scan.size_bytes if end is None else end  # rows are read from the first ``end`` bytes only
        self.exhausted = False  # the reader asked for a line past ``end``: a quote was open at the last line
        self.header: tuple[str, ...] = ()
        self.delimiter = ","
        self.error: str | None = None
        self.bad_text = ""
        self._binary: BinaryIO | None = None
        self._text: TextIO | None = None
        self._reader: Iterator[list[str]] | None = None
        self._line_num = 0  # physical lines taken from the file so far
        self._pushed: deque[_Line] = deque()  # lines to read again, before the file's next ones
        self._taken: list[_Line] = []  # the lines of the record being read

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        opened = _open_file(self.scan.path, self.scan.follow_links)
        self._binary = io.BufferedReader(_Scanned(opened, self.end)) if self._regular(opened) else opened
        # utf-8 was validated by the scan; cp1252 reads every byte; a broken
        # utf-16 character becomes U+FFFD and its row fails validation.
        errors = {"cp1252": _C1_ERRORS, MIXED: _CP1252_ERRORS, "utf-16": "replace", "utf-16-le": "replace",
                  "utf-16-be": "replace", "utf-32": "replace"}.get(self.scan.encoding, "strict")  # fmt: skip
        codec = "utf-8-sig" if self.scan.encoding == MIXED else self.scan.encoding  # -sig: a BOM, if any, is no text
        self._text = io.TextIOWrapper(self._binary, encoding=codec, errors=errors, newline="")
        try:
            first = self._header_line()
            while first and not first.strip():  # blank lines before the header
                first = self._header_line()
        except (UnicodeError, OSError) as err:
            self.close()
            raise FileRejected(f"{self._name} could not be read as {self.scan.encoding}: {err}") from err
        if not first.strip():
            self.close()
            raise FileRejected(f"{self._name} is empty: it has no header row")
        self.delimiter = _delimiter(first)
        self._taken = [_Line(self._line_num, first)]
        reader = csv.reader(itertools.chain((first,), self._lines()), delimiter=self.delimiter)
        try:
            header = next(reader)
        except csv.Error as err:
            self.close()
            raise FileRejected(f"the header row of {self._name} is not CSV: {err}") from err
        if any(line.overlong for line in self._taken):
            self.close()
            raise FileRejected(
                f"the header row of {self._name} is longer than {LINE_MAX_CHARS:,} characters; "
                "it is not an export this agent can read"
            )
        self.header = tuple(h.strip() for h in header)
        self._csv = reader

    def row_raw(self) -> str:
        """The physical lines of the row just read, as read (line breaks included)."""
        return "".join(line.text for line in self._taken)

    def unterminated(self) -> bool:
        """Whether the row just read ends without a line break: the file's last line, perhaps not finished."""
        return bool(self._taken) and not self._taken[-1].text.endswith(("\n", "\r"))

    def position(self) -> Position | None:
        """Where the next row begins, to go on from there later (``resume``); None when that cannot be said here:
        lines read ahead wait to be read again (a quote left open), or the file is no regular file."""
        text, binary = self._text, self._binary
        if text is None or binary is None or self._pushed or not isinstance(binary, io.BufferedReader):
            return None
        raw = binary.raw
        if not isinstance(raw, _Scanned):
            return None
        try:
            cookie = text.tell()
        except (OSError, ValueError):
            return None
        return Position(cookie, self._line_num, raw.hashed, raw.hasher.hexdigest())

    def resume(self, position: Position, prefix: Prefix) -> None:
        """Go on at ``position`` (after ``open``, which read the header): the file's first ``prefix.size`` bytes
        are the ones hashed when the position was taken (the caller compared their digests)."""
        text, binary = self._text, self._binary
        assert text is not None and isinstance(binary, io.BufferedReader) and isinstance(binary.raw, _Scanned)
        raw = binary.raw
        raw.hasher, raw.hashed = prefix.hasher.copy(), prefix.size
        text.seek(position.cookie)
        self._line_num = position.line
        self._pushed.clear()
        self._csv = csv.reader(self._lines(), delimiter=self.delimiter)

    def _regular(self, opened: BinaryIO) -> bool:
        try:
            return stat_mode.S_ISREG(os.fstat(opened.fileno()).st_mode)
        except OSError:
            return False

    def changed(self) -> bool:
        """Whether the file is shorter than when it was scanned: cut short and rewritten in place, so the rows
        read since may begin in the middle of a line of the new version, and the import stops. Written on is
        no change here: what was added is never read (``_Scanned``), and the watcher imports it once it settles;
        stopping for it, a till appending every few seconds to a long export had it begun again for ever."""
        binary = self._binary
        if binary is None or binary.closed:
            return False
        try:
            return os.fstat(binary.fileno()).st_size < self.scan.size_bytes
        except OSError:
            return False

    @property
    def _name(self) -> str:
        """The file's name for a sentence: escaped and bounded (a name can hold a newline or a terminal escape)."""
        return shown(self.scan.path.name, bare=True)

    def _header_line(self) -> str:
        """The next physical line, for the header; a header longer than HEADER_MAX_CHARS rejects the file."""
        assert self._text is not None
        line = self._text.readline(HEADER_MAX_CHARS)
        self._line_num += 1
        if len(line) >= HEADER_MAX_CHARS and not line.endswith(("\n", "\r")):
            raise FileRejected(
                f"the header row of {self._name} is longer than {HEADER_MAX_CHARS:,} characters "
                "(a binary file, or not an export?); it is not an export this agent can read"
            )
        return line

    def _lines(self) -> Iterator[str]:
        """Physical lines for the csv module: lines to read again first, then the file's, each noted in ``_taken``."""
        text = self._text
        while True:
            if self._pushed:
                line = self._pushed.popleft()
            else:
                if text is None or text.closed:
                    return
                raw = text.readline(LINE_MAX_CHARS)
                if not raw:
                    self.exhausted = True
                    return
                self._line_num += 1
                if raw.startswith(LINE_START_MARKS):
                    # a byte-order mark inside the file (two exports joined into one), or the DOS end-of-file
                    # mark (Ctrl-Z) an older till writes after its last line: neither is text of a row
                    raw = raw.lstrip("".join(LINE_START_MARKS))
                line = _Line(self._line_num, raw)
                if len(raw) >= LINE_MAX_CHARS and not raw.endswith(("\n", "\r")):
                    while (rest := text.readline(LINE_MAX_CHARS)) and not rest.endswith(("\n", "\r")):
                        pass  # the rest of an overlong line is skipped, never held in memory
                    line = _Line(self._line_num, "\n", overlong=True, head=raw[:RAW_MAX_CHARS])
            self._taken.append(line)
            yield line.text

    @property
    def bytes_read(self) -> int:
        binary = self._binary
        if binary is None or binary.closed:
            return self.scan.size_bytes
        raw = getattr(binary, "raw", binary)
        return min(int(raw.tell()), self.scan.size_bytes)

    def __iter__(self) -> Iterator[tuple[int, list[str] | None]]:
        reader = self._csv
        while True:
            self._taken = []
            error: str | None = None
            fields: list[str] | None
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                fields, error = None, str(err)
            taken = self._taken
            if not taken:
                return
            line = taken[0].number
            if len(taken) > 1 and (error is not None or _runaway(fields, taken, len(self.header), self.delimiter)):
                # A quote opened on this line swallowed the lines after it: read them again on their own.
                self._pushed.extendleft(reversed(taken[1:]))
                reader = self._csv = csv.reader(self._lines(), delimiter=self.delimiter)  # the old one may be at its end
                self.error = (
                    f"a quoted field opened on line {line} is never closed properly; "
                    f"the {len(taken) - 1} line(s) after it are read again on their own"
                )
                self.bad_text = taken[0].raw
                yield line, None
                continue
            if taken[0].overlong:
                self.error = f"line {line} is longer than {LINE_MAX_CHARS:,} characters and was skipped unread"
                self.bad_text = taken[0].raw
                yield line, None
                continue
            if error is not None:
                self.error = error
                self.bad_text = taken[0].raw
                yield line, None
                continue
            yield line, fields

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        if self._text is not None:
            self._text.close()
            self._text = None
        if self._binary is not None:
            self._binary.close()
            self._binary = None

