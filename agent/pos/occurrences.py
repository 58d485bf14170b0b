"""How many times has this row identity been seen in this file? Exactly, in bounded memory.

Two identical lines in one transaction (the same item rung up twice) are two
sales, so a row's key carries its occurrence index among identical lines.
Counting that exactly needs every identity seen so far, which grows with the
file. Recent identities stay in memory in two generations (exports are sorted
by time, so a transaction's lines sit together): when the young generation is
full, the old one is written to a private temporary SQLite file and dropped
whole, and the young one becomes old. A fixed-size Bloom filter says which
identities could be on disk, so a new identity almost never touches it.

Dropping whole dicts (rather than evicting entries one by one) keeps the
allocation pattern the same every cycle, so resident memory stays flat.

An import that goes on after a crash needs the counts as they were at its
checkpoint: ``changes()`` hands over what changed since it was last called
(packed, ``KEY_BYTES`` and a count per identity), stored with the checkpoint,
and ``load`` puts those packs back, oldest first, into a new counter.

Those packs take 20 bytes an identity: 20 MB for a 1,000,000-row export, kept
as long as the drop folder watches the copy it filed, and loaded whole (4-5 s)
each time the till appends to it. An import that ends keeps a ``summary``
instead: the exact counts of the ``RECENT_KEYS`` identities counted last, and
of every other one only a 7-byte fingerprint, sorted: their first byte or two
(``_Fingerprints``) are kept once, in an index of where each value's run
begins, and 6 or 5 bytes of each (5.3 MB a 1,000,000 identities). A counter
loaded from it counts on exactly until a row's identity is neither among those
counts nor surely new, its fingerprint being among the others (a row repeating
one read long before it, or a new row whose fingerprint is alike: one in
``2**56 / known``, 72,000,000,000 when a million are known, so a 100,000-row
append to a 1,000,000-row export is alike once in 720,000): ``next`` raises
``CountsIncomplete`` then, and the import reads the file again from its first
line, which is always exact. A summary an older agent kept (5-byte
fingerprints, once in 11 such appends) is not gone on from: the first row read
after it raises, and the file is read again from its first line once.
"""

from __future__ import annotations

import heapq
import sqlite3
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Self

GENERATION_KEYS = 25_000  # identities per in-memory generation (~90 bytes each); two generations at most
BLOOM_BYTES = 1 << 22  # 4 MiB: 32M bits, 3 probes; under 0.1% false positives at 1M spilled identities
SPILL_CACHE_KIB = 2_048  # SQLite page cache of the spill file
_BLOOM_MASK_BITS = (BLOOM_BYTES * 8) - 1
KEY_BYTES = 16  # the identities ``changes`` packs are this long (agent.pos.rows: a 16-byte BLAKE2b digest)
_COUNT_BYTES = 4
RECENT_KEYS = 4_096  # identities a summary keeps the exact counts of: the last counted (a transaction's lines)
_SUMMARY = b"occurrences-2\n"  # begins a summary (``summary``); packs follow it when an import went on from it
_SUMMARY_5_BYTES = b"occurrences-1\n"  # a summary of 5-byte fingerprints, by an older agent: read again once
_FINGERPRINT_BYTES = 7  # a new identity is taken for a known one once in 2**56 / (identities known): 7.2e10 at 1M
_MAX_INDEX_BYTES = 2  # the most leading bytes of the fingerprints an index keeps once (256 KiB of offsets)


class CountsIncomplete(Exception):
    """A row's identity may have been counted before the summary the counter was loaded from, which kept no count
    of it: its occurrence index is not known here. The import reads the file again from its first line.
    ``older``: the summary was kept by an older agent (5-byte fingerprints), and is not gone on from."""

    def __init__(self, line: int | None = None, *, older: bool = False) -> None:
        super().__init__(f"line {line}" if line is not None else "a row")
        self.line = line
        self.older = older


class _Fingerprints:
    """Sorted fingerprints of ``_FINGERPRINT_BYTES``, read in place (a million of them are 5 MB here, and 60 MB as
    a Python set). Their first ``lead`` bytes are kept once: ``offsets[v]`` is where the run of those beginning
    with the value ``v`` begins among the ``rest`` (``width`` bytes each), ``offsets[v + 1]`` where it ends."""

    __slots__ = ("lead", "offsets", "rest", "width")

    def __init__(self, lead: int, offsets: array[int], rest: bytes) -> None:
        self.lead, self.offsets, self.rest = lead, offsets, rest
        self.width = _FINGERPRINT_BYTES - lead

    @classmethod
    def pack(cls, fingerprints: list[bytes]) -> bytes:
        """``fingerprints`` (sorted, distinct) as ``unpack`` reads them: the leading bytes whose index makes them
        smallest, the index (big-endian offsets), then the rest of each."""
        n = len(fingerprints)
        lead = min(range(_MAX_INDEX_BYTES + 1), key=lambda k: n * (_FINGERPRINT_BYTES - k) + (4 << (8 * k) if k else 0))
        index = b""
        if lead:
            offsets = array("I", (bisect_left(fingerprints, v.to_bytes(lead, "big")) for v in range(1 << (8 * lead))))
            offsets.append(n)
            if sys.byteorder == "little":
                offsets.byteswap()
            index = offsets.tobytes()
        return bytes([lead]) + index + b"".join(f[lead:] for f in fingerprints)

    @classmethod
    def unpack(cls, packed: bytes, count: int) -> tuple[_Fingerprints, int]:
        """The fingerprints ``pack`` wrote at the start of ``packed`` (``count`` of them), and the bytes they took."""
        if not packed or packed[0] > _MAX_INDEX_BYTES:
            raise ValueError("occurrence counts cut short")
        lead = packed[0]
        offsets = array("I")
        at = 1
        if lead:
            end = at + 4 * ((1 << (8 * lead)) + 1)
            offsets.frombytes(packed[at:end])
            if sys.byteorder == "little":
                offsets.byteswap()
            at = end
        else:
            offsets.extend((0, count))
        end = at + count * (_FINGERPRINT_BYTES - lead)
        if len(packed) < end or offsets[-1] != count:
            raise ValueError("occurrence counts cut short")
        return cls(lead, offsets, packed[at:end]), end

    def __len__(self) -> int:
        return self.offsets[-1]

    def __iter__(self) -> Iterator[bytes]:
        rest, width, lead, offsets = self.rest, self.width, self.lead, self.offsets
        for v in range(len(offsets) - 1):
            head = v.to_bytes(lead, "big")
            for i in range(offsets[v], offsets[v + 1]):
                yield head + rest[i * width : (i + 1) * width]

    def __contains__(self, fingerprint: object) -> bool:
        assert isinstance(fingerprint, bytes)
        v = int.from_bytes(fingerprint[: self.lead], "big")
        lo, hi = self.offsets[v], self.offsets[v + 1]
        rest, width = self.rest, self.width
        want = fingerprint[self.lead :]
        while lo < hi:  # bisect over the run, read in place
            mid = (lo + hi) // 2
            if rest[mid * width : (mid + 1) * width] < want:
                lo = mid + 1
            else:
                hi = mid
        return lo < self.offsets[v + 1] and rest[lo * width : (lo + 1) * width] == want


class OccurrenceCounter:
    """``next(key)`` is 0 the first time ``key`` is seen, 1 the second time, …

    Not thread-safe; use from one thread at a time (any thread). Close it to
    delete the spill file.
    """

    def __init__(self, *, generation_keys: int = GENERATION_KEYS) -> None:
        self._young: dict[bytes, int] = {}
        self._old: dict[bytes, int] = {}
        self._generation_keys = generation_keys
        self._bloom: bytearray | None = None  # allocated on the first spill
        self._spill: sqlite3.Connection | None = None
        self.spilled = 0
        self._changed: dict[bytes, int] | None = None  # identity -> count, since ``changes()`` (when tracked)
        # the sorted fingerprints of identities counted before the summary loaded, whose counts it did not keep
        self._known: _Fingerprints | None = None
        self._loaded_recent: list[bytes] = []  # the identities the summary loaded kept counts of, the latest first
        self._older = False  # loaded from a summary of 5-byte fingerprints (an older agent's): not gone on from

    def next(self, key: bytes) -> int:
        """The occurrence index of ``key`` (a digest of at least 12 bytes), then count it."""
        if self._older:
            raise CountsIncomplete(older=True)
        seen = self._young.get(key)
        if seen is None:
            seen = self._old.pop(key, None)
            if seen is None:
                seen = self._spilled_count(key) if self._bloom is not None else 0
                if not seen and self._known is not None and key[:_FINGERPRINT_BYTES] in self._known:
                    raise CountsIncomplete
            if len(self._young) >= self._generation_keys:
                self._age()
        self._young[key] = seen + 1
        if self._changed is not None:
            self._changed[key] = seen + 1
        return seen

    def track(self) -> None:
        """Keep the counts that change, for ``changes()``: only when it is called after every few batches."""
        if self._changed is None:
            self._changed = {}

    def changes(self) -> bytes:
        """The counts changed since the last call, packed (each key is ``KEY_BYTES`` long); then forgets them."""
        changed, self._changed = self._changed or {}, {}
        return b"".join(key + n.to_bytes(_COUNT_BYTES, "big") for key, n in changed.items())

    def summary(self) -> bytes:
        """Everything counted so far, small (the module doc): the exact counts of the ``RECENT_KEYS`` identities
        counted last, and the sorted fingerprints of all of them. ``load`` takes it, with packs after it."""
        if self._older:
            raise CountsIncomplete(older=True)
        recent: dict[bytes, int] = {}
        for generation in (self._young, self._old):
            for key in reversed(generation):  # the latest first
                if len(recent) == RECENT_KEYS:
                    break
                recent[key] = generation[key]
        for key in self._loaded_recent:  # then those the summary it went on from kept, counted since or not
            if len(recent) == RECENT_KEYS:
                break
            if key not in recent:
                recent[key] = self._spilled_count(key)
        cut = _FINGERPRINT_BYTES
        in_memory = sorted(k[:cut] for generation in (self._young, self._old) for k in generation)
        sources: list[Iterable[bytes]] = [in_memory, self._known or ()]
        if self._spill is not None:  # its primary key is the identity: in order, so are their fingerprints
            sources.append(bytes(k[:cut]) for (k,) in self._spill.execute("SELECT k FROM spill ORDER BY k"))
        known: list[bytes] = []
        last = b""
        for fingerprint in heapq.merge(*sources):
            if fingerprint != last:
                known.append(fingerprint)
                last = fingerprint
        head = _SUMMARY + len(recent).to_bytes(4, "big") + len(known).to_bytes(4, "big")
        counts = b"".join(key + n.to_bytes(_COUNT_BYTES, "big") for key, n in recent.items())
        fingerprints = _Fingerprints.pack(known)
        # An agent before this format takes what does not begin with its own summary for packs, which are whole
        # multiples of their width: padded to one byte past such a multiple (packs follow it), this never reads as
        # packs there (counts it would take from fingerprints), only as counts cut short, which it says.
        width = KEY_BYTES + _COUNT_BYTES
        pad = (1 - (len(head) + 1 + len(counts) + len(fingerprints))) % width
        return head + bytes([pad]) + bytes(pad) + counts + fingerprints

    def load(self, packed: bytes) -> None:
        """Put back counts packed by ``changes`` into a new counter; a later pack's count of an identity replaces an
        earlier one's. They go straight to the spill file, in one transaction: pushed through the generations,
        800,000 of them took as long to load as to count (25 s against 4 s now, on a loaded machine). ``packed``
        may begin with a ``summary``: its counts are loaded so, and its fingerprints kept for ``next``. A summary
        of an older agent is not loaded: ``next`` raises at once (``CountsIncomplete.older``)."""
        width = KEY_BYTES + _COUNT_BYTES
        if self._young or self._old or self._spill is not None or self._known is not None or self._older:
            raise ValueError("occurrence counts are loaded only into a new counter")
        if packed.startswith(_SUMMARY_5_BYTES):
            self._older = True
            return
        if packed.startswith(_SUMMARY):
            at = len(_SUMMARY)
            recent, known = (int.from_bytes(packed[i : i + 4], "big") for i in (at, at + 4))
            at += 8
            at += 1 + (packed[at] if len(packed) > at else 0)  # the padding (``summary``)
            if len(packed) < at + recent * width:
                raise ValueError("occurrence counts cut short")
            self._known, taken = _Fingerprints.unpack(packed[at + recent * width :], known)
            end = at + recent * width + taken
            self._loaded_recent = [packed[i : i + KEY_BYTES] for i in range(at, at + recent * width, width)]
            packed = packed[at : at + recent * width] + packed[end:]
        if len(packed) % width:
            raise ValueError("occurrence counts cut short")
        if not packed:
            return
        spill, bloom = self._open_spill()
        bits = self._bits

        def pairs() -> Iterator[tuple[bytes, int]]:
            for at in range(0, len(packed), width):
                key = packed[at : at + KEY_BYTES]
                for b in bits(key):
                    bloom[b >> 3] |= 1 << (b & 7)
                yield key, int.from_bytes(packed[at + KEY_BYTES : at + width], "big")

        # Appended as they come, then sorted by SQLite (in bounded memory) into the spill table in key order: put
        # there one by one, each landed on a page of its own of a table larger than the cache. A count only grows,
        # so the newest of an identity is its largest.
        spill.execute("BEGIN")
        spill.execute("CREATE TEMP TABLE loaded (k BLOB NOT NULL, n INTEGER NOT NULL)")
        spill.executemany("INSERT INTO loaded (k, n) VALUES (?, ?)", pairs())
        spill.execute("INSERT INTO spill (k, n) SELECT k, max(n) FROM loaded GROUP BY k ORDER BY k")
        spill.execute("DROP TABLE loaded")
        spill.execute("COMMIT")
        self.spilled += len(packed) // width

    def in_memory(self) -> int:
        return len(self._young) + len(self._old)

    def _bits(self, key: bytes) -> tuple[int, int, int]:
        n = int.from_bytes(key[:12], "big")
        return n & _BLOOM_MASK_BITS, (n >> 32) & _BLOOM_MASK_BITS, (n >> 64) & _BLOOM_MASK_BITS

    def _spilled_count(self, key: bytes) -> int:
        assert self._bloom is not None and self._spill is not None
        bloom = self._bloom
        if not all(bloom[b >> 3] & (1 << (b & 7)) for b in self._bits(key)):
            return 0
        row = self._spill.execute("SELECT n FROM spill WHERE k = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def _age(self) -> None:
        """Spill the old generation to disk; the young one becomes old."""
        if self._old:
            self._write(self._old)
        self._old, self._young = self._young, {}

    def _open_spill(self) -> tuple[sqlite3.Connection, bytearray]:
        if self._spill is None:
            # "" opens a private on-disk temporary database, deleted on close.
            self._spill = sqlite3.connect("", check_same_thread=False, isolation_level=None)
            self._spill.execute("PRAGMA journal_mode = OFF")
            self._spill.execute("PRAGMA synchronous = OFF")
            self._spill.execute(f"PRAGMA cache_size = -{SPILL_CACHE_KIB}")
            self._spill.execute("CREATE TABLE spill (k BLOB PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID")
            self._bloom = bytearray(BLOOM_BYTES)
        assert self._bloom is not None
        return self._spill, self._bloom

    def _write(self, entries: dict[bytes, int]) -> None:
        spill, bloom = self._open_spill()
        for key in entries:
            for b in self._bits(key):
                bloom[b >> 3] |= 1 << (b & 7)
        spill.execute("BEGIN")
        spill.executemany("INSERT OR REPLACE INTO spill (k, n) VALUES (?, ?)", entries.items())
        spill.execute("COMMIT")
        self.spilled += len(entries)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the spill file. Safe to call twice."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        self._bloom = None
        self._young, self._old = {}, {}
        self._known = None
        self._loaded_recent = []
        self._older = False
