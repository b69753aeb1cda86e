"""Paired differences between labels of one suite's rows, per column: an ablation's effect.

Where ``smartbench table`` compares every cell with its column's best, an ablation asks how one
label differs from another that changes one thing (``magnitude-raw`` against ``magnitude``: the
same pruner under another score-comparability rule). Input: a ``<suite>.rows.jsonl`` (``smartbench
table SUITE --raw``). For each ``A:B`` pair and each column (task, pattern, target sparsity, track:
a label on both tracks pairs within each) both labels ran, it prints the test metric of each (mean over the shared seeds), the paired difference
A - B with its 95% t interval and p (bench.reports.stats.paired_difference), Holm-adjusted over
every difference printed, and for each side the FLOPs kept (mean ``1 - achieved_flops_sparsity``),
the layers at the allocation floor and the smallest per-layer kept fraction (mean over seeds).

    python scripts/paired_labels.py results/protocol-v3-ranking/protocol-v3-ranking.rows.jsonl \\
        --pairs magnitude-raw:magnitude,gmp-raw:gmp
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.reports.stats import holm, paired_difference  # noqa: E402
from bench.reports.tables import track_of  # noqa: E402
from bench.runs.record import ResultStore  # noqa: E402


def allocation_figures(row: dict) -> tuple[float, int, float]:
    """(FLOPs kept, layers at the floor, smallest per-layer kept fraction) of one row."""
    audit = row.get("audit") or {}
    layers = [e for e in audit.get("layers") or [] if e.get("units")]
    flops_sparsity = row.get("achieved_flops_sparsity")
    kept = 1.0 - flops_sparsity if flops_sparsity is not None else float("nan")
    floors = audit.get("layers_at_floor", sum(bool(e.get("at_floor")) for e in layers))
    smallest = min((e["kept_units"] / e["units"] for e in layers), default=float("nan"))
    return kept, int(floors), smallest


def table(rows: list[dict], pairs: list[tuple[str, str]]) -> str:
    """The Markdown table of every pair's differences (module docstring)."""
    cells = collections.defaultdict(dict)  # (label, task, pattern, sparsity) -> seed -> row
    for row in rows:
        if row.get("metric") is None:
            continue
        column = (row["task"], row["pattern"], row.get("target_sparsity"), track_of(row.get("allocation")) or "v1")
        cells[(row.get("label") or row["pruner"], *column)][row["seed"]] = row
    lines, tests = [], []
    for a, b in pairs:
        for key in sorted(k for k in cells if k[0] == a):
            column = key[1:]
            first, second = cells[key], cells.get((b, *column), {})
            seeds = sorted(set(first) & set(second))
            if len(seeds) < 2:
                continue
            diff = paired_difference({s: first[s]["metric"] for s in seeds}, {s: second[s]["metric"] for s in seeds})
            sides = []
            for side in (first, second):
                figures = [allocation_figures(side[s]) for s in seeds]
                sides.append(
                    (
                        statistics.mean(side[s]["metric"] for s in seeds),
                        statistics.mean(f[0] for f in figures),
                        statistics.mean(f[1] for f in figures),
                        statistics.mean(f[2] for f in figures),
                    )
                )
            tests.append((a, b, column, len(seeds), sides, diff))
    adjusted = holm([t[5].p for t in tests])
    lines.append(
        "| A | B | task · pattern · sparsity · track | seeds | A | B | A − B [95% CI] | p | Holm p "
        "| FLOPs kept A / B | layers at floor A / B | smallest layer kept A / B |"
    )
    lines.append("|" + "---|" * 12)
    for (a, b, column, n, sides, diff), p_holm in zip(tests, adjusted):
        task, pattern, sparsity, track = column
        (ma, fa, la, sa), (mb, fb, lb, sb) = sides
        lines.append(
            f"| {a} | {b} | {task} · {pattern} · {sparsity:g} · {track} | {n} | {ma:.2f} | {mb:.2f} "
            f"| {diff.mean:+.2f} [{diff.ci_low:+.2f}, {diff.ci_high:+.2f}] | {diff.p:.3g} | {p_holm:.3g} "
            f"| {fa:.3f} / {fb:.3f} | {la:.1f} / {lb:.1f} | {sa:.3f} / {sb:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", help="a <suite>.rows.jsonl (smartbench table SUITE --raw)")
    parser.add_argument("--pairs", required=True, help="comma-separated A:B label pairs")
    args = parser.parse_args(argv)
    pairs = []
    for item in args.pairs.split(","):
        a, sep, b = item.partition(":")
        if not sep or not a or not b:
            parser.error(f"--pairs: {item!r} is not A:B")
        pairs.append((a, b))
    rows = list(ResultStore(Path(args.rows)).rows())
    print(table(rows, pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
