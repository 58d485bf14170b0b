"""Importing one export file: stream its rows, record movements in batches, keep the bad rows aside.

The file is read on a worker thread a batch at a time (``batch_rows``
movements or observations), so the event loop stays free and memory stays
flat however long the file is; each batch of movements is one outbox
transaction. Good rows are recorded even when others in the same file are
quarantined. A row recorded before is a duplicate (its event id is derived
from its content), so a file imported twice changes nothing the second time.

An import that stops before its end (the agent killed, the computer down, the
outbox failing) goes on from where it durably got to when the same file is
imported again. After each batch the POS store keeps a checkpoint: where the
next row begins in the file, the SHA-256 of the bytes read so far, the counts
so far and the file's occurrence counts (``agent.pos.occurrences``). It is
written in the transaction that stores the batch's quarantined rows and
observations, after the batch's movements are committed to the outbox, so it
is never ahead of what is recorded. It is written at most once a second
(``CHECKPOINT_EVERY_S``) unless its batch commits the store anyway, so the rows
read again after a crash are those of about the last second, duplicates. The next import of a file of that name reads the header,
compares the digest of the same first bytes, the encoding and the profile, and
goes on at the checkpoint when they match; when they do not (the file was
rewritten), it reads the file from the start, which is safe: what was recorded
comes back as duplicates. An import whose process is gone is marked
``interrupted`` (its process held a lock beside the store while it ran), and
``resumed`` once another went on from it.

An import that ends keeps its checkpoint when asked (``keep_checkpoint``: the
drop folder's, for the copy it files): a till that writes on into the filed copy
has the rows it appends read from there (``go_on_from``), not the whole file
again. A checkpoint never lies past a last line without a line break: the till
may finish that line, which is read again then, whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from agent.errors import EventConflict, InvalidMovement, OutboxClosed, OutboxError
from agent.outbox import Movement, Outbox
from agent.pos.config import PosImportConfig
from agent.pos.errors import FileRejected, PosImportError
from agent.pos.model import CutRow, ImportReport, Observation, Quarantined, Skipped
from agent.pos.occurrences import CountsIncomplete, OccurrenceCounter
from agent.pos.profiles import ColumnMap, Produces, choose
from agent.pos.rows import RowMapper, row_text
from agent.pos.source import CsvRows, FileScan, Position, Prefix, complete_lines_end, scan_file
from agent.pos.store import Checkpoint, FirstDated, PosStore
from protocol import wall_ms_now
from protocol.values import shown

log = logging.getLogger(__name__)

HELD = "held"  # the status of an import of a file's complete rows, its last line held (``hold_last_line``)
REPEATED_HEADER = "the header row again (two exports joined into one file?)"
CHECKPOINT_EVERY_S = 1.0  # a checkpoint is written at most this often unless its batch commits the store anyway
REPORT_QUARANTINE_MAX = 1_000  # quarantined rows listed in the report file; all of them are in the store
ProgressFn = Callable[[int, int, int], None]  # (bytes read, file size, rows read)


@dataclass(slots=True)
class _Batch:
    movements: list[Movement] = field(default_factory=list)
    movement_rows: list[tuple[int, Sequence[str]]] = field(default_factory=list)  # (line, fields), for conflicts
    observations: list[Observation] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    rows: int = 0
    bytes_read: int = 0
    position: Position | None = None  # where the next batch begins, when it can be gone on from there
    counts: bytes = b""  # the occurrence counts changed since the last batch with a position (packed)
    mapper_state: dict[str, str | None] = field(default_factory=dict)
    cut_row: CutRow | None = None  # its last row, read from a last line without a line break


@dataclass(slots=True)
class _Tally:
    """What an import did so far; kept with each checkpoint, so that a resumed import reports the whole file."""

    rows_read: int = 0
    imported: int = 0
    duplicates: int = 0
    observations: int = 0
    observation_duplicates: int = 0
    skipped: int = 0
    quarantined: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    lineage: list[int] = field(default_factory=list)  # the imports of this file it goes on from, and itself
    pending_counts: list[bytes] = field(default_factory=list)  # occurrence counts of batches since the checkpoint
    checkpoint_due: float = 0.0  # monotonic seconds when the next batch writes a checkpoint even on its own
    # where the latest batch that has a position ends, and the tally then: the checkpoint written at the end
    kept: tuple[Position, dict[str, Any]] | None = None
    carried: int = 0  # movements and observations the imports it went on from recorded

    def to_state(self, mapper_state: dict[str, str | None], cut_row: CutRow | None) -> dict[str, Any]:
        cut = None if cut_row is None else [cut_row.line, cut_row.raw, cut_row.event_id.hex()]
        return {
            "rows_read": self.rows_read, "imported": self.imported, "duplicates": self.duplicates,
            "observations": self.observations, "observation_duplicates": self.observation_duplicates,
            "skipped": self.skipped, "quarantined": self.quarantined, "skipped_reasons": dict(self.skipped_reasons),
            "lineage": list(self.lineage), "mapper": mapper_state, "cut_row": cut,
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Tally:
        def n(key: str) -> int:
            return int(state.get(key, 0))

        return cls(
            n("rows_read"), n("imported"), n("duplicates"), n("observations"), n("observation_duplicates"),
            n("skipped"), n("quarantined"),
            skipped_reasons={str(k): int(v) for k, v in dict(state.get("skipped_reasons", {})).items()},
            lineage=[int(i) for i in state.get("lineage", [])],
        )  # fmt: skip


def _utc(ms: int) -> str:
    """A time as it is said in the log: to the second, in UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _say_repeated(name: str, rows: int, zone: str, wall: str, second: str) -> None:
    """Rows whose time happens twice matched movements already recorded: a re-export, or the repeated hour's own."""
    if rows == 1:
        text = (
            "1 row of the POS export %s has a time that happens twice in %s (clocks went back; %s) and matches a"
            " movement already recorded, so it was not recorded again: if it happened in the repeated hour rather"
            " than being exported again, write its time with its UTC offset (%s) and import it again."
        )
    else:
        text = (
            f"{rows:,} rows of the POS export %s have a time that happens twice in %s (clocks went back; %s, …) and"
            " match movements already recorded, so they were not recorded again: if they happened in the repeated"
            " hour rather than being exported again, write their times with their UTC offset (%s) and import them"
            " again."
        )
    log.warning(text, shown(name, bare=True), zone, wall, second)


class _FileParse:
    """The synchronous half: reads one file a batch at a time, on whichever worker thread calls it."""

    def __init__(
        self,
        scan: FileScan,
        config: PosImportConfig,
        profile: str,
        location: str,
        now_ms: int,
        name: str,
        cut_rows: Sequence[CutRow] = (),
        end: int | None = None,
        dated: FirstDated | None = None,
    ) -> None:
        self._scan = scan
        self._dated = dated  # the first import of this content that dated rows by its file's time, if any
        self.file_time_ms: int | None = None  # the time rows without one are dated by (observations only)
        self._end = end  # rows are read from the first ``end`` bytes only: the last line, unfinished, is held
        self.held_open = False  # a row of the complete lines goes on into the held line: it waits for it too
        self._done = False
        self._cuts = {cut.line: cut for cut in cut_rows}  # rows booked before from a line without a line break
        self.finished_cuts: set[int] = set()  # lines of those the POS finished since, booked as the same event
        self.cut_row: CutRow | None = None  # the last row, when it was read from a line without a line break
        self._config = config
        self._profile = profile
        self._location = location
        self._now_ms = now_ms
        self._name = name
        self._lock = threading.Lock()  # a cancelled import closes while a batch may still be running
        self._rows: CsvRows | None = None
        self._iter: Iterator[tuple[int, list[str] | None]] | None = None
        self._counter = OccurrenceCounter()
        self.columns: ColumnMap | None = None
        self.mapper: RowMapper | None = None
        self.changed = False  # the file was cut short while it was read: the import stopped (CsvRows.changed)
        self.counts_at_position = True  # the counts are those at the last batch's position (no row counted since)
        # Duplicates whose time happens twice (clocks went back): how many, and the first one's (zone, wall time).
        self.repeated_duplicates = 0
        self.first_repeated: tuple[str, str, str] | None = None

    def open(self) -> ColumnMap:
        with self._lock:
            rows = CsvRows(self._scan, self._end)
            rows.open()
            self._rows = rows
            self.columns = choose(rows.header, self._config.all_profiles(), self._profile)
            file_time_ms = self._scan.mtime_ms
            if self.columns.profile.produces is Produces.OBSERVATIONS:
                # A stock figure without a time of its own is dated by the file's, which a copy of the file (from an
                # email, a USB stick) moves: the same content keeps the time its first import dated it by, so an old
                # figure never passes as a new one (latest count wins on the hub).
                if self._dated is not None:
                    file_time_ms = self._dated.file_time_ms
                self.file_time_ms = file_time_ms
            self.mapper = RowMapper(
                # the name as it may be shown and sent (the hub refuses control characters in it)
                self.columns, self._config, default_location=self._location, source_file=shown(self._name, bare=True),
                file_time_ms=file_time_ms, now_ms=self._now_ms, counter=self._counter, delimiter=rows.delimiter,
            )
            if rows.position() is not None:
                self._counter.track()  # a checkpoint keeps the counts that changed in its batches
            self._iter = iter(rows)
            return self.columns

    def resume(self, position: Position, prefix: Prefix, counts: bytes, mapper_state: dict[str, str | None]) -> None:
        """Go on at a checkpoint (after ``open``): the rows before it were recorded by an import interrupted."""
        with self._lock:
            assert self._rows is not None and self.mapper is not None
            self._rows.resume(position, prefix)
            self._counter.load(counts)
            self.mapper.restore(mapper_state)
            self._iter = iter(self._rows)

    def next_batch(self, size: int) -> _Batch | None:
        with self._lock:
            rows, mapper = self._rows, self.mapper
            if rows is None or mapper is None or self._done:
                return None
            batch = _Batch()
            outcomes = 0
            iterator = self._iter
            assert iterator is not None
            cut = False  # the last line read has no line break: no checkpoint after it (the POS may finish it)
            for line, fields in iterator:
                cut = rows.unterminated()
                if self._end is not None and rows.exhausted:
                    # A quote opened in the complete lines is still open at their end: the row goes on into the
                    # held line. It is read with that line; this batch gets no checkpoint, so it is read again too.
                    self.held_open = self._done = True
                    break
                if fields is None:
                    batch.rows += 1
                    # the line's text is kept, as for every quarantined row: nothing a file hands us is dropped
                    reason = f"the row is not valid CSV: {rows.error}"
                    batch.quarantined.append(Quarantined(line, reason, rows.bad_text))
                    outcomes += 1
                elif not any(f.strip() for f in fields):
                    continue  # a blank line
                elif len(fields) == len(rows.header) and tuple(f.strip() for f in fields) == rows.header:
                    # ``copy a.csv+b.csv``: the second export's header is no row, but it is counted and said
                    batch.rows += 1
                    batch.skipped.append(Skipped(line, REPEATED_HEADER))
                    outcomes += 1
                else:
                    batch.rows += 1
                    try:
                        outcome = mapper.map(line, fields)
                    except CountsIncomplete as err:
                        raise CountsIncomplete(line, older=err.older) from err
                    if isinstance(outcome, Movement):
                        if line in self._cuts:
                            outcome = self._finished(line, outcome, rows)
                        if rows.unterminated():
                            assert outcome.event_id is not None
                            self.cut_row = batch.cut_row = CutRow(line, rows.row_raw(), outcome.event_id)
                        batch.movements.append(outcome)
                        batch.movement_rows.append((line, fields))
                    elif isinstance(outcome, Observation):
                        batch.observations.append(outcome)
                    elif isinstance(outcome, Quarantined):
                        batch.quarantined.append(outcome)
                    else:
                        batch.skipped.append(outcome)
                    outcomes += 1
                if outcomes >= size:
                    break
            if rows.changed():
                # Cut short and rewritten while read: this batch may mix the two versions, so it is not
                # recorded, and the import stops here; the watcher imports the file again once it settles.
                self.changed = True
                return None
            batch.bytes_read = rows.bytes_read
            if batch.rows and not self.held_open and not cut:
                batch.position = rows.position()
                if batch.position is not None:  # else the counts changed are kept for the next batch's checkpoint
                    batch.counts = self._counter.changes()
                    batch.mapper_state = mapper.state()
            if batch.rows:
                self.counts_at_position = batch.position is not None
            return batch if batch.rows else None

    def summary(self) -> bytes:
        """The occurrence counts so far, small (``OccurrenceCounter.summary``), for the checkpoint an import keeps."""
        with self._lock:
            return self._counter.summary()

    def _finished(self, line: int, movement: Movement, rows: CsvRows) -> Movement:
        """A row booked before from its line without a line break, which the POS finished since: the same event
        (a duplicate when it moves the same stock; a conflict, quarantined, when it differs), never a second."""
        cut = self._cuts[line]
        raw = rows.row_raw()
        if raw == cut.raw or not raw.startswith(cut.raw):  # unchanged, or another line there now (rewritten)
            return movement
        self.finished_cuts.add(line)
        return dataclasses.replace(movement, event_id=cut.event_id)

    def close(self) -> None:
        with self._lock:
            if self._rows is not None:
                self._rows.close()
                self._rows = None
            self._counter.close()


def _why_not_resumable(checkpoint: Checkpoint, scan: FileScan, columns: ColumnMap) -> str | None:
    """Why an import of ``scan`` cannot go on from ``checkpoint``, or None when it can: the bytes before it, the
    encoding and the profile are the ones it was taken with."""
    if scan.prefix is None:
        return "the file is shorter now than where that import got to"
    if scan.prefix.sha256 != checkpoint.position.sha256:
        return "the file changed since (its first bytes are not the same)"
    if scan.encoding != checkpoint.encoding:
        return f"it reads as {scan.encoding} now, not {checkpoint.encoding}"
    if columns.profile.name != checkpoint.profile:
        return f"it is imported with the profile {columns.profile.name!r} now, not {checkpoint.profile!r}"
    return None


class _ImportOwner:
    """The lock an import's process holds while it runs, named in its ``imports`` row: when nobody holds it, the
    process is gone and the row is marked ``interrupted`` (``PosStore.mark_interrupted``). The operating system's
    lock, as for the outbox (agent.lock): it goes with the process however the process ends."""

    def __init__(self, store: PosStore) -> None:
        self.token = secrets.token_hex(8)
        self._path = store.owner_lock(self.token)
        self._lock: FileLock | None = FileLock(str(self._path), thread_local=False)
        try:
            self._lock.acquire(timeout=0)
        except (OSError, Timeout):  # no lock file can be made (the disk is full): the row reads as its process gone
            self._lock = None

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
            with contextlib.suppress(OSError):
                os.unlink(self._path)


class PosImporter:
    """Imports export files into the outbox (movements) and the POS store (observations, quarantine)."""

    def __init__(
        self,
        outbox: Outbox,
        store: PosStore,
        config: PosImportConfig,
        *,
        location: str | None = None,
        wall_clock_ms: Callable[[], int] = wall_ms_now,
    ) -> None:
        self.outbox = outbox
        self.store = store
        self.config = config
        self.location = location or outbox.location
        self._wall_clock_ms = wall_clock_ms

    async def import_file(
        self,
        path: Path,
        *,
        profile: str | None = None,
        name: str | None = None,
        on_progress: ProgressFn | None = None,
        follow_links: bool = True,
        seen_under: Sequence[str] = (),
        cut_rows: Sequence[CutRow] = (),
        hold_last_line: bool = False,
        keep_checkpoint: bool = False,
        go_on_from: int | None = None,
    ) -> ImportReport:
        """Import one file. A file that cannot be read at all gives a report with status "failed".

        ``follow_links=False`` (the drop folder) refuses a symbolic link
        without reading through it. ``seen_under``: the digests the file had when
        it was imported before, when it grew since (``PosStore.add_quarantine``). ``cut_rows``: rows its
        imports before booked from a last line without a line break (``ImportReport.cut_row``): finished since,
        such a row is booked as the same event, never as a second one. ``hold_last_line``: a last line without
        a line break is not read (the POS may still be writing it): the rows before it are imported, the report's
        status is ``held``, and the import keeps its checkpoint, so importing the file again goes on from there.
        ``keep_checkpoint``: an import that ends well keeps its checkpoint too (``PosStore.finish_import``), and
        ``go_on_from`` (that import's ``ImportReport.import_id``) goes on from it, when the file was written on
        since; from its first line when the bytes before the checkpoint are not the same any more.
        Raises PosImportError only when the outbox
        or the store cannot be written — then nothing about the file is final,
        and importing it again later is safe.
        """
        name = name or path.name
        started_ms = self._wall_clock_ms()
        await self.store.mark_interrupted()
        if go_on_from is not None:
            checkpoint = await self.store.checkpoint_after(go_on_from, name)
        else:
            checkpoint = await self.store.checkpoint_of(name)
        prefix_at = checkpoint.position.hashed if checkpoint is not None else None
        try:
            scan = await asyncio.to_thread(scan_file, path, follow_links=follow_links, prefix_at=prefix_at)
        except FileRejected as err:
            log.warning("The POS export %s was not imported: %s", shown(name, bare=True), err)
            return ImportReport(name, "", 0, "", "", "failed", error=str(err), started_ms=started_ms, finished_ms=started_ms)
        end = None
        if hold_last_line:
            try:
                end = await asyncio.to_thread(complete_lines_end, scan)
            except OSError as err:
                reason = f"{shown(name, bare=True)} could not be read: {err.strerror or err}"
                return ImportReport(
                    name, "", 0, "", "", "failed", error=reason, started_ms=started_ms, finished_ms=started_ms
                )
            if end is None:  # not one line break yet, not even after the header: nothing to import before it
                return ImportReport(
                    name, scan.sha256, scan.size_bytes, scan.encoding, profile or self.config.profile, HELD,
                    started_ms=started_ms, finished_ms=started_ms,
                )  # fmt: skip
            if end >= scan.size_bytes:
                end = None  # it ends with a line break after all: imported whole
        dated = await self.store.first_dated(scan.sha256)
        parse = _FileParse(
            scan, self.config, profile or self.config.profile, self.location, started_ms, name, cut_rows, end, dated
        )
        owner = _ImportOwner(self.store)
        import_id: int | None = None
        try:
            try:
                columns = await asyncio.to_thread(parse.open)
            except FileRejected as err:
                report = ImportReport(
                    name, scan.sha256, scan.size_bytes, scan.encoding, profile or self.config.profile, "failed",
                    error=str(err), started_ms=started_ms, finished_ms=self._wall_clock_ms(),
                )
                failed_id = await self.store.begin_import(scan, name, report.profile)
                await self.store.finish_import(failed_id, report)
                log.warning("The POS export %s was not imported: %s", shown(name, bare=True), err)
                return report
            import_id = await self.store.begin_import(
                scan, name, columns.profile.name, owner=owner.token, file_time_ms=parse.file_time_ms
            )
            if dated is not None and parse.file_time_ms is not None and dated.file_time_ms != scan.mtime_ms:
                log.warning(
                    "The POS export %s has the same content as %s, imported before, so its stock figures keep that"
                    " export's time, %s, not this copy's, %s, and override no count taken since.",
                    shown(name, bare=True), shown(dated.file_name, bare=True), _utc(dated.file_time_ms),
                    _utc(scan.mtime_ms),
                )  # fmt: skip
            tally = await self._resume(parse, scan, columns, checkpoint, import_id, name)
            keep = keep_checkpoint or end is not None
            try:
                report = await self._import_rows(
                    parse, scan, columns, import_id, name, started_ms, on_progress, seen_under, tally,
                    held=end is not None, keep=keep,
                )  # fmt: skip
            except CountsIncomplete as err:
                # The checkpoint gone on from kept counts of the rows read last only: a row may repeat one before
                # those, so the file is read again from its first line (the rows recorded so far are duplicates).
                if err.older:
                    log.info(
                        "The checkpoint %s was imported up to was kept by an older agent, whose summary of the rows "
                        "read is not gone on from; the file is read again from its first line, once (the rows "
                        "recorded before are duplicates).",
                        shown(name, bare=True),
                    )  # fmt: skip
                else:
                    log.info(
                        "Line %s of %s may repeat a row read before where its import went on from, whose count the "
                        "checkpoint did not keep; the file is read again from its first line (the rows recorded "
                        "before are duplicates).",
                        f"{err.line:,}" if err.line is not None else "?", shown(name, bare=True),
                    )  # fmt: skip
                recorded = tally.imported + tally.observations - tally.carried
                await self.store.forget_checkpoint(import_id)
                await asyncio.to_thread(parse.close)
                parse = _FileParse(
                    scan, self.config, profile or self.config.profile, self.location, started_ms, name, cut_rows, end,
                    dated,
                )
                columns = await asyncio.to_thread(parse.open)
                # what this import recorded before it read the file again counts as recorded by it (``recorded_now``)
                tally = _Tally(lineage=[import_id], carried=-recorded)
                report = await self._import_rows(
                    parse, scan, columns, import_id, name, started_ms, on_progress, seen_under, tally,
                    held=end is not None, keep=keep,
                )  # fmt: skip
            if report.status == HELD:
                await self.store.hold_import(import_id, report)
            else:
                await self.store.finish_import(import_id, report, keep_checkpoint=keep and not parse.changed)
        except BaseException as err:
            if import_id is not None:  # what it recorded stays; importing the file again goes on from its checkpoint
                why = str(err) or "the import was stopped before its end (the agent was stopping)"
                with contextlib.suppress(PosImportError):
                    await asyncio.shield(self.store.abandon_import(import_id, why))
            raise
        finally:
            await asyncio.to_thread(parse.close)
            owner.release()
        seconds = max(report.finished_ms - report.started_ms, 0) / 1000
        if parse.changed:
            log.warning("The POS export %s was not imported whole: %s.", shown(name, bare=True), report.error)
        elif report.status == HELD:  # the watcher says once why the file waits
            log.debug("Imported the complete rows of the POS export %s; its last line is held.", report.summary())
        else:
            log.info("Imported the POS export %s, in %.1f s.", report.summary(), seconds)
        if parse.first_repeated is not None:
            _say_repeated(name, parse.repeated_duplicates, *parse.first_repeated)
        return report

    async def _resume(
        self,
        parse: _FileParse,
        scan: FileScan,
        columns: ColumnMap,
        checkpoint: Checkpoint | None,
        import_id: int,
        name: str,
    ) -> _Tally:
        """Go on from an interrupted import of this file when its checkpoint still describes it; what it did so far."""
        if checkpoint is None:
            return _Tally(lineage=[import_id])
        line = checkpoint.position.line
        shown_name = shown(name, bare=True)
        why_not = _why_not_resumable(checkpoint, scan, columns)
        if why_not is not None and checkpoint.finished:  # its filed copy was written again, not only on
            log.warning(
                "%s was imported up to line %s, but %s; it is read again from the start (the rows recorded before "
                "are duplicates).",
                shown_name, f"{line:,}", why_not,
            )  # fmt: skip
            await self.store.forget_checkpoint(checkpoint.import_id)
            return _Tally(lineage=[import_id])
        if why_not is not None:
            log.warning(
                "%s was interrupted at line %s, but %s; it is read again from the start (the rows recorded before are "
                "duplicates).",
                shown_name, f"{line:,}", why_not,
            )  # fmt: skip
            await self.store.forget_checkpoint(
                checkpoint.import_id, why=f"interrupted after line {line:,}; {why_not}, so import #{import_id} read it "
                "again from the start",
            )  # fmt: skip
            return _Tally(lineage=[import_id])
        stopped = "its last line held after line" if checkpoint.held else "interrupted after line"
        why = f"{stopped} {line:,}; import #{import_id} went on from there"
        counts = await self.store.take_over(checkpoint.import_id, import_id, why)
        if counts is None:  # another import took it over at the same moment: this one reads the whole file
            return _Tally(lineage=[import_id])
        assert scan.prefix is not None
        state = checkpoint.state
        await asyncio.to_thread(parse.resume, checkpoint.position, scan.prefix, counts, dict(state.get("mapper", {})))
        tally = _Tally.from_state(state)
        tally.lineage.append(import_id)
        tally.carried = tally.imported + tally.observations
        if cut := state.get("cut_row"):  # its last row was read before the interruption, from a line without a break
            parse.cut_row = CutRow(int(cut[0]), str(cut[1]), bytes.fromhex(cut[2]))
        was = "held" if checkpoint.held else "imported up to" if checkpoint.finished else "interrupted"
        log.log(
            logging.INFO if was == "interrupted" else logging.DEBUG,  # the watcher says why it was held or written on
            "%s was %s at line %s; the import goes on from there (%s rows were read before).",
            shown_name, was, f"{line:,}", f"{tally.rows_read:,}",
        )  # fmt: skip
        return tally

    async def _import_rows(
        self,
        parse: _FileParse,
        scan: FileScan,
        columns: ColumnMap,
        import_id: int,
        name: str,
        started_ms: int,
        on_progress: ProgressFn | None,
        seen_under: Sequence[str],
        tally: _Tally,
        *,
        held: bool = False,
        keep: bool = False,
    ) -> ImportReport:
        listed: list[Quarantined] = []
        if tally.quarantined:  # the rows quarantined before the import was interrupted, for the report
            listed = await self.store.lineage_quarantine(tally.lineage, REPORT_QUARANTINE_MAX)
        # Parse the next batch while this one commits: at most two batches are in memory.
        ahead = asyncio.ensure_future(asyncio.to_thread(parse.next_batch, self.config.batch_rows))
        try:
            while True:
                batch = await ahead
                if batch is None:
                    break
                ahead = asyncio.ensure_future(asyncio.to_thread(parse.next_batch, self.config.batch_rows))
                await self._import_batch(batch, parse, scan, columns, import_id, name, seen_under, tally)
                listed.extend(batch.quarantined[: REPORT_QUARANTINE_MAX - len(listed)])
                if on_progress is not None:
                    on_progress(batch.bytes_read, scan.size_bytes, tally.rows_read)
        finally:
            # A parse still running finishes on its thread; close() waits for it (the parse's lock).
            ahead.cancel()
            if ahead.done() and not ahead.cancelled():
                ahead.exception()  # retrieved: an error here is not also "never retrieved"
        if keep and not parse.changed and tally.kept is not None:
            # the import of the rest (or of rows appended) goes on from here: written now, however soon after the last
            position, state = tally.kept
            checkpoint = Checkpoint(import_id, scan.encoding, columns.profile.name, position, state)
            if parse.counts_at_position:  # its counts in a summary, in place of the packs: ~5 bytes a row, not 20
                summary = await asyncio.to_thread(parse.summary)
                tally.pending_counts.clear()
                await self.store.add_batch(
                    import_id, name, scan.sha256, (), (), checkpoint=checkpoint, counts=summary, replace_counts=True
                )
            elif tally.pending_counts:  # rows counted after it (a cut last line): the packs up to it
                counts = b"".join(tally.pending_counts)
                tally.pending_counts.clear()
                await self.store.add_batch(import_id, name, scan.sha256, (), (), checkpoint=checkpoint, counts=counts)
        rows_read, quarantined = tally.rows_read, tally.quarantined
        status = "quarantined" if rows_read and quarantined == rows_read else "imported"
        if held:
            status = HELD
        error = None
        if parse.changed:
            status = "failed"
            error = (
                f"{shown(name, bare=True)} was cut short while it was being read (rewritten in place); the "
                f"{rows_read:,} rows read before are recorded, the rest when it is imported again once it is complete"
            )
        return ImportReport(
            file_name=name, sha256=scan.sha256, size_bytes=scan.size_bytes, encoding=scan.encoding,
            profile=columns.profile.name, status=status, rows_read=rows_read, imported=tally.imported,
            duplicates=tally.duplicates, observations=tally.observations,
            observation_duplicates=tally.observation_duplicates, skipped=tally.skipped, quarantined=quarantined,
            quarantine=tuple(listed), started_ms=started_ms, finished_ms=self._wall_clock_ms(),
            skipped_reasons=tally.skipped_reasons, produces=columns.profile.produces.value, error=error,
            cut_row=parse.cut_row, import_id=import_id,
            recorded_now=tally.imported + tally.observations - tally.carried,
        )  # fmt: skip

    async def _import_batch(
        self,
        batch: _Batch,
        parse: _FileParse,
        scan: FileScan,
        columns: ColumnMap,
        import_id: int,
        name: str,
        seen_under: Sequence[str],
        tally: _Tally,
    ) -> None:
        """Record one batch: movements in one outbox transaction, then observations, quarantine and the checkpoint
        after it in one transaction of the POS store; ``tally`` counts it."""
        if batch.movements:
            new, dups, conflicts = await self._record(batch.movements, batch.movement_rows, parse)
            batch.quarantined.extend(conflicts)
            tally.imported += new
            tally.duplicates += dups
        batch.quarantined.sort(key=lambda q: q.line)
        tally.rows_read += batch.rows
        tally.quarantined += len(batch.quarantined)
        for s in batch.skipped:
            tally.skipped += 1
            if len(tally.skipped_reasons) < 50 or s.reason in tally.skipped_reasons:
                tally.skipped_reasons[s.reason] = tally.skipped_reasons.get(s.reason, 0) + 1
        checkpoint, counts = None, b""
        if batch.position is not None:
            tally.pending_counts.append(batch.counts)
            now = time.monotonic()
            # At most one commit of the POS store a CHECKPOINT_EVERY_S for checkpoints alone: each is an fsync,
            # and with small batches one per batch cost as much as the batch itself.
            if batch.quarantined or batch.observations or now >= tally.checkpoint_due:
                # its observation counts are before this batch's: the store adds those
                state = tally.to_state(batch.mapper_state, batch.cut_row)
                checkpoint = Checkpoint(import_id, scan.encoding, columns.profile.name, batch.position, state)
                counts = b"".join(tally.pending_counts)
                tally.pending_counts.clear()
                tally.checkpoint_due = now + CHECKPOINT_EVERY_S
        if checkpoint is not None or batch.quarantined or batch.observations:
            obs_new, obs_dups = await self.store.add_batch(
                import_id, name, scan.sha256, batch.quarantined, batch.observations, seen_under=seen_under,
                checkpoint=checkpoint, counts=counts,
            )  # fmt: skip
            tally.observations += obs_new
            tally.observation_duplicates += obs_dups
        if batch.position is not None:
            tally.kept = (batch.position, tally.to_state(batch.mapper_state, None))

    async def _record(
        self, movements: list[Movement], rows: list[tuple[int, Sequence[str]]], parse: _FileParse
    ) -> tuple[int, int, list[Quarantined]]:
        """Record one batch; returns (inserted, duplicates, rows refused as conflicts).

        The outbox refuses a whole batch if one movement's id is already
        recorded with different content (a row that changed since it was first
        imported). Such a batch is split until the refused rows are alone;
        they are quarantined and the rest recorded.
        """
        try:
            result = await self.outbox.record(movements)
        except InvalidMovement as err:  # EventConflict too: a row changed since it was first imported
            if len(movements) == 1:
                line, fields = rows[0]
                reason = str(err).removesuffix("; nothing was recorded")
                if isinstance(err, EventConflict) and line in parse.finished_cuts:
                    differs = reason.split(" is already recorded with ", 1)[-1]
                    reason = (
                        f"line {line} was imported as it stood, without a line break, after "
                        f"{self.config.unfinished_line_s:g} s without a change; the POS finished it later and it "
                        f"differs ({differs}): it is not booked a second time — check it against the till"
                    )
                    delimiter = parse.mapper.delimiter if parse.mapper else ","
                    return 0, 0, [Quarantined(line, reason[:500], row_text(fields, delimiter))]
                what = "the row changed since it was first imported" if isinstance(err, EventConflict) else (
                    "the row is not a valid movement"
                )
                reason = f"{what}: {reason}"
                delimiter = parse.mapper.delimiter if parse.mapper else ","
                return 0, 0, [Quarantined(line, reason[:500], row_text(fields, delimiter))]
            half = len(movements) // 2
            a = await self._record(movements[:half], rows[:half], parse)
            b = await self._record(movements[half:], rows[half:], parse)
            return a[0] + b[0], a[1] + b[1], a[2] + b[2]
        except OutboxClosed as err:
            raise PosImportError(f"the import stopped: {err}") from err
        except OutboxError as err:
            raise PosImportError(f"the import stopped because the outbox could not be written: {err}") from err
        repeated = parse.mapper.repeated if parse.mapper is not None else {}
        if repeated:
            for event_id in result.duplicates:
                if (wall := repeated.get(event_id)) is not None:
                    parse.repeated_duplicates += 1
                    parse.first_repeated = parse.first_repeated or wall
            for m in movements:
                repeated.pop(m.event_id or b"", None)
        return len(result.events), len(result.duplicates), []
