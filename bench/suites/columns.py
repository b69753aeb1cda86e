"""The protocol's column rule: at which sparsities methods can differ (``smartbench suite columns NAME``).

A column where every pruner is within noise of the dense model, or where every pruner has
collapsed, ranks nothing. The rule is method-agnostic: for every (task, non-N:M pattern) of a
suite, the uniform-allocation magnitude baseline (one-shot, every layer pruned to the target, the
simplest pruner there is) and the no-mask control (the dense model trained on with the same
recipe) run at candidate sparsities with the suite block's budget, seed 0; a sparsity is a column
when magnitude loses between ``low`` and ``high`` points of the **validation** metric against the
control (default 1-15), and 50% is always a column. N:M columns are fixed by the pattern (2:4,
1:4, 1:8...) and are not chosen here.

The runs are cells of a suite named ``<NAME>-columns`` (resumable, rows in the store); the report
lists every candidate's gap, so the suite file can quote the measurement that justified its
columns.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.core.errors import ConfigError
from bench.core.sparsity import parse_pattern

DEFAULT_CANDIDATES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
ALWAYS = 0.5


def column_suite(suite, candidates: tuple[float, ...], device: str = "auto"):
    """The ``<NAME>-columns`` suite: magnitude (uniform allocation, no floor) and nomask at every
    candidate sparsity of every (task, non-N:M pattern) of ``suite``, seed 0, each block's budget."""
    from bench.suites.suite import PrunerEntry, Suite, expand

    if not candidates or any(not 0 < s < 1 for s in candidates):
        raise ConfigError("--candidates", f"must be sparsities in (0, 1), got {list(candidates)}")
    blocks, seen = [], set()
    for block in suite.blocks:
        patterns = [p for p in block.patterns if parse_pattern(p).fixed_sparsity is None]
        for task in block.tasks:
            for pattern in patterns:
                if (task, pattern) in seen:
                    continue
                seen.add((task, pattern))
                common = dict(
                    tasks=[task],
                    patterns=[pattern],
                    seeds=[0],
                    allocation={"policy": "uniform", "floor": 0.0},
                    where=f"{block.where} (columns: {task} {pattern})",
                )
                sparsities = sorted(set(candidates) | {ALWAYS})
                magnitude = [PrunerEntry("magnitude", "magnitude-uniform")]
                blocks.append(replace(block, sparsities=sparsities, pruners=magnitude, **common))
                # the control keeps every unit: one run (its id leaves out pattern and sparsity) serves
                # every candidate of every pattern of the task (``Suite.placements``)
                blocks.append(replace(block, sparsities=[ALWAYS], pruners=[PrunerEntry("nomask", "nomask")], **common))
    if not blocks:
        raise ConfigError("suite", f"suite '{suite.name}' has no non-N:M pattern to choose sparsities for")
    return expand(Suite(f"{suite.name}-columns", suite.path, f"column rule of {suite.name}", blocks), device)


def choose_columns(cells, rows: dict[str, dict], low: float = 1.0, high: float = 15.0) -> list[dict[str, Any]]:
    """Per (task, pattern): every candidate's validation gap (nomask - magnitude) and the chosen
    sparsities (low <= gap <= high, plus 50%)."""
    val: dict[tuple, float] = {}
    for cell in cells:
        row = rows.get(cell.run_id)
        if row is not None:
            val[(cell.spec.task, cell.spec.pattern, cell.spec.sparsity, cell.label)] = float(row["val_metric"])
    out = []
    for task, pattern in dict.fromkeys((c.spec.task, c.spec.pattern) for c in cells):
        gaps = {}
        mine = [c for c in cells if (c.spec.task, c.spec.pattern) == (task, pattern) and c.label != "nomask"]
        for s in sorted({c.spec.sparsity for c in mine}):
            mag, ctrl = val.get((task, pattern, s, "magnitude-uniform")), val.get((task, pattern, ALWAYS, "nomask"))
            gaps[s] = None if mag is None or ctrl is None else ctrl - mag
        chosen = [s for s, gap in gaps.items() if s == ALWAYS or (gap is not None and low <= gap <= high)]
        out.append({"task": task, "pattern": pattern, "gaps": gaps, "chosen": chosen})
    return out


def report(choices: list[dict[str, Any]], low: float, high: float) -> str:
    lines = [
        f"column rule: sparsities where uniform magnitude loses {low:g}-{high:g} val points against the "
        "no-mask control (same budget, seed 0), plus 0.5",
    ]
    for choice in choices:
        gaps = ", ".join(f"{s:g}: {'n/a' if g is None else f'{g:+.2f}'}" for s, g in choice["gaps"].items())
        lines.append(f"  {choice['task']} {choice['pattern']}: gap {gaps}")
        lines.append(f"    sparsities: [{', '.join(f'{s:g}' for s in choice['chosen'])}]")
    return "\n".join(lines)
