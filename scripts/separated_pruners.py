"""Per column of a suite's rows: best vs runner-up among the pruners only -- controls (the
pruners' ``control`` flag: random, nomask, scratch) and renamed ablation labels (``as:``) left out
-- by the paired t-test over shared seeds that ``smartbench table`` uses (bench.reports.tables.
paired_p). A reading aid for results/README.md:

    python scripts/separated_pruners.py results/leaderboard-v2/leaderboard-v2.rows.jsonl
"""

import collections
import json
import statistics
import sys

from bench.reports.tables import paired_p
from bench.runs.registry import load_pruners


def main(path: str) -> None:
    pruners = load_pruners()
    columns = collections.defaultdict(lambda: collections.defaultdict(dict))  # column -> pruner -> seed -> metric
    with open(path, encoding="utf-8") as fh:
        for row in map(json.loads, fh):
            name = row["pruner"]
            if pruners[name].control or row.get("label", name) != name:
                continue
            columns[(row["task"], row["pattern"], row["target_sparsity"])][name][row["seed"]] = row["metric"]
    separated = tested = 0
    for column in sorted(columns):
        by_seed = columns[column]
        ranked = sorted(by_seed, key=lambda name: -statistics.mean(by_seed[name].values()))
        if len(ranked) < 2:
            continue
        best, runner_up = ranked[:2]
        p = paired_p(by_seed[best], by_seed[runner_up])
        if p is not None:
            tested += 1
            separated += p < 0.05
        means = " ".join(f"{n} {statistics.mean(by_seed[n].values()):.2f}" for n in (best, runner_up))
        print(f"{column}: best, runner-up: {means} p={'-' if p is None else f'{p:.3g}'}")
    print(f"separated {separated} of {tested}")


if __name__ == "__main__":
    main(sys.argv[1])
