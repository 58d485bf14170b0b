"""Docs that cannot rot (docs/design.md): every agent config key, command and option is in docs/agent.md."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from agent.cli import build_parser
from agent.config import KNOWN_KEYS, OTHER_SECTIONS, SCANNER_TYPES

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent.md"


def section(text: str, heading: str) -> str:
    start = text.index(f"\n### {heading}\n")
    end = text.find("\n##", start + 1)
    return text[start : end if end != -1 else None]


def test_every_config_key_has_a_row_in_its_sections_table() -> None:
    text = DOC.read_text()
    assert {"agent", "replicator", "simulate", "scanner", "catalog"} <= set(KNOWN_KEYS)  # every one is checked below
    for name, keys in KNOWN_KEYS.items():
        table = section(text, f"`[[{name}]]`" if name == "scanner" else f"`[{name}]`")
        documented = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
        assert documented == set(keys), f"[{name}] keys and the docs/agent.md table differ"


def test_sections_documented_elsewhere_are_linked_and_their_keys_listed_there() -> None:
    text = DOC.read_text()
    scanner = section(text, "`[[scanner]]`")
    for cls in SCANNER_TYPES.values():  # device settings: named here, tabled in docs/scanners.md
        for f in dataclasses.fields(cls):
            if f.name != "reader_id":
                assert f"`{f.name}`" in scanner, f"[[scanner]] device key {f.name} is not named in docs/agent.md"
    for name, doc in OTHER_SECTIONS.items():
        assert f"\n### `[{name}]`\n" in text and Path(doc).name in section(text, f"`[{name}]`")
        other = (DOC.parents[1] / doc).read_text()
        assert f"`[{name}]`" in other


def test_every_command_and_option_is_documented() -> None:
    text = DOC.read_text()
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"run", "status", "record", "import"} <= set(commands.choices)  # every one is checked below
    for name, sub in commands.choices.items():
        assert f"\n### `{name}`\n" in text, f"no section for the {name} command"
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in text, f"{name} {option} is not documented"
