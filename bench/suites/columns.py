"""The protocol's column rule: at which sparsities methods can differ (``smartbench suite columns NAME``).

A column where every pruner is within noise of the dense model, or where every pruner has
collapsed, ranks nothing. The rule is method-agnostic: for every (task, non-N:M pattern) of a
suite, the uniform-allocation magnitude baseline (one-shot, every layer pruned to the target, the
simplest pruner there is) and the no-mask control (the dense model trained on with the same
recipe) run at candidate sparsities with the suite block's budget, seed 0; a sparsity is a column
when magnitude loses between ``low`` and ``high`` points of the **validation** metric against the
control (default 1-15), and 50% is always a column. N:M columns are fixed by the pattern (2:4,
1:4, 1:8...) and are not chosen here -- except under the power criterion below.

The runs are cells of a suite named ``<NAME>-columns`` (resumable, rows in the store); the report
lists every candidate's gap, so the suite file can quote the measurement that justified its
columns.

**Power criterion** (protocol v3; ``--pilot-seeds 0,1,2 --margin M --planned-seeds N``): with two or
more pilot seeds, a second method-agnostic pruner, uniform random (``random-uniform``), runs beside
uniform magnitude, and each candidate's pilot sigma_d is the standard deviation over the pilot seeds
of the paired validation difference magnitude - random: the seed-to-seed noise of a difference
between two pruners at that column. A candidate enters only when, besides the gap band, its minimum
detectable effect at ``N`` seeds (two-sided paired t-test, alpha 0.05, 80 % power, exact noncentral
t: bench.reports.stats.mde) is within the margin; 50 % is not exempt then. The report gives, per
candidate, the gap (mean over the pilot seeds), sigma_d, the MDE at ``N`` seeds and the seeds that
would reach the margin (capped by ``--seed-cap``).

**N:M under the power criterion.** Each N:M pattern of a suite (its sparsity fixed at 1 - N/M) is
then a candidate too: N:M magnitude (top-N of every group of M, per row: uniform by construction)
and N:M random run beside the same no-mask control, and the pattern is a column when it meets the
same two conditions (the gap band and the MDE). "N:M columns run where the ViT task carries
signal" (issue 33) is this test; ``--candidates`` does not apply to them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.core.errors import ConfigError
from bench.core.sparsity import parse_pattern

DEFAULT_CANDIDATES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
ALWAYS = 0.5


def column_suite(
    suite,
    candidates: tuple[float, ...],
    device: str = "auto",
    pilot_seeds: tuple[int, ...] = (0,),
    amp: bool = False,
    compile: bool = False,
):
    """The ``<NAME>-columns`` suite: magnitude (uniform allocation, no floor) and nomask at every
    candidate sparsity of every (task, non-N:M pattern) of ``suite``, each block's budget, at the
    pilot seeds (default seed 0); with 2 or more pilot seeds also uniform random (power criterion)."""
    from bench.suites.suite import PrunerEntry, Suite, expand

    if not candidates or any(not 0 < s < 1 for s in candidates):
        raise ConfigError("--candidates", f"must be sparsities in (0, 1), got {list(candidates)}")
    if not pilot_seeds or len(set(pilot_seeds)) != len(pilot_seeds) or min(pilot_seeds) < 0:
        raise ConfigError("--pilot-seeds", f"must be distinct seeds >= 0, got {list(pilot_seeds)}")
    power = len(pilot_seeds) >= 2
    blocks, seen = [], set()
    for block in suite.blocks:
        patterns = [p for p in block.patterns if power or parse_pattern(p).fixed_sparsity is None]
        for task in block.tasks:
            for pattern in patterns:
                if (task, pattern) in seen:
                    continue
                seen.add((task, pattern))
                fixed = parse_pattern(pattern).fixed_sparsity
                common = dict(
                    tasks=[task],
                    patterns=[pattern],
                    seeds=list(pilot_seeds),
                    # N:M selects per row of every layer: uniform already, and no allocation rule applies
                    allocation="v1" if fixed is not None else {"policy": "uniform", "floor": 0.0},
                    where=f"{block.where} (columns: {task} {pattern})",
                )
                sparsities = [fixed] if fixed is not None else sorted(set(candidates) | {ALWAYS})
                magnitude = [PrunerEntry("magnitude", "magnitude-uniform")]
                if power:  # the power criterion's second pruner
                    magnitude.append(PrunerEntry("random", "random-uniform"))
                blocks.append(replace(block, sparsities=sparsities, pruners=magnitude, **common))
                # the control keeps every unit: one run (its id leaves out pattern and sparsity) serves
                # every candidate of every pattern of the task (``Suite.placements``)
                control = [fixed if fixed is not None else ALWAYS]
                blocks.append(replace(block, sparsities=control, pruners=[PrunerEntry("nomask", "nomask")], **common))
    if not blocks:
        raise ConfigError("suite", f"suite '{suite.name}' has no non-N:M pattern to choose sparsities for")
    return expand(
        Suite(f"{suite.name}-columns", suite.path, f"column rule of {suite.name}", blocks), device, amp, compile
    )


def choose_columns(
    cells,
    rows: dict[str, dict],
    low: float = 1.0,
    high: float = 15.0,
    margin: float | None = None,
    planned_seeds: int = 3,
    seed_cap: int = 10,
) -> list[dict[str, Any]]:
    """Per (task, pattern): every candidate's validation gap (nomask - magnitude, mean over the
    pilot seeds both finished) and the chosen sparsities (low <= gap <= high, plus 50%); with a
    ``margin`` (the power criterion, module docstring) also sigma_d, the MDE at ``planned_seeds``
    and the seeds needed, and a candidate enters only when its MDE is within the margin."""
    from bench.reports import stats

    val: dict[tuple, float] = {}
    control: dict[tuple, float] = {}  # (task, pattern, seed) -> the no-mask control's val metric
    for cell in cells:
        row = rows.get(cell.run_id)
        if row is not None:
            seed = getattr(cell.spec, "seed", 0)
            val[(cell.spec.task, cell.spec.pattern, cell.spec.sparsity, cell.label, seed)] = float(row["val_metric"])
            if cell.label == "nomask":
                control[(cell.spec.task, cell.spec.pattern, seed)] = float(row["val_metric"])
    out = []
    for task, pattern in dict.fromkeys((c.spec.task, c.spec.pattern) for c in cells):
        gaps, power = {}, {}
        nm = parse_pattern(pattern).fixed_sparsity  # an N:M pattern: its one candidate, never exempt
        mine = [c for c in cells if (c.spec.task, c.spec.pattern) == (task, pattern) and c.label != "nomask"]
        seeds = sorted({getattr(c.spec, "seed", 0) for c in mine})
        for s in sorted({c.spec.sparsity for c in mine}):
            pairs = [
                (control[(task, pattern, seed)], val[(task, pattern, s, "magnitude-uniform", seed)])
                for seed in seeds
                if (task, pattern, seed) in control and (task, pattern, s, "magnitude-uniform", seed) in val
            ]
            gaps[s] = sum(c - m for c, m in pairs) / len(pairs) if pairs else None
            if margin is not None:
                mag = {seed: val.get((task, pattern, s, "magnitude-uniform", seed)) for seed in seeds}
                rnd = {seed: val.get((task, pattern, s, "random-uniform", seed)) for seed in seeds}
                diff = stats.paired_difference(
                    {k: v for k, v in mag.items() if v is not None}, {k: v for k, v in rnd.items() if v is not None}
                )
                if diff is None:
                    power[s] = None
                else:
                    needed, reached = stats.seeds_needed(diff.sd, margin, minimum=3, cap=seed_cap)
                    mde = stats.mde(diff.sd, planned_seeds)
                    power[s] = {"sigma_d": diff.sd, "mde": mde, "seeds_needed": needed, "reached": reached}
        chosen = [
            s
            for s, gap in gaps.items()
            if (s == ALWAYS and margin is None and nm is None or (gap is not None and low <= gap <= high))
            and (margin is None or (power.get(s) is not None and power[s]["mde"] <= margin))
        ]
        choice = {"task": task, "pattern": pattern, "gaps": gaps, "chosen": chosen}
        if margin is not None:
            choice |= {"power": power, "margin": margin, "planned_seeds": planned_seeds}
        out.append(choice)
    return out


def report(choices: list[dict[str, Any]], low: float, high: float) -> str:
    lines = [
        f"column rule: sparsities where uniform magnitude loses {low:g}-{high:g} val points against the "
        "no-mask control (same budget, seed 0), plus 0.5",
    ]
    power_rule = next((c for c in choices if "power" in c), None)
    if power_rule is not None:
        lines[0] = (
            f"column rule: sparsities where uniform magnitude loses {low:g}-{high:g} val points against the "
            f"no-mask control (mean over the pilot seeds) and whose MDE at {power_rule['planned_seeds']} seeds "
            f"(paired magnitude - random, 80% power) is within {power_rule['margin']:g} points"
        )
    for choice in choices:
        gaps = ", ".join(f"{s:g}: {'n/a' if g is None else f'{g:+.2f}'}" for s, g in choice["gaps"].items())
        lines.append(f"  {choice['task']} {choice['pattern']}: gap {gaps}")
        for s, p in choice.get("power", {}).items():
            if p is None:
                lines.append(f"    {s:g}: no pilot sigma_d (fewer than 2 pilot seeds finished)")
            else:
                more = "" if p["reached"] else " (not reached at the cap)"
                lines.append(
                    f"    {s:g}: sigma_d {p['sigma_d']:.2f}, MDE {p['mde']:.2f} at {choice['planned_seeds']} seeds, "
                    f"seeds for MDE <= {choice['margin']:g}: {p['seeds_needed']}{more}"
                )
        lines.append(f"    sparsities: [{', '.join(f'{s:g}' for s in choice['chosen'])}]")
    return "\n".join(lines)
