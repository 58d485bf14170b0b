"""Importing one export file: stream its rows, record movements in batches, keep the bad rows aside.

The file is read on a worker thread a batch at a time (``batch_rows``
movements or observations), so the event loop stays free and memory stays
flat however long the file is; each batch of movements is one outbox
transaction. Good rows are recorded even when others in the same file are
quarantined. A row recorded before is a duplicate (its event id is derived
from its content), so a file imported twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import EventConflict, InvalidMovement, OutboxClosed, OutboxError
from agent.outbox import Movement, Outbox
from agent.pos.config import PosImportConfig
from agent.pos.errors import FileRejected, PosImportError
from agent.pos.model import ImportReport, Observation, Quarantined, Skipped
from agent.pos.occurrences import OccurrenceCounter
from agent.pos.profiles import ColumnMap, choose
from agent.pos.rows import RowMapper, row_text
from agent.pos.source import CsvRows, FileScan, scan_file
from agent.pos.store import PosStore
from protocol import wall_ms_now
from protocol.values import shown

log = logging.getLogger(__name__)

REPEATED_HEADER = "the header row again (two exports joined into one file?)"
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


class _FileParse:
    """The synchronous half: reads one file a batch at a time, on whichever worker thread calls it."""

    def __init__(self, scan: FileScan, config: PosImportConfig, profile: str, location: str, now_ms: int, name: str) -> None:
        self._scan = scan
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

    def open(self) -> ColumnMap:
        with self._lock:
            rows = CsvRows(self._scan)
            rows.open()
            self._rows = rows
            self.columns = choose(rows.header, self._config.all_profiles(), self._profile)
            self.mapper = RowMapper(
                # the name as it may be shown and sent (the hub refuses control characters in it)
                self.columns, self._config, default_location=self._location, source_file=shown(self._name, bare=True),
                file_time_ms=self._scan.mtime_ms, now_ms=self._now_ms, counter=self._counter, delimiter=rows.delimiter,
            )
            self._iter = iter(rows)
            return self.columns

    def next_batch(self, size: int) -> _Batch | None:
        with self._lock:
            rows, mapper = self._rows, self.mapper
            if rows is None or mapper is None:
                return None
            batch = _Batch()
            outcomes = 0
            iterator = self._iter
            assert iterator is not None
            for line, fields in iterator:
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
                    outcome = mapper.map(line, fields)
                    if isinstance(outcome, Movement):
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
            return batch if batch.rows else None

    def close(self) -> None:
        with self._lock:
            if self._rows is not None:
                self._rows.close()
                self._rows = None
            self._counter.close()


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
    ) -> ImportReport:
        """Import one file. A file that cannot be read at all gives a report with status "failed".

        ``follow_links=False`` (the drop folder) refuses a symbolic link
        without reading through it. ``seen_under``: the digests the file had when
        it was imported before, when it grew since (``PosStore.add_quarantine``).
        Raises PosImportError only when the outbox
        or the store cannot be written — then nothing about the file is final,
        and importing it again later is safe.
        """
        name = name or path.name
        started_ms = self._wall_clock_ms()
        try:
            scan = await asyncio.to_thread(scan_file, path, follow_links=follow_links)
        except FileRejected as err:
            log.warning("The POS export %s was not imported: %s", shown(name, bare=True), err)
            return ImportReport(name, "", 0, "", "", "failed", error=str(err), started_ms=started_ms, finished_ms=started_ms)
        parse = _FileParse(scan, self.config, profile or self.config.profile, self.location, started_ms, name)
        try:
            try:
                columns = await asyncio.to_thread(parse.open)
            except FileRejected as err:
                report = ImportReport(
                    name, scan.sha256, scan.size_bytes, scan.encoding, profile or self.config.profile, "failed",
                    error=str(err), started_ms=started_ms, finished_ms=self._wall_clock_ms(),
                )
                import_id = await self.store.begin_import(scan, name, report.profile)
                await self.store.finish_import(import_id, report)
                log.warning("The POS export %s was not imported: %s", shown(name, bare=True), err)
                return report
            import_id = await self.store.begin_import(scan, name, columns.profile.name)
            report = await self._import_rows(
                parse, scan, columns, import_id, name, started_ms, on_progress, seen_under
            )
        finally:
            await asyncio.to_thread(parse.close)
        await self.store.finish_import(import_id, report)
        seconds = max(report.finished_ms - report.started_ms, 0) / 1000
        if parse.changed:
            log.warning("The POS export %s was not imported whole: %s.", shown(name, bare=True), report.error)
        else:
            log.info("Imported the POS export %s, in %.1f s.", report.summary(), seconds)
        return report

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
    ) -> ImportReport:
        rows_read = imported = duplicates = observations = observation_dups = skipped = quarantined = 0
        listed: list[Quarantined] = []
        skipped_reasons: dict[str, int] = {}
        # Parse the next batch while this one commits: at most two batches are in memory.
        ahead = asyncio.ensure_future(asyncio.to_thread(parse.next_batch, self.config.batch_rows))
        try:
            while True:
                batch = await ahead
                if batch is None:
                    break
                ahead = asyncio.ensure_future(asyncio.to_thread(parse.next_batch, self.config.batch_rows))
                counts = await self._import_batch(batch, parse, scan, import_id, name, seen_under)
                rows_read += batch.rows
                imported += counts[0]
                duplicates += counts[1]
                observations += counts[2]
                observation_dups += counts[3]
                quarantined += len(batch.quarantined)
                listed.extend(batch.quarantined[: REPORT_QUARANTINE_MAX - len(listed)])
                for s in batch.skipped:
                    skipped += 1
                    if len(skipped_reasons) < 50 or s.reason in skipped_reasons:
                        skipped_reasons[s.reason] = skipped_reasons.get(s.reason, 0) + 1
                if on_progress is not None:
                    on_progress(batch.bytes_read, scan.size_bytes, rows_read)
        finally:
            # A parse still running finishes on its thread; close() waits for it (the parse's lock).
            ahead.cancel()
            if ahead.done() and not ahead.cancelled():
                ahead.exception()  # retrieved: an error here is not also "never retrieved"
        status = "quarantined" if rows_read and quarantined == rows_read else "imported"
        error = None
        if parse.changed:
            status = "failed"
            error = (
                f"{shown(name, bare=True)} was cut short while it was being read (rewritten in place); the "
                f"{rows_read:,} rows read before are recorded, the rest when it is imported again once it is complete"
            )
        return ImportReport(
            file_name=name, sha256=scan.sha256, size_bytes=scan.size_bytes, encoding=scan.encoding,
            profile=columns.profile.name, status=status, rows_read=rows_read, imported=imported,
            duplicates=duplicates, observations=observations, observation_duplicates=observation_dups,
            skipped=skipped, quarantined=quarantined, quarantine=tuple(listed), started_ms=started_ms,
            finished_ms=self._wall_clock_ms(), skipped_reasons=skipped_reasons, produces=columns.profile.produces.value,
            error=error,
        )

    async def _import_batch(
        self, batch: _Batch, parse: _FileParse, scan: FileScan, import_id: int, name: str, seen_under: Sequence[str]
    ) -> tuple[int, int, int, int]:
        """Record one batch: movements in one outbox transaction, then observations and quarantine."""
        new = dups = obs_new = obs_dups = 0
        if batch.movements:
            new, dups, conflicts = await self._record(batch.movements, batch.movement_rows, parse)
            batch.quarantined.extend(conflicts)
        if batch.observations:
            obs_new, obs_dups = await self.store.add_observations(batch.observations)
        if batch.quarantined:
            batch.quarantined.sort(key=lambda q: q.line)
            await self.store.add_quarantine(import_id, name, scan.sha256, batch.quarantined, seen_under=seen_under)
        return new, dups, obs_new, obs_dups

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
        return len(result.events), len(result.duplicates), []
