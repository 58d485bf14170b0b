"""Every [pos] configuration key, profile field and built-in profile is documented."""

from __future__ import annotations

from pathlib import Path

from agent.pos import BUILTIN_PROFILES, PosImportConfig
from agent.pos.config import KEYS
from agent.pos.profiles import FIELDS

DOC = Path(__file__).resolve().parents[3] / "docs" / "pos-import.md"


def test_every_pos_key_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert set(KEYS) == set(PosImportConfig.__dataclass_fields__)
    for key in KEYS:
        assert f"| `{key}` |" in text, f"[pos] {key} is not in the table of docs/pos-import.md"


def test_every_profile_and_field_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in BUILTIN_PROFILES:
        assert f"| `{name}` |" in text
    for field in FIELDS:
        assert f"`{field}`" in text
