"""Captured scanner byte streams (tests/fixtures/scanners/) replayed through a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from hardware import Decoded, DecodeError, SerialScanner, SerialScannerConfig, decode
from tests.hardware.scanner_helpers import PtyScanner, ScanTaker, StatusLog

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "scanners"
STREAMS = sorted(FIXTURES.glob("*.json"))


def summary(decoded: Decoded) -> dict[str, Any]:
    """The decoded facts a fixture's ``expect`` entries name, as plain JSON values."""
    return {
        "kind": decoded.kind.value,
        "data": decoded.data,
        "symbology": decoded.symbology.aim_id if decoded.symbology else None,
        "gtin": decoded.gtin,
        "gtin_format": decoded.gtin_format.value if decoded.gtin_format else None,
        "is_case": decoded.is_case,
        "sscc": decoded.sscc,
        "content_gtin": decoded.content_gtin,
        "count": decoded.count,
        "lot": decoded.lot,
        "serial": decoded.serial,
        "expiry": decoded.expiry.isoformat() if decoded.expiry else None,
        "best_before": decoded.best_before.isoformat() if decoded.best_before else None,
        "net_weight": f"{decoded.net_weight.value} {decoded.net_weight.unit.value}" if decoded.net_weight else None,
        "rcn_price": str(decoded.rcn.price) if decoded.rcn and decoded.rcn.price is not None else None,
        "catalog_key": decoded.catalog_key,
    }


def test_there_are_captured_streams() -> None:
    assert {p.name for p in STREAMS} >= {"honeywell_aim_crlf.json", "zebra_lf.json", "datalogic_no_suffix.json"}


@pytest.mark.parametrize("stream", STREAMS, ids=[p.stem for p in STREAMS])
async def test_replayed_stream_gives_every_frame_decoded(
    stream: Path, pty_scanner: PtyScanner, statuses: StatusLog
) -> None:
    capture = json.loads(stream.read_text())
    expect = capture["expect"]
    cfg = SerialScannerConfig(reader_id="fixture", port=str(pty_scanner.link), **capture["settings"])
    async with SerialScanner(cfg, on_status=statuses) as scanner:
        await statuses.wait(available=True)
        taker = ScanTaker(scanner)
        scans = []
        for after_ms, data in capture["chunks"]:
            pty_scanner.write(data.encode("latin-1"))
            if capture["framing"] == "idle":
                scans += await taker.take(1)  # only the silence ends a frame: wait for it, like a person would
            await asyncio.sleep(after_ms / 1000)
        if capture["framing"] == "suffix":
            scans = await taker.take(len(expect))

    assert [s.raw.decode("latin-1") for s in scans] == [e["raw"] for e in expect]
    assert all(s.complete for s in scans)
    for scan, wanted in zip(scans, expect):
        facts = {k: v for k, v in wanted.items() if k != "raw"}
        if "error" in facts:
            with pytest.raises(DecodeError) as caught:
                decode(scan.text, rcn_region=capture.get("rcn_region"))
            assert facts["error"] in str(caught.value)
        else:
            got = summary(decode(scan.text, rcn_region=capture.get("rcn_region")))
            assert {k: got[k] for k in facts} == facts, scan.text
