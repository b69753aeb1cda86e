"""Compare two runs of the same suite cells, paired by run id: what a code change did to the results.

A cell's run id is the hash of its resolved config, not of the code, so the same cells run by two
versions of the code (two stores, one per version, on the same machine and thread count, with the
same dense checkpoints) pair up by run id. Input: the ``<suite>.rows.jsonl`` files that ``smartbench
table SUITE --raw --out DIR`` writes from each store. Output (Markdown, on stdout): per column
(label, task, pattern, sparsity), the mean metric of each side, the mean paired difference and its
paired t-test p over the seeds (bench.reports.tables.paired_p), the mean metric right after the
hard switch (``metric_before_finetune``) and the mean number of layers at the allocation floor.

    python scripts/compare_rows.py A/leaderboard-v2.rows.jsonl B/leaderboard-v2.rows.jsonl --names fixed,defect

Refuses rows whose dense model differs between the sides (a different dense test metric for one
(task, seed)): their difference would not be the code's alone.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
from pathlib import Path

from bench.reports.tables import paired_p
from bench.runs.record import ResultStore


def load(path: str) -> dict[str, dict]:
    """{run_id: row} of a rows file, read as the store reads itself (torn lines skipped, first row per id)."""
    return {row["run_id"]: row for row in ResultStore(Path(path)).rows() if row.get("metric") is not None}


def mean(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else float("nan")


def compare(first: dict[str, dict], second: dict[str, dict], names: tuple[str, str]) -> str:
    shared = sorted(set(first) & set(second))
    if not shared:
        raise SystemExit("error: the two files share no run id (not the same suite cells?)")
    dense_mismatch = [rid for rid in shared if first[rid].get("dense_metric") != second[rid].get("dense_metric")]
    if dense_mismatch:
        raise SystemExit(
            f"error: {len(dense_mismatch)} paired rows start from different dense models "
            f"(dense_metric differs, e.g. run {dense_mismatch[0]}): rerun both sides on one machine with the same dense checkpoints"
        )
    columns: dict[tuple, list[str]] = collections.defaultdict(list)
    for rid in shared:
        row = first[rid]
        columns[(row.get("label", row["pruner"]), row["task"], row["pattern"], row["target_sparsity"])].append(rid)
    a, b = names
    lines = [
        f"| label | task | pattern | sparsity | seeds | {a} | {b} | {a} − {b} | p (paired) | "
        f"before ft {a} | before ft {b} | layers at floor {a} | layers at floor {b} |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    wins = losses = ties = 0
    for key in sorted(columns):
        rids = columns[key]
        one = {first[r]["seed"]: first[r]["metric"] for r in rids}
        two = {second[r]["seed"]: second[r]["metric"] for r in rids}
        p = paired_p(one, two)
        diff = mean(one[s] - two[s] for s in one)
        if p is not None and p < 0.05:
            wins, losses = wins + (diff > 0), losses + (diff < 0)
        else:
            ties += 1

        def at_floor(rows, rid_list):
            return mean((rows[r].get("audit") or {}).get("layers_at_floor") for r in rid_list)

        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]:g} | {len(rids)} | {mean(one.values()):.2f} | "
            f"{mean(two.values()):.2f} | {diff:+.2f} | {'-' if p is None else f'{p:.3g}'} | "
            f"{mean(first[r].get('metric_before_finetune') for r in rids):.2f} | "
            f"{mean(second[r].get('metric_before_finetune') for r in rids):.2f} | "
            f"{at_floor(first, rids):.1f} | {at_floor(second, rids):.1f} |"
        )
    identical = sum(first[r]["metric"] == second[r]["metric"] for r in shared)
    lines += [
        "",
        f"{len(shared)} paired rows in {len(columns)} columns; {identical} rows with the same metric on both sides. "
        f"{a} vs {b} (paired t-test over seeds, p < 0.05): {wins} better, {losses} worse, {ties} not separated.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", help="rows.jsonl of side A")
    parser.add_argument("second", help="rows.jsonl of side B")
    parser.add_argument("--names", default="A,B", help="two names for the sides, comma-separated (default A,B)")
    args = parser.parse_args(argv)
    names = tuple(n.strip() for n in args.names.split(","))
    if len(names) != 2 or not all(names):
        parser.error(f"--names: expected two comma-separated names, got {args.names!r}")
    print(compare(load(args.first), load(args.second), names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
