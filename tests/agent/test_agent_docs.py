"""Docs that cannot rot (STYLE.md item 12): every agent config key, command and option is in docs/agent.md."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from agent.cli import build_parser
from agent.config import KNOWN_KEYS

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent.md"


def section(text: str, heading: str) -> str:
    start = text.index(f"\n### {heading}\n")
    end = text.find("\n##", start + 1)
    return text[start : end if end != -1 else None]


def test_every_config_key_has_a_row_in_its_sections_table() -> None:
    text = DOC.read_text()
    assert set(KNOWN_KEYS) == {"agent", "replicator", "simulate"}
    for name, keys in KNOWN_KEYS.items():
        table = section(text, f"`[{name}]`")
        documented = set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))
        assert documented == set(keys), f"[{name}] keys and the docs/agent.md table differ"


def test_every_command_and_option_is_documented() -> None:
    text = DOC.read_text()
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == {"run", "status", "record"}
    for name, sub in commands.choices.items():
        assert f"\n### `{name}`\n" in text, f"no section for the {name} command"
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in text, f"{name} {option} is not documented"
