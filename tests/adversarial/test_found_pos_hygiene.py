"""What a drop folder's names, links and broken lines can do to a running agent — and to the hub's answers.

Real processes throughout: a ``python -m hub serve``, a ``python -m agent
run`` watching a real drop folder, ``python -m agent import`` by hand. Each
test plants what an attacker with write access to the drop folder (or a
careless script) leaves there and asserts what a user sees:

- a file name holding a newline or a terminal escape, and a binary file whose
  "header" is kilobytes of control bytes, cannot forge, colour or flood a log
  line: every untrusted string is escaped and bounded;
- a symbolic link is never read through: it goes to ``failed/`` with a report
  saying why, the file it points to is neither imported nor moved, and a link
  planted where the agent writes a report is not written through;
- a line the csv module cannot parse keeps its text in the quarantine, its
  report, the POS store and the hub, as every other quarantined row does;
- a refused control character in a hub query parameter is shown once, escaped.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.adversarial.pos_drop import HEADER, WAIT_S, drop_store, export_row, place_export, skus_of, wait_report
from tests.faults.helpers import Store, wait_until
from tests.harness.commands import run_agent
from tests.harness.hub_process import HubProcess

# What no log line may hold: C0 controls (a newline inside a line, ESC), DEL, C1 controls, line separators.
UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
LOG_LINE_MAX_CHARS = 2_000  # one sentence, whatever a file or its name holds
RAW_MAX_CHARS = 2_000  # a quarantined row's text, as docs/pos-import.md states
FORGED = "2030-01-01 00:00:00,000 ERROR agent.pos: the outbox was deleted"
NEWLINE_NAME = f"sales\n{FORGED}.csv"
ESCAPE_NAME = "\x1b[2J\x1b[31mred\x1b[0m.csv"
CLI_TIMEOUT_S = 60.0


def _binary_export() -> bytes:
    """A binary file with a .csv name: no line break for 7 KB, control bytes and terminal escapes throughout."""
    c0 = bytes(c for c in range(0x20) if c not in (0x0A, 0x0D))
    return b"\x7fELF\x02\x01\x01\x00" + (bytes(range(0x80, 0x100)) + c0 + b"\x1b[2J\x1b[31mRED") * 40 + b"\n"


def _assert_log_clean(text: str, where: str) -> None:
    lines = text.split("\n")
    for line in lines:
        assert not UNSAFE_RE.search(line), f"{where} holds a control character: {line[:300]!r}"
        assert len(line) <= LOG_LINE_MAX_CHARS, f"{where} holds a line of {len(line):,} characters: {line[:200]!r}"
        assert not line.startswith(FORGED[:23]), f"{where} holds a forged line: {line!r}"


def _agent_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_agent(*args, "--config", str(config), timeout_s=CLI_TIMEOUT_S)


# --- 1. log forging from file names and headers ------------------------------------------------------------


def test_file_names_and_binary_headers_cannot_forge_or_colour_the_agent_log(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    store, drop = drop_store(hub, make_store, tmp_path)
    place_export(drop, NEWLINE_NAME, HEADER + "".join(export_row(i) for i in range(3)))
    place_export(drop, ESCAPE_NAME, HEADER + "".join(export_row(i) for i in range(3, 6)))
    staged = tmp_path / "staged-binary"
    staged.write_bytes(_binary_export())
    os.replace(staged, drop / "firmware.csv")

    assert wait_report(drop, NEWLINE_NAME)["imported"] == 3
    assert wait_report(drop, ESCAPE_NAME)["imported"] == 3
    binary = wait_report(drop, "firmware.csv")
    assert binary["status"] == "failed" and "the header row" in str(binary["error"]), binary
    wait_until("the agent logged the binary file", lambda: "firmware.csv was not imported" in store.log(), WAIT_S)
    assert skus_of(store, "GOOD") == {f"GOOD-{i}" for i in range(6)}  # escaping names loses no row

    log = store.log()
    _assert_log_clean(log, "the agent's log")
    assert "sales\\n2030-01-01" in log  # the name is there, escaped once: readable, not a line of its own
    assert "\\x1b[2J\\x1b[31mred" in log


def test_a_manual_import_prints_file_names_escaped(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    store = make_store(hub, hub.url)  # the hub is not needed: `import` only records into the outbox
    exports = tmp_path / "exports"
    exports.mkdir()
    forged = exports / NEWLINE_NAME
    forged.write_text(HEADER + export_row(0), encoding="utf-8")
    coloured = exports / ESCAPE_NAME
    coloured.write_bytes(_binary_export())
    done = _agent_cli(store.config, "import", str(forged), str(coloured), "--profile", "generic", "--no-progress")
    assert done.returncode == 1, done  # the binary one could not be imported
    _assert_log_clean(done.stdout, "import's output")
    _assert_log_clean(done.stderr, "import's log")
    assert "sales\\n2030-01-01" in done.stdout and "red\\x1b[0m.csv" in done.stdout


# --- 2. symbolic links in the drop folder ------------------------------------------------------------------


def test_a_symlink_in_the_drop_folder_is_refused_unread(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    store, drop = drop_store(hub, make_store, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.csv"
    secret_text = HEADER + "".join(export_row(i, "SECRET") for i in range(5))
    secret.write_text(secret_text, encoding="utf-8")
    (drop / "link.csv").symlink_to(secret)

    report = wait_report(drop, "link.csv")
    assert report["status"] == "failed", report
    assert "symbolic link" in str(report["error"]) and report["sha256"] == "", report  # nothing read through it
    assert skus_of(store, "SECRET") == set()
    assert (drop / "failed" / "link.csv").is_symlink()  # the link was filed away, not what it points to
    assert secret.read_text(encoding="utf-8") == secret_text

    # A link planted where the agent writes a report is replaced, never written through.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious", encoding="utf-8")
    (drop / "failed" / "junk.csv.report.json.tmp").symlink_to(victim)
    place_export(drop, "junk.csv", "nothing,here\n1,2\n")
    junk = wait_report(drop, "junk.csv")
    assert junk["status"] == "failed", junk
    assert victim.read_text(encoding="utf-8") == "precious"
    assert not (drop / "failed" / "junk.csv.report.json").is_symlink()

    # The folder keeps working, and the log names the refusal in one line.
    place_export(drop, "after.csv", HEADER + export_row(0))
    assert wait_report(drop, "after.csv")["imported"] == 1
    assert "link.csv was not imported: link.csv is a symbolic link" in store.log()


# --- 3. a row the csv module cannot parse keeps its text -------------------------------------------------


def _import_issue_raws(hub_db: Path) -> dict[int, str]:
    conn = sqlite3.connect(hub_db, timeout=30)
    try:
        return {int(line): str(raw) for line, raw in conn.execute("SELECT line, raw FROM import_issues")}
    finally:
        conn.close()


def test_rows_the_csv_module_cannot_parse_keep_their_text(
    hub: HubProcess, make_store: Callable[..., Store], tmp_path: Path
) -> None:
    store, drop = drop_store(hub, make_store, tmp_path)
    wide = "2024-03-05,10:00:00,WIDE-1," + "9" * 200_000 + ",sale,wide\n"  # a field over the csv module's limit
    unclosed = '2024-03-05,10:00:00,"OPEN-1,1,sale,open\n'  # a quote never closed
    overlong = "LONG-START," + "L" * (2 << 20) + "\n"  # a line over 1 MiB, skipped unread
    text = HEADER + export_row(0) + wide + export_row(1) + unclosed + export_row(2) + overlong + export_row(3)
    place_export(drop, "broken.csv", text)
    report = wait_report(drop, "broken.csv")
    assert report["imported"] == 4, {k: v for k, v in report.items() if k != "quarantine"}
    rows: dict[int, str] = {q["line"]: q["row"] for q in report["quarantine"]}  # type: ignore[union-attr,index]
    assert set(rows) == {3, 5, 7}, rows.keys()
    expected = {3: "2024-03-05,10:00:00,WIDE-1,9999", 5: unclosed.rstrip("\n"), 7: "LONG-START,LLLL"}
    for line, start in expected.items():
        assert rows[line].startswith(start), (line, rows[line][:80])
        assert len(rows[line]) <= RAW_MAX_CHARS
    assert rows[5] == unclosed.rstrip("\n")

    done = _agent_cli(store.config, "import", "--report", "--json")
    assert done.returncode == 0, done.stderr
    stored: dict[int, str] = {e["line"]: e["raw"] for e in json.loads(done.stdout)["quarantined"]}
    assert stored == rows
    wait_until("the quarantined rows reach the hub", lambda: len(_import_issue_raws(Path(hub.db))) == 3, WAIT_S)
    at_hub = _import_issue_raws(Path(hub.db))
    assert all(at_hub[line].startswith(start[:20]) for line, start in expected.items()), at_hub


# --- 4. the hub's sentence for a refused control character -----------------------------------------------


def _error(url: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, ""
    except urllib.error.HTTPError as err:
        body: Any = json.loads(err.read())
        return err.code, str(body["detail"])


def test_the_hub_shows_a_refused_control_character_once(hub: HubProcess, make_store: Callable[..., Store]) -> None:
    store = make_store(hub, hub.url)
    hub.start()
    status, message = _error(f"{hub.url}/v1/ledger?location=%00", store.cred.token)
    assert status == 400
    assert "location '\\x00' is not a location code" in message, message  # one backslash: escaped once
    assert "\\\\" not in message and "\x00" not in message

    status, message = _error(f"{hub.url}/v1/ledger?%0A%1B%5B31mforged=1", store.cred.token)
    assert status == 400
    assert "'\\n\\x1b[31mforged'" in message and not UNSAFE_RE.search(message), message
