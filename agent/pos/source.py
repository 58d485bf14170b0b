"""Reading an export file as a stream of CSV rows, whatever its encoding.

``scan_file`` reads the bytes once (in chunks, memory flat) to hash them and
decide the encoding: UTF-16 if it starts with a UTF-16 byte-order mark, else
UTF-8 (with or without BOM) if every byte decodes strictly, else cp1252 — the
Windows encoding that Excel and older POS back offices write. The five bytes
cp1252 leaves undefined are read as the C1 control characters Windows maps
them to, so one odd byte lands a row in quarantine instead of failing the file.

``CsvRows`` then reads the text through the csv module — one row at a time,
with the line it starts on and the bytes read so far (for progress).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self, TextIO

from agent.pos.errors import FileRejected

SCAN_CHUNK_BYTES = 1 << 20
HEADER_MAX_CHARS = 64 * 1024
DELIMITERS = (",", ";", "\t", "|")
_C1_ERRORS = "shelfsync-c1"


def _c1_handler(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return "".join(chr(b) for b in err.object[err.start : err.end]), err.end


codecs.register_error(_C1_ERRORS, _c1_handler)


@dataclass(frozen=True, slots=True)
class FileScan:
    """What one pass over a file's bytes found."""

    path: Path
    size_bytes: int
    mtime_ms: int
    sha256: str
    encoding: str  # "utf-8", "utf-8-sig" (with BOM), "utf-16" or "cp1252"


def scan_file(path: Path) -> FileScan:
    """Hash the file and decide its encoding, reading it in chunks."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as raw:
            stat = path.stat()
            first = raw.read(SCAN_CHUNK_BYTES)
            utf16 = first.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
            bom = first.startswith(codecs.BOM_UTF8)
            decoder = codecs.getincrementaldecoder("utf-8")("strict")
            utf8_ok = not utf16
            chunk = first
            size = 0
            while chunk:
                digest.update(chunk)
                size += len(chunk)
                if utf8_ok:
                    try:
                        decoder.decode(chunk)
                    except UnicodeDecodeError:
                        utf8_ok = False
                chunk = raw.read(SCAN_CHUNK_BYTES)
            if utf8_ok:
                try:
                    decoder.decode(b"", final=True)
                except UnicodeDecodeError:
                    utf8_ok = False
    except OSError as err:
        raise FileRejected(f"{path} could not be read: {err.strerror or err}") from err
    encoding = "utf-16" if utf16 else ("utf-8-sig" if bom else "utf-8") if utf8_ok else "cp1252"
    return FileScan(path, size, stat.st_mtime_ns // 1_000_000, digest.hexdigest(), encoding)


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


class CsvRows:
    """The rows of one export: ``header``, then ``for line, fields in rows``.

    ``line`` is the 1-based line a row starts on (the header is line 1; a
    quoted field may span lines). ``bytes_read`` is how far into the file the
    reader is. A row the csv module cannot parse comes back as
    ``(line, None)`` with ``error`` set, and reading goes on.
    """

    def __init__(self, scan: FileScan) -> None:
        self.scan = scan
        self.header: tuple[str, ...] = ()
        self.delimiter = ","
        self.error: str | None = None
        self._binary: BinaryIO | None = None
        self._text: TextIO | None = None
        self._reader: Iterator[list[str]] | None = None
        self._line_num = 1

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        try:
            self._binary = self.scan.path.open("rb")
        except OSError as err:
            raise FileRejected(f"{self.scan.path} could not be read: {err.strerror or err}") from err
        # utf-8 was validated by the scan; cp1252 reads every byte; a broken
        # utf-16 character becomes U+FFFD and its row fails validation.
        errors = {"cp1252": _C1_ERRORS, "utf-16": "replace"}.get(self.scan.encoding, "strict")
        self._text = io.TextIOWrapper(self._binary, encoding=self.scan.encoding, errors=errors, newline="")
        try:
            first = self._text.readline(HEADER_MAX_CHARS)
        except (UnicodeError, OSError) as err:
            self.close()
            raise FileRejected(f"{self.scan.path.name} could not be read as {self.scan.encoding}: {err}") from err
        while first and not first.strip():  # blank lines before the header
            self._line_num += 1
            first = self._text.readline(HEADER_MAX_CHARS)
        if not first.strip():
            self.close()
            raise FileRejected(f"{self.scan.path.name} is empty: it has no header row")
        self.delimiter = _delimiter(first)
        reader = csv.reader(itertools.chain((first,), self._text), delimiter=self.delimiter)
        try:
            header = next(reader)
        except csv.Error as err:
            self.close()
            raise FileRejected(f"the header row of {self.scan.path.name} is not CSV: {err}") from err
        self.header = tuple(h.strip() for h in header)
        self._header_lines = reader.line_num
        self._line_num += reader.line_num - 1
        self._csv = reader

    @property
    def bytes_read(self) -> int:
        binary = self._binary
        if binary is None or binary.closed:
            return self.scan.size_bytes
        raw = getattr(binary, "raw", binary)
        return min(int(raw.tell()), self.scan.size_bytes)

    def __iter__(self) -> Iterator[tuple[int, list[str] | None]]:
        reader = self._csv
        offset = self._line_num - self._header_lines  # lines skipped before the header
        last = reader.line_num
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                self.error = str(err)
                line = last + 1 + offset
                last = reader.line_num
                yield line, None
                continue
            line = last + 1 + offset
            last = reader.line_num
            yield line, fields

    def close(self) -> None:
        """Close the file. Safe to call twice."""
        if self._text is not None:
            self._text.close()
            self._text = None
        if self._binary is not None:
            self._binary.close()
            self._binary = None

