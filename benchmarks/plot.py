#!/usr/bin/env python3
"""Draw the ratios of a benchmark run as an SVG bar chart (no plotting library needed).

    python benchmarks/run.py --json results.json --markdown docs/benchmarks.md
    python benchmarks/plot.py results.json docs/benchmarks.svg

One pair of bars per workload: hookpool ``Pool`` ÷ stdlib ``Pool`` and hookpool
``ProcessPoolExecutor`` ÷ stdlib ``ProcessPoolExecutor`` (lower is faster), a line at 1.0
(as fast as the standard library) and a tick at the workload's target ratio.
"""

from __future__ import annotations

import json
import re
import sys
from html import escape
from pathlib import Path
from typing import Any

WIDTH, LABEL_W, ROW_H, BAR_H, TOP = 860, 330, 34, 11, 40
MAX_RATIO = 2.0  # bars are clipped here (their value is printed)
COLORS = {"ratio": "#3b6ea8", "ratio_ppe": "#e08a2c"}
LEGEND = {"ratio": "hookpool Pool ÷ stdlib Pool", "ratio_ppe": "hookpool PPE ÷ stdlib PPE"}


def target_of(text: str) -> float | None:
    match = re.match(r"≤ ([0-9.]+)$", text.strip())
    return float(match[1]) if match else None


def render(table: list[dict[str, Any]], title: str) -> str:
    rows = [r for r in table if r["ratio"] is not None or r["ratio_ppe"] is not None]
    plot_w = WIDTH - LABEL_W - 60
    height = TOP + ROW_H * len(rows) + 50

    def x(ratio: float) -> float:
        return LABEL_W + plot_w * min(ratio, MAX_RATIO) / MAX_RATIO

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    for i, row in enumerate(rows):
        y = TOP + i * ROW_H
        out.append(
            f'<text x="{LABEL_W - 8}" y="{y + 15}" text-anchor="end">{escape(row["label"])}</text>'
        )
        for j, key in enumerate(("ratio", "ratio_ppe")):
            ratio = row[key]
            if ratio is None:
                continue
            top = y + 4 + j * (BAR_H + 2)
            out.append(
                f'<rect x="{LABEL_W}" y="{top}" width="{x(ratio) - LABEL_W:.1f}" '
                f'height="{BAR_H}" fill="{COLORS[key]}"/>'
            )
            out.append(f'<text x="{x(ratio) + 4:.1f}" y="{top + BAR_H - 1}">{ratio:.2f}</text>')
        target = target_of(row["target"])
        if target is not None:
            out.append(
                f'<line x1="{x(target):.1f}" x2="{x(target):.1f}" y1="{y + 1}" '
                f'y2="{y + ROW_H - 5}" stroke="black" stroke-width="2"/>'
            )
    bottom = TOP + ROW_H * len(rows)
    out.append(
        f'<line x1="{x(1.0):.1f}" x2="{x(1.0):.1f}" y1="{TOP - 4}" y2="{bottom}" '
        f'stroke="#888" stroke-dasharray="4 3"/>'
    )
    for tick in (0.0, 0.5, 1.0, 1.5, 2.0):
        out.append(
            f'<text x="{x(tick):.1f}" y="{bottom + 14}" text-anchor="middle">{tick:g}</text>'
        )
    legend_y = bottom + 34
    for k, (key, text) in enumerate(LEGEND.items()):
        lx = LABEL_W + k * 240
        out.append(
            f'<rect x="{lx}" y="{legend_y - 10}" width="12" height="12" fill="{COLORS[key]}"/>'
        )
        out.append(f'<text x="{lx + 18}" y="{legend_y}">{escape(text)}</text>')
    out.append(
        f'<text x="{LABEL_W + 480}" y="{legend_y}">'
        "| target  ┆ 1.0 = stdlib (lower is faster)</text>"
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    data = json.loads(Path(argv[0]).read_text())
    machine = data.get("machine", {})
    title = f"hookpool ÷ standard library, {machine.get('date', '')}".strip(", ")
    Path(argv[1]).write_text(render(data["table"], title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
