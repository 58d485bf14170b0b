"""The values the POS import produces besides movements: observations, quarantined rows, reports."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from protocol.values import shown

RAW_MAX_CHARS = 2_000  # of a quarantined row's text, in the store, the report and to the hub


def clip_raw(text: str) -> str:
    """A quarantined row's text as kept: at most RAW_MAX_CHARS characters, ``…`` after a cut."""
    return text if len(text) <= RAW_MAX_CHARS else text[: RAW_MAX_CHARS - 1] + "…"


@dataclass(frozen=True, slots=True)
class Observation:
    """Another system's belief about stock on hand — a snapshot, never a movement.

    Shopify's inventory export says "On hand: 7" for a SKU at a location; the
    hub compares it with its own count and raises a divergence, it does not
    move stock. ``system`` is the vendor ("shopify"); ``observed_at_ms`` is
    when the other system believed it (the export's time).
    """

    location: str
    sku: str
    system: str
    on_hand: int
    observed_at_ms: int
    source_file: str

    def to_wire(self, observation_id: int) -> dict[str, Any]:
        """The proposed wire map (docs/pos-import.md): the store id lets the hub's answer name it."""
        return {
            "id": observation_id, "location": self.location, "sku": self.sku, "system": self.system,
            "on_hand": self.on_hand, "observed_at_ms": self.observed_at_ms, "source_file": self.source_file,
        }


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A row that could not be imported, and why; the rest of its file still is."""

    line: int
    reason: str
    raw: str = ""  # the row's text (as CSV, or the line as read when it is not CSV), cut by clip_raw


@dataclass(frozen=True, slots=True)
class CutRow:
    """A row read from a last line that had no line break yet, and the event it was booked as: when the POS
    finishes the line later, the finished row is that event again (``PosImporter.import_file(cut_rows=…)``),
    never a second one."""

    line: int
    raw: str  # the line as read (without a line break there was none)
    event_id: bytes


@dataclass(frozen=True, slots=True)
class Skipped:
    """A row that is not stock (a custom amount, a gift card, "not stocked"): counted, not imported."""

    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """One quarantined row as stored, for ``shelfsync-agent import --report``."""

    id: int
    file_name: str
    sha256: str
    line: int
    reason: str
    raw: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What importing one file did. Written beside the file as JSON, and kept in the store."""

    file_name: str
    sha256: str
    size_bytes: int
    encoding: str
    profile: str
    # "imported"; "quarantined" (every row was); "failed" (the file could not be read); in the POS store also
    # "running", "interrupted" (its process stopped before its end) and "resumed" (another import went on from it)
    status: str
    rows_read: int = 0  # data rows (not the header, not blank lines)
    imported: int = 0  # movements newly recorded in the outbox
    duplicates: int = 0  # movements the outbox already held (the same rows imported before)
    observations: int = 0  # stock-on-hand observations newly stored
    observation_duplicates: int = 0
    skipped: int = 0  # rows that are not stock
    quarantined: int = 0
    quarantine: tuple[Quarantined, ...] = ()  # the first REPORT_QUARANTINE_MAX, with line and reason
    error: str | None = None  # why the whole file failed
    started_ms: int = 0
    finished_ms: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)  # why rows were not stock, with counts
    produces: str = "movements"  # or "observations", as the profile does
    cut_row: CutRow | None = field(default=None, compare=False)  # the last row, booked from a line without a break
    import_id: int | None = field(default=None, compare=False)  # its row in the POS store's imports
    # movements or observations this import recorded itself (the counts above are the whole file's, also when it
    # went on from an import before it)
    recorded_now: int = field(default=0, compare=False)

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        for internal in ("cut_row", "import_id", "recorded_now"):
            del data[internal]
        data["quarantine"] = [{"line": q.line, "reason": q.reason, "row": q.raw} for q in self.quarantine]
        data["quarantine_truncated"] = self.quarantined > len(self.quarantine)
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"

    def summary(self) -> str:
        """One sentence for a person."""
        name = shown(self.file_name, bare=True)  # a file name can hold a newline or a terminal escape
        if self.status == "failed":
            return f"{name}: not imported — {self.error}"
        if self.status in ("running", "interrupted", "resumed"):  # listed while it runs, or when it stopped early
            return f"{name} ({self.profile}, {self.encoding}): {self.status}" + (f" — {self.error}" if self.error else "")
        parts = [f"{self.rows_read:,} rows read"]
        if self.produces == "movements":
            parts.append(f"{self.imported:,} imported")
            parts.append(f"{self.duplicates:,} already imported")
        else:
            parts.append(f"{self.observations:,} stock observations")
            parts.append(f"{self.observation_duplicates:,} already stored")
        if self.skipped:
            parts.append(f"{self.skipped:,} not stock")
        parts.append(f"{self.quarantined:,} quarantined")
        return f"{name} ({self.profile}, {self.encoding}): " + ", ".join(parts)
