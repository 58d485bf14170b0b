"""``shelfsync-agent import``: one-off imports and the quarantine report."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.pos import add_import_parser, run_import
from agent.pos.cli import EXIT_FAILURE, EXIT_OK, EXIT_QUARANTINED, EXIT_USAGE
from tests.agent.pos.pos_helpers import GENERIC, SHOPIFY, SQUARE_UTF8


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shelfsync-agent")
    add_import_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["import", *argv])


def agent_config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text('[agent]\nid = "store-1"\nlocation = "S001"\ndata_dir = "data"\n', encoding="utf-8")
    return path


async def outbox_events(tmp_path: Path) -> int:
    async with Outbox.open(tmp_path / "data" / "outbox.sqlite3", agent_id=None, location=None, create=False) as outbox:
        return len(await outbox.pending(10_000))


def test_import_files_then_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = agent_config(tmp_path)
    assert run_import(parse("-c", str(config), str(SQUARE_UTF8), str(GENERIC))) == EXIT_QUARANTINED
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "square_items_utf8_bom.csv (square, utf-8-sig): 15 rows read, 9 imported, 0 already imported, 1 not stock, 5 quarantined",
        "generic.csv (generic, utf-8): 6 rows read, 5 imported, 0 already imported, 1 quarantined",
    ]
    assert asyncio.run(outbox_events(tmp_path)) == 14
    assert (tmp_path / "data" / "pos-import.sqlite").exists()

    assert run_import(parse("-c", str(config), str(SQUARE_UTF8))) == EXIT_QUARANTINED
    assert "0 imported, 9 already imported" in capsys.readouterr().out
    assert asyncio.run(outbox_events(tmp_path)) == 14

    assert run_import(parse("-c", str(config), "--report")) == EXIT_OK
    report = capsys.readouterr().out
    assert report.startswith("Quarantined rows: 6\n")
    assert "  square_items_utf8_bom.csv line 9: Qty 'two' is not a number\n" in report
    assert "  generic.csv line 7: kind 'teleport' is not one this profile knows" in report
    assert "Recent imports:" in report and report.count("square_items_utf8_bom.csv (square") == 2

    assert run_import(parse("-c", str(config), "--report", "--json", "--limit", "2")) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["quarantined_total"] == 6 and len(data["quarantined"]) == 2
    assert {"file_name", "line", "reason", "raw"} <= set(data["quarantined"][0])


def test_json_output_and_a_mapping_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = agent_config(tmp_path)
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[pos]\nlocations = { "Main Street" = "S001", "Warehouse" = "W001" }\n', encoding="utf-8")
    code = run_import(parse("-c", str(config), "--mapping", str(mapping), "--json", "--no-progress", str(SHOPIFY)))
    assert code == EXIT_QUARANTINED
    report = json.loads(capsys.readouterr().out)
    assert (report["profile"], report["observations"], report["quarantined"]) == ("shopify", 3, 2)
    assert asyncio.run(outbox_events(tmp_path)) == 0  # stock on hand never becomes a movement


def test_clean_import_exits_0_and_failures_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = agent_config(tmp_path)
    clean = tmp_path / "clean.csv"
    clean.write_text("date,sku,qty,kind\n2024-03-04,MUG-01,2,receive\n", encoding="utf-8")
    assert run_import(parse("-c", str(config), str(clean))) == EXIT_OK
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("a,b\n1,2\n", encoding="utf-8")
    assert run_import(parse("-c", str(config), str(unknown), str(tmp_path / "nope.csv"))) == EXIT_FAILURE
    captured = capsys.readouterr()
    assert "unknown.csv: not imported — the header row (a, b) matches no import profile" in captured.out
    assert "nope.csv is not a file" in captured.err


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = agent_config(tmp_path)
    assert run_import(parse("-c", str(config))) == EXIT_USAGE
    assert "import needs FILE arguments, or --report" in capsys.readouterr().err
    assert run_import(parse("-c", str(tmp_path / "missing.toml"), str(GENERIC))) == EXIT_USAGE
    bad = tmp_path / "bad.toml"
    bad.write_text('[pos]\ndate_order = "YMD"\n', encoding="utf-8")
    assert run_import(parse("-c", str(config), "--mapping", str(bad), str(GENERIC))) == EXIT_USAGE
    assert "date_order must be" in capsys.readouterr().err


def test_report_before_any_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_import(parse("-c", str(agent_config(tmp_path)), "--report")) == EXIT_OK
    assert capsys.readouterr().out == "No POS export has been imported yet.\n"


def test_a_parent_parser_with_config_is_reused() -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", required=True)
    parser = argparse.ArgumentParser()
    add_import_parser(parser.add_subparsers(dest="command"), parents=[common])
    args = parser.parse_args(["import", "-c", "x.toml", "a.csv", "--profile", "square"])
    assert (args.config, args.files, args.profile) == ("x.toml", ["a.csv"], "square")
