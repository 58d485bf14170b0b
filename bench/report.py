"""Compile bench/results/*.json into docs/benchmarks.md: every figure in one table, then each benchmark's own."""

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


# Results too wide for one cell: the columns the glance table shows (the section below keeps them all).
GLANCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "issue16_pg_scaling": (
        "hub processes", "events/s", "hub CPU-s/1k (all hubs)", "PostgreSQL CPU-s/1k", "row lock waits ms/1k",
        "counter held ms/batch",
    ),
    "issue16_pg_scaling_model": (
        "hubs, one core each", "hubs can take events/s", "PostgreSQL cores to keep up",
        "events/s, counter held as measured", "events/s, critical section alone",
    ),
    **{
        name: ("measure", "upgrade 19→22, median (s)", "hub process peak RSS above its start (MiB)",
               "server temp files (MiB)")
        for name in ("upgrade_020", "upgrade_020_before")
    },
    **{
        name: ("measure", "upgrade 19→25, median (s)", "step 20 (s)", "step 24 (s)", "step 25 (s)")
        for name in ("upgrade_025", "upgrade_025_before")
    },
    "upgrade_028": (
        "measure", "upgrade 19→28, median (s)", "step 20 (s)", "step 24 (s)", "step 25 (s)", "step 26 (s)",
        "step 28 (s)",
    ),
}  # fmt: skip


LABEL_KEYS = ("measure", "read")  # label columns whose values say what they are on their own
RATIO_KEYS = ("ratio",)
TARGET_KEYS = ("target", "goal")


def _cells(row: dict[str, object]) -> tuple[str, str, str, str, str]:
    """One figure as (figure, measured, baseline, ratio, target).

    A row is ``{label column: label, value columns…, ratio?, target/goal?}``. With a ratio and two value
    columns, the first is the measured figure and the second its baseline, both from the same run (every
    script measures its baseline beside the figure); otherwise every value column is listed."""
    items = [(k, v) for k, v in row.items() if v not in ("", None)]
    if not items:
        return "", "", "", "", ""
    name, first = items[0]
    label = _fmt(first) if name in LABEL_KEYS else f"{name} {_fmt(first)}"
    values = [(k, v) for k, v in items[1:] if k not in RATIO_KEYS + TARGET_KEYS]
    ratio = next((_fmt(v) for k, v in items if k in RATIO_KEYS), "")
    target = next((_fmt(v) for k, v in items if k in TARGET_KEYS), "")
    if len(values) == 2 and ratio:
        (k1, v1), (k2, v2) = values
        return label, f"{_fmt(v1)} ({k1})", f"{_fmt(v2)} ({k2})", ratio, target
    if len(values) == 1 and values[0][0] == "value":
        return label, _fmt(values[0][1]), "", ratio, target
    return label, "; ".join(f"{k} {_fmt(v)}" for k, v in values), "", ratio, target


def render() -> str:
    results = [json.loads(path.read_text()) for path in sorted(RESULTS_DIR.glob("*.json"))]
    parts = [
        HEADER,
        ("## Every figure in one table\n\n"
        "One row per figure. A ratio is always of two figures measured in the same run of the same script "
        "(the figure and its baseline, side by side), never of figures from different runs or machines; "
        "the command and the machine of each run are in its section below.\n\n"
        "| benchmark | figure | measured | baseline, same run | ratio | target | run |\n"
        "|---|---|---|---|---|---|---|\n"),
    ]
    for data in results:
        title = data["title"]
        shown = GLANCE_COLUMNS.get(data["name"])
        for row in data["rows"]:
            label, measured, baseline, ratio, target = _cells(
                row if shown is None else {k: v for k, v in row.items() if k in shown}
            )
            if not label:
                continue
            cells = [title, label, measured, baseline, ratio, target, f"{data['date']} ({data['git']})"]
            parts.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |\n")
            title = "″"  # the same benchmark as the row above
    parts.append("\nEach benchmark in detail follows: the command, the machine, the date, and what was measured.\n\n")
    for data in results:
        parts.append(f"## {data['title']}\n")
        parts.append(f"- command: `{data['command']}`\n- machine: {data['machine']}\n- date: {data['date']} (commit {data['git']})\n")
        rows = data["rows"]
        if rows:
            cols = list(dict.fromkeys(c for row in rows for c in row))
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
