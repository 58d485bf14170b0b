"""Compile bench/results/*.json into docs/benchmarks.md (one table per benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import RESULTS_DIR

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

HEADER = """# Benchmarks

Every figure here is written by a script in `bench/` (`make bench` runs them all
and rewrites this file). Each is the median of several runs in one process, on
the machine named, with the baseline named in the issue measured in the same run,
so the ratio is what matters more than the absolute number. Timing assertions do
not live in tests; these figures do.

"""


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render() -> str:
    parts = [HEADER]
    for path in sorted(RESULTS_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        parts.append(f"## {data['title']}\n")
        parts.append(f"- command: `{data['command']}`\n- machine: {data['machine']}\n- date: {data['date']} (commit {data['git']})\n")
        rows = data["rows"]
        if rows:
            cols = list(rows[0])
            parts.append("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
            for row in rows:
                parts.append("| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |\n")
        if data.get("notes"):
            parts.append(f"\n{data['notes']}\n")
        parts.append("\n")
    return "".join(parts)


def main() -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render())
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
