"""Exception rows for the wave-2 findings, worded once for every backend:
unknown barcodes, divergence from another system, quarantined import rows; and each exception's place
in the list (its source and that source's key of it, ``hub.storage.keys``)."""

from __future__ import annotations

from dataclasses import replace

from hub.storage.base import DivergenceRow, ExceptionRow
from protocol.catalog import UNKNOWN_SKU_PREFIX


def unknown_barcode(location: str, sku: str, on_hand: int, at_ms: int) -> ExceptionRow:
    barcode = sku[len(UNKNOWN_SKU_PREFIX) :]
    return ExceptionRow(
        "unknown_barcode",
        location,
        sku,
        f"Barcode {barcode} was scanned at {location} but the catalog does not know it; "
        f"{on_hand:+d} units wait under {sku} until it is added to the catalog (PUT /v1/catalog).",
        {"barcode": barcode, "on_hand": on_hand},
        at_ms,
        "unknown_barcode",
        (location, sku),
    )


def divergence(row: DivergenceRow) -> ExceptionRow:
    return ExceptionRow(
        "divergence",
        row.location,
        row.sku,
        f"{row.system} said {row.observed} of {row.sku} were on hand at {row.location}, "
        f"but the hub had {row.hub_on_hand} at that time ({row.difference:+d}).",
        {
            "system": row.system,
            "observed": row.observed,
            "hub_on_hand": row.hub_on_hand,
            "difference": row.difference,
            "observed_at_ms": row.observed_at_ms,
            "agent_id": row.agent_id,
            "id": row.obs_id,
            "source_file": row.source_file,
        },
        row.received_at_ms,
        "divergence",
        (row.location, row.sku, row.system),
    )


def import_quarantine(
    agent_id: str, issue_id: str, location: str, file: str, line: int, reason: str, raw: str, at_ms: int
) -> ExceptionRow:
    where = f"{file} line {line}" if line else file
    return ExceptionRow(
        "import_quarantine",
        location,
        None,
        f"A row of {where} at {location} was not imported: {reason}",
        {"agent_id": agent_id, "id": issue_id, "file": file, "line": line, "reason": reason, "raw": raw},
        at_ms,
        "import_quarantine",
        (agent_id, issue_id),
    )


def sourced(row: ExceptionRow, source: str, *ident: str | int | bytes) -> ExceptionRow:
    """``row`` placed in the list: from ``source`` (``hub.storage.keys.EXCEPTION_SOURCES``), keyed ``ident``."""
    return replace(row, source=source, ident=ident)
