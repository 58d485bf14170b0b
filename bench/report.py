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


def _headline(rows: list[dict[str, object]]) -> str:
    """The rows of one benchmark in one cell: 'measure: value (baseline, ratio, target)'."""
    cells = []
    for row in rows:
        items = [(k, v) for k, v in row.items() if v not in ("", None)]
        if not items:
            continue
        label, rest = _fmt(items[0][1]), items[1:]
        cells.append(f"{label}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in rest))
    return "<br>".join(cells)


def render() -> str:
    results = [json.loads(path.read_text()) for path in sorted(RESULTS_DIR.glob("*.json"))]
    parts = [HEADER, "## All figures at a glance\n\n| benchmark | figures | date |\n|---|---|---|\n"]
    for data in results:
        parts.append(f"| {data['title']} | {_headline(data['rows'])} | {data['date']} |\n")
    parts.append("\nEach benchmark in detail follows: the command, the machine, the date, and what was measured.\n\n")
    for data in results:
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
