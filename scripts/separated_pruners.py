"""Per column of leaderboard-v2: best vs runner-up among the pruners only (controls random, nomask,
scratch and the SMART ablations left out), paired t-test over shared seeds -- a reading aid for
results/README.md, from the suite's rows (leaderboard-v2.rows.jsonl)."""

import collections
import json
import statistics as st
import sys

from scipy import stats

rows = [json.loads(l) for l in open(sys.argv[1])]
CONTROLS = {"random", "nomask", "scratch", "smart-adaptive", "smart-ramp4"}
cols = collections.defaultdict(lambda: collections.defaultdict(dict))
for r in rows:
    label = r.get("label") or r["pruner"]
    cols[(r["task"], r["pattern"], r["target_sparsity"])][label][r["seed"]] = r["metric"]
sep = tested = 0
for key in sorted(cols):
    labs = {l: s for l, s in cols[key].items() if l not in CONTROLS}
    ranked = sorted(labs, key=lambda l: -st.mean(labs[l].values()))
    if len(ranked) < 2:
        continue
    a, b = ranked[0], ranked[1]
    shared = sorted(set(labs[a]) & set(labs[b]))
    p = float("nan")
    if len(shared) >= 2:
        tested += 1
        d = [labs[a][s] - labs[b][s] for s in shared]
        p = (
            1.0
            if all(x == 0 for x in d)
            else stats.ttest_rel([labs[a][s] for s in shared], [labs[b][s] for s in shared]).pvalue
        )
        sep += p < 0.05
    print(
        f"{key}: best {a} {st.mean(labs[a].values()):.2f} runner-up {b} {st.mean(labs[b].values()):.2f} p={p:.3g} seeds={len(shared)}"
    )
print(f"separated {sep} of {tested}")
